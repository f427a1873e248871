from __future__ import annotations

import random

import pytest

from asyncjobs.core.policy import Limit
from asyncjobs.core.scheduler import SchedulerState


@pytest.fixture
def sched() -> SchedulerState:
    return SchedulerState(
        {"@io": Limit(), "@cpu": Limit(concurrency=2), "api": Limit(concurrency=1)},
        rng=random.Random(7),
    )
