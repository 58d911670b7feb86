"""`hs.priority`: requests made inside go ahead of waiting lower-priority work, through the clients and
the batch helpers, against MockGateway over HTTP."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import holysheep as hs
from holysheep._priority import current_priority
from holysheep.testing import MockGateway

MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]
LATENCY = 0.2


def stat(limiter: hs.HolySheepRateLimiter, name: str) -> int:
    value: int = limiter.stats()[name]
    return value


async def until(condition: Callable[[], bool]) -> None:
    """Waits (a few seconds at most) until ``condition()`` holds: the state a test sets up, not a guess."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the condition never held")


def until_blocking(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        time.sleep(0.005)
    raise AssertionError("the condition never held")


@pytest.fixture
def gateway() -> Iterator[MockGateway]:
    with MockGateway(latency=LATENCY) as gw:
        yield gw


async def test_a_request_inside_a_priority_block_goes_ahead_of_waiting_lower_priority_ones(gateway: MockGateway) -> None:
    lim = hs.HolySheepRateLimiter(max_concurrency=1)
    done: list[str] = []
    async with hs.AsyncHolySheep(api_key="hs_x", base_url=gateway.base_url, limiter=lim) as client:

        async def ask(name: str) -> None:
            await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
            done.append(name)

        async def ask_first(name: str) -> None:
            with hs.priority(10):
                await ask(name)

        tasks = [asyncio.create_task(ask("low-0"))]
        await until(lambda: stat(lim, "in_flight") == 1)  # low-0 holds the slot
        tasks += [asyncio.create_task(ask(f"low-{n}")) for n in (1, 2)]
        await until(lambda: stat(lim, "waiting") == 2)  # low-1 and low-2 wait
        tasks.append(asyncio.create_task(ask_first("high")))
        await asyncio.gather(*tasks)
    assert done == ["low-0", "high", "low-1", "low-2"]


def test_a_blocking_request_inside_a_priority_block_goes_ahead_too(gateway: MockGateway) -> None:
    lim = hs.HolySheepRateLimiter(max_concurrency=1)
    done: list[str] = []
    with hs.HolySheep(api_key="hs_x", base_url=gateway.base_url, limiter=lim) as client:

        def ask(name: str, level: int = 0) -> None:
            with hs.priority(level):
                client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
            done.append(name)

        threads = [threading.Thread(target=ask, args=("low-0",))]
        threads[0].start()
        until_blocking(lambda: stat(lim, "in_flight") == 1)
        for waiting, name in enumerate(("low-1", "low-2"), 1):  # one after the other: arrival order
            threads.append(threading.Thread(target=ask, args=(name,)))
            threads[-1].start()
            until_blocking(lambda: stat(lim, "waiting") == waiting)  # noqa: B023 - read before the loop moves on
        threads.append(threading.Thread(target=ask, args=("high", 10)))
        threads[-1].start()
        for thread in threads:
            thread.join()
    assert done == ["low-0", "high", "low-1", "low-2"]


async def test_a_batch_at_low_priority_lets_an_interactive_request_through_first(gateway: MockGateway) -> None:
    lim = hs.HolySheepRateLimiter(max_concurrency=1)
    async with hs.AsyncHolySheep(api_key="hs_x", base_url=gateway.base_url, limiter=lim) as client:
        batch = asyncio.create_task(client.batch_chat(["p"] * 6, model="gpt-4.1", concurrency=6, priority=-1))
        await until(lambda: stat(lim, "waiting") == 5)  # one batch prompt holds the slot, five wait
        await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
        answered_before = sum(r.status == 200 for r in gateway.admission_log()) - 1
        replies = await batch
    assert answered_before <= 2  # the one in flight (and one at most already through), not the five waiting
    assert all(isinstance(reply, str) for reply in replies)


def test_a_threaded_batch_sends_at_the_priority_of_its_caller() -> None:
    seen: list[int] = []

    class Recorder:
        class chat:  # noqa: N801 - shaped like the SDK's client
            class completions:  # noqa: N801
                @staticmethod
                def create(**_: Any) -> Any:
                    seen.append(current_priority())
                    raise RuntimeError("recorded")

    with hs.priority(4):
        hs.batch_chat_sync(Recorder(), ["a", "b", "c"], model="m", concurrency=3)  # type: ignore[arg-type]
    hs.batch_chat_sync(Recorder(), ["d"], model="m", priority=-2)  # type: ignore[arg-type]
    assert seen == [4, 4, 4, -2]


async def test_the_priority_follows_tasks_started_inside_the_block() -> None:
    async def level() -> int:
        await asyncio.sleep(0)
        return current_priority()

    with hs.priority(7):
        task = asyncio.create_task(level())
        with hs.priority(9):
            assert current_priority() == 9
        assert current_priority() == 7
    assert (await task, current_priority()) == (7, 0)


async def test_priority_decorates_def_and_async_def() -> None:
    @hs.priority(3)
    def blocking() -> int:
        return current_priority()

    @hs.priority(-3)
    async def awaited() -> int:
        return current_priority()

    assert (blocking(), await awaited(), current_priority()) == (3, -3, 0)


@pytest.mark.parametrize("level", ["10", 1.5, True, None, 2**63])
def test_a_priority_that_is_not_a_64_bit_int_is_refused_at_once(level: object) -> None:
    with pytest.raises(hs.ConfigError) as info:
        hs.priority(level)  # type: ignore[arg-type]
    assert info.value.field == "priority"


async def test_a_batch_priority_that_is_not_an_int_is_refused_naming_it() -> None:
    with pytest.raises(hs.ConfigError) as info:
        await hs.batch_chat(object(), ["a"], model="m", priority="high")  # type: ignore[arg-type]
    assert info.value.field == "priority"
