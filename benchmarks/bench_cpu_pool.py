"""What a cpu worker costs to start and to replace: the first job of a pool, a worker's
replacement after a crash, and a Monte Carlo run in which some jobs kill their worker.

    python benchmarks/bench_cpu_pool.py [--repeat 5] [--jobs 1000] [--crashes 55] [--tries 4000]

Each variant runs in its own fresh interpreter, once per round, the variants alternating:

- ``first-*``: from creating the pool (``async with Runner(cpu_workers=2)``,
  ``ProcessPoolExecutor(2)`` with each start method) to the first job's result. For
  asyncjobs, ``enter_s`` is the time spent entering the Runner and ``job_s`` the time from
  ``submit`` to the result; ``warm_s`` is a second job's ``submit`` to result.
  ``first-asyncjobs-later`` submits its first job 0.5 s after entering (an app that
  opens its Runner at start-up): ``wall_s`` is then that job's ``submit`` to result.
- ``replace``: one worker; 30 times, a job that calls ``os._exit`` then a no-op job:
  ``wall_s`` is the median of the time from the crash's report to the no-op's result (a
  new worker has started and answered), ``cpu_parent_s`` the runner's CPU time per crash.
- ``pi`` / ``pi-crash``: ``--jobs`` submits of ``examples.montecarlo:hits`` on 2 workers,
  ``--crashes`` of them (spread evenly) replaced by a job that calls ``os._exit``:
  entering the Runner, the jobs, and leaving it; any job that failed though it did not
  call ``os._exit`` is counted ("innocent jobs failed", over all rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

if str(Path(__file__).resolve().parent.parent) not in sys.path:  # for `examples`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _harness  # noqa: E402
from examples.montecarlo import hits  # noqa: E402

import asyncjobs  # noqa: E402

WORKERS = 2
REPLACEMENTS = 30
VARIANTS = ["first-ppe-fork", "first-ppe-forkserver", "first-ppe-spawn", "first-asyncjobs",
            "first-asyncjobs-later", "first-asyncjobs-prestart", "replace", "pi", "pi-crash"]
#: how long ``first-asyncjobs-later`` waits between entering and its first job
LATER_S = 0.5


def noop() -> int:
    return 0


def crash() -> None:
    os._exit(3)


def hits_or_exit(tries: int, crash: bool) -> int:
    if crash:
        os._exit(3)
    return hits(tries)


def first_ppe(method: str) -> dict[str, float]:
    t0 = time.perf_counter()
    ex = ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context(method))
    try:
        ex.submit(noop).result()
        first = time.perf_counter() - t0
        t1 = time.perf_counter()
        ex.submit(noop).result()
        warm = time.perf_counter() - t1
    finally:
        ex.shutdown()
    return {"wall_s": first, "warm_s": warm}


async def first_asyncjobs(prestart: bool, later: bool) -> dict[str, float]:
    kwargs = {"prestart": True} if prestart else {}
    t0 = time.perf_counter()
    async with asyncjobs.Runner(cpu_workers=WORKERS, **kwargs) as runner:
        t1 = time.perf_counter()
        if later:
            await asyncio.sleep(LATER_S)
        t1b = time.perf_counter()
        await runner.submit(noop)
        t2 = time.perf_counter()
        await runner.submit(noop)
        t3 = time.perf_counter()
    first = t2 - t1b if later else t2 - t0
    return {"wall_s": first, "enter_s": t1 - t0, "job_s": t2 - t1b, "warm_s": t3 - t2}


async def replace() -> dict[str, float]:
    async with asyncjobs.Runner(cpu_workers=1) as runner:
        await runner.submit(noop)
        gaps = []
        cpu0 = time.process_time()
        for _ in range(REPLACEMENTS):
            try:
                await runner.submit(crash)
            except asyncjobs.JobFailed:
                pass
            t = time.perf_counter()
            await runner.submit(noop)
            gaps.append(time.perf_counter() - t)
        cpu = time.process_time() - cpu0
    return {"wall_s": statistics.median(gaps), "max_s": max(gaps),
            "cpu_parent_s": cpu / REPLACEMENTS}


async def pi(jobs: int, crashes: int, tries: int) -> dict[str, float]:
    every = jobs // crashes if crashes else jobs + 1
    plan = [crashes > 0 and i % every == every // 2 and i // every < crashes
            for i in range(jobs)]
    clock = _harness.Clock()
    async with asyncjobs.Runner(cpu_workers=WORKERS) as runner:
        out = await asyncio.gather(*(runner.submit(hits_or_exit, tries, c) for c in plan),
                                   return_exceptions=True)
    timing = clock.stop()
    failed = sum(isinstance(o, asyncjobs.JobFailed) for o in out)
    # jobs that failed without calling os._exit: a pool must not blame the innocent
    return {**timing, "innocent_failed": float(failed - sum(plan))}


def child(variant: str, args: argparse.Namespace) -> None:
    if variant.startswith("first-ppe-"):
        result = first_ppe(variant.removeprefix("first-ppe-"))
    elif variant.startswith("first-asyncjobs"):
        result = asyncjobs.run(lambda: first_asyncjobs(variant.endswith("prestart"),
                                                       variant.endswith("later")))
    elif variant == "replace":
        result = asyncjobs.run(replace)
    else:
        crashes = args.crashes if variant == "pi-crash" else 0
        result = asyncjobs.run(lambda: pi(args.jobs, crashes, args.tries))
    _harness.emit(result)


def parent(args: argparse.Namespace) -> None:
    variants = args.only or VARIANTS
    opts = ["--jobs", str(args.jobs), "--crashes", str(args.crashes), "--tries",
            str(args.tries)]
    print(f"cpu pool start-up: {WORKERS} workers, {os.cpu_count()} cores, median of "
          f"{args.repeat} rounds; Python {sys.version.split()[0]}; asyncjobs from "
          f"{asyncjobs.__file__}", flush=True)
    runs = _harness.run_rounds(__file__, variants, opts, args.repeat)
    print(f"\n{'variant':<26}{'median ms':>10}{'min ms':>8}{'max ms':>8}  other medians (ms)")
    for v in variants:
        r = runs[v]
        extra = "  ".join(f"{k}={_harness.median(r, k) * 1000:.1f}"
                          for k in ("enter_s", "job_s", "warm_s", "max_s", "cpu_parent_s")
                          if k in r[0])
        if "innocent_failed" in r[0]:
            extra += f"  innocent jobs failed: {sum(x['innocent_failed'] for x in r):.0f}"
        print(f"{v:<26}{_harness.median(r, 'wall_s') * 1000:>10.1f}"
              f"{_harness.fastest(r) * 1000:>8.1f}"
              f"{max(x['wall_s'] for x in r) * 1000:>8.1f}  {extra}")
    if "pi" in runs and "pi-crash" in runs:
        ratio = _harness.median(runs["pi-crash"], "wall_s") / _harness.median(runs["pi"],
                                                                               "wall_s")
        print(f"\npi with {args.crashes} crashes / without: {ratio:.2f} (target <= 2)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--crashes", type=int, default=55)
    parser.add_argument("--tries", type=int, default=4000)
    parser.add_argument("--only", nargs="*", choices=VARIANTS, help="variants to run")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        child(args.variant, args)
    else:
        parent(args)


if __name__ == "__main__":  # worker processes re-import this module: run nothing there
    main()
