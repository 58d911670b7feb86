"""Batch helpers for RAG work: embed thousands of documents, run hundreds of prompts.

    vectors = await batch_embed(client, docs, model="text-embedding-3-small", progress=True)
    replies = await batch_chat(client, prompts, model="deepseek-v3.2", concurrency=64)
    failed = [item for item in replies if isinstance(item, BatchFailure)]

They take any client shaped like ``openai.AsyncOpenAI`` (``batch_embed_sync`` and ``batch_chat_sync``
take one shaped like ``openai.OpenAI`` and work on threads). Behind an `AsyncHolySheep` every request
is kept within the limits and retried; with a bare client ``concurrency`` is the only brake.

- A fixed pool of ``concurrency`` workers pulls from one iterator over the input, so what is held at
  once is the workers and the results, never a task per document: the input may be a generator.
- Results come back in input order. An item whose request fails (after the client's own retries)
  becomes a `BatchFailure` in its place, and the rest of the batch carries on.
- An open circuit breaker (``CircuitOpenError``, from an `AsyncHolySheep` with ``breaker=``) pauses
  the worker that met it for the breaker's ``retry_after``, up to ``max_breaker_wait`` seconds per item:
  a batch rides out an outage instead of failing every item left in the second the breaker opens.
- Cancelling the call (Ctrl-C for the threaded ones) stops the workers and propagates at once; so does
  an error raised by the input iterator itself, which is the caller's and not the server's.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import math
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence, Sized
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, Union

from holysheep._holysheep import _check_count as _check_count_between
from holysheep._holysheep import _check_priority, _check_timeout
from holysheep._priority import current_priority
from holysheep._priority import priority as at_priority
from holysheep.errors import CircuitOpenError, ConfigError, HolySheepError

if TYPE_CHECKING:
    import openai
    from openai.types import CreateEmbeddingResponse
    from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

__all__ = [
    "BatchFailure",
    "Prompt",
    "batch_chat",
    "batch_chat_sync",
    "batch_embed",
    "batch_embed_sync",
]

#: A prompt for `batch_chat`: a user message's text, or a whole list of chat messages.
Prompt = Union[str, Sequence["ChatCompletionMessageParam"]]

#: Workers for `batch_embed`: each request carries a whole batch of documents, so a few in flight
#: already move thousands of documents a second.
DEFAULT_EMBED_CONCURRENCY = 8
#: Workers for `batch_chat`: a chat call takes seconds, so using a rate limit takes many in flight
#: (about requests per second times latency).
DEFAULT_CHAT_CONCURRENCY = 32
#: Seconds an item may wait, in all, for an open circuit breaker before it becomes a failure.
DEFAULT_MAX_BREAKER_WAIT = 300.0
#: The most workers or documents per request a batch takes: what fits 32 bits.
_MAX_COUNT = 2**32 - 1
#: The shortest pause before asking an open breaker again, so no worker ever spins on it.
_BREAKER_POLL_S = 0.01

Item = TypeVar("Item")
Output = TypeVar("Output")


@dataclass(frozen=True)
class BatchFailure:
    """An input item whose request failed, in the item's place among a batch's results.

        replies = await batch_chat(client, prompts, model="gpt-4.1")
        for failure in (r for r in replies if isinstance(r, BatchFailure)):
            print(failure.index, failure.message)          # 17 prompt 17: RateLimitError: ...

    :ivar index: the item's position in the input.
    :ivar error: the exception its request ended with (the SDK's ``openai.APIStatusError`` and kin,
        ``CircuitOpenError``, ...). The documents of one failed embedding request share it.
    :ivar message: what failed and why, in one line.
    """

    index: int
    error: Exception
    message: str

    def __str__(self) -> str:
        return self.message


def _failures(error: Exception, start: int, count: int, noun: str) -> list[BatchFailure]:
    """One failure for each item of a unit of work that failed as a whole."""
    what = f"{noun} {start}" if count == 1 else f"{noun}s {start}-{start + count - 1}"
    message = f"{what}: {type(error).__name__}: {error}"
    return [BatchFailure(start + offset, error, message) for offset in range(count)]


def _check_count(name: str, value: int) -> None:
    _check_count_between(name, value, 1, _MAX_COUNT)


@dataclass(frozen=True)
class _Settings:
    """How the workers run, checked when made."""

    concurrency: int
    max_breaker_wait: float
    #: The priority of the batch's requests; None: the caller's (`holysheep.priority`), which threads
    #: would not see otherwise.
    priority: int | None = None

    def __post_init__(self) -> None:
        _check_count("concurrency", self.concurrency)
        if _check_timeout("max_breaker_wait", self.max_breaker_wait) is None:
            object.__setattr__(self, "max_breaker_wait", math.inf)  # None and inf: as long as it takes
        level = current_priority() if self.priority is None else _check_priority("priority", self.priority)
        object.__setattr__(self, "priority", level)

    @property
    def level(self) -> int:
        """The priority the workers send at."""
        assert self.priority is not None, "set when made"
        return self.priority


class _Pull(Generic[Item]):
    """Hands out the input in order, ``size`` items at a time, and keeps a place for their results.

    Thread-safe, for the threaded helpers; under asyncio the lock is never contended.
    """

    def __init__(self, items: Iterable[Item], size: int) -> None:
        self._items = iter(items)
        self._size = size
        self._lock = threading.Lock()
        self.results: list[Any] = []

    def take(self) -> tuple[int, list[Item]] | None:
        """The next unit as (index of its first item, items), or None when the input is used up."""
        with self._lock:
            unit = list(itertools.islice(self._items, self._size))
            if not unit:
                return None
            start = len(self.results)
            self.results.extend(itertools.repeat(None, len(unit)))
            return start, unit

    def fill(self, start: int, outputs: Sequence[Any]) -> None:
        self.results[start : start + len(outputs)] = outputs


class _Progress:
    """A tqdm bar counting items done (and failed), or nothing when not asked for."""

    def __init__(self, progress: bool | str, items: Iterable[Any], description: str, unit: str) -> None:
        self._bar: Any = None
        self._failed = 0
        self._lock = threading.Lock()
        if not progress:
            return
        try:
            tqdm = importlib.import_module("tqdm.auto").tqdm
        except ImportError as missing:
            raise ConfigError(
                "progress=True needs tqdm: pip install 'holysheep[progress]'", "progress"
            ) from missing
        total = len(items) if isinstance(items, Sized) else None
        label = progress if isinstance(progress, str) else description
        self._bar = tqdm(total=total, desc=label, unit=unit)

    def advance(self, outputs: Sequence[Any]) -> None:
        if self._bar is None:
            return
        failed = sum(isinstance(output, BatchFailure) for output in outputs)
        with self._lock:
            if failed:
                self._failed += failed
                self._bar.set_postfix(failed=self._failed, refresh=False)
            self._bar.update(len(outputs))

    def __enter__(self) -> _Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.close()


def _breaker_pause(error: CircuitOpenError, waited: float, max_breaker_wait: float) -> float | None:
    """Seconds to wait before sending again past an open breaker, or None when the item has waited enough."""
    pause = max(error.retry_after, _BREAKER_POLL_S)
    return pause if waited + pause <= max_breaker_wait else None


async def _run_async(
    pull: _Pull[Item],
    send: Callable[[list[Item]], Awaitable[list[Output]]],
    settings: _Settings,
    progress: _Progress,
    noun: str,
) -> list[Output | BatchFailure]:
    async def send_past_breaker(items: list[Item]) -> list[Output]:
        waited = 0.0
        while True:
            try:
                return await send(items)
            except CircuitOpenError as error:
                pause = _breaker_pause(error, waited, settings.max_breaker_wait)
                if pause is None:
                    raise
                await asyncio.sleep(pause)
                waited += pause

    async def worker() -> None:
        with at_priority(settings.level):
            await work()

    async def work() -> None:
        while (unit := pull.take()) is not None:
            start, items = unit
            outputs: Sequence[Output | BatchFailure]
            try:
                outputs = await send_past_breaker(items)
            except Exception as error:  # a failed request is a result; CancelledError is not an Exception
                outputs = _failures(error, start, len(items), noun)
            pull.fill(start, outputs)
            progress.advance(outputs)

    workers = [asyncio.ensure_future(worker()) for _ in range(settings.concurrency)]
    try:
        await asyncio.gather(*workers)
    except BaseException:
        # Cancelled, or the input iterator raised: stop the other workers before handing it on, so
        # none is left running requests for a batch nobody waits for.
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        raise
    return pull.results


def _run_threads(
    pull: _Pull[Item],
    send: Callable[[list[Item]], list[Output]],
    settings: _Settings,
    progress: _Progress,
    noun: str,
) -> list[Output | BatchFailure]:
    stop = threading.Event()
    raised: list[BaseException] = []

    def send_past_breaker(items: list[Item]) -> list[Output]:
        waited = 0.0
        while True:
            try:
                return send(items)
            except CircuitOpenError as error:
                pause = _breaker_pause(error, waited, settings.max_breaker_wait)
                if pause is None or stop.wait(pause):
                    raise
                waited += pause

    def worker() -> None:
        with at_priority(settings.level):
            work()

    def work() -> None:
        try:
            while not stop.is_set() and (unit := pull.take()) is not None:
                start, items = unit
                outputs: Sequence[Output | BatchFailure]
                try:
                    outputs = send_past_breaker(items)
                except Exception as error:
                    outputs = _failures(error, start, len(items), noun)
                pull.fill(start, outputs)
                progress.advance(outputs)
        except BaseException as error:  # the input iterator raised: the whole call fails with it
            raised.append(error)
            stop.set()

    # Daemon threads: after Ctrl-C each finishes its request in flight and takes no more, and none
    # keeps the interpreter from exiting.
    threads = [
        threading.Thread(target=worker, name=f"holysheep-batch-{number}", daemon=True)
        for number in range(settings.concurrency)
    ]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except BaseException:
        stop.set()
        raise
    if raised:
        raise raised[0]
    return pull.results


def _check_chat_kwargs(create_kwargs: dict[str, Any]) -> None:
    if "messages" in create_kwargs:
        raise ConfigError("messages: batch_chat makes the messages from each prompt", "messages")
    if create_kwargs.get("stream"):
        raise ConfigError("stream=True: batch_chat collects whole replies; stream one call instead", "stream")


def _vectors(response: CreateEmbeddingResponse, expected: int) -> list[list[float]]:
    """The vectors of one embedding response, in input order, checked to be one per document."""
    data = sorted(response.data, key=lambda item: item.index)
    if len(data) != expected:
        raise HolySheepError(f"embeddings: {len(data)} vectors for {expected} documents")
    return [item.embedding for item in data]


def _messages(prompt: Prompt) -> list[ChatCompletionMessageParam]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return list(prompt)


def _reply(completion: ChatCompletion) -> str:
    """The first choice's text ("" when the reply has none, e.g. only tool calls)."""
    if not completion.choices:
        raise HolySheepError("chat: a reply with no choices")
    return completion.choices[0].message.content or ""


