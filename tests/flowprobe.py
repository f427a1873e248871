"""An io job that records how many jobs the engine holds while a big flow runs."""

from __future__ import annotations

from typing import Any

ENGINE: Any = None
MOST_PENDING = 0


async def probe(i: int) -> int:
    global MOST_PENDING
    MOST_PENDING = max(MOST_PENDING, ENGINE.pending)
    return i
