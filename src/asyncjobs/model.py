"""Value types shared by every layer: kinds, statuses, error info. Leaves only."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


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


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """An exception as plain data, so it can cross processes and the network."""

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

    @property
    def first_line(self) -> str:
        text = f"{self.type_name}: {self.message}" if self.message else self.type_name
        return text.splitlines()[0] if text else ""
