"""A CPU-bound endpoint of a Starlette app under uvicorn, three ways: asyncjobs
(``runner.submit``), ``ProcessPoolExecutor`` + ``loop.run_in_executor``, and
``anyio.to_process.run_sync``; throughput, latency and memory, and answers in time
under a per-request deadline.

    python benchmarks/webapp.py [--requests 2000] [--concurrency 64] [--tries 10000]
        [--callers 16] [--per-caller 25] [--deadline 0.2] [--workers 2] [--repeat 3]
        [--scenarios throughput,deadline] [--server module|script]

The app is ``benchmarks/webapp_server.py`` (one handler; the variant is an environment
variable). Each variant runs in its own fresh measuring interpreter, once per round,
the variants alternating (``_harness``); that interpreter starts a fresh uvicorn server
(one process, uvloop, httptools, access log off) with ``--workers`` worker processes,
waits until it answers, warms it up, then measures from an aiohttp client on uvloop:

- ``throughput`` (variants ``asyncjobs``, ``ppe``, ``anyio``): after a warm-up burst of
  ``2 x concurrency`` requests, ``--requests`` GETs of ``/pi?tries=N`` (one cpu job
  each), ``--concurrency`` at a time: req/s, p50/p99 latency as the client sees it.
- ``deadline`` (variants ``*-deadline``): ``--callers`` concurrent callers, each making
  ``--per-caller`` requests one after the other, each ``/spin?ms=X&deadline=D``: a cpu
  job of X ms (5-35, uniform, from a seeded generator: the same sequence for every
  variant) awaited inside ``asyncio.timeout(D)`` in the handler. An answer in time is a
  200; a miss is a 504 ``DeadlineExceeded``; anything else is an *innocent failure*.

A thread of the measuring interpreter samples the server's process tree every 10 ms
(``/proc/PID/task/*/children``, recursively, and ``statm`` for RSS: what psutil reads,
without its scan of every process on the machine, 3.5 ms a sample here): *server MiB*
is the peak of the RSS summed over uvicorn and its workers (a forked worker counts the
pages it shares with its parent), *workers* the worker processes alive after the
warm-up, *started* those first seen after it (replacements of killed workers; sampled,
so a worker that lived under 10 ms would be missed), *alive* those alive at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import _harness

HERE = Path(__file__).resolve().parent
BASE_VARIANTS = ["asyncjobs", "ppe", "anyio"]
DEADLINE_VARIANTS = ["asyncjobs", "asyncjobs-shield", "ppe", "anyio"]
SCENARIOS = {"throughput": BASE_VARIANTS,
             "deadline": [f"{v}-deadline" for v in DEADLINE_VARIANTS]}
TARGET_IN_TIME = 0.9
SEED = 19
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
SAMPLE_S = 0.01


# -- the server and its process tree ----------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (of any of its threads); [] once it is gone."""
    found: list[int] = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        with contextlib.suppress(OSError), open(path) as f:
            found.extend(int(c) for c in f.read().split())
    return found


