"""A call's wire form on the client, and the call a node rebuilds from it."""

from __future__ import annotations

import functools

import pytest

from asyncjobs.executors.base import Call
from asyncjobs.executors.chunk import run_chunk
from asyncjobs.executors.remote import (
    CHUNK,
    HTTP,
    SHELL,
    NodeCalls,
    http_wire,
    shell_wire,
    to_wire,
)
from asyncjobs.executors.shell import run_shell
from asyncjobs.model import JobKind
from asyncjobs.targets import TargetError, reference_of
from tests import jobs


def test_a_module_function_travels_by_its_name() -> None:
    assert reference_of(jobs.add) == "tests.jobs:add"
    assert to_wire(Call(jobs.add, (1, 2), {}, None)) == ("tests.jobs:add", (1, 2), {})


@pytest.mark.parametrize("fn", [
    lambda x: x,
    functools.partial(jobs.add, 1),
])
def test_a_callable_without_an_importable_name_is_refused(fn: object) -> None:
    with pytest.raises(TargetError, match="cannot be sent to a cluster"):
        reference_of(fn)  # type: ignore[arg-type]


def test_a_local_function_is_refused_naming_what_to_do() -> None:
    def local() -> None: ...

    with pytest.raises(TargetError, match="top level of a module"):
        reference_of(local)


def test_a_function_of_main_is_refused() -> None:
    def fn() -> None: ...

    fn.__module__, fn.__qualname__ = "__main__", "fn"
    with pytest.raises(TargetError, match="__main__"):
        reference_of(fn)


def test_a_chunk_travels_with_its_function_by_reference() -> None:
    call = Call(run_chunk, (jobs.square, [(1,), (2,)]), {}, None)
    assert to_wire(call) == (CHUNK, ("tests.jobs:square", [(1,), (2,)], None), {})


def test_a_call_with_a_remote_form_travels_as_that() -> None:
    wire = shell_wire("echo hi", {"A": "1"}, "/nowhere")
    call = Call(run_shell, ("echo hi",), {"env": {"ASYNCJOBS_SECRET": "x"}},
                None, remote=wire)
    assert to_wire(call) == (SHELL, ("echo hi",), {"env": {"A": "1"}, "cwd": "/nowhere"})


def test_the_node_rebuilds_a_user_call_with_the_targets_defaults() -> None:
    calls = NodeCalls()
    call, kind = calls.build("tests.jobs:add_with_retries", (1, 2), None, None, None)
    assert call.fn is jobs.add_with_retries and call.args == (1, 2) and kind is JobKind.CPU
    call, kind = calls.build("tests.jobs:aio_add", [1, 2], {}, None, 5.0)
    assert kind is JobKind.IO and call.timeout_s == 5.0 and call.args == (1, 2)
    _, kind = calls.build("tests.jobs:add", (), None, JobKind.THREAD, None)
    assert kind is JobKind.THREAD


def test_the_node_rebuilds_a_chunk_and_runs_it() -> None:
    call, kind = NodeCalls().build(CHUNK, ("tests.jobs:square", [[3], [4]], None), {}, None,
                                   None)
    assert kind is JobKind.CPU
    outcomes, _ = call.fn(*call.args)
    assert [(ok, value) for ok, value, _ in outcomes] == [(True, 9), (True, 16)]


def test_a_shell_step_runs_in_the_nodes_environment_plus_its_own(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_ONLY", "n")
    call, kind = NodeCalls().build(SHELL, ("true",), {"env": {"OWN": 1},
                                                        "cwd": "/no/such/dir"}, None, None)
    assert kind is JobKind.IO and call.fn is run_shell
    assert call.kwargs["env"]["NODE_ONLY"] == "n" and call.kwargs["env"]["OWN"] == "1"
    assert call.kwargs["cwd"] is None  # the client's folder is not here


def test_an_http_step_is_an_io_call_on_the_nodes_session() -> None:
    ref, args, kwargs = http_wire("GET", "http://127.0.0.1:1/x", expect=[200])
    call, kind = NodeCalls().build(ref, args, kwargs, None, 2.0)
    assert ref == HTTP and kind is JobKind.IO and call.args == ("GET", "http://127.0.0.1:1/x")


def test_a_missing_module_is_imported_once_and_fails_each_attempt_alike() -> None:
    calls = NodeCalls()
    for _ in range(3):
        with pytest.raises(TargetError, match="no_such_module_xyz"):
            calls.build("no_such_module_xyz:f", (), None, None, None)
    assert len(calls._targets) == 1


def test_a_node_knows_which_references_it_still_has_to_import() -> None:
    calls = NodeCalls()
    assert calls.to_import("tests.jobs:add", (1, 2)) == "tests.jobs:add"
    assert calls.to_import(CHUNK, ("tests.jobs:square", [[1]], None)) == "tests.jobs:square"
    assert calls.to_import(SHELL, ("true",)) is None
    calls.preload({"tests.jobs:add", "no_such_module_xyz:f"})  # a failure is remembered
    assert calls.to_import("tests.jobs:add", ()) is None
    assert calls.to_import("no_such_module_xyz:f", ()) is None
    with pytest.raises(TargetError, match="no_such_module_xyz"):
        calls.build("no_such_module_xyz:f", (), None, None, None)
