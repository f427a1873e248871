"""One sample of every message, each with a direction it may travel in."""

from __future__ import annotations

from typing import TYPE_CHECKING

from asyncjobs.core.policy import LimitSpec
from asyncjobs.model import ErrorInfo, JobKind, JobStatus
from asyncjobs.protocol import (
    Assign,
    Attach,
    AttemptRef,
    AttemptResult,
    AttemptSpec,
    Cancel,
    ClusterInfo,
    DeclareLimits,
    Drain,
    Error,
    FlowStatus,
    FlowSubmit,
    Goodbye,
    Heartbeat,
    JobOutcome,
    JobSpec,
    NodeInfo,
    Outcome,
    Register,
    ReleaseLimits,
    Result,
    Role,
    StatusReply,
    StatusRequest,
    Submit,
)

if TYPE_CHECKING:
    from asyncjobs.protocol import Message

C, N, K = Role.COORDINATOR, Role.NODE, Role.CLIENT
BOOM = ErrorInfo("ValueError", "boom", "Traceback ...\nValueError: boom\n", timed_out=False,
                 retryable=False, retry_after_s=2.5, where="node-a")

#: (sender, receiver, message)
SAMPLES: list[tuple[Role, Role, Message]] = [
    (N, C, Register("node-a", 0, 2, {JobKind.IO: 100, JobKind.CPU: 2, JobKind.THREAD: 8})),
    (N, C, Heartbeat(7)),
    (C, K, Heartbeat(2**40)),
    (K, C, Submit((
        JobSpec("a", "examples.montecarlo:hits", (4000,), None),
        JobSpec("b", "pkg.mod:Cls.method", ("x", [1, 2], {"k": None}), {"opt": b"\x00\xff"},
                JobKind.CPU, 30.0, 2, 0.5),
        JobSpec("c", "m:f", (), {}, JobKind.IO, None, 0, None, ("flow1:api",)),
    ))),
    (C, N, Assign((
        AttemptSpec("a", 1, "examples.montecarlo:hits", (4000,), None, JobKind.CPU, 60.0),
        AttemptSpec("b", 3, "m:f", ({1: "int keys", "s": [1.5, -2]},), {"k": 1}),
    ))),
    (N, C, Result((
        AttemptResult("a", 1, 3141, None, 0.25),
        AttemptResult("b", 3, None, BOOM, 1.0),
        AttemptResult("c", 1, {"nested": [[], {}]}),
    ))),
    (C, K, Outcome((
        JobOutcome("a", JobStatus.SUCCEEDED, 3141, None, 1, "node-a", 1.7e9, 1.7e9 + 0.25),
        JobOutcome("b", JobStatus.FAILED, None, BOOM, 3, "node-b", 1.0, 2.0),
        JobOutcome("c", JobStatus.SKIPPED),
    ))),
    (K, C, Cancel(("a", "b"), ("flow-1",), "interrupted")),
    (C, N, Cancel(("a",))),
    (N, C, Drain((AttemptRef("a", 1), AttemptRef("b", 2)))),
    (K, C, FlowSubmit("flow-1", "jobs.yaml", "jobs:\n  a: {shell: 'true'}\n",
                      {"count": 10}, True)),
    (C, K, FlowStatus("flow-1", "jobs.yaml", "running", 5, 10)),
    (K, C, StatusRequest(1)),
    (C, K, StatusReply(1, (NodeInfo("node-a", True, 2, 3, 200, 0.5),
                           NodeInfo("node-b", False, 1, 0, 100, 30.0)),
                       (FlowStatus("flow-1", "jobs.yaml", "succeeded", 10, 10),))),
    (C, N, Error("duplicate-node", "a node named node-a is already registered")),
    (K, C, Error("protocol", "nope")),
    (K, C, DeclareLimits("flow1", {"api": LimitSpec(2, None), "slow": LimitSpec(None, 0.5)})),
    (K, C, ReleaseLimits("flow1")),
    (C, K, ClusterInfo({JobKind.IO: 200, JobKind.CPU: 4, JobKind.THREAD: 16}, 2, 3)),
    (K, C, FlowStatus("flow-1", "jobs.yaml", "running", 5, 10)),
    (K, C, Attach("run:5f1c2e")),
    (N, C, Goodbye("draining")),
    (C, K, Goodbye()),
]