def descendants(pid: int) -> list[int]:
    out, todo = [], children(pid)
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(children(child))
    return out


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_BYTES
    except (OSError, IndexError):
        return 0


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class TreeSampler:
    """Samples a process tree from a thread: peak summed RSS, every worker PID seen."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.peak_rss = 0
        self.seen: dict[int, float] = {}  # worker pid -> when first seen
        self._not_workers: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-sampler", daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def reset_peak(self) -> None:
        self.peak_rss = 0

    def workers_since(self, t: float) -> int:
        return sum(1 for first in self.seen.values() if first > t)

    def workers_alive(self) -> int:
        return sum(1 for pid in descendants(self.root) if pid not in self._not_workers)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.sample()

    def sample(self) -> None:
        pids = descendants(self.root)
        now = time.monotonic()
        for pid in pids:
            if pid in self.seen or pid in self._not_workers:
                continue
            if "resource_tracker" in cmdline(pid):
                self._not_workers.add(pid)
            else:
                self.seen[pid] = now
        total = rss_bytes(self.root) + sum(rss_bytes(p) for p in pids)
        self.peak_rss = max(self.peak_rss, total)


def server_command(how: str, port: int) -> list[str]:
    args = ["webapp_server:app", "--app-dir", str(HERE), "--host", "127.0.0.1",
            "--port", str(port), "--loop", "uvloop", "--http", "httptools",
            "--no-access-log", "--log-level", "warning"]
    if how == "script":  # the console script, as `uvicorn ...` is typed
        script = shutil.which("uvicorn", path=os.path.dirname(sys.executable))
        if script is None:
            raise SystemExit("no uvicorn script beside this interpreter")
        return [script, *args]
    return [sys.executable, "-m", "uvicorn", *args]


# -- the client ---------------------------------------------------------------------------


async def wait_serving(session: Any, base: str, proc: subprocess.Popen[bytes]) -> None:
    import aiohttp

    end = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited {proc.returncode}")
        if time.monotonic() > end:
            raise RuntimeError("the server did not answer within 60 s")
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(f"{base}/healthz") as r:
                if r.status == 200:
                    return
        await asyncio.sleep(0.05)


async def burst(session: Any, urls: list[str], concurrency: int) -> list[tuple[int, str, float]]:
    """GET every url, ``concurrency`` at a time: (status, error name, seconds) each."""
    out: list[tuple[int, str, float]] = [(0, "", 0.0)] * len(urls)
    it = iter(enumerate(urls))

    async def worker() -> None:
        for i, url in it:
            t0 = time.perf_counter()
            async with session.get(url) as r:
                body = await r.json()
            out[i] = (r.status, "" if r.status == 200 else body.get("error", "?"),
                      time.perf_counter() - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


async def callers(session: Any, base: str, durations: list[list[float]],
                  deadline_s: float) -> list[tuple[int, str, float]]:
    """One task per caller, each making its requests one after the other."""

    async def caller(ms_list: list[float]) -> list[tuple[int, str, float]]:
        got = []
        for ms in ms_list:
            t0 = time.perf_counter()
            try:
                async with session.get(f"{base}/spin?ms={ms:.3f}&deadline={deadline_s}") as r:
                    body = await r.json()
                status, name = r.status, ("" if r.status == 200 else body.get("error", "?"))
            except Exception as exc:  # a refused or broken connection is a failure too
                status, name = 0, type(exc).__name__
            got.append((status, name, time.perf_counter() - t0))
        return got

    per_caller = await asyncio.gather(*(caller(ms) for ms in durations))
    return [r for rs in per_caller for r in rs]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def measure(variant: str, proc: subprocess.Popen[bytes], base: str,
                  args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    scenario = "deadline" if variant.endswith("-deadline") else "throughput"
    connector = aiohttp.TCPConnector(limit=max(args.concurrency, args.callers))
    async with aiohttp.ClientSession(connector=connector) as session:
        await wait_serving(session, base, proc)
        with TreeSampler(proc.pid) as sampler:
            if scenario == "deadline":
                return await deadline_scenario(session, base, sampler, args)
            return await throughput_scenario(session, base, sampler, args)


async def throughput_scenario(session: Any, base: str, sampler: TreeSampler,
                              args: argparse.Namespace) -> dict[str, Any]:
    url = f"{base}/pi?tries={args.tries}"
    warm = await burst(session, [url] * (2 * args.concurrency), args.concurrency)
    if any(s != 200 for s, _, _ in warm):
        raise RuntimeError(f"warm-up failed: {[w for w in warm if w[0] != 200][:3]}")
    sampler.sample()
    workers = sampler.workers_alive()
    t_warm = time.monotonic()
    sampler.reset_peak()
    t0 = time.perf_counter()
    got = await burst(session, [url] * args.requests, args.concurrency)
    wall = time.perf_counter() - t0
    sampler.sample()
    failed = [g for g in got if g[0] != 200]
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed, e.g. {failed[:3]}")
    latencies = [g[2] for g in got]
    return {"wall_s": wall, "rps": args.requests / wall,
            "p50_ms": 1000 * percentile(latencies, 0.50),
            "p99_ms": 1000 * percentile(latencies, 0.99),
            "server_mib": sampler.peak_rss / 2**20, "workers": workers,
            "started": sampler.workers_since(t_warm)}


async def deadline_scenario(session: Any, base: str, sampler: TreeSampler,
                            args: argparse.Namespace) -> dict[str, Any]:
    warm = await burst(session, [f"{base}/spin?ms=1"] * (4 * args.workers), args.workers)
    if any(s != 200 for s, _, _ in warm):
        raise RuntimeError(f"warm-up failed: {[w for w in warm if w[0] != 200][:3]}")
    rng = random.Random(SEED)
    durations = [[rng.uniform(5, 35) for _ in range(args.per_caller)]
                 for _ in range(args.callers)]
    sampler.sample()
    workers = sampler.workers_alive()
    t_warm = time.monotonic()
    sampler.reset_peak()
    t0 = time.perf_counter()
    got = await callers(session, base, durations, args.deadline)
    wall = time.perf_counter() - t0
    await asyncio.sleep(0.2)  # a replacement started at the very end gets sampled
    sampler.sample()
    alive = sampler.workers_alive()
    in_time = sum(1 for s, _, _ in got if s == 200)
    missed = sum(1 for s, name, _ in got if s == 504 and name == "DeadlineExceeded")
    innocent = sorted({f"{s} {name}" for s, name, _ in got
                       if s != 200 and not (s == 504 and name == "DeadlineExceeded")})
    latencies = [g[2] for g in got]
    return {"wall_s": wall, "in_time": in_time, "missed": missed,
            "innocent": len(got) - in_time - missed, "innocent_kinds": ", ".join(innocent),
            "p50_ms": 1000 * percentile(latencies, 0.50),
            "p99_ms": 1000 * percentile(latencies, 0.99),
            "server_mib": sampler.peak_rss / 2**20, "workers": workers,
            "started": sampler.workers_since(t_warm), "alive": alive}


def start_server(variant: str, port: int, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    env = {**os.environ, "WEBAPP_BENCH_VARIANT": variant.removesuffix("-deadline"),
           "WEBAPP_BENCH_WORKERS": str(args.workers)}
    return subprocess.Popen(server_command(args.server, port), env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, as a process manager stops it; then SIGKILL, by PID, whatever of its
    tree is left (a benchmark leaves nothing running)."""
    tree = descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            if os.path.exists(f"/proc/{pid}"):
                os.kill(pid, signal.SIGKILL)


