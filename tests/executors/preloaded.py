"""A module that remembers which process imported it: a worker forked from a template
that has preloaded it answers the template's PID."""

from __future__ import annotations

import os

IMPORTED_IN = os.getpid()


def imported_in() -> int:
    return IMPORTED_IN


def imported_before_fork(item: object = None) -> bool:
    """Whether this worker had the module before it ran a job (its template had it)."""
    return IMPORTED_IN != os.getpid()