async def batch_embed(
    client: openai.AsyncOpenAI,
    docs: Iterable[str],
    *,
    model: str,
    batch_size: int = 100,
    concurrency: int = DEFAULT_EMBED_CONCURRENCY,
    max_breaker_wait: float = DEFAULT_MAX_BREAKER_WAIT,
    progress: bool | str = False,
    priority: int | None = None,
    **create_kwargs: Any,
) -> list[list[float] | BatchFailure]:
    """Embeds documents, ``batch_size`` to a request; one vector (or `BatchFailure`) per document, in order.

        vectors = await batch_embed(client, docs, model="text-embedding-3-small", progress=True)
        ok = [v for v in vectors if not isinstance(v, BatchFailure)]

    :param client: an ``openai.AsyncOpenAI`` (an `AsyncHolySheep` keeps it within its limits).
    :param docs: the texts; any iterable, read as the work goes (a generator keeps memory flat).
    :param batch_size: documents per request. Every document of a failed request gets a failure.
    :param concurrency: requests in flight at most.
    :param max_breaker_wait: seconds a batch may wait, in all, for an open circuit breaker (inf: no end).
    :param progress: show a tqdm bar (``pip install 'holysheep[progress]'``); a string labels it.
    :param priority: the priority of its requests among those waiting for the client's limiter (see
        `holysheep.priority`; e.g. ``-1`` so interactive requests go first); default the caller's.
    :param create_kwargs: passed on to ``embeddings.create`` (``dimensions``, ``user``, ...).
    :raises ConfigError: ``batch_size`` or ``concurrency`` below 1, a negative ``max_breaker_wait``,
        ``progress=True`` without tqdm.
    :raises asyncio.CancelledError: when cancelled, at once; requests in flight are cancelled too.
    """
    _check_count("batch_size", batch_size)
    settings = _Settings(concurrency, max_breaker_wait, priority)

    async def send(batch: list[str]) -> list[list[float]]:
        response = await client.embeddings.create(model=model, input=batch, **create_kwargs)
        return _vectors(response, len(batch))

    with _Progress(progress, docs, "embed", "doc") as bar:
        return await _run_async(_Pull(docs, batch_size), send, settings, bar, "document")


