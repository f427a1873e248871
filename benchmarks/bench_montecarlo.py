"""CPU jobs: asyncjobs' own worker pool against multiprocessing.Pool and
ProcessPoolExecutor, on Monte Carlo pi (examples.montecarlo.hits).

    python benchmarks/bench_montecarlo.py [--jobs 3000] [--tries 4000] [--repeat 3]

Each variant runs in its own fresh interpreter, once per round, the variants
alternating. ``cold`` times create pool + map + close; ``warm`` times the map alone,
on a pool whose workers have all answered a warm-up job.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

if str(Path(__file__).resolve().parent.parent) not in sys.path:  # for `examples`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _harness  # noqa: E402
from examples.montecarlo import hits  # noqa: E402

import asyncjobs  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

WORKERS = 2
TARGET_RATIO = 1.03
MAX_WARMUP_ROUNDS = 50
VARIANTS = [
    f"{lib}-{mode}" for mode in ("cold", "warm") for lib in ("asyncjobs", "pool", "ppe")
]


def pid_after(delay_s: float) -> int:
    """Warm-up job: which worker ran it (sleeping so that one worker cannot take all)."""
    time.sleep(delay_s)
    return os.getpid()


def warm_up(map_fn: Callable[[list[float]], Iterable[int]]) -> None:
    """Call ``map_fn(pid_after, items)`` until every worker has answered (bounded)."""
    seen: set[int] = set()
    for _ in range(MAX_WARMUP_ROUNDS):
        seen.update(map_fn([0.02] * (2 * WORKERS)))
        if len(seen) >= WORKERS:
            return
    raise RuntimeError(f"only {len(seen)} of {WORKERS} workers answered the warm-up")


async def asyncjobs_variant(work: list[int], warm: bool) -> dict[str, float]:
    clock = _harness.Clock()
    async with asyncjobs.Runner(cpu_workers=WORKERS) as runner:
        if warm:
            seen: set[int] = set()
            for _ in range(MAX_WARMUP_ROUNDS):
                seen.update(await runner.map(pid_after, [0.02] * (2 * WORKERS)))
                if len(seen) >= WORKERS:
                    break
            else:
                raise RuntimeError(f"only {len(seen)} of {WORKERS} workers answered")
            clock.start()
        counts = await runner.map(hits, work)
        if warm:
            timing = clock.stop()
    if not warm:
        timing = clock.stop()
    assert len(counts) == len(work)
    return timing


def pool_variant(work: list[int], warm: bool, method: str | None) -> dict[str, float]:
    clock = _harness.Clock()
    pool = multiprocessing.get_context(method).Pool(WORKERS)
    try:
        if warm:
            warm_up(lambda items: pool.map(pid_after, items))
            clock.start()
        counts = pool.map(hits, work)
        if warm:
            timing = clock.stop()
    finally:
        pool.close()
        pool.join()
    if not warm:
        timing = clock.stop()
    assert len(counts) == len(work)
    return timing


def ppe_variant(work: list[int], warm: bool, method: str | None) -> dict[str, float]:
    clock = _harness.Clock()
    ctx = multiprocessing.get_context(method)
    with ProcessPoolExecutor(WORKERS, mp_context=ctx) as ex:
        if warm:
            warm_up(lambda items: list(ex.map(pid_after, items)))
            clock.start()
        counts = list(ex.map(hits, work))
        if warm:
            timing = clock.stop()
    if not warm:
        timing = clock.stop()
    assert len(counts) == len(work)
    return timing


def child(variant: str, jobs: int, tries: int, method: str | None) -> None:
    lib, mode = variant.split("-")
    work = [tries] * jobs
    warm = mode == "warm"
    if lib == "asyncjobs":
        timing = asyncjobs.run(lambda: asyncjobs_variant(work, warm))
    elif lib == "pool":
        timing = pool_variant(work, warm, method)
    else:
        timing = ppe_variant(work, warm, method)
    _harness.emit(timing)


def parent(args: argparse.Namespace) -> None:
    method = args.start_method or multiprocessing.get_start_method()
    opts = ["--jobs", str(args.jobs), "--tries", str(args.tries), "--start-method", method]
    print(f"Monte Carlo pi: {args.jobs} jobs x {args.tries} tries, {WORKERS} workers, "
          f"{os.cpu_count()} cores, median of {args.repeat} rounds; Python "
          f"{sys.version.split()[0]}; Pool/ProcessPoolExecutor start method {method}; "
          f"asyncjobs from {asyncjobs.__file__}", flush=True)
    runs = _harness.run_rounds(__file__, VARIANTS, opts, args.repeat)
    print(f"\n{'variant':<16}{'median s':>9}{'min s':>7}{'max s':>7}{'jobs/s':>8}"
          f"{'parent CPU s':>13}{'parent MiB':>11}{'child MiB':>10}")
    for v in VARIANTS:
        r = runs[v]
        med = _harness.median(r, "wall_s")
        print(f"{v:<16}{med:>9.3f}{_harness.fastest(r):>7.3f}"
              f"{max(x['wall_s'] for x in r):>7.3f}{args.jobs / med:>8,.0f}"
              f"{_harness.median(r, 'cpu_parent_s'):>13.3f}"
              f"{_harness.peak(r, 'rss_parent_mib'):>11.1f}"
              f"{_harness.peak(r, 'rss_children_mib'):>10.1f}")
    print()
    for mode in ("cold", "warm"):
        aj = _harness.median(runs[f"asyncjobs-{mode}"], "wall_s")
        pool = _harness.median(runs[f"pool-{mode}"], "wall_s")
        ppe = _harness.median(runs[f"ppe-{mode}"], "wall_s")
        ratio = aj / pool
        verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
        # the ratio of the fastest rounds is less sensitive to a noisy neighbour
        best = _harness.fastest(runs[f"asyncjobs-{mode}"]) / _harness.fastest(runs[f"pool-{mode}"])
        print(f"{mode}: asyncjobs/Pool = {ratio:.3f} (target <= {TARGET_RATIO}: {verdict}; "
              f"fastest rounds: {best:.3f}); asyncjobs/ProcessPoolExecutor = {aj / ppe:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--tries", type=int, default=4000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--start-method", choices=multiprocessing.get_all_start_methods(),
        help="for Pool and ProcessPoolExecutor (default: the platform's; asyncjobs "
             "always starts fresh interpreters, like spawn)",
    )
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        child(args.variant, args.jobs, args.tries, args.start_method)
    else:
        parent(args)


if __name__ == "__main__":  # worker processes re-import this module: run nothing there
    main()
