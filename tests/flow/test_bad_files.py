"""Hostile or broken flow files: each becomes a FlowError naming the file and the line, in
bounded time and memory; never a traceback, never a silent success."""

from __future__ import annotations

import time
import tracemalloc
from typing import TYPE_CHECKING

import pytest
import yaml

from asyncjobs.errors import FlowError
from asyncjobs.flow import yamlnodes
from asyncjobs.flow.loader import load_flow
from asyncjobs.flow.yamlnodes import MAX_DEPTH, load_yaml

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(params=["libyaml", "python"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with libyaml's parser and again with PyYAML's own (the fallback)."""
    if request.param == "python":
        monkeypatch.setattr(yamlnodes, "_Loader", yaml.SafeLoader)
    return str(request.param)


def write_bytes(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "jobs.yaml"
    path.write_bytes(data)
    return path


def error_of(tmp_path: Path, data: bytes, **kwargs: int) -> FlowError:
    path = write_bytes(tmp_path, data)
    with pytest.raises(FlowError) as info:
        load_flow(path, **kwargs)  # type: ignore[arg-type]
    err = info.value
    assert err.path == str(path)
    return err


BAD_IDS = [
    "nul",
    "bel",
    "esc",
    "latin-1",
    "utf-16",
    "utf-16-no-bom",
    "utf-32",
    "binary",
    "timestamp",
    "set",
    "bad-int",
    "empty-int",
    "bad-float",
    "bad-bool",
    "bad-null",
    "python-name",
    "python-apply",
    "custom-scalar",
    "custom-seq",
    "custom-map",
    "seq-on-scalar",
    "merge-scalar",
    "merge-list-scalar",
    "complex-key",
    "alias-key",
    "recursive-alias",
    "undefined-alias",
    "two-documents",
    "huge-int",
    "deep-flow",
    "deep-block",
]


@pytest.mark.parametrize(
    ("data", "line", "message"),
    [
        # characters and encodings
        (b"jobs:\n  a: {shell: \"x\x00\"}\n", 2, "line 2, column 16: a NUL byte"),
        (b"jobs:\n  a: {shell: \"x\x07\"}\n", 2, "control character U+0007"),
        (b"jobs:\n  a: {shell: \"x\x1b[31m\"}\n", 2, "control character U+001B"),
        ("jobs:\n  a: {shell: 'café'}\n".encode("latin-1"), 2,
         "not UTF-8: byte 0xe9 at offset 23 (line 2, column 18)"),
        ("jobs:\n  a: {shell: x}\n".encode("utf-16"), 1, "UTF-16"),
        ("jobs:\n  a: {shell: x}\n".encode("utf-16-le"), 1, "NUL byte"),
        ("jobs:\n  a: {shell: x}\n".encode("utf-32"), 1, "UTF-32"),
        # tags: only the plain YAML types
        (b"jobs:\n  a: {shell: !!binary aGVsbG8=}\n", 2, "tag '!!binary' is not accepted"),
        (b"jobs:\n  a:\n    shell: !!timestamp 2001-12-14\n", 3, "'!!timestamp'"),
        (b"jobs:\n  a: {shell: x}\n  b: !!set {x, y}\n", 3, "'!!set' is not accepted"),
        (b"jobs:\n  a: {shell: x, retries: !!int abc}\n", 2, "'abc' is not a whole number"),
        (b"jobs:\n  a: {shell: x, retries: !!int ''}\n", 2, "is not a whole number"),
        (b"jobs:\n  a: {shell: x, backoff: !!float x}\n", 2, "'x' is not a number"),
        (b"jobs:\n  a: {shell: x, retries: !!bool maybe}\n", 2, "!!bool takes"),
        (b"jobs:\n  a: {shell: x, retries: !!null 3}\n", 2, "!!null takes"),
        (b"jobs:\n  a:\n    shell: !!python/name:os.system x\n", 3, "'!!python/name:os.system'"),
        (b"jobs:\n  a:\n    shell: !!python/object/apply:os.system [ls]\n", 3,
         "'!!python/object/apply:os.system' is not accepted on a list"),
        (b"jobs:\n  a: {shell: !custom x}\n", 2, "tag '!custom' is not accepted"),
        (b"jobs:\n  a:\n    shell: x\n    needs: !custom []\n", 4,
         "tag '!custom' is not accepted on a list"),
        (b"jobs: !custom\n  a: {shell: x}\n", 1, "tag '!custom' is not accepted on a mapping"),
        (b"jobs:\n  a: {shell: !!seq x}\n", 2, "tag '!!seq' is not accepted"),
        # structure
        (b"jobs:\n  a: {<<: 3, shell: x}\n", 2, "a merge key (<<) takes a mapping"),
        (b"jobs:\n  a: {<<: [{retries: 1}, 3], shell: x}\n", 2, "a merge key (<<) takes"),
        (b"jobs:\n  ? [a]\n  : {shell: x}\n", 2, "a mapping key must be a plain value"),
        (b"x: &k [1]\njobs:\n  *k : {shell: x}\n", 3, "a mapping key must be a plain value"),
        (b"jobs:\n  a: &x {shell: x, args: [*x]}\n", 2, "used inside the value it names"),
        (b"jobs:\n  a: {shell: *nope}\n", 2, "the alias *nope names no anchor"),
        (b"jobs:\n  a: {shell: x}\n---\njobs: {}\n", 3, "one YAML document"),
        (b"jobs:\n  a: {shell: x, retries: " + b"9" * 100_000 + b"}\n", 2,
         "(100,000 characters, 100,000 digits) is too long for a whole number"),
        (b"jobs:\n  a: {shell: x, args: " + b"[" * 50_000 + b"]" * 50_000 + b"}\n", 2,
         "nest"),  # libyaml's own limit, or ours
        (b"jobs:\n  a:\n    shell: x\n    args:\n" + b"".join(
            b"  " * (i + 3) + b"- \n" for i in range(150)) + b"  " * 153 + b"- 1\n",
         MAX_DEPTH + 2, f"nested more than {MAX_DEPTH} deep"),
    ],
    ids=BAD_IDS,
)
def test_a_bad_file_is_a_flow_error_with_its_line(
    parser: str, tmp_path: Path, data: bytes, line: int, message: str
) -> None:
    err = error_of(tmp_path, data)
    assert message in err.message
    assert err.line == line


def test_an_error_inside_a_job_names_the_key(tmp_path: Path) -> None:
    err = error_of(tmp_path, b"jobs:\n  a:\n    shell: x\n    retries: !!int abc\n")
    assert (err.line, err.key) == (4, "jobs.a.retries")
    err = error_of(tmp_path, b"jobs:\n  a:\n    shell: x\n    needs: !custom []\n")
    assert (err.line, err.key) == (4, "jobs.a.needs")


@pytest.mark.parametrize(("setting", "value"), [("timeout", ".inf"), ("backoff", ".nan"),
                                                ("timeout", "1.0e+999"), ("backoff", "-.inf")])
def test_durations_must_be_finite(tmp_path: Path, setting: str, value: str) -> None:
    err = error_of(tmp_path, f"jobs:\n  a:\n    shell: x\n    {setting}: {value}\n".encode())
    assert "finite number of seconds" in err.message or "0 or more" in err.message
    assert (err.line, err.key) == (4, f"jobs.a.{setting}")


def test_plain_types_explicit_or_implicit_load(parser: str, tmp_path: Path) -> None:
    spec = load_flow(write_bytes(tmp_path, b"\xef\xbb\xbf" + b"""
params:
  s: !!str 123
  i: !!int "12"
  f: !!float 1
  b: !!bool yes
  n: !!null ~
  day: 2001-12-14
  eq: =
  hexa: 0x1F
  seq: !!seq [1, 2]
  map: !!map {k: v}
  nonspecific: ! 3
jobs:
  a: {shell: x}
"""))
    assert spec.params == {"s": "123", "i": 12, "f": 1.0, "b": True, "n": None,
                           "day": "2001-12-14", "eq": "=", "hexa": 31, "seq": [1, 2],
                           "map": {"k": "v"}, "nonspecific": 3}


def test_merge_keys_of_mappings_apply_with_the_mappings_own_keys_first(
    parser: str, tmp_path: Path
) -> None:
    spec = load_flow(write_bytes(tmp_path, b"""
jobs:
  a: &base {shell: x, retries: 1, timeout: 5}
  b:
    <<: *base
    retries: 3
  c:
    <<: [{retries: 4}, *base]
    shell: y
"""))
    assert (spec.jobs["b"].retries, spec.jobs["b"].timeout_s) == (3, 5.0)
    assert (spec.jobs["c"].retries, spec.jobs["c"].timeout_s) == (4, 5.0)
    assert spec.jobs["c"].raw["shell"] == "y"


def test_an_alias_bomb_is_refused_in_bounded_time_and_memory(parser: str, tmp_path: Path) -> None:
    levels = [b'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        refs = ", ".join([f"*a{i - 1}"] * 9).encode()
        levels.append(b"a%d: &a%d [%s]" % (i, i, refs))
    data = b"params:\n" + b"".join(b"  " + lv + b"\n" for lv in levels) + b"jobs: {a: {shell: x}}\n"
    tracemalloc.start()
    started = time.perf_counter()
    try:
        err = error_of(tmp_path, data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "aliases expand to more than 1,000,000 values" in err.message
    assert time.perf_counter() - started < 10
    assert peak < 20 * 2**20


def test_aliases_within_budget_share_their_value(tmp_path: Path) -> None:
    spec = load_flow(write_bytes(tmp_path, b"""
params:
  xs: &xs [1, 2, 3]
  ys: [*xs, *xs]
jobs: {a: {shell: x}}
"""))
    assert spec.params["ys"] == [[1, 2, 3], [1, 2, 3]]


def test_aliases_cannot_nest_past_the_depth_limit() -> None:
    deep = "&d " + "[" * 60 + "]" * 60
    with pytest.raises(FlowError, match="nests lists and mappings more than"):
        load_yaml(f"a: {deep}\nb: [{'[' * 50}*d{']' * 50}]\n", "f.yaml")


def test_nesting_up_to_the_limit_loads() -> None:
    depth = MAX_DEPTH - 1  # the document's own mapping is one level
    doc = load_yaml("a: " + "[" * depth + "1" + "]" * depth + "\n", "f.yaml")
    value = doc.value["a"]
    for _ in range(depth - 1):
        value = value[0]
    assert value == [1]


def test_a_large_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    with path.open("wb") as f:
        f.truncate(50 * 2**20)  # 50 MiB, sparse: refusing it must not read it
    started = time.perf_counter()
    with pytest.raises(FlowError, match="52,428,800 bytes, over the limit of 10,485,760"):
        load_flow(path)
    assert time.perf_counter() - started < 1


def test_max_bytes_can_be_lowered_and_raised(tmp_path: Path) -> None:
    path = write_bytes(tmp_path, b"jobs:\n  a: {shell: x}\n")
    with pytest.raises(FlowError, match="over the limit of 10 bytes"):
        load_flow(path, max_bytes=10)
    assert load_flow(path, max_bytes=100).jobs["a"].name == "a"
    with pytest.raises(FlowError, match="over the limit of 10 bytes"):
        load_flow(path, text="jobs:\n  a: {shell: x}\n", max_bytes=10)


def test_a_flow_path_that_never_ends_is_read_only_up_to_the_limit() -> None:
    with pytest.raises(FlowError, match="more than over the limit|over the limit of 1,000"):
        load_flow("/dev/zero", max_bytes=1000)


def test_a_large_legal_file_loads_in_bounded_time(tmp_path: Path) -> None:
    parts = [b"name: big\nparams: {n: 3}\njobs:\n  job0: {shell: 'true'}\n"]
    for i in range(1, 20_000):
        parts.append(b"  job%d:\n    shell: \"echo %d {{ params.n }}\"\n    retries: 1\n"
                     b"    needs: [job%d]\n" % (i, i, i - 1))
    parts.append(b"  fan:\n    shell: 'echo {{ item }}'\n    foreach: [" + b", ".join(
        b"item-%d" % i for i in range(200_000)) + b"]\n")
    path = write_bytes(tmp_path, b"".join(parts))
    assert path.stat().st_size > 3 * 2**20
    started = time.perf_counter()
    spec = load_flow(path)
    elapsed = time.perf_counter() - started
    assert len(spec.jobs) == 20_001 and spec.jobs["job7"].line == 29
    assert spec.jobs["fan"].foreach is not None
    assert len(spec.jobs["fan"].foreach.items or ()) == 200_000
    assert elapsed < 10, f"{elapsed:.1f}s"  # loose: a shared machine; it was 15 s


# -- names with control characters (printed in reports) ---------------------------------

def test_a_job_name_with_a_control_character_is_refused_and_printed_escaped(
    tmp_path: Path,
) -> None:
    err = error_of(tmp_path, b'jobs:\n  ok: {shell: x}\n  "a\\e[31m": {shell: x}\n')
    assert "job name 'a\\x1b[31m' holds the control character U+001B" in err.message
    assert err.line == 3 and err.key == "jobs.a\\x1b[31m"
    assert "\x1b" not in str(err)


@pytest.mark.parametrize(
    "data",
    [b'name: "demo\\a"\njobs: {a: {shell: x}}\n',
     b'limits:\n  "api\\x9b": 5\njobs: {a: {shell: x}}\n',
     b'jobs:\n  "a\\u202eb": {shell: x}\n'],
)
def test_other_printed_names_with_control_characters_are_refused(
    tmp_path: Path, data: bytes
) -> None:
    err = error_of(tmp_path, data)
    assert "control character" in err.message
    assert not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in str(err))


def test_no_error_prints_a_raw_control_character(tmp_path: Path) -> None:
    err = error_of(tmp_path, b'jobs:\n  a:\n    shell: x\n    "ne\\eeds": [b]\n')
    assert "\x1b" not in str(err) and "'ne\\x1beds'" in str(err)


def test_values_keep_their_control_characters(tmp_path: Path) -> None:
    spec = load_flow(write_bytes(tmp_path, b'jobs:\n  a: {shell: "printf \'\\e[31mred\'"}\n'))
    assert spec.jobs["a"].raw["shell"] == "printf '\x1b[31mred'"
