"""The Backend seam: map and flows run on any backend, here an engine whose executors are
handed in (cpu jobs on threads), as a loop node or a test may hand in its own."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from asyncjobs.engine import Engine
from asyncjobs.executors.io import IoExecutor
from asyncjobs.executors.thread import ThreadExecutor
from asyncjobs.flow.loader import load_flow
from asyncjobs.flow.plan import plan_flow
from asyncjobs.flowrun import FlowRun
from asyncjobs.mapper import MapRun
from asyncjobs.model import JobKind
from asyncjobs.targets import resolve_target

from . import jobs
from .conftest import write_flow

if TYPE_CHECKING:
    from pathlib import Path

    from asyncjobs.executors.base import Executor, Sink


def threads_for_cpu(sink: Sink) -> dict[JobKind, Executor]:
    return {JobKind.IO: IoExecutor(sink), JobKind.CPU: ThreadExecutor(sink, 2),
            JobKind.THREAD: ThreadExecutor(sink, 2)}


def engine() -> Engine:
    return Engine(threads_for_cpu, {JobKind.IO: None, JobKind.CPU: 2, JobKind.THREAD: 2})


async def test_map_runs_on_an_engine_with_executors_handed_in() -> None:
    backend = engine()
    try:
        results = await MapRun(backend, resolve_target(jobs.square), iterables=(range(50),),
                               window=8, return_exceptions=False, ids=itertools.count()).run()
    finally:
        await backend.aclose(cancel=True)
    assert results == [i * i for i in range(50)]


async def test_a_flow_runs_on_an_engine_with_executors_handed_in(tmp_path: Path) -> None:
    path = write_flow(tmp_path, """
        limits: {two: 2}
        jobs:
          square: {foreach: {range: 20}, call: tests.jobs:square, args: ["{{ item }}"],
                   limit: two}
          total: {call: tests.flow.calls:total, args: ["{{ results.square }}"]}
    """)
    backend = engine()
    try:
        report = await FlowRun(backend, plan_flow(load_flow(path)), env={}).run()
    finally:
        await backend.aclose(cancel=True)
    assert report.ok, report.summary_lines()
    assert report.results == {"total": sum(i * i for i in range(20))}
