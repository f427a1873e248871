"""HTTP jobs: `asyncjobs run` on a flow of N POSTs through a limit, against bare aiohttp
and against a thread pool, all calling one local server that answers after a delay.

    python benchmarks/bench_http_flow.py [--n 10000] [--limit 100] [--latency-ms 5] [--repeat 3]

The server runs in a process of its own (started once per round), on 127.0.0.1. Each
variant runs in a fresh interpreter, and is compared like for like:

- requests alone, timed inside the process (imports before the clock):
  - ``asyncjobs-flow``: ``Runner().run_flow(flow.yaml)``; the run's state file included;
  - ``aiohttp``: one ``ClientSession``, ``asyncio.gather`` over N coroutines, an
    ``asyncio.Semaphore(limit)``, on uvloop;
  - ``threads``: ``ThreadPoolExecutor(limit)`` with ``urllib.request``;
- whole commands, timed from outside (interpreter start and imports included):
  - ``asyncjobs-cli``: ``python -m asyncjobs run flow.yaml --quiet``, as a user runs it;
  - ``aiohttp-script``: the ``aiohttp`` variant above as a script of its own.

On 2 cores the server competes with the client for CPU in every variant alike. Each
round starts a fresh server and runs the variants in an order that rotates from round to
round; before each variant a short burst warms the server (its first requests are slower,
and the thread variant leaves 10,000 closed connections behind it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _harness

import asyncjobs

TARGET_VS_AIOHTTP = 0.9
TARGET_VS_THREADS = 3.0
VARIANTS = ["asyncjobs-flow", "asyncjobs-cli", "aiohttp", "aiohttp-script", "threads"]
#: (ours, theirs, target of theirs/ours wall time) compared round by round
COMPARISONS = [
    ("asyncjobs-flow", "aiohttp", TARGET_VS_AIOHTTP),
    ("asyncjobs-cli", "aiohttp-script", TARGET_VS_AIOHTTP),
    ("asyncjobs-flow", "threads", TARGET_VS_THREADS),
]
#: the variants timed from outside, whose client is a child process
COMMANDS = ("asyncjobs-cli", "aiohttp-script")

FLOW = """\
limits: {{api: {limit}}}
jobs:
  create:
    foreach: {{range: {n}}}
    limit: api
    http:
      method: POST
      url: "{url}"
      json: {{name: "flow-{{{{ item }}}}"}}
      expect: [200, 201]
