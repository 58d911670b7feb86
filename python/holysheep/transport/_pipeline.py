"""The pipeline every request passes: limiter → breaker → send → classify → retry, and fallback models.

One exchange is written once, as a coroutine, for both kinds of client: what it waits on (an admission,
a send, reading an answer, a backoff) it awaits from its steps (`holysheep.transport._steps`). Each
failure is classified once, when it happens (`holysheep.classify.verdict`); the breaker, the retry policy
and the fallback read that verdict. The answer handed back holds its admission until its body ends
(`holysheep.transport._streams`); a JSON answer is read here, checked, settled and released at once.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import threading
import time
from collections.abc import Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from holysheep._coalesce import Coalesce
from holysheep._holysheep import _check_timeout
from holysheep._limiter import HolySheepRateLimiter
from holysheep._tokens import estimate_request_tokens
from holysheep.breaker import CircuitBreaker, KeyedBreaker
from holysheep.classify import verdict
from holysheep.errors import CircuitOpenError, ConfigError
from holysheep.metrics import _hook as _metrics
from holysheep.pricing import checked_prices
from holysheep.retry import RetryPolicy
from holysheep.transport._admission import Admission, admit_now
from holysheep.transport._answers import StatusFailure, error_code, is_event_stream, is_json, is_malformed, not_json
from holysheep.transport._coalescing import Coalescer
from holysheep.transport._events import EventCheck
from holysheep.transport._holds import Hold, finish, register
from holysheep.transport._models import allowed_models_of
from holysheep.transport._quota import QuotaWatch, checked_floor, quota_path
from holysheep.transport._routes import LimiterSetting, routes_of
from holysheep.transport._settings import check_settings
from holysheep.transport._steps import _AsyncSteps, _BlockingSteps, _run_blocking, _Steps

if TYPE_CHECKING:
    from holysheep.transport._streams import _HeldAsyncStream, _HeldSyncStream, _StampedWhenSent

logger = logging.getLogger("holysheep")

class _Plan:
    """What the transport needs to know of a request before sending it: its JSON body, model and
    estimated tokens."""

    __slots__ = ("body", "model", "tokens")

    def __init__(self, request: Any) -> None:
        self.body: dict[str, Any] | None = None
        self.model: str | None = None
        self.tokens = 0
        content_type = request.headers.get("content-type", "")
        if request.method == "POST" and content_type.startswith("application/json"):
            try:
                body = json.loads(request.content)
            except (ValueError, UnicodeDecodeError):
                return
            if isinstance(body, dict):
                self.body = body
                self.model = body.get("model") if isinstance(body.get("model"), str) else None
                self.tokens = estimate_request_tokens(body)

    def models(self, fallbacks: Mapping[str, Sequence[str]]) -> list[str | None]:
        """The model asked for, then its fallbacks in order."""
        if self.model is None:
            return [None]
        return [self.model, *fallbacks.get(self.model, ())]


#: What one model's attempts end in when the next model should be asked instead.
_NEXT_MODEL = object()


class _Pipeline:
    """The request pipeline shared by every flavour of `Transport`; ``lib`` is httpx or httpx2, and the
    stream classes are the held bodies made that library's byte streams."""

    lib: Any
    #: Whether an answer read here needs its ``elapsed`` set: httpx sets it only when the client closes
    #: the body, which it never does for an answer that comes back read; httpx2 sets it itself.
    times_read_answers: bool
    async_stream: type[_HeldAsyncStream]
    sync_stream: type[_HeldSyncStream]
    stamped_body: type[_StampedWhenSent]

    def __init__(
        self,
        limiter: LimiterSetting = None,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | KeyedBreaker | None = None,
        *,
        inner: Any = None,
        acquire_timeout: float | None = None,
        fallback_models: Mapping[str, Sequence[str]] | None = None,
        prices: Mapping[str, float] | None = None,
        allowed_models: Sequence[str] | None = None,
        coalesce: Coalesce | None = None,
        quota_floor: float | None = None,
    ) -> None:
        """
        :param limiter: admits each request (and its estimated tokens); None sends without limits. Also a
            limiter per route, ``{"/embeddings": lim_e, "/chat/completions": lim_c, "*": lim_rest}`` (the
            end of the path; the longest match, else ``"*"``, else no limit), or a `KeyedLimiter` (alone or
            as a route's) for one limiter per model (`holysheep.transport._routes`).
        :param retry: retries failed answers and connection errors; ``RetryPolicy()`` by default,
            ``RetryPolicy(max_attempts=1)`` for none.
        :param breaker: fails fast while the endpoint is down; a `KeyedBreaker` keeps one per model.
        :param inner: the transport that really sends; the library's own HTTP transport by default.
        :param acquire_timeout: seconds a request may wait for the limiter before RateLimitExceeded.
        :param fallback_models: ``{"gpt-4.1": ["deepseek-v3.2"]}``: the models to ask next, in order,
            when a model's breaker is open or its answers still fail after the retries (429, 5xx, timeouts:
            what `holysheep.classify` says another model may answer). The answer's ``x-holysheep-model``
            header (and the body's ``model``) says which one answered.
        :param prices: dollars per million tokens by model, over `holysheep.pricing.PRICES`, for budgets
            (limits with ``unit="usd"``): a request that would cross one raises BudgetExceeded unsent.
        :param allowed_models: the only models requests may ask for; any other raises `ModelNotAllowed`
            unsent (`holysheep.transport._models`).
        :param coalesce: merge concurrent embeddings requests with the same model and options into one
            (`holysheep.Coalesce`; `holysheep.transport._coalescing`).
        :param quota_floor: a fraction of the hour's quota (e.g. 0.2): below it, requests go to their
            model's next cheaper fallback; and while the day's quota is spent, requests raise
            RateLimitExceeded unsent (`holysheep.transport._quota`).
        :raises ConfigError: an argument it cannot work with, named in ``.field``.
        """
        #: How a request's limiter is chosen; None when ``limiter`` admits every request (or is None).
        self._routes = routes_of(limiter)
        check_settings(retry, breaker, inner, fallback_models)
        #: The limiter setting as given: one limiter, a KeyedLimiter, or routes.
        self.limiter = limiter
        #: The one limiter of every request, when there is one.
        self._one = limiter if isinstance(limiter, HolySheepRateLimiter) else None
        self.retry = retry if retry is not None else RetryPolicy()
        self.breaker = breaker
        self.acquire_timeout = _check_timeout("acquire_timeout", acquire_timeout)
        # Copied: a list the caller changes later does not change the fallbacks.
        self.fallback_models = {model: list(names) for model, names in (fallback_models or {}).items()}
        self.prices = checked_prices(prices)
        self._allowed = allowed_models_of(allowed_models, fallback_models)
        floor = checked_floor(quota_floor)
        #: What the gateway says is left of the hour's and the day's quota; None without quota_floor.
        self._quota = None if floor is None else QuotaWatch(floor)
        if coalesce is not None and not isinstance(coalesce, Coalesce):
            raise ConfigError(f"coalesce: must be a holysheep.Coalesce(...) or None, got {coalesce!r}", "coalesce")
        #: Merges concurrent embeddings requests; None sends each as it comes.
        self.coalescer = None if coalesce is None else Coalescer(coalesce, self.lib, self._limiter_of)
        # The body is read (tokens estimated, model found) only where a limit, a limiter per model, a
        # breaker per model or a fallback needs it. A limiter per model made later may count tokens.
        known = [self._one] if self._one is not None else self._routes.known if self._routes is not None else []
        units = {limit.unit for one in known for limit in one.limits}
        by_model = self._routes is not None and self._routes.by_model
        self._settles = by_model or bool(units - {"requests"})
        self._read_bodies = (
            self._settles
            or bool(self.fallback_models)
            or isinstance(breaker, KeyedBreaker)
            or self._allowed is not None
            or self._quota is not None
        )
        self._inner = inner
        self._async_steps: _AsyncSteps | None = None
        self._blocking_steps: _BlockingSteps | None = None
        self._steps_made = threading.Lock()

    def _inner_transport(self, asynchronous: bool) -> Any:
        # Made on first use (whether it is sync or async is known then), once, under `_steps_made`:
        # threads making their first requests together would otherwise each make one and leak all but one.
        if self._inner is None:
            limits = self.lib.Limits(max_connections=1000, max_keepalive_connections=100)
            factory = self.lib.AsyncHTTPTransport if asynchronous else self.lib.HTTPTransport
            self._inner = factory(limits=limits)
        return self._inner

    def _make_async_steps(self) -> _AsyncSteps:
        with self._steps_made:
            if self._async_steps is None:
                self._async_steps = _AsyncSteps(self, self._inner_transport(True))
            return self._async_steps

    def _make_blocking_steps(self) -> _BlockingSteps:
        with self._steps_made:
            if self._blocking_steps is None:
                self._blocking_steps = _BlockingSteps(self, self._inner_transport(False))
            return self._blocking_steps

    def _next_delay(self, error: Exception, attempts: int, started: int, previous: float) -> float | None:
        """Seconds before the next attempt, or None when the policy gives up (or does not retry it)."""
        try:
            return self.retry._next_delay(error, attempts, started, previous)
        except Exception:
            return None

    def _for_model(self, request: Any, plan: _Plan, model: str | None) -> Any:
        """The same request, asking ``model``."""
        headers = [(k, v) for k, v in request.headers.items() if k.lower() != "content-length"]
        body = {**(plan.body or {}), "model": model}
        return self.lib.Request(request.method, request.url, headers=headers, json=body, extensions=request.extensions)

    def _exchange(self, request: Any, steps: _Steps) -> Coroutine[Any, Any, Any]:
        """One request, written once for both kinds of client: what it waits on (a limiter admission,
        a send, reading an answer, a backoff) it awaits from ``steps``."""
        if not self._read_bodies:
            return self._attempts(request, 0, None, True, steps)
        plan = _Plan(request)
        if self._allowed is not None:
            self._allowed.check(plan.model)
        if self._quota is not None:
            return self._within_quota(request, plan, self._quota, steps)
        return self._to_models(request, plan, plan.models(self.fallback_models), steps)

    def _to_models(self, request: Any, plan: _Plan, models: list[str | None], steps: _Steps) -> Coroutine[Any, Any, Any]:
        """The request asking the first of ``models``, then the others in turn."""
        if len(models) == 1:
            asking = request if models[0] == plan.model else self._for_model(request, plan, models[0])
            return self._attempts(asking, plan.tokens, models[0], True, steps)
        return self._across_models(request, plan, models, steps)

    async def _within_quota(self, request: Any, plan: _Plan, watch: QuotaWatch, steps: _Steps) -> Any:
        """The request, unless the day's quota is spent; to the next cheaper model while the hour's
        remaining is below the floor (`holysheep.transport._quota`)."""
        if watch.claim_reading(time.monotonic()):
            await self._read_quota(request, watch, steps)
        now = time.monotonic()
        watch.refuse_if_day_spent(now)
        models = plan.models(self.fallback_models)
        if len(models) > 1 and watch.below_floor(now):
            models = self._from_next_cheaper(models)
        answer = await self._to_models(request, plan, models, steps)
        watch.observe(answer.headers, time.monotonic())
        return answer

    def _from_next_cheaper(self, models: list[str | None]) -> list[str | None]:
        """``models`` from the first fallback priced below the model asked for (a model without a price is
        never cheaper); all of them when there is none."""
        price = self.prices.get(models[0] or "")
        for index, model in enumerate(models[1:], 1):
            cheaper = self.prices.get(model or "")
            if price is not None and cheaper is not None and cheaper < price:
                return models[index:]
        return models

    async def _read_quota(self, request: Any, watch: QuotaWatch, steps: _Steps) -> None:
        """Reads ``/v1/quota`` beside the request's URL, through the limiter like any request; a failure
        leaves the watch as it was until the next reading."""
        path = quota_path(request.url.path)
        if path is None:
            watch.read(404, None, time.monotonic())
            return
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in ("content-length", "content-type")]
        asking = self.lib.Request("GET", request.url.copy_with(path=path), headers=headers, extensions=request.extensions)
        try:
            answer = await self._attempts(asking, 0, None, True, steps)
            body = await steps.read(answer)
            watch.read(answer.status_code, json.loads(body) if answer.status_code == 200 else None, time.monotonic())
        except Exception:  # no reading this time: the headers keep it current until the next
            logger.debug("holysheep: reading /v1/quota failed", exc_info=True)

    async def _across_models(self, request: Any, plan: _Plan, models: list[str | None], steps: _Steps) -> Any:
        """Each model in turn gets the retry policy's attempts, until one answers."""
        for index, model in enumerate(models):
            asking = request if model == plan.model else self._for_model(request, plan, model)
            last = index == len(models) - 1
            answer = await self._attempts(asking, plan.tokens, model, last, steps)
            if answer is not _NEXT_MODEL:
                return answer
        raise AssertionError("the last model's attempts always answer")

    async def _attempts(self, request: Any, tokens: int, model: str | None, last: bool, steps: _Steps) -> Any:
        """One model's attempts: the answer, or `_NEXT_MODEL` when another model should be asked."""
        breaker = self.breaker[model or ""] if isinstance(self.breaker, KeyedBreaker) else self.breaker
        # Only a retry policy timed from the start of a call (max_elapsed, a budget) needs that start.
        attempts, started, previous = 0, self.retry._core.begin() if self.retry._timed else 0, 0.0
        price = self.prices.get(model or "", 0.0)
        while True:
            attempts += 1
            if breaker is not None and breaker.state != "closed":
                # Fail fast (or ask the next model) before the limiter: while the breaker is open, or
                # half-open with its trials all out, what the limiter admitted could not be sent, and its
                # place in the rate windows would be lost. The breaker refuses (and counts it); should it
                # let a trial through, the trial goes back until the request is about to go.
                try:
                    breaker._core.release(breaker._admit())
                except CircuitOpenError:
                    if last:
                        raise
                    return _NEXT_MODEL
            admission: Admission | None = None
            limiter = self._limiter_of(request, model)
            if limiter is not None:
                # Admitted in one call when nobody waits and all is free; else it waits its turn.
                admission = admit_now(limiter, tokens, price) or await steps.acquire(limiter, tokens, price)
            try:
                # The permit is taken when the request is about to go, so a half-open breaker's trials
                # are the next requests sent, not the next to start waiting for the limiter.
                permit = None if breaker is None else breaker._admit()
            except CircuitOpenError:
                if admission is not None:
                    admission.give_back()  # never sent: its place in the rate windows goes back too
                if last:
                    raise
                return _NEXT_MODEL
            if admission is not None and admission.stamps:
                request.stream = self.stamped_body(request.stream, admission)
            try:
                sent = time.perf_counter() if self.times_read_answers else 0.0
                response = await steps.send(request)
                status = response.status_code
                # An answer that is not streamed is read here: a failure to classify it, JSON to check it.
                body = await steps.read(response) if status >= 400 or is_json(response.headers) else None
                if body is not None and self.times_read_answers:
                    response.elapsed = datetime.timedelta(seconds=time.perf_counter() - sent)
            except BaseException as exc:
                if admission is not None:
                    admission.release()
                # Classified once, here; the breaker, the retry policy and the fallback read the verdict.
                hands_over = verdict(exc).fallback
                if breaker is not None and permit is not None:
                    breaker._settle(permit, exc)
                delay = self._next_delay(exc, attempts, started, previous) if isinstance(exc, Exception) else None
                if delay is None:
                    if hands_over and not last:
                        return _NEXT_MODEL
                    raise
            else:
                if admission is not None:
                    admission.observe(status, response.headers)
                if body is not None and status < 400 and is_malformed(request, status, body):
                    response = not_json(self.lib, request, response, body)
                    status, body = response.status_code, response.content
                if status < 400:
                    if breaker is not None and permit is not None:
                        breaker._succeeded(permit)
                    return self._answer(response, limiter, admission, model, steps)
                code = error_code(body) if status == 429 and body is not None else None
                failure = StatusFailure(status, response.headers, code)
                hands_over = verdict(failure).fallback
                if breaker is not None and permit is not None:
                    breaker._settle(permit, failure)
                delay = self._next_delay(failure, attempts, started, previous)
                if delay is None:
                    if not hands_over or last:
                        return self._answer(response, limiter, admission, model, steps)
                    if admission is not None:
                        admission.release()
                    return _NEXT_MODEL
                if admission is not None:
                    admission.release()
            await steps.sleep(delay)
            previous = delay

    def _limiter_of(self, request: Any, model: str | None) -> HolySheepRateLimiter | None:
        """The limiter that admits ``request`` asking ``model``; None for no limit."""
        return self._one if self._routes is None else self._routes.choose(request.url.path, model)

    def handle_async_request(self, request: Any) -> Coroutine[Any, Any, Any]:
        steps = self._async_steps or self._make_async_steps()
        if self.coalescer is not None:
            ask = self.coalescer.ask_of(request, asyncio.get_running_loop())
            if ask is not None:
                if self._allowed is not None:
                    self._allowed.check(ask.model)  # before it waits for company
                return self.coalescer.join_async(ask, lambda merged: self._recorded(merged, steps))
        # The exchange itself is what the client awaits: no coroutine of ours around it unless recorded.
        return self._recorded(request, steps)

    def handle_request(self, request: Any) -> Any:
        steps = self._blocking_steps or self._make_blocking_steps()
        if self.coalescer is not None:
            ask = self.coalescer.ask_of(request, None)
            if ask is not None:
                if self._allowed is not None:
                    self._allowed.check(ask.model)
                return self.coalescer.join_blocking(ask, lambda merged: _run_blocking(self._recorded(merged, steps)))
        return _run_blocking(self._recorded(request, steps))

    def _recorded(self, request: Any, steps: _Steps) -> Coroutine[Any, Any, Any]:
        """The exchange of ``request``, recorded in the metrics once they are on (a merged request of
        coalesced calls counts as the one request the server saw)."""
        if _metrics.recorder is not None:
            return _metrics.recorder.exchange(self, request, steps, self._exchange)
        return self._exchange(request, steps)

    def _answer(
        self,
        response: Any,
        limiter: HolySheepRateLimiter | None,
        admission: Admission | None,
        model: str | None,
        steps: _Steps,
    ) -> Any:
        """The response handed to the client, saying which model answered. A body read in full (JSON, a
        failure, or an answer made in memory) is done with: its usage settled, its slot back now. A
        streamed one holds its admission until it is read to the end, closed or abandoned; a stream of
        server-sent events has its events checked as they pass, with a limiter or without."""
        if model is not None:
            response.headers["x-holysheep-model"] = model
        streamed = not response.is_closed
        events = EventCheck() if streamed and is_event_stream(response.headers) else None
        if admission is None:  # no limiter: nothing held, but events are checked and the end seen all the same
            if streamed:
                response.stream = steps.held(Hold(response.stream, None, None, False), events)
            return response
        if streamed:
            slots = limiter if limiter is not None and limiter.max_concurrency is not None else None
            held = Hold(response.stream, slots, steps.me(), self._settles)
            response.stream = steps.held(register(admission, held), events)
        elif self._settles:
            finish(admission, True, response.content)
        else:
            admission.release()
        return response

    async def aclose(self) -> None:
        if self._inner is not None:
            await self._inner.aclose()

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()
