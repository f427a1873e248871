"""jobs.yaml validation: every error says file, line, key and what was expected."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from asyncjobs.errors import FlowError
from asyncjobs.flow.loader import load_flow
from asyncjobs.flow.plan import plan_flow
from asyncjobs.flow.spec import CallAction, HttpAction, ShellAction
from asyncjobs.model import JobKind

from ..conftest import write_flow

if TYPE_CHECKING:
    from pathlib import Path


def error_of(tmp_path: Path, text: str, **params: str) -> FlowError:
    path = write_flow(tmp_path, text)
    with pytest.raises(FlowError) as info:
        plan_flow(load_flow(path, params))
    assert info.value.path == str(path)
    return info.value


GOOD = """
name: demo
params:
  count: 3
defaults:
  retries: 2
  backoff: 0.5
  timeout: 30
limits:
  api: {concurrency: 50, rate: 200/s}
  db: 5
jobs:
  setup:
    shell: "mkdir -p out"
  create:
    needs: [setup]
    foreach: {range: "{{ params.count }}"}
    limit: api
    http:
      method: post
      url: "http://127.0.0.1:8080/flows"
      json: {name: "flow-{{ item }}"}
      expect: [200, 201]
  add:
    call: tests.flow.calls:add
    args: [1, 2]
    retries: 0
  total:
    call: tests.flow.calls:total
    args: ["{{ results.add }}"]
    kind: thread
  marked:
    call: tests.flow.calls:marked
    args: [1]
  fetch:
    call: tests.flow.calls:fetch
