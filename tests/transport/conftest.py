"""Transports for the ``check_*`` routines: plain TCP and TLS on 127.0.0.1, port 0."""

from __future__ import annotations

import functools
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import pytest
from anyio.streams.tls import TLSStream

from asyncjobs.protocol import Role
from asyncjobs.transport import Link, connect, serve, tls_contexts

if TYPE_CHECKING:
    import ssl
    from collections.abc import AsyncIterator, Awaitable, Callable

SECRET = b"s3cret"
Address = tuple[str, int]


@dataclass
class Transport:
    """How a check reaches a listener: plain TCP, or TLS with the session's certificates."""

    name: str
    server_tls: ssl.SSLContext | None = None
    client_tls: ssl.SSLContext | None = None
    links: list[Link] = field(default_factory=list)

    @asynccontextmanager
    async def server(
        self, handler: Callable[[Link], Awaitable[Any]] | None = None, **kw: Any
    ) -> AsyncIterator[Address]:
        """A listener (a coordinator) for the body of the ``async with``; its address."""

        async def wait_until_closed(link: Link) -> None:
            async for _ in link:
                pass

        kw.setdefault("secret", SECRET)
        kw.setdefault("role", Role.COORDINATOR)
        async with anyio.create_task_group() as tg:
            addr: Address = await tg.start(functools.partial(
                serve, "127.0.0.1", 0, handler=handler or wait_until_closed,
                tls=self.server_tls, **kw))
            yield addr
            tg.cancel_scope.cancel()

    async def connect(self, addr: Address, **kw: Any) -> Link:
        kw.setdefault("secret", SECRET)
        kw.setdefault("role", Role.NODE)
        return await connect(*addr, tls=self.client_tls, **kw)

    async def raw(self, addr: Address) -> anyio.abc.ByteStream:
        """A stream to the listener that speaks no asyncjobs (TLS set up when TLS)."""
        stream: anyio.abc.ByteStream = await anyio.connect_tcp(*addr)
        if self.client_tls is not None:
            stream = await TLSStream.wrap(stream, server_side=False, ssl_context=self.client_tls,
                                          standard_compatible=False)
        return stream

    @asynccontextmanager
    async def pair(
        self, server_kw: dict[str, Any] | None = None, **client_kw: Any
    ) -> AsyncIterator[tuple[Link, Link]]:
        """``(client_side, server_side)``: two ends of one link."""
        send, receive = anyio.create_memory_object_stream[Link](1)
        done = anyio.Event()

        async def handler(link: Link) -> None:
            await send.send(link)
            await done.wait()

        async with self.server(handler, **(server_kw or {})) as addr:
            client = await self.connect(addr, **client_kw)
            try:
                with anyio.fail_after(5):
                    server_side = await receive.receive()
                yield client, server_side
            finally:
                await client.aclose()
                done.set()
        send.close()
        receive.close()


@pytest.fixture(params=["tcp", "tls"])
def transport(request: pytest.FixtureRequest) -> Transport:
    if request.param == "tcp":
        return Transport("tcp")
    server, client = tls_contexts(*request.getfixturevalue("tls_files"))
    return Transport("tls", server, client)
