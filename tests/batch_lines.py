"""Input and output files of batch jobs, for the engine's tests: Batch API lines in, custom_ids out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def chat_line(custom_id: str, content: str = "hello there", model: str = "gpt-4.1") -> dict[str, Any]:
    """One input line: a chat request asking for one token."""
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 1}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def write_requests(path: Path, prefix: str, n: int) -> Path:
    """An input file of ``n`` chat lines, custom_ids ``prefix`` + 0 .. n - 1."""
    path.write_text("".join(json.dumps(chat_line(f"{prefix}{i}")) + "\n" for i in range(n)))
    return path


def answered(path: Path) -> list[str]:
    """The custom_ids an output file answers, in its order (none when there is no file yet)."""
    return [json.loads(line)["custom_id"] for line in path.read_text().splitlines()] if path.exists() else []
