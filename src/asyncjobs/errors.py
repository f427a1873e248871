"""The exception hierarchy: one root, typed fields, messages that say what to try next."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import ErrorInfo, JobStatus
    from .protocol.errors import RemoteProtocolError


class AsyncJobsError(Exception):
    """Root of every error asyncjobs raises on purpose."""


class JobFailed(AsyncJobsError):
    """A job ended without a result after all its attempts.

    Carries the original exception as text, because the exception object itself may not
    survive a trip through a worker process or the network.

    :param job_id: the failed job's id
    :param type_name: the original exception's type name, e.g. ``"ValueError"``
    :param message: the original exception's message
    :param traceback: the original traceback as text (may be empty)
    :param attempts: how many attempts were made
    :param where: where the last attempt ran, when not in this process ("pid 4242", a
        node's name)
    """

    def __init__(
        self,
        job_id: str,
        type_name: str,
        message: str,
        traceback: str = "",
        attempts: int = 1,
        where: str = "",
    ) -> None:
        super().__init__(job_id, type_name, message)
        self.job_id = job_id
        self.type_name = type_name
        self.message = message
        self.traceback = traceback
        self.attempts = attempts
        self.where = where

    @classmethod
    def from_error(cls, job_id: str, error: ErrorInfo, attempts: int = 1) -> JobFailed:
        """The exception for a job whose last attempt failed with ``error``: a
        ``JobTimeout`` when it ran past its timeout."""
        kind = JobTimeout if error.timed_out else cls
        return kind(job_id, error.type_name, error.message, error.traceback, attempts,
                    error.where)

    def __str__(self) -> str:
        tries = "1 attempt" if self.attempts == 1 else f"{self.attempts} attempts"
        return f"job {self.job_id} failed after {tries}: {self.type_name}: {self.message}"


class JobTimeout(JobFailed, TimeoutError):
    """A job's last attempt ran past its ``timeout`` and was stopped."""


class JobCancelled(AsyncJobsError):
    """A job was cancelled (``Job.cancel()``, or its runner closed) before it finished.

    :param job_id: the cancelled job's id
    """

    def __init__(self, job_id: str, reason: str = "cancelled") -> None:
        super().__init__(job_id, reason)
        self.job_id = job_id
        self.reason = reason

    def __str__(self) -> str:
        return f"job {self.job_id} was {self.reason}"


class FlowError(AsyncJobsError, ValueError):
    """A jobs.yaml file is invalid. Raised before anything runs.

    :param message: what is wrong and what was expected
    :param path: the file
    :param line: 1-based line of the fault, or ``None`` when it has no single place
    :param key: the dotted key at fault, e.g. ``"jobs.create.needs"``
    """

    def __init__(
        self, message: str, *, path: str | None = None, line: int | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.line = line
        self.key = key

    def __str__(self) -> str:
        where = self.path or "<flow>"
        if self.line is not None:
            where += f":{self.line}"
        at = f" ({self.key})" if self.key else ""
        return f"{where}{at}: {self.message}"


class InvalidTransition(AsyncJobsError, RuntimeError):
    """Internal: the scheduler was asked for a status change its table forbids (a bug)."""


class PoolClosed(AsyncJobsError, RuntimeError):
    """Internal: work was handed to an executor that is shutting down."""


class RunnerClosed(AsyncJobsError, RuntimeError):
    """The Runner is not open: use it as ``async with Runner() as runner``."""


def job_exception(job_id: str, status: JobStatus, attempts: int,
                  error: ErrorInfo | None) -> AsyncJobsError:
    """What awaiting a job that ended ``status`` (not succeeded) raises."""
    if status == "cancelled":
        return JobCancelled(job_id, error.message if error else "cancelled")
    if error is None:
        return JobFailed(job_id, "Unknown", "no error was recorded", "", attempts)
    return JobFailed.from_error(job_id, error, attempts)


class RunInProgress(AsyncJobsError, RuntimeError):
    """Another run of the same flow file is going on: only one at a time may record its
    state (``.asyncjobs/`` beside the file). Raised before anything runs.

    :param path: the flow file
    :param pid: the process of the other run, or ``None`` when it could not be read
    """

    def __init__(self, path: str, pid: int | None) -> None:
        super().__init__(path, pid)
        self.path = path
        self.pid = pid

    def __str__(self) -> str:
        who = "pid unknown" if self.pid is None else f"pid {self.pid}"
        return f"another run of {self.path} is in progress ({who}); wait for it or stop it"


class StateUnavailable(AsyncJobsError, RuntimeError):
    """A flow's run state (``.asyncjobs/state.db`` beside the file) cannot be created or
    read. Raised before anything runs.

    :param path: the state database
    :param reason: what failed
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return (f"cannot open the run state {self.path}: {self.reason}; check that its "
                "folder is writable, or delete the folder to start afresh (only --resume "
                "needs what is in it)")


class WorkerStartFailed(AsyncJobsError, RuntimeError):
    """The pool's worker processes cannot start. ``error`` holds why (the worker's or the
    template's message and traceback); jobs fail with the same, as ``JobFailed``."""

    def __init__(self, error: ErrorInfo) -> None:
        super().__init__(error.message)
        self.error = error


class UnguardedMainModule(AsyncJobsError, RuntimeError):
    """A Runner was opened while a worker process imported the app's main module: the
    code that starts the Runner is not under ``if __name__ == "__main__":``."""


class ConnectionFailed(AsyncJobsError, ConnectionError):
    """No link could be made with the peer at an address.

    :param address: ``"host:port"``
    :param reason: what went wrong, in a few words
    """

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(address, reason)
        self.address = address
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot link with an asyncjobs peer at {self.address}: {self.reason}"


class HandshakeFailed(ConnectionFailed):
    """The peer answered but the handshake failed; ``.cause`` is the protocol's error
    (``AuthenticationFailed``, ``VersionMismatch`` or another ``RemoteProtocolError``)."""

    def __init__(self, address: str, cause: RemoteProtocolError) -> None:
        super().__init__(address, str(cause))
        self.cause = cause


class SessionBusy(ConnectionFailed):
    """The coordinator refused our session: a live link of another client holds it (the
    same flow run from two places at once). Entering ``connect()`` raises it; a link
    made again after a break tries again until ``reconnect_s`` (the coordinator may not
    have noticed yet that our old link died).

    :param address: the coordinator's ``"host:port"``
    :param session: the session's name
    """

    def __init__(self, address: str, session: str) -> None:
        super().__init__(address, f"another client holds session {session!r}")
        self.session = session

    def __str__(self) -> str:
        return (f"another client of the coordinator at {self.address} runs the same "
                f"session ({self.session}); wait for it to end or stop it, or use another "
                "session")


class HandshakeTimeout(ConnectionFailed, TimeoutError):
    """The peer did not complete the handshake within the deadline."""


class ClusterConfigError(AsyncJobsError, ValueError):
    """A cluster setting that cannot work: a secret file others may read, an address that
    is not HOST:PORT, a public listen address without a secret. Exit code 2."""


class StateInUse(ClusterConfigError):
    """Another process holds the coordinator's state file: one coordinator per file.

    :param path: the state database
    :param pid: the process holding it, or ``None`` when it could not be read
    """

    def __init__(self, path: str, pid: int | None) -> None:
        super().__init__(path, pid)
        self.path = path
        self.pid = pid

    def __str__(self) -> str:
        who = "pid unknown" if self.pid is None else f"pid {self.pid}"
        return (f"the coordinator state {self.path} is in use by another process ({who}); "
                "stop that coordinator, or give this one another --state file")
