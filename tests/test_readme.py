"""Every ```python block of README.md runs as written, against an embedded MockGateway.

Each block runs on its own, in a fresh namespace, so a block a user copies works without the others. A
block with a top-level ``await`` runs inside an event loop (as in a notebook or ``python -m asyncio``);
the others run as a script does, ``asyncio.run(...)`` included.

What the test provides, as a user's machine would: ``HOLYSHEEP_API_KEY``, and a gateway at HolySheep's
address: a fresh `MockGateway` per block (no limits, no latency, short embeddings), which the clients'
default ``base_url`` and the URL written in a block are pointed at. A block naming ``RedisBackend`` gets
``REDIS_URL`` set to a throwaway, emptied redis-server (tests/redis_server.py), and is skipped where there
is none.

A block that is deliberately not runnable (one that shows signatures) follows the line
``<!-- not run: why -->`` in the README.
"""

from __future__ import annotations

import ast
import asyncio
import gc
import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import holysheep.client
import holysheep.metrics
from holysheep.testing import MockGateway

from redis_server import redis_server, redis_url  # noqa: F401 (fixtures)

README = Path(__file__).resolve().parent.parent / "README.md"
HOLYSHEEP_URL = "https://api.holysheep.ai/v1"
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(?P<why>\S.*?)\s*-->$")


@dataclass(frozen=True)
class Block:
    """One ```python block: the README line its code starts on, the code, and why it is not run."""

    line: int
    code: str
    not_run: str | None


def python_blocks(markdown: str) -> list[Block]:
    """The ```python blocks of a Markdown text, in order."""
    lines = markdown.splitlines()
    blocks: list[Block] = []
    fence = iter(enumerate(lines, start=1))
    for number, line in fence:
        if line.strip() != "```python":
            continue
        before = next((lines[i].strip() for i in range(number - 2, -1, -1) if lines[i].strip()), "")
        marked = NOT_RUN.match(before)
        code: list[str] = []
        for _, body in fence:
            if body.strip() == "```":
                break
            code.append(body)
        blocks.append(Block(number + 1, "\n".join(code) + "\n", marked["why"] if marked else None))
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def run_as_written(block: Block) -> None:
    """Runs a block under the README's own name and line numbers, so a traceback points into it."""
    source = "\n" * (block.line - 1) + block.code
    code = compile(source, str(README), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    namespace = {"__name__": "__main__"}
    try:
        result = eval(code, namespace)
        if inspect.iscoroutine(result):
            asyncio.run(result)
    finally:
        holysheep.metrics.uninstrument()  # a block that instruments leaves the others as they were
    # What the block left open (a client never closed) is reported now, against this block.
    del namespace, result
    gc.collect()


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[MockGateway]:
    """A gateway at HolySheep's address for one block, and a key for it."""
    with MockGateway(embedding_dim=8) as gw:
        monkeypatch.setenv("HOLYSHEEP_API_KEY", "hs_readme")
        monkeypatch.setattr(holysheep.client, "HOLYSHEEP_BASE_URL", gw.base_url)
        yield gw


def test_blocks_are_found_with_their_lines_and_a_not_run_mark_with_its_reason() -> None:
    markdown = "\n".join([
        "# Title", "```python", "print(1)", "```", "",
        "<!-- not run: a signature -->", "", "```python", "f(x: int) -> str", "```",
        "```bash", "make test", "```",
    ])  # fmt: skip
    assert python_blocks(markdown) == [Block(3, "print(1)\n", None), Block(9, "f(x: int) -> str\n", "a signature")]


def test_the_readme_has_runnable_examples_and_few_that_are_not() -> None:
    assert len(BLOCKS) >= 10
    assert sum(block.not_run is not None for block in BLOCKS) <= 3


@pytest.mark.parametrize("block", BLOCKS, ids=[f"README.md:{block.line}" for block in BLOCKS])
def test_a_readme_example_runs_as_written(
    block: Block,
    gateway: MockGateway,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)  # what a block writes (a plot) lands there
    if block.not_run is not None:
        pytest.skip(f"marked not run: {block.not_run}")
    if "RedisBackend" in block.code:
        monkeypatch.setenv("REDIS_URL", request.getfixturevalue("redis_url"))  # skips without a redis-server
    run_as_written(Block(block.line, block.code.replace(HOLYSHEEP_URL, gateway.base_url), None))
