"""The scheduling side's per-job cost on a cluster, and ``Runner(loops=2)``'s start-up.

    python benchmarks/bench_cluster_overhead.py [--n 20000] [--repeat 5] [--base SRC]

Variants, each in a fresh interpreter, once per round, alternating:

- ``loops1``, ``loops2``: ``Runner(loops=N).map`` of ``n`` trivial io jobs
  (``tests.jobs:aio_add``), after a warm-up map of 2,000; also how long entering the
  Runner took (its start-up: serve, start the node, its loops register).
- ``connect``: ``connect().map`` of the same against ``asyncjobs coordinator`` and one
  ``asyncjobs node --loops 1`` (started before, not timed).
- ``core``: ``core.coordination.Coordination`` alone, no IO: one client submits ``n``
  jobs through a window of 4,096, two loops of 1,024 io slots answer every ``Assign``
  at once (1,000 results a frame). The scheduling side's own cost, without the noise of
  other processes. (Not part of the default set.)

With ``--base SRC`` (a ``src`` directory of another tree, e.g. ``git archive main src``
unpacked), every variant also runs on that tree in the same rounds, and the ratios
base/ours are printed: before and after, side by side on one noisy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = str(ROOT / "src")
VARIANTS = ("loops1", "loops2", "connect", "core")
WARMUP = 2000
CHILD_TIMEOUT_S = 300


async def _map(runner: object, n: int) -> dict[str, float]:
    from tests import jobs

    await runner.map(jobs.aio_add, range(WARMUP), [1] * WARMUP)  # type: ignore[attr-defined]
    wall, cpu = time.perf_counter(), time.process_time()
    res = await runner.map(jobs.aio_add, range(n), [1] * n)  # type: ignore[attr-defined]
    out = {"map_s": time.perf_counter() - wall, "map_cpu_s": time.process_time() - cpu}
    assert len(res) == n and res[-1] == n
    return out


async def _runner(loops: int, n: int) -> dict[str, float]:
    import asyncjobs

    began = time.perf_counter()
    async with asyncjobs.Runner(loops=loops, cpu_workers=2) as runner:
        opened = time.perf_counter() - began
        timing = await _map(runner, n)
    return {**timing, "open_s": opened}


def _start_cluster() -> tuple[list[subprocess.Popen[bytes]], str]:
    env = {**os.environ, "ASYNCJOBS_SECRET": "bench-secret"}
    coord = subprocess.Popen(
        [sys.executable, "-m", "asyncjobs", "coordinator", "--listen", "127.0.0.1:0",
         "--no-state"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env)
    assert coord.stderr is not None
    line = coord.stderr.readline().decode()
    found = re.search(r"listening on (\S+)", line)
    if found is None:
        coord.kill()
        raise RuntimeError(f"the coordinator said: {line!r}")
    address = found.group(1)
    node = subprocess.Popen(
        [sys.executable, "-m", "asyncjobs", "node", "--connect", address, "--loops", "1",
         "--cpu-workers", "1", "--io-concurrency", "1024", "--name", "bench"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return [coord, node], address


async def _connect(n: int) -> dict[str, float]:
    import asyncjobs

    procs, address = _start_cluster()
    try:
        async with asyncjobs.connect(address, secret="bench-secret") as cluster:
            for _ in range(500):  # until the node registered
                if cluster.backend.capacity(asyncjobs.JobKind.IO):
                    break
                await asyncio.sleep(0.02)
            return await _map(cluster, n)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(10)


def _core(n: int) -> dict[str, float]:
    from asyncjobs.core.coordination import Coordination, Send
    from asyncjobs.model import JobKind
    from asyncjobs.protocol.messages import (
        Assign,
        AttemptResult,
        JobSpec,
        Outcome,
        Register,
        Result,
        Submit,
    )

    c = Coordination()
    c.client_joined(1, 1.0)
    for i, link in enumerate((2, 3)):
        c.node_joined(link, Register("local", i, 2, {JobKind.IO: 1024, JobKind.CPU: 1,
                                                     JobKind.THREAD: 4}), 1.0)
    assigned: dict[int, list[typing.Any]] = {2: [], 3: []}
    counts = {"sent": 0, "done": 0}

    def take(out: list[typing.Any]) -> None:
        for o in out:
            if type(o) is Send and type(o.msg) is Assign:
                assigned[o.link].extend(o.msg.attempts)
            elif type(o) is Send and type(o.msg) is Outcome:
                counts["done"] += len(o.msg.jobs)

    wall, cpu = time.perf_counter(), time.process_time()
    while counts["done"] < n:
        sent = counts["sent"]
        k = min(4096 - (sent - counts["done"]), n - sent)
        if k > 0:
            take(c.message(1, Submit(tuple(
                JobSpec(f"aio_add-{sent + j}", "tests.jobs:aio_add", (sent + j, 1), None,
                        JobKind.IO, None, 0, 1.0) for j in range(k))), 1.0))
            counts["sent"] += k
        for link in (2, 3):
            atts, assigned[link] = assigned[link], []
            for s in range(0, len(atts), 1000):
                take(c.message(link, Result(tuple(
                    AttemptResult(a.job_id, a.attempt, a.args[0] + 1, None, 0.0001)
                    for a in atts[s:s + 1000])), 1.0))
    return {"map_s": time.perf_counter() - wall, "map_cpu_s": time.process_time() - cpu}


def child(variant: str, n: int) -> None:
    import asyncjobs

    if variant == "core":
        result = _core(n)
    elif variant == "connect":
        result = asyncjobs.run(lambda: _connect(n))
    else:
        result = asyncjobs.run(lambda: _runner(int(variant[-1]), n))
    print(json.dumps(result), flush=True)


def run_child(variant: str, tree: str, n: int) -> dict[str, float]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    # the tree under test first, then the repository root for ``tests.jobs``
    env["PYTHONPATH"] = os.pathsep.join((tree, str(ROOT)))
    proc = subprocess.run([sys.executable, __file__, "--variant", variant, "--n", str(n)],
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, env=env,
                          check=False, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} on {tree} exited {proc.returncode}:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def parent(args: argparse.Namespace) -> None:
    trees = {"ours": OURS} if args.base is None else {"base": args.base, "ours": OURS}
    runs: dict[tuple[str, str], list[dict[str, float]]] = {
        (t, v): [] for t in trees for v in args.variants}
    print(f"{args.n:,} io no-op jobs (tests.jobs:aio_add) per map, median of "
          f"{args.repeat} rounds; trees: {trees}", flush=True)
    for r in range(args.repeat):
        for v in args.variants:
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            for t in order:
                got = run_child(v, trees[t], args.n)
                runs[(t, v)].append(got)
                print(f"  round {r + 1}/{args.repeat} {t:<5}{v:<8} map {got['map_s']:.3f} s"
                      + (f" open {got['open_s']:.3f} s" if "open_s" in got else ""),
                      file=sys.stderr, flush=True)
    print(f"\n{'tree':<6}{'variant':<9}{'map s':>8}{'jobs/s':>9}{'cpu s':>8}{'open s':>8}")
    for (t, v), rs in runs.items():
        med = statistics.median(x["map_s"] for x in rs)
        cpu = statistics.median(x["map_cpu_s"] for x in rs)
        opened = (f"{statistics.median(x['open_s'] for x in rs):>8.3f}"
                  if "open_s" in rs[0] else f"{'':>8}")
        print(f"{t:<6}{v:<9}{med:>8.3f}{args.n / med:>9,.0f}{cpu:>8.3f}{opened}")
    if args.base is not None:
        print("\nratios base/ours, paired by round (median [min..max]); above 1: ours faster")
        for v in args.variants:
            for key in ("map_s", "open_s"):
                if key not in runs[("ours", v)][0]:
                    continue
                ratios = sorted(b[key] / o[key] for b, o in
                                zip(runs[("base", v)], runs[("ours", v)], strict=True))
                print(f"  {v:<8}{key:<7}{statistics.median(ratios):6.2f} "
                      f"[{ratios[0]:.2f}..{ratios[-1]:.2f}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--base", help="a src directory to compare with (before)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS[:3]))
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        child(args.variant, args.n)
    else:
        parent(args)


if __name__ == "__main__":
    main()