async def batch_chat(
    client: openai.AsyncOpenAI,
    prompts: Iterable[Prompt],
    *,
    model: str,
    concurrency: int = DEFAULT_CHAT_CONCURRENCY,
    max_breaker_wait: float = DEFAULT_MAX_BREAKER_WAIT,
    progress: bool | str = False,
    priority: int | None = None,
    **create_kwargs: Any,
) -> list[str | BatchFailure]:
    """Runs one chat completion per prompt; the reply texts (or `BatchFailure` items), in prompt order.

        replies = await batch_chat(client, ["Summarise: ...", [{"role": "system", ...}, ...]],
                                   model="deepseek-v3.2", max_tokens=256)

    :param client: an ``openai.AsyncOpenAI`` (an `AsyncHolySheep` keeps it within its limits).
    :param prompts: each a user message's text or a list of chat messages; any iterable, read as the
        work goes.
    :param concurrency: calls in flight at most.
    :param max_breaker_wait: seconds a prompt may wait, in all, for an open circuit breaker (inf: no end).
    :param progress: show a tqdm bar (``pip install 'holysheep[progress]'``); a string labels it.
    :param priority: the priority of its requests among those waiting for the client's limiter (see
        `holysheep.priority`; e.g. ``-1`` so interactive requests go first); default the caller's.
    :param create_kwargs: passed on to ``chat.completions.create`` (``max_tokens``, ``temperature``, ...).
        A reply is the first choice's text, ``""`` when it has none (e.g. only tool calls).
    :raises ConfigError: ``concurrency`` below 1, a negative ``max_breaker_wait``, ``messages=`` or
        ``stream=True`` given, or ``progress=True`` without tqdm.
    :raises asyncio.CancelledError: when cancelled, at once; calls in flight are cancelled too.
    """
    settings = _Settings(concurrency, max_breaker_wait, priority)
    _check_chat_kwargs(create_kwargs)

    async def send(batch: list[Prompt]) -> list[str]:
        completion = await client.chat.completions.create(
            model=model, messages=_messages(batch[0]), **create_kwargs
        )
        return [_reply(completion)]

    with _Progress(progress, prompts, "chat", "prompt") as bar:
        return await _run_async(_Pull(prompts, 1), send, settings, bar, "prompt")


