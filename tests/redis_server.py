"""A throwaway redis-server for the tests that need one: Debian's package, on a free loopback port,
without persistence; stopped at the end of the session. `make test` installs redis-server when it is
missing; elsewhere those tests are skipped, saying why."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def free_cluster_port() -> int:
    """A free port whose cluster bus port (10,000 above it) exists and is free too."""
    for _ in range(100):
        port = random.randrange(20_000, 30_000)
        try:
            for candidate in (port, port + 10_000):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisServer:
    """A redis-server process that tests may stop and start again on the same port."""

    def __init__(self, port: int | None = None) -> None:
        self.port: int = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.socket_path = f"{tempfile.gettempdir()}/holysheep-test-redis-{self.port}.sock"
        #: The same server over its Unix socket (asyncio decisions then go through the runtime).
        self.unix_url = f"redis+unix://{self.socket_path}"
        self._process: subprocess.Popen[bytes] | None = None
        self._extra: tuple[str, ...] = ()

    def start(self, *extra: str) -> None:
        self._extra = extra or self._extra
        self._process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--unixsocket", self.socket_path, *self._extra],  # fmt: skip
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

    def script_calls(self) -> int:
        """How many scripts and functions (EVAL*, FCALL*) the server ran since CONFIG RESETSTAT."""
        stats = self.cli("INFO", "commandstats").splitlines()
        return sum(int(line.split("calls=")[1].split(",")[0]) for line in stats if line.startswith(("cmdstat_fcall", "cmdstat_eval")))

    def cli(self, *args: str) -> str:
        """One command through redis-cli; its answer, stripped ("" when the server is down)."""
        tls = ["--tls", "--cacert", self._extra[self._extra.index("--tls-ca-cert-file") + 1]] if "--tls-port" in self._extra else []
        done = subprocess.run(["redis-cli", "-p", str(self.port), *tls, *args], capture_output=True, text=True, timeout=5)
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


@pytest.fixture(scope="session")
def tls_redis(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A second server speaking TLS only, with a certificate from a throwaway CA: its ``rediss://`` URL
    and the CA's PEM file."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a test certificate")
    certs = tmp_path_factory.mktemp("tls")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=certs, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=test-ca")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (certs / "ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "1", "-extfile", "ext")  # fmt: skip
    server = RedisServer()
    server.start(
        "--tls-port", str(server.port), "--port", "0", "--tls-auth-clients", "no",
        "--tls-cert-file", str(certs / "server.crt"), "--tls-key-file", str(certs / "server.key"),
        "--tls-ca-cert-file", str(certs / "ca.crt"),
    )  # fmt: skip
    try:
        yield f"rediss://127.0.0.1:{server.port}/0", certs / "ca.crt"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def cluster_url(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis Cluster of three primaries on loopback; the URL of one of them."""
    directory = tmp_path_factory.mktemp("cluster")
    nodes = [RedisServer(free_cluster_port()) for _ in range(3)]
    try:
        for node in nodes:
            node.start("--cluster-enabled", "yes", "--cluster-config-file", str(directory / f"nodes-{node.port}.conf"))
        addresses = [f"127.0.0.1:{node.port}" for node in nodes]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        deadline = time.monotonic() + 10.0
        while not all("cluster_state:ok" in node.cli("CLUSTER", "INFO") for node in nodes):
            if time.monotonic() > deadline:
                pytest.fail("the test cluster did not come up")
            time.sleep(0.05)
        yield nodes[0].url
    finally:
        for node in nodes:
            node.stop()


class SentinelPair:
    """A primary, its replica and one Sentinel watching them (Debian's redis-sentinel), on loopback."""

    SERVICE = "hs"

    def __init__(self, directory: Path) -> None:
        self.primary, self.replica = RedisServer(), RedisServer()
        self.port = free_port()
        self.url = f"redis+sentinel://127.0.0.1:{self.port}/{self.SERVICE}/0"
        self._config = directory / "sentinel.conf"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # As recommended for Sentinel: a primary without a replica refuses writes, so one a failover
        # replaced stops deciding at once instead of deciding apart from the promoted one.
        self.primary.start("--min-replicas-to-write", "1", "--min-replicas-max-lag", "1")
        self.replica.start("--replicaof", "127.0.0.1", str(self.primary.port))
        self._config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self._config.parent}\n"
            f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.primary.port} 1\n"
            f"sentinel down-after-milliseconds {self.SERVICE} 500\nsentinel failover-timeout {self.SERVICE} 5000\n"
        )
        self._process = subprocess.Popen(["redis-sentinel", str(self._config)], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10.0
        while "slaves=1" not in self.sentinel("INFO", "sentinel") or "connected_slaves:1" not in self.primary.cli("INFO", "replication"):
            if time.monotonic() > deadline:
                raise RuntimeError("the Sentinel did not find the replica")
            time.sleep(0.05)

    def sentinel(self, *args: str) -> str:
        done = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, timeout=5)
        return done.stdout.strip()

    def primary_port(self) -> int:
        return int(self.sentinel("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.SERVICE).split()[1])

    def failover(self) -> None:
        """Promotes the replica (as when the primary fails) and waits until the Sentinel names it."""
        before = self.primary_port()
        self.sentinel("SENTINEL", "FAILOVER", self.SERVICE)
        deadline = time.monotonic() + 10.0
        while self.primary_port() == before:
            if time.monotonic() > deadline:
                raise RuntimeError("the failover did not happen")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=5)
        self.primary.stop()
        self.replica.stop()


@pytest.fixture
def sentinel_pair(tmp_path: Path) -> Iterator[SentinelPair]:
    if shutil.which("redis-sentinel") is None:
        pytest.skip("redis-sentinel is not installed (make test installs it with apt-get)")
    pair = SentinelPair(tmp_path)
    pair.start()
    try:
        yield pair
    finally:
        pair.stop()
