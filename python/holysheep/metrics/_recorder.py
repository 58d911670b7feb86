"""What is recorded and where it goes: each request through the transport (GenAI attributes, its time
in the limiter's queue, the decision, its tokens, the server's ``x-ratelimit-remaining-*``), and the
limiters and breakers watched, whose state the sinks read when they collect.

A streamed answer is recorded when its body ends (read to the end, closed or freed), not at its headers:
its duration is the whole stream's, and its tokens are the ``usage`` of its last event (sent when the
request asks for it: ``stream_options={"include_usage": True}``)."""

from __future__ import annotations

import json
import time
import weakref
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from holysheep.errors import BudgetExceeded, RateLimitExceeded

if TYPE_CHECKING:
    from holysheep._holysheep import HolySheepRateLimiter
    from holysheep.breaker import CircuitBreaker
    from holysheep.transport._pipeline import _Pipeline
    from holysheep.transport._holds import Hold
    from holysheep.transport._steps import _Steps

#: The GenAI operation of each endpoint (by the end of its path); other endpoints are not recorded.
_OPERATIONS = {
    "/chat/completions": "chat",
    "/responses": "chat",
    "/embeddings": "embeddings",
    "/completions": "text_completion",
}

#: The bucket boundaries the GenAI conventions advise.
TOKEN_BUCKETS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864]
DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]

#: The server's headers saying what it has left, by the unit they count.
_SERVER_REMAINING = {"x-ratelimit-remaining-requests": "requests", "x-ratelimit-remaining-tokens": "tokens"}


def operation_of(path: str) -> str | None:
    """The GenAI operation name of a request to ``path``, or None for an endpoint that is not one."""
    for suffix, operation in _OPERATIONS.items():
        if path.endswith(suffix):
            return operation
    return None


def provider_of(host: str) -> str:
    """``gen_ai.provider.name`` for a host: HolySheep's gateway, Azure, or the OpenAI API it speaks."""
    if host.endswith("holysheep.ai"):
        return "holysheep"
    if host.endswith(".openai.azure.com"):
        return "azure.ai.openai"
    return "openai"


def server_attributes(host: str, port: int | None) -> dict[str, Any]:
    """The attributes naming who answered, on every request recorded (the transport's and the engine's)."""
    attributes: dict[str, Any] = {"gen_ai.provider.name": provider_of(host), "server.address": host}
    if port is not None:
        attributes["server.port"] = port
    return attributes


def _json_of(content: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


class Exchange:
    """One request as recorded: its attributes, then its outcome."""

    __slots__ = (
        "attributes", "decision", "duration_s", "ended_ns", "error_type", "queued", "recorded", "streamed", "tokens",
        "waited_s",
    )

    def __init__(self, attributes: dict[str, Any]) -> None:
        self.attributes = attributes
        #: admitted (at once), waited, rejected or budget; None without a limiter.
        self.decision: str | None = None
        #: Whether it had to queue (not admitted at once), and for how long in all.
        self.queued = False
        self.waited_s = 0.0
        self.duration_s = 0.0
        self.error_type: str | None = None
        #: ``{"input": n, "output": m}`` as the answer's ``usage`` says.
        self.tokens: dict[str, int] = {}
        #: Whether its answer is streamed (recorded when the body ends), and whether it was recorded.
        self.streamed = False
        self.recorded = False
        #: When it ended on the wall clock (ns since the epoch), for one recorded after the fact (the
        #: batch engine's); None: it ends as it is recorded.
        self.ended_ns: int | None = None


#: A request the batch engine finished: (endpoint, model, status, failure, duration_s, ended_ns,
#: response_model, usage as JSON).
FinishedRow = tuple[str, str | None, int | None, str | None, float, int, str | None, str | None]


class Sink(Protocol):
    """Where recordings go: OpenTelemetry or Prometheus. ``started_ns`` (wall clock, ns since the epoch)
    dates a request recorded after the fact; None: it starts now."""

    def start(self, exchange: Exchange, started_ns: int | None = None) -> Any: ...
    def record(self, exchange: Exchange, started: Any) -> None: ...
    def close(self) -> None: ...


class _TimedSteps:
    """The pipeline's steps, its waits for the limiter timed into the exchange being recorded, and a
    streamed answer's end watched."""

    __slots__ = ("_ended", "_exchange", "_steps")

    def __init__(self, steps: _Steps, exchange: Exchange, ended: Callable[[bytes], None]) -> None:
        self._steps = steps
        self._exchange = exchange
        self._ended = ended

    async def acquire(self, limiter: HolySheepRateLimiter, tokens: int, price: float) -> Any:
        started = time.perf_counter()
        self._exchange.queued = True
        try:
            return await self._steps.acquire(limiter, tokens, price)
        finally:
            self._exchange.waited_s += time.perf_counter() - started
            self._exchange.decision = "waited"

    def held(self, hold: Hold, events: Any = None) -> Any:
        """The answer's body, streamed: the exchange is recorded when it ends."""
        self._exchange.streamed = True
        hold.watch(self._ended)
        return self._steps.held(hold, events)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._steps, name)


