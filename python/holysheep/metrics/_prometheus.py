"""The Prometheus sink: the same metrics as Prometheus text on 127.0.0.1, served by prometheus-client
from a daemon thread. OpenTelemetry names become Prometheus names as its exporter makes them
(``holysheep.rate_limiting.requests`` is ``holysheep_rate_limiting_requests_total``; seconds end in
``_seconds``); attributes become labels, dots as underscores."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from holysheep.metrics._readings import EXTRA_INSTRUMENTS, INSTRUMENTS, Reading, Readings
from holysheep.metrics._recorder import DURATION_BUCKETS, TOKEN_BUCKETS, Exchange, Target, cached

try:
    from prometheus_client import CollectorRegistry, Histogram, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as err:  # pragma: no cover - the extra is installed in tests
    raise ImportError("hs.serve_metrics() needs prometheus-client: pip install 'holysheep[prometheus]'") from err

if TYPE_CHECKING:
    from holysheep.metrics._recorder import Recorder

#: The attributes a request's points carry, as labels.
_REQUEST_ATTRIBUTES = ["gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model", "gen_ai.response.model", "server.address"]
_REQUEST_LABELS = [attribute.replace(".", "_") for attribute in _REQUEST_ATTRIBUTES]


def _request_labels(exchange: Exchange) -> list[str]:
    """The values of a request's labels (`_REQUEST_ATTRIBUTES`), empty where it has none."""
    attributes = {**exchange.target.attributes, "gen_ai.response.model": exchange.response_model or ""}
    return [str(attributes.get(attribute, "")) for attribute in _REQUEST_ATTRIBUTES]


def prometheus_name(name: str, unit: str) -> str:
    """A metric's Prometheus name (without a counter's ``_total``, which the client adds)."""
    base = name.replace(".", "_")
    return base + "_seconds" if unit == "s" else base


def _labels(attributes: dict[str, Any]) -> dict[str, str]:
    return {key.replace(".", "_"): str(value) for key, value in attributes.items()}


class _LimiterCollector(Collector):
    """Reads the watched limiters at each scrape."""

    def __init__(self, readings: Readings) -> None:
        self._readings = readings

    def collect(self) -> Iterator[Metric]:
        self._readings.fresh()
        for instrument in INSTRUMENTS:
            name = prometheus_name(instrument.name, instrument.unit)
            yield _family(_family_of(instrument.kind), name, instrument.description, self._readings.of(instrument))
        for extra, kind, unit, description, read in EXTRA_INSTRUMENTS:
            yield _family(_family_of(kind), prometheus_name(extra, unit), description, read(self._readings))


def _family_of(kind: str) -> type[CounterMetricFamily | GaugeMetricFamily]:
    """A counter is a Prometheus counter; an up-down counter or a gauge is a gauge."""
    return CounterMetricFamily if kind == "counter" else GaugeMetricFamily


def _family(family: type[CounterMetricFamily | GaugeMetricFamily], name: str, description: str, readings: list[Reading]) -> Metric:
    labels = sorted({key for _, attributes in readings for key in _labels(attributes)})
    metric = family(name, description, labels=labels)
    for value, attributes in readings:
        shown = _labels(attributes)
        metric.add_metric([shown.get(label, "") for label in labels], value)
    return metric


class MetricsServer:
    """Prometheus text on ``http://127.0.0.1:{port}/metrics``; `close` stops serving."""

    def __init__(self, server: Any) -> None:
        self._server = server

    @property
    def port(self) -> int:
        port: int = self._server.server_port
        return port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __repr__(self) -> str:
        return f"<MetricsServer http://127.0.0.1:{self.port}/metrics>"


class PrometheusSink:
    """A registry of its own: the request histograms, recorded as requests end, and the limiters'
    metrics, read at each scrape."""

    def __init__(self, recorder: Recorder) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._token_usage = Histogram(
            "gen_ai_client_token_usage", "Number of input and output tokens used.",
            [*_REQUEST_LABELS, "gen_ai_token_type"], registry=self.registry, buckets=TOKEN_BUCKETS,
        )
        self._duration = Histogram(
            "gen_ai_client_operation_duration_seconds", "GenAI operation duration.",
            [*_REQUEST_LABELS, "error_type"], registry=self.registry, buckets=DURATION_BUCKETS,
        )
        self._time_in_queue = Histogram(
            "holysheep_rate_limiting_request_time_in_queue_seconds",
            "Time a request sent through holysheep's transport waited in its limiter's queue (those that queued).",
            [*_REQUEST_LABELS, "holysheep_rate_limiting_result"], registry=self.registry, buckets=DURATION_BUCKETS,
        )
        self.registry.register(_LimiterCollector(Readings(recorder)))
        self._servers: list[MetricsServer] = []
        #: The label values of each kind of answer (its target, the model that answered), made once.
        self._labels: dict[tuple[Target, str | None], list[str]] = {}

    def serve(self, port: int) -> MetricsServer:
        server, _thread = start_http_server(port, addr="127.0.0.1", registry=self.registry)
        served = MetricsServer(server)
        self._servers.append(served)
        return served

    def start(self, exchange: Exchange) -> None:
        return None

    def record(self, exchange: Exchange, started: None) -> None:
        labels = cached(self._labels, (exchange.target, exchange.response_model), lambda: _request_labels(exchange))
        for token_type, count in exchange.tokens.items():
            self._token_usage.labels(*labels, token_type).observe(count)
        self._duration.labels(*labels, exchange.error_type or "").observe(exchange.duration_s)
        if exchange.queued:
            self._time_in_queue.labels(*labels, exchange.decision).observe(exchange.waited_s)

    def close(self) -> None:
        for server in self._servers:
            server.close()
        self._servers.clear()
