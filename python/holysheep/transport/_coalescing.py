"""Coalesced embeddings: concurrent ``POST .../embeddings`` requests with the same model and options
merged into one, and its answer split back (settings: `holysheep.Coalesce`).

Merging happens in the transport, under the SDK, so each caller's SDK parses an answer of its own: its
vectors in its own order (``index`` from 0) and its share of ``usage`` on success; on a failing status,
the same status and error body, which the SDK raises as its own typed error; an error of the transport
itself (a connection error, `RateLimitExceeded`, `CircuitOpenError`, ...) is raised to every caller.

Requests merge when they go to the same URL with the same credentials and the same body but for
``input``, which is a text or a list of texts. A batch opens at its first request and goes when it is
full (``max_inputs`` texts, ``max_tokens`` estimated tokens), or once ``max_wait_ms`` has passed and its
limiter would admit it now: while the limiter would hold it anyway, it keeps collecting. A request that
would overfill the open batch sends that one and opens the next.

Two drivers share one batch table: asyncio (a timer on the running loop, the send in a task of its own,
so cancelling a caller never cancels the send) and threads (the first request's thread waits for the
batch to fill or its time to pass, then sends it; the others wait for their answers).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Union

from holysheep._priority import current_priority
from holysheep._priority import priority as at_priority
from holysheep._tokens import count_tokens

if TYPE_CHECKING:
    from holysheep._coalesce import Coalesce
    from holysheep._limiter import HolySheepRateLimiter

__all__ = ["Coalescer", "stats_of"]

#: The headers a merged request's answer cannot pass on to a caller's: they describe the merged body.
_BODY_HEADERS = frozenset({"content-length", "content-encoding", "transfer-encoding"})
#: How many batches the stats' percentiles look back over.
_STATS_WINDOW = 1024
#: The status a merged answer whose vectors do not match its texts is passed on with.
_MISMATCH_STATUS = 502

#: What a caller's request waits on: a loop future (asyncio) or an event (threads).
_Waiter = Union["asyncio.Future[Any]", threading.Event]


class _Ask:
    """One caller's request, as far as merging needs it."""

    __slots__ = ("inputs", "key", "level", "model", "request", "tokens")

    def __init__(self, request: Any, key: tuple[Any, ...], inputs: list[str], model: str | None) -> None:
        self.request = request
        self.key = key
        self.inputs = inputs
        self.model = model
        self.tokens = sum(count_tokens(text) for text in inputs)
        self.level = current_priority()


class _Member:
    """A caller in a batch, and what it ends with: an answer or an error."""

    __slots__ = ("ask", "error", "response", "waiter")

    def __init__(self, ask: _Ask, waiter: _Waiter) -> None:
        self.ask = ask
        self.waiter = waiter
        self.response: Any = None
        self.error: BaseException | None = None


class _Batch:
    """The requests merged into one: open while it collects, then sent once."""

    __slots__ = ("closed", "done", "inputs", "key", "members", "opened", "send", "timer", "tokens")

    def __init__(self, key: tuple[Any, ...], send: Any) -> None:
        self.key = key
        self.send = send
        self.members: list[_Member] = []
        self.inputs = 0
        self.tokens = 0
        self.opened = time.monotonic()
        #: Taken out of the table: no one joins it any more, and it is (about to be) sent.
        self.closed = False
        #: asyncio: the timer that ends its wait.
        self.timer: asyncio.TimerHandle | None = None
        #: threads: set when it is closed, to wake its first caller, who sends it.
        self.done = threading.Event()

    def fits(self, ask: _Ask, settings: Coalesce) -> bool:
        return self.inputs + len(ask.inputs) <= settings.max_inputs and self.tokens + ask.tokens <= settings.max_tokens

    def add(self, member: _Member) -> None:
        self.members.append(member)
        self.inputs += len(member.ask.inputs)
        self.tokens += member.ask.tokens

    def remove(self, member: _Member) -> None:
        self.members.remove(member)
        self.inputs -= len(member.ask.inputs)
        self.tokens -= member.ask.tokens

    def full(self, settings: Coalesce) -> bool:
        return self.inputs >= settings.max_inputs or self.tokens >= settings.max_tokens


