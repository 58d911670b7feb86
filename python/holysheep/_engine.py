"""The batch engine: a JSONL file of requests in the OpenAI Batch API's format, sent by Rust (tokio +
reqwest) under a holysheep limiter, retry policy and breaker, its answers appended to an output file that
a rerun resumes from.

    report = hs.run_batch("requests.jsonl", "results.jsonl", base_url=gw.base_url, api_key="hs_...",
                          limiter=hs.HolySheepRateLimiter(rpm=500, max_concurrency=32))
    print(report)                       # counts, failures by reason, 429s, requests/s, cost

Input lines: ``{"custom_id": "req-1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}``
(any of the Batch API's endpoints: chat completions, embeddings, completions, moderations, responses).
Output lines: ``{"id", "custom_id", "response": {"status_code", "request_id", "body"} | null,
"error": {"code", "message"} | null}``, one per request, in the order answers come.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from holysheep._endpoint import HOLYSHEEP_BASE_URL, checked_base_url, resolve_api_key
from holysheep._holysheep import _BatchJob
from holysheep._limiter import HolySheepRateLimiter
from holysheep.breaker import CircuitBreaker
from holysheep.errors import ConfigError
from holysheep.metrics import _hook as _metrics
from holysheep.pricing import checked_prices
from holysheep.retry import RetryPolicy

if TYPE_CHECKING:
    from holysheep.metrics._recorder import Recorder

__all__ = ["BatchReport", "arun_batch", "run_batch"]

#: Requests in flight at once when neither ``max_concurrency`` nor a limiter's cap says otherwise.
DEFAULT_IN_FLIGHT = 64
#: How often the progress line is redrawn, in seconds.
_TICK_S = 0.25
#: A dry run's ``stopped``: nothing was meant to be sent.
_DRY_RUN = "dry run"


@dataclass(frozen=True)
class BatchReport:
    """What a batch run did (or, for a dry run, would do).

    :ivar total: requests in the input file.
    :ivar sent: requests of this run that got an output line: ``ok + failed``.
    :ivar ok: answered 2xx with a JSON body.
    :ivar failed: answered with an error status after the retries, or no usable answer (timeout,
        connection error, invalid JSON): their lines carry the status or the ``error``.
    :ivar skipped: answered already in the output file (an earlier run), not sent again.
    :ivar unsent: left unsent: a budget stopped the run, the breaker was isolated, a shared limiter's
        or breaker's Redis was away under ``fail_closed``, or it was cancelled (``stopped`` says which);
        a rerun sends them. After a dry run: the requests a run would send (within the budget).
    :ivar failures: failed requests by reason (``http_500``, ``timeout``, ``connection_error``,
        ``invalid_json``, ``exceeds_limit``).
    :ivar server_429s: answers with status 429 seen, retried ones included.
    :ivar retries: attempts after a request's first.
    :ivar wall_s: seconds the run took.
    :ivar requests_per_s: ``sent / wall_s``.
    :ivar cost_usd: at the price table: the tokens ``usage`` reported for answered requests, the estimate
        for the others (a dry run: the estimate for every request to send).
    :ivar stopped: why requests were left unsent, if any were: what stopped a run (the budget spent,
        the breaker isolated, Redis away, ``"cancelled"``), or ``"dry run"`` (nothing is sent).
    :ivar planned_s: a dry run's time to send at the limiter's rate limits (latency not included); None
        after a real run or without a limiter.
    :ivar notes: what to keep in mind when reading the figures, each a full sentence: a dry run's
        budget letting only some of the requests go, or its limits shared through Redis (the time then
        assumes the job has them alone). Empty after a real run.
    """

    total: int
    sent: int
    ok: int
    failed: int
    skipped: int
    unsent: int
    failures: dict[str, int] = field(default_factory=dict)
    server_429s: int = 0
    retries: int = 0
    wall_s: float = 0.0
    requests_per_s: float = 0.0
    cost_usd: float = 0.0
    stopped: str | None = None
    planned_s: float | None = None
    notes: tuple[str, ...] = ()

    @classmethod
    def _of(cls, report: Mapping[str, Any]) -> BatchReport:
        wall_s = float(report["wall_s"])
        rate = report["sent"] / wall_s if wall_s > 0 else 0.0
        return cls(requests_per_s=rate, **report)

    def __str__(self) -> str:
        if self.stopped == _DRY_RUN:
            return "\n".join([self._plan_text(), *self.notes])
        lines = [
            f"{self.sent:,} sent in {self.wall_s:.2f} s ({self.requests_per_s:,.0f} requests/s): "
            f"{self.ok:,} ok, {self.failed:,} failed; {self.skipped:,} answered before, {self.unsent:,} unsent",
            f"429s seen: {self.server_429s:,}; retries: {self.retries:,}; cost ${self.cost_usd:.4f} at the price table",
        ]
        if self.failures:
            lines.append("failed: " + ", ".join(f"{reason} {count:,}" for reason, count in sorted(self.failures.items())))
        if self.stopped:
            lines.append(f"stopped: {self.stopped}")
        return "\n".join([*lines, *self.notes])

    def _plan_text(self) -> str:
        duration = "no limiter: as fast as the server answers" if self.planned_s is None else _duration(self.planned_s)
        return (
            f"{_DRY_RUN}: {self.total:,} requests, {self.skipped:,} answered before, {self.unsent:,} to send, "
            f"~${self.cost_usd:.4f} at the price table; sending at these limits takes {duration} "
            "(latency not included)"
        )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}h {minutes}m {secs:.0f}s" if hours else f"{minutes}m {secs:.1f}s" if minutes else f"{secs:.2f} s"


def _path(name: str, value: object) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"{name}: must be a path (str or os.PathLike), got {value!r}", name)
    path = os.fspath(value)
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{name}: must be a non-empty path, got {value!r}", name)
    return path


def _job(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    base_url: str | None,
    api_key: str | None,
    limiter: HolySheepRateLimiter | None,
    retry: RetryPolicy | None,
    breaker: CircuitBreaker | None,
    max_concurrency: int | None,
    timeout: float,
    budget_usd: float | None,
    retry_failed: bool,
    prices: Mapping[str, float] | None,
    tier: str | None,
    rpm: float | None,
    tpm: float | None,
) -> tuple[_BatchJob, _Finished | None]:
    """The native job, every argument checked (ConfigError naming it), and its requests' recording in
    the metrics when they are on."""
    source, target = _path("input", input), _path("output", output)
    if os.path.abspath(source) == os.path.abspath(target):
        raise ConfigError("output: must not be the input file", "output")
    url = checked_base_url(HOLYSHEEP_BASE_URL if base_url is None else base_url)
    key = resolve_api_key(api_key, url)
    if limiter is None and (tier, rpm, tpm) != (None, None, None):
        limiter = HolySheepRateLimiter(rpm=rpm, tpm=tpm, tier=tier, max_concurrency=max_concurrency)
    elif (tier, rpm, tpm) != (None, None, None):
        raise ConfigError("limiter: give limiter= or tier/rpm/tpm to make one, not both", "limiter")
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise ConfigError(f"retry: must be a holysheep.RetryPolicy or None, got {retry!r}", "retry")
    if breaker is not None and not isinstance(breaker, CircuitBreaker):
        raise ConfigError(f"breaker: must be a holysheep.CircuitBreaker or None, got {breaker!r}", "breaker")
    if not isinstance(retry_failed, bool):
        raise ConfigError(f"retry_failed: must be True or False, got {retry_failed!r}", "retry_failed")
    recorder = _metrics.recorder
    finished = _Finished(recorder, url) if recorder is not None and recorder.sinks else None
    job = _BatchJob(
        source,
        target,
        base_url=url,
        api_key=key,
        limiter=limiter,
        retry=(retry or RetryPolicy())._core,
        breaker=None if breaker is None else breaker._core,
        max_in_flight=DEFAULT_IN_FLIGHT if max_concurrency is None else max_concurrency,
        timeout=timeout,
        budget_usd=budget_usd,
        retry_failed=retry_failed,
        prices=checked_prices(prices),
        record=finished is not None,
    )
    return job, finished


class _Finished:
    """Hands the requests a job finished to the metrics, as the transport's requests are recorded."""

    def __init__(self, recorder: Recorder, base_url: str) -> None:
        self._recorder = recorder
        self._base_url = base_url

    def record(self, job: _BatchJob) -> None:
        rows = job.take_finished()
        if rows:
            self._recorder.record_finished(self._base_url, rows)


