"""asyncjobs: an asyncio job runner. IO jobs as coroutines, CPU jobs on every core.

``Runner``, ``Job``, ``run`` and ``connect`` load the engine (and asyncio) on first use, so that
``import asyncjobs`` stays light: worker processes import the app's main module, and
with it this package, every time one starts.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import AsyncJobsError as AsyncJobsError
from .errors import FlowError as FlowError
from .errors import JobCancelled as JobCancelled
from .errors import JobFailed as JobFailed
from .errors import JobTimeout as JobTimeout
from .marks import job as job
from .model import JobKind as JobKind
from .model import JobStatus as JobStatus

if TYPE_CHECKING:
    from .api import Job as Job
    from .api import Runner as Runner
    from .api import run as run
    from .client import connect as connect

__version__ = "0.1.0"

__all__ = (
    "AsyncJobsError",
    "FlowError",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobKind",
    "JobStatus",
    "JobTimeout",
    "Runner",
    "connect",
    "job",
    "run",
)

_LAZY = {"Job": ".api", "Runner": ".api", "run": ".api", "connect": ".client"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'asyncjobs' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
