"""The Redis backend: `RedisBackend` (native). A `HolySheepRateLimiter` given one as ``backend=`` with a
``key=`` decides every request there (one Lua script, one round trip, on Redis's clock), so every
process naming the same key shares one limit."""

from __future__ import annotations

import atexit

from holysheep._holysheep import RedisBackend, _shutdown_redis_runtime

__all__ = ["RedisBackend"]

# The runtime that talks to Redis stops before the interpreter finalizes (a runtime torn down later
# can crash the exit).
atexit.register(_shutdown_redis_runtime)
