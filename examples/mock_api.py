"""A small mock of an internal HTTP API, for examples/http_flow.yaml.

    python -m examples.mock_api [--port 8080] [--latency-ms 5] [--fail-every 50]

POST /flows creates a flow (201); every ``--fail-every``-th request answers 503 or 429
with Retry-After instead, so the flow's retries have something to do. GET /stats
counts what it saw. Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web


def make_app(latency_s: float, fail_every: int) -> web.Application:
    stats = {"created": 0, "requests": 0, "failed_on_purpose": 0}

    async def create(request: web.Request) -> web.Response:
        stats["requests"] += 1
        await asyncio.sleep(latency_s)
        if fail_every and stats["requests"] % fail_every == 0:
            stats["failed_on_purpose"] += 1
            if stats["requests"] % (2 * fail_every) == 0:
                return web.Response(status=429, headers={"Retry-After": "1"})
            return web.Response(status=503, text="try again")
        body = await request.json()
        stats["created"] += 1
        return web.json_response({"id": stats["created"], "name": body.get("name")}, status=201)

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(stats)

    app = web.Application()
    app.router.add_post("/flows", create)
    app.router.add_get("/stats", get_stats)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--latency-ms", type=float, default=5.0)
    parser.add_argument("--fail-every", type=int, default=50)
    args = parser.parse_args()
    web.run_app(make_app(args.latency_ms / 1000, args.fail_every), host="127.0.0.1",
                port=args.port, access_log=None)