"""


# -- the server ------------------------------------------------------------------------

def serve(latency_s: float) -> None:
    from aiohttp import web

    async def create(request: web.Request) -> web.Response:
        body = await request.json()
        await asyncio.sleep(latency_s)
        return web.json_response({"name": body["name"]}, status=201)

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/flows", create)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
        await runner.cleanup()

    asyncjobs.run(main)


# -- the variants ----------------------------------------------------------------------

def write_flow(tmp: Path, n: int, limit: int, url: str) -> Path:
    path = tmp / "http_flow.yaml"
    path.write_text(FLOW.format(n=n, limit=limit, url=url))
    return path


async def asyncjobs_flow(n: int, limit: int, url: str) -> dict[str, float]:
    import asyncjobs.executors.http  # noqa: F401 - aiohttp imported outside the clock, as for bare
    import asyncjobs.flowrun  # noqa: F401

    with tempfile.TemporaryDirectory() as tmp:
        path = write_flow(Path(tmp), n, limit, url)
        async with asyncjobs.Runner() as runner:
            clock = _harness.Clock()
            report = await runner.run_flow(path)
            timing = clock.stop()
    assert report.ok and len(report.records) == n, report.summary_lines()
    return timing


def command(argv: list[str]) -> dict[str, float]:
    """Time a whole command, from fork to exit."""
    clock = _harness.Clock()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    timing = clock.stop()
    assert proc.returncode == 0, proc.stderr
    return timing


def asyncjobs_cli(n: int, limit: int, url: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_flow(Path(tmp), n, limit, url)
        return command([sys.executable, "-m", "asyncjobs", "run", str(path), "--quiet"])


def aiohttp_script(n: int, limit: int, url: str) -> dict[str, float]:
    return command([sys.executable, __file__, "--variant", "aiohttp", "--n", str(n),
                    "--limit", str(limit), "--url", url])


async def bare_aiohttp(n: int, limit: int, url: str) -> dict[str, float]:
    import aiohttp

    clock = _harness.Clock()
    sem = asyncio.Semaphore(limit)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(i: int) -> int:
            async with sem, session.post(url, json={"name": f"flow-{i}"}) as resp:
                assert resp.status in (200, 201)
                await resp.json()
                return resp.status

        statuses = await asyncio.gather(*[one(i) for i in range(n)])
    timing = clock.stop()
    assert len(statuses) == n
    return timing


def threads(n: int, limit: int, url: str) -> dict[str, float]:
    def one(i: int) -> int:
        data = json.dumps({"name": f"flow-{i}"}).encode()
        req = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            json.loads(resp.read())
            return int(resp.status)

    clock = _harness.Clock()
    with ThreadPoolExecutor(limit) as pool:
        statuses = list(pool.map(one, range(n)))
    timing = clock.stop()
    assert len(statuses) == n
    return timing


def child(variant: str, n: int, limit: int, url: str) -> None:
    if variant == "asyncjobs-flow":
        timing = asyncjobs.run(lambda: asyncjobs_flow(n, limit, url))
    elif variant == "asyncjobs-cli":
        timing = asyncjobs_cli(n, limit, url)
    elif variant == "aiohttp":
        timing = asyncjobs.run(lambda: bare_aiohttp(n, limit, url))
    elif variant == "aiohttp-script":
        timing = aiohttp_script(n, limit, url)
    else:
        timing = threads(n, limit, url)
    _harness.emit(timing)


# -- the parent ------------------------------------------------------------------------

def parent(args: argparse.Namespace) -> None:
    print(f"{args.n:,} POSTs, limit {args.limit}, server latency {args.latency_ms:g} ms, "
          f"median of {args.repeat} rounds; Python {sys.version.split()[0]}; "
          f"asyncjobs from {asyncjobs.__file__}", flush=True)
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for round_no in range(args.repeat):
        with _harness.served([sys.executable, __file__, "--serve", str(args.latency_ms)]) as port:
            url = f"http://127.0.0.1:{port}/flows"
            warm = ["--n", str(min(args.n, 2000)), "--limit", str(args.limit), "--url", url]
            extra = ["--n", str(args.n), "--limit", str(args.limit), "--url", url]
            shift = round_no % len(VARIANTS)
            for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                _harness.run_child(__file__, "aiohttp", warm)
                runs[variant].append(_harness.run_child(__file__, variant, extra))
                print(f"  round {round_no + 1}/{args.repeat} {variant:<16} "
                      f"{runs[variant][-1]['wall_s']:.3f} s", file=sys.stderr, flush=True)
    print(f"\n{'variant':<16}{'median s':>9}{'min s':>7}{'max s':>7}{'req/s':>9}"
          f"{'client CPU s':>13}{'peak MiB':>10}")
    for v in VARIANTS:
        r = runs[v]
        med = _harness.median(r, "wall_s")
        # a command's client is its child process; the others measure themselves
        rss_key = "rss_children_mib" if v in COMMANDS else "rss_parent_mib"
        cpu = "-" if v in COMMANDS else f"{_harness.median(r, 'cpu_parent_s'):.2f}"
        print(f"{v:<16}{med:>9.3f}{_harness.fastest(r):>7.3f}{max(x['wall_s'] for x in r):>7.3f}"
              f"{args.n / med:>9,.0f}{cpu:>13}{_harness.peak(r, rss_key):>10.1f}")
    print()
    for ours, theirs, target in COMPARISONS:
        ratio, low, high = _harness.paired_ratio(runs[theirs], runs[ours])
        verdict = "met" if ratio >= target else "NOT met"
        print(f"{ours} / {theirs} requests/s = {ratio:.3f} (median of the rounds' ratios; "
              f"{low:.3f}-{high:.3f}); target >= {target}: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--latency-ms", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--serve", type=float, metavar="LATENCY_MS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve / 1000)
    elif args.variant:
        child(args.variant, args.n, args.limit, args.url)
    else:
        parent(args)


if __name__ == "__main__":
    main()
