"""asyncjobs: an asyncio job runner. IO jobs as coroutines, CPU jobs on every core."""

from __future__ import annotations

from .api import Job as Job
from .api import Runner as Runner
from .api import job as job
from .api import run as run
from .errors import AsyncJobsError as AsyncJobsError
from .errors import FlowError as FlowError
from .errors import JobCancelled as JobCancelled
from .errors import JobFailed as JobFailed
from .errors import JobTimeout as JobTimeout
from .model import JobKind as JobKind
from .model import JobStatus as JobStatus

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
    "job",
    "run",
)
