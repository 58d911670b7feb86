"""Test helpers: ``MockGateway``, an OpenAI-compatible server to try a pipeline offline.

    with MockGateway(rpm=60, tpm=10_000, window_s=1.0) as gw:
        client = openai.OpenAI(base_url=gw.base_url, api_key="hs_test")
        ...
    assert gw.peak_admitted() <= 60       # no window of 1 s admitted more than 60 requests

The server is written in Rust and runs on its own threads on 127.0.0.1; it enforces limits per API key
as a strict sliding window (429 with ``retry-after`` and ``x-ratelimit-*`` headers), plays latency and
faults, and logs every request so a test can prove what its client did.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, NamedTuple

from holysheep._holysheep import MockGatewayConfig, MockGatewayServer

__all__ = ["AdmissionRecord", "Faults", "MockGateway"]


@dataclass(frozen=True)
class Faults:
    """Failures a ``MockGateway`` plays, each for a fraction of admitted requests (drawn from its seed).

        MockGateway(faults=Faults(server_error=0.05, timeout=0.01))
        MockGateway(faults=Faults(outage=(2.0, 5.0)))   # every request 503 from 2 s to 5 s after start

    :param server_error: fraction answered 500.
    :param bad_gateway: fraction answered 502.
    :param unavailable: fraction answered 503 (overloaded).
    :param timeout: fraction never answered: the client's timeout has to end them.
    :param reset: fraction whose connection is reset (TCP RST) without an answer.
    :param malformed: fraction answered 200 with a body that is not valid JSON.
    :param outage: ``(start_s, end_s)`` after the gateway starts during which every request gets 503
        with ``retry-after`` set to the end of the outage; such requests are not admitted.
    :raises ConfigError: (when the gateway is made) a fraction outside [0, 1], fractions adding up to
        more than 1, or an outage that does not end after it starts.
    """

    server_error: float = 0.0
    bad_gateway: float = 0.0
    unavailable: float = 0.0
    timeout: float = 0.0
    reset: float = 0.0
    malformed: float = 0.0
    outage: tuple[float, float] | None = None


class AdmissionRecord(NamedTuple):
    """One request that reached an endpoint of a ``MockGateway``.

    :ivar at: arrival, in seconds since the gateway started: the instant its limits counted it at.
    :ivar key: the API key; ``""`` for a request refused with 401.
    :ivar endpoint: the path, e.g. ``"/v1/chat/completions"``.
    :ivar tokens: the LLM tokens it counts for (prompt plus completion).
    :ivar status: the HTTP status answered, 0 when none was (a timeout or reset fault).
    :ivar admitted: whether it counted against the limits (False for 400, 401, 413, 429 and outage
        refusals).
    :ivar fault: the fault it met (``"server_error"``, ``"timeout"``, ``"outage"``, ...), or None.
    """

    at: float
    key: str
    endpoint: str
    tokens: int
    status: int
    admitted: bool
    fault: str | None


class MockGateway:
    """An OpenAI-compatible gateway on 127.0.0.1 that enforces limits like the real one.

        with MockGateway(rpm=600, tpm=100_000) as gw:
            client = openai.AsyncOpenAI(base_url=gw.base_url, api_key="hs_test")
            print(sum(r.status == 429 for r in gw.admission_log()))

    It serves ``POST /v1/chat/completions`` (also SSE streaming), ``POST /v1/embeddings``,
    ``GET /v1/models`` and ``GET /v1/quota``. Every endpoint counts as one request against the limits.
    Tokens are counted by a fixed rule (4 characters a token, 3 more per chat message; a reply is
    ``completion_tokens`` words "baa", fewer when ``max_tokens`` says so), charged in full on arrival.

    :param rpm: requests per window (a "minute" of ``window_s``) per API key; None for no limit.
    :param tpm: LLM tokens per window per API key.
    :param concurrency: requests in flight at once per API key.
    :param latency: seconds before each answer, or ``(low, high)`` for a uniform draw from ``seed``.
    :param faults: failures to play, see ``Faults``.
    :param window_s: the length of a "minute"; shorten it so a test runs a minute in a second. An "hour"
        is 60 windows and a "day" 1,440.
    :param rph: requests per hour; ``rpd``, ``tph``, ``tpd`` likewise per day and in tokens.
    :param credit_tokens: tokens a key may spend in the gateway's life; then 429 ``insufficient_quota``.
    :param api_keys: the key or keys accepted; None accepts any non-empty bearer token. Others get 401.
    :param port: 0 picks a free port.
    :param seed: makes latency draws, faults and embeddings reproducible.
    :param embedding_dim: length of embedding vectors when the request gives no ``dimensions``.
    :param completion_tokens: length of every chat reply.
    :param log: keep the admission log (turn off for long runs: a record costs 40 bytes).
    :raises ConfigError: a bad value, naming its field.
    """

    __slots__ = ("__weakref__", "_config", "_lock", "_port", "_server")

    def __init__(
        self,
        rpm: int | None = None,
        tpm: int | None = None,
        concurrency: int | None = None,
        latency: float | tuple[float, float] = 0.0,
        faults: Faults | None = None,
        window_s: float = 60.0,
        *,
        rph: int | None = None,
        rpd: int | None = None,
        tph: int | None = None,
        tpd: int | None = None,
        credit_tokens: int | None = None,
        api_keys: str | Sequence[str] | None = None,
        port: int = 0,
        seed: int = 0,
        embedding_dim: int = 1536,
        completion_tokens: int = 16,
        log: bool = True,
    ) -> None:
        faults = faults or Faults()
        latency_s, latency_max_s = latency if isinstance(latency, tuple) else (latency, None)
        if isinstance(api_keys, str):  # one key, not a sequence of one-letter keys
            api_keys = [api_keys]
        self._config = MockGatewayConfig(
            rpm=rpm,
            rph=rph,
            rpd=rpd,
            tpm=tpm,
            tph=tph,
            tpd=tpd,
            concurrency=concurrency,
            credit_tokens=credit_tokens,
            window_s=window_s,
            api_keys=None if api_keys is None else list(api_keys),
            latency_s=latency_s,
            latency_max_s=latency_max_s,
            seed=seed,
            embedding_dim=embedding_dim,
            completion_tokens=completion_tokens,
            log=log,
            server_error=faults.server_error,
            bad_gateway=faults.bad_gateway,
            unavailable=faults.unavailable,
            timeout=faults.timeout,
            reset=faults.reset,
            malformed=faults.malformed,
            outage_s=faults.outage,
        )
        self._port = port
        self._server: MockGatewayServer | None = None
        self._lock = threading.Lock()

    def start(self) -> MockGateway:
        """Starts serving; after a ``stop()`` it starts again on the same port, with a fresh log.

        :raises OSError: the port is taken.
        :raises ConfigError: the port is not between 0 and 65535.
        """
        with self._lock:
            if self._server is not None and self._server.running:
                return self
            self._server = MockGatewayServer(self._config, self._port)
            self._port = self._server.port
            _running.add(self)
        return self

    def stop(self) -> None:
        """Stops serving and frees the port; requests still open are dropped. Safe to call again."""
        with self._lock:
            if self._server is not None:
                self._server.stop()
            _running.discard(self)

    def __enter__(self) -> MockGateway:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def window_s(self) -> float:
        """The length of the gateway's "minute", in seconds."""
        return self._config.window_s

    @property
    def running(self) -> bool:
        """Whether it is serving now."""
        return self._server is not None and self._server.running

    @property
    def port(self) -> int:
        """The port it listens on (the one picked, once started with port 0)."""
        return self._port

    @property
    def base_url(self) -> str:
        """The URL to give an OpenAI client, e.g. ``http://127.0.0.1:8080/v1``."""
        if self._port == 0:
            raise RuntimeError("MockGateway has no port yet: start it first")
        return f"http://127.0.0.1:{self._port}/v1"

    def _last_server(self) -> MockGatewayServer:
        if self._server is None:
            raise RuntimeError("MockGateway has not been started")
        return self._server

    def admission_log(self) -> list[AdmissionRecord]:
        """Every request of the current (or last) run that reached an endpoint, in arrival order.

        Readable after ``stop()``; ``start()`` begins a new log.
        """
        return [AdmissionRecord(*fields) for fields in self._last_server().admission_log()]

    def peak_admitted(
        self,
        unit: Literal["requests", "tokens"] = "requests",
        *,
        key: str | None = None,
        window_s: float | None = None,
    ) -> int:
        """The most admitted requests (or tokens) in any interval of ``window_s`` (default: the gateway's).

        A client kept within a limit of n per window never gets this above n:
        ``assert gw.peak_admitted() <= 60``. Computed exactly, in nanoseconds, from the admission log.

        :param key: count one API key only; by default all of them together.
        """
        span = self.window_s if window_s is None else window_s
        return self._last_server().peak_admitted(span, unit, key)

    def __repr__(self) -> str:
        state = f"serving on {self.base_url}" if self.running else "stopped"
        return f"<MockGateway {state}, window {self.window_s:g} s>"


# Gateways still serving when the interpreter exits are stopped first, so none outlives it.
_running: weakref.WeakSet[MockGateway] = weakref.WeakSet()


@atexit.register
def _stop_all_at_exit() -> None:
    for gateway in list(_running):
        gateway.stop()
