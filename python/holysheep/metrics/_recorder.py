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
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlsplit

from holysheep.errors import BudgetExceeded, RateLimitExceeded

if TYPE_CHECKING:
    from holysheep._holysheep import HolySheepRateLimiter
    from holysheep.breaker import CircuitBreaker
    from holysheep.transport._pipeline import _Pipeline
    from holysheep.transport._holds import Hold
    from holysheep.transport._steps import _Steps

_T = TypeVar("_T")

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

#: Each token type with its count's key in a chat completion's ``usage``, then in a response's.
_USAGE_KEYS = (("input", "prompt_tokens", "input_tokens"), ("output", "completion_tokens", "output_tokens"))

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


_DECODE = json.JSONDecoder().decode


def _json_of(content: bytes) -> dict[str, Any] | None:
    """A JSON object's value, or None for anything else (checked by its first byte before parsing:
    every body and answer of the GenAI operations that holds one is a JSON object)."""
    if content[:1] != b"{":
        return None
    try:  # UTF-8, as JSON between systems is (RFC 8259): json.loads would first guess the encoding in Python
        value = _DECODE(content.decode())
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


#: How many kinds of request (operation, server, model) and of answer the caches below keep before
#: they start again: more only costs building their attributes anew.
CACHED_KINDS = 1024


def cached(cache: dict[Any, _T], key: Any, make: Callable[[], _T]) -> _T:
    """``cache[key]``, made by ``make()`` the first time; the cache is emptied once it holds
    CACHED_KINDS entries, so a stream of new models cannot grow it without bound."""
    found = cache.get(key)
    if found is None:
        if len(cache) >= CACHED_KINDS:
            cache.clear()
        found = cache[key] = make()
    return found


class Target:
    """What a kind of request asks and of whom: the attributes all its points and spans carry (GenAI
    operation, provider, server, the model asked for) and its span's name. Made once per kind and
    shared by every request of that kind, so a sink can cache what it derives from it by identity;
    never changed."""

    __slots__ = ("attributes", "span_name")

    def __init__(self, operation: str, host: str, port: int | None, model: str | None) -> None:
        attributes = {"gen_ai.operation.name": operation, **server_attributes(host, port)}
        if model is not None:
            attributes["gen_ai.request.model"] = model
        self.attributes: dict[str, Any] = attributes
        self.span_name = f"{operation} {model}" if model else operation


class Exchange:
    """One request as recorded: what it asked (its `Target`), then its outcome. Recorded once, into
    the sinks it started with, when it ends (a streamed answer: when its body ends)."""

    __slots__ = (
        "decision", "duration_ns", "error_type", "queued", "recorded", "response_model", "started_ns", "status",
        "streamed", "target", "tokens", "waited_s", "_began", "_sinks", "_started",
    )

    def __init__(self, target: Target, sinks: tuple[Sink, ...] = ()) -> None:
        self.target = target
        #: admitted (at once), waited, rejected or budget; None without a limiter.
        self.decision: str | None = None
        #: Whether it had to queue (not admitted at once), and for how long in all.
        self.queued = False
        self.waited_s = 0.0
        #: The answer's status and the model that answered; None until (unless) known.
        self.status: int | None = None
        self.response_model: str | None = None
        self.error_type: str | None = None
        #: ``{"input": n, "output": m}`` as the answer's ``usage`` says.
        self.tokens: dict[str, int] = {}
        #: When it started on the wall clock (ns since the epoch) and how long it took (a monotonic
        #: clock's ns): a span's start and end.
        self.started_ns = time.time_ns()
        self.duration_ns = 0
        #: Whether its answer is streamed (recorded when the body ends), and whether it was recorded.
        self.streamed = False
        self.recorded = False
        self._sinks = sinks
        self._began = [sink.start(self) for sink in sinks]
        self._started = time.perf_counter_ns()

    @property
    def duration_s(self) -> float:
        return self.duration_ns / 1e9

    def record(self, duration_ns: int | None = None) -> None:
        """Records it into its sinks, the first time only: it ends now, or took ``duration_ns`` from its
        ``started_ns`` (a request recorded after the fact: the batch engine's)."""
        if self.recorded:
            return
        self.recorded = True
        self.duration_ns = time.perf_counter_ns() - self._started if duration_ns is None else duration_ns
        for sink, began in zip(self._sinks, self._began):
            sink.record(self, began)

    def stream_ended(self, tail: bytes) -> None:
        """Its streamed body ended: the usage of its last event, then recorded."""
        _read_usage(self, _last_event_with_usage(tail))
        self.record()


#: A request the batch engine finished: (endpoint, model, status, failure, duration_s, ended_ns,
#: response_model, usage as JSON).
FinishedRow = tuple[str, str | None, int | None, str | None, float, int, str | None, str | None]


class Sink(Protocol):
    """Where recordings go: OpenTelemetry or Prometheus. ``start`` runs as a request starts, in its
    caller's context; what it returns is handed to ``record`` as the request ends."""

    def start(self, exchange: Exchange) -> Any: ...
    def record(self, exchange: Exchange, started: Any) -> None: ...
    def close(self) -> None: ...


