"""Chains: N io jobs, each ``needs`` the one before, through ``Runner.run_flow``.

    python benchmarks/bench_chain.py [--sizes 1000,2000,4000] [--repeat 3]

Each size runs in a fresh interpreter per round (sizes alternating). What is timed is
``run_flow`` alone (no interpreter start, no YAML writing). Scheduling is linear when
time grows with N: the target is the 4,000-job chain within 4.5x of the 1,000-job one
(a scheduler that rescans every job on each wake-up grows with N squared: 1.2 / 4.6 /
15.8 s were seen before the flow's dependencies moved to ``flow.state.FlowState``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import _harness

import asyncjobs

TARGET = 4.5


async def noop() -> None:
    return None


def write_chain(folder: Path, n: int) -> Path:
    lines = ["jobs:", "  j0: {call: 'bench_chain:noop'}"]
    lines += [f"  j{i}: {{call: 'bench_chain:noop', needs: [j{i - 1}]}}" for i in range(1, n)]
    path = folder / f"chain{n}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def child(n: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    with tempfile.TemporaryDirectory() as tmp:
        path = write_chain(Path(tmp), n)

        async def main() -> dict[str, float]:
            async with asyncjobs.Runner(cpu_workers=1) as runner:
                clock = _harness.Clock()
                report = await runner.run_flow(path)
                result = clock.stop()
            assert report.ok, report.summary_lines()
            return result

        _harness.emit(asyncjobs.run(main))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,2000,4000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variant")
    args = parser.parse_args()
    if args.variant:
        child(int(args.variant))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    runs = _harness.run_rounds(__file__, [str(n) for n in sizes], [], args.repeat)
    print(f"chains of io jobs, each needing the one before; median of {args.repeat} rounds; "
          f"asyncjobs from {asyncjobs.__file__}")
    print(f"{'jobs':>6} {'median s':>9} {'min s':>7} {'us/job':>7} {'peak MiB':>9}")
    for n in sizes:
        r = runs[str(n)]
        med = _harness.median(r, "wall_s")
        print(f"{n:>6} {med:>9.3f} {_harness.fastest(r):>7.3f} {med / n * 1e6:>7.0f} "
              f"{_harness.peak(r, 'rss_parent_mib'):>9.1f}")
    small, large = str(sizes[0]), str(sizes[-1])
    ratio = _harness.median(runs[large], "wall_s") / _harness.median(runs[small], "wall_s")
    scale = sizes[-1] / sizes[0]
    verdict = "met" if ratio <= TARGET * scale / 4 else "NOT met"
    print(f"{sizes[-1]} vs {sizes[0]} jobs: {ratio:.2f}x the time for {scale:g}x the jobs; "
          f"target <= {TARGET * scale / 4:g}x: {verdict}")


if __name__ == "__main__":
    main()