def child(variant: str, args: argparse.Namespace) -> None:
    import uvloop

    port = free_port()
    proc = start_server(variant, port, args)
    try:
        result = uvloop.run(measure(variant, proc, f"http://127.0.0.1:{port}", args))
    finally:
        stop_server(proc)
    _harness.emit(result)


# -- the parent ---------------------------------------------------------------------------


def paired(base: list[dict[str, Any]], ours: list[dict[str, Any]],
           key: str) -> tuple[float, float, float]:
    """``ours / base`` of ``key``, round by round, as (median, lowest, highest)."""
    ratios = sorted(o[key] / b[key] if b[key] else float("nan")
                    for b, o in zip(base, ours, strict=True))
    return statistics.median(ratios), ratios[0], ratios[-1]


def med(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def report_throughput(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    print(f"\nthroughput: {args.requests:,} x GET /pi?tries={args.tries:,}, concurrency "
          f"{args.concurrency}, {args.workers} workers")
    print(f"{'variant':<11}{'req/s':>8}{'min':>8}{'max':>8}{'p50 ms':>8}{'p99 ms':>8}"
          f"{'server MiB':>11}{'workers':>8}{'started':>8}")
    for v in BASE_VARIANTS:
        r = runs[v]
        print(f"{v:<11}{med(r, 'rps'):>8,.0f}{min(x['rps'] for x in r):>8,.0f}"
              f"{max(x['rps'] for x in r):>8,.0f}{med(r, 'p50_ms'):>8.1f}{med(r, 'p99_ms'):>8.1f}"
              f"{med(r, 'server_mib'):>11.1f}{med(r, 'workers'):>8.0f}{med(r, 'started'):>8.0f}")
    print()
    for v in ("asyncjobs", "anyio"):
        parts = []
        for key, label in (("rps", "req/s"), ("p99_ms", "p99"), ("server_mib", "server MiB")):
            m, lo, hi = paired(runs["ppe"], runs[v], key)
            parts.append(f"{label} {m:.3f} ({lo:.3f}-{hi:.3f})")
        print(f"{v} / ProcessPoolExecutor: " + "; ".join(parts))


def report_deadline(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    total = args.callers * args.per_caller
    print(f"\ndeadline: {args.callers} callers x {args.per_caller} requests, cpu jobs of "
          f"5-35 ms (seed {SEED}), deadline {args.deadline} s, {args.workers} workers")
    print(f"{'variant':<27}{'in time':>8}{'missed':>8}{'innocent':>9}{'p50 ms':>8}"
          f"{'p99 ms':>8}{'wall s':>8}{'server MiB':>11}{'started':>8}{'alive':>6}")
    for v in SCENARIOS["deadline"]:
        r = runs[v]
        print(f"{v:<27}{med(r, 'in_time'):>8.0f}{med(r, 'missed'):>8.0f}"
              f"{sum(x['innocent'] for x in r):>9}{med(r, 'p50_ms'):>8.1f}"
              f"{med(r, 'p99_ms'):>8.1f}{med(r, 'wall_s'):>8.2f}{med(r, 'server_mib'):>11.1f}"
              f"{med(r, 'started'):>8.0f}{med(r, 'alive'):>6.0f}")
        kinds = sorted({k for x in r for k in x["innocent_kinds"].split(", ") if k})
        if kinds:
            print(f"  innocent failures: {', '.join(kinds)}")
    print(f"  (of {total} requests per round; innocent: summed over the rounds; started: "
          "worker processes first seen after the warm-up; alive: worker processes at the "
          "end)")
    print()
    base, ours = runs["ppe-deadline"], runs["asyncjobs-deadline"]
    m, lo, hi = paired(base, ours, "in_time")
    verdict = "met" if m >= TARGET_IN_TIME else "NOT met"
    print(f"in time: asyncjobs / ProcessPoolExecutor = {m:.3f} (median of the rounds' "
          f"ratios; {lo:.3f}-{hi:.3f}); target >= {TARGET_IN_TIME}: {verdict}")
    for v in ("asyncjobs-shield", "anyio"):
        m, lo, hi = paired(base, runs[f"{v}-deadline"], "in_time")
        print(f"in time: {v} / ProcessPoolExecutor = {m:.3f} ({lo:.3f}-{hi:.3f})")
    innocent = sum(x["innocent"] for x in ours)
    print(f"asyncjobs innocent failures: {innocent} over {len(ours)} rounds; target 0: "
          f"{'met' if innocent == 0 else 'NOT met'}; worker processes started per round: "
          f"{', '.join(str(x['started']) for x in ours)}")


def parent(args: argparse.Namespace) -> None:
    import asyncjobs

    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    variants = [v for s in scenarios for v in SCENARIOS[s]]
    print(f"a Starlette endpoint under uvicorn ({args.server}), one cpu job per request; "
          f"median of {args.repeat} rounds; Python {sys.version.split()[0]}; asyncjobs from "
          f"{asyncjobs.__file__}", flush=True)
    forwarded = ["--requests", str(args.requests), "--concurrency", str(args.concurrency),
                 "--tries", str(args.tries), "--callers", str(args.callers),
                 "--per-caller", str(args.per_caller), "--deadline", str(args.deadline),
                 "--workers", str(args.workers), "--server", args.server]
    runs: dict[str, list[dict[str, Any]]] = _harness.run_rounds(
        __file__, variants, forwarded, args.repeat)
    if "throughput" in scenarios:
        report_throughput(runs, args)
    if "deadline" in scenarios:
        report_deadline(runs, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--tries", type=int, default=10_000,
                        help="points per /pi job (10,000: about 1 ms of CPU)")
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--per-caller", type=int, default=25)
    parser.add_argument("--deadline", type=float, default=0.2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scenarios", default="throughput,deadline")
    parser.add_argument("--server", choices=["module", "script"], default="module",
                        help="python -m uvicorn (default), or the uvicorn console script")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        child(args.variant, args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
