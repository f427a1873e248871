"""The runner works on whatever loop the app runs: asyncio, uvloop, anyio's asyncio."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import uvloop

import asyncjobs

from . import jobs

if TYPE_CHECKING:
    from collections.abc import Callable


async def all_kinds() -> tuple[Any, ...]:
    async with asyncjobs.Runner(cpu_workers=1) as runner:
        return (
            await runner.submit(jobs.aio_add, 1, 2),
            await runner.submit(jobs.add, 3, 4),
            await runner.submit(jobs.marked_thread_job, 5),
            await runner.map(jobs.square, range(5)),
            type(asyncio.get_running_loop()).__module__.split(".")[0],
        )


RUNS: dict[str, Callable[[], tuple[Any, ...]]] = {
    "asyncio.run": lambda: asyncio.run(all_kinds()),
    "uvloop.run": lambda: uvloop.run(all_kinds()),
    "asyncjobs.run": lambda: asyncjobs.run(all_kinds),
    "anyio.run": lambda: anyio.run(all_kinds, backend="asyncio"),
    "anyio.run+uvloop": lambda: anyio.run(
        all_kinds, backend="asyncio", backend_options={"use_uvloop": True}
    ),
}
LOOP_MODULE = {"asyncio.run": "asyncio", "anyio.run": "asyncio"}


@pytest.mark.usefixtures("no_leftover_children")
@pytest.mark.parametrize("how", list(RUNS))
def test_runs_on_every_supported_loop(how: str) -> None:
    io, cpu, thread, mapped, loop_module = RUNS[how]()
    assert (io, cpu, mapped) == (3, 7, [0, 1, 4, 9, 16])
    assert thread.startswith("5:")
    assert loop_module == LOOP_MODULE.get(how, "uvloop")
