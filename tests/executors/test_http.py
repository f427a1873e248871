"""HTTP jobs against a real aiohttp server on 127.0.0.1."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import asyncjobs
from asyncjobs import JobFailed, Runner
from asyncjobs.executors.http import HttpClient, parse_retry_after

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture
async def api() -> AsyncIterator[tuple[str, dict[str, int]]]:
    hits: dict[str, int] = {}

    async def flaky(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        hits[key] = hits.get(key, 0) + 1
        if key.startswith("e500") and hits[key] < 3:
            return web.Response(status=500, text="try later")
        if key.startswith("e429") and hits[key] < 2:
            return web.Response(status=429, headers={"Retry-After": "1"})
        if key.startswith("e404"):
            return web.Response(status=404, text="no such flow")
        if key.startswith("text"):
            return web.Response(text="plain")
        body: dict[str, Any] = {"key": key, "hit": hits[key]}
        if request.can_read_body:
            body["sent"] = await request.json()
        return web.json_response(body, status=201)

    app = web.Application()
    app.router.add_route("*", "/flows/{key}", flaky)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}/flows", hits
    finally:
        await server.close()


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    c = HttpClient()
    try:
        yield c
    finally:
        await c.aclose()


async def test_json_and_text_results(api: tuple[str, dict[str, int]], client: HttpClient) -> None:
    url, _ = api
    out = await client.request("POST", f"{url}/a", json={"name": "flow-1"}, expect=[200, 201])
    assert out == {"status": 201, "json": {"key": "a", "hit": 1, "sent": {"name": "flow-1"}}}
    assert await client.request("GET", f"{url}/text") == {"status": 200, "text": "plain"}


async def test_unexpected_status_is_final_for_4xx(
    api: tuple[str, dict[str, int]], client: HttpClient
) -> None:
    url, hits = api

    @asyncjobs.job(retries=3, backoff=0)
    async def get(u: str) -> object:
        return await client.request("GET", u)

    async with Runner() as runner:
        with pytest.raises(JobFailed, match="answered 404: no such flow") as info:
            await runner.submit(get, f"{url}/e404")
    assert info.value.attempts == 1 and hits["e404"] == 1


async def test_5xx_is_retried_until_it_succeeds(
    api: tuple[str, dict[str, int]], client: HttpClient
) -> None:
    url, hits = api

    @asyncjobs.job(retries=3, backoff=0.01)
    async def get(u: str) -> object:
        return await client.request("GET", u)

    async with Runner() as runner:
        assert (await runner.submit(get, f"{url}/e500"))["json"]["hit"] == 3  # type: ignore[index]


async def test_429_waits_for_retry_after(
    api: tuple[str, dict[str, int]], client: HttpClient
) -> None:
    import time

    url, _ = api

    @asyncjobs.job(retries=1, backoff=0.01)
    async def get(u: str) -> object:
        return await client.request("GET", u)

    async with Runner() as runner:
        started = time.monotonic()
        assert (await runner.submit(get, f"{url}/e429"))["status"] == 201  # type: ignore[index]
        assert time.monotonic() - started >= 0.95


async def test_connection_refused_is_retryable(client: HttpClient) -> None:
    @asyncjobs.job(retries=1, backoff=0)
    async def get() -> object:
        return await client.request("GET", "http://127.0.0.1:9/nothing")

    async with Runner() as runner:
        with pytest.raises(JobFailed) as info:
            await runner.submit(get)
    assert info.value.attempts == 2 and "Connect" in info.value.type_name


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
