"""What every executor shares: the sink it reports to, and exception capture."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ..model import ErrorInfo

if TYPE_CHECKING:
    from collections.abc import Callable

#: an attempt as executors know it: (job id, attempt number)
AttemptKey = tuple[str, int]


class Sink(Protocol):
    """Where an executor reports how each attempt ended. Exactly one call per attempt."""

    def succeeded(self, key: AttemptKey, result: Any) -> None: ...
    def failed(self, key: AttemptKey, error: ErrorInfo) -> None: ...
    def cancelled(self, key: AttemptKey) -> None: ...


class Executor(Protocol):
    """Runs attempts of one kind and reports each one's end to its sink."""

    def start(self, key: AttemptKey, call: Call) -> None: ...
    def cancel(self, key: AttemptKey) -> None: ...
    async def aclose(self) -> None: ...
    def kill_all(self) -> None:
        """Stop every process now, from any exit path (a no-op without processes)."""


class Call:
    """A function and its arguments, as one attempt will run it."""

    __slots__ = ("fn", "args", "kwargs", "timeout_s", "remote")

    def __init__(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
        timeout_s: float | None,
        remote: tuple[str, tuple[Any, ...], dict[str, Any]] | None = None,
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.timeout_s = timeout_s
        #: how the call runs on a node, as ``(reference, args, kwargs)`` of plain data,
        #: when ``fn`` needs this process's resources (``executors.remote``); None: ``fn``
        #: travels by the name it is imported under
        self.remote = remote


def timeout_info(timeout_s: float, detail: str = "") -> ErrorInfo:
    msg = f"attempt ran past its timeout of {timeout_s:g}s{detail}"
    return ErrorInfo("TimeoutError", msg, timed_out=True)