"""


def test_a_good_flow_loads_with_defaults_applied(tmp_path: Path) -> None:
    spec = load_flow(write_flow(tmp_path, GOOD))
    assert spec.name == "demo" and spec.params == {"count": 3}
    assert spec.limits["api"].concurrency == 50 and spec.limits["api"].rate_per_s == 200
    assert spec.limits["db"].concurrency == 5 and spec.limits["db"].rate_per_s is None
    setup, create, add = spec.jobs["setup"], spec.jobs["create"], spec.jobs["add"]
    assert isinstance(setup.action, ShellAction) and setup.kind is JobKind.IO
    assert isinstance(create.action, HttpAction) and create.action.method == "POST"
    assert create.action.expect == (200, 201) and create.limit == "api"
    assert (create.retries, create.backoff_s, create.timeout_s) == (2, 0.5, 30.0)
    assert isinstance(add.action, CallAction) and add.kind is JobKind.CPU
    assert add.retries == 0 and setup.line == 12
    assert spec.jobs["total"].kind is JobKind.THREAD
    marked = spec.jobs["marked"]  # @job marks count, below the file's own settings
    assert marked.kind is JobKind.THREAD and marked.retries == 2 and marked.timeout_s == 30
    assert spec.jobs["fetch"].kind is JobKind.IO


def test_name_defaults_to_the_file_stem(tmp_path: Path) -> None:
    assert load_flow(write_flow(tmp_path, "jobs:\n  a: {shell: 'true'}\n")).name == "jobs"


def test_params_override_is_coerced_to_the_default_type(tmp_path: Path) -> None:
    spec = load_flow(write_flow(tmp_path, GOOD), {"count": "10"})
    assert spec.params["count"] == 10


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [
        ("jobs:\n  a: {shell: 'x'\n", 3, None, "YAML syntax error"),
        ("- 1\n- 2\n", 1, None, "a flow file must be a mapping"),
        ("jobs:\n  a:\n    shell: x\n    need: [b]\n", 4, "jobs.a.need",
         "unknown key 'need' in job 'a'; did you mean 'needs'?"),
        ("nmae: x\njobs:\n  a: {shell: x}\n", 1, "nmae", "did you mean 'name'?"),
        ("jobs:\n  a:\n    needs: []\n", 2, "jobs.a",
         "exactly one of call, shell, http (found: none)"),
        ("jobs:\n  a:\n    shell: x\n    http: {url: y}\n", 2, "jobs.a",
         "(found: shell, http)"),
        ("jobs:\n  a: {shell: x}\n  b:\n    shell: y\n    needs: [c]\n", 5, "jobs.b.needs",
         "needs unknown job 'c'"),
        ("jobs:\n  setup: {shell: x}\n  b:\n    shell: y\n    needs: [stup]\n", 5,
         "jobs.b.needs", "did you mean 'setup'?"),
        ("jobs:\n  a:\n    shell: x\n    needs: [b]\n  b:\n    shell: y\n    needs: [a]\n", 2,
         "jobs.a.needs", "cycle: a -> b -> a"),
        ("jobs:\n  a:\n    shell: x\n    limit: api\n", 4, "jobs.a.limit", "unknown limit 'api'"),
        ("jobs:\n  a:\n    shell: 'echo {{ params.n }}'\n", 3, "jobs.a.shell",
         "unknown param 'n'"),
        ("jobs:\n  a:\n    shell: 'echo {{ results.zz }}'\n", 3, "jobs.a.shell",
         "unknown job 'zz'"),
        ("jobs:\n  a:\n    shell: 'echo {{ item }}'\n", 3, "jobs.a.shell",
         "only known in a job with foreach"),
        ("jobs:\n  a:\n    shell: 'echo {{ __import__(\"os\") }}'\n", 3, "jobs.a.shell",
         "never evaluated"),
        ("jobs:\n  a:\n    call: no_such_module_xyz:f\n", 3, "jobs.a.call",
         "cannot import module 'no_such_module_xyz'"),
        ("jobs:\n  a:\n    call: tests.flow.calls:ad\n", 3, "jobs.a.call",
         "has no attribute 'ad'; did you mean 'add'?"),
        ("jobs:\n  a:\n    call: not-a-ref\n", 3, "jobs.a.call", "'module:attribute'"),
        ("limits:\n  api: {rate: fast}\njobs:\n  a: {shell: x}\n", 2, "limits.api.rate",
         "expected a rate above zero like '200/s'"),
        ("limits:\n  api: {rate: 0/s}\njobs:\n  a: {shell: x}\n", 2, "limits.api.rate",
         "rate above zero"),
        ("limits:\n  api: 0\njobs:\n  a: {shell: x}\n", 2, "limits.api.concurrency",
         "at least 1"),
        ("jobs:\n  a:\n    shell: x\n    retries: -1\n", 4, "jobs.a.retries", "at least 0"),
        ("defaults:\n  retries: -2\njobs:\n  a: {shell: x}\n", 2, "defaults.retries",
         "at least 0"),
        ("jobs:\n  a:\n    shell: x\n    timeout: 0\n", 4, "jobs.a.timeout", "above 0 seconds"),
        ("jobs:\n  a:\n    shell: x\n    backoff: -1\n", 4, "jobs.a.backoff", "0 or more"),
        ("jobs:\n  a:\n    shell: x\n    kind: gpu\n", 4, "jobs.a.kind",
         "one of io, cpu, thread"),
        ("jobs:\n  a:\n    shell: x\n    kind: cpu\n", 4, "jobs.a.kind",
         "a shell job runs as io"),
        ("jobs:\n  a:\n    shell: x\n    needs: b\n", 4, "jobs.a.needs", "list of names"),
        ("jobs:\n  a:\n    call: tests.flow.calls:add\n    args: 3\n", 4, "jobs.a.args",
         "must be a list"),
        ("jobs:\n  a:\n    http: {url: x, expect: [ok]}\n", 3, "jobs.a.http.expect",
         "list of HTTP statuses"),
        ("jobs:\n  a:\n    http: {method: GET}\n", 3, "jobs.a.http", "needs a url"),
        ("jobs:\n  a:\n    shell: x\n    foreach: {rang: 3}\n", 4, "jobs.a.foreach.rang",
         "did you mean 'range'?"),
        ("jobs:\n  a: {shell: x}\n  a: {shell: y}\n", 3, "jobs.a", "duplicate key 'a'"),
        ("jobs: {}\n", 1, "jobs", "'jobs' is empty"),
        ("jobs:\n  a:\n    shell: x\n    args: [1]\n", 4, "jobs.a.args",
         "args applies to call jobs"),
        ("jobs:\n  a:\n    http: {url: x}\n    env: {A: b}\n", 4, "jobs.a.env",
         "env applies to shell jobs"),
    ],
)
def test_bad_input_names_line_key_and_expectation(
    tmp_path: Path, text: str, line: int, key: str | None, message: str
) -> None:
    err = error_of(tmp_path, text)
    assert message in err.message
    assert (err.line, err.key) == (line, key)
    assert str(err).startswith(f"{tmp_path / 'jobs.yaml'}:{line}")


def test_bad_param_override(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD, count="many")
    assert "--param count='many': expected a int" in err.message
    err = error_of(tmp_path, GOOD, cuont="1")
    assert "declares no param 'cuont'; did you mean 'count'?" in err.message
