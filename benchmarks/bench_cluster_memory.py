"""The coordinator's memory against the size of a flow: ``asyncjobs run FILE --connect``
of a no-op ``foreach`` of 100,000 and of 1,000,000 items.

    python benchmarks/bench_cluster_memory.py [--sizes 100000,1000000] [--rounds 3] [--state]

Each (size, round) runs in a fresh interpreter that starts ``asyncjobs coordinator`` and
2 × ``asyncjobs node --loops 1 --cpu-workers 1`` on 127.0.0.1, waits for the nodes,
then runs the whole command ``asyncjobs run FLOW --connect ADDR --quiet`` from the
repository root (timed from outside: interpreter start to exit). The flow::

    jobs:
      noop:
        foreach: {range: N}
        call: benchmarks.cluster_jobs:noop    # a plain def: a cpu job on the nodes
        args: ["{{ item }}"]

Measured: the coordinator's peak RSS, as ``VmHWM`` from ``/proc/PID/status`` read just
before it is stopped, and as the peak of ``psutil`` samples every 0.1 s; the peak RSS
of the ``run`` command (sampled likewise) and of the nodes with their processes (summed).
``--state`` gives the coordinator ``--state PATH.db`` (SQLite) as well as running it
without. Target: the coordinator's peak at the largest size within 1.5 × the smallest.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

if str(Path(__file__).resolve().parent.parent) not in sys.path:  # for `benchmarks`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _cluster  # noqa: E402
import _harness  # noqa: E402

import asyncjobs  # noqa: E402

TARGET = 1.5
NODES = 2
FLOW = """jobs:
  noop:
    foreach: {{range: {n}}}
    call: benchmarks.cluster_jobs:noop
    args: ["{{{{ item }}}}"]
"""


async def wait_for_nodes(address: str, names: list[str]) -> None:
    async with asyncjobs.connect(address) as cluster:
        await _cluster.wait_for_nodes(cluster, names)


def child(n: int, state: bool) -> None:
    try:
        result = measure(n, state)
    except _cluster.DaemonExited as exc:
        if not state or "--state" not in str(exc):
            raise
        result = {"wall_s": float("nan"), "skipped": 1.0}  # the coordinator refused --state
    _harness.emit(result)


def measure(n: int, state: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="asyncjobs-bench-") as tmp:
        folder = Path(tmp)
        flow = folder / f"noop{n}.yaml"
        flow.write_text(FLOW.format(n=n))
        coord_args = ["--state", str(folder / "coordinator.db")] if state else []
        with _cluster.cluster(NODES, loops=1, cpu_workers=1,
                              coordinator_args=coord_args) as (coordinator, nodes):
            asyncjobs.run(lambda: wait_for_nodes(coordinator.address, [x.name for x in nodes]))
            rss = _cluster.RssSampler()
            rss.watch("coordinator", coordinator.pid)
            for node in nodes:
                rss.watch(node.name, node.pid)
            rss.start()
            argv = [*_cluster.asyncjobs_argv(), "run", str(flow), "--connect",
                    coordinator.address, "--quiet"]
            timing, returncode, out, err = _cluster.run_watched(argv, rss, "client")
            rss.stop()
            hwm = _cluster.vm_hwm_mib(coordinator.pid)
            if returncode != 0:
                raise RuntimeError(f"run exited {returncode}:\n{out}\n{err}")
    return {**timing, "coordinator_hwm_mib": hwm, "coordinator_mib": rss.peaks["coordinator"],
            "client_mib": rss.peaks["client"],
            "nodes_mib": sum(rss.peaks[x.name] for x in nodes)}


def parent(args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    modes = [False, True] if args.state else [False]
    print(f"asyncjobs run FLOW --connect: a no-op cpu foreach; coordinator + {NODES} nodes x "
          f"1 loop x 1 cpu worker; {os.cpu_count()} cores; median of {args.rounds} "
          f"round(s); Python {sys.version.split()[0]}; asyncjobs from {asyncjobs.__file__}",
          flush=True)
    variants = [f"{n}{'-state' if st else ''}" for st in modes for n in sizes]
    runs = _harness.run_rounds(__file__, variants, [], args.rounds)
    print(f"\n{'items':<16}{'wall s':>8}{'items/s':>9}{'coord HWM MiB':>14}{'coord MiB':>10}"
          f"{'run MiB':>8}{'nodes MiB':>10}")
    for v in variants:
        r = runs[v]
        if any(x.get("skipped") for x in r):
            print(f"{v:<16}skipped: the coordinator refused --state")
            continue
        n = int(v.split("-")[0])
        med = _harness.median(r, "wall_s")
        print(f"{v:<16}{med:>8.2f}{n / med:>9,.0f}"
              f"{_harness.median(r, 'coordinator_hwm_mib'):>14.1f}"
              f"{_harness.median(r, 'coordinator_mib'):>10.1f}"
              f"{_harness.median(r, 'client_mib'):>8.1f}{_harness.median(r, 'nodes_mib'):>10.1f}")
    print("(coord HWM: VmHWM of the coordinator; coord / run / nodes MiB: peaks of samples "
          "every 0.1 s; medians over the rounds)")
    print()
    for st in modes:
        suffix = "-state" if st else ""
        if any(x.get("skipped") for x in runs[f"{sizes[0]}{suffix}"]):
            continue
        small = _harness.median(runs[f"{sizes[0]}{suffix}"], "coordinator_hwm_mib")
        large = _harness.median(runs[f"{sizes[-1]}{suffix}"], "coordinator_hwm_mib")
        ratio = large / small
        verdict = "met" if ratio <= TARGET else "NOT met"
        print(f"coordinator{' --state' if st else ''}: peak RSS at {sizes[-1]:,} / at "
              f"{sizes[0]:,} = {large:.1f} / {small:.1f} MiB = {ratio:.2f}; target <= "
              f"{TARGET}: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--rounds", "--repeat", type=int, default=3)
    parser.add_argument("--state", action="store_true",
                        help="also run the coordinator with --state (SQLite)")
    parser.add_argument("--quick", action="store_true", help="sizes 10,000 and 100,000")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick and not args.variant:
        args.sizes, args.rounds = "10000,100000", 1
    if args.variant:
        n, _, st = args.variant.partition("-")
        child(int(n), st == "state")
    else:
        parent(args)


if __name__ == "__main__":
    main()
