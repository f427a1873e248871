"""A real aiohttp server on 127.0.0.1 for the tests of HTTP jobs."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.test_utils import TestServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable


@contextlib.asynccontextmanager
async def serving(route: str, handler: Callable[[web.Request], Awaitable[web.Response]]
                  ) -> AsyncIterator[str]:
    """Serve ``handler`` at ``route`` (any method) on a free port; yield the base URL."""
    app = web.Application()
    app.router.add_route("*", route, handler)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()
