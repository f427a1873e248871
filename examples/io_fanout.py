"""Fan out HTTP requests as IO jobs: thousands of coroutines, at most 100 at a time.

The example starts its own small server on 127.0.0.1 (a free port), so it needs no
network. Run from the repository root::

    python -m examples.io_fanout [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import time

import aiohttp
from aiohttp import web

import asyncjobs


async def slow_endpoint(request: web.Request) -> web.Response:
    await asyncio.sleep(0.005)  # stands in for a database or an upstream API
    return web.json_response({"item": int(request.match_info["item"])})


@asyncjobs.job(retries=2, timeout=10)
async def fetch(session: aiohttp.ClientSession, base_url: str, item: int) -> int:
    async with session.get(f"{base_url}/items/{item}") as resp:
        resp.raise_for_status()  # an HTTP error fails the attempt, so it is retried
        body = await resp.json()
    return int(body["item"])


async def main(requests: int = 2000) -> None:
    app = web.Application()
    app.router.add_get("/items/{item}", slow_endpoint)
    server = web.AppRunner(app, access_log=None)
    await server.setup()
    try:
        site = web.TCPSite(server, "127.0.0.1", 0)  # port 0: the OS picks a free one
        await site.start()
        host, port = server.addresses[0][:2]
        base_url = f"http://{host}:{port}"

        # one session for every job: its connection pool is reused across requests
        async with aiohttp.ClientSession() as session:
            async with asyncjobs.Runner(io_concurrency=100) as runner:
                start = time.perf_counter()
                items = await runner.map(
                    functools.partial(fetch, session, base_url), range(requests)
                )
                wall = time.perf_counter() - start
        assert items == list(range(requests))
    finally:
        await server.cleanup()
    print(f"{len(items)} requests in {wall:.2f} s ({len(items) / wall:,.0f} requests/s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    asyncjobs.run(lambda: main(args.requests))
