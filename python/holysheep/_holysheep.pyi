"""Stubs for the native module; import ``holysheep`` rather than this."""

__version__: str

# --- the mock gateway (python/holysheep/testing.py wraps these) ---

from typing import final

@final
class MockGatewayConfig:
    """A gateway configuration, checked when made: a bad field raises ConfigError naming it."""

    def __new__(
        cls,
        *,
        rpm: int | None = None,
        rph: int | None = None,
        rpd: int | None = None,
        tpm: int | None = None,
        tph: int | None = None,
        tpd: int | None = None,
        concurrency: int | None = None,
        credit_tokens: int | None = None,
        window_s: float = 60.0,
        api_keys: list[str] | None = None,
        latency_s: float = 0.0,
        latency_max_s: float | None = None,
        seed: int = 0,
        embedding_dim: int = 1536,
        completion_tokens: int = 16,
        log: bool = True,
        server_error: float = 0.0,
        bad_gateway: float = 0.0,
        unavailable: float = 0.0,
        timeout: float = 0.0,
        reset: float = 0.0,
        malformed: float = 0.0,
        outage_s: tuple[float, float] | None = None,
    ) -> MockGatewayConfig: ...
    @property
    def window_s(self) -> float: ...

@final
class MockGatewayServer:
    """A gateway serving on 127.0.0.1 from its own threads until stopped (or dropped)."""

    def __new__(cls, config: MockGatewayConfig, port: int = 0) -> MockGatewayServer: ...
    @property
    def port(self) -> int: ...
    @property
    def running(self) -> bool: ...
    def stop(self) -> None: ...
    def admission_log(self) -> list[tuple[float, str, str, int, int, bool, str | None]]: ...
    def peak_admitted(self, window_s: float, unit: str = "requests", key: str | None = None) -> int: ...
