"""A throwaway redis-server for the tests that need one: Debian's package, on a free loopback port,
without persistence; stopped at the end of the session. `make test` installs redis-server when it is
missing; elsewhere those tests are skipped, saying why."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest


class RedisServer:
    """A redis-server process that tests may stop and start again on the same port."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.socket_path = f"{tempfile.gettempdir()}/holysheep-test-redis-{self.port}.sock"
        #: The same server over its Unix socket (asyncio decisions then go through the runtime).
        self.unix_url = f"redis+unix://{self.socket_path}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--unixsocket", self.socket_path],  # fmt: skip
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5.0
        while self.cli("PING") != "PONG":
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=5)
            self._process = None

    def cli(self, *args: str) -> str:
        """One command through redis-cli; its answer, stripped ("" when the server is down)."""
        done = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, timeout=5)
        return done.stdout.strip()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server is not installed (make test installs it with apt-get)")
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The server's URL, emptied before each test (a running server: a test that stopped it restarts it)."""
    if redis_server.cli("PING") != "PONG":
        redis_server.start()
    redis_server.cli("FLUSHALL")
    yield redis_server.url
