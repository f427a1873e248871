"""Estimate pi with CPU jobs: many small simulations spread over every core.

Run from the repository root::

    python -m examples.montecarlo [--jobs 3000] [--tries 4000]
    python examples/montecarlo.py
"""

from __future__ import annotations

import argparse
import random
import time

import asyncjobs


def hits(tries: int) -> int:
    """Count random points of the unit square that fall inside the quarter circle."""
    rand = random.random
    inside = 0
    for _ in range(tries):
        x, y = rand(), rand()
        if x * x + y * y <= 1.0:
            inside += 1
    return inside


def estimate_pi(hit_counts: list[int], tries: int) -> float:
    """Pi from the hit counts of ``len(hit_counts)`` simulations of ``tries`` points each."""
    return 4 * sum(hit_counts) / (len(hit_counts) * tries)


async def main(jobs: int = 3000, tries: int = 4000) -> None:
    start = time.perf_counter()
    async with asyncjobs.Runner() as runner:  # one worker process per core
        # hits is a plain def, so each call runs as a cpu job in a worker process
        counts = await runner.map(hits, [tries] * jobs)
    wall = time.perf_counter() - start
    print(f"pi ~ {estimate_pi(counts, tries):.5f}")
    print(f"{jobs} jobs x {tries} tries in {wall:.2f} s ({jobs / wall:,.0f} jobs/s)")


if __name__ == "__main__":  # worker processes import this module too: run nothing there
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--tries", type=int, default=4000)
    args = parser.parse_args()
    asyncjobs.run(lambda: main(args.jobs, args.tries))