def _planned(plan: Mapping[str, Any], limiter: HolySheepRateLimiter | None) -> BatchReport:
    unsent = plan["within_budget"]
    notes = []
    if plan["within_budget"] < plan["to_send"]:
        notes.append(
            f"The budget covers {plan['within_budget']:,} of the {plan['to_send']:,} requests left to send: "
            "a run would stop after them and report the rest unsent."
        )
    if limiter is not None and limiter.backend is not None:
        # The plan runs the limits on a virtual clock of its own: what the rest of the fleet will
        # send through them is unknown, so the time is the least the job can take.
        notes.append("The limits are shared through Redis: the time assumes this job has them alone.")
    return BatchReport(
        total=plan["total"],
        sent=0,
        ok=0,
        failed=0,
        skipped=plan["skipped"],
        unsent=unsent,
        cost_usd=plan["cost_usd"],
        stopped=_DRY_RUN,
        planned_s=plan["duration_s"],
        notes=tuple(notes),
    )


class _ProgressLine:
    """A live line: done of to send, requests/s, 429s, failures and ETA; tqdm's bar when installed."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = sys.stderr if stream is None else stream
        self._bar: Any = None
        self._tqdm: Any = None
        try:
            self._tqdm = importlib.import_module("tqdm.auto").tqdm
        except ImportError:
            pass
        self._t0: float | None = None

    def update(self, counts: Mapping[str, Any]) -> None:
        if counts["total"] == 0:  # the input is still being checked
            return
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        to_send = counts["total"] - counts["skipped"]
        done = counts["sent"]
        postfix = {"429s": counts["server_429s"], "failed": counts["failed"]}
        if self._tqdm is not None:
            if self._bar is None:
                self._bar = self._tqdm(total=to_send, unit="req", file=self._stream, dynamic_ncols=True)
            self._bar.update(done - self._bar.n)
            self._bar.set_postfix(postfix, refresh=False)
            return
        elapsed = now - self._t0
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = f"{(to_send - done) / rate:.0f} s" if rate > 0 else "?"
        self._stream.write(
            f"\r{done:,}/{to_send:,} {rate:,.0f} req/s, 429s {postfix['429s']:,}, "
            f"failed {postfix['failed']:,}, ETA {eta}   "
        )
        self._stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._t0 is not None:
            self._stream.write("\n")


def run_batch(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    limiter: HolySheepRateLimiter | None = None,
    retry: RetryPolicy | None = None,
    breaker: CircuitBreaker | None = None,
    max_concurrency: int | None = None,
    timeout: float = 600.0,
    budget_usd: float | None = None,
    retry_failed: bool = False,
    prices: Mapping[str, float] | None = None,
    tier: str | None = None,
    rpm: float | None = None,
    tpm: float | None = None,
    progress: bool = False,
    dry_run: bool = False,
) -> BatchReport:
    """Sends every request of ``input`` not yet answered in ``output`` and appends the answers there.

        report = hs.run_batch("requests.jsonl", "results.jsonl", base_url=URL, limiter=lim)

    The whole input is checked before anything is sent. Rerun with the same output to resume: answered
    custom_ids are skipped, a line cut short by a crash is dropped and its request sent again.

    :param base_url: the API (default https://api.holysheep.ai/v1); input urls such as
        ``/v1/embeddings`` are taken under it.
    :param api_key: default ``$HOLYSHEEP_API_KEY``.
    :param limiter: admits every attempt (requests, estimated tokens settled from ``usage``, usd), waits
        in its line and follows the server's 429s and ``x-ratelimit-*``; one shared through Redis
        (``backend=``) makes jobs in any number of processes keep to one limit together, its
        ``on_error`` policy deciding while Redis is away (``fail_closed`` stops the job, the rest left
        for a rerun). Or give ``tier`` / ``rpm`` / ``tpm`` to make one.
    :param retry: the retry policy (default ``RetryPolicy()``); ``Retry-After`` is obeyed.
    :param breaker: a ``CircuitBreaker``: while open, nothing is sent; isolated (``isolate()``), the
        job stops, the rest left for a rerun. One shared through Redis (``backend=``, ``key=``) is one
        state for every job and process naming the key: one job's failures open it for all, a
        ``reset()`` or ``isolate()`` anywhere reaches a running job within a second, and its backend's
        ``on_error`` policy decides while Redis is away (``fail_closed`` stops the job).
    :param max_concurrency: requests in flight at once (default 64; a limiter's cap may hold fewer).
    :param timeout: seconds one attempt may take.
    :param budget_usd: dollars this run may spend at the price table; then it stops sending and the
        rest is reported unsent.
    :param retry_failed: send again the requests the output says failed (their lines are replaced).
    :param prices: dollars per million tokens by model, over `holysheep.pricing.PRICES`.
    :param progress: draw a live progress line on stderr (tqdm's bar when installed).
    :param dry_run: send nothing: the report says what would be sent, its cost, how long the limits
        make it take (``planned_s``) and what to keep in mind about those figures (``notes``).
    :raises ConfigError: a bad argument, or an input with bad lines or duplicate custom_ids (nothing is
        sent; the message names the lines).
    :raises OSError: a file that cannot be read or written.
    """
    job, recording = _job(input, output, base_url, api_key, limiter, retry, breaker, max_concurrency, timeout,
                          budget_usd, retry_failed, prices, tier, rpm, tpm)
    if dry_run:
        return _planned(job.plan(), limiter)
    line = _ProgressLine() if progress else None
    job.start()
    try:
        while (report := job.wait(_TICK_S)) is None:
            _tick_once(job, line, recording)
    except KeyboardInterrupt:
        job.cancel()
        while job.wait(_TICK_S) is None:
            pass
        raise
    finally:
        _tick_once(job, None, recording)
        if line is not None:
            line.close()
    return BatchReport._of(report)


async def arun_batch(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    limiter: HolySheepRateLimiter | None = None,
    retry: RetryPolicy | None = None,
    breaker: CircuitBreaker | None = None,
    max_concurrency: int | None = None,
    timeout: float = 600.0,
    budget_usd: float | None = None,
    retry_failed: bool = False,
    prices: Mapping[str, float] | None = None,
    tier: str | None = None,
    rpm: float | None = None,
    tpm: float | None = None,
    progress: bool = False,
    dry_run: bool = False,
) -> BatchReport:
    """`run_batch`, awaited: the job runs on the engine's threads and the event loop stays free (one
    bridge for the whole job). Cancelling the awaiting task stops the job (nothing more is sent)."""
    job, recording = _job(input, output, base_url, api_key, limiter, retry, breaker, max_concurrency, timeout,
                          budget_usd, retry_failed, prices, tier, rpm, tpm)
    if dry_run:
        return _planned(await asyncio.to_thread(job.plan), limiter)
    line = _ProgressLine() if progress else None
    job.start()
    finished = job.finished()
    ticker = asyncio.ensure_future(_tick(job, line, recording)) if line is not None or recording is not None else None
    try:
        report = await finished
    except asyncio.CancelledError:
        job.cancel()
        raise
    finally:
        if ticker is not None:
            ticker.cancel()
        _tick_once(job, None, recording)
        if line is not None:
            line.close()
    return BatchReport._of(report)


def _tick_once(job: _BatchJob, line: _ProgressLine | None, recording: _Finished | None) -> None:
    """Redraws the progress line and records the requests finished since the last tick, as asked."""
    if line is not None:
        line.update(job.progress())
    if recording is not None:
        recording.record(job)


async def _tick(job: _BatchJob, line: _ProgressLine | None, recording: _Finished | None) -> None:
    while True:
        _tick_once(job, line, recording)
        await asyncio.sleep(_TICK_S)
