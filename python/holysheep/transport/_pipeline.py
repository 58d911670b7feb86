"""The pipeline every request passes: limiter → breaker → send → classify → retry, and fallback models.

One exchange is written once, as a coroutine, for both kinds of client: what it waits on (an admission,
a send, reading a failed answer, a backoff) it awaits from its steps (`holysheep.transport._steps`). The
answer handed back holds its admission in a body of `holysheep.transport._streams`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from holysheep._holysheep import _Reservation
from holysheep._limiter import _check_timeout
from holysheep._tokens import estimate_request_tokens
from holysheep.breaker import CircuitBreaker, KeyedBreaker
from holysheep.classify import verdict
from holysheep.errors import CircuitOpenError
from holysheep.pricing import PRICES
from holysheep.retry import RetryPolicy
from holysheep.transport._steps import _AsyncSteps, _BlockingSteps, _run_blocking, _Steps

if TYPE_CHECKING:
    from holysheep._limiter import Admitted, HolySheepRateLimiter
    from holysheep.transport._streams import (
        _Held,
        _HeldAsyncStream,
        _HeldSyncStream,
        _SettlingAsyncStream,
        _SettlingSyncStream,
        _StampedWhenSent,
    )


class _StatusFailure(Exception):
    """A failing HTTP answer, classified like any HTTP error; its verdict, carried, is what the retry
    policy, the breaker and the fallback read."""

    def __init__(self, status_code: int, headers: Any, error_code: str | None) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code
        self.headers = headers
        self.code = error_code


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


def _error_code(body: bytes) -> str | None:
    """The ``error.code`` of an OpenAI-shaped error body, if any."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


#: What one model's attempts end in when the next model should be asked instead.
_NEXT_MODEL = object()


