"""Several flows at once on one Runner: each has its own limits, and each ends cleanly."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from asyncjobs import Runner
from asyncjobs.errors import RunInProgress

from .conftest import write_flow

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

pytestmark = pytest.mark.usefixtures("no_leftover_children")


class Counts:
    def __init__(self) -> None:
        self.in_flight: dict[str, int] = {}
        self.most: dict[str, int] = {}
        self.url = ""
        self.hit = asyncio.Event()


@pytest.fixture
async def server() -> AsyncIterator[Counts]:
    counts = Counts()

    async def hit(request: web.Request) -> web.Response:
        flow = request.match_info["flow"]
        counts.in_flight[flow] = counts.in_flight.get(flow, 0) + 1
        counts.most[flow] = max(counts.most.get(flow, 0), counts.in_flight[flow])
        counts.hit.set()
        try:
            await asyncio.sleep(0.02)
        finally:
            counts.in_flight[flow] -= 1
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/{flow}/{i}", hit)
    srv = TestServer(app, host="127.0.0.1", port=0)
    await srv.start_server()
    counts.url = f"http://127.0.0.1:{srv.port}"
    try:
        yield counts
    finally:
        await srv.close()


def _flow(folder: Path, name: str, url: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = write_flow(folder, f"""
        name: {name}
        limits:
          api: 2
        jobs:
          calls:
            foreach: {{range: 12}}
            limit: api
            http: {{url: "{url}/{name}/{{{{ item }}}}"}}
    """)
    return path.rename(folder / f"{name}.yaml")


async def test_two_flows_declaring_the_same_limit_name_get_two_pools(
    tmp_path: Path, server: Counts,
) -> None:
    # two files in one folder: they share its .asyncjobs/state.db
    a = _flow(tmp_path, "a", server.url)
    b = _flow(tmp_path, "b", server.url)
    async with Runner() as runner:
        first, second = await asyncio.gather(runner.run_flow(a), runner.run_flow(b))
        # every scope's limits are gone once its run ended
        assert not [n for n in runner.engine.core.limits if not n.startswith("@")]
    assert first.ok and second.ok, (first.summary_lines(), second.summary_lines())
    # each flow had its own pool of 2: both filled it, neither went past it
    assert server.most == {"a": 2, "b": 2}


async def test_the_same_flow_twice_at_once_is_refused_and_once_more_after(
    tmp_path: Path, server: Counts,
) -> None:
    a = _flow(tmp_path, "a", server.url)
    async with Runner() as runner:
        first = asyncio.create_task(runner.run_flow(a))
        await asyncio.wait_for(server.hit.wait(), 10)
        with pytest.raises(RunInProgress, match="another run of .*a.yaml is in progress"):
            await runner.run_flow(a)
        assert (await first).ok
        assert (await runner.run_flow(a)).ok


async def test_the_same_flow_twice_in_a_row_on_one_runner(tmp_path: Path, server: Counts) -> None:
    a = _flow(tmp_path / "a", "a", server.url)
    async with Runner() as runner:
        for _ in range(2):
            report = await runner.run_flow(a)
            assert report.ok, report.summary_lines()
    assert server.most == {"a": 2}


async def test_an_interrupted_flow_releases_its_limits(tmp_path: Path, server: Counts) -> None:
    a = _flow(tmp_path / "a", "a", server.url)
    async with Runner() as runner:
        task = asyncio.create_task(runner.run_flow(a))
        await asyncio.wait_for(server.hit.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # the cancelled attempts unwind; then the scope's limit goes
        for _ in range(200):
            if not [n for n in runner.engine.core.limits if not n.startswith("@")]:
                break
            await asyncio.sleep(0.01)
        assert not [n for n in runner.engine.core.limits if not n.startswith("@")]
        assert (await runner.run_flow(a)).ok
