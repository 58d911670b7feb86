"""Server-sent event streams whose events are not all JSON.

The openai SDK parses the data of every event of a streamed answer with ``json.loads``; an event that is
not JSON (cut off, a proxy's page, a ``data: ping``) makes it raise ``json.JSONDecodeError`` (or
``UnicodeDecodeError``) out of the consumer's ``for chunk in stream`` loop: an untyped error a pipeline
cannot count on. `EventCheck` reads the stream as the SDK's decoder does (the same line ends, fields and
dispatch rule, in openai 1.x to 3.x) and passes on only whole events it has checked. The first event whose
data is not JSON is replaced by an ``error`` event, which the SDK raises as its own ``APIError``
(``code == "invalid_json"``), and the stream ends there: the transport closes the connection and gives the
concurrency slot back at once, without waiting for the client to close the stream.

Bytes of an event not ended yet are held back until its blank line comes: the SDK cannot act on an event
before then either, so no consumer of the SDK reads anything later for it.
"""

from __future__ import annotations

import json
import re

from holysheep.transport._answers import invalid_json_error

__all__ = ["EventCheck"]

#: A line ends at CR, LF or CRLF (a CRLF split over two chunks counts once), as the SDK's decoder reads.
_LINE_END = re.compile(b"[\r\n]")

#: The data of the event that ends a stream, which the SDK stops at without parsing it (nor anything after).
_DONE = "[DONE]"


class EventCheck:
    """Checks a server-sent event stream chunk by chunk: ``feed`` each chunk and pass on what it returns,
    then what ``finish`` returns at the end. Sans-IO: it never reads nor closes anything itself.

    Once ``broken`` is True, what ``feed`` returned ends with the error event and the stream must end.
    """

    __slots__ = ("_data", "_event", "_id", "_line", "_retry", "_skip_lf", "_unsent", "broken", "done")

    def __init__(self) -> None:
        #: The fields of the event being read, as the SDK's decoder keeps them (the id lasts across events).
        self._event = ""
        self._data: list[str] = []
        self._id = ""
        self._retry = False
        #: The line read so far, not ended yet (grown in place: an event may come in many chunks).
        self._line = bytearray()
        #: Whether a LF that comes next ends nothing (the line ended at the CR before it).
        self._skip_lf = False
        #: The bytes held back: the lines of the event not ended yet, and the line being read.
        self._unsent = bytearray()
        #: An event was not JSON: the stream must end after what `feed` returned.
        self.broken = False
        #: The stream's ``[DONE]`` came: whatever follows goes on unchecked, as the SDK reads none of it.
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        """The bytes that can go on after ``chunk`` came: whole events, each checked.

        After an event whose data is not JSON, the bytes before it followed by an ``error`` event, and
        ``broken`` is set.
        """
        if self.done or self.broken:
            return b"" if self.broken else chunk
        sent = 0  # how much of `chunk` ends whole events (and lines outside any event)
        start = 0
        for match in _LINE_END.finditer(chunk):
            end = match.start()
            if self._skip_lf and end == start and chunk[end] == 10:  # a CRLF's LF: the line ended at the CR
                self._skip_lf = False
                start = end + 1
                if not self._pending():
                    sent = start
                continue
            if self._line:
                self._line += chunk[start:end]
                line = bytes(self._line)
                self._line.clear()
            else:
                line = chunk[start:end]
            self._skip_lf = chunk[end] == 13
            start = end + 1
            shown = self._read(line)
            if shown is not None:  # the event began at the last point where none was pending
                self.broken = True
                before = bytes(self._unsent) + chunk[:sent] if sent else b""
                self._unsent.clear()
                return before + _error_event(shown)
            if self.done:
                sent = len(chunk)
                break
            if not self._pending():
                sent = start
        if start < len(chunk) and not self.done:
            self._skip_lf = False
            self._line += chunk[start:]
        if not sent:
            self._unsent += chunk
            return b""
        out = bytes(self._unsent) + chunk[:sent] if self._unsent else chunk[:sent]
        self._unsent.clear()
        self._unsent += chunk[sent:]
        return out

    def finish(self) -> bytes:
        """What is left when the stream ends: an event it never ended, which the SDK never reads."""
        rest = bytes(self._unsent)
        self._unsent.clear()
        return rest

    def _pending(self) -> bool:
        """Whether an event has begun (a blank line would dispatch it): its bytes are held back until then."""
        return bool(self._event or self._data or self._retry)

    def _read(self, raw: bytes) -> str | None:
        """Reads one line as the SDK's decoder does; what to show of an event that is not JSON, else None."""
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            return repr(raw[:80])
        if not line:
            if not (self._event or self._data or self._id or self._retry):
                return None
            data = "\n".join(self._data)
            self._event, self._data, self._retry = "", [], False
            if data.startswith(_DONE):
                self.done = True
                return None
            try:
                json.loads(data)
            except ValueError:
                return repr(data[:80])
            return None
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        elif field == "id":
            if "\0" not in value:
                self._id = value
        elif field == "retry":
            try:
                int(value)
            except ValueError:
                return None
            self._retry = True
        return None


def _error_event(shown: str) -> bytes:
    """The ``error`` event put in place of one whose data is not JSON: the SDK raises it as ``APIError``."""
    message = f"holysheep: the server sent a stream event whose data is not JSON ({shown}); the stream ends here"
    error = {"type": "error", **invalid_json_error(message)}
    return b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n"
