"""``@asyncjobs.job``: a callable's defaults. Kept apart from the engine so that marking
a function (at import time, in worker processes too) loads no event-loop code."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from .model import JobKind

if TYPE_CHECKING:
    from collections.abc import Callable

F = TypeVar("F", bound="Callable[..., Any]")

DEFAULTS_ATTR = "__asyncjobs_defaults__"


def job(
    *,
    kind: str | JobKind | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    backoff: float | None = None,
) -> Callable[[F], F]:
    """Set a callable's defaults for every runner and flow that runs it.

    The function itself is returned, marked, so it still pickles by reference into
    worker processes.

    :param kind: ``"io"``, ``"cpu"`` or ``"thread"`` (default: ``io`` for ``async def``,
        ``cpu`` otherwise)
    :param timeout: seconds per attempt
    :param retries: extra attempts after a failure
    :param backoff: first retry delay in seconds, doubled for each later retry
    :returns: a decorator
    :raises ValueError: for an unknown kind or a negative number
    """
    opts = _JobOptions.make(kind=kind, timeout=timeout, retries=retries, backoff=backoff)

    def mark(fn: F) -> F:
        setattr(fn, DEFAULTS_ATTR, opts.as_dict())
        return fn

    return mark


class _JobOptions:
    __slots__ = ("kind", "timeout_s", "retries", "backoff_s")

    def __init__(self, kind: JobKind | None, timeout_s: float | None, retries: int | None,
                 backoff_s: float | None) -> None:
        self.kind = kind
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s

    @classmethod
    def make(cls, *, kind: str | JobKind | None, timeout: float | None, retries: int | None,
             backoff: float | None) -> _JobOptions:
        if kind is not None:
            try:
                kind = JobKind(kind)
            except ValueError:
                raise ValueError(f"kind must be one of io, cpu, thread; not {kind!r}") from None
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be above 0 seconds, not {timeout}")
        if retries is not None and retries < 0:
            raise ValueError(f"retries must be 0 or more, not {retries}")
        if backoff is not None and backoff < 0:
            raise ValueError(f"backoff must be 0 or more seconds, not {backoff}")
        return cls(kind, timeout, retries, backoff)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "timeout": self.timeout_s, "retries": self.retries,
                "backoff": self.backoff_s}


