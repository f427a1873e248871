"""Value types shared by every layer: kinds, statuses, error info. Leaves only."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class JobKind(StrEnum):
    """Where a job's attempts run."""

    #: a coroutine on the event loop
    IO = "io"
    #: a call in a worker process
    CPU = "cpu"
    #: a call in a bounded thread pool
    THREAD = "thread"


class JobStatus(StrEnum):
    """A job's place in its life. Terminal: succeeded, failed, cancelled, skipped."""

    #: waiting for the jobs it needs
    PENDING = "pending"
    #: ready, waiting for room in its limits
    QUEUED = "queued"
    #: an attempt is running
    RUNNING = "running"
    #: an attempt failed; the next waits for its backoff delay
    RETRYING = "retrying"
    #: an attempt returned a result
    SUCCEEDED = "succeeded"
    #: the last allowed attempt failed
    FAILED = "failed"
    #: cancelled before it finished
    CANCELLED = "cancelled"
    #: a job it needs did not succeed, so it never ran
    SKIPPED = "skipped"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.SKIPPED}
)


#: ``ErrorInfo.to_wire()``: a list in this order, msgpack- and pickle-able. CPU workers
#: build it without importing asyncjobs (``executors/_worker_main.py``): keep both in step.
WIRE_FIELDS = ("type_name", "message", "traceback", "timed_out", "retryable",
               "retry_after_s", "where")


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """How an attempt failed, as plain data: the one shape a failure has in a worker's
    answer, a chunk's per-item outcome, the scheduler, a flow's report, ``JobFailed``, and
    (with ``to_wire``) on the network."""

    #: the exception's type name, e.g. "ValueError"
    type_name: str
    message: str
    traceback: str = ""
    #: True when the attempt ran past its timeout
    timed_out: bool = False
    #: False for errors no retry can fix (the call cannot be pickled, say)
    retryable: bool = True
    #: the least delay before a retry, when the failure said so (HTTP Retry-After)
    retry_after_s: float | None = None
    #: where it happened, when not in this process: e.g. "pid 4242", a node's name
    where: str = ""

    @property
    def first_line(self) -> str:
        text = f"{self.type_name}: {self.message}" if self.message else self.type_name
        return text.splitlines()[0] if text else ""

    @classmethod
    def from_exception(cls, exc: BaseException, *, retryable: bool = True,
                       where: str = "") -> ErrorInfo:
        """An exception as data. An exception may say it is final (``retryable = False``)
        or how long to wait first (``retry_after_s``), as HTTP failures do."""
        import traceback  # here: ``import asyncjobs`` runs in every worker, and stays light

        return cls(
            type(exc).__name__, str(exc), "".join(traceback.format_exception(exc)),
            retryable=retryable and getattr(exc, "retryable", True),
            retry_after_s=getattr(exc, "retry_after_s", None), where=where,
        )

    def to_wire(self) -> list[Any]:
        """Plain data in ``WIRE_FIELDS`` order."""
        return [self.type_name, self.message, self.traceback, self.timed_out,
                self.retryable, self.retry_after_s, self.where]

    @classmethod
    def from_wire(cls, data: Any) -> ErrorInfo:
        """The inverse of ``to_wire``; anything malformed becomes a readable error value
        rather than an exception (this reads what other processes sent).

        Shorter lists (older peers) take the defaults for the missing fields."""
        if not isinstance(data, list | tuple) or not 2 <= len(data) <= len(WIRE_FIELDS):
            return cls("MalformedError", f"an error arrived in an unknown shape: {data!r:.200}")
        values = list(data) + [None] * (len(WIRE_FIELDS) - len(data))
        type_name, message, tb, timed_out, retryable, retry_after, where = values
        return cls(
            str(type_name), str(message), tb if isinstance(tb, str) else "",
            bool(timed_out), True if retryable is None else bool(retryable),
            float(retry_after) if isinstance(retry_after, int | float) else None,
            where if isinstance(where, str) else "",
        )
