"""Io chunks on a cluster (``Runner(loops=2)``, the cluster's machinery on one machine):
a flow's small io calls travel several to a job, and still give the records, results,
limits and per-call timeouts of one loop."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import asyncjobs
from asyncjobs.model import JobStatus

from ..conftest import write_flow

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_leftover_children")]


class Api:
    def __init__(self) -> None:
        self.in_flight = self.most_in_flight = 0
        self.hits: dict[str, int] = {}
        self.url = ""


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    state = Api()

    async def item(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        state.hits[key] = state.hits.get(key, 0) + 1
        state.in_flight += 1
        state.most_in_flight = max(state.most_in_flight, state.in_flight)
        try:
            await asyncio.sleep(2.0 if key == "slow" else 0.01)
        finally:
            state.in_flight -= 1
        if key.startswith("x"):
            return web.Response(status=500, text="no x")
        return web.json_response({"key": key})

    app = web.Application()
    app.router.add_route("*", "/items/{key}", item)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    state.url = f"http://127.0.0.1:{server.port}/items"
    try:
        yield state
    finally:
        await server.close()


def flow(tmp_path: Path, api: Api) -> Path:
    return write_flow(tmp_path, f"""
        limits: {{api: 32}}
        jobs:
          get:
            foreach: {{range: 300}}
            limit: api
            timeout: 1
            http: {{url: "{api.url}/{{{{ item }}}}", method: POST, json: {{n: "{{{{ item }}}}"}}}}
          odd:
            foreach: [slow, a, x1, b, c, x2, d, e, f, g]
            limit: api
            timeout: 0.5
            http: {{url: "{api.url}/{{{{ item }}}}"}}
          keys:
            needs: [get]
            call: tests.jobs:aio_sleep
            args: [0, "{{{{ results.get }}}}"]
          after_odd:
            needs: [odd]
            shell: "echo never"
    """)


async def test_io_chunks_keep_records_limits_and_timeouts_of_one_loop(
        tmp_path: Path, api: Api) -> None:
    path = flow(tmp_path, api)
    async with asyncjobs.Runner() as runner:
        one = await runner.run_flow(path)
    assert api.most_in_flight <= 32
    api.most_in_flight = 0
    api.hits.clear()
    async with asyncjobs.Runner(loops=2) as runner:
        two = await runner.run_flow(path)
        local = runner._local
        assert local is not None and local.server.state is not None
        jobs_sent = local.server.state.counts["submitted"]
    assert api.most_in_flight == 32  # a chunk holds its calls' units of the limit
    assert jobs_sent < 60  # 310 calls travelled in far fewer jobs
    assert all(n == 1 for n in api.hits.values()) and len(api.hits) == 310

    def records(report: asyncjobs.FlowReport) -> dict[str, tuple[JobStatus, int | None]]:
        return {r.id: (r.status, r.attempts) for r in report.records}

    assert records(one) == records(two)
    assert two.results["keys"] == one.results["keys"] == [
        {"status": 200, "json": {"key": str(i)}} for i in range(300)]
    by_id = {r.id: r for r in two.records}
    assert by_id["odd[2]"].status is JobStatus.FAILED and "500" in (by_id["odd[2]"].error
                                                                     or "")
    assert by_id["odd[0]"].status is JobStatus.FAILED
    assert "timeout of 0.5s" in (by_id["odd[0]"].error or "")
    assert by_id["odd[1]"].status is JobStatus.SUCCEEDED
    assert by_id["after_odd"].status is JobStatus.SKIPPED
    assert {r.node for r in two.records if r.id.startswith("get[")} == {"local"}
    assert all(r.started and r.ended and r.started <= r.ended for r in two.records
               if r.status is not JobStatus.SKIPPED)
    slow = by_id["odd[0]"]
    assert slow.ended is not None and slow.started is not None
    assert 0.4 < slow.ended - slow.started < 1.5  # its own time, not its chunk's
