"""The OpenTelemetry sink: the GenAI client metrics and a span per request, recorded as requests
end, and the limiters' ``holysheep.*`` metrics as observable instruments read at collection."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from holysheep.metrics._readings import EXTRA_INSTRUMENTS, INSTRUMENTS, Instrument, Reading, Readings
from holysheep.metrics._recorder import DURATION_BUCKETS, TOKEN_BUCKETS, Exchange, Target, cached

try:
    from opentelemetry import metrics, trace
    from opentelemetry.context import Context, get_current
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as err:  # pragma: no cover - the extra is installed in tests
    raise ImportError("hs.instrument() needs opentelemetry-api: pip install 'holysheep[otel]'") from err

#: The span attribute of each token type's count.
_USAGE_SPAN_ATTRIBUTES = {"input": "gen_ai.usage.input_tokens", "output": "gen_ai.usage.output_tokens"}


def _version() -> str:
    from holysheep import __version__

    return __version__


class OpenTelemetrySink:
    """Records into a meter and a tracer; its observable instruments read the recorder's limiters."""

    def __init__(self, meter_provider: Any = None, tracer_provider: Any = None) -> None:

        self.providers = (meter_provider, tracer_provider)
        meter = (meter_provider or metrics.get_meter_provider()).get_meter("holysheep", _version())
        self._tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer("holysheep", _version())
        self._closed = False
        self._token_usage = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._time_in_queue = meter.create_histogram(
            "holysheep.rate_limiting.request.time_in_queue", unit="s",
            description="Time a request sent through holysheep's transport waited in its limiter's queue "
            "(those that queued, as ASP.NET Core's time_in_queue).",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._readings: Readings | None = None
        #: The attribute sets of each kind of answer, made once (`_Points`).
        self._points: dict[tuple[Target, str | None, str | None], _Points] = {}
        makers = {
            "counter": meter.create_observable_counter,
            "updown": meter.create_observable_up_down_counter,
            "gauge": meter.create_observable_gauge,
        }
        for instrument in INSTRUMENTS:
            makers[instrument.kind](instrument.name, callbacks=[self._observer(instrument)], unit=instrument.unit, description=instrument.description)
        for name, kind, unit, description, read in EXTRA_INSTRUMENTS:
            makers[kind](name, callbacks=[self._extra(read)], unit=unit, description=description)

    def _readings_now(self) -> Readings | None:
        from holysheep.metrics import _hook

        if self._closed or _hook.recorder is None:
            return None
        if self._readings is None:
            self._readings = Readings(_hook.recorder)
        return self._readings

    def _observer(self, instrument: Instrument) -> Callable[[CallbackOptions], Iterable[Observation]]:
        first = instrument is INSTRUMENTS[0]

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            readings = self._readings_now()
            if readings is None:
                return []
            if first:  # a collection reads the instruments in order: each limiter anew, once
                readings.fresh()
            return _observations(readings.of(instrument))

        return observe

    def _extra(self, read: Callable[[Readings], list[Reading]]) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            readings = self._readings_now()
            return [] if readings is None else _observations(read(readings))

        return observe

    def start(self, exchange: Exchange) -> Context:
        """The context the request starts in: its span's parent, and the context its points are recorded
        in (so the SDK's trace-based exemplar filter sees the caller's span, wherever the request ends)."""
        return get_current()

    def record(self, exchange: Exchange, parent: Context) -> None:
        """Its points (tokens by type, duration, time in queue) and its span, made now with everything it
        carries at once and dated from the request's start (it is never made current: nothing nests in it)."""
        points = cached(self._points, (exchange.target, exchange.response_model, exchange.error_type), lambda: _Points(exchange))
        for token_type, count in exchange.tokens.items():
            self._token_usage.record(count, points.tokens[token_type], context=parent)
        self._duration.record(exchange.duration_s, points.duration, context=parent)
        attributes = dict(points.duration)
        if exchange.decision is not None:
            if exchange.queued:
                self._time_in_queue.record(exchange.waited_s, {"holysheep.rate_limiting.result": exchange.decision, **points.usage}, context=parent)
            attributes["holysheep.rate_limiting.result"] = exchange.decision
            attributes["holysheep.rate_limiting.wait_s"] = exchange.waited_s
        if exchange.status is not None:
            attributes["http.response.status_code"] = exchange.status
        for token_type, count in exchange.tokens.items():
            attributes[_USAGE_SPAN_ATTRIBUTES[token_type]] = count
        span = self._tracer.start_span(
            exchange.target.span_name, context=parent, kind=SpanKind.CLIENT, attributes=attributes, start_time=exchange.started_ns
        )
        if exchange.error_type is not None:
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=exchange.started_ns + exchange.duration_ns)

    def close(self) -> None:
        """Its observable instruments report nothing from now on (an SDK cannot unregister them)."""
        self._closed = True


class _Points:
    """The attribute sets recorded for one kind of answer (its target, the model that answered, its
    error type), made once and reused: the SDK copies what it is given, and builds them anew per record
    only at a price."""

    __slots__ = ("duration", "tokens", "usage")

    def __init__(self, exchange: Exchange) -> None:
        usage = dict(exchange.target.attributes)
        if exchange.response_model is not None:
            usage["gen_ai.response.model"] = exchange.response_model
        #: What a token-usage point carries besides its ``gen_ai.token.type``.
        self.usage = usage
        self.tokens = {token_type: {**usage, "gen_ai.token.type": token_type} for token_type in _USAGE_SPAN_ATTRIBUTES}
        #: What a duration point carries, and a span before its outcome is added.
        self.duration = usage if exchange.error_type is None else {**usage, "error.type": exchange.error_type}


def _observations(readings: list[Reading]) -> list[Observation]:
    return [Observation(value, attributes) for value, attributes in readings]