class _TimedSteps:
    """The pipeline's steps, its waits for the limiter timed into the exchange being recorded, and a
    streamed answer's end watched."""

    __slots__ = ("_exchange", "_steps")

    def __init__(self, steps: _Steps, exchange: Exchange) -> None:
        self._steps = steps
        self._exchange = exchange

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
        hold.watch(self._exchange.stream_ended)
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
        #: The targets made so far, by (operation, host, port, model): one per kind of request.
        self._targets: dict[tuple[str, str, int | None, str | None], Target] = {}
        #: The sinks as a tuple, made anew when they change (each request takes it as it is).
        self._sink_tuple: tuple[Sink, ...] = ()

    def replace_sink(self, sink: Sink) -> None:
        old = self.sinks.pop(type(sink), None)
        if old is not None:
            old.close()
        self.sinks[type(sink)] = sink
        self._sink_tuple = tuple(self.sinks.values())

    def close(self) -> None:
        for sink in self.sinks.values():
            sink.close()
        self.sinks.clear()
        self._sink_tuple = ()

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

    def target(self, operation: str, host: str, port: int | None, model: str | None) -> Target:
        """The one `Target` of requests of this kind (made the first time)."""
        key = (operation, host, port, model)
        return cached(self._targets, key, lambda: Target(*key))

    def exchange(self, pipeline: _Pipeline, request: Any, steps: _Steps, run: Callable[[Any, Any], Coroutine[Any, Any, Any]]) -> Coroutine[Any, Any, Any]:
        """``run(request, steps)`` (the pipeline's exchange), recorded; an endpoint that is not a GenAI
        operation only makes its limiter and breaker watched."""
        if pipeline not in self.pipelines:
            self.pipelines.add(pipeline)
        operation = operation_of(request.url.path)
        if operation is None or not self._sink_tuple:
            return run(request, steps)
        return self._recorded(pipeline, request, steps, run, operation)

    async def _recorded(self, pipeline: _Pipeline, request: Any, steps: _Steps, run: Callable[[Any, Any], Coroutine[Any, Any, Any]], operation: str) -> Any:
        url = request.url
        body = _json_of(request.content)
        model = body.get("model") if body is not None else None
        exchange = Exchange(self.target(operation, url.host, url.port, model if isinstance(model, str) else None), self._sink_tuple)
        if pipeline.limiter is not None:
            exchange.decision = "admitted"
        try:
            response = await run(request, _TimedSteps(steps, exchange))
        except BaseException as exc:
            exchange.error_type = type(exc).__qualname__
            if isinstance(exc, BudgetExceeded):
                exchange.decision = "budget"
            elif isinstance(exc, RateLimitExceeded):
                exchange.decision = "rejected"
            exchange.record()
            raise
        self._read_answer(exchange, response)
        if not exchange.streamed:
            exchange.record()
        return response

    def record_finished(self, base_url: str, rows: Iterable[FinishedRow]) -> None:
        """Records the requests the batch engine finished (`holysheep._holysheep._BatchJob.take_finished`)
        as the transport records its own; a failure's ``error.type`` is its status, else the engine's
        reason (``timeout``, ``connection_error``, ...)."""
        url = urlsplit(base_url)
        host, port = url.hostname or "", url.port
        for endpoint, model, status, failure, duration_s, ended_ns, response_model, usage in rows:
            operation = operation_of(endpoint)
            if operation is None:
                continue
            exchange = Exchange(self.target(operation, host, port, model), self._sink_tuple)
            exchange.status = status
            if failure is not None:
                exchange.error_type = str(status) if status is not None and status >= 400 else failure
            _read_usage(exchange, {"model": response_model, "usage": None if usage is None else json.loads(usage)})
            took_ns = int(duration_s * 1e9)
            exchange.started_ns = ended_ns - took_ns
            exchange.record(took_ns)

    def _read_answer(self, exchange: Exchange, response: Any) -> None:
        """What the answer says: its status, the model that answered and the tokens it counted (an
        answer read in full; a streamed one is still on its way), what the server has left."""
        status = exchange.status = response.status_code
        if status >= 400:
            exchange.error_type = str(status)
        headers = response.headers
        for header, unit in _SERVER_REMAINING.items():
            value = headers.get(header)
            if value is not None:
                try:
                    self.server_remaining[(exchange.target.attributes["server.address"], unit)] = float(value)
                except ValueError:
                    pass
        if status < 400 and response.is_closed:
            _read_usage(exchange, _json_of(response.content))


def _read_usage(exchange: Exchange, answer: dict[str, Any] | None) -> None:
    """The model that answered and the tokens it counted, from an answer (or a stream's last event)."""
    if answer is None:
        return
    if isinstance(answer.get("model"), str):
        exchange.response_model = answer["model"]
    usage = answer.get("usage")
    if isinstance(usage, dict):
        for token_type, chat_key, responses_key in _USAGE_KEYS:
            count = usage.get(chat_key)
            if not isinstance(count, int):
                count = usage.get(responses_key)
            if isinstance(count, int):
                exchange.tokens[token_type] = count


def _last_event_with_usage(tail: bytes) -> dict[str, Any] | None:
    """The last server-sent event at the end of a stream whose data is a JSON object with ``usage``."""
    for line in reversed(tail.splitlines()):
        if line.startswith(b"data:"):
            event = _json_of(line[5:].lstrip())
            if event is not None and isinstance(event.get("usage"), dict):
                return event
    return None