class Recorder:
    """Records requests into its sinks and keeps what they read at collection: the limiters and
    breakers watched (weakly), and what servers said they have left."""

    def __init__(self) -> None:
        self.sinks: dict[type, Sink] = {}
        #: Limiters by the name shown in the ``holysheep.limiter`` attribute (None: a name from its limits).
        self.limiters: weakref.WeakKeyDictionary[HolySheepRateLimiter, str | None] = weakref.WeakKeyDictionary()
        self.pipelines: weakref.WeakSet[_Pipeline] = weakref.WeakSet()
        #: ``(server.address, unit) -> remaining`` from the last answer's ``x-ratelimit-remaining-*``.
        self.server_remaining: dict[tuple[str, str], float] = {}

    def replace_sink(self, sink: Sink) -> None:
        old = self.sinks.pop(type(sink), None)
        if old is not None:
            old.close()
        self.sinks[type(sink)] = sink

    def close(self) -> None:
        for sink in self.sinks.values():
            sink.close()
        self.sinks.clear()

    def watch_all(self, limiters: Mapping[str, HolySheepRateLimiter] | Iterable[HolySheepRateLimiter] | None) -> None:
        if isinstance(limiters, Mapping):
            for name, limiter in limiters.items():
                self.limiters[limiter] = name
        else:
            for limiter in limiters or ():
                self.limiters.setdefault(limiter, None)

    def watched(self) -> list[tuple[HolySheepRateLimiter, str | None]]:
        """The limiters watched now: those given, and those of the transports that sent requests."""
        from holysheep._holysheep import HolySheepRateLimiter

        found = dict(self.limiters.items())
        for pipeline in list(self.pipelines):
            limiter = getattr(pipeline, "limiter", None)
            for each in limiter.values() if isinstance(limiter, Mapping) else [limiter]:
                if isinstance(each, HolySheepRateLimiter):
                    found.setdefault(each, None)
        return list(found.items())

    def breakers(self) -> list[tuple[str, CircuitBreaker]]:
        """The breakers of the transports that sent requests, by name (a keyed one's by key)."""
        from holysheep.breaker import CircuitBreaker, KeyedBreaker

        found: dict[int, tuple[str, CircuitBreaker]] = {}
        for pipeline in list(self.pipelines):
            breaker = getattr(pipeline, "breaker", None)
            if isinstance(breaker, CircuitBreaker):
                found[id(breaker)] = (breaker.name, breaker)
            elif isinstance(breaker, KeyedBreaker):
                for key, each in list(breaker._breakers.items()):
                    found[id(each)] = (f"{each.name}[{key}]", each)
        return list(found.values())

    def exchange(self, pipeline: _Pipeline, request: Any, steps: _Steps, run: Callable[[Any, Any], Coroutine[Any, Any, Any]]) -> Coroutine[Any, Any, Any]:
        """``run(request, steps)`` (the pipeline's exchange), recorded; an endpoint that is not a GenAI
        operation only makes its limiter and breaker watched."""
        if pipeline not in self.pipelines:
            self.pipelines.add(pipeline)
        operation = operation_of(request.url.path)
        if operation is None or not self.sinks:
            return run(request, steps)
        return self._recorded(pipeline, request, steps, run, operation)

    async def _recorded(self, pipeline: _Pipeline, request: Any, steps: _Steps, run: Callable[[Any, Any], Coroutine[Any, Any, Any]], operation: str) -> Any:
        attributes = {"gen_ai.operation.name": operation, **server_attributes(request.url.host, request.url.port)}
        body = _json_of(request.content) if request.headers.get("content-type", "").startswith("application/json") else None
        if body is not None and isinstance(body.get("model"), str):
            attributes["gen_ai.request.model"] = body["model"]
        exchange = Exchange(attributes)
        if pipeline.limiter is not None:
            exchange.decision = "admitted"
        sinks = list(self.sinks.values())
        started_at = time.perf_counter()
        started = [sink.start(exchange) for sink in sinks]

        def record() -> None:
            if exchange.recorded:
                return
            exchange.recorded = True
            exchange.duration_s = time.perf_counter() - started_at
            for sink, began in zip(sinks, started):
                sink.record(exchange, began)

        def stream_ended(tail: bytes) -> None:
            _read_usage(exchange, _last_event_with_usage(tail))
            record()

        try:
            response = await run(request, _TimedSteps(steps, exchange, stream_ended))
        except BaseException as exc:
            exchange.error_type = type(exc).__qualname__
            if isinstance(exc, BudgetExceeded):
                exchange.decision = "budget"
            elif isinstance(exc, RateLimitExceeded):
                exchange.decision = "rejected"
            record()
            raise
        self._read_answer(exchange, response)
        if not exchange.streamed:
            record()
        return response

    def record_finished(self, base_url: str, rows: Iterable[FinishedRow]) -> None:
        """Records the requests the batch engine finished (`holysheep._holysheep._BatchJob.take_finished`)
        as the transport records its own; a failure's ``error.type`` is its status, else the engine's
        reason (``timeout``, ``connection_error``, ...)."""
        url = urlsplit(base_url)
        base = server_attributes(url.hostname or "", url.port)
        sinks = list(self.sinks.values())
        for endpoint, model, status, failure, duration_s, ended_ns, response_model, usage in rows:
            operation = operation_of(endpoint)
            if operation is None:
                continue
            exchange = Exchange({"gen_ai.operation.name": operation, **base})
            if model is not None:
                exchange.attributes["gen_ai.request.model"] = model
            if status is not None:
                exchange.attributes["http.response.status_code"] = status
            if failure is not None:
                exchange.error_type = str(status) if status is not None and status >= 400 else failure
            _read_usage(exchange, {"model": response_model, "usage": None if usage is None else json.loads(usage)})
            exchange.duration_s = duration_s
            exchange.ended_ns = ended_ns
            for sink in sinks:
                sink.record(exchange, sink.start(exchange, ended_ns - int(duration_s * 1e9)))

    def _read_answer(self, exchange: Exchange, response: Any) -> None:
        """What the answer says: its status, the model that answered and the tokens it counted (an
        answer read in full; a streamed one is still on its way), what the server has left."""
        status = response.status_code
        exchange.attributes["http.response.status_code"] = status
        if status >= 400:
            exchange.error_type = str(status)
        address = exchange.attributes["server.address"]
        for header, unit in _SERVER_REMAINING.items():
            value = response.headers.get(header)
            if value is not None:
                try:
                    self.server_remaining[(address, unit)] = float(value)
                except ValueError:
                    pass
        if not response.is_closed or status >= 400:
            return
        _read_usage(exchange, _json_of(response.content) if "json" in response.headers.get("content-type", "") else None)


def _read_usage(exchange: Exchange, answer: dict[str, Any] | None) -> None:
    """The model that answered and the tokens it counted, from an answer (or a stream's last event)."""
    if answer is None:
        return
    if isinstance(answer.get("model"), str):
        exchange.attributes["gen_ai.response.model"] = answer["model"]
    usage = answer.get("usage")
    if isinstance(usage, dict):
        for token_type, keys in (("input", ("prompt_tokens", "input_tokens")), ("output", ("completion_tokens", "output_tokens"))):
            count = next((usage[key] for key in keys if isinstance(usage.get(key), int)), None)
            if count is not None:
                exchange.tokens[token_type] = count


def _last_event_with_usage(tail: bytes) -> dict[str, Any] | None:
    """The last server-sent event at the end of a stream whose data is a JSON object with ``usage``."""
    for line in reversed(tail.splitlines()):
        if line.startswith(b"data:"):
            event = _json_of(line[5:])
            if event is not None and isinstance(event.get("usage"), dict):
                return event
    return None
