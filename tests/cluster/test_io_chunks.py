"""Io chunks on a cluster (``Runner(loops=2)``, the cluster's machinery on one machine):
a flow's small io calls travel several to a job, and still give the records, results,
limits and per-call timeouts of one loop."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
from aiohttp import web

import asyncjobs
from asyncjobs.model import JobStatus

from ..conftest import write_flow
from ..httpserve import serving

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

    async with serving("/items/{key}", item) as base:
        state.url = f"{base}/items"
        yield state


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
    # chunks of 8 hold 8 units each: never past the limit, and more than one chunk at once
    # (not exactly 32: a loaded machine may not overlap them all)
    assert 8 < api.most_in_flight <= 32
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


async def test_a_call_that_fails_in_a_chunk_is_retried_alone_as_its_own_retry(
        tmp_path: Path) -> None:
    hits: dict[str, int] = {}
    stamps: dict[str, list[float]] = {}

    async def item(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        hits[key] = hits.get(key, 0) + 1
        stamps.setdefault(key, []).append(asyncio.get_running_loop().time())
        await asyncio.sleep(0.01)
        if key.startswith("flaky") and hits[key] < 3:
            return web.Response(status=503, text="busy")
        if key == "later" and hits[key] < 2:
            return web.Response(status=429, headers={"Retry-After": "1"})
        if key == "gone":
            return web.Response(status=404)
        return web.json_response({"key": key})

    keys = [f"ok{i}" for i in range(40)] + ["flaky1", "flaky2", "later", "gone"]
    async with serving("/items/{key}", item) as base:
        path = write_flow(tmp_path, f"""
            limits: {{api: 32}}
            jobs:
              get:
                foreach: {keys}
                limit: api
                retries: 2
                backoff: 0.1
                http: {{url: "{base}/items/{{{{ item }}}}"}}
        """)
        async with asyncjobs.Runner(loops=2) as runner:
            report = await runner.run_flow(path)
            local = runner._local
            assert local is not None and local.server.state is not None
            jobs_sent = local.server.state.counts["submitted"]
    assert jobs_sent < 30  # chunks, then the retries alone
    attempts = {keys[int(r.id[4:-1])]: (r.status, r.attempts) for r in report.records}
    assert attempts["ok7"] == (JobStatus.SUCCEEDED, 1)
    assert attempts["flaky1"] == attempts["flaky2"] == (JobStatus.SUCCEEDED, 3)
    assert attempts["later"] == (JobStatus.SUCCEEDED, 2)
    assert attempts["gone"] == (JobStatus.FAILED, 1)  # a 404 is not retried
    assert hits["flaky1"] == 3 and hits["gone"] == 1 and hits["ok7"] == 1
    flaky = stamps["flaky1"]
    # the backoff doubles per retry: ~0.1 s (jittered), then ~0.2 s
    assert 0.07 < flaky[1] - flaky[0] < 0.6 and 0.15 < flaky[2] - flaky[1] < 0.8
    assert stamps["later"][1] - stamps["later"][0] >= 0.95  # Retry-After: 1


async def test_map_of_an_async_function_goes_in_io_chunks_and_keeps_input_order() -> None:
    from tests.cluster_jobs import odd_one_out

    seconds = [0.05 if i % 7 == 0 else 0.0 for i in range(300)]  # out of order endings
    async with asyncjobs.Runner(loops=2) as runner:
        got = await runner.map(odd_one_out, range(300), seconds, return_exceptions=True)
        with pytest.raises(asyncjobs.JobFailed) as caught:
            await runner.map(odd_one_out, range(10, 20))
        local = runner._local
        assert local is not None and local.server.state is not None
        jobs_sent = local.server.state.counts["submitted"]
    assert got[:13] == [i * 2 for i in range(13)] and got[14:] == [i * 2 for i in range(14, 300)]
    assert isinstance(got[13], asyncjobs.JobFailed) and got[13].message == "thirteen"
    assert caught.value.type_name == "ValueError"
    assert jobs_sent < 50  # 310 calls
