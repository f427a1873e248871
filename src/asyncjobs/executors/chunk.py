"""Several calls of one function as one job: what ``Runner.map`` sends to a worker
process when the calls are small, so the per-job cost is paid once per chunk.

Each call's outcome is kept apart: one failing item does not fail the others.
"""

from __future__ import annotations

import time
import traceback
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

#: one item's outcome: (True, result) or (False, (type name, message, traceback))
Outcome = tuple[bool, Any]


def run_chunk(
    fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]],
    kwargs: Sequence[dict[str, Any]] | None = None,
) -> tuple[list[Outcome], float]:
    """Call ``fn(*args, **kw)`` for each args tuple (and keyword dict), in order.

    :returns: each call's outcome, and the seconds the calls took in all
    """
    started = time.perf_counter()
    outcomes: list[Outcome] = []
    for i, args in enumerate(calls):
        try:
            outcomes.append((True, fn(*args, **(kwargs[i] if kwargs else {}))))
        except Exception as exc:
            tb = "".join(traceback.format_exception(exc))
            outcomes.append((False, (type(exc).__name__, str(exc), tb)))
    return outcomes, time.perf_counter() - started
