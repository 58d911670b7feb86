"""A batch job starts at once: nothing on its path imports the openai SDK, which it never uses and which
costs about 2 s to import on a busy machine (2 s of a strict-limit job's 8 s schedule, issue 16)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

JOB = textwrap.dedent(
    """
    import json, sys
    import holysheep as hs
    from holysheep.testing import MockGateway

    source, target = sys.argv[1], sys.argv[2]
    body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    with open(source, "w") as lines:
        lines.write(json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": body}) + "\\n")
    with MockGateway() as gateway:
        hs.run_batch(source, target, base_url=gateway.base_url, api_key="hs_test", dry_run=True)
        report = hs.run_batch(source, target, base_url=gateway.base_url, api_key="hs_test", rpm=600)
    print(report.ok, "openai" in sys.modules)
    """
)


def test_a_batch_job_and_its_dry_run_never_import_the_openai_sdk(tmp_path: Path) -> None:
    ran = subprocess.run([sys.executable, "-c", JOB, str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl")],
                         capture_output=True, text=True, timeout=50, check=True)
    assert ran.stdout.split() == ["1", "False"], ran.stderr


def test_the_base_url_and_key_are_still_checked_without_the_sdk() -> None:
    import holysheep as hs

    with pytest.raises(hs.ConfigError) as bad_url:
        hs.run_batch("in.jsonl", "out.jsonl", base_url="ftp://example.com", api_key="hs_test")
    assert bad_url.value.field == "base_url"
    with pytest.raises(hs.ConfigError) as bad_key:
        hs.run_batch("in.jsonl", "out.jsonl", base_url="http://127.0.0.1:9/v1", api_key=7)  # type: ignore[arg-type]
    assert bad_key.value.field == "api_key"
