"""HTTP GETs through several event loops: ``asyncjobs run FILE --loops 2`` against a bare
single-loop aiohttp script, both as whole commands.

    python benchmarks/bench_loops_http.py [--n 10000] [--limit 100] [--latency-ms 5]
        [--rounds 3] [--cluster] [--startup]

A responder in a process of its own on 127.0.0.1 answers every request after
``--latency-ms`` (raw asyncio on uvloop: an ``asyncio.Protocol`` that answers each
request with a ``call_later``, so that on 2 cores it takes as little CPU as it can from
the clients). Variants, each a whole command timed from outside (interpreter start,
imports, exit), run in a fresh measuring interpreter, in an order rotated per round:

- ``asyncjobs-loops2``: ``asyncjobs run FLOW --loops 2 --quiet``, the flow a ``foreach``
  of N ``http`` GETs through a limit of ``--limit`` (skipped, saying so, while ``run``
  refuses ``--loops 2``);
- ``asyncjobs-loops1``: ``asyncjobs run FLOW --quiet``, the same flow on one loop;
- ``aiohttp-script``: this file as a script of its own, importing no asyncjobs: one
  ``ClientSession`` (``TCPConnector(limit=0)``), ``asyncio.gather`` over N coroutines,
  ``asyncio.Semaphore(limit)``, on uvloop;
- ``aiohttp-script-x2``: two of those scripts at once, each with half the GETs and half
  the limit (``sh -c "A & B; wait"``): what two processes without any coordination, the
  best a two-loop design could do, reach on this machine;
- ``cluster-loops2`` (with ``--cluster``): ``asyncjobs coordinator`` + ``asyncjobs node
  --loops 2`` started and warmed before the clock, then the whole command ``asyncjobs
  run FLOW --connect ADDR --quiet``.

Ratios are taken round by round. Target: asyncjobs-loops2 ≥ 1.3 × the aiohttp script's
requests/s. *peak MiB* is the peak of the RSS summed over the command's processes
(sampled every 0.1 s); for ``cluster-loops2`` the coordinator and node are added.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 1.3
VARIANTS = ["asyncjobs-loops2", "asyncjobs-loops1", "aiohttp-script", "aiohttp-script-x2"]
CLUSTER_VARIANT = "cluster-loops2"
FLOW = """\
limits: {{api: {limit}}}
jobs:
  get:
    foreach: {{range: {n}}}
    limit: api
    http:
      url: "{url}?i={{{{ item }}}}"
      expect: [200]
