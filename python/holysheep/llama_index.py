"""LlamaIndex under holysheep's limits: a ``llama_index.core`` ``BaseRateLimiter`` for LLMs and embeddings.

    from holysheep.llama_index import RateLimiter

    rate_limiter = RateLimiter(hs.HolySheepRateLimiter(rpm=500, tpm=100_000), tokens=1_000)
    llm = OpenAI(model="gpt-4.1", rate_limiter=rate_limiter)
    embed_model = OpenAIEmbedding(rate_limiter=rate_limiter)

LlamaIndex asks ``acquire(num_tokens)`` (threads) or ``async_acquire(num_tokens)`` (asyncio) before each
request and never says when it ends, so the limiter's rate and token limits apply and a concurrency cap
cannot (a slot taken would never come back): a limiter with ``max_concurrency`` is refused. The wait
is the holysheep limiter's own: on the running loop, or in the thread with the GIL released.

Requires the ``llama-index`` extra (``pip install 'holysheep[llama-index]'``); importing holysheep alone
never imports LlamaIndex.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from contextvars import ContextVar

try:
    from llama_index.core.rate_limiter import BaseRateLimiter
except ImportError as missing:
    raise ImportError(
        f"holysheep.llama_index needs llama-index-core 0.14.16 or later: pip install 'holysheep[llama-index]' ({missing})"
    ) from missing

from holysheep._adapters import AnyLimiter, Gate, check_tokens
from holysheep.errors import ConfigError

__all__ = ["RateLimiter"]

class _Grant:
    """A request `RateLimiter.async_acquire` admitted, open until its task first yields to the loop."""

    __slots__ = ("open", "owner", "tokens")

    def __init__(self, owner: RateLimiter, tokens: int) -> None:
        self.owner = owner
        self.tokens = tokens
        self.open = True

    def close(self) -> None:
        self.open = False


#: The request ``async_acquire`` just admitted in this task. LlamaIndex's ``CustomLLM`` (``MockLLM``
#: and many community LLMs) answers ``acomplete``/``achat`` by calling ``complete``/``chat``, which ask
#: the rate limiter again, blocking, from inside the coroutine before it yields: that nested ask is the
#: same request, so it takes this admission instead of a second one (blocking the event loop's thread
#: would also stall, behind the loop's own waiters, the very loop that must wake them). The grant
#: closes when the task first yields, so no later request can take it.
_ASYNC_GRANT: ContextVar[_Grant | None] = ContextVar("holysheep_llama_index_grant", default=None)


class RateLimiter(BaseRateLimiter):
    """A LlamaIndex ``BaseRateLimiter`` over a holysheep limiter, token-aware.

        rate_limiter = RateLimiter(hs.HolySheepRateLimiter.from_tier("pro"), tokens=800)
        await rate_limiter.async_acquire(num_tokens=1_200)

    :param limiter: a `HolySheepRateLimiter` (of this process, or shared through a `RedisBackend`)
        without ``max_concurrency``, or a `KeyedLimiter` (with ``key``).
    :param key: the key of a `KeyedLimiter` these requests count under.
    :param tokens: the LLM tokens a request is counted with when ``num_tokens`` is 0 (LlamaIndex's own
        LLMs and embeddings pass none): an estimate of a typical request. Required (0 allowed) with a
        limiter that counts tokens (``tpm``, ``unit="tokens"`` or ``"usd"``), which would otherwise count
        none of LlamaIndex's requests.
    :param timeout: seconds a request may wait at most; then ``RateLimitExceeded`` (None: as long as it
        takes). A cost the limiter can never admit raises at once.
    :raises ConfigError: any argument that cannot work (a limiter with ``max_concurrency`` included),
        named in ``.field``.
    """

    def __init__(
        self, limiter: AnyLimiter, *, key: Hashable | None = None, tokens: int | None = None, timeout: float | None = None
    ) -> None:
        self._gate = Gate(limiter, key, timeout)
        self._tokens = None if tokens is None else check_tokens("tokens", tokens)
        self._refuse_slots()

    @property
    def limiter(self) -> AnyLimiter:
        """The holysheep limiter this rate limiter admits through."""
        return self._gate.limiter

    def _refuse_slots(self) -> None:
        if self._gate.holds_slots():
            raise ConfigError(
                "limiter: LlamaIndex never says when a request ends, so a concurrency slot (max_concurrency) "
                "could never be given back: pass a limiter with rate and token limits only",
                "limiter",
            )

    def _cost(self, num_tokens: int) -> int:
        # A KeyedLimiter's factory makes each key's limiter on first use: refused here, before it admits.
        self._refuse_slots()
        tokens = check_tokens("num_tokens", num_tokens)
        if tokens:
            return tokens
        if self._tokens is None:
            if self._gate.counts_tokens():
                raise ConfigError(
                    "tokens: this limiter counts tokens and the request says none (LlamaIndex passes no "
                    "num_tokens): give RateLimiter(tokens=...) an estimate per request",
                    "tokens",
                )
            return 0
        return self._tokens

    def acquire(self, num_tokens: int = 0) -> None:
        """Waits, in this thread with the GIL released, until one request of ``num_tokens`` may go.

        :raises RateLimitExceeded: out of ``timeout``, or a request bigger than a limit ever admits.
        """
        tokens = self._cost(num_tokens)
        if self._takes_async_grant(tokens):
            return
        self._gate.take_blocking(tokens)

    async def async_acquire(self, num_tokens: int = 0) -> None:
        """Waits on the running loop until one request of ``num_tokens`` may go; cancelling gives the
        place back.

        :raises RateLimitExceeded: out of ``timeout``, or a request bigger than a limit ever admits.
        """
        tokens = self._cost(num_tokens)
        await self._gate.take(tokens)
        grant = _Grant(self, tokens)
        _ASYNC_GRANT.set(grant)
        asyncio.get_running_loop().call_soon(grant.close)

    def _takes_async_grant(self, tokens: int) -> bool:
        """Whether this blocking ask is the one the request `async_acquire` just admitted makes again
        from inside its coroutine, before yielding (see `_ASYNC_GRANT`); the grant is used up."""
        grant = _ASYNC_GRANT.get()
        if grant is None or not grant.open or grant.owner is not self or grant.tokens != tokens:
            return False
        grant.close()
        return True
