"""IO jobs one at a time: ``Runner.submit`` of N no-op jobs and ``gather``, against bare
``asyncio.create_task`` and ``gather``, both on uvloop; and the memory of a pending job.

    python benchmarks/bench_submit.py [--n 100000] [--repeat 3]

Each variant runs in its own fresh interpreter, once per round, the variants alternating:

- ``asyncjobs``: inside ``async with Runner()`` (entered before the clock),
  ``jobs = [runner.submit(noop, i) for i in range(n)]``, then
  ``await asyncio.gather(*jobs)``; on ``asyncjobs.run`` (uvloop).
- ``bare``: ``tasks = [asyncio.create_task(noop(i)) for i in range(n)]``, then
  ``await asyncio.gather(*tasks)``; on ``uvloop.run``.
- ``asyncjobs-mem``, ``bare-mem``: the same submission under ``tracemalloc``. What is
  traced after all N jobs (tasks) exist and before the loop has run any of them (no
  ``await`` in between; ``gc.collect()`` before both readings), minus what was traced
  before, divided by N. Their times are not compared (tracing slows every allocation).

The timed variants measure the submission and the gather separately, and read the
process's resident set (``/proc/self/statm``) between the two, outside both spans: the
RSS growth per pending job is a second memory figure, with allocator slack included.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import time
import tracemalloc

import _harness

import asyncjobs

TARGET_THROUGHPUT = 0.4
TARGET_MEMORY = 2.0
VARIANTS = ["asyncjobs", "bare", "asyncjobs-mem", "bare-mem"]
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


async def noop(i: int) -> int:
    return i


def rss_bytes() -> float:
    """This process's resident set now (not its peak), or NaN where /proc is missing."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE_BYTES
    except OSError:  # pragma: no cover - not Linux
        return float("nan")


def check_uvloop() -> None:
    loop = asyncio.get_running_loop()
    if not type(loop).__module__.startswith("uvloop"):
        raise RuntimeError(f"expected uvloop, running on {type(loop).__module__}")


async def asyncjobs_variant(n: int, traced: bool) -> dict[str, float]:
    check_uvloop()
    async with asyncjobs.Runner() as runner:
        before = measure_before(traced)
        t0 = time.perf_counter()
        jobs = [runner.submit(noop, i) for i in range(n)]  # no await: none of them has run
        t1 = time.perf_counter()
        held = measure_after(traced, before)
        t2 = time.perf_counter()
        results = await asyncio.gather(*jobs)
        t3 = time.perf_counter()
    assert len(results) == n and results[-1] == n - 1
    return {"wall_s": (t1 - t0) + (t3 - t2), "submit_s": t1 - t0, "gather_s": t3 - t2, **held}


async def bare_variant(n: int, traced: bool) -> dict[str, float]:
    check_uvloop()
    before = measure_before(traced)
    t0 = time.perf_counter()
    tasks = [asyncio.create_task(noop(i)) for i in range(n)]  # none of them has run
    t1 = time.perf_counter()
    held = measure_after(traced, before)
    t2 = time.perf_counter()
    results = await asyncio.gather(*tasks)
    t3 = time.perf_counter()
    assert len(results) == n and results[-1] == n - 1
    return {"wall_s": (t1 - t0) + (t3 - t2), "submit_s": t1 - t0, "gather_s": t3 - t2, **held}


def measure_before(traced: bool) -> float:
    if not traced:
        return rss_bytes()
    gc.collect()
    tracemalloc.start()
    return tracemalloc.get_traced_memory()[0]


def measure_after(traced: bool, before: float) -> dict[str, float]:
    if not traced:
        return {"rss_held_bytes": rss_bytes() - before}
    gc.collect()
    now = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {"traced_held_bytes": now - before}


def child(variant: str, n: int) -> None:
    traced = variant.endswith("-mem")
    if variant.startswith("asyncjobs"):
        result = asyncjobs.run(lambda: asyncjobs_variant(n, traced))  # uvloop, the default
    else:
        import uvloop

        result = uvloop.run(bare_variant(n, traced))
    _harness.emit(result)


def paired(
    base: list[dict[str, float]], ours: list[dict[str, float]], key: str, *, invert: bool
) -> tuple[float, float, float]:
    """``ours / base`` of ``key``, round by round (``base / ours`` with ``invert``), as
    (median, lowest, highest)."""
    ratios = sorted((b[key] / o[key]) if invert else (o[key] / b[key])
                    for b, o in zip(base, ours, strict=True))
    return statistics.median(ratios), ratios[0], ratios[-1]


def parent(args: argparse.Namespace) -> None:
    n = args.n
    print(f"{n:,} no-op io jobs submitted one by one, then gathered; uvloop; median of "
          f"{args.repeat} rounds; Python {sys.version.split()[0]}; asyncjobs from "
          f"{asyncjobs.__file__}", flush=True)
    runs = _harness.run_rounds(__file__, VARIANTS, ["--n", str(n)], args.repeat)
    aj, bare = runs["asyncjobs"], runs["bare"]
    aj_mem, bare_mem = runs["asyncjobs-mem"], runs["bare-mem"]

    print(f"\n{'variant':<11}{'median s':>9}{'min s':>7}{'max s':>7}{'jobs/s':>10}"
          f"{'submit s':>9}{'gather s':>9}{'peak MiB':>9}")
    for v, r in (("asyncjobs", aj), ("bare", bare)):
        med = _harness.median(r, "wall_s")
        print(f"{v:<11}{med:>9.3f}{_harness.fastest(r):>7.3f}{max(x['wall_s'] for x in r):>7.3f}"
              f"{n / med:>10,.0f}{_harness.median(r, 'submit_s'):>9.3f}"
              f"{_harness.median(r, 'gather_s'):>9.3f}{_harness.peak(r, 'rss_parent_mib'):>9.1f}")

    print(f"\n{'pending job':<11}{'traced B/job':>13}{'RSS B/job':>11}")
    for v, timed, traced in (("asyncjobs", aj, aj_mem), ("bare", bare, bare_mem)):
        print(f"{v:<11}{_harness.median(traced, 'traced_held_bytes') / n:>13,.0f}"
              f"{_harness.median(timed, 'rss_held_bytes') / n:>11,.0f}")

    print()
    ratio, low, high = paired(bare, aj, "wall_s", invert=True)
    verdict = "met" if ratio >= TARGET_THROUGHPUT else "NOT met"
    print(f"submit+gather: asyncjobs/bare throughput = {ratio:.3f} (median of the rounds' "
          f"ratios; {low:.3f}-{high:.3f}); target >= {TARGET_THROUGHPUT}: {verdict}")
    ratio, low, high = paired(bare, aj, "submit_s", invert=True)
    print(f"submit alone:  asyncjobs/bare throughput = {ratio:.3f} ({low:.3f}-{high:.3f})")
    ratio, low, high = paired(bare_mem, aj_mem, "traced_held_bytes", invert=False)
    verdict = "met" if ratio <= TARGET_MEMORY else "NOT met"
    print(f"memory per pending job (tracemalloc): asyncjobs/bare = {ratio:.2f} "
          f"({low:.2f}-{high:.2f}); target <= {TARGET_MEMORY}: {verdict}")
    ratio, low, high = paired(bare, aj, "rss_held_bytes", invert=False)
    print(f"memory per pending job (RSS growth):  asyncjobs/bare = {ratio:.2f} "
          f"({low:.2f}-{high:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        child(args.variant, args.n)
    else:
        parent(args)


if __name__ == "__main__":
    main()
