"""What a flow run leaves behind: per-job records, the JSON report and the summary."""

from __future__ import annotations

import functools
import heapq
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

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


class FlowReport:
    """The outcome of one run of a flow.

    ``ok`` is true when every job succeeded (``asyncjobs run`` exits 0). What the summary
    needs is kept as it goes — counts, the slowest jobs, the first failures — so a run of
    a million items holds no million records: ``records`` lists every job only when
    ``keep_records`` (the default for ``Runner.run_flow``; ``asyncjobs run`` streams them
    to ``--report`` instead, see ``stream_json``). Records come in the order jobs ended.

    :param keep_records: keep every job's record in ``records``
    """

    def __init__(self, name: str, path: str, started: float, ended: float | None = None,
                 *, keep_records: bool = True) -> None:
        self.name = name
        self.path = path
        self.started = started
        self.ended = ended
        self.keep_records = keep_records
        self.records: list[JobRecord] = []
        self.interrupted = False
        #: results of the final jobs (those no other job needs), by job name
        self.results: dict[str, Any] = {}
        #: jobs not run again because the last run had done them (``--resume``)
        self.resumed = 0
        self._counts = dict.fromkeys((s.value for s in JobStatus), 0)
        self._added = 0
        #: a min-heap of (duration, order, record): the slowest jobs so far
        self._slowest: list[tuple[float, int, JobRecord]] = []
        self._failures: list[JobRecord] = []
        self._failures_total = 0
        self._stream: _JsonStream | None = None

    def add(self, record: JobRecord) -> None:
        """A job ended (its record is final): count it, and keep or stream it."""
        self._counts[record.status] += 1  # a StrEnum: the same key as its value
        self._added += 1
        if record.started is not None and record.ended is not None:
            duration = record.ended - record.started
            slowest = self._slowest
            if len(slowest) < SLOWEST_SHOWN:
                heapq.heappush(slowest, (duration, self._added, record))
            elif duration > slowest[0][0]:
                heapq.heapreplace(slowest, (duration, self._added, record))
        if record.status in _FAILURES:
            self._failures_total += 1
            if len(self._failures) < FAILURES_SHOWN:
                self._failures.append(record)
        if self.keep_records:
            self.records.append(record)
        if self._stream is not None:
            self._stream.write(record)

    @property
    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    @property
    def ok(self) -> bool:
        return not self.interrupted and self._counts["succeeded"] == self._added

    @property
    def wall_s(self) -> float:
        return (self.ended or self.started) - self.started

    def slowest(self, n: int = SLOWEST_SHOWN) -> list[JobRecord]:
        ranked = sorted(self._slowest, key=lambda e: (-e[0], e[1]))
        return [record for _, _, record in ranked[:n]]

    def failures(self) -> list[JobRecord]:
        """The first ``FAILURES_SHOWN`` jobs that failed or were cancelled."""
        return list(self._failures)

    def to_json(self) -> dict[str, Any]:
        """The report as plain data; ``jobs`` holds the kept records."""
        return {"jobs": [r.to_json() for r in self.records], **self._head()}

    def _head(self) -> dict[str, Any]:
        return {
            "flow": self.name, "file": self.path, "ok": self.ok,
            "interrupted": self.interrupted, "start": _iso(self.started),
            "end": _iso(self.ended), "wall_s": round(self.wall_s, 3),
            "counts": self.counts, "resumed": self.resumed,
        }

    def write_json(self, path: str | Path) -> None:
        """Write the report with its kept records as JSON, one job per line. Parent
        folders are created."""
        stream = _JsonStream(path)
        for record in self.records:
            stream.write(record)
        stream.close(self._head())

    def stream_json(self, path: str | Path) -> None:
        """From now on, write each job's record to ``path`` as it ends (the file is
        complete, with the counts, once ``close_json`` is called). Parent folders are
        created; the file appears whole, on ``close_json``."""
        self._stream = _JsonStream(path)

    def close_json(self) -> None:
        """Finish the file ``stream_json`` began."""
        if self._stream is not None:
            self._stream.close(self._head())
            self._stream = None

    def discard_json(self) -> None:
        """Drop what ``stream_json`` began (the run never started)."""
        if self._stream is not None:
            self._stream.discard()
            self._stream = None

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
        for record in self._failures:
            tries = f" after {record.attempts} attempts" if record.attempts > 1 else ""
            lines.append(f"  {record.status.value} {printable(record.id, 80)}{tries}: "
                         f"{printable(record.error or '')}")
        if self._failures_total > len(self._failures):
            more = self._failures_total - len(self._failures)
            lines.append(f"  ... and {more} more (see --report)")
        skipped = counts["skipped"]
        if skipped:
            lines.append(f"  {skipped} skipped because a job they need did not succeed")
        for name, value in self.results.items():
            text = value if isinstance(value, str) else repr(value)
            if value is not None and len(text) <= RESULT_SHOWN_CHARS and "\n" not in text:
                lines.append(f"{printable(name, 80)} = {printable(text)}")
        return lines


_FAILURES = (JobStatus.FAILED, JobStatus.CANCELLED)


class _JsonStream:
    """The JSON report written as jobs end: ``{"jobs": [ ...one per line... ], "flow":
    ..., "counts": ...}``, into ``PATH.part`` renamed to ``PATH`` when complete."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.part = self.path.with_name(self.path.name + ".part")
        self.out: TextIO = self.part.open("w")
        self.out.write('{"jobs": [')
        self.first = True

    def write(self, record: JobRecord) -> None:
        self.out.write(("\n" if self.first else ",\n") + json.dumps(record.to_json()))
        self.first = False

    def close(self, head: dict[str, Any]) -> None:
        self.out.write("\n], " + json.dumps(head)[1:] + "\n")
        self.out.close()
        self.part.replace(self.path)

    def discard(self) -> None:
        self.out.close()
        self.part.unlink(missing_ok=True)
