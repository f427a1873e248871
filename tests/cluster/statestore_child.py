"""A process that holds a coordinator state file, for tests that kill it (kill -9).

``python -m tests.cluster.statestore_child PATH commit``: commits batches from several
tasks at once, printing each batch's number once its ``commit`` has returned, until
killed (or ``MAX_BATCHES``, or ``MAX_S``). ``... hold``: opens the file, prints "open",
and waits to be killed (``MAX_S`` at most).
"""

from __future__ import annotations

import asyncio
import sys
import time

from asyncjobs.daemons.statestore import AsyncStateStore, WriteBatch
from asyncjobs.model import JobStatus
from asyncjobs.protocol.messages import JobOutcome

SESSION = "kill-9"
PER_BATCH = 50
TASKS = 8
MAX_BATCHES = 20_000
MAX_S = 30.0


def outcome(batch: int, k: int) -> JobOutcome:
    """The ``k``th outcome of batch ``batch``, the same in the child and in the test."""
    return JobOutcome(f"b{batch}-{k}", JobStatus.SUCCEEDED, [batch, k, {"x": b"\x00"}],
                      None, 1, "node", 1.7e9, 1.7e9 + 1)


async def commit(path: str) -> None:
    store = await AsyncStateStore.open(path)
    deadline = time.monotonic() + MAX_S
    numbers = iter(range(MAX_BATCHES))

    async def worker() -> None:
        for n in numbers:
            if time.monotonic() > deadline:
                return
            await store.commit(WriteBatch([(SESSION, outcome(n, k)) for k in range(PER_BATCH)]))
            sys.stdout.write(f"{n}\n")
            sys.stdout.flush()

    async with asyncio.TaskGroup() as tasks:
        for _ in range(TASKS):
            tasks.create_task(worker())
    await store.aclose()


async def hold(path: str) -> None:
    store = await AsyncStateStore.open(path)
    sys.stdout.write("open\n")
    sys.stdout.flush()
    await asyncio.sleep(MAX_S)
    await store.aclose()


if __name__ == "__main__":
    asyncio.run({"commit": commit, "hold": hold}[sys.argv[2]](sys.argv[1]))
