"""Several calls of one function as one job: what ``Runner.map`` and flows send to a worker
process when the calls are small, so the per-job cost is paid once per chunk.

Each call's outcome is kept apart: one failing item does not fail the others, and each
item is timed, so reports can say how long each took.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ._worker_main import error_wire

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

#: one item's outcome: (True, result, seconds) or (False, ``ErrorInfo.to_wire()``, seconds)
Outcome = tuple[bool, Any, float]


def run_chunk(
    fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]],
    kwargs: Sequence[dict[str, Any]] | None = None,
) -> tuple[list[Outcome], float]:
    """Call ``fn(*args, **kw)`` for each args tuple (and keyword dict), in order.

    :returns: each call's outcome, and the seconds the calls took in all
    """
    clock = time.perf_counter
    started = last = clock()
    outcomes: list[Outcome] = []
    for i, args in enumerate(calls):
        try:
            value = fn(*args, **(kwargs[i] if kwargs else {}))
        except Exception as exc:
            now = clock()
            outcomes.append((False, error_wire(exc), now - last))
        else:
            now = clock()
            outcomes.append((True, value, now - last))
        last = now
    return outcomes, last - started
