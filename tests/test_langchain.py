"""`holysheep.langchain`: the real langchain-core's chat models and embeddings under a holysheep limiter."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import time
from typing import Any

import pytest

pytest.importorskip("langchain_core")

from langchain_core.caches import InMemoryCache
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import FakeListChatModel, GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field
from redis_server import redis_server, redis_url  # noqa: F401  (fixtures)

import holysheep as hs
from holysheep import _tokens
from holysheep.langchain import RateLimitedEmbeddings, RateLimiter

#: Slack for a loaded 2-core machine: how late a paced admission may come.
LATE = 0.6
#: A request is noted as sent a few microseconds to milliseconds after its admission, unevenly: a
#: guard past each window keeps the noted times inside the limit too (the server's view, likewise).
GUARD = 0.01


class RecordingChat(BaseChatModel):
    """A chat model that notes when each request goes, reports ``usage`` tokens, and (async) holds its
    answer until ``answer`` is set, or fails if ``fail`` is set."""

    usage: int = 7
    sent: list[float] = Field(default_factory=list)
    answer: Any = None
    fail: bool = False

    @property
    def _llm_type(self) -> str:
        return "recording"

    def _result(self) -> ChatResult:
        if self.fail:
            raise RuntimeError("the model failed")
        usage = {"input_tokens": 2, "output_tokens": self.usage - 2, "total_tokens": self.usage}
        return ChatResult(generations=[ChatGeneration(message=AIMessage("ok", usage_metadata=usage))])  # type: ignore[arg-type]

    def _generate(
        self, messages: list[BaseMessage], stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any,
    ) -> ChatResult:
        self.sent.append(time.monotonic())
        return self._result()

    async def _agenerate(
        self, messages: list[BaseMessage], stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any,
    ) -> ChatResult:
        self.sent.append(time.monotonic())
        if self.answer is not None:
            await self.answer.wait()
        return self._result()


def most_in_any_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max((sum(1 for t in times[i:] if t - start < window) for i, start in enumerate(times)), default=0)


def assert_paced(sent: list[float], amount: int, per: float, started: float, guard: float = 0.0) -> None:
    """At most ``amount`` requests in any ``per`` seconds, each sent as soon as the limit allowed."""
    assert most_in_any_window(sent, per) <= amount
    for index, at in enumerate(sorted(sent)):
        due = started + (index // amount) * (per + guard)
        assert due - 0.01 <= at <= due + LATE, (index, at - started)


def test_importing_holysheep_imports_neither_langchain_nor_llama_index() -> None:
    code = (
        "import sys, holysheep, holysheep.batch, holysheep.testing\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('langchain_core', 'langchain', 'llama_index'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("module", "missing", "extra"),
    [("holysheep.langchain", "langchain_core", "holysheep[langchain]"), ("holysheep.llama_index", "llama_index", "holysheep[llama-index]")],
)
def test_an_adapter_without_its_framework_names_the_extra_to_install(module: str, missing: str, extra: str) -> None:
    code = f"import sys\nsys.modules[{missing!r}] = None\nimport {module}\n"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode != 0
    assert f"ImportError: {module} needs" in run.stderr and extra in run.stderr


async def test_a_fake_chat_model_with_rate_limiter_is_paced_to_the_limit() -> None:
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(3, per=0.5, guard=GUARD)])
    model = RecordingChat(rate_limiter=RateLimiter(lim))
    started = time.monotonic()
    replies = await asyncio.gather(*(model.ainvoke(f"question {n}") for n in range(9)))
    assert [reply.content for reply in replies] == ["ok"] * 9
    assert_paced(model.sent, 3, 0.5, started, GUARD)


async def test_generic_and_list_fake_chat_models_are_paced_when_streamed_and_invoked() -> None:
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(2, per=0.5, guard=GUARD)])
    rate_limiter = RateLimiter(lim)
    generic = GenericFakeChatModel(messages=iter([AIMessage("one two")] * 6), rate_limiter=rate_limiter)
    listed = FakeListChatModel(responses=["a", "b"], rate_limiter=rate_limiter)

    async def stream() -> str:
        return "".join([str(chunk.content) async for chunk in generic.astream("hi")])

    started = time.monotonic()
    await asyncio.gather(*(stream() for _ in range(3)), *(listed.ainvoke("hi") for _ in range(3)))
    elapsed = time.monotonic() - started
    assert lim.stats()["admitted"] == 6
    assert 1.0 - 0.01 <= elapsed <= 1.0 + LATE  # 6 at 2 per 0.5 s: the last pair 1.0 s after the first


def test_blocking_calls_from_threads_are_paced_too() -> None:
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(2, per=0.4, guard=GUARD)])
    model = RecordingChat(rate_limiter=RateLimiter(lim))
    started = time.monotonic()
    assert [reply.content for reply in model.batch(["q"] * 6, config={"max_concurrency": 6})] == ["ok"] * 6
    assert_paced(model.sent, 2, 0.4, started, GUARD)


def test_langchains_own_limiter_starts_empty_where_ours_admits_the_first_call_at_once() -> None:
    from langchain_core.rate_limiters import InMemoryRateLimiter

    ours = RecordingChat(rate_limiter=RateLimiter(hs.HolySheepRateLimiter(max_qps=2)))
    theirs = RecordingChat(rate_limiter=InMemoryRateLimiter(requests_per_second=2))
    for model in (ours, theirs):
        started = time.monotonic()
        model.invoke("q")
        model.sent[0] -= started
    assert ours.sent[0] < 0.05 < theirs.sent[0]


async def test_the_callback_counts_the_estimate_then_settles_to_usage_metadata() -> None:
    lim = hs.HolySheepRateLimiter(tpm=10_000)
    rate_limiter = RateLimiter(lim)
    model = RecordingChat(rate_limiter=rate_limiter, callbacks=[rate_limiter.callback], usage=40, answer=asyncio.Event())
    prompt = "How many sheep are in the field today?"
    estimate = _tokens.estimate_request_tokens({"messages": [{"content": prompt}], "max_tokens": 100})
    call = asyncio.ensure_future(model.ainvoke(prompt, max_tokens=100))
    while not model.sent:
        await asyncio.sleep(0.001)
    assert lim.stats()["remaining"]["10000 tokens per minute"] == 10_000 - estimate
    model.answer.set()
    await call
    assert lim.stats()["remaining"]["10000 tokens per minute"] == 10_000 - 40


def test_the_callback_settles_blocking_and_batched_calls() -> None:
    lim = hs.HolySheepRateLimiter(tpm=10_000, max_concurrency=2)
    rate_limiter = RateLimiter(lim)
    model = RecordingChat(rate_limiter=rate_limiter, callbacks=[rate_limiter.callback], usage=25)
    model.invoke("one")
    model.batch(["two", "three", "four"])
    assert lim.stats()["remaining"]["10000 tokens per minute"] == 10_000 - 4 * 25
    assert lim.stats()["in_flight"] == 0


async def test_every_call_of_a_batch_and_of_one_agenerate_is_settled_and_ended() -> None:
    lim = hs.HolySheepRateLimiter(tpm=10_000, max_concurrency=3)
    rate_limiter = RateLimiter(lim)
    model = RecordingChat(rate_limiter=rate_limiter, callbacks=[rate_limiter.callback], usage=10)
    await model.abatch([f"question {n}" for n in range(5)])
    await model.agenerate([[HumanMessage("one")], [HumanMessage("two")], [HumanMessage("three")]])
    assert lim.stats()["remaining"]["10000 tokens per minute"] == 10_000 - 8 * 10
    assert lim.stats()["in_flight"] == 0 and lim.stats()["admitted"] == 8


async def test_a_concurrency_slot_is_held_until_the_model_answers_or_fails() -> None:
    lim = hs.HolySheepRateLimiter(max_concurrency=1)
    rate_limiter = RateLimiter(lim)
    model = RecordingChat(rate_limiter=rate_limiter, callbacks=[rate_limiter.callback], answer=asyncio.Event())
    first, second = asyncio.ensure_future(model.ainvoke("a")), asyncio.ensure_future(model.ainvoke("b"))
    await asyncio.sleep(0.1)
    assert len(model.sent) == 1 and lim.stats()["waiting"] == 1
    model.answer.set()
    await asyncio.gather(first, second)
    assert len(model.sent) == 2 and lim.stats()["in_flight"] == 0

    model.fail = True
    for _ in range(3):  # each failure gives its slot back, or the next call would wait forever
        with pytest.raises(RuntimeError, match="the model failed"):
            await asyncio.wait_for(model.ainvoke("c"), 2.0)
    assert lim.stats()["in_flight"] == 0


def stream_model() -> tuple[hs.HolySheepRateLimiter, GenericFakeChatModel]:
    lim = hs.HolySheepRateLimiter(max_concurrency=1)
    rate_limiter = RateLimiter(lim, timeout=2.0)  # a slot never given back raises instead of hanging
    messages = iter([AIMessage("one two three four")] * 4)
    return lim, GenericFakeChatModel(messages=messages, rate_limiter=rate_limiter, callbacks=[rate_limiter.callback])


async def test_an_async_stream_left_after_its_first_chunk_gives_its_slot_back_with_the_collector_off() -> None:
    lim, model = stream_model()
    gc.disable()
    try:
        async for _ in model.astream("hi"):
            break
        assert await model.ainvoke("hi")
    finally:
        gc.enable()
    assert lim.stats()["in_flight"] == 0


def test_a_stream_left_after_its_first_chunk_gives_its_slot_back_with_the_collector_off() -> None:
    lim, model = stream_model()
    gc.disable()
    try:
        for _ in model.stream("hi"):
            break
        assert model.invoke("hi")
    finally:
        gc.enable()
    assert lim.stats()["in_flight"] == 0


async def test_a_cancelled_call_gives_back_its_place_in_line() -> None:
    lim = hs.HolySheepRateLimiter(max_concurrency=1)
    rate_limiter = RateLimiter(lim)
    model = RecordingChat(rate_limiter=rate_limiter, callbacks=[rate_limiter.callback], answer=asyncio.Event())
    holder = asyncio.ensure_future(model.ainvoke("a"))
    waiter = asyncio.ensure_future(model.ainvoke("b"))
    await asyncio.sleep(0.05)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    model.answer.set()
    await holder
    assert len(model.sent) == 1
    assert await asyncio.wait_for(model.ainvoke("c"), 2.0)
    assert lim.stats()["in_flight"] == 0


async def test_a_call_served_from_langchains_cache_takes_no_admission() -> None:
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(1, per=60)], max_concurrency=1)
    rate_limiter = RateLimiter(lim)
    model = RecordingChat(rate_limiter=rate_limiter, callbacks=[rate_limiter.callback], cache=InMemoryCache())
    await model.ainvoke("same question")
    await asyncio.wait_for(model.ainvoke("same question"), 1.0)  # would wait 60 s if it were admitted
    assert lim.stats()["admitted"] == 1 and lim.stats()["in_flight"] == 0


def test_a_limiter_with_max_concurrency_needs_the_callback() -> None:
    model = RecordingChat(rate_limiter=RateLimiter(hs.HolySheepRateLimiter(max_concurrency=2)))
    with pytest.raises(hs.ConfigError) as info:
        model.invoke("q")
    assert info.value.field == "callbacks"
    assert model.sent == []


def test_a_token_limit_without_the_callback_needs_a_fixed_estimate_or_refuses() -> None:
    lim = hs.HolySheepRateLimiter(tpm=10_000)
    with pytest.raises(hs.ConfigError) as info:
        RecordingChat(rate_limiter=RateLimiter(lim)).invoke("q")  # would count no tokens at all
    assert info.value.field == "callbacks"
    model = RecordingChat(rate_limiter=RateLimiter(lim, tokens=250))
    model.invoke("q")
    model.invoke("q")
    assert lim.stats()["remaining"]["10000 tokens per minute"] == 10_000 - 2 * 250


async def test_blocking_false_admits_only_when_the_limit_allows_now() -> None:
    rate_limiter = RateLimiter(hs.HolySheepRateLimiter(limits=[hs.Limit(1, per=60)]))
    assert rate_limiter.acquire(blocking=False) is True
    assert rate_limiter.acquire(blocking=False) is False
    assert await rate_limiter.aacquire(blocking=False) is False


async def test_timeout_raises_rate_limit_exceeded_instead_of_waiting() -> None:
    rate_limiter = RateLimiter(hs.HolySheepRateLimiter(limits=[hs.Limit(1, per=60)]), timeout=0.1)
    await rate_limiter.aacquire()
    started = time.monotonic()
    with pytest.raises(hs.RateLimitExceeded):
        await rate_limiter.aacquire()
    assert time.monotonic() - started < 0.1


async def test_a_usd_budget_counts_the_models_price() -> None:
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(1.0, per="hour", unit="usd")])
    rate_limiter = RateLimiter(lim, prices={"sheep-llm": 10_000.0})  # $0.01 a token
    model = RecordingChat(rate_limiter=rate_limiter, callbacks=[rate_limiter.callback], usage=30, model_kwargs={})
    await model.ainvoke("q", model="sheep-llm")
    assert lim.stats()["remaining"]["1 usd per hour"] == pytest.approx(1.0 - 0.30)


async def test_a_keyed_limiter_paces_each_key_on_its_own() -> None:
    keyed = hs.KeyedLimiter(hs.Limit(2, per=0.5, guard=GUARD))
    tenant_a = RecordingChat(rate_limiter=RateLimiter(keyed, key="a"))
    tenant_b = RecordingChat(rate_limiter=RateLimiter(keyed, key="b"))
    started = time.monotonic()
    await asyncio.gather(*(tenant_a.ainvoke("q") for _ in range(4)), *(tenant_b.ainvoke("q") for _ in range(2)))
    assert_paced(tenant_a.sent, 2, 0.5, started, GUARD)
    assert max(tenant_b.sent) - started < 0.2
    gcra = hs.KeyedLimiter(hs.Limit(2, per=1.0, algorithm="gcra", burst=1))
    rate_limiter = RateLimiter(gcra, key="a")
    assert rate_limiter.acquire(blocking=False) and not rate_limiter.acquire(blocking=False)


async def test_a_redis_backed_limiter_paces_and_settles(redis_url: str) -> None:
    backend = hs.RedisBackend(redis_url)
    # Redis counts a request when it admits it, a little before it is sent here: a guard covers that.
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(3, per=0.5, guard=0.05)], tpm=10_000, backend=backend, key="langchain")
    rate_limiter = RateLimiter(lim)
    model = RecordingChat(rate_limiter=rate_limiter, callbacks=[rate_limiter.callback], usage=11)
    started = time.monotonic()
    await asyncio.gather(*(model.ainvoke("q") for _ in range(6)))
    assert_paced(model.sent, 3, 0.5, started, guard=0.05)
    await asyncio.sleep(0.2)  # settling in Redis runs in the background on an event loop
    assert lim.stats()["remaining"]["10000 tokens per minute"] == 10_000 - 6 * 11
    uncounted = RateLimiter(lim, tokens=5)  # asked directly, without a model's callback
    assert uncounted.acquire(blocking=False) is False  # the window still holds the last 3
    await asyncio.sleep(0.5)
    assert uncounted.acquire(blocking=False) is True


def test_embeddings_pass_the_limiter_a_request_at_a_time_with_their_tokens() -> None:
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(2, per=0.5, guard=GUARD)], tpm=100_000)
    inner = DeterministicFakeEmbedding(size=4)
    embeddings = RateLimitedEmbeddings(inner, lim, max_items=2)
    texts = [f"document {n} about sheep" for n in range(8)]
    started = time.monotonic()
    vectors = embeddings.embed_documents(texts)
    elapsed = time.monotonic() - started
    assert vectors == inner.embed_documents(texts)
    assert lim.stats()["admitted"] == 4  # 8 texts, 2 a request
    assert 0.5 - 0.01 <= elapsed <= 0.5 + LATE  # the 3rd and 4th requests wait for the window
    spent = sum(map(_tokens.count_tokens, texts))
    assert lim.stats()["remaining"]["100000 tokens per minute"] == 100_000 - spent
    assert embeddings.embed_query("one more") == inner.embed_query("one more")


async def test_async_embeddings_are_limited_and_hold_a_slot_per_request() -> None:
    lim = hs.HolySheepRateLimiter(limits=[hs.Limit(1, per=0.3, guard=GUARD)], max_concurrency=1)
    inner = DeterministicFakeEmbedding(size=3)
    embeddings = RateLimitedEmbeddings(inner, lim, max_tokens=10_000, max_items=5)
    texts = [f"text {n}" for n in range(10)]
    started = time.monotonic()
    vectors, query = await asyncio.gather(embeddings.aembed_documents(texts), embeddings.aembed_query("q"))
    assert vectors == inner.embed_documents(texts) and query == inner.embed_query("q")
    assert 0.6 - 0.01 <= time.monotonic() - started <= 0.6 + LATE  # 3 requests at 1 per 0.3 s
    assert lim.stats()["in_flight"] == 0


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: RateLimiter("60 rpm"), "limiter"),  # type: ignore[arg-type]
        (lambda: RateLimiter(hs.HolySheepRateLimiter(rpm=60), key="a"), "key"),
        (lambda: RateLimiter(hs.KeyedLimiter(hs.Limit(1, per=1))), "key"),
        (lambda: RateLimiter(hs.KeyedLimiter(hs.Limit(1, per=1)), key=["unhashable"]), "key"),
        (lambda: RateLimiter(hs.HolySheepRateLimiter(rpm=60), timeout=-1), "timeout"),
        (lambda: RateLimiter(hs.HolySheepRateLimiter(rpm=60), timeout=float("nan")), "timeout"),
        (lambda: RateLimiter(hs.HolySheepRateLimiter(rpm=60), tokens=-1), "tokens"),
        (lambda: RateLimiter(hs.HolySheepRateLimiter(rpm=60), tokens=1.5), "tokens"),  # type: ignore[arg-type]
        (lambda: RateLimiter(hs.HolySheepRateLimiter(rpm=60), prices={"m": -1.0}), "prices"),
        (lambda: RateLimitedEmbeddings(object(), hs.HolySheepRateLimiter(rpm=60)), "embeddings"),  # type: ignore[arg-type]
        (lambda: RateLimitedEmbeddings(DeterministicFakeEmbedding(size=2), None), "limiter"),  # type: ignore[arg-type]
        (lambda: RateLimitedEmbeddings(DeterministicFakeEmbedding(size=2), hs.HolySheepRateLimiter(rpm=60), max_items=0), "max_items"),
        (lambda: RateLimitedEmbeddings(DeterministicFakeEmbedding(size=2), hs.HolySheepRateLimiter(rpm=60), max_tokens=-1), "max_tokens"),
    ],
)
def test_bad_arguments_raise_config_error_naming_the_field(make: Any, field: str) -> None:
    with pytest.raises(hs.ConfigError) as info:
        make()
    assert info.value.field == field


def test_texts_that_are_not_strings_are_refused_before_any_request() -> None:
    lim = hs.HolySheepRateLimiter(rpm=60)
    embeddings = RateLimitedEmbeddings(DeterministicFakeEmbedding(size=2), lim, max_items=1)
    with pytest.raises(hs.ConfigError) as info:
        embeddings.embed_documents(["fine", 3])  # type: ignore[list-item]
    assert info.value.field == "texts" and lim.stats()["admitted"] == 0
