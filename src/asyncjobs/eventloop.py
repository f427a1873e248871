"""The event loop every command and ``asyncjobs.run`` start: uvloop where installed."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

T = TypeVar("T")


def run(main: Callable[[], Coroutine[Any, Any, T]], *, use_uvloop: bool = True) -> T:
    """Run ``main()`` on a new event loop: uvloop where it is installed, else asyncio's.

    :param main: an ``async def`` taking no arguments
    :param use_uvloop: set False to force asyncio's own loop
    :returns: what ``main()`` returns
    """
    if use_uvloop:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - platforms without uvloop
            pass
        else:
            return uvloop.run(main())
    return asyncio.run(main())