class Coalescer:
    """Merges a transport's concurrent embeddings requests (see the module)."""

    def __init__(
        self,
        settings: Coalesce,
        lib: Any,
        limiter_of: Callable[[Any, str | None], HolySheepRateLimiter | None],
    ) -> None:
        self.settings = settings
        self._lib = lib
        #: The limiter a request would pass, to keep collecting while it would hold the batch anyway.
        self._limiter_of = limiter_of
        self._open: dict[tuple[Any, ...], _Batch] = {}
        self._lock = threading.Lock()
        #: Send tasks in flight (asyncio keeps only weak references to tasks).
        self._sending: set[asyncio.Task[None]] = set()
        self._callers = 0
        self._requests = 0
        self._alone = 0
        self._left = 0
        self._sizes: deque[int] = deque(maxlen=_STATS_WINDOW)
        self._waits: deque[float] = deque(maxlen=_STATS_WINDOW)

    # --- what merges -------------------------------------------------------------------------------------

    def ask_of(self, request: Any, loop: object) -> _Ask | None:
        """The request as a caller in a batch, or None when it is not an embeddings request whose
        ``input`` is a text or a list of texts (it is then sent as it is)."""
        if request.method != "POST" or not request.url.path.endswith("/embeddings"):
            return None
        try:
            body = json.loads(request.content)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(body, dict):
            return None
        texts = body.pop("input", None)
        inputs = [texts] if isinstance(texts, str) else texts
        if not isinstance(inputs, list) or not inputs or not all(isinstance(text, str) for text in inputs):
            return None
        options = json.dumps(body, sort_keys=True)
        key = (loop, str(request.url), request.headers.get("authorization"), options)
        model = body.get("model")
        return _Ask(request, key, inputs, model if isinstance(model, str) else None)

    def _shares_a_batch(self, ask: _Ask) -> bool:
        settings = self.settings
        if len(ask.inputs) <= settings.max_inputs and ask.tokens <= settings.max_tokens:
            return True
        self._alone += 1
        return False

    # --- asyncio -------------------------------------------------------------------------------------

    async def join_async(self, ask: _Ask, send: Callable[[Any], Awaitable[Any]]) -> Any:
        """The caller's own answer, from the batch it joins (or from its own request when it is too big
        to share one)."""
        if not self._shares_a_batch(ask):
            return await send(ask.request)
        loop = asyncio.get_running_loop()
        member = _Member(ask, loop.create_future())
        with self._lock:
            self._callers += 1
            batch, ready = self._place(ask, member, send)
            if batch.members[0] is member and not batch.closed:  # the first call starts the clock
                batch.timer = loop.call_later(self.settings.max_wait_s, self._due_async, batch)
        for going in ready:
            self._launch(going)
        waiter = member.waiter
        assert isinstance(waiter, asyncio.Future)
        try:
            return await waiter
        except asyncio.CancelledError:
            self._leave(batch, member)
            raise

    def _place(self, ask: _Ask, member: _Member, send: Any) -> tuple[_Batch, list[_Batch]]:
        """Puts ``member`` in the open batch of its key (under the lock); the batches to send now."""
        ready = []
        batch = self._open.get(ask.key)
        if batch is not None and not batch.fits(ask, self.settings):
            ready.append(self._close(batch))
            batch = None
        if batch is None:
            batch = self._open[ask.key] = _Batch(ask.key, send)
        batch.add(member)
        if batch.full(self.settings):
            ready.append(self._close(batch))
        return batch, ready

    def _close(self, batch: _Batch) -> _Batch:
        """Takes ``batch`` out of the table to be sent (under the lock)."""
        if self._open.get(batch.key) is batch:
            del self._open[batch.key]
        batch.closed = True
        if batch.timer is not None:
            batch.timer.cancel()
        batch.done.set()
        return batch

    def _hold_s(self, batch: _Batch) -> float:
        """Seconds the batch's limiter would hold it now (0.0 when it would admit it, or cannot say)."""
        members = batch.members
        if not members:
            return 0.0
        first = members[0].ask
        try:
            limiter = self._limiter_of(first.request, first.model)
            hold = 0.0 if limiter is None else limiter.time_until_ready(batch.tokens)
        except Exception:  # a cost it can never admit, a keyed table without room: the send says so to all
            return 0.0
        return hold if 0.0 < hold < math.inf else 0.0

    def _due_async(self, batch: _Batch) -> None:
        """The batch's wait is over: it goes, unless its limiter would hold it anyway (then it collects
        until the limiter would admit it)."""
        with self._lock:
            if batch.closed:
                return
            hold = self._hold_s(batch)
            if hold > 0.0:
                batch.timer = asyncio.get_running_loop().call_later(hold, self._due_async, batch)
                return
            self._close(batch)
        self._launch(batch)

    def _leave(self, batch: _Batch, member: _Member) -> None:
        """A cancelled caller leaves its batch if it has not gone yet (an empty batch is dropped)."""
        with self._lock:
            self._left += 1
            if batch.closed:
                return
            batch.remove(member)
            if not batch.members:
                self._close(batch)

    def _launch(self, batch: _Batch) -> None:
        if not batch.members:
            return
        task = asyncio.get_running_loop().create_task(self._send_async(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send_async(self, batch: _Batch) -> None:
        try:
            self._count(batch)
            with at_priority(max(member.ask.level for member in batch.members)):
                response = await batch.send(self._merged(batch))
                await response.aread()
            self._answer(batch, response)
        except BaseException as error:  # every caller not answered yet gets it: none is left waiting
            self._fail(batch, error)
            if not isinstance(error, Exception):
                raise

    # --- threads -------------------------------------------------------------------------------------

    def join_blocking(self, ask: _Ask, send: Callable[[Any], Any]) -> Any:
        """`join_async` for blocking clients: each batch's first caller sends it from its thread, once
        it is closed (full, or by a call it could not take) or its time has passed."""
        if not self._shares_a_batch(ask):
            return send(ask.request)
        member = _Member(ask, threading.Event())
        with self._lock:
            self._callers += 1
            batch, _ = self._place(ask, member, send)  # a batch closed here wakes its own first caller
        if batch.members[0] is member:
            self._lead(batch)
        waiter = member.waiter
        assert isinstance(waiter, threading.Event)
        waiter.wait()
        if member.error is not None:
            raise member.error
        return member.response

    def _lead(self, batch: _Batch) -> None:
        """The first caller's wait: until the batch is closed, or its time has passed and its limiter
        would admit it now; then it sends it."""
        wait = self.settings.max_wait_s
        while not batch.done.wait(wait):
            with self._lock:
                if batch.closed:
                    break
                wait = self._hold_s(batch)
                if wait == 0.0:
                    self._close(batch)
                    break
        self._send_blocking(batch)

    def _send_blocking(self, batch: _Batch) -> None:
        try:
            self._count(batch)
            with at_priority(max(member.ask.level for member in batch.members)):
                response = batch.send(self._merged(batch))
                response.read()
            self._answer(batch, response)
        except BaseException as error:  # every caller not answered yet gets it: none is left waiting
            self._fail(batch, error)
            if not isinstance(error, Exception):
                raise

    # --- the merged request and its answers ----------------------------------------------------------

    def _merged(self, batch: _Batch) -> Any:
        """One request carrying every member's texts, in member order, with the first one's headers."""
        first = batch.members[0].ask.request
        body = json.loads(first.content)
        body["input"] = [text for member in batch.members for text in member.ask.inputs]
        headers = [(name, value) for name, value in first.headers.items() if name.lower() != "content-length"]
        return self._lib.Request("POST", first.url, headers=headers, json=body, extensions=first.extensions)

    def _count(self, batch: _Batch) -> None:
        with self._lock:
            self._requests += 1
            self._sizes.append(len(batch.members))
            self._waits.append(time.monotonic() - batch.opened)

    def _fail(self, batch: _Batch, error: BaseException) -> None:
        for member in batch.members:
            if member.response is None and member.error is None:
                member.error = error
                self._wake(member)

    def _answer(self, batch: _Batch, response: Any) -> None:
        """Each member's own answer: its slice of the vectors and share of ``usage``, or the failure."""
        body = response.content
        parts = self._split(batch, body) if response.status_code < 300 else None
        headers = [(n, v) for n, v in response.headers.multi_items() if n.lower() not in _BODY_HEADERS]
        elapsed = getattr(response, "_elapsed", None)
        for index, member in enumerate(batch.members):
            if parts is None and response.status_code < 300:
                status, content = _MISMATCH_STATUS, _mismatch(batch, body)
            elif parts is None:
                status, content = response.status_code, body
            else:
                status, content = response.status_code, parts[index]
            own = self._lib.Response(status, headers=headers, content=content, request=member.ask.request)
            if isinstance(elapsed, datetime.timedelta):
                own.elapsed = elapsed
            member.response = own
            self._wake(member)

    def _split(self, batch: _Batch, body: bytes) -> list[bytes] | None:
        """Each member's answer body, or None when the merged answer does not carry one vector per text."""
        try:
            answer = json.loads(body)
            data = sorted(answer["data"], key=lambda item: item["index"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None
        if len(data) != batch.inputs:
            return None
        usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else None
        shares = {
            name: _shares(count, [m.ask.tokens for m in batch.members])
            for name, count in (usage or {}).items()
            if isinstance(count, int) and not isinstance(count, bool)
        }
        parts, start = [], 0
        for index, member in enumerate(batch.members):
            own = data[start : start + len(member.ask.inputs)]
            start += len(member.ask.inputs)
            items = [{**item, "index": position} for position, item in enumerate(own)]
            part = {**answer, "data": items}
            if usage is not None:
                part["usage"] = {**usage, **{name: counts[index] for name, counts in shares.items()}}
            parts.append(json.dumps(part).encode())
        return parts

    @staticmethod
    def _wake(member: _Member) -> None:
        waiter = member.waiter
        if isinstance(waiter, threading.Event):
            waiter.set()
        elif waiter.done():  # a cancelled caller's
            return
        elif isinstance(member.error, asyncio.CancelledError):  # the send was cancelled (the loop closes)
            waiter.cancel()
        elif member.error is not None:
            waiter.set_exception(member.error)
        else:
            waiter.set_result(member.response)

    # --- stats ---------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """callers (embeddings calls that joined a batch), requests (merged requests sent), alone (calls
        too big to share, sent on their own), left (callers cancelled while waiting), callers_per_request
        p50 and max, and wait_s p50 and p99 (from a batch's first call to its send), over the last
        1,024 batches."""
        return stats_of([self])


def stats_of(coalescers: Iterable[Coalescer]) -> dict[str, Any]:
    """`Coalescer.stats` of several coalescers as one (the metrics' view of every client): their counts
    added, the percentiles taken over their batches together."""
    counts = dict.fromkeys(("callers", "requests", "alone", "left", "open"), 0)
    sizes: list[int] = []
    waits: list[float] = []
    for coalescer in coalescers:
        with coalescer._lock:
            for name, count in (("callers", coalescer._callers), ("requests", coalescer._requests), ("alone", coalescer._alone),
                                ("left", coalescer._left), ("open", len(coalescer._open))):
                counts[name] += count
            sizes += coalescer._sizes
            waits += coalescer._waits
    sizes.sort()
    waits.sort()
    return {
        **counts,
        "callers_per_request_p50": _percentile(sizes, 0.5),
        "callers_per_request_max": sizes[-1] if sizes else None,
        "wait_s_p50": _percentile(waits, 0.5),
        "wait_s_p99": _percentile(waits, 0.99),
    }


def _percentile(ordered: list[Any], fraction: float) -> Any:
    """The value at ``fraction`` of the sorted list (nearest rank), None for none."""
    return ordered[math.ceil(fraction * (len(ordered) - 1))] if ordered else None


def _shares(total: int, weights: list[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` (equally when they are all 0), in whole numbers
    adding up to ``total``: the largest remainders get the units left."""
    weights = [max(weight, 0) for weight in weights] if any(weights) else [1] * len(weights)
    whole = sum(weights)
    exact = [total * weight / whole for weight in weights]
    shares = [math.floor(value) for value in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: exact[i] - shares[i], reverse=True)
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    return shares


def _mismatch(batch: _Batch, body: bytes) -> bytes:
    message = (
        f"holysheep: a merged embeddings request of {batch.inputs} texts was answered without one vector per "
        f"text ({len(body)} bytes: {body[:80].decode('utf-8', 'replace')!r}); passed on as {_MISMATCH_STATUS}"
    )
    error = {"message": message, "type": "invalid_response", "param": None, "code": "coalesce_mismatch"}
    return json.dumps({"error": error}).encode()
