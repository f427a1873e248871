"""A foreach job's items: ranges are counted, never listed; a lines file is read lazily,
a bounded line at a time, and never before the job starts."""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

from asyncjobs.errors import FlowError
from asyncjobs.flow.loader import load_flow
from asyncjobs.flow.plan import MAX_LINE_BYTES, count_items, iter_items

from ..conftest import write_flow

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from asyncjobs.flow.spec import FlowSpec


def in_thread(fn: Callable[[], Any], timeout_s: float = 10) -> Any:
    """``fn()``, failing the test (instead of hanging it) when it blocks."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(("ok", fn()))
        except BaseException as exc:  # handed back to the test
            box.append(("raised", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert box, f"blocked for more than {timeout_s}s"
    kind, value = box[0]
    if kind == "raised":
        raise value
    return value


def lines_flow(tmp_path: Path, lines: str = "ids.txt") -> FlowSpec:
    return load_flow(write_flow(tmp_path, f"""
        jobs:
          a: {{shell: "echo {{{{ item }}}}", foreach: {{lines: "{lines}"}}}}
    """))


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    if not hasattr(os, "mkfifo"):  # pragma: no cover - Windows
        pytest.skip("no FIFOs here")
    path = tmp_path / "ids.txt"
    os.mkfifo(path)
    return path


def test_counting_a_lines_file_reads_nothing_and_does_not_block(fifo: Path) -> None:
    spec = lines_flow(fifo.parent)
    assert in_thread(lambda: count_items(spec.jobs["a"], spec, {})) is None


def test_a_lines_file_that_never_ends_yields_its_first_items(fifo: Path) -> None:
    spec = lines_flow(fifo.parent)
    job = spec.jobs["a"]
    assert count_items(job, spec, {}) is None
    opened = threading.Event()
    release = threading.Event()

    def writer() -> None:
        with fifo.open("w") as f:
            opened.set()
            f.write("first\n\nsecond\n")
            f.flush()
            release.wait(10)  # the file stays open: it has not ended
            f.write("third\n")

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    items = in_thread(lambda: iter_items(job, spec, {}))
    assert in_thread(lambda: [next(items), next(items)]) == ["first", "second"]
    release.set()
    assert in_thread(lambda: list(items)) == ["third"]
    thread.join(10)


def test_a_line_without_an_end_is_an_error_naming_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "ids.txt").write_bytes(b"ok\n" + b"x" * (MAX_LINE_BYTES + 10))
    spec = lines_flow(tmp_path)
    items = iter_items(spec.jobs["a"], spec, {})
    assert next(items) == "ok"
    with pytest.raises(FlowError, match=r"line 2 of foreach lines file '.*ids.txt' is longer "
                       r"than 1,048,576 bytes") as info:
        next(items)
    assert (info.value.line, info.value.key) == (2, "jobs.a.foreach.lines")


def test_a_line_of_exactly_the_limit_is_read(tmp_path: Path) -> None:
    (tmp_path / "ids.txt").write_bytes(b"y" * MAX_LINE_BYTES + b"\r\nz")
    spec = lines_flow(tmp_path)
    assert [len(x) for x in iter_items(spec.jobs["a"], spec, {})] == [MAX_LINE_BYTES, 1]


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_zeros_without_a_newline_are_refused_at_the_first_line(tmp_path: Path) -> None:
    spec = lines_flow(tmp_path, "/dev/zero")
    items = iter_items(spec.jobs["a"], spec, {})
    with pytest.raises(FlowError, match="line 1 of foreach lines file '/dev/zero' is longer"):
        in_thread(lambda: next(items))


def test_a_lines_file_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "ids.txt").write_bytes("a\nb\ncafé\n".encode("latin-1"))
    spec = lines_flow(tmp_path)
    with pytest.raises(FlowError, match=r"line 3 of .* is not UTF-8 \(byte 0xe9 at column 4\)"):
        list(iter_items(spec.jobs["a"], spec, {}))


@pytest.mark.parametrize(("name", "message"), [("nope.txt", "No such file"),
                                               (".", "Is a directory")])
def test_a_lines_file_that_cannot_be_opened_fails_the_count(
    tmp_path: Path, name: str, message: str
) -> None:
    spec = lines_flow(tmp_path, name)
    with pytest.raises(FlowError, match=f"cannot read foreach lines file .*{message}") as info:
        count_items(spec.jobs["a"], spec, {})
    assert (info.value.line, info.value.key) == (2, "jobs.a.foreach.lines")


def test_foreach_templates_that_fail_name_the_job(tmp_path: Path) -> None:
    spec = load_flow(write_flow(tmp_path, """
        jobs:
          a: {shell: "true", foreach: {lines: "{{ env.LIST }}"}}
          b: {shell: "true", foreach: ["{{ env.ITEM }}"]}
    """))
    with pytest.raises(FlowError, match="env.LIST is not there") as info:
        count_items(spec.jobs["a"], spec, {})
    assert (info.value.path, info.value.line) == (spec.path, 2)
    with pytest.raises(FlowError, match="env.ITEM is not there") as info:
        iter_items(spec.jobs["b"], spec, {})
    assert (info.value.path, info.value.key) == (spec.path, "jobs.b")


def test_a_huge_range_is_counted_at_once(tmp_path: Path) -> None:
    spec = load_flow(write_flow(tmp_path, """
        jobs:
          a: {shell: "true", foreach: {range: 1000000000000}}
          b: {shell: "true", foreach: {range: [5, 1000000000000000000000, 7]}}
    """))
    started = time.perf_counter()
    assert count_items(spec.jobs["a"], spec, {}) == 10**12
    assert time.perf_counter() - started < 1
    items = iter_items(spec.jobs["b"], spec, {})
    assert [next(items), next(items)] == [5, 12]
    with pytest.raises(FlowError, match=r"has more than 9,223,372,036,854,775,807 items") as info:
        count_items(spec.jobs["b"], spec, {})
    assert info.value.key == "jobs.b.foreach.range"


@pytest.mark.parametrize(
    ("bounds", "message"),
    [("[0, 10, 0]", "must not be zero"),
     ('"{{ params.inf }}"', "whole numbers"),
     ('"{{ params.nan }}"', "whole numbers"),
     ('"{{ params.digits }}"', "whole numbers")],
)
def test_bad_range_bounds_are_flow_errors(tmp_path: Path, bounds: str, message: str) -> None:
    spec = load_flow(write_flow(tmp_path, f"""
        params: {{inf: .inf, nan: .nan, digits: "{'9' * 5000}"}}
        jobs:
          a: {{shell: "true", foreach: {{range: {bounds}}}}}
    """))
    for check in (count_items, iter_items):
        with pytest.raises(FlowError, match=message) as info:
            check(spec.jobs["a"], spec, {})
        assert info.value.key == "jobs.a.foreach.range"
