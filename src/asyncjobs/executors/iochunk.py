"""Several io calls as one attempt: what a flow sends to a cluster's loops when its items
are small io calls (a GET each), so that the trip of a job through client, coordinator
and loop, a message each way per hop, is paid once per chunk rather than once per call.

The calls run at once on the loop, at most ``at_once`` together: the chunk holds that
many of the loop's io slots, so a node never runs more io than it said it has room for.
Each call's outcome is kept apart, as in ``chunk.run_chunk``: one failing call does not
fail the others, and each has its own timeout and its own times.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import TYPE_CHECKING, Any

from ..model import ErrorInfo
from .io import AttemptTimedOut, run_timed

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .base import Call

#: one call's outcome: (True, result, began, took) or (False, ``ErrorInfo.to_wire()``,
#: began, took); ``began`` counts from the chunk's start, both in seconds
IoOutcome = tuple[bool, Any, float, float]


async def run_io_chunk(calls: Sequence[Call], at_once: int) -> tuple[list[IoOutcome], float]:
    """Run ``calls`` concurrently, at most ``at_once`` at a time.

    :returns: each call's outcome, in the order of ``calls``, and the seconds all took
    """
    clock = time.perf_counter
    started = clock()
    outcomes: list[IoOutcome] = [(False, None, 0.0, 0.0)] * len(calls)
    gate = asyncio.Semaphore(at_once) if at_once < len(calls) else None

    async def one(i: int, call: Call) -> None:
        if gate is not None:
            async with gate:
                await _run(i, call)
        else:
            await _run(i, call)

    async def _run(i: int, call: Call) -> None:
        began = clock()
        try:
            if call.timeout_s is None:
                value = call.fn(*call.args, **call.kwargs)
                if inspect.isawaitable(value):
                    value = await value
            else:
                value = await run_timed(call, call.timeout_s)
        except Exception as exc:
            info = (exc.info if isinstance(exc, AttemptTimedOut)
                    else ErrorInfo.from_exception(exc))
            outcomes[i] = (False, info.to_wire(), began - started, clock() - began)
        else:
            outcomes[i] = (True, value, began - started, clock() - began)

    await asyncio.gather(*(one(i, c) for i, c in enumerate(calls)))
    return outcomes, clock() - started

