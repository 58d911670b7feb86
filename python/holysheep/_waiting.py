"""How waiters stand in line, written once for asyncio tasks and for threads.

A limiter has two lines: one for concurrency slots, one for the rate. The protocol for each is a
generator that yields what the waiter must do next: ``None`` ("wait until woken") or a number of seconds
("sleep until your reserved instant"). Two drivers run it: one awaits on the running event loop, the
other blocks its thread with the GIL released. Cleanup on timeout or cancellation lives in the
generators, so both worlds give back exactly what they took.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Optional, Union

from holysheep._holysheep import _Reservation, _WaitQueue
from holysheep.errors import RateLimitExceeded

if TYPE_CHECKING:
    from holysheep._limiter import HolySheepRateLimiter

#: What a line protocol asks of its driver: None to wait for a wake-up, seconds to sleep.
Step = Optional[float]


#: How late a poll-style wait (epoll, under asyncio's timers) may wake: Linux lets it slip by 0.1% of its
#: timeout (timer slack), 10 ms of a 10 s wait for the window's oldest admission to leave.
_POLL_SLACK = 0.001
#: Waits shorter than this are slept in one go: their slack is under the kernel's 50 us floor anyway.
_ONE_LEG = 0.05


async def sleep_exactly(seconds: float) -> None:
    """``asyncio.sleep`` that does not wake up to 0.1% late: a long wait stops short of its end, by more
    than the slack, and sleeps the rest (a few ms, with microseconds of slack) in a second leg."""
    if seconds < _ONE_LEG:
        await asyncio.sleep(seconds)
        return
    loop = asyncio.get_running_loop()
    due = loop.time() + seconds
    await asyncio.sleep(seconds * (1.0 - 2 * _POLL_SLACK))
    await asyncio.sleep(max(0.0, due - loop.time()))


def _set_result_if_pending(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class AsyncWaiter:
    """A task waiting in a line, woken from any thread."""

    __slots__ = ("future", "loop", "woken")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] | None = None
        self.woken = False

    def wake(self) -> None:
        self.woken = True
        future = self.future
        if future is None or future.done():
            return
        if asyncio._get_running_loop() is self.loop:
            future.set_result(None)
        else:
            self.loop.call_soon_threadsafe(_set_result_if_pending, future)

    async def wait(self, deadline: float | None) -> bool:
        """Waits for a wake-up until the loop-time ``deadline``; False when time ran out."""
        # Make the future before reading the flag: a wake from another thread lands on one or the other.
        future = self.future = self.loop.create_future()
        if self.woken:
            self.woken = False
            return True
        timer = None if deadline is None else self.loop.call_at(deadline, _set_result_if_pending, future)
        try:
            await future
        finally:
            if timer is not None:
                timer.cancel()
        woken, self.woken = self.woken, False
        return woken


class ThreadWaiter:
    """A thread waiting in a line; it blocks with the GIL released."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = threading.Event()

    def wake(self) -> None:
        self.event.set()

    def wait(self, timeout: float | None) -> bool:
        woken = self.event.wait(timeout)
        self.event.clear()
        return woken


Waiter = Union[AsyncWaiter, ThreadWaiter]


def _timed_out(limiter: HolySheepRateLimiter, what: str, timeout: float | None) -> RateLimitExceeded:
    limiter._reject()
    return RateLimitExceeded(f"acquire: no {what} within timeout={timeout}s", retry_after=None, limit=what)


def slot_protocol(
    limiter: HolySheepRateLimiter, line: _WaitQueue, waiter: Waiter, priority: int, timeout: float | None
) -> Generator[Step, bool, None]:
    """Ends holding a concurrency slot. A released slot is handed to the head of the line directly (see
    ``HolySheepRateLimiter._hand_off_slot``), so being taken out of the line means owning a slot."""
    ticket = line.push(priority, waiter)
    limiter._park("slot")
    try:
        # A slot may have come free with nobody in line to hand it to.
        if line.is_front(ticket) and limiter._try_slot(True):
            line.remove(ticket)
            return
        try:
            woken = yield None
        except BaseException:
            if line.remove(ticket) is None:
                # A slot was handed over as this waiter gave up: pass it on.
                limiter._abandon()
            raise
        if not woken and line.remove(ticket) is not None:
            raise _timed_out(limiter, "concurrency slot", timeout)
    finally:
        limiter._unpark("slot")


