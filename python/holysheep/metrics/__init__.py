"""Seeing it run: OpenTelemetry (`instrument`) and Prometheus (`serve_metrics`).

Requests through holysheep's clients and transport are recorded in the OpenTelemetry GenAI semantic
conventions (``gen_ai.client.token.usage``, ``gen_ai.client.operation.duration``, a span each), and the
limiters' own state under ``holysheep.*`` (named after ASP.NET Core's ``rate_limiting.*``), read from
`HolySheepRateLimiter.stats` when metrics are collected. Until one of them is called nothing is
recorded, and a request costs one check of a module-level flag. opentelemetry-api and
prometheus-client are optional extras (``holysheep[otel]``, ``holysheep[prometheus]``), imported here
only when used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from holysheep.metrics import _hook

if TYPE_CHECKING:
    from holysheep._holysheep import HolySheepRateLimiter
    from holysheep.metrics._prometheus import MetricsServer
    from holysheep.metrics._recorder import Recorder

__all__ = ["instrument", "serve_metrics", "uninstrument"]

Limiters = Mapping[str, "HolySheepRateLimiter"] | Iterable["HolySheepRateLimiter"] | None


def _active_recorder() -> Recorder:
    from holysheep.metrics._recorder import Recorder

    if _hook.recorder is None:
        _hook.recorder = Recorder()
    return _hook.recorder


def instrument(meter_provider: Any = None, tracer_provider: Any = None, *, limiters: Limiters = None) -> None:
    """Records metrics and spans with OpenTelemetry, from now on.

        from opentelemetry.sdk.metrics import MeterProvider
        hs.instrument(meter_provider=MeterProvider(metric_readers=[reader]))
        client = hs.AsyncHolySheep(tier="pro")   # its requests and its limiter are recorded

    :param meter_provider: where metrics go; OpenTelemetry's global one by default.
    :param tracer_provider: where spans go (one per request); the global one by default.
    :param limiters: limiters to watch besides those of the clients and transports that send
        requests (watched from their first request on): a list, or ``{"name": limiter}`` to name them
        in the ``holysheep.limiter`` attribute. Held weakly.
    :raises ImportError: opentelemetry-api is not installed (``pip install holysheep[otel]``).
    """
    from holysheep.metrics._otel import OpenTelemetrySink

    recorder = _active_recorder()
    recorder.watch_all(limiters)
    current = recorder.sinks.get(OpenTelemetrySink)
    # Instruments are made once per provider: an SDK keeps the first callbacks of a name.
    if not (isinstance(current, OpenTelemetrySink) and current.providers == (meter_provider, tracer_provider)):
        recorder.replace_sink(OpenTelemetrySink(meter_provider, tracer_provider))


def serve_metrics(port: int = 9464, *, limiters: Limiters = None) -> MetricsServer:
    """Serves the same metrics as Prometheus text (``holysheep_*``, ``gen_ai_*``) on
    ``http://127.0.0.1:{port}/metrics`` from a daemon thread, from now on.

        server = hs.serve_metrics(9464)    # scrape 127.0.0.1:9464; server.close() stops it

    :param port: the port on 127.0.0.1; 0 picks a free one (``server.port`` says which).
    :param limiters: as for `instrument`.
    :raises ImportError: prometheus-client is not installed (``pip install holysheep[prometheus]``).
    :raises ConfigError: a port that is not an int from 0 to 65535, named ``port``.
    """
    from holysheep._holysheep import _check_count
    from holysheep.metrics._prometheus import PrometheusSink

    _check_count("port", port, 0, 65_535)
    recorder = _active_recorder()
    recorder.watch_all(limiters)
    sink = recorder.sinks.get(PrometheusSink)
    if not isinstance(sink, PrometheusSink):
        sink = PrometheusSink(recorder)
        recorder.replace_sink(sink)
    return sink.serve(port)


def uninstrument() -> None:
    """Stops recording: the transport is back to one flag check per request, served metrics stop."""
    recorder, _hook.recorder = _hook.recorder, None
    if recorder is not None:
        recorder.close()
