"""What a flow run leaves behind: per-job records, the JSON report and the summary."""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .model import JobStatus

SLOWEST_SHOWN = 5
FAILURES_SHOWN = 20
#: a final job's result is shown in the summary when its text is at most this long
RESULT_SHOWN_CHARS = 120
#: longest text of one value (an id, an error line) in the summary
SHOWN_CHARS = 300

#: C0 and C1 control characters (ESC, BEL, CR...) and DEL, as escapes: a job's name or
#: error line must not move the cursor, recolour or clear the terminal it is printed on
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7f, 0xa0))}


def printable(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` safe to print on one line: control characters escaped, at most ``limit``
    characters (the cut marked with an ellipsis)."""
    text = text.translate(_CONTROL)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def seconds(value: float) -> str:
    """A duration for people: ``2.31s``, ``41ms``, ``0.4ms``."""
    if value >= 1:
        return f"{value:.2f}s"
    if value >= 0.01:
        return f"{value * 1000:.0f}ms"
    return f"{value * 1000:.1f}ms"


def _iso(ts: float | None) -> str | None:
    """``datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")``, with the
    whole-second part cached: a 100,000-job report formats 200,000 of these."""
    if ts is None:
        return None
    fraction, whole = math.modf(ts)  # rounded as datetime rounds: the fraction alone
    micros = round(fraction * 1_000_000)
    seconds = int(whole)
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, micros - 1_000_000
    return f"{_iso_second(seconds)}.{micros // 1000:03d}+00:00"


@functools.lru_cache(maxsize=4096)
def _iso_second(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")


@dataclass(slots=True)
class JobRecord:
    """One job of a flow run (one item, for a ``foreach`` job)."""

    #: e.g. ``"setup"`` or ``"create[17]"``
    id: str
    #: the job's name in the file (``"create"`` for ``"create[17]"``)
    job: str
    status: JobStatus = JobStatus.PENDING
    attempts: int = 0
    node: str = "local"
    #: wall-clock seconds (epoch) of the first attempt's start and of the end
    started: float | None = None
    ended: float | None = None
    #: the first line of the last error
    error: str | None = None

    @property
    def duration_s(self) -> float | None:
        if self.started is None or self.ended is None:
            return None
        return self.ended - self.started

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "job": self.job, "status": self.status.value,
            "attempts": self.attempts, "node": self.node, "start": _iso(self.started),
            "end": _iso(self.ended), "error": self.error,
        }


@dataclass(slots=True)
class FlowReport:
    """The outcome of one run of a flow.

    ``ok`` is true when every job succeeded (``asyncjobs run`` exits 0).
    """

    name: str
    path: str
    started: float
    ended: float | None = None
    records: list[JobRecord] = field(default_factory=list)
    interrupted: bool = False
    #: results of the final jobs (those no other job needs), by job name
    results: dict[str, Any] = field(default_factory=dict)
    #: jobs not run again because the last run had done them (``--resume``)
    resumed: int = 0

    @property
    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys((s.value for s in JobStatus), 0)
        for record in self.records:
            counts[record.status.value] += 1
        return counts

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(
            r.status is JobStatus.SUCCEEDED for r in self.records
        )

    @property
    def wall_s(self) -> float:
        return (self.ended or self.started) - self.started

    def slowest(self, n: int = SLOWEST_SHOWN) -> list[JobRecord]:
        timed = [r for r in self.records if r.duration_s is not None]
        return sorted(timed, key=lambda r: r.duration_s or 0.0, reverse=True)[:n]

    def failures(self) -> list[JobRecord]:
        bad = (JobStatus.FAILED, JobStatus.CANCELLED)
        return [r for r in self.records if r.status in bad]

    def to_json(self) -> dict[str, Any]:
        """The report as plain data (``write_json`` writes the same, streamed)."""
        return {**self._head(), "jobs": [r.to_json() for r in self.records]}

    def _head(self) -> dict[str, Any]:
        return {
            "flow": self.name, "file": self.path, "ok": self.ok,
            "interrupted": self.interrupted, "start": _iso(self.started),
            "end": _iso(self.ended), "wall_s": round(self.wall_s, 3),
            "counts": self.counts, "resumed": self.resumed,
        }

    def write_json(self, path: str | Path) -> None:
        """Write the report as JSON, one job per line, streamed: a 100,000-job report is
        never built in memory whole. Parent folders are created."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("w") as out:
            out.write(json.dumps(self._head())[:-1] + ', "jobs": [')
            for i, record in enumerate(self.records):
                out.write(("\n" if i == 0 else ",\n") + json.dumps(record.to_json()))
            out.write("\n]}\n")

    def summary_lines(self) -> list[str]:
        """The end-of-run summary: counts, wall time, throughput, slowest jobs, failures."""
        counts = self.counts
        done = sum(counts[s] for s in ("succeeded", "failed", "cancelled"))
        rate = done / self.wall_s if self.wall_s > 0 else 0.0
        shown = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        head = "interrupted" if self.interrupted else ("ok" if self.ok else "FAILED")
        lines = [
            f"{printable(self.name, 80)}: {head} — {shown or 'no jobs'}",
            f"wall time {self.wall_s:.2f} s, {rate:,.1f} jobs/s",
        ]
        if self.resumed:
            lines.append(f"{self.resumed} resumed: done in the last run, not run again")
        slowest = self.slowest()
        if slowest:  # chunked cpu items: their own time in the worker
            lines.append("slowest (start to end): " + ", ".join(
                f"{printable(r.id, 80)} {seconds(r.duration_s or 0.0)}" for r in slowest
            ))
        failures = self.failures()
        for record in failures[:FAILURES_SHOWN]:
            tries = f" after {record.attempts} attempts" if record.attempts > 1 else ""
            lines.append(f"  {record.status.value} {printable(record.id, 80)}{tries}: "
                         f"{printable(record.error or '')}")
        if len(failures) > FAILURES_SHOWN:
            lines.append(f"  ... and {len(failures) - FAILURES_SHOWN} more (see --report)")
        skipped = counts["skipped"]
        if skipped:
            lines.append(f"  {skipped} skipped because a job they need did not succeed")
        for name, value in self.results.items():
            text = value if isinstance(value, str) else repr(value)
            if value is not None and len(text) <= RESULT_SHOWN_CHARS and "\n" not in text:
                lines.append(f"{printable(name, 80)} = {printable(text)}")
        return lines
