"""No-op jobs on a cluster: asyncjobs (coordinator + 2 nodes) against Dask's LocalCluster.

    python benchmarks/bench_cluster_noop.py [--n 20000] [--rounds 3] [--quick]

Variants, each in a fresh interpreter that starts its own cluster on 127.0.0.1 (start-up
and a warm-up that every worker answers are outside the timed span):

- ``asyncjobs-cpu``: ``asyncjobs coordinator`` + 2 × ``asyncjobs node --loops 1
  --cpu-workers 1``; ``await cluster.map(noop, range(n))`` over ``asyncjobs.connect``,
  ``noop`` a plain def (a cpu job, run in the nodes' worker processes);
- ``asyncjobs-io``: the same with ``noop_async`` (an io job, run on the nodes' loops);
- ``dask``: ``LocalCluster(n_workers=2, threads_per_worker=1)`` with
  ``distributed.scheduler.worker-saturation: inf``; ``client.gather(client.map(noop,
  range(n)))``.

Timed: from the first submit to the last result. Peak RSS is sampled every 0.1 s over
the whole tree (the measuring client, the coordinator or Dask's in-process scheduler,
the nodes or workers and their processes). Target: asyncjobs-cpu ≥ 10 × Dask's jobs/s.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if str(Path(__file__).resolve().parent.parent) not in sys.path:  # for `benchmarks`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _cluster  # noqa: E402
import _harness  # noqa: E402
from benchmarks import cluster_jobs  # noqa: E402

import asyncjobs  # noqa: E402

TARGET = 10.0
NODES = 2
VARIANTS = ["asyncjobs-cpu", "asyncjobs-io", "dask"]


async def asyncjobs_variant(kind: str, n: int) -> dict[str, float]:
    fn = cluster_jobs.noop if kind == "cpu" else cluster_jobs.noop_async
    warm = cluster_jobs.pid_after if kind == "cpu" else cluster_jobs.pid_after_async
    with _cluster.cluster(NODES, loops=1, cpu_workers=1) as (coordinator, nodes):
        async with asyncjobs.connect(coordinator.address) as cluster:
            await _cluster.wait_for_nodes(cluster, [x.name for x in nodes])
            await _cluster.warm_asyncjobs(cluster, warm, NODES)
            rss = _cluster.RssSampler()
            rss.watch("coordinator", coordinator.pid)
            for node in nodes:
                rss.watch(node.name, node.pid)
            rss.start()
            cpu0 = [_cluster.tree_cpu_s(x.pid) for x in (coordinator, *nodes)]
            clock = _harness.Clock()
            results = await cluster.map(fn, range(n))
            timing = clock.stop()
            cpu1 = [_cluster.tree_cpu_s(x.pid) for x in (coordinator, *nodes)]
            rss.stop()
    assert results == list(range(n))
    return {**timing, "coordinator_mib": rss.peaks["coordinator"],
            "workers_mib": sum(rss.peaks[x.name] for x in nodes),
            "coordinator_cpu_s": cpu1[0] - cpu0[0],
            "workers_cpu_s": sum(cpu1[1:]) - sum(cpu0[1:])}


def dask_variant(n: int) -> dict[str, float]:
    with _cluster.dask_cluster(NODES) as (_, client):
        _cluster.warm_dask(client, cluster_jobs.pid_after, NODES)
        rss = _cluster.RssSampler()
        for p in _cluster.psutil.Process().children():
            rss.watch(f"w{p.pid}", p.pid)
        rss.start()
        cpu0 = sum(_cluster.tree_cpu_s(pid) for pid in rss.trees.values())
        clock = _harness.Clock()
        results = client.gather(client.map(cluster_jobs.noop, range(n)))  # type: ignore[attr-defined]
        timing = clock.stop()
        cpu1 = sum(_cluster.tree_cpu_s(pid) for pid in rss.trees.values())
        rss.stop()
    assert results == list(range(n))
    # the scheduler runs in this process: its RSS and CPU are this process's
    return {**timing, "coordinator_mib": 0.0, "workers_mib": sum(rss.peaks.values()),
            "coordinator_cpu_s": 0.0, "workers_cpu_s": cpu1 - cpu0}


def child(variant: str, n: int) -> None:
    if variant == "dask":
        timing = dask_variant(n)
    else:
        kind = variant.split("-")[1]
        timing = asyncjobs.run(lambda: asyncjobs_variant(kind, n))
    _harness.emit(timing)


def mib(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}f}" if value else "-"


def parent(args: argparse.Namespace) -> None:
    print(f"{args.n:,} no-op jobs through map, {NODES} nodes x 1 loop x 1 cpu worker vs "
          f"Dask LocalCluster({NODES} workers x 1 thread, worker-saturation inf); "
          f"{os.cpu_count()} cores; median of {args.rounds} rounds; Python "
          f"{sys.version.split()[0]}; distributed {_cluster.dask_version()}; asyncjobs from "
          f"{asyncjobs.__file__}", flush=True)
    variants = [v for v in VARIANTS if v != "dask" or "not installed" not in
                _cluster.dask_version()]
    runs = _harness.run_rounds(__file__, variants, ["--n", str(args.n)], args.rounds)
    print(f"\n{'variant':<15}{'median s':>9}{'min s':>8}{'max s':>8}{'jobs/s':>10}"
          f"{'client CPU s':>13}{'coord CPU s':>12}{'workers CPU s':>14}"
          f"{'client MiB':>11}{'coord MiB':>10}{'workers MiB':>12}")
    for v in variants:
        r = runs[v]
        med = _harness.median(r, "wall_s")
        print(f"{v:<15}{med:>9.3f}{_harness.fastest(r):>8.3f}"
              f"{max(x['wall_s'] for x in r):>8.3f}{args.n / med:>10,.0f}"
              f"{_harness.median(r, 'cpu_parent_s'):>13.3f}"
              f"{mib(_harness.median(r, 'coordinator_cpu_s'), 3):>12}"
              f"{_harness.median(r, 'workers_cpu_s'):>14.3f}"
              f"{_harness.peak(r, 'rss_parent_mib'):>11.1f}"
              f"{mib(_harness.peak(r, 'coordinator_mib')):>10}"
              f"{_harness.peak(r, 'workers_mib'):>12.1f}")
    print("(client: the measuring process, which for dask holds the scheduler; coord: "
          "the coordinator; workers: nodes or Dask workers with their processes, summed; "
          "CPU s over the timed span, medians; MiB: peaks over the rounds)")
    if "dask" not in runs:
        print("dask not installed: no ratio")
        return
    print()
    for v in ("asyncjobs-cpu", "asyncjobs-io"):
        ratio, low, high = _harness.paired_ratio(runs["dask"], runs[v])
        verdict = "met" if ratio >= TARGET else "NOT met"
        target = f"; target >= {TARGET:g}: {verdict}" if v == "asyncjobs-cpu" else ""
        print(f"{v} / dask jobs/s = {ratio:.2f} (median of the rounds' ratios; "
              f"{low:.2f}-{high:.2f}){target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--rounds", "--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2,000 jobs, 1 round")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick and not args.variant:
        args.n, args.rounds = 2_000, 1
    if args.variant:
        child(args.variant, args.n)
    else:
        parent(args)


if __name__ == "__main__":  # Dask's workers start by spawn and import this module
    main()