def batch_embed_sync(
    client: openai.OpenAI,
    docs: Iterable[str],
    *,
    model: str,
    batch_size: int = 100,
    concurrency: int = DEFAULT_EMBED_CONCURRENCY,
    max_breaker_wait: float = DEFAULT_MAX_BREAKER_WAIT,
    progress: bool | str = False,
    priority: int | None = None,
    **create_kwargs: Any,
) -> list[list[float] | BatchFailure]:
    """`batch_embed` for a blocking ``openai.OpenAI`` client, on ``concurrency`` threads.

        vectors = batch_embed_sync(openai.OpenAI(), docs, model="text-embedding-3-small")

    Ctrl-C raises at once; each thread then finishes the request it has in flight and takes no more.
    """
    _check_count("batch_size", batch_size)
    settings = _Settings(concurrency, max_breaker_wait, priority)

    def send(batch: list[str]) -> list[list[float]]:
        response = client.embeddings.create(model=model, input=batch, **create_kwargs)
        return _vectors(response, len(batch))

    with _Progress(progress, docs, "embed", "doc") as bar:
        return _run_threads(_Pull(docs, batch_size), send, settings, bar, "document")


def batch_chat_sync(
    client: openai.OpenAI,
    prompts: Iterable[Prompt],
    *,
    model: str,
    concurrency: int = DEFAULT_CHAT_CONCURRENCY,
    max_breaker_wait: float = DEFAULT_MAX_BREAKER_WAIT,
    progress: bool | str = False,
    priority: int | None = None,
    **create_kwargs: Any,
) -> list[str | BatchFailure]:
    """`batch_chat` for a blocking ``openai.OpenAI`` client, on ``concurrency`` threads.

        replies = batch_chat_sync(openai.OpenAI(), prompts, model="gpt-4.1", concurrency=16)

    Ctrl-C raises at once; each thread then finishes the call it has in flight and takes no more.
    """
    settings = _Settings(concurrency, max_breaker_wait, priority)
    _check_chat_kwargs(create_kwargs)

    def send(batch: list[Prompt]) -> list[str]:
        messages = _messages(batch[0])
        completion = client.chat.completions.create(model=model, messages=messages, **create_kwargs)
        return [_reply(completion)]

    with _Progress(progress, prompts, "chat", "prompt") as bar:
        return _run_threads(_Pull(prompts, 1), send, settings, bar, "prompt")
