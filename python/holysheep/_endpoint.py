"""The API a client or a batch job talks to: its base URL and its key, checked without importing the
openai SDK (a batch job never needs it, and importing it costs about 2 s on a busy 2-core machine)."""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any, NoReturn
from urllib.parse import urlsplit

from holysheep.errors import ConfigError

HOLYSHEEP_BASE_URL = "https://api.holysheep.ai/v1"
API_KEY_ENV = "HOLYSHEEP_API_KEY"
#: The HTTP libraries whose URL type the SDK hands out (openai 3.x: httpx2; 1.x and 2.x: httpx).
_URL_LIBRARIES = ("httpx2", "httpx")


def _refuse(field: str, expected: str, value: object) -> NoReturn:
    raise ConfigError(f"{field}: must be {expected}, got {value!r}", field)


def _is_sdk_url(value: object) -> bool:
    """Whether ``value`` is the SDK's URL type: a library not imported yet has made none."""
    loaded = (sys.modules.get(name) for name in _URL_LIBRARIES)
    return any(library is not None and isinstance(value, library.URL) for library in loaded)


def _points_at_holysheep(base_url: Any) -> bool:
    return (urlsplit(str(base_url)).hostname or "").endswith("holysheep.ai")


def checked_base_url(base_url: object) -> str:
    """``base_url`` (a str or the SDK's URL type) as a str, if it is an http(s) URL with a host.

    :raises ConfigError: anything else, naming ``base_url``.
    """
    expected = "an http:// or https:// URL with a host, e.g. https://api.holysheep.ai/v1"
    if not (isinstance(base_url, str) or _is_sdk_url(base_url)):
        _refuse("base_url", expected, base_url)
    try:
        parts = urlsplit(str(base_url))
        usable = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # an unclosed IPv6 bracket, a port that is not a number from 0 to 65535
        usable = False
    if not usable:
        _refuse("base_url", expected, base_url)
    return str(base_url)


def resolve_api_key(api_key: str | None, base_url: Any) -> str:
    """The API key to use: ``api_key``, else ``$HOLYSHEEP_API_KEY``, whitespace trimmed.

    :raises ConfigError: not a str, or no key at all. Warns when an OpenAI key (``sk-``) is pointed at
        HolySheep, whose keys start ``hs_``. The key is never put in a message.
    """
    if api_key is not None and not isinstance(api_key, str):
        kind = type(api_key).__name__
        raise ConfigError(f"api_key: must be a str or None (then ${API_KEY_ENV}), got a {kind}", "api_key")
    key = (api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")).strip()
    if not key:
        raise ConfigError(f"api_key: none given; pass api_key= or set {API_KEY_ENV}", "api_key")
    if key.startswith("sk-") and _points_at_holysheep(base_url):
        warnings.warn(
            "api_key looks like an OpenAI key (sk-...) but the client points at HolySheep, whose keys "
            "start with hs_",
            stacklevel=3,
        )
    return key