def rate_protocol(
    limiter: HolySheepRateLimiter,
    line: _WaitQueue,
    waiter: Waiter,
    tokens: int,
    priority: int,
    remaining: Remaining,
    price: float = 0.0,
) -> Generator[Step, bool, _Reservation]:
    """Ends with a rate reservation whose instant has come. Only the head of the line reserves, so a
    waiter that gives up before its turn holds nothing, and later ones move up at once; interactive work
    (higher priority) reserves before batch work still in line."""
    ticket = line.push(priority, waiter)
    limiter._park("rate")
    reservation = None
    try:
        while not line.is_front(ticket):
            woken = yield None
            if not woken and remaining() == 0.0:
                raise _timed_out(limiter, "rate admission", remaining.timeout)
        reservation = limiter._reserve(tokens, remaining(), "acquire", price)
        if reservation.wait > 0.0:
            yield reservation.wait
            # Requests admitted before may have gone out later than reckoned: wait for them too.
            while (extra := reservation.confirm()) > 0.0:
                yield extra
            reservation.stamp()
        return reservation
    except BaseException:
        if reservation is not None:
            reservation.give_back()
        raise
    finally:
        was_front = line.is_front(ticket)
        line.remove(ticket)
        limiter._unpark("rate")
        if was_front:
            front = line.front()
            if front is not None:
                front.wake()


def acquire_protocol(
    limiter: HolySheepRateLimiter,
    waiter: Waiter,
    tokens: int,
    priority: int,
    remaining: Remaining,
    price: float,
) -> Generator[Step, bool, _Reservation]:
    """Ends holding a concurrency slot and a rate reservation: the slot first (so the reserved instant
    is when the request goes), then the rate; a waiter that fails or gives up on the rate hands its
    slot on. One waiter serves both lines: it stands in one at a time."""
    if not limiter._try_slot():
        yield from slot_protocol(limiter, limiter._slot_line, waiter, priority, remaining.timeout)
    try:
        reservation = yield from rate_protocol(
            limiter, limiter._rate_line, waiter, tokens, priority, remaining, price
        )
    except BaseException:
        limiter._abandon()
        raise
    limiter._record_wait(remaining.elapsed())
    return reservation


class Remaining:
    """A wait's budget on some clock: seconds left before its deadline (None without a timeout), and
    seconds spent so far."""

    __slots__ = ("clock", "deadline", "start", "timeout")

    def __init__(self, timeout: float | None, clock: Callable[[], float]) -> None:
        self.timeout = timeout
        self.clock = clock
        self.start = clock()
        self.deadline = None if timeout is None else self.start + timeout

    def __call__(self) -> float | None:
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - self.clock())

    def elapsed(self) -> float:
        return float(self.clock() - self.start)


async def run_async(protocol: Generator[Step, bool, Any], waiter: AsyncWaiter, remaining: Remaining) -> Any:
    """Drives a line protocol on the running event loop (``remaining`` counts on the loop's clock)."""
    try:
        step = next(protocol)
        while True:
            try:
                if step is None:
                    outcome = await waiter.wait(remaining.deadline)
                else:
                    await sleep_exactly(step)
                    outcome = True
            except BaseException as exc:
                step = protocol.throw(exc)
            else:
                step = protocol.send(outcome)
    except StopIteration as done:
        return done.value


def run_blocking(
    protocol: Generator[Step, bool, Any], waiter: ThreadWaiter, remaining: Remaining, sleep: Callable[[float], None]
) -> Any:
    """Drives a line protocol on this thread, blocking with the GIL released."""
    try:
        step = next(protocol)
        while True:
            try:
                if step is None:
                    outcome = waiter.wait(remaining())
                else:
                    sleep(step)
                    outcome = True
            except BaseException as exc:
                step = protocol.throw(exc)
            else:
                step = protocol.send(outcome)
    except StopIteration as done:
        return done.value
