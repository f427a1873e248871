"""The coordinator's state store (issue 16): rows/s for ``AsyncStateStore.commit`` of N
succeeded outcomes in commits of G, with ``synchronous=FULL`` against ``NORMAL`` (WAL).

    python benchmarks/bench_statestore.py [--n 100000] [--group 500] [--writers 8]
        [--repeat 3] [--dir DIR] [--rate 50000]

Each variant runs in its own fresh interpreter, once per round, the variants alternating.
The outcomes (a no-op job's: an int value, one attempt, a node name, two timestamps) are
built before the clock; then ``--writers`` tasks take the next G of them and ``await
store.commit(...)`` until all are written, as the coordinator's outcome batches would
(the transactions that run while others wait gather them: group commit). The file is a
fresh one in ``--dir`` (default: the system's temporary folder; give a folder on the disk
the coordinator will use, since fsync costs depend on it).

Columns: rows/s; the event loop thread's CPU per row (``time.thread_time`` there: what
the store costs the loop); the whole process's CPU per row; transactions written; peak
RSS once they are written (the outcomes built in memory included). Then, into a fresh
file, more rows at ``--rate`` rows/s (the no-op cluster's pace), in windows alternating
with windows of the loop alone: "loop lost" is how much less pure-Python work the event
loop gets done beside the commits than alone (the store thread's share of the GIL and of
the cores), the figure to hold against the 20 % budget. Other load on the machine makes
it noisy: use ``--repeat``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import _harness

from asyncjobs.daemons.statestore import AsyncStateStore, WriteBatch
from asyncjobs.model import JobStatus
from asyncjobs.protocol.messages import JobOutcome

VARIANTS = ["NORMAL", "FULL"]
#: how long the event loop's work rate is measured beside paced commits (and as long
#: alone), in windows alternating between the two
PACED_S = 4.0
WINDOWS = 8

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterator


async def measure(sync: Literal["NORMAL", "FULL"], n: int, group: int, writers: int,
                  folder: str, rate: float) -> dict[str, float]:
    outcomes = [("session-0123456789abcdef",
                 JobOutcome(f"job-{i}", JobStatus.SUCCEEDED, i, None, 1, "node-1",
                            1.7e9 + i * 1e-5, 1.7e9 + i * 1e-5 + 1e-4)) for i in range(n)]
    batches = [WriteBatch(outcomes[i:i + group]) for i in range(0, n, group)]
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        store = await AsyncStateStore.open(Path(tmp) / "coordinator.db", synchronous=sync)
        todo = iter(batches)

        async def writer() -> None:
            for batch in todo:
                await store.commit(batch)

        loop_cpu, cpu, wall = time.thread_time(), time.process_time(), time.perf_counter()
        async with asyncio.TaskGroup() as tasks:
            for _ in range(writers):
                tasks.create_task(writer())
        wall = time.perf_counter() - wall
        loop_cpu, cpu = time.thread_time() - loop_cpu, time.process_time() - cpu
        transactions = store.transactions
        rss_mib = _harness.peak_rss_mib()["rss_parent_mib"]
        found = await store.succeeded(outcomes[-1][0], [f"job-{n - 1}"])
        assert len(found) == 1
        await store.aclose()
        # more rows, into a fresh file, at the cluster's pace, in windows alternating
        # with windows of the loop alone (other load on the machine spreads over both)
        paced_rows = int(rate * PACED_S)
        paced = iter([WriteBatch([("session-0123456789abcdef", JobOutcome(
            f"paced-{i}-{k}", JobStatus.SUCCEEDED, k, None, 1, "node-1", 1.7e9, 1.7e9 + 1))
            for k in range(group)]) for i in range(paced_rows // group + 1)])
        store = await AsyncStateStore.open(Path(tmp) / "paced.db", synchronous=sync)
        alone = beside = 0.0
        for _ in range(WINDOWS):
            alone += await spin_rate(PACED_S / WINDOWS, None)
            beside += await spin_rate(PACED_S / WINDOWS,
                                      paced_writer(store, paced, rate, group))
        await store.aclose()
    return {"wall_s": wall, "loop_cpu_s": loop_cpu, "cpu_s": cpu,
            "transactions": transactions, "rss_commit_mib": rss_mib,
            "loop_share_lost": 1 - beside / alone}


async def paced_writer(store: AsyncStateStore, batches: Iterator[WriteBatch], rate: float,
                       group: int) -> None:
    """Commit the next of ``batches`` at ``rate`` rows/s (one every ``group / rate`` s)
    until cancelled, each commit in a task of its own, as the coordinator's outcomes
    arrive."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with asyncio.TaskGroup() as tasks:
        for i, batch in enumerate(batches):
            await asyncio.sleep(start + i * group / rate - loop.time())
            tasks.create_task(store.commit(batch))


async def spin_rate(seconds: float, beside: Coroutine[Any, Any, None] | None) -> float:
    """Units of pure-Python work per second the event loop gets through in ``seconds``
    (yielding every ten units), with ``beside`` running, or alone."""
    side = None if beside is None else asyncio.ensure_future(beside)
    loop = asyncio.get_running_loop()
    units, end = 0, loop.time() + seconds
    while loop.time() < end:
        for _ in range(10):
            sum(range(300))
        units += 10
        await asyncio.sleep(0)
    if side is not None:
        side.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await side
    return units / seconds


def child(args: argparse.Namespace) -> None:
    sync: Literal["NORMAL", "FULL"] = "FULL" if args.variant == "FULL" else "NORMAL"
    _harness.emit({**asyncio.run(measure(sync, args.n, args.group, args.writers, args.dir,
                                      args.rate))})


def parent(args: argparse.Namespace) -> None:
    import asyncjobs

    print(f"asyncjobs from {os.path.dirname(asyncjobs.__file__)}; {args.n:,} outcomes in "
          f"commits of {args.group}, {args.writers} writers, {args.repeat} rounds, "
          f"file in {args.dir}")
    child_args = ["--n", str(args.n), "--group", str(args.group), "--writers",
                  str(args.writers), "--dir", args.dir, "--rate", str(args.rate)]
    runs = _harness.run_rounds(__file__, VARIANTS, child_args, args.repeat)
    n = args.n
    print(f"{'synchronous':<12}{'median s':>9}{'rows/s':>10}{'µs/row':>8}{'loop µs/row':>12}"
          f"{'cpu µs/row':>11}{'txns':>6}{'RSS MiB':>9}{'loop lost':>10}")
    for v, r in runs.items():
        med = _harness.median(r, "wall_s")
        print(f"{v:<12}{med:>9.3f}{n / med:>10,.0f}{med / n * 1e6:>8.2f}"
              f"{_harness.median(r, 'loop_cpu_s') / n * 1e6:>12.2f}"
              f"{_harness.median(r, 'cpu_s') / n * 1e6:>11.2f}"
              f"{_harness.median(r, 'transactions'):>6.0f}"
              f"{_harness.peak(r, 'rss_commit_mib'):>9.1f}"
              f"{_harness.median(r, 'loop_share_lost'):>10.1%}")
    print(f"loop lost: the share of pure-Python work the event loop no longer gets done "
          f"while {args.rate:,.0f} rows/s are committed in groups of {args.group}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--group", type=int, default=500)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--rate", type=float, default=50_000.0)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
