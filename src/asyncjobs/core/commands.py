"""Commands: what the scheduler asks the engine to do."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..model import ErrorInfo, JobStatus


class Matchable:
    """Commands compare with ``Cmd.match(field=value)`` in tests: only the named fields count."""

    __slots__ = ()

    @classmethod
    def match(cls, **kwargs: Any) -> _Match:
        """A value equal to any command of this type whose named fields have these values."""
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(kwargs) - names
        if unknown:
            raise TypeError(f"{cls.__name__} has no fields {sorted(unknown)}")
        return _Match(cls, kwargs)


class _Match:
    __slots__ = ("cls", "kwargs")

    def __init__(self, cls: type, kwargs: dict[str, Any]) -> None:
        self.cls = cls
        self.kwargs = kwargs

    def __eq__(self, other: object) -> bool:
        return isinstance(other, self.cls) and all(
            getattr(other, k) == v for k, v in self.kwargs.items()
        )

    def __hash__(self) -> int:  # pragma: no cover - matchers are compared, not hashed
        return id(self)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.cls.__name__}.match({args})"


@dataclass(slots=True)
class StartAttempt(Matchable):
    job_id: str
    #: 1 for the first run, 2 for the first retry, ...
    attempt: int
    stimulus_id: str = ""


@dataclass(slots=True)
class CancelAttempt(Matchable):
    """Stop a running attempt; answer with ``AttemptCancelled`` (or its result, if it won)."""

    job_id: str
    attempt: int
    stimulus_id: str = ""


@dataclass(slots=True)
class JobFinished(Matchable):
    job_id: str
    #: a terminal status
    status: JobStatus
    attempts: int
    result: Any = None
    error: ErrorInfo | None = None
    stimulus_id: str = ""
    #: where and when its last attempt ran, when a cluster says so (Unix time); an
    #: embedded engine leaves them empty and the caller keeps its own times
    node: str = ""
    started_s: float | None = None
    ended_s: float | None = None


Command = StartAttempt | CancelAttempt | JobFinished
