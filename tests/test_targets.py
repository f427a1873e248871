"""One kind inference and one resolver, whichever way a job is given."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import pytest

from asyncjobs import JobKind, Runner
from asyncjobs.errors import FlowError
from asyncjobs.flow.loader import load_flow
from asyncjobs.targets import TargetError, infer_kind, resolve_ref, resolve_target

from .conftest import write_flow
from .flow import calls

if TYPE_CHECKING:
    from pathlib import Path


class SyncCallable:
    def __call__(self, x: int) -> int:
        return x


class Methods:
    async def aio(self) -> int:
        return 1

    def cpu(self) -> int:
        return 1


@pytest.mark.parametrize(("fn", "kind"), [
    (calls.fetch, JobKind.IO),
    (calls.add, JobKind.CPU),
    (calls.async_object, JobKind.IO),
    (calls.async_partial, JobKind.IO),
    (functools.partial(functools.partial(calls.fetch, 1)), JobKind.IO),
    (functools.partial(calls.add, 1), JobKind.CPU),
    (SyncCallable(), JobKind.CPU),
    (Methods().aio, JobKind.IO),
    (Methods().cpu, JobKind.CPU),
    (calls.marked, JobKind.THREAD),
])
def test_one_kind_for_a_callable_by_object_and_by_reference(fn: Any, kind: JobKind) -> None:
    assert resolve_target(fn).kind is kind
    if kind is not JobKind.THREAD:
        assert infer_kind(fn) is kind


@pytest.mark.parametrize("name", ["async_object", "async_partial", "fetch", "add", "marked"])
def test_a_flow_infers_the_kind_submit_does(tmp_path: Path, name: str) -> None:
    path = write_flow(tmp_path, f"jobs:\n  a: {{call: 'tests.flow.calls:{name}'}}\n")
    job = load_flow(path).jobs["a"]
    assert job.kind is resolve_target(getattr(calls, name)).kind


async def test_an_async_callable_object_runs_as_io_from_submit_and_from_a_flow(
    tmp_path: Path,
) -> None:
    path = write_flow(tmp_path, """
        jobs:
          obj: {call: 'tests.flow.calls:async_object', args: [7]}
          part: {call: 'tests.flow.calls:async_partial'}
    """)
    async with Runner(cpu_workers=1) as runner:
        assert await runner.submit(calls.async_object, 5) == 5
        assert await runner.submit("tests.flow.calls:async_partial") == "partial"
        report = await runner.run_flow(path)
    assert report.ok, report.summary_lines()
    assert report.results == {"obj": 7, "part": "partial"}


@pytest.mark.parametrize(("ref", "message"), [
    ("no_colon", "expected 'module:attribute'"),
    ("tests.flow.calls:ad", "did you mean 'add'?"),
    ("tests.flow.calls:Opaque.nope", "has no attribute 'Opaque.nope'"),
    ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
    ("tests.flow.exits_on_import:f", "SystemExit: this module refuses to be imported"),
])
def test_unresolvable_references_raise_one_error_type(ref: str, message: str) -> None:
    with pytest.raises(TargetError, match=message.replace("(", r"\(").replace("?", r"\?")):
        resolve_ref(ref)


def test_a_module_that_exits_on_import_is_a_flow_error_naming_it(tmp_path: Path) -> None:
    path = write_flow(tmp_path, "jobs:\n  a: {call: 'tests.flow.exits_on_import:f'}\n")
    with pytest.raises(FlowError) as info:
        load_flow(path)
    assert info.value.key == "jobs.a.call" and info.value.line == 2
    assert "tests.flow.exits_on_import" in info.value.message


def test_validation_resolves_each_reference_once(tmp_path: Path) -> None:
    seen: list[str] = []

    def resolve(ref: str) -> Any:
        seen.append(ref)
        return resolve_target(ref)

    path = write_flow(tmp_path, """
        jobs:
          a: {call: 'tests.flow.calls:add', args: [1, 2]}
          b: {call: 'tests.flow.calls:add', args: [3, 4]}
          c: {call: 'tests.flow.calls:total', args: [[1]]}
    """)
    load_flow(path, resolve=resolve)
    assert seen == ["tests.flow.calls:add", "tests.flow.calls:total"]
