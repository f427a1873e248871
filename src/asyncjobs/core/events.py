"""Events: facts the engine feeds to the scheduler. Each carries ``now`` (seconds, from
the engine's monotonic clock) because the core never reads a clock itself.

Events are values: nothing changes one after it is made. They are not ``frozen``
dataclasses only because a frozen one costs four times as much to make, and several are
made per job on the hot path."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..model import ErrorInfo
    from .policy import LimitSpec


@dataclass(slots=True)
class JobSubmitted:
    job_id: str
    #: names of the limits an attempt holds while it runs (its kind's pool first)
    limits: tuple[str, ...]
    #: extra attempts after a failure
    retries: int = 0
    #: first retry delay; doubled for each later retry, with jitter
    backoff_s: float = 1.0
    now: float = 0.0
    stimulus_id: str = ""
    #: units of each limit an attempt holds: 1 for a job, n for a chunk of n calls
    weight: int = 1


@dataclass(slots=True)
class AttemptSucceeded:
    job_id: str
    attempt: int
    #: passed through untouched to ``JobFinished``; the core never looks inside
    result: Any = None
    now: float = 0.0
    stimulus_id: str = ""


@dataclass(slots=True)
class AttemptFailed:
    job_id: str
    attempt: int
    error: ErrorInfo
    now: float = 0.0
    stimulus_id: str = ""


@dataclass(slots=True)
class AttemptLost:
    """The attempt's node died under it (a cluster's coordinator says so): the job runs
    again, first in its queue, and the lost attempt does not count against ``retries``
    (execution is at-least-once; the killed-nodes rule bounds how often)."""

    job_id: str
    attempt: int
    error: ErrorInfo
    now: float = 0.0
    stimulus_id: str = ""


@dataclass(slots=True)
class AttemptCancelled:
    """An attempt stopped after ``CancelAttempt``; its limits are free again."""

    job_id: str
    attempt: int
    now: float = 0.0
    stimulus_id: str = ""


@dataclass(slots=True)
class CancelRequested:
    job_id: str
    reason: str = "cancelled"
    now: float = 0.0
    stimulus_id: str = ""


@dataclass(slots=True)
class LimitsDeclared:
    """Named limits for the jobs of one scope (a flow run): jobs name them as
    ``scoped(scope, name)``, so two flows' ``api`` limits are two pools."""

    scope: str
    limits: dict[str, LimitSpec]
    now: float = 0.0
    stimulus_id: str = ""


@dataclass(slots=True)
class LimitsReleased:
    """The scope ended: its limits go once no running attempt holds them."""

    scope: str
    now: float = 0.0
    stimulus_id: str = ""


@dataclass(slots=True)
class Tick:
    """Time has passed: retry delays and rate limits may have come due."""

    now: float = 0.0
    stimulus_id: str = ""


Event = (
    JobSubmitted | AttemptSucceeded | AttemptFailed | AttemptLost | AttemptCancelled
    | CancelRequested
    | LimitsDeclared | LimitsReleased | Tick
)
