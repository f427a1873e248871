"""One job at a time on a cluster: submit → result round trips, asyncjobs against Dask.

    python benchmarks/bench_cluster_latency.py [--n 2000] [--warmup 200] [--rounds 3] [--quick]

Variants, each in a fresh interpreter that starts its own cluster on 127.0.0.1 (the same
clusters as ``bench_cluster_noop.py``: coordinator + 2 × ``node --loops 1 --cpu-workers
1``, Dask ``LocalCluster(2 workers x 1 thread)``, worker-saturation inf):

- ``asyncjobs-io``: ``await cluster.submit(noop_async, i)``, an io job on a node's loop;
- ``asyncjobs-cpu``: ``await cluster.submit(noop, i)``, a cpu job in a node's worker;
- ``dask``: ``client.submit(noop, i).result()`` (distinct ``i``: no cached result).

After ``--warmup`` round trips that are not counted, ``--n`` sequential round trips are
timed one by one (``perf_counter`` around each). Per round: p50, p99 and max; the table
gives the median of the rounds' figures. Target: asyncjobs-io p99 < 2 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

if str(Path(__file__).resolve().parent.parent) not in sys.path:  # for `benchmarks`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _cluster  # noqa: E402
import _harness  # noqa: E402
from benchmarks import cluster_jobs  # noqa: E402

import asyncjobs  # noqa: E402

TARGET_P99_MS = 2.0
NODES = 2
VARIANTS = ["asyncjobs-io", "asyncjobs-cpu", "dask"]


def summary(lat_s: list[float]) -> dict[str, float]:
    lat = sorted(x * 1000 for x in lat_s)
    return {"p50_ms": _cluster.percentile(lat, 0.50), "p99_ms": _cluster.percentile(lat, 0.99),
            "max_ms": lat[-1], "mean_ms": statistics.fmean(lat)}


async def asyncjobs_variant(kind: str, n: int, warmup: int) -> dict[str, float]:
    fn = cluster_jobs.noop if kind == "cpu" else cluster_jobs.noop_async
    warm = cluster_jobs.pid_after if kind == "cpu" else cluster_jobs.pid_after_async
    with _cluster.cluster(NODES, loops=1, cpu_workers=1) as (coordinator, nodes):
        async with asyncjobs.connect(coordinator.address) as cluster:
            await _cluster.wait_for_nodes(cluster, [x.name for x in nodes])
            await _cluster.warm_asyncjobs(cluster, warm, NODES)
            for i in range(warmup):
                assert await cluster.submit(fn, i) == i
            lat = []
            clock = _harness.Clock()
            for i in range(n):
                t = time.perf_counter()
                result = await cluster.submit(fn, i)
                lat.append(time.perf_counter() - t)
                assert result == i
            timing = clock.stop()
    return {**timing, **summary(lat)}


def dask_variant(n: int, warmup: int) -> dict[str, float]:
    with _cluster.dask_cluster(NODES) as (_, client):
        _cluster.warm_dask(client, cluster_jobs.pid_after, NODES)
        for i in range(warmup):
            assert client.submit(cluster_jobs.noop, -1 - i).result() == -1 - i  # type: ignore[attr-defined]
        lat = []
        clock = _harness.Clock()
        for i in range(n):
            t = time.perf_counter()
            result = client.submit(cluster_jobs.noop, i).result()  # type: ignore[attr-defined]
            lat.append(time.perf_counter() - t)
            assert result == i
        timing = clock.stop()
    return {**timing, **summary(lat)}


def child(variant: str, n: int, warmup: int) -> None:
    if variant == "dask":
        timing = dask_variant(n, warmup)
    else:
        kind = variant.split("-")[1]
        timing = asyncjobs.run(lambda: asyncjobs_variant(kind, n, warmup))
    _harness.emit(timing)


def parent(args: argparse.Namespace) -> None:
    print(f"{args.n:,} sequential submit -> result round trips after {args.warmup} "
          f"warm-up ones; {NODES} nodes x 1 loop x 1 cpu worker vs Dask LocalCluster("
          f"{NODES} workers x 1 thread); {os.cpu_count()} cores; median of {args.rounds} "
          f"rounds; Python {sys.version.split()[0]}; distributed {_cluster.dask_version()}; "
          f"asyncjobs from {asyncjobs.__file__}", flush=True)
    variants = [v for v in VARIANTS if v != "dask" or "not installed" not in
                _cluster.dask_version()]
    runs = _harness.run_rounds(__file__, variants,
                               ["--n", str(args.n), "--warmup", str(args.warmup)], args.rounds)
    print(f"\n{'variant':<15}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}{'mean ms':>8}"
          f"{'p99 range':>14}{'jobs/s':>8}{'client CPU s':>13}{'client MiB':>11}")
    for v in variants:
        r = runs[v]
        p99s = sorted(x["p99_ms"] for x in r)
        print(f"{v:<15}{_harness.median(r, 'p50_ms'):>8.3f}{_harness.median(r, 'p99_ms'):>8.3f}"
              f"{_harness.median(r, 'max_ms'):>8.2f}{_harness.median(r, 'mean_ms'):>8.3f}"
              f"{f'{p99s[0]:.2f}-{p99s[-1]:.2f}':>14}"
              f"{args.n / _harness.median(r, 'wall_s'):>8,.0f}"
              f"{_harness.median(r, 'cpu_parent_s'):>13.3f}"
              f"{_harness.peak(r, 'rss_parent_mib'):>11.1f}")
    print()
    p99 = _harness.median(runs["asyncjobs-io"], "p99_ms")
    verdict = "met" if p99 < TARGET_P99_MS else "NOT met"
    print(f"asyncjobs-io p99 = {p99:.3f} ms (median of the rounds); target < "
          f"{TARGET_P99_MS:g} ms: {verdict}")
    if "dask" in runs:
        for v in ("asyncjobs-io", "asyncjobs-cpu"):
            for q in ("p50_ms", "p99_ms"):
                ratio = _harness.median(runs["dask"], q) / _harness.median(runs[v], q)
                print(f"dask / {v} {q[:3]} = {ratio:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--rounds", "--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="300 round trips, 1 round")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick and not args.variant:
        args.n, args.warmup, args.rounds = 300, 50, 1
    if args.variant:
        child(args.variant, args.n, args.warmup)
    else:
        parent(args)


if __name__ == "__main__":  # Dask's workers start by spawn and import this module
    main()
