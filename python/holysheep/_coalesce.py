"""`Coalesce`: how a client merges concurrent single-query embeddings into one request.

    client = hs.AsyncHolySheep(coalesce=hs.Coalesce(max_wait_ms=10, max_inputs=2048, max_tokens=300_000))

The machinery lives with the transport (`holysheep.transport._coalescing`); this is its settings, which
import neither the SDK nor an HTTP library.
"""

from __future__ import annotations

from dataclasses import dataclass

from holysheep._holysheep import _check_count
from holysheep.errors import ConfigError

__all__ = ["Coalesce"]

#: OpenAI's caps on one embeddings request.
OPENAI_MAX_INPUTS = 2048
OPENAI_MAX_TOKENS = 300_000
#: The largest count any setting takes: what fits 32 bits.
_MOST = 2**32 - 1
#: The longest wait a caller can be asked to sit out for company: a minute.
_MOST_WAIT_MS = 60_000.0


@dataclass(frozen=True)
class Coalesce:
    """Concurrent ``embeddings.create`` calls with the same model and options go out as one request.

        client = hs.AsyncHolySheep(coalesce=hs.Coalesce(max_wait_ms=10))
        vectors = await asyncio.gather(*(client.embeddings.create(model=m, input=q) for q in queries))

    The first call to arrive starts the clock; calls arriving within ``max_wait_ms`` join it; a batch
    that reaches ``max_inputs`` or ``max_tokens`` goes at once, and a call that would overfill it starts
    the next. While the client's limiter would hold the batch anyway, it keeps collecting (waiting costs
    no one anything then). Each caller gets a normal response with its own vectors, in its own order
    (``index`` from 0), and its share of ``usage``; a failure reaches every caller of the batch as the
    same typed error; a caller cancelled before the batch goes leaves it. The merged request passes the
    limiter once, with its total tokens. A call too big to share (more inputs or tokens than a batch
    holds) is sent on its own.

    :param max_wait_ms: milliseconds the first call waits for company, from 0 to 60,000.
    :param max_inputs: texts per request at most (OpenAI: 2,048).
    :param max_tokens: estimated tokens per request at most (OpenAI: 300,000).
    :raises ConfigError: a value out of range, naming the field.
    """

    max_wait_ms: float = 10.0
    max_inputs: int = OPENAI_MAX_INPUTS
    max_tokens: int = OPENAI_MAX_TOKENS

    def __post_init__(self) -> None:
        wait = self.max_wait_ms
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0.0 <= wait <= _MOST_WAIT_MS:
            raise ConfigError(f"max_wait_ms: must be a number from 0 to {_MOST_WAIT_MS:,.0f}, got {wait!r}", "max_wait_ms")
        _check_count("max_inputs", self.max_inputs, 1, _MOST)
        _check_count("max_tokens", self.max_tokens, 1, _MOST)

    @property
    def max_wait_s(self) -> float:
        """``max_wait_ms`` in seconds."""
        return float(self.max_wait_ms) / 1_000.0