"""
BODY = b'{"ok": true}'
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)


# -- the responder ---------------------------------------------------------------------

def serve(latency_s: float) -> None:
    import uvloop

    class Responder(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.buffer = b""
            self.loop = asyncio.get_running_loop()

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            # GETs carry no body: a request ends with its blank line
            while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
                self.buffer = self.buffer[end + 4:]
                self.loop.call_later(latency_s, self.answer)

        def answer(self) -> None:
            if not self.transport.is_closing():
                self.transport.write(RESPONSE)  # type: ignore[attr-defined]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Responder, "127.0.0.1", 0, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
        server.close()

    uvloop.run(main())


# -- the bare client (a script of its own: no asyncjobs) --------------------------------

def bare_aiohttp(n: int, limit: int, url: str) -> None:
    import aiohttp
    import uvloop

    async def main() -> None:
        sem = asyncio.Semaphore(limit)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def one(i: int) -> int:
                async with sem, session.get(url, params={"i": str(i)}) as resp:
                    assert resp.status == 200
                    await resp.read()
                    return resp.status

            statuses = await asyncio.gather(*[one(i) for i in range(n)])
        assert len(statuses) == n

    uvloop.run(main())


# -- the measuring child ---------------------------------------------------------------

def run_command(argv: list[str], extra_pids: dict[str, int] | None = None
                ) -> dict[str, float]:
    import _cluster

    rss = _cluster.RssSampler()
    for label, pid in (extra_pids or {}).items():
        rss.watch(label, pid)
    rss.start()
    timing, returncode, out, err = _cluster.run_watched(argv, rss, "command")
    rss.stop()
    if returncode != 0:
        raise RuntimeError(f"{argv} exited {returncode}:\n{out}\n{err[-3000:]}")
    return {**timing, "peak_mib": rss.peak_total}


def flow_file(folder: Path, n: int, limit: int, url: str) -> Path:
    path = folder / "get_flow.yaml"
    path.write_text(FLOW.format(n=n, limit=limit, url=url))
    return path


def child(variant: str, n: int, limit: int, url: str) -> None:
    import _cluster
    import _harness

    with tempfile.TemporaryDirectory(prefix="asyncjobs-bench-") as tmp:
        flow = flow_file(Path(tmp), n, limit, url)
        run = [*_cluster.asyncjobs_argv(), "run", str(flow), "--quiet"]
        if variant == "asyncjobs-loops2":
            result = run_command([*run, "--loops", "2"])
        elif variant == "asyncjobs-loops1":
            result = run_command(run)
        elif variant == "aiohttp-script":
            result = run_command([sys.executable, __file__, "--bare", "--n", str(n),
                                  "--limit", str(limit), "--url", url])
        elif variant == "aiohttp-script-x2":
            a, b = ([sys.executable, __file__, "--bare", "--n", str(part), "--limit",
                     str(max(1, limit // 2)), "--url", url] for part in (n // 2, n - n // 2))
            both = (f"{shlex.join(a)} & first=$!; {shlex.join(b)}; second=$?; "
                    "wait $first && exit $second")
            result = run_command(["sh", "-c", both])
        else:
            result = cluster_variant(run, Path(tmp), limit, url)
    _harness.emit(result)


def cluster_variant(run: list[str], folder: Path, limit: int, url: str) -> dict[str, float]:
    import _cluster

    import asyncjobs

    async def wait(address: str) -> None:
        async with asyncjobs.connect(address) as cluster:
            await _cluster.wait_for_nodes(cluster, ["n0"], loops=2)

    with _cluster.cluster(1, loops=2, cpu_workers=1) as (coordinator, nodes):
        asyncjobs.run(lambda: wait(coordinator.address))
        (folder / "warm").mkdir()
        warm = flow_file(folder / "warm", 200, limit, url)  # the node's loops import http
        subprocess.run([*_cluster.asyncjobs_argv(), "run", str(warm), "--connect",
                        coordinator.address, "--quiet"],
                       check=True, cwd=_cluster.ROOT, env=_cluster.env_with_root())
        return run_command([*run, "--connect", coordinator.address],
                           {"coordinator": coordinator.pid, "node": nodes[0].pid})


# -- the parent ------------------------------------------------------------------------

def loops_available() -> tuple[bool, str]:
    """Whether ``asyncjobs run --loops 2`` is accepted (its dry run, on a tiny flow)."""
    import _cluster

    with tempfile.TemporaryDirectory(prefix="asyncjobs-bench-") as tmp:
        flow = flow_file(Path(tmp), 1, 1, "http://127.0.0.1:9/")
        proc = subprocess.run([*_cluster.asyncjobs_argv(), "run", str(flow), "--loops", "2",
                               "--dry-run"], capture_output=True, text=True, check=False,
                              cwd=_cluster.ROOT, env=_cluster.env_with_root())
    return proc.returncode == 0, proc.stderr.strip().splitlines()[-1] if proc.stderr else ""


def parent(args: argparse.Namespace) -> None:

    import asyncjobs

    ok, why = loops_available()
    variants = [v for v in VARIANTS if ok or v != "asyncjobs-loops2"]
    if args.cluster:
        variants.append(CLUSTER_VARIANT)
    print(f"{args.n:,} GETs, limit {args.limit}, responder latency {args.latency_ms:g} ms, "
          f"whole commands; {os.cpu_count()} cores; median of {args.rounds} rounds; Python "
          f"{sys.version.split()[0]}; asyncjobs from {asyncjobs.__file__}", flush=True)
    if not ok:
        print(f"asyncjobs-loops2 skipped: --loops not available ({why})", flush=True)
    runs = measure(args, variants, args.n)
    report(args, variants, runs, args.n)
    if args.startup:
        print(f"\nstart-up: the same commands on a 1-item flow, median of {args.rounds} rounds "
              "(what a command costs besides its requests)")
        report(args, variants, measure(args, variants, 1), 1, ratios=False)
    if not ok:
        print("asyncjobs-loops2: skipped: --loops not available")


def measure(args: argparse.Namespace, variants: list[str], n: int
            ) -> dict[str, list[dict[str, float]]]:
    import _harness

    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for round_no in range(args.rounds):
        with _harness.served([sys.executable, __file__, "--serve", str(args.latency_ms)]) as port:
            url = f"http://127.0.0.1:{port}/get"
            opts = ["--n", str(n), "--limit", str(args.limit), "--url", url]
            warm = ["--n", str(min(args.n, 2000)), "--limit", str(args.limit), "--url", url]
            shift = round_no % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                _harness.run_child(__file__, "aiohttp-script", warm)
                runs[variant].append(_harness.run_child(__file__, variant, opts))
                print(f"  round {round_no + 1}/{args.rounds} {variant:<18} "
                      f"{runs[variant][-1]['wall_s']:.3f} s", file=sys.stderr, flush=True)
    return runs


def report(args: argparse.Namespace, variants: list[str],
           runs: dict[str, list[dict[str, float]]], n: int, ratios: bool = True) -> None:
    import _harness

    print(f"\n{'variant':<18}{'median s':>9}{'min s':>7}{'max s':>7}{'req/s':>9}{'peak MiB':>10}")
    for v in variants:
        r = runs[v]
        med = _harness.median(r, "wall_s")
        print(f"{v:<18}{med:>9.3f}{_harness.fastest(r):>7.3f}{max(x['wall_s'] for x in r):>7.3f}"
              f"{n / med:>9,.0f}{_harness.median(r, 'peak_mib'):>10.1f}")
    print("(peak MiB: the command's processes summed, median over the rounds; cluster-loops2 "
          "adds the coordinator and the node; its cluster started before the clock)")
    if not ratios:
        return
    print()
    for ours in ("asyncjobs-loops2", "asyncjobs-loops1", "aiohttp-script-x2", CLUSTER_VARIANT):
        if ours not in runs:
            continue
        ratio, low, high = _harness.paired_ratio(runs["aiohttp-script"], runs[ours])
        target = ""
        if ours == "asyncjobs-loops2":
            target = f"; target >= {TARGET}: {'met' if ratio >= TARGET else 'NOT met'}"
        print(f"{ours} / aiohttp-script requests/s = {ratio:.3f} (median of the rounds' "
              f"ratios; {low:.3f}-{high:.3f}){target}")
    if "asyncjobs-loops2" in runs:
        ratio, low, high = _harness.paired_ratio(runs["aiohttp-script-x2"],
                                                 runs["asyncjobs-loops2"])
        print(f"asyncjobs-loops2 / aiohttp-script-x2 requests/s = {ratio:.3f} ({low:.3f}-"
              f"{high:.3f}): against two processes that need no coordination")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--latency-ms", type=float, default=5.0)
    parser.add_argument("--rounds", "--repeat", type=int, default=3)
    parser.add_argument("--cluster", action="store_true",
                        help="also: run --connect on a coordinator + node --loops 2")
    parser.add_argument("--startup", action="store_true",
                        help="also time each command on a 1-item flow")
    parser.add_argument("--quick", action="store_true", help="2,000 GETs, 1 round")
    parser.add_argument("--variant", choices=[*VARIANTS, CLUSTER_VARIANT],
                        help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--serve", type=float, metavar="LATENCY_MS", help=argparse.SUPPRESS)
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick and not (args.variant or args.bare):
        args.n, args.rounds = 2_000, 1
    if args.serve is not None:
        serve(args.serve / 1000)
    elif args.bare:
        start = time.perf_counter()
        bare_aiohttp(args.n, args.limit, args.url)
        print(f"{args.n} GETs in {time.perf_counter() - start:.3f} s", file=sys.stderr)
    elif args.variant:
        child(args.variant, args.n, args.limit, args.url)
    else:
        parent(args)


if __name__ == "__main__":
    main()
