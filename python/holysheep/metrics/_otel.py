"""The OpenTelemetry sink: the GenAI client metrics and a span per request, recorded as requests
end, and the limiters' ``holysheep.*`` metrics as observable instruments read at collection."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from holysheep.metrics._readings import EXTRA_INSTRUMENTS, INSTRUMENTS, Instrument, Reading, Readings
from holysheep.metrics._recorder import DURATION_BUCKETS, TOKEN_BUCKETS, Exchange

try:
    from opentelemetry import metrics, trace
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as err:  # pragma: no cover - the extra is installed in tests
    raise ImportError("hs.instrument() needs opentelemetry-api: pip install 'holysheep[otel]'") from err

#: The attributes a token-usage point carries (besides ``gen_ai.token.type``).
_USAGE_ATTRIBUTES = (
    "gen_ai.operation.name",
    "gen_ai.provider.name",
    "gen_ai.request.model",
    "gen_ai.response.model",
    "server.address",
    "server.port",
)


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

    def start(self, exchange: Exchange, started_ns: int | None = None) -> Any:
        attributes = exchange.attributes
        model = attributes.get("gen_ai.request.model")
        name = attributes["gen_ai.operation.name"] + (f" {model}" if model else "")
        return self._tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes, start_time=started_ns)

    def record(self, exchange: Exchange, span: Any) -> None:
        attributes = {key: value for key, value in exchange.attributes.items() if key in _USAGE_ATTRIBUTES}
        for token_type, count in exchange.tokens.items():
            self._token_usage.record(count, {**attributes, "gen_ai.token.type": token_type})
        duration_attributes = dict(attributes)
        if exchange.error_type is not None:
            duration_attributes["error.type"] = exchange.error_type
        self._duration.record(exchange.duration_s, duration_attributes)
        if exchange.decision is not None:
            if exchange.queued:
                self._time_in_queue.record(exchange.waited_s, {"holysheep.rate_limiting.result": exchange.decision, **attributes})
            span.set_attribute("holysheep.rate_limiting.result", exchange.decision)
            span.set_attribute("holysheep.rate_limiting.wait_s", exchange.waited_s)
        span.set_attributes({key: value for key, value in exchange.attributes.items() if key.startswith(("gen_ai.response", "http."))})
        for token_type, count in exchange.tokens.items():
            span.set_attribute(f"gen_ai.usage.{token_type}_tokens", count)
        if exchange.error_type is not None:
            span.set_attribute("error.type", exchange.error_type)
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=exchange.ended_ns)

    def close(self) -> None:
        """Its observable instruments report nothing from now on (an SDK cannot unregister them)."""
        self._closed = True


def _observations(readings: list[Reading]) -> list[Observation]:
    return [Observation(value, attributes) for value, attributes in readings]
