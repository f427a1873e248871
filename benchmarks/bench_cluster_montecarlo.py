"""Monte Carlo pi on a one-node cluster against ``multiprocessing.Pool(2)`` in one process.

    python benchmarks/bench_cluster_montecarlo.py [--jobs 3000] [--tries 4000] [--rounds 3]

``examples.montecarlo.hits``, ``--jobs`` × ``--tries``. Each variant runs in a fresh
interpreter; the cluster ones start ``asyncjobs coordinator`` + one ``asyncjobs node
--loops 1 --cpu-workers 2`` on 127.0.0.1 first, and warm it (every worker has answered
and imported ``examples.montecarlo``) outside the timed span:

- ``asyncjobs-map``: ``sum(await cluster.map(hits, [tries] * jobs))`` over
  ``asyncjobs.connect``: first submit to last result;
- ``pool-map``: ``sum(pool.map(hits, [tries] * jobs))`` on a ``Pool(2)`` whose workers
  have all answered a warm-up (fork, Linux's default): the map alone;
- ``asyncjobs-run``: the whole command ``asyncjobs run examples/montecarlo.yaml
  --connect ADDR --quiet`` (interpreter start, imports, the flow, ``estimate_pi``, exit),
  on the warm cluster;
- ``pool-script``: the whole command ``python benchmarks/montecarlo_pool.py``
  (``Pool(os.cpu_count())``, map, ``estimate_pi``, exit).

*total MiB* is the peak, sampled every 0.1 s, of the RSS summed over the measuring
process and every process below it (client or command, coordinator, node, its loop and
workers; or the pool's workers). Forked workers count the pages they share with their
parent. Targets: asyncjobs-map ≤ 1.10 × pool-map; asyncjobs-run ≤ 1.10 × pool-script.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

if str(Path(__file__).resolve().parent.parent) not in sys.path:  # for `benchmarks`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _cluster  # noqa: E402
import _harness  # noqa: E402
from benchmarks import cluster_jobs  # noqa: E402
from examples.montecarlo import hits  # noqa: E402

import asyncjobs  # noqa: E402

TARGET = 1.10
WORKERS = 2
VARIANTS = ["asyncjobs-map", "pool-map", "asyncjobs-run", "pool-script"]
#: (ours, theirs) compared round by round
COMPARISONS = [("asyncjobs-map", "pool-map"), ("asyncjobs-run", "pool-script")]


def command(argv: list[str]) -> dict[str, float]:
    clock = _harness.Clock()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False,
                          cwd=_cluster.ROOT, env=_cluster.env_with_root())
    timing = clock.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return timing


async def asyncjobs_variant(mode: str, jobs: int, tries: int) -> dict[str, float]:
    with _cluster.cluster(1, loops=1, cpu_workers=WORKERS) as (coordinator, nodes):
        async with asyncjobs.connect(coordinator.address) as cluster:
            await _cluster.wait_for_nodes(cluster, [x.name for x in nodes])
            await _cluster.warm_asyncjobs(cluster, cluster_jobs.pid_after, WORKERS)
            await cluster.map(hits, [10] * 16)  # every worker imports examples.montecarlo
            rss = _cluster.RssSampler()
            rss.watch("all", os.getpid())
            rss.watch("coordinator", coordinator.pid)
            rss.start()
            cpu0 = [_cluster.tree_cpu_s(x.pid) for x in (coordinator, *nodes)]
            if mode == "map":
                clock = _harness.Clock()
                total = sum(await cluster.map(hits, [tries] * jobs))
                timing = clock.stop()
                assert 0.7 * jobs * tries < total < 0.9 * jobs * tries
            else:
                args = [] if (jobs, tries) == (3000, 4000) else [
                    "--param", f"jobs={jobs}", "--param", f"tries={tries}"]
                timing = command([*_cluster.asyncjobs_argv(), "run",
                                  "examples/montecarlo.yaml", "--connect",
                                  coordinator.address, "--quiet", *args])
            cpu1 = [_cluster.tree_cpu_s(x.pid) for x in (coordinator, *nodes)]
            rss.stop()
    # "all" holds the coordinator too; subtract nothing, report both
    return {**timing, "total_mib": rss.peaks["all"], "coordinator_mib": rss.peaks["coordinator"],
            "coordinator_cpu_s": cpu1[0] - cpu0[0], "node_cpu_s": cpu1[1] - cpu0[1]}


def pool_variant(mode: str, jobs: int, tries: int) -> dict[str, float]:
    rss = _cluster.RssSampler()
    rss.watch("all", os.getpid())
    if mode == "script":
        rss.start()
        timing = command([sys.executable, "benchmarks/montecarlo_pool.py", "--jobs", str(jobs),
                          "--tries", str(tries)])
        rss.stop()
        return {**timing, "total_mib": rss.peaks["all"], "coordinator_mib": 0.0,
                "coordinator_cpu_s": 0.0, "node_cpu_s": 0.0}
    with multiprocessing.Pool(WORKERS) as pool:
        seen: set[int] = set()
        for _ in range(_cluster.MAX_WARMUP_ROUNDS):
            seen.update(pool.map(cluster_jobs.pid_after, [0.02] * (2 * WORKERS)))
            if len(seen) >= WORKERS:
                break
        rss.start()
        clock = _harness.Clock()
        total = sum(pool.map(hits, [tries] * jobs))
        timing = clock.stop()
        rss.stop()
    assert 0.7 * jobs * tries < total < 0.9 * jobs * tries
    return {**timing, "total_mib": rss.peaks["all"], "coordinator_mib": 0.0,
            "coordinator_cpu_s": 0.0, "node_cpu_s": 0.0}


def child(variant: str, jobs: int, tries: int) -> None:
    lib, mode = variant.split("-")
    if lib == "asyncjobs":
        timing = asyncjobs.run(lambda: asyncjobs_variant(mode, jobs, tries))
    else:
        timing = pool_variant(mode, jobs, tries)
    _harness.emit(timing)


def dash(value: float) -> str:
    return f"{value:.3f}" if value else "-"


def parent(args: argparse.Namespace) -> None:
    print(f"Monte Carlo pi: {args.jobs:,} jobs x {args.tries:,} tries; asyncjobs: coordinator "
          f"+ 1 node --loops 1 --cpu-workers {WORKERS}; Pool({WORKERS}) "
          f"({multiprocessing.get_start_method()}); {os.cpu_count()} cores; median of "
          f"{args.rounds} rounds; Python {sys.version.split()[0]}; asyncjobs from "
          f"{asyncjobs.__file__}", flush=True)
    opts = ["--jobs", str(args.jobs), "--tries", str(args.tries)]
    runs = _harness.run_rounds(__file__, VARIANTS, opts, args.rounds)
    print(f"\n{'variant':<15}{'median s':>9}{'min s':>8}{'max s':>8}{'jobs/s':>8}"
          f"{'client CPU s':>13}{'coord CPU s':>12}{'node CPU s':>11}{'total MiB':>10}"
          f"{'coord MiB':>10}")
    for v in VARIANTS:
        r = runs[v]
        med = _harness.median(r, "wall_s")
        coord = _harness.peak(r, "coordinator_mib")
        print(f"{v:<15}{med:>9.3f}{_harness.fastest(r):>8.3f}"
              f"{max(x['wall_s'] for x in r):>8.3f}{args.jobs / med:>8,.0f}"
              f"{_harness.median(r, 'cpu_parent_s'):>13.3f}"
              f"{dash(_harness.median(r, 'coordinator_cpu_s')):>12}"
              f"{dash(_harness.median(r, 'node_cpu_s')):>11}"
              f"{_harness.peak(r, 'total_mib'):>10.1f}"
              f"{f'{coord:.1f}' if coord else '-':>10}")
    print("(client CPU s: the measuring process, which is the client in asyncjobs-map and "
          "idle while a command runs; coord / node CPU s: the coordinator, the node with its "
          "loop and workers, over the timed span; total MiB: peak over the rounds)")
    print()
    for ours, theirs in COMPARISONS:
        ratio, low, high = _harness.paired_ratio(runs[ours], runs[theirs])
        # paired_ratio gives first/second wall time: ours / theirs here
        # the target is the map's; the whole commands add each side's start-up
        verdict = (f"target <= {TARGET:.2f}: {'met' if ratio <= TARGET else 'NOT met'}"
                   if ours == "asyncjobs-map" else "whole commands, start-up included")
        print(f"{ours} / {theirs} wall time = {ratio:.3f} (median of the rounds' ratios; "
              f"{low:.3f}-{high:.3f}); {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--tries", type=int, default=4000)
    parser.add_argument("--rounds", "--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 round")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick and not args.variant:
        args.rounds = 1
    if args.variant:
        child(args.variant, args.jobs, args.tries)
    else:
        parent(args)


if __name__ == "__main__":
    main()
