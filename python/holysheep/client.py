"""The openai SDK, drop-in: `AsyncHolySheep` and `HolySheep` are ``openai.AsyncOpenAI`` / ``openai.OpenAI``
pointed at HolySheep, with a `Transport` underneath; `wrap` puts one under any existing client.

    client = hs.AsyncHolySheep(tier="pro")          # api_key from HOLYSHEEP_API_KEY
    resp = await client.chat.completions.create(model="gpt-4.1", messages=[...])

The SDK's own retries are switched off (``max_retries=0``): the transport retries, so the two never stack.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

import openai

from holysheep import batch
from holysheep._coalesce import Coalesce
from holysheep._endpoint import HOLYSHEEP_BASE_URL, _refuse, checked_base_url, resolve_api_key
from holysheep._limiter import HolySheepRateLimiter
from holysheep._profiles import Profile, profile_of
from holysheep.batch import BatchFailure, Prompt
from holysheep.breaker import CircuitBreaker, KeyedBreaker
from holysheep.errors import ConfigError, HolySheepError
from holysheep.retry import RetryPolicy
from holysheep.transport import Transport, _Pipeline, http_library, transport_class
from holysheep.transport._routes import LimiterSetting

__all__ = ["HOLYSHEEP_BASE_URL", "AsyncHolySheep", "HolySheep", "wrap"]

ClientT = TypeVar("ClientT", openai.OpenAI, openai.AsyncOpenAI)


def _sdk_http() -> tuple[Any, Any, Any]:
    """The SDK's own HTTP client classes (its timeouts and connection limits) and the `Transport` made for
    their library: openai 3.x is built on httpx2, 1.x and 2.x on httpx."""
    if hasattr(openai, "DefaultAsyncHttpx2Client"):
        clients, library = (openai.DefaultAsyncHttpx2Client, openai.DefaultHttpx2Client), "httpx2"
    else:
        clients = (getattr(openai, "DefaultAsyncHttpxClient"), getattr(openai, "DefaultHttpxClient"))
        library = "httpx"
    lib = importlib.import_module(library)
    return (*clients, Transport if lib is http_library else transport_class(lib))


_async_http_client, _sync_http_client, _SdkTransport = _sdk_http()


def _transport_settings(
    *,
    limiter: LimiterSetting,
    tier: str | None,
    profile: str | Profile | None,
    retry: RetryPolicy | None,
    breaker: CircuitBreaker | KeyedBreaker | None,
    acquire_timeout: float | None,
    fallback_models: Mapping[str, Sequence[str]] | None,
    prices: Mapping[str, float] | None,
    allowed_models: Sequence[str] | None,
    coalesce: Coalesce | None,
    quota_floor: float | None,
) -> tuple[dict[str, Any], Profile | None]:
    """The transport's settings, ``tier`` made its preset limiter and ``profile`` filling in the
    limiter, retry policy and breaker not given; and the profile. The transport checks the others when
    it is made, with the client, so a wrong one is a ConfigError naming it, not an error at the first
    request.

    :raises ConfigError: a tier or profile that is not one's name, or both ``limiter`` and ``tier``.
    """
    if tier is not None and not isinstance(tier, str):
        _refuse("tier", "a plan's name ('free', 'starter', 'pro', 'enterprise') or None", tier)
    if limiter is not None and tier is not None:
        raise ConfigError("tier: give limiter= or tier=, not both", "tier")
    chosen = profile_of(profile)
    if chosen is not None:
        limiter = limiter if limiter is not None else chosen.limiter(tier)
        retry = retry if retry is not None else chosen.retry_policy()
        breaker = breaker if breaker is not None else chosen.circuit_breaker()
    elif isinstance(tier, str):
        limiter = HolySheepRateLimiter.from_tier(tier)
    return {
        "limiter": limiter,
        "retry": retry,
        "breaker": breaker,
        "acquire_timeout": acquire_timeout,
        "fallback_models": fallback_models,
        "prices": prices,
        "allowed_models": allowed_models,
        "coalesce": coalesce,
        "quota_floor": quota_floor,
    }, chosen


def _transport(settings: dict[str, Any]) -> Any:
    return _SdkTransport(**settings)


#: openai 1.x and 2.x wrap any error of the transport in APIConnectionError; 3.x lets through all but
#: the HTTP library's own, so there holysheep's errors need no unwrapping (nor the frame it costs on every
#: step of every request).
_WRAPS_OUR_ERRORS = int(openai.__version__.split(".")[0]) < 3


def _own_error(err: openai.APIConnectionError) -> BaseException:
    """The holysheep error an APIConnectionError of openai 1.x or 2.x wraps, else itself."""
    return err.__cause__ if isinstance(err.__cause__, HolySheepError) else err


class _AsyncOwnErrors(openai.AsyncOpenAI):
    """An ``openai.AsyncOpenAI`` that raises holysheep's errors (BudgetExceeded, CircuitOpenError,
    RateLimitExceeded) as themselves."""

    if _WRAPS_OUR_ERRORS:

        async def request(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return await super().request(*args, **kwargs)
            except openai.APIConnectionError as err:
                raise _own_error(err) from None


class _SyncOwnErrors(openai.OpenAI):
    """`_AsyncOwnErrors` for the blocking client."""

    if _WRAPS_OUR_ERRORS:

        def request(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().request(*args, **kwargs)
            except openai.APIConnectionError as err:
                raise _own_error(err) from None


#: Each client class `wrap` was given, made to raise holysheep's errors as themselves.
_RAISING_OWN_ERRORS: dict[type, type] = {}


def _raising_own_errors(sdk_class: type) -> type:
    """``sdk_class`` (a user's client class), raising holysheep's errors as themselves."""
    if issubclass(sdk_class, (_AsyncOwnErrors, _SyncOwnErrors)):
        return sdk_class
    if sdk_class not in _RAISING_OWN_ERRORS:
        own_errors = _AsyncOwnErrors if issubclass(sdk_class, openai.AsyncOpenAI) else _SyncOwnErrors
        namespace = {"__module__": sdk_class.__module__, "__doc__": sdk_class.__doc__}
        _RAISING_OWN_ERRORS[sdk_class] = type(sdk_class.__name__, (own_errors, sdk_class), namespace)
    return _RAISING_OWN_ERRORS[sdk_class]


def _transport_of(http_client: Any) -> Any:
    """The `Transport` under an HTTP client one of our clients made: its copies (``with_options``,
    ``copy``) share it, and so its limiter, breaker and retries."""
    transport = getattr(http_client, "_transport", None)
    if not isinstance(transport, _Pipeline):
        raise ConfigError(
            "http_client: the client makes its own, with a holysheep Transport under it; to keep yours, "
            "give it hs.Transport(..., inner=<your transport>) and pass it to openai.AsyncOpenAI / OpenAI",
            "http_client",
        )
    return transport


class _HolySheepClient:
    """What both clients add to the SDK's: a `Transport` under it, and its limiter."""

    transport: Any
    #: The use-case profile the client was made with (``profile=``), if any.
    profile: Profile | None

    def _set_up(
        self,
        sdk_client: Any,
        http_client: Any,
        api_key: str | None,
        base_url: str | None,
        settings_and_profile: tuple[dict[str, Any], Profile | None],
        kwargs: dict[str, Any],
    ) -> None:
        settings, self.profile = settings_and_profile
        base_url = checked_base_url(HOLYSHEEP_BASE_URL if base_url is None else base_url)
        key = resolve_api_key(api_key, base_url)
        if kwargs.pop("max_retries", 0) != 0:
            raise ConfigError(
                "max_retries: the transport retries (retry=RetryPolicy(...)); the SDK's would stack on it",
                "max_retries",
            )
        retry = settings.get("retry")
        if isinstance(retry, RetryPolicy) and retry.attempt_timeout is not None:
            kwargs.setdefault("timeout", retry.attempt_timeout)  # the SDK's per-request timeout cuts blocking calls too
        shared = kwargs.pop("http_client", None)
        if shared is None:
            self.transport = _transport(settings)
            shared = http_client(transport=self.transport)
        elif all(setting is None for setting in settings.values()):
            self.transport = _transport_of(shared)
        else:
            settings_named = ", ".join(settings) + " or tier"
            raise ConfigError(f"http_client: give it or {settings_named}, not both", "http_client")
        sdk_client.__init__(self, api_key=key, base_url=base_url, max_retries=0, http_client=shared, **kwargs)

    def _batch_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` for `batch_embed`, with the profile's batch size unless one is given."""
        if self.profile is not None and "batch_size" not in options:
            return {**options, "batch_size": self.profile.batch_size}
        return options

    def coalesce_stats(self) -> dict[str, Any] | None:
        """How embeddings calls were merged (``coalesce=``): callers, requests, callers per request, waits;
        None without coalescing."""
        coalescer = self.transport.coalescer
        return None if coalescer is None else coalescer.stats()

    @property
    def limiter(self) -> LimiterSetting:
        """The limiter requests pass, as given: one, a `KeyedLimiter` (one per model), routes, or None."""
        limiter: LimiterSetting = self.transport.limiter
        return limiter


class AsyncHolySheep(_HolySheepClient, _AsyncOwnErrors):
    """``openai.AsyncOpenAI`` for HolySheep, every request limited, guarded and retried.

        client = AsyncHolySheep(limiter=HolySheepRateLimiter(rpm=500, tpm=100_000, max_concurrency=20))
        resp = await client.embeddings.create(model="text-embedding-3-small", input=texts)

    :param api_key: defaults to ``$HOLYSHEEP_API_KEY``.
    :param base_url: defaults to ``https://api.holysheep.ai/v1``.
    :param limiter: admits each request; or ``tier=`` for a plan's preset; or neither for no limits. A
        dict gives each route its own (``{"/embeddings": lim_e, "/chat/completions": lim_c, "*": lim}``:
        the end of the path, else ``"*"``, else no limit); a `KeyedLimiter` keeps one per model.
    :param retry: ``RetryPolicy()`` by default; ``RetryPolicy(max_attempts=1)`` for none.
    :param breaker: a `CircuitBreaker` to fail fast while the endpoint is down; a `KeyedBreaker` keeps
        one per model.
    :param acquire_timeout: seconds a request may wait for the limiter before RateLimitExceeded.
    :param fallback_models: ``{"gpt-4.1": ["deepseek-v3.2"]}``: models to ask next when one's breaker
        is open or its answers still fail after the retries (``x-holysheep-model`` says who answered).
    :param prices: dollars per million tokens by model, over `holysheep.pricing.PRICES`, for budgets.
    :param allowed_models: the only models requests may ask for: any other raises `ModelNotAllowed`
        before it is sent (the limiter and the server never see it).
    :param coalesce: ``hs.Coalesce(max_wait_ms=10)``: concurrent ``embeddings.create`` calls with the
        same model and options go out as one request; each caller gets its own answer.
    :param profile: ``"mvp"``, ``"rag"``, ``"agent"``, ``"enterprise"`` or a `Profile`: the limiter
        (within ``tier``'s limits when given), retry policy, breaker and `batch_embed` batch size of that
        use case (`holysheep.PROFILES`); ``limiter=``, ``retry=``, ``breaker=`` replace its own.
    :param quota_floor: with ``fallback_models``: while the hour's quota the gateway reports (``/v1/quota``,
        ``x-ratelimit-*``) is below this fraction of its limit, a request goes to its model's next cheaper
        fallback; while the day's quota is spent, requests raise RateLimitExceeded until its reset, unsent.
    :param kwargs: anything else ``openai.AsyncOpenAI`` takes (``timeout``, ``default_headers``, ...).
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        limiter: LimiterSetting = None,
        tier: str | None = None,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | KeyedBreaker | None = None,
        acquire_timeout: float | None = None,
        fallback_models: Mapping[str, Sequence[str]] | None = None,
        prices: Mapping[str, float] | None = None,
        allowed_models: Sequence[str] | None = None,
        coalesce: Coalesce | None = None,
        profile: str | Profile | None = None,
        quota_floor: float | None = None,
        **kwargs: Any,
    ) -> None:
        settings = _transport_settings(
            limiter=limiter,
            tier=tier,
            profile=profile,
            retry=retry,
            breaker=breaker,
            acquire_timeout=acquire_timeout,
            fallback_models=fallback_models,
            prices=prices,
            allowed_models=allowed_models,
            coalesce=coalesce,
            quota_floor=quota_floor,
        )
        self._set_up(openai.AsyncOpenAI, _async_http_client, api_key, base_url, settings, kwargs)

    async def batch_embed(self, docs: Iterable[str], *, model: str, **options: Any) -> list[list[float] | BatchFailure]:
        """`holysheep.batch.batch_embed` on this client: vectors in order, failures as items (the
        profile's ``batch_size`` unless given)."""
        return await batch.batch_embed(self, docs, model=model, **self._batch_options(options))

    async def batch_chat(self, prompts: Iterable[Prompt], *, model: str, **options: Any) -> list[str | BatchFailure]:
        """`holysheep.batch.batch_chat` on this client: replies in order, failures as items."""
        return await batch.batch_chat(self, prompts, model=model, **options)


class HolySheep(_HolySheepClient, _SyncOwnErrors):
    """``openai.OpenAI`` for HolySheep: `AsyncHolySheep` for blocking code (threads wait with the GIL
    released). Takes the same arguments."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        limiter: LimiterSetting = None,
        tier: str | None = None,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | KeyedBreaker | None = None,
        acquire_timeout: float | None = None,
        fallback_models: Mapping[str, Sequence[str]] | None = None,
        prices: Mapping[str, float] | None = None,
        allowed_models: Sequence[str] | None = None,
        coalesce: Coalesce | None = None,
        profile: str | Profile | None = None,
        quota_floor: float | None = None,
        **kwargs: Any,
    ) -> None:
        settings = _transport_settings(
            limiter=limiter,
            tier=tier,
            profile=profile,
            retry=retry,
            breaker=breaker,
            acquire_timeout=acquire_timeout,
            fallback_models=fallback_models,
            prices=prices,
            allowed_models=allowed_models,
            coalesce=coalesce,
            quota_floor=quota_floor,
        )
        self._set_up(openai.OpenAI, _sync_http_client, api_key, base_url, settings, kwargs)

    def batch_embed(self, docs: Iterable[str], *, model: str, **options: Any) -> list[list[float] | BatchFailure]:
        """`holysheep.batch.batch_embed_sync` on this client: vectors in order, failures as items (the
        profile's ``batch_size`` unless given)."""
        return batch.batch_embed_sync(self, docs, model=model, **self._batch_options(options))

    def batch_chat(self, prompts: Iterable[Prompt], *, model: str, **options: Any) -> list[str | BatchFailure]:
        """`holysheep.batch.batch_chat_sync` on this client: replies in order, failures as items."""
        return batch.batch_chat_sync(self, prompts, model=model, **options)


def wrap(
    client: ClientT,
    *,
    limiter: LimiterSetting = None,
    tier: str | None = None,
    retry: RetryPolicy | None = None,
    breaker: CircuitBreaker | KeyedBreaker | None = None,
    acquire_timeout: float | None = None,
    fallback_models: Mapping[str, Sequence[str]] | None = None,
    prices: Mapping[str, float] | None = None,
    allowed_models: Sequence[str] | None = None,
    coalesce: Coalesce | None = None,
    profile: str | Profile | None = None,
    quota_floor: float | None = None,
) -> ClientT:
    """A copy of an existing ``openai`` client, pointed wherever it points, with a `Transport` under it.

        client = hs.wrap(openai.AsyncOpenAI(base_url="http://127.0.0.1:8080/v1", api_key="..."), limiter=lim)

    The copy gets the SDK's default HTTP client settings and ``max_retries=0``.
    """
    if not isinstance(client, (openai.OpenAI, openai.AsyncOpenAI)):
        _refuse("client", "an openai.OpenAI or openai.AsyncOpenAI (or a subclass)", client)
    settings, _ = _transport_settings(
        limiter=limiter,
        tier=tier,
        profile=profile,
        retry=retry,
        breaker=breaker,
        acquire_timeout=acquire_timeout,
        fallback_models=fallback_models,
        prices=prices,
        allowed_models=allowed_models,
        coalesce=coalesce,
        quota_floor=quota_floor,
    )
    transport = _transport(settings)
    make_http_client = _async_http_client if isinstance(client, openai.AsyncOpenAI) else _sync_http_client
    wrapped: ClientT = client.with_options(http_client=make_http_client(transport=transport), max_retries=0)
    if isinstance(retry, RetryPolicy) and retry.attempt_timeout is not None:
        wrapped = wrapped.with_options(timeout=retry.attempt_timeout)  # the SDK's per-request timeout
    wrapped.__class__ = _raising_own_errors(type(wrapped))
    return wrapped
