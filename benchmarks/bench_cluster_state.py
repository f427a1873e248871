"""What the coordinator's durable state (``--state PATH.db``, issue 16) costs.

    python benchmarks/bench_cluster_state.py [--parts throughput,restart,latency]
        [--n 20000] [--restart-n 100000] [--latency-n 2000] [--rounds 3] [--cpu]
        [--dir DIR] [--quick]

Every variant runs in a fresh interpreter that starts its own processes on 127.0.0.1;
the rounds alternate the variants, and the ratios are paired round by round. The state
file is in a new temporary folder under ``--dir`` (default: the system's temporary
folder; the header prints its filesystem), never shared between variants.

1. ``throughput``: ``nostate-io`` against ``state-io`` (and with ``--cpu`` the cpu
   pair): coordinator (``--no-state`` or ``--state``) + 2 × ``node --loops 1
   --cpu-workers 1``; ``await cluster.map(noop_async, range(n))`` over
   ``asyncjobs.connect`` (as ``bench_cluster_noop.py``; start-up and a warm-up outside
   the timed span). Target: state ≥ 0.8 × nostate jobs/s.
2. ``restart``: a client process (``connect(session=...)``) has ``--restart-n`` jobs
   submitted (``stamp_then_wait``: appends a timestamp to a file as it starts, then waits
   for a gate file that never comes) to one ``node --loops 1 --cpu-workers 0
   --io-concurrency 2``, so all but 2 are queued on the coordinator; with ``history``,
   the session first ran ``--restart-n`` no-op jobs, so the file holds as many succeeded
   outcomes. Once the coordinator holds them all (its ``--http`` ``/state``), it is
   killed with SIGKILL by its PID and a new one started on the same port and file. Times
   from the new process's start: (a) its "listening" line; the node alive again and the
   client linked again (the client prints when its ``reconnects`` counter moves); (b) the
   first job started on the node after the kill (the first timestamp past it); (d) all
   jobs held again (``jobs_active``). (c) is the new coordinator's ``VmHWM`` once they
   are. ``nostate`` does the same without a file (the client's session is new to the
   restarted coordinator, which queues what it is sent again).
3. ``latency``: one ``await cluster.submit(noop_async, i)`` at a time, ``--latency-n``
   timed after 200 untimed; p50/p99/max, with and without ``--state``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

if str(Path(__file__).resolve().parent.parent) not in sys.path:  # for `benchmarks`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _cluster  # noqa: E402
import _harness  # noqa: E402
import psutil  # noqa: E402
from benchmarks import cluster_jobs  # noqa: E402

import asyncjobs  # noqa: E402

TARGET = 0.8
NODES = 2
SESSION = "bench-state-restart"
IO_CONCURRENCY = 2
#: the longest any step of the restart variant may take before the run is abandoned
STEP_TIMEOUT_S = 120.0
PARTS = ["throughput", "restart", "latency"]
THROUGHPUT = ["nostate-io", "state-io", "nostate-cpu", "state-cpu"]
RESTART = ["restart-nostate", "restart-state", "restart-history"]
LATENCY = ["latency-nostate", "latency-state"]


def state_args(folder: Path, state: bool) -> list[str]:
    return ["--state", str(folder / "coordinator.db")] if state else []


def state_mib(folder: Path) -> float:
    """The state file and its WAL, in MiB (0 without a file)."""
    return sum(p.stat().st_size for p in folder.glob("coordinator.db*")
               if p.is_file() and not p.name.endswith(".lock")) / 2**20


# -- 1. throughput ---------------------------------------------------------------------


async def throughput_variant(kind: str, state: bool, n: int, folder: Path
                             ) -> dict[str, float]:
    fn = cluster_jobs.noop if kind == "cpu" else cluster_jobs.noop_async
    warm = cluster_jobs.pid_after if kind == "cpu" else cluster_jobs.pid_after_async
    with _cluster.cluster(NODES, loops=1, cpu_workers=1,
                          coordinator_args=state_args(folder, state)) as (coordinator, nodes):
        async with asyncjobs.connect(coordinator.address) as cluster:
            await _cluster.wait_for_nodes(cluster, [x.name for x in nodes])
            await _cluster.warm_asyncjobs(cluster, warm, NODES)
            rss = _cluster.RssSampler()
            rss.watch("coordinator", coordinator.pid)
            rss.start()
            cpu0 = _cluster.tree_cpu_s(coordinator.pid)
            clock = _harness.Clock()
            results = await cluster.map(fn, range(n))
            timing = clock.stop()
            cpu1 = _cluster.tree_cpu_s(coordinator.pid)
            rss.stop()
            db_mib = state_mib(folder)
    assert results == list(range(n))
    return {**timing, "coordinator_mib": rss.peaks["coordinator"],
            "coordinator_cpu_s": cpu1 - cpu0, "db_mib": db_mib}


# -- 2. restart ------------------------------------------------------------------------


async def client_main(address: str, n: int, history: bool, stamps: str, gate: str) -> None:
    """The restart variant's client (its own process): optionally a batch of no-ops that
    leaves succeeded outcomes in the store, then ``n`` slow jobs it never sees end. It
    prints ``monotonic() event`` lines; it is killed by its PID."""
    def say(event: str) -> None:
        print(f"{time.monotonic():.6f} {event}", flush=True)

    async with asyncjobs.connect(address, session=SESSION) as cluster:
        if history:
            await cluster.map(cluster_jobs.noop_async, range(n), window=n)
            say("history-done")
        backend = cluster.backend
        task = asyncio.create_task(cluster.map(
            cluster_jobs.stamp_then_wait, [stamps] * n, [gate] * n, range(n), window=n))
        say("submitting")
        seen = backend.reconnects  # type: ignore[attr-defined]
        while not task.done():
            await asyncio.sleep(0.005)
            if backend.reconnects != seen:  # type: ignore[attr-defined]
                seen = backend.reconnects  # type: ignore[attr-defined]
                say("relinked")
        task.result()


def http_state(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/state", timeout=10) as reply:
        return json.loads(reply.read())  # type: ignore[no-any-return]


def http_port(coordinator: _cluster.Daemon) -> int:
    return int(coordinator.wait_for_line(r"http on \S+:(\d+)").group(1))


def stamps_after(path: Path, t: float) -> float | None:
    """The first timestamp in ``path`` at or after ``t``, if any."""
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and float(parts[0]) >= t:
                return float(parts[0])
    return None


def client_events(path: Path) -> list[tuple[float, str]]:
    events = []
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            t, _, what = line.partition(" ")
            with contextlib.suppress(ValueError):
                events.append((float(t), what))
    return events


def until(what: str, check: object, timeout_s: float = STEP_TIMEOUT_S,
          every_s: float = 0.005) -> object:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        found = check()  # type: ignore[operator]
        if found:
            return found
        time.sleep(every_s)
    raise RuntimeError(f"timed out waiting for {what}")


def restart_variant(mode: str, n: int, folder: Path) -> dict[str, float]:
    state = mode != "nostate"
    coord_args = [*state_args(folder, state), "--http", "127.0.0.1:0"]
    stamps, gate = folder / "stamps.txt", folder / "gate"
    client_out = folder / "client.out"
    started: list[_cluster.Daemon] = []
    client: subprocess.Popen[bytes] | None = None
    try:
        old = _cluster.Coordinator(folder, *coord_args)
        started.append(old)
        port = int(old.address.rsplit(":", 1)[1])
        node = _cluster.Node(folder, old.address, "n0", loops=1, cpu_workers=0,
                             io_concurrency=IO_CONCURRENCY)
        started.append(node)
        http = http_port(old)
        with open(client_out, "wb") as out:
            client = subprocess.Popen(
                [sys.executable, __file__, "--variant", "client", "--address", old.address,
                 "--restart-n", str(n), "--stamps", str(stamps), "--gate", str(gate),
                 *(["--history"] if mode == "history" else [])],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=_cluster.env_with_root(), cwd=_cluster.ROOT)

        def all_held(port: int) -> bool:
            if client is not None and client.poll() is not None:
                raise RuntimeError(f"the client exited:\n{client_out.read_text()[-3000:]}")
            data = http_state(port)
            return int(data["jobs_active"]) >= n  # type: ignore[call-overload]

        t_submit0 = time.monotonic()
        until("the jobs held before the kill", lambda: all_held(http), timeout_s=600,
              every_s=0.2)
        submit_s = time.monotonic() - t_submit0
        old_hwm = _cluster.vm_hwm_mib(old.pid)
        db_mib = state_mib(folder)
        time.sleep(0.5)  # the node has its IO_CONCURRENCY jobs running

        t_kill = time.monotonic()
        os.kill(old.pid, signal.SIGKILL)
        old.proc.wait(10)
        t0 = time.monotonic()
        new = _cluster.Daemon(["coordinator", "--listen", f"127.0.0.1:{port}",
                               *(coord_args if state else ["--no-state", *coord_args])],
                              folder / "coordinator-restarted.log")
        started.append(new)
        until("the restarted coordinator's listening line",
              lambda: "listening on" in new.text() or new.proc.poll() is not None)
        t_listen = time.monotonic()
        if new.proc.poll() is not None:
            raise RuntimeError(f"the restarted coordinator exited:\n{new.text()[-3000:]}")
        http = http_port(new)
        t_first = t_node = t_all = None
        next_http = 0.0
        end = time.monotonic() + STEP_TIMEOUT_S
        while None in (t_first, t_node, t_all):
            if time.monotonic() > end:
                raise RuntimeError(f"after the restart: first job {t_first}, node {t_node}, "
                                   f"all held {t_all}\n{new.text()[-3000:]}")
            if t_first is None:
                t_first = stamps_after(stamps, t_kill)
            now = time.monotonic()
            if now >= next_http and None in (t_node, t_all):  # every 20 ms at most
                next_http = now + 0.02
                data = http_state(http)
                now = time.monotonic()
                if t_node is None and any(x["alive"] for x in data["nodes"]):  # type: ignore[attr-defined]
                    t_node = now
                if t_all is None and int(data["jobs_active"]) >= n:  # type: ignore[call-overload]
                    t_all = now
            time.sleep(0.005)
        new_hwm = _cluster.vm_hwm_mib(new.pid)
        relinks = [t for t, what in client_events(client_out) if what == "relinked"]
        t_relink = relinks[0] if relinks else float("nan")
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait(10)
        for d in reversed(started):  # the node first, then the coordinators
            with contextlib.suppress(Exception):
                d.stop()
    return {"wall_s": t_first - t0, "listen_s": t_listen - t0, "node_s": t_node - t0,
            "relink_s": t_relink - t0, "first_s": t_first - t0, "all_s": t_all - t0,
            "kill_to_start_s": t0 - t_kill, "new_mib": new_hwm, "old_mib": old_hwm,
            "db_mib": db_mib, "submit_s": submit_s}


# -- 3. latency ------------------------------------------------------------------------


async def latency_variant(state: bool, n: int, warmup: int, folder: Path) -> dict[str, float]:
    with _cluster.cluster(NODES, loops=1, cpu_workers=1,
                          coordinator_args=state_args(folder, state)) as (coordinator, nodes):
        async with asyncjobs.connect(coordinator.address) as cluster:
            await _cluster.wait_for_nodes(cluster, [x.name for x in nodes])
            await _cluster.warm_asyncjobs(cluster, cluster_jobs.pid_after_async, NODES)
            for i in range(warmup):
                assert await cluster.submit(cluster_jobs.noop_async, i) == i
            lat = []
            clock = _harness.Clock()
            for i in range(n):
                t = time.perf_counter()
                result = await cluster.submit(cluster_jobs.noop_async, i)
                lat.append(time.perf_counter() - t)
                assert result == i
            timing = clock.stop()
    ms = sorted(x * 1000 for x in lat)
    return {**timing, "p50_ms": _cluster.percentile(ms, 0.5),
            "p99_ms": _cluster.percentile(ms, 0.99), "max_ms": ms[-1],
            "mean_ms": statistics.fmean(ms)}


# -- the parent ------------------------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    if args.variant == "client":
        asyncjobs.run(lambda: client_main(args.address, args.restart_n, args.history,
                                          args.stamps, args.gate))
        return
    with tempfile.TemporaryDirectory(prefix="asyncjobs-state-", dir=args.dir) as tmp:
        folder = Path(tmp)
        v = args.variant
        if v in THROUGHPUT:
            mode, kind = v.split("-")
            result = asyncjobs.run(lambda: throughput_variant(kind, mode == "state", args.n,
                                                              folder))
        elif v in RESTART:
            result = restart_variant(v.split("-")[1], args.restart_n, folder)
        else:
            result = asyncjobs.run(lambda: latency_variant(v.endswith("-state"),
                                                           args.latency_n, 200, folder))
    _harness.emit(result)


def filesystem(path: str) -> str:
    best = None
    for part in psutil.disk_partitions(all=True):
        if path.startswith(part.mountpoint) and (
                best is None or len(part.mountpoint) > len(best.mountpoint)):
            best = part
    return f"{best.fstype} on {best.device}" if best else "unknown"


def rng(runs: list[dict[str, float]], key: str) -> str:
    values = [r[key] for r in runs]
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def parent(args: argparse.Namespace) -> None:
    folder = args.dir or tempfile.gettempdir()
    print(f"{os.cpu_count()} cores; Python {sys.version.split()[0]}; state files under "
          f"{folder} ({filesystem(os.path.realpath(folder))}); repository on "
          f"{filesystem(str(_cluster.ROOT))}; median of {args.rounds} rounds (range); "
          f"asyncjobs from {asyncjobs.__file__}", flush=True)
    common = ["--n", str(args.n), "--restart-n", str(args.restart_n), "--latency-n",
              str(args.latency_n), *(["--dir", args.dir] if args.dir else [])]
    if "throughput" in args.parts:
        variants = THROUGHPUT if args.cpu else THROUGHPUT[:2]
        runs = _harness.run_rounds(__file__, variants, common, args.rounds)
        print(f"\n1. {args.n:,} no-op jobs through map, coordinator + {NODES} nodes x 1 loop "
              f"x 1 cpu worker")
        print(f"{'variant':<13}{'median s':>9}{'min s':>8}{'max s':>8}{'jobs/s':>9}"
              f"{'coord CPU s':>12}{'coord MiB':>10}{'client MiB':>11}{'db MiB':>8}")
        for v in variants:
            r = runs[v]
            med = _harness.median(r, "wall_s")
            print(f"{v:<13}{med:>9.3f}{_harness.fastest(r):>8.3f}"
                  f"{max(x['wall_s'] for x in r):>8.3f}{args.n / med:>9,.0f}"
                  f"{_harness.median(r, 'coordinator_cpu_s'):>12.3f}"
                  f"{_harness.peak(r, 'coordinator_mib'):>10.1f}"
                  f"{_harness.peak(r, 'rss_parent_mib'):>11.1f}"
                  f"{_harness.peak(r, 'db_mib'):>8.1f}")
        print("(coord CPU s: the coordinator's over the timed span, median; MiB: peaks over "
              "the rounds; db MiB: the state file with its WAL after the run)")
        for kind in ("io", "cpu") if args.cpu else ("io",):
            ratio, low, high = _harness.paired_ratio(runs[f"nostate-{kind}"],
                                                     runs[f"state-{kind}"])
            verdict = "met" if ratio >= TARGET else "NOT met"
            print(f"state-{kind} / nostate-{kind} jobs/s = {ratio:.3f} (median of the rounds' "
                  f"ratios; {low:.3f}-{high:.3f}); target >= {TARGET:g}: {verdict}")
    if "restart" in args.parts:
        runs = _harness.run_rounds(__file__, RESTART, common, args.rounds)
        print(f"\n2. kill -9 of the coordinator holding {args.restart_n:,} jobs of one client "
              f"(1 node, --io-concurrency {IO_CONCURRENCY}); seconds from the new "
              f"coordinator's start, median (range) of {args.rounds}")
        print(f"{'variant':<17}{'(a) listening':>21}{'node back':>21}{'client back':>21}"
              f"{'(b) 1st job':>21}{'(d) all held':>21}{'(c) MiB':>8}{'old MiB':>8}"
              f"{'db MiB':>7}")
        for v in RESTART:
            r = runs[v]
            print(f"{v:<17}{rng(r, 'listen_s'):>21}{rng(r, 'node_s'):>21}"
                  f"{rng(r, 'relink_s'):>21}{rng(r, 'first_s'):>21}{rng(r, 'all_s'):>21}"
                  f"{_harness.peak(r, 'new_mib'):>8.1f}{_harness.peak(r, 'old_mib'):>8.1f}"
                  f"{_harness.peak(r, 'db_mib'):>7.1f}")
        print("((c) MiB: the new coordinator's VmHWM once it held every job again; old MiB: "
              "the killed one's, before the kill; db MiB: the file and its WAL before the "
              "kill; node/client back: the node alive in /state (polled every 20 ms), the "
              "client's reconnects counter moved (polled every 5 ms); the client's backoff "
              "is 0.1 s doubled up to 2 s, each sleep x0.5-1 jitter, the node's 0.1 s "
              "doubled up to 5 s, full jitter)")
    if "latency" in args.parts:
        runs = _harness.run_rounds(__file__, LATENCY, common, args.rounds)
        print(f"\n3. one submit round trip at a time, {args.latency_n:,} timed after 200, "
              f"{NODES} nodes x 1 loop; ms, median (range) of the rounds' figures")
        print(f"{'variant':<17}{'p50 ms':>21}{'p99 ms':>21}{'max ms':>21}")
        for v in LATENCY:
            r = runs[v]
            print(f"{v:<17}{rng(r, 'p50_ms'):>21}{rng(r, 'p99_ms'):>21}{rng(r, 'max_ms'):>21}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS),
                        type=lambda s: [p for p in s.split(",") if p])
    parser.add_argument("--n", type=int, default=20_000, help="throughput jobs")
    parser.add_argument("--restart-n", type=int, default=100_000, help="queued jobs")
    parser.add_argument("--latency-n", type=int, default=2_000)
    parser.add_argument("--rounds", "--repeat", type=int, default=3)
    parser.add_argument("--cpu", action="store_true", help="the cpu pair too")
    parser.add_argument("--dir", help="where the state files go (default: $TMPDIR)")
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 round")
    parser.add_argument("--variant", choices=[*THROUGHPUT, *RESTART, *LATENCY, "client"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--stamps", help=argparse.SUPPRESS)
    parser.add_argument("--gate", help=argparse.SUPPRESS)
    parser.add_argument("--history", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick and not args.variant:
        args.n, args.restart_n, args.latency_n, args.rounds = 2_000, 5_000, 300, 1
    if args.variant:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
