"""Flows on the embedded runner, against a real aiohttp server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from asyncjobs import FlowError, Runner
from asyncjobs.model import JobStatus

from .conftest import write_flow
from .procs import wait_until_gone

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

pytestmark = pytest.mark.usefixtures("no_leftover_children")


class Api:
    def __init__(self) -> None:
        self.in_flight = 0
        self.most_in_flight = 0
        self.stamps: list[float] = []
        self.hits: dict[str, int] = {}
        self.url = ""


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    state = Api()

    async def flows(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        state.hits[key] = state.hits.get(key, 0) + 1
        state.stamps.append(time.monotonic())
        state.in_flight += 1
        state.most_in_flight = max(state.most_in_flight, state.in_flight)
        try:
            await asyncio.sleep(0.01)
        finally:
            state.in_flight -= 1
        if key.startswith("e500") and state.hits[key] < 3:
            return web.Response(status=500, text="busy")
        if key.startswith("e429") and state.hits[key] < 2:
            return web.Response(status=429, headers={"Retry-After": "1"})
        return web.json_response({"key": key, "n": state.hits[key]}, status=201)

    app = web.Application()
    app.router.add_route("*", "/flows/{key}", flows)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    state.url = f"http://127.0.0.1:{server.port}/flows"
    try:
        yield state
    finally:
        await server.close()


async def run(path: Path, **params: object) -> object:
    async with Runner(cpu_workers=2) as runner:
        return await runner.run_flow(path, params=params or None)


async def test_limit_is_never_exceeded(tmp_path: Path, api: Api) -> None:
    path = write_flow(tmp_path, f"""
        limits: {{api: 10}}
        jobs:
          create:
            foreach: {{range: 200}}
            limit: api
            http: {{method: POST, url: "{api.url}/f{{{{ item }}}}", json: {{n: "{{{{ item }}}}"}}}}
    """)
    report = await run(path)
    assert report.ok and len(report.records) == 200
    assert api.most_in_flight == 10


async def test_rate_is_kept_within_ten_percent(tmp_path: Path, api: Api) -> None:
    path = write_flow(tmp_path, f"""
        limits: {{api: {{rate: 50/s}}}}
        jobs:
          ping: {{foreach: {{range: 100}}, limit: api, http: {{url: "{api.url}/p"}}}}
    """)
    assert (await run(path)).ok
    stamps = sorted(api.stamps)
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    assert 45 <= rate <= 55, rate


async def test_http_retries_500_and_waits_for_429_retry_after(tmp_path: Path, api: Api) -> None:
    path = write_flow(tmp_path, f"""
        defaults: {{retries: 3, backoff: 0.01}}
        jobs:
          a: {{http: {{url: "{api.url}/e500a"}}}}
          b: {{http: {{url: "{api.url}/e429b"}}}}
    """)
    started = time.monotonic()
    report = await run(path)
    assert report.ok and api.hits == {"e500a": 3, "e429b": 2}
    assert {r.id: r.attempts for r in report.records} == {"a": 3, "b": 2}
    assert time.monotonic() - started >= 0.95


async def test_needs_order_results_and_skips(tmp_path: Path) -> None:
    out = tmp_path / "order.txt"
    path = write_flow(tmp_path, f"""
        params: {{n: 4}}
        jobs:
          setup: {{shell: "echo setup >> {out}"}}
          square:
            needs: [setup]
            foreach: {{range: "{{{{ params.n }}}}"}}
            call: tests.jobs:square
            args: ["{{{{ item }}}}"]
          total:
            call: tests.flow.calls:total
            args: ["{{{{ results.square }}}}"]
          broken: {{shell: "exit 3"}}
          after_broken: {{needs: [broken], shell: "echo never >> {out}"}}
          after_that: {{needs: [after_broken], shell: "echo never >> {out}"}}
    """)
    report = await run(path, n=5)
    status = {r.id: r.status for r in report.records}
    assert status["total"] is JobStatus.SUCCEEDED and status["broken"] is JobStatus.FAILED
    assert status["after_broken"] is status["after_that"] is JobStatus.SKIPPED
    # records come in the order jobs ended
    assert sorted(r.id for r in report.records if r.job == "square") == [
        f"square[{i}]" for i in range(5)]
    assert out.read_text() == "setup\n" and not report.ok


async def test_results_pass_between_jobs(tmp_path: Path) -> None:
    path = write_flow(tmp_path, """
        jobs:
          square: {foreach: [1, 2, 3], call: tests.jobs:square, args: ["{{ item }}"]}
          total: {call: tests.flow.calls:total, args: ["{{ results.square }}"]}
          echo: {shell: "echo total={{ results.total }}"}
          show: {call: tests.flow.calls:fetch, args: ["{{ results.echo.stdout }}"]}
    """)
    async with Runner(cpu_workers=1) as runner:
        report = await runner.run_flow(path)
        assert report.ok


async def test_shell_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    path = write_flow(tmp_path, f"""
        jobs:
          slow:
            timeout: 0.5
            shell: "sleep 30 & sleep 30 & echo $$ $! > {pids}; wait"
    """)
    report = await run(path)
    assert report.records[0].status is JobStatus.FAILED
    assert "timeout" in (report.records[0].error or "")
    await wait_until_gone([int(p) for p in pids.read_text().split()], deadline_s=2)


async def test_a_big_foreach_holds_a_bounded_number_of_jobs(tmp_path: Path) -> None:
    from . import flowprobe

    path = write_flow(tmp_path, """
        jobs:
          many: {foreach: {range: 5000}, call: tests.flowprobe:probe, args: ["{{ item }}"]}
    """)
    async with Runner() as runner:
        flowprobe.ENGINE = runner.engine
        report = await runner.run_flow(path)
    assert report.ok and len(report.records) == 5000
    assert 0 < flowprobe.MOST_PENDING <= 1024


async def test_bad_flow_raises_before_anything_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = write_flow(tmp_path, f"""
        jobs:
          a: {{shell: "touch {marker}"}}
          b: {{shell: "true", needs: [nope]}}
    """)
    with pytest.raises(FlowError, match="unknown job 'nope'"):
        await run(path)
    assert not marker.exists()


@pytest.mark.parametrize(("how", "error"), [("raise", "ValueError: bad item 700"),
                                             ("crash", "WorkerCrashed")])
async def test_chunked_cpu_items_fail_alone(tmp_path: Path, how: str, error: str) -> None:
    path = write_flow(tmp_path, f"""
        jobs:
          square:
            foreach: {{range: 1500}}
            call: tests.jobs:square_unless
            args: ["{{{{ item }}}}", 700, {how}]
          total: {{call: tests.flow.calls:total, args: ["{{{{ results.square }}}}"]}}
    """)
    async with Runner(cpu_workers=2) as runner:
        report = await runner.run_flow(path)
        counts = runner.engine.core.counts
        engine_jobs = sum(counts[s] for s in JobStatus if s.terminal)
    items = sorted((r for r in report.records if r.job == "square"),
                   key=lambda r: int(r.id[7:-1]))
    assert [r.id for r in items] == [f"square[{i}]" for i in range(1500)]
    failed = [r for r in items if r.status is not JobStatus.SUCCEEDED]
    assert [r.id for r in failed] == ["square[700]"]
    assert (failed[0].error or "").startswith(error)
    assert all(r.started is not None and r.ended is not None for r in items)
    assert {r.id: r.status for r in report.records}["total"] is JobStatus.SKIPPED
    # items went in chunks (one job each would be 1,500; a crashed chunk reruns its items
    # one by one, and a loaded machine measures items slower, so smaller chunks)
    assert engine_jobs < 1500 / 2


async def test_chunked_results_keep_item_order(tmp_path: Path) -> None:
    path = write_flow(tmp_path, """
        jobs:
          square: {foreach: {range: 2000}, call: tests.jobs:square, args: ["{{ item }}"]}
          total: {call: tests.flow.calls:total, args: ["{{ results.square }}"]}
    """)
    async with Runner(cpu_workers=2) as runner:
        report = await runner.run_flow(path)
    assert report.ok and report.results["total"] == sum(i * i for i in range(2000))


async def test_chunked_cpu_items_are_timed_one_by_one(tmp_path: Path) -> None:
    path = write_flow(tmp_path, """
        jobs:
          naps:
            foreach: [0.0, 0.08, 0.0, 0.08, 0.0, 0.08]
            call: tests.flow.calls:nap
            args: ["{{ item }}"]
            kind: cpu
    """)
    async with Runner(cpu_workers=1) as runner:
        report = await runner.run_flow(path)
    assert report.ok, report.summary_lines()
    took = {r.id: r.duration_s for r in report.records}
    for i in range(6):
        duration = took[f"naps[{i}]"]
        assert duration is not None
        if i % 2:
            assert 0.07 <= duration < 1.0, took
        else:
            assert duration < 0.05, took
    slowest = next(line for line in report.summary_lines() if line.startswith("slowest"))
    assert "naps[1]" in slowest and "0.00s" not in slowest


async def test_a_lines_file_that_turns_bad_midway_fails_its_job_only(tmp_path: Path) -> None:
    from asyncjobs.flow import plan as plan_module

    (tmp_path / "items.txt").write_bytes(
        b"a\nb\n" + b"x" * (plan_module.MAX_LINE_BYTES + 10) + b"\nc\n")
    path = write_flow(tmp_path, """
        jobs:
          each: {foreach: {lines: items.txt}, shell: "echo {{ item }}"}
          other: {shell: "echo fine"}
    """)
    async with Runner() as runner:
        flow = runner.open_flow(path)
        assert flow.total is None  # a lines file is counted as it is read
        report = await flow.run()
    status = {r.id: r.status for r in report.records}
    assert status["other"] is JobStatus.SUCCEEDED
    assert status["each[0]"] is status["each[1]"] is JobStatus.SUCCEEDED
    assert status["each[2]"] is JobStatus.FAILED and not report.ok
    failed = next(r for r in report.records if r.id == "each[2]")
    assert (failed.error or "").startswith("FlowError: ") and "items.txt" in failed.error
