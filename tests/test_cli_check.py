"""`holysheep check` against MockGateway on 127.0.0.1: key, connection and quota headers."""

from __future__ import annotations

import socket

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
