from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from asyncjobs.model import JobStatus as S
from asyncjobs.report import FlowReport, JobRecord

if TYPE_CHECKING:
    from pathlib import Path


def sample() -> FlowReport:
    report = FlowReport("create-flows", "jobs.yaml", started=1000.0, ended=1010.0)
    for record in [
        JobRecord("setup", "setup", S.SUCCEEDED, 1, started=1000.0, ended=1000.5),
        JobRecord("create[0]", "create", S.SUCCEEDED, 1, started=1001.0, ended=1004.0),
        JobRecord("create[1]", "create", S.FAILED, 3, started=1001.0, ended=1009.0,
                  error="HttpStatusError: POST http://x/flows answered 500"),
        JobRecord("check", "check", S.SKIPPED, 0, error="Skipped: needs create"),
    ]:
        report.add(record)
    return report


def test_counts_and_ok() -> None:
    report = sample()
    assert report.counts["succeeded"] == 2 and report.counts["failed"] == 1
    assert report.counts["skipped"] == 1 and not report.ok
    assert report.wall_s == 10.0


def test_json_report_has_the_promised_fields(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "report.json"
    sample().write_json(out)
    data = json.loads(out.read_text())
    job = data["jobs"][2]
    assert set(job) >= {"id", "status", "attempts", "node", "start", "end", "error"}
    assert job["id"] == "create[1]" and job["status"] == "failed" and job["attempts"] == 3
    assert job["start"] == "1970-01-01T00:16:41.000+00:00" and job["node"] == "local"
    assert data["counts"]["failed"] == 1 and data["ok"] is False


def test_summary_names_slowest_and_each_failure() -> None:
    lines = sample().summary_lines()
    assert lines[0] == "create-flows: FAILED — 2 succeeded, 1 failed, 1 skipped"
    assert lines[1] == "wall time 10.00 s, 0.3 jobs/s"
    assert lines[2].startswith("slowest (start to end): create[1] 8.00s, create[0] 3.00s")
    assert "  failed create[1] after 3 attempts: HttpStatusError: POST" in lines[3]
    assert "1 skipped" in lines[4]


def test_summary_ends_with_short_final_results() -> None:
    report = sample()
    report.results = {"pi": 3.14159, "big": "x" * 500, "none": None}
    assert report.summary_lines()[-1] == "pi = 3.14159"


def test_streamed_json_equals_the_plain_data(tmp_path: Path) -> None:
    report = sample()
    out = tmp_path / "r.json"
    report.write_json(out)
    assert json.loads(out.read_text()) == report.to_json()
    empty = FlowReport("e", "e.yaml", started=1.0, ended=2.0)
    empty.write_json(out)
    assert json.loads(out.read_text())["jobs"] == []


def test_printed_values_are_escaped_and_capped() -> None:
    report = FlowReport("evil\x1b[2J", "jobs.yaml", started=1.0, ended=2.0)
    report.add(JobRecord("job\x1b]0;title\x07", "job", S.FAILED, 1, started=1.0, ended=1.5,
                         error="ShellFailed: exit code 1: " + "y" * 1_000_000))
    report.results = {"r\x1b[31m": "red\x1b[0m"}
    text = "\n".join(report.summary_lines())
    assert "\x1b" not in text and "\x07" not in text
    assert "evil\\x1b[2J" in text and "job\\x1b]0;title\\x07" in text
    assert max(len(line) for line in text.splitlines()) < 500


def test_short_durations_are_shown_in_milliseconds() -> None:
    report = FlowReport("f", "jobs.yaml", started=1.0, ended=2.0)
    for i, d in enumerate((0.0004, 0.041)):
        report.add(JobRecord(f"a[{i}]", "a", S.SUCCEEDED, 1, started=1.0, ended=1.0 + d))
    assert "slowest (start to end): a[1] 41ms, a[0] 0.4ms" in report.summary_lines()


def test_a_report_without_records_keeps_what_the_summary_needs(tmp_path: Path) -> None:
    report = FlowReport("big", "jobs.yaml", started=0.0, ended=100.0, keep_records=False)
    out = tmp_path / "report.json"
    report.stream_json(out)
    assert not out.exists()  # it appears whole, at the end
    for i in range(10_000):
        status = S.FAILED if i % 1000 == 7 else S.SUCCEEDED
        report.add(JobRecord(f"a[{i}]", "a", status, 1, started=float(i % 97),
                             ended=float(i % 97) + (i % 13) * 0.01, error="E: bad"))
    report.close_json()
    assert report.records == []
    assert report.counts["succeeded"] == 9990 and report.counts["failed"] == 10
    assert not report.ok
    assert [r.duration_s for r in report.slowest()] == pytest.approx([0.12] * 5)
    assert [r.id for r in report.failures()] == [f"a[{i}]" for i in range(7, 10_000, 1000)]
    data = json.loads(out.read_text())
    assert len(data["jobs"]) == 10_000 and data["counts"]["failed"] == 10
    assert data["jobs"][7] == {"id": "a[7]", "job": "a", "status": "failed", "attempts": 1,
                               "node": "local", "start": "1970-01-01T00:00:07.000+00:00",
                               "end": "1970-01-01T00:00:07.070+00:00", "error": "E: bad"}


def test_more_failures_than_shown_are_counted() -> None:
    report = FlowReport("f", "jobs.yaml", started=0.0, ended=1.0, keep_records=False)
    for i in range(25):
        report.add(JobRecord(f"a[{i}]", "a", S.FAILED, 1, error="E: x"))
    lines = report.summary_lines()
    assert sum(line.startswith("  failed a[") for line in lines) == 20
    assert "  ... and 5 more (see --report)" in lines
