"""``--dry-run`` text: the jobs after expansion by dependency level, their items (elided
for a large fan-out), and the limits with the jobs using them."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from asyncjobs.flow.loader import load_flow
from asyncjobs.flow.plan import DESCRIBE_LINES_BYTES, describe_plan, plan_flow

from ..conftest import write_flow

if TYPE_CHECKING:
    from pathlib import Path


def dry_run(tmp_path: Path, text: str) -> str:
    return describe_plan(plan_flow(load_flow(write_flow(tmp_path, text))), {"WHERE": "out"})


def test_a_small_flow_shows_levels_items_and_limits(tmp_path: Path) -> None:
    (tmp_path / "ids.txt").write_text("a\n\nb\r\n")
    text = dry_run(tmp_path, """
        params: {count: 3}
        limits:
          api: {concurrency: 50, rate: 200/s}
          db: 5
        jobs:
          report:
            needs: [create]
            shell: "echo done"
            timeout: 30
          setup: {shell: "mkdir -p {{ env.WHERE }}"}
          create:
            needs: [setup]
            foreach: {range: "{{ params.count }}"}
            limit: api
            retries: 2
            http: {method: POST, url: "http://127.0.0.1:8080/flows"}
          tagged:
            foreach: [{id: 1}, "two"]
            call: tests.flow.calls:add
            limit: api
          ids: {shell: "echo {{ item }}", foreach: {lines: ids.txt}}
    """)
    assert text.splitlines() == [
        f"flow jobs ({tmp_path / 'jobs.yaml'}): 5 jobs, 9 runs",
        "level 0 (needs nothing):",
        "  setup   io      x1  shell mkdir -p {{ env.WHERE }}",
        "  tagged  cpu     x2  call tests.flow.calls:add  limit: api",
        "    tagged[0]  {\"id\": 1}",
        "    tagged[1]  \"two\"",
        "  ids     io      x2  shell echo {{ item }}",
        f"    (lines of {tmp_path / 'ids.txt'})",
        "    ids[0]  \"a\"",
        "    ids[1]  \"b\"",
        "level 1 (after level 0):",
        "  create  io      x3  http POST http://127.0.0.1:8080/flows  needs: setup  limit: api"
        "  retries: 2",
        "    create[0]  0",
        "    create[1]  1",
        "    create[2]  2",
        "level 2 (after level 1):",
        "  report  io      x1  shell echo done  needs: create  timeout: 30s",
        "limits:",
        "  api: concurrency 50, rate 200/s; used by tagged, create",
        "  db: concurrency 5; used by no job",
        "params: count=3",
    ]


def test_a_large_fan_out_shows_its_ends_and_its_count(tmp_path: Path) -> None:
    items = ", ".join(f"item-{i}" for i in range(10_000))
    started = time.perf_counter()
    text = dry_run(tmp_path, f"""
        jobs:
          make: {{shell: "echo {{{{ item }}}}", foreach: {{range: 10000}}}}
          huge: {{shell: "echo {{{{ item }}}}", foreach: {{range: 1000000000000}}}}
          listed: {{shell: "echo {{{{ item }}}}", foreach: [{items}]}}
    """)
    assert time.perf_counter() - started < 5
    lines = text.splitlines()
    assert lines[0].endswith(": 3 jobs, 1,000,000,020,000 runs")
    assert lines[2:10] == [
        "  make    io      x10,000             shell echo {{ item }}",
        "    make[0]  0",
        "    make[1]  1",
        "    make[2]  2",
        "    … (9,994 more; 10,000 items)",
        "    make[9997]  9997",
        "    make[9998]  9998",
        "    make[9999]  9999",
    ]
    assert "    … (999,999,999,994 more; 1,000,000,000,000 items)" in lines
    assert "    huge[999999999999]  999999999999" in lines
    assert lines[-4:] == ["    … (9,994 more; 10,000 items)", '    listed[9997]  "item-9997"',
                          '    listed[9998]  "item-9998"', '    listed[9999]  "item-9999"']


def test_a_large_or_endless_lines_file_is_unknown_until_read(tmp_path: Path) -> None:
    with (tmp_path / "big.txt").open("wb") as f:
        f.truncate(DESCRIBE_LINES_BYTES + 1)
    text = dry_run(tmp_path, """
        jobs:
          big: {shell: "echo {{ item }}", foreach: {lines: big.txt}}
          after: {shell: "true", needs: [big]}
    """)
    lines = text.splitlines()
    assert lines[0].endswith(": 2 jobs, 1 runs + the lines of 1 file (unknown until read)")
    assert lines[2:4] == ["  big    io      x?  shell echo {{ item }}",
                          f"    (lines of {tmp_path / 'big.txt'}: unknown until read)"]


def test_long_values_are_cut_and_control_characters_escaped(tmp_path: Path) -> None:
    text = dry_run(tmp_path, """
        jobs:
          a:
            shell: "printf '\\e[31m{{ item }}'"
            foreach: ["\\e[2J", "%s"]
    """ % ("x" * 200))
    assert "\x1b" not in text
    assert "  a  io      x2  shell printf '\\x1b[31m{{ item }}'" in text
    assert '    a[0]  "\\u001b[2J"' in text
    assert f'    a[1]  "{"x" * 58}…' in text
