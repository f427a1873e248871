"""IO jobs: the per-job cost of asyncjobs over bare asyncio, on no-op coroutines.

    python benchmarks/bench_io_noop.py [--n 100000] [--repeat 3]

Compares ``Runner().map(noop, range(n))`` with ``asyncio.gather`` over ``n`` tasks, each
on uvloop and on asyncio's default loop. Each variant runs in its own fresh
interpreter, once per round, the variants alternating. The time covers entering the
Runner, the map and leaving the Runner (for gather: creating the tasks and gathering).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import _harness

import asyncjobs

TARGET_RATIO = 0.3
VARIANTS = [f"{lib}-{loop}" for loop in ("uvloop", "asyncio") for lib in ("asyncjobs", "gather")]


async def noop(i: int) -> int:
    return i


async def asyncjobs_variant(n: int) -> dict[str, float]:
    clock = _harness.Clock()
    async with asyncjobs.Runner() as runner:
        results = await runner.map(noop, range(n))
    timing = clock.stop()
    assert len(results) == n and results[-1] == n - 1
    return timing


async def gather_variant(n: int) -> dict[str, float]:
    clock = _harness.Clock()
    results = await asyncio.gather(*[noop(i) for i in range(n)])
    timing = clock.stop()
    assert len(results) == n and results[-1] == n - 1
    return timing


def child(variant: str, n: int) -> None:
    lib, loop = variant.split("-")
    fn = asyncjobs_variant if lib == "asyncjobs" else gather_variant
    timing = asyncjobs.run(lambda: fn(n), use_uvloop=loop == "uvloop")
    _harness.emit(timing)


def parent(args: argparse.Namespace) -> None:
    print(f"{args.n:,} no-op async jobs, median of {args.repeat} rounds; "
          f"Python {sys.version.split()[0]}; asyncjobs from {asyncjobs.__file__}", flush=True)
    runs = _harness.run_rounds(__file__, VARIANTS, ["--n", str(args.n)], args.repeat)
    print(f"\n{'variant':<18}{'median s':>9}{'min s':>7}{'max s':>7}{'jobs/s':>11}"
          f"{'peak MiB':>10}")
    for v in VARIANTS:
        r = runs[v]
        med = _harness.median(r, "wall_s")
        print(f"{v:<18}{med:>9.3f}{_harness.fastest(r):>7.3f}"
              f"{max(x['wall_s'] for x in r):>7.3f}{args.n / med:>11,.0f}"
              f"{_harness.peak(r, 'rss_parent_mib'):>10.1f}")
    print()
    for loop in ("uvloop", "asyncio"):
        aj = _harness.median(runs[f"asyncjobs-{loop}"], "wall_s")
        bare = _harness.median(runs[f"gather-{loop}"], "wall_s")
        ratio = bare / aj  # a throughput ratio: asyncjobs jobs/s over bare jobs/s
        best = _harness.fastest(runs[f"gather-{loop}"]) / _harness.fastest(
            runs[f"asyncjobs-{loop}"]
        )
        line = f"{loop}: asyncjobs/bare throughput = {ratio:.3f} (fastest rounds: {best:.3f})"
        if loop == "uvloop":
            line += f"; target >= {TARGET_RATIO}: {'met' if ratio >= TARGET_RATIO else 'NOT met'}"
        print(line)


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