class _Pipeline:
    """The request pipeline shared by every flavour of `Transport`; ``lib`` is httpx or httpx2, and the
    stream classes are the held streams made that library's byte streams."""

    lib: Any
    async_stream: type[_HeldAsyncStream]
    settling_async_stream: type[_SettlingAsyncStream]
    sync_stream: type[_HeldSyncStream]
    settling_sync_stream: type[_SettlingSyncStream]
    stamped_body: type[_StampedWhenSent]

    def __init__(
        self,
        limiter: HolySheepRateLimiter | None = None,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | KeyedBreaker | None = None,
        *,
        inner: Any = None,
        acquire_timeout: float | None = None,
        fallback_models: Mapping[str, Sequence[str]] | None = None,
        prices: Mapping[str, float] | None = None,
    ) -> None:
        """
        :param limiter: admits each request (and its estimated tokens); None sends without limits.
        :param retry: retries failed answers and connection errors; ``RetryPolicy()`` by default,
            ``RetryPolicy(max_attempts=1)`` for none.
        :param breaker: fails fast while the endpoint is down; a `KeyedBreaker` keeps one per model.
        :param inner: the transport that really sends; the library's own HTTP transport by default.
        :param acquire_timeout: seconds a request may wait for the limiter before RateLimitExceeded.
        :param fallback_models: ``{"gpt-4.1": ["deepseek-v3.2"]}``: the models to ask next, in order,
            when a model's breaker is open or its answers still fail (429, 5xx) after the retries. The
            answer's ``x-holysheep-model`` header (and the body's ``model``) says which one answered.
        :param prices: dollars per million tokens by model, over `holysheep.pricing.PRICES`, for budgets
            (limits with ``unit="usd"``): a request that would cross one raises BudgetExceeded unsent.
        """
        _check_timeout(acquire_timeout, "acquire_timeout")
        self.limiter = limiter
        self.retry = retry if retry is not None else RetryPolicy()
        self.breaker = breaker
        self.acquire_timeout = acquire_timeout
        self.fallback_models = dict(fallback_models or {})
        self.prices = {**PRICES, **(prices or {})}
        # The body is read (tokens estimated, model found) only where a limit, a breaker per model or a
        # fallback needs it.
        units = {limit.unit for limit in limiter.limits} if limiter is not None else set()
        self._settles = bool(units - {"requests"})
        self._read_bodies = self._settles or bool(self.fallback_models) or isinstance(breaker, KeyedBreaker)
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
        a send, reading a failed answer, a backoff) it awaits from ``steps``."""
        if not self._read_bodies:
            return self._attempts(request, 0, None, True, steps)
        plan = _Plan(request)
        models = plan.models(self.fallback_models)
        if len(models) == 1:
            return self._attempts(request, plan.tokens, models[0], True, steps)
        return self._across_models(request, plan, models, steps)

    async def _across_models(self, request: Any, plan: _Plan, models: list[str | None], steps: _Steps) -> Any:
        """Each model in turn gets the retry policy's attempts, until one answers."""
        for index, model in enumerate(models):
            asking = request if index == 0 else self._for_model(request, plan, model)
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
            if breaker is not None and breaker.state == "open":
                # Fail fast (or ask the next model) without waiting for the limiter first. The breaker
                # refuses (and counts it); should it have just turned half-open, the trial goes back.
                try:
                    breaker._core.release(breaker._admit())
                except CircuitOpenError:
                    if last:
                        raise
                    return _NEXT_MODEL
            reservation: Admitted | None = None
            if self.limiter is not None:
                # Admitted in one call when nobody waits and all is free; else it waits its turn.
                reservation = self.limiter._admit_at_once(tokens, price)
                if reservation is None:
                    reservation = await steps.acquire(tokens, price)
            try:
                # The permit is taken when the request is about to go, so a half-open breaker's trials
                # are the next requests sent, not the next to start waiting for the limiter.
                permit = None if breaker is None else breaker._admit()
            except CircuitOpenError:
                self._release(reservation)
                if last:
                    raise
                return _NEXT_MODEL
            if isinstance(reservation, _Reservation):  # one of Redis is counted at Redis's time
                request.stream = self.stamped_body(request.stream, reservation)
            try:
                response = await steps.send(request)
                status = response.status_code
                body = (await steps.read(response)) if status >= 400 else b""
            except BaseException as exc:
                self._release(reservation)
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
                if self.limiter is not None:
                    # 429s cut the rates in force, other answers let them climb back (holysheep.core
                    # AIMD); what the server says it has left is held against our own count.
                    self.limiter._server_answered(status, reservation, response.headers)
                if status < 400:
                    if breaker is not None and permit is not None:
                        breaker._succeeded(permit)
                    return self._answer(response, reservation, model, steps.held)
                failure = _StatusFailure(status, response.headers, _error_code(body) if status == 429 else None)
                hands_over = verdict(failure).fallback
                if breaker is not None and permit is not None:
                    breaker._settle(permit, failure)
                delay = self._next_delay(failure, attempts, started, previous)
                if delay is None:
                    if not hands_over or last:
                        return self._answer(response, reservation, model, steps.held)
                    self._release(reservation)
                    return _NEXT_MODEL
                self._release(reservation)
            await steps.sleep(delay)
            previous = delay

    def handle_async_request(self, request: Any) -> Coroutine[Any, Any, Any]:
        # The exchange itself is what the client awaits: no coroutine of ours around it.
        return self._exchange(request, self._async_steps or self._make_async_steps())

    def handle_request(self, request: Any) -> Any:
        return _run_blocking(self._exchange(request, self._blocking_steps or self._make_blocking_steps()))

    def _answer(self, response: Any, admitted: Admitted | None, model: str | None, held: type[_Held]) -> Any:
        """The response handed to the client, saying which model answered. It keeps its slot until its
        stream ends; one already read in full (a failure read to classify it, or an answer an inner
        transport made in memory) is done with, its slot back now."""
        if model is not None:
            response.headers["x-holysheep-model"] = model
        if admitted is None:  # no limiter: nothing held
            return response
        stream = held(response.stream, self.limiter, admitted)
        if response.is_closed:
            stream.finish(response.content)
        else:
            response.stream = stream
        return response

    def _release(self, admitted: Admitted | None) -> None:
        if self.limiter is not None and admitted is not None:
            self.limiter._release_admitted(admitted)

    async def aclose(self) -> None:
        if self._inner is not None:
            await self._inner.aclose()

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()


