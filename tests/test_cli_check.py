"""`holysheep check` against MockGateway on 127.0.0.1: key, connection and quota headers."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from holysheep.cli import main
from holysheep.testing import MockGateway


def test_check_reports_the_key_the_models_and_the_limits(capsys: pytest.CaptureFixture[str]) -> None:
    with MockGateway(rpm=60, tpm=1_000, api_keys="hs_abcdefghijkl") as gw:
        assert main(["check", "--base-url", gw.base_url, "--api-key", "hs_abcdefghijkl"]) == 0
    out = capsys.readouterr().out
    assert "hs_...ijkl" in out and "hs_abcdefghijkl" not in out
    assert "models" in out and "x-ratelimit-limit-requests: 60" in out
    assert "quota:" in out


def test_check_says_which_step_failed(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    with MockGateway(api_keys="hs_right") as gw:
        assert main(["check", "--base-url", gw.base_url, "--api-key", "hs_wrong_key_1"]) == 1
    assert "refused the key (HTTP 401)" in capsys.readouterr().out
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert main(["check", "--base-url", f"http://127.0.0.1:{port}/v1", "--api-key", "hs_x", "--timeout", "2"]) == 1
    assert "cannot reach" in capsys.readouterr().out
    monkeypatch.delenv("HOLYSHEEP_API_KEY", raising=False)
    assert main(["check", "--base-url", "http://127.0.0.1:9/v1"]) == 2
    assert "HOLYSHEEP_API_KEY" in capsys.readouterr().out


@pytest.fixture
def serve_models() -> Iterator[Callable[[bytes, str], str]]:
    """A tiny server on 127.0.0.1 answering GET /models with 200 and the body given; returns its base URL."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def serve(body: bytes, content_type: str = "application/json") -> str:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


# Issue 15: `holysheep check` crashed with a traceback on each of these answers.
@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"<html>a login page</html>", "text/html"),
        (b"[1, 2, 3]", "application/json"),
        (b'{"data": 5}', "application/json"),
        (b"", "application/json"),
    ],
    ids=["not-json", "a-json-list", "data-not-a-list", "empty"],
)
def test_check_says_in_one_line_when_models_is_not_a_model_list(
    serve_models: Callable[[bytes, str], str], capsys: pytest.CaptureFixture[str], body: bytes, content_type: str
) -> None:
    base_url = serve_models(body, content_type)
    assert main(["check", "--base-url", base_url, "--api-key", "hs_abcdefghijkl", "--timeout", "5"]) == 1
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert last.startswith("connection: GET /models answered 200 but not an OpenAI model list"), out


# Issue 15: a bad --base-url or --timeout crashed with a traceback.
@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--base-url", "not a url"], "base_url"),
        (["--base-url", "ftp://127.0.0.1/v1"], "base_url"),
        (["--base-url", "http://[::1/v1"], "base_url"),
        (["--timeout", "-1"], "timeout"),
        (["--timeout", "0"], "timeout"),
        (["--timeout", "nan"], "timeout"),
        (["--timeout", "inf"], "timeout"),
    ],
)
def test_check_refuses_a_bad_setting_in_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], field: str
) -> None:
    # A closed port by default: nothing is contacted when a setting is refused, nor ever off this machine.
    assert main(["check", "--api-key", "hs_abcdefghijkl", "--base-url", "http://127.0.0.1:9/v1", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"holysheep: {field}: must be") and captured.err.count("\n") == 1, captured.err
