"""A validated jobs.yaml, as frozen values. Templates are still unrendered here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..model import JobKind


@dataclass(frozen=True, slots=True)
class CallAction:
    #: "module:attribute"
    ref: str


@dataclass(frozen=True, slots=True)
class ShellAction:
    command: str


@dataclass(frozen=True, slots=True)
class HttpAction:
    url: str
    method: str = "GET"
    json: Any = None
    data: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: statuses that succeed; None: any 2xx
    expect: tuple[int, ...] | None = None


Action = CallAction | ShellAction | HttpAction


@dataclass(frozen=True, slots=True)
class Foreach:
    """Exactly one of the three forms."""

    #: a YAML list (may hold templates)
    items: list[Any] | None = None
    #: ``{range: N}`` or ``{range: [start, stop(, step)]}``; values may be templates
    range: list[Any] | None = None
    #: ``{lines: FILE}``, relative to the flow file's folder
    lines: str | None = None


@dataclass(frozen=True, slots=True)
class LimitSpec:
    concurrency: int | None = None
    rate_per_s: float | None = None


@dataclass(frozen=True, slots=True)
class JobDef:
    name: str
    line: int | None
    action: Action
    kind: JobKind
    needs: tuple[str, ...] = ()
    foreach: Foreach | None = None
    limit: str | None = None
    retries: int = 0
    backoff_s: float = 1.0
    timeout_s: float | None = None
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    cwd: str | None = None
    #: the job's mapping as written, for telling whether it changed (``--resume``)
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FlowSpec:
    name: str
    path: str
    params: dict[str, Any]
    limits: dict[str, LimitSpec]
    #: in file order
    jobs: dict[str, JobDef]
