"""The wrappers a `HolySheepRateLimiter` decorates functions with (run by the extension)."""

import functools
import inspect


def limited(limiter, function):
    """``function`` holding one admission of ``limiter`` per call; an ``async def`` stays one."""
    if inspect.iscoroutinefunction(function):

        @functools.wraps(function)
        async def limited_async(*args, **kwargs):
            async with limiter:
                return await function(*args, **kwargs)

        return limited_async

    @functools.wraps(function)
    def limited_sync(*args, **kwargs):
        with limiter:
            return function(*args, **kwargs)

    return limited_sync
