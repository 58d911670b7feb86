"""LangChain under holysheep's limits: chat models and embeddings through one limiter.

    from holysheep.langchain import RateLimiter, RateLimitedEmbeddings

    lim = hs.HolySheepRateLimiter(rpm=500, tpm=100_000, max_concurrency=20)   # or backend=RedisBackend(...)
    rate_limiter = RateLimiter(lim)
    chat = ChatOpenAI(model="gpt-4.1", rate_limiter=rate_limiter, callbacks=[rate_limiter.callback])
    embeddings = RateLimitedEmbeddings(OpenAIEmbeddings(), lim, max_items=1000)

- `RateLimiter` is a ``langchain_core`` ``BaseRateLimiter``, so any chat model takes it as
  ``rate_limiter=``. It waits on the holysheep limiter itself: on the running loop in ``aacquire``,
  in the thread with the GIL released in ``acquire`` (no polling, no helper thread); it admits the
  first call at once (LangChain's own ``InMemoryRateLimiter`` starts empty) and serves callers in
  arrival order.
- Its `callback` (`UsageCallback`), given to the same model as ``callbacks=``, makes it token-aware:
  each call is admitted with an estimate of its tokens (its messages and ``max_tokens``), settled to
  the ``usage_metadata`` the model reports, and a concurrency slot (``max_concurrency``) is held until
  the model answers. A limiter with ``max_concurrency`` needs it: LangChain never says when a call
  ends, so a slot taken without the callback could never be given back, and ``acquire`` refuses.
- `RateLimitedEmbeddings` wraps any LangChain ``Embeddings`` (which LangChain does not rate-limit):
  each request passes the limiter with its texts' token count.

Requires the ``langchain`` extra (``pip install 'holysheep[langchain]'``); importing holysheep alone
never imports LangChain.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any
from uuid import UUID

try:
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.embeddings import Embeddings
    from langchain_core.messages import BaseMessage
    from langchain_core.outputs import LLMResult
    from langchain_core.rate_limiters import BaseRateLimiter
except ImportError as missing:
    raise ImportError(f"holysheep.langchain needs langchain-core: pip install 'holysheep[langchain]' ({missing})") from missing

from holysheep._adapters import AnyLimiter, Gate, Held, check_tokens
from holysheep._tokens import check_batch_bounds, counted_texts, estimate_request_tokens, group_counted
from holysheep.errors import ConfigError
from holysheep.pricing import checked_prices

__all__ = ["RateLimitedEmbeddings", "RateLimiter", "UsageCallback"]


class _Call:
    """One chat model call the callback saw start: its estimate, then the admission it holds."""

    __slots__ = ("held", "owner", "price", "state", "tokens")

    WAITING, ADMITTED, DONE = range(3)

    def __init__(self, owner: RateLimiter, tokens: int, price: float) -> None:
        self.owner = owner
        self.tokens = tokens
        self.price = price
        self.held: Held | None = None
        self.state = _Call.WAITING


#: The calls started in this context whose admission is not taken yet, in start order. LangChain runs
#: an inline callback's ``on_chat_model_start`` in the caller's context just before the model calls
#: ``acquire`` there (or in tasks it starts from there), so this is how ``acquire`` learns which call,
#: of which size, it admits.
_STARTED: ContextVar[tuple[_Call, ...]] = ContextVar("holysheep_langchain_started", default=())
#: Guards the calls' states: a list of started calls is shared by the tasks or threads started after it.
_LOCK = threading.Lock()


class RateLimiter(BaseRateLimiter):
    """A LangChain ``BaseRateLimiter`` over a holysheep limiter, for any chat model's ``rate_limiter=``.

        rate_limiter = RateLimiter(hs.HolySheepRateLimiter(rpm=60, tpm=10_000, max_concurrency=5))
        chat = ChatOpenAI(model="gpt-4.1", rate_limiter=rate_limiter, callbacks=[rate_limiter.callback])

    :param limiter: a `HolySheepRateLimiter` (of this process, or shared through a `RedisBackend`) or a
        `KeyedLimiter` (with ``key``).
    :param key: the key of a `KeyedLimiter` these calls count under (e.g. the tenant).
    :param tokens: the LLM tokens each call is counted with. None: estimated from the call's messages
        and ``max_tokens`` by `callback` (and settled to the model's ``usage_metadata``); a limiter that
        counts tokens then needs `callback` attached.
    :param timeout: seconds a call may wait at most; then ``RateLimitExceeded`` (None: as long as it
        takes). A cost the limiter can never admit raises at once.
    :param prices: dollars per million tokens by model, over `holysheep.pricing.PRICES`, for a budget
        (``Limit(5.0, per="hour", unit="usd")``); needs `callback` (which knows the model).
    :raises ConfigError: any argument that cannot work, named in ``.field``.
    """

    def __init__(
        self,
        limiter: AnyLimiter,
        *,
        key: Hashable | None = None,
        tokens: int | None = None,
        timeout: float | None = None,
        prices: Mapping[str, float] | None = None,
    ) -> None:
        self._gate = Gate(limiter, key, timeout)
        self._tokens = None if tokens is None else check_tokens("tokens", tokens)
        self._prices = checked_prices(prices)
        self.callback = UsageCallback(self)

    @property
    def limiter(self) -> AnyLimiter:
        """The holysheep limiter this rate limiter admits through."""
        return self._gate.limiter

    def acquire(self, *, blocking: bool = True) -> bool:
        """Admits one call: waits in this thread (the GIL released) if ``blocking``, else only if the
        limits allow it now (False if not).

        :raises RateLimitExceeded: out of ``timeout``, or a call bigger than a limit ever admits.
        :raises ConfigError: `callback` is not attached and the limiter has ``max_concurrency``, or
            counts tokens while ``tokens`` is None.
        """
        call = self._claim()
        if call is None:
            tokens = self._unclaimed_tokens()
            if blocking:
                self._gate.take_blocking(tokens)
                return True
            return self._gate.take_now(tokens)
        try:
            gate = self._gate
            held = gate.admit_blocking(call.tokens, call.price) if blocking else gate.admit_now(call.tokens, call.price)
        except BaseException:
            _unclaim(call)
            raise
        return self._keep(call, held)

    async def aacquire(self, *, blocking: bool = True) -> bool:
        """Admits one call: waits on the running loop if ``blocking`` (cancelling gives the place back),
        else only if the limits allow it now (False if not).

        :raises RateLimitExceeded: out of ``timeout``, or a call bigger than a limit ever admits.
        :raises ConfigError: `callback` is not attached and the limiter has ``max_concurrency``, or
            counts tokens while ``tokens`` is None.
        """
        call = self._claim()
        if call is None:
            tokens = self._unclaimed_tokens()
            if blocking:
                await self._gate.take(tokens)
                return True
            return self._gate.take_now(tokens)
        try:
            gate = self._gate
            held = await gate.admit(call.tokens, call.price) if blocking else gate.admit_now(call.tokens, call.price)
        except BaseException:
            _unclaim(call)
            raise
        return self._keep(call, held)

    def _claim(self) -> _Call | None:
        """The first call of this rate limiter started in this context and not yet admitted, now taken."""
        started = _STARTED.get()
        if not started:
            return None
        with _LOCK:
            for call in started:
                if call.owner is self and call.state == _Call.WAITING:
                    call.state = _Call.ADMITTED
                    return call
        return None

    def _unclaimed_tokens(self) -> int:
        """The tokens a call the callback did not see is counted with; refuses a slot nobody would give
        back, and a token limit that would count nothing."""
        if self._gate.holds_slots():
            raise ConfigError(
                "callbacks: this limiter has max_concurrency, so each call holds a slot until it ends, which "
                "LangChain tells only callbacks: give the model callbacks=[rate_limiter.callback] too",
                "callbacks",
            )
        if self._tokens is None:
            if self._gate.counts_tokens():
                raise ConfigError(
                    "callbacks: this limiter counts tokens, and only the callback sees a call's size: give the "
                    "model callbacks=[rate_limiter.callback], or RateLimiter(tokens=...) an estimate per call",
                    "callbacks",
                )
            return 0
        return self._tokens

    def _keep(self, call: _Call, held: Held | None) -> bool:
        """Hands the admission to its call, which ends it when the model answers (at once if it has)."""
        if held is None:
            _unclaim(call)
            return False
        with _LOCK:
            kept = call.state == _Call.ADMITTED
            if kept:
                call.held = held
        if not kept:
            held.release()
        return True

    def _estimate(self, messages: Sequence[BaseMessage], params: Mapping[str, Any]) -> tuple[int, float]:
        """The tokens (``tokens=`` or an estimate of the messages and the reply's cap) and the price of a call."""
        model = params.get("model") or params.get("model_name")
        price = self._prices.get(model, 0.0) if isinstance(model, str) else 0.0
        if self._tokens is not None:
            return self._tokens, price
        body = {
            "messages": [{"content": message.content} for message in messages],
            "max_tokens": params.get("max_tokens"),
            "max_completion_tokens": params.get("max_completion_tokens"),
        }
        return estimate_request_tokens(body), price


def _unclaim(call: _Call) -> None:
    """Puts a call whose admission failed or was refused back in line for the next try."""
    with _LOCK:
        if call.state == _Call.ADMITTED and call.held is None:
            call.state = _Call.WAITING


class UsageCallback(BaseCallbackHandler):
    """The callback of a `RateLimiter` (its ``.callback``): tells it each call's size, and settles each
    admission to the tokens the model reports and ends it when the model answers or fails.

    It runs inline (``run_inline``) so that it sees a call start in the context that then asks the rate
    limiter. Attach it to the models that use that rate limiter (``callbacks=[rate_limiter.callback]``).
    """

    run_inline = True

    def __init__(self, rate_limiter: RateLimiter) -> None:
        super().__init__()
        self._rate_limiter = rate_limiter
        self._calls: dict[UUID, _Call] = {}

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        **kwargs: Any,
    ) -> None:
        """Notes the call's size (each run gets its own message list) for the admission that follows."""
        params = kwargs.get("invocation_params") or {}
        tokens, price = self._rate_limiter._estimate(messages[0] if messages else [], params)
        call = _Call(self._rate_limiter, tokens, price)
        self._calls[run_id] = call
        with _LOCK:
            _STARTED.set((*(started for started in _STARTED.get() if started.state == _Call.WAITING), call))

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        """Settles the call's admission to the reported tokens (if reported) and ends it."""
        _end(self._calls.pop(run_id, None), _total_tokens(response))

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """Ends the call's admission; its estimate stays counted (the request may have been sent)."""
        _end(self._calls.pop(run_id, None), None)


def _end(call: _Call | None, actual_tokens: int | None) -> None:
    if call is None:
        return
    with _LOCK:
        held, call.held, call.state = call.held, None, _Call.DONE
    if held is None:  # served from LangChain's cache, or never admitted: nothing to end
        return
    try:
        if actual_tokens is not None:
            held.settle(actual_tokens)
    finally:
        held.release()


def _total_tokens(response: LLMResult) -> int | None:
    """The total tokens a model reported: its message's ``usage_metadata``, else a legacy
    ``llm_output["token_usage"]``; None when it reported none."""
    for generations in response.generations:
        for generation in generations:
            usage = getattr(getattr(generation, "message", None), "usage_metadata", None)
            if usage:
                return _count(usage.get("total_tokens"))
    token_usage = (response.llm_output or {}).get("token_usage")
    return _count(token_usage.get("total_tokens")) if isinstance(token_usage, Mapping) else None


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class RateLimitedEmbeddings(Embeddings):
    """Any LangChain ``Embeddings`` with each request passing a holysheep limiter, with its token count.

        embeddings = RateLimitedEmbeddings(OpenAIEmbeddings(chunk_size=1000), lim, max_items=1000)
        vectors = await embeddings.aembed_documents(chunks)

    A call's texts are sent ``max_items`` texts and ``max_tokens`` tokens at a time (a text over
    ``max_tokens`` alone), each batch admitted before it goes and its slot released when it returns.
    Set ``max_items`` no larger than the inner model's own batch size (``chunk_size`` for
    ``OpenAIEmbeddings``): a batch it splits again would be counted as one request.

    :param embeddings: the LangChain embeddings to call.
    :param limiter: a `HolySheepRateLimiter` or a `KeyedLimiter` (with ``key``).
    :param key: the key of a `KeyedLimiter` these requests count under.
    :param max_items: texts per request at most (None: a call's texts in one request).
    :param max_tokens: tokens per request at most (None: no cap), e.g. 300_000 for OpenAI.
    :param timeout: seconds a request may wait at most; then ``RateLimitExceeded``.
    :raises ConfigError: any argument that cannot work, named in ``.field``; texts that are not strings.
    """

    def __init__(
        self,
        embeddings: Embeddings,
        limiter: AnyLimiter,
        *,
        key: Hashable | None = None,
        max_items: int | None = None,
        max_tokens: int | None = None,
        timeout: float | None = None,
    ) -> None:
        if not isinstance(embeddings, Embeddings):
            raise ConfigError(
                f"embeddings: must be a langchain_core Embeddings, got {type(embeddings).__name__}", "embeddings"
            )
        check_batch_bounds(max_tokens, max_items)
        self._embeddings = embeddings
        self._gate = Gate(limiter, key, timeout)
        self._max_items = max_items
        self._max_tokens = max_tokens

    def _batches(self, texts: list[str]) -> list[tuple[list[str], int]]:
        """The requests a call makes, every text checked before the first is sent."""
        return list(group_counted(counted_texts(texts), self._max_tokens, self._max_items))

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for batch, tokens in self._batches(texts):
            held = self._gate.admit_blocking(tokens)
            try:
                vectors.extend(self._embeddings.embed_documents(batch))
            finally:
                held.release()
        return vectors

    def embed_query(self, text: str) -> list[float]:
        ((_, tokens),) = self._batches([text])
        held = self._gate.admit_blocking(tokens)
        try:
            return self._embeddings.embed_query(text)
        finally:
            held.release()

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for batch, tokens in self._batches(texts):
            held = await self._gate.admit(tokens)
            try:
                vectors.extend(await self._embeddings.aembed_documents(batch))
            finally:
                held.release()
        return vectors

    async def aembed_query(self, text: str) -> list[float]:
        ((_, tokens),) = self._batches([text])
        held = await self._gate.admit(tokens)
        try:
            return await self._embeddings.aembed_query(text)
        finally:
            held.release()
