"""Random YAML documents, random tags, anchors and byte mutations: ``load_flow`` returns a
FlowSpec or raises FlowError, nothing else, and quickly. What loads is planned, counted
and described (``--dry-run``) too, under the same rule."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncjobs.errors import FlowError
from asyncjobs.flow.loader import JOB_KEYS, load_flow
from asyncjobs.flow.plan import count_items, describe_plan, plan_flow
from asyncjobs.flow.spec import FlowSpec
from asyncjobs.model import JobKind
from asyncjobs.targets import Target, TargetError

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

#: each example's document is at most this large before mutation
MAX_DOC_CHARS = 20_000
#: seconds one example may take (loose: a shared machine; a real one takes milliseconds)
MAX_EXAMPLE_S = 5.0

TAGS = ["!!binary", "!!timestamp", "!!set", "!!omap", "!!pairs", "!!int", "!!float",
        "!!bool", "!!null", "!!str", "!!seq", "!!map", "!!merge", "!!value",
        "!!python/name:os.system", "!!python/object/apply:os.system", "!foo", "!",
        "!<tag:yaml.org,2002:int>", "!<!bar>"]
SNIPPETS = ["&a ", "*a", "<<: *a", "<<: ", "? ", "- ", "{", "}", "[", "]", ": ", "---\n",
            "...\n", "\t", "'", '"', "\\", "#", "|\n", ">-\n", "%YAML 1.1\n", "~", "{{ ",
            " }}", "{{ item }}", "{{ params.n }}", "{{ results.a }}", "9" * 5000, "1e999",
            ".nan", "0x", "0o7", "1:30", "2001-12-14", "=", "\x00", "\x1b[31m", "\ufeff",
            "\ud800"]

scalars = (st.none() | st.booleans() | st.integers() | st.integers(-10**30, 10**30)
           | st.floats(allow_nan=True) | st.text(max_size=30)
           | st.sampled_from(["{{ item }}", "{{ params.n }}", "{{ results.a }}", "a", "b",
                              "tests.flow.calls:add", "x:y", "10/s", "30s", "cpu", "io"]))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=10) | st.sampled_from(list(JOB_KEYS)), inner,
                      max_size=5),
    max_leaves=40,
)
names = st.sampled_from(["a", "b", "c", "setup", "x.y", "a b"]) | st.text(min_size=1, max_size=8)
small = st.integers(-2, 5) | values
#: the keys a job may have besides its action, with values that are often right
extras = {
    "needs": st.lists(names, max_size=3) | values,
    "foreach": st.fixed_dictionaries({}, optional={"range": small | st.lists(small, max_size=4),
                                                   "lines": st.just("ids.txt") | values})
    | st.lists(values, max_size=4) | values,
    "limit": names | values, "kind": st.sampled_from(["io", "cpu", "thread", "gpu"]) | values,
    "retries": small, "backoff": small | st.just("2s"), "timeout": small | st.just("1m"),
    "args": st.lists(values, max_size=3) | values, "kwargs": values, "env": values,
    "cwd": values, "nope": values,
}
job_bodies = (
    st.fixed_dictionaries({"shell": st.sampled_from(["true", "echo {{ item }}",
                                                     "echo {{ results.a }}"]) | values},
                          optional=extras)
    | st.fixed_dictionaries({"call": st.sampled_from(["tests.flow.calls:add", "x:y", "x"])
                             | values}, optional=extras)
    | st.fixed_dictionaries({"http": st.fixed_dictionaries(
        {"url": st.just("http://127.0.0.1/{{ item }}") | values},
        optional={"method": values, "json": values, "data": values, "headers": values,
                  "expect": st.lists(st.integers(0, 700), max_size=2) | values})},
        optional=extras)
    | st.dictionaries(st.sampled_from([*JOB_KEYS, "nope"]), values, max_size=6)
)
flows = st.fixed_dictionaries(
    {"jobs": st.dictionaries(names, job_bodies, min_size=1, max_size=5) | values},
    optional={"name": names | values, "version": st.just(1) | values,
              "params": st.dictionaries(st.sampled_from(["n", "m"]), values, max_size=2),
              "defaults": st.fixed_dictionaries({}, optional={k: extras[k] for k in (
                  "retries", "backoff", "timeout")}) | values,
              "limits": st.dictionaries(names, small | st.fixed_dictionaries(
                  {}, optional={"concurrency": small, "rate": st.just("5/s") | values}),
                  max_size=2)},
)
documents = (flows | values).map(
    lambda doc: yaml.safe_dump(doc, allow_unicode=True, default_flow_style=None,
                               sort_keys=False)
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    text = draw(documents)[:MAX_DOC_CHARS]
    for _ in range(draw(st.integers(0, 4))):  # tags, anchors and syntax where values start
        spots = [i for i, c in enumerate(text) if c in ":-[{,\n"] or [0]
        at = draw(st.sampled_from(spots)) + 1
        piece = draw(st.sampled_from(TAGS)) + " " if draw(st.booleans()) else \
            draw(st.sampled_from(SNIPPETS))
        text = text[:at] + piece + text[at:]
    data = text.encode("utf-8", "surrogatepass")
    for _ in range(draw(st.integers(0, 3))):  # raw bytes: not UTF-8, NULs, cut short
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
        byte = bytes([draw(st.integers(0, 255))])
        if kind == "replace":
            data = data[:at] + byte + data[at + 1:]
        elif kind == "insert":
            data = data[:at] + byte + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + 1:]
        else:
            data = data[:at]
    return data


def resolve(ref: str) -> Target:
    """Resolves without importing anything a random document names."""
    if ref == "tests.flow.calls:add":
        return Target(fn=print, name="add", kind=JobKind.CPU)
    raise TargetError(f"cannot import {ref!r} (fuzzing)")


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=mutated())
def test_any_document_loads_or_is_a_flow_error(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    path: Path = tmp_path_factory.getbasetemp() / "fuzz.yaml"
    path.write_bytes(data)
    started = time.perf_counter()
    try:
        spec = load_flow(path, resolve=resolve)
        assert isinstance(spec, FlowSpec)
        plan = plan_flow(spec)
        for job in spec.jobs.values():
            count_items(job, spec, {})
        assert describe_plan(plan, {})
    except FlowError as exc:
        assert exc.path == str(path)
        assert str(exc)  # formats
    elapsed = time.perf_counter() - started
    assert elapsed < MAX_EXAMPLE_S, f"{elapsed:.1f}s for {len(data)} bytes"

