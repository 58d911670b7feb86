"""Held admissions: the answers whose bodies keep their request's concurrency slot, and how an abandoned
one gives it back without waiting for Python's garbage collector.

A streamed answer holds its slot until its body is read to the end or closed. An abandoned one
(``async for chunk in stream: break``, a consumer that raised, a cancelled task) is neither, and the
openai SDK's ``Stream`` sits in a reference cycle with its own iterator, so it is freed only when the
cyclic garbage collector runs: maybe never (``gc.disable()``), maybe long after every slot is taken
and every worker waits for one. Two rules give such slots back, both only for a request that must wait
for a slot:

1. **Its own abandoned bodies are closed.** Before waiting, a request closes the bodies its own task (or
   thread) started reading and left: while it waits it cannot read them. This is the common loop
   ``stream = await create(..., stream=True); async for c in stream: break``, repeated: while the next
   ``create`` waits, the previous ``Stream`` is still bound to ``stream``, so no garbage collector could
   free it, and with as many workers as slots every worker would wait on its own stream forever. A body
   never read, or last read by another task (a stream handed to a consumer), is left alone; reading a
   closed one afterwards raises ``StreamClosed``.
2. **Garbage is collected.** While requests wait for a slot and bodies holding one sit idle (no read in
   progress, and none since a look 50 ms earlier), a reclaimer thread runs ``gc.collect()`` (which works
   with the collector disabled): bodies nothing refers to any more (a helper that returned, a task that
   was cancelled, a consumer's frame gone with its exception) are freed and give their slots back. It
   spends at most a tenth of the time collecting (far less while collections free nothing: the idle
   bodies are alive, read slowly), and sleeps while nobody waits for a slot.

The registry keeps each hold's state and admission, never the body itself, so an abandoned body stays
collectable; ending a hold is one atomic ``dict.pop``, so a slot is given back once however many ends
race (a close, the end of the body, the collector).
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from holysheep._holysheep import MOST_TOKENS_PER_ANSWER
from holysheep.transport._answers import TAIL_BYTES, usage_tokens

if TYPE_CHECKING:
    from holysheep._limiter import HolySheepRateLimiter
    from holysheep.transport._admission import Admission

__all__ = ["Hold", "end", "finish", "reclaim_left", "register", "waiting_for_slot"]

logger = logging.getLogger("holysheep")

#: How long a body must sit idle, unread, before the reclaimer counts it as maybe abandoned.
LOOK_S = 0.05
#: Collections take at most 1 / (1 + this) of the time: the wait after one is this many times its length.
_COLLECTION_GAP = 9.0
#: ... and this many times while full collections free none of the idle bodies (they are alive).
_MOST_COLLECTION_GAP = _COLLECTION_GAP * 64


class Hold:
    """The state of one held body: what it reads from, whose it is, whether a read is in progress."""

    __slots__ = ("inner", "keeps_tail", "limiter", "pulls", "reader", "reading", "reclaimed", "settles", "tail")

    def __init__(self, inner: Any, limiter: HolySheepRateLimiter | None, reader: object, settles: bool) -> None:
        #: The library's body underneath, closed when the hold is reclaimed.
        self.inner = inner
        #: The limiter whose slot it holds; None when its limiter has no concurrency cap.
        self.limiter = limiter
        #: The task (asyncio) or thread id (blocking) that made the request or last read a chunk.
        self.reader = reader
        self.reading = False
        self.pulls = 0
        self.reclaimed = False
        #: Whether the ``usage`` at the body's end settles the request's token estimate.
        self.settles = settles
        #: Whether the end of the body is kept (for settling, or for whoever watches its end).
        self.keeps_tail = settles
        self.tail = b""

    def watch(self, ended: Callable[[bytes], None]) -> None:
        """Calls ``ended(tail)`` once when the body ends (read to the end, closed or freed), with the end
        of what was read: the metrics record a streamed answer then, not at its headers."""
        self.keeps_tail = True
        _watchers[self] = ended

    def saw(self, chunk: bytes) -> None:
        """Keeps the end of the body read so far, where ``usage`` comes."""
        self.tail = (self.tail + chunk)[-TAIL_BYTES:]


#: The holds whose admission is not given back yet, each with its admission.
_held: dict[Hold, Admission] = {}
#: The holds whose end is watched, each with what to call then.
_watchers: dict[Hold, Callable[[bytes], None]] = {}


def register(admission: Admission, held: Hold) -> Hold:
    """Registers ``held`` as holding ``admission`` until `end` (or `reclaim_left`)."""
    _held[held] = admission
    return held


def finish(admission: Admission, settles: bool, tail: bytes) -> None:
    """Settles the tokens ``usage`` reports at the end of ``tail`` (when it can be real), then gives the
    admission back, whatever settling did."""
    try:
        if settles:
            tokens = usage_tokens(tail[-TAIL_BYTES:], MOST_TOKENS_PER_ANSWER)
            if tokens is not None:
                admission.settle(tokens)
    finally:
        admission.release()


def end(held: Hold) -> None:
    """The body was read to the end, closed or freed: settles and gives the slot back, then tells its
    watcher; each only the first time (one atomic ``dict.pop`` each, however many ends race)."""
    admission = _held.pop(held, None)
    try:
        if admission is not None:
            finish(admission, held.settles, held.tail)
    finally:
        ended = _watchers.pop(held, None)
        if ended is not None:
            try:
                ended(held.tail)
            except Exception:  # a watcher (the metrics) never breaks a stream, nor a garbage collection
                logger.exception("holysheep: watching the end of a streamed answer failed")


def reclaim_left(reader: object, limiter: HolySheepRateLimiter) -> list[tuple[Hold, Admission]]:
    """Rule 1: when every slot of ``limiter`` is taken, claims the bodies holding one that ``reader``
    started reading and left. The caller closes each body, then releases its admission."""
    left = [h for h in list(_held) if h.reader == reader and h.limiter is limiter and h.pulls and not h.reading]
    if not left or not waits_for_slot(limiter):
        return []
    claimed = []
    for held in left:
        admission = _held.pop(held, None)
        if admission is not None:  # else it ended meanwhile
            held.reclaimed = True
            claimed.append((held, admission))
    logger.debug("holysheep: closing %d stream(s) left half-read by a request's own task to free a slot", len(claimed))
    return claimed


def waits_for_slot(limiter: HolySheepRateLimiter) -> bool:
    """Whether every concurrency slot of ``limiter`` is taken (not just its rate)."""
    cap = limiter.max_concurrency
    return cap is not None and limiter.stats()["in_flight"] >= cap


class _Reclaimer:
    """Collects garbage while requests wait for a slot and held bodies sit idle (rule 2).

    Each round it notes the idle bodies, looks again ``LOOK_S`` later, and collects when some are still
    idle: the youngest generation first, every generation if they still are at the next look. The wait
    after a collection is ``gap`` times its length; a full collection that freed none of the bodies it
    was run for (they are alive, just read slowly) doubles the gap, up to 64 times, and one that freed
    some brings it back.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition(threading.Lock())
        #: The limiters requests wait on for a slot, by id: (limiter, how many wait).
        self._waiting: dict[int, tuple[HolySheepRateLimiter, int]] = {}
        self._thread: threading.Thread | None = None
        self._next_allowed = 0.0
        self._gap = _COLLECTION_GAP
        self._young_collected = False
        #: The idle bodies the last full collection was run for, until the next look says if it freed any.
        self._collected_for: set[Hold] = set()

    @contextmanager
    def waiting(self, limiter: HolySheepRateLimiter) -> Iterator[None]:
        """Counts a request waiting on ``limiter`` for as long as the block runs."""
        key = id(limiter)
        with self._changed:
            count = self._waiting.get(key, (limiter, 0))[1]
            self._waiting[key] = (limiter, count + 1)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="holysheep-reclaimer", daemon=True)
                self._thread.start()
            self._changed.notify()
        try:
            yield
        finally:
            with self._changed:
                count = self._waiting[key][1] - 1
                if count:
                    self._waiting[key] = (limiter, count)
                else:
                    del self._waiting[key]

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._waiting:
                    self._changed.wait()
                limiters = {key: limiter for key, (limiter, _) in self._waiting.items()}
            idle = {h: h.pulls for h in list(_held) if id(h.limiter) in limiters and not h.reading}
            time.sleep(max(LOOK_S, self._next_allowed - time.monotonic()))
            still_idle = {h for h, pulls in idle.items() if h in _held and not h.reading and h.pulls == pulls}
            if self._collected_for:
                fruitless = self._collected_for <= still_idle
                self._gap = min(self._gap * 2, _MOST_COLLECTION_GAP) if fruitless else _COLLECTION_GAP
                self._collected_for = set()
            if still_idle and any(waits_for_slot(limiter) for limiter in limiters.values()):
                self._collect(still_idle)
            else:
                self._young_collected = False

    def _collect(self, idle: set[Hold]) -> None:
        # The youngest generation first: it is cheap, and it holds what was abandoned lately (all of it,
        # with the collector disabled); every generation when bodies still sit idle at the next look.
        generation = 2 if self._young_collected else 0
        started = time.monotonic()
        freed = gc.collect(generation)
        took = time.monotonic() - started
        self._young_collected = generation == 0
        if generation == 2:
            self._collected_for = idle
        self._next_allowed = started + took * (1.0 + self._gap)
        logger.debug(
            "holysheep: collected generation %d for requests waiting on held slots (%d objects, %.1f ms)",
            generation,
            freed,
            took * 1e3,
        )

    def _after_fork(self) -> None:
        # The child has no reclaimer thread; its lock may have been held by one in the parent.
        self._changed = threading.Condition(threading.Lock())
        self._waiting.clear()
        self._thread = None


_reclaimer = _Reclaimer()
waiting_for_slot = _reclaimer.waiting
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reclaimer._after_fork)
