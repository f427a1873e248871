"""Named sessions in the coordinator's logic: a client that goes away without Goodbye
is only away; one that comes back finds its jobs (rule 5 of ``core.coordination``)."""

from __future__ import annotations

from typing import Any

from asyncjobs.core.coordination import (
    SESSION_KEEP_S,
    Close,
    Coordination,
    Forget,
    Record,
    SaveFlow,
    Send,
)
from asyncjobs.core.policy import LimitSpec
from asyncjobs.model import ErrorInfo, JobStatus
from asyncjobs.protocol.messages import (
    Attach,
    AttemptResult,
    Cancel,
    DeclareLimits,
    Error,
    FlowStatus,
    Goodbye,
    JobOutcome,
    Outcome,
    Result,
    StatusRequest,
    Submit,
)

from .test_coordination import WALL, Harness, ok, spec


class Kept(Harness):
    """The harness, also keeping what the coordination asks a store to keep."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[Record | SaveFlow | Forget] = []
        self.order: list[str] = []

    def _take(self, outputs: list[Any]) -> None:
        for out in outputs:
            self.order.append(type(out).__name__ if not isinstance(out, Send)
                              else type(out.msg).__name__)
        super()._take([o for o in outputs if isinstance(o, Send | Close)])
        self.kept += [o for o in outputs if not isinstance(o, Send | Close)]

    def msg(self, link: int, msg: Any, found: dict[str, JobOutcome] | None = None) -> None:
        self._take(self.c.message(link, msg, self.now, found))

    def recorded(self) -> dict[str, JobOutcome]:
        return {o.job_id: o for r in self.kept if isinstance(r, Record) for o in r.outcomes}


def fail(job_id: str, attempt: int = 1) -> AttemptResult:
    return AttemptResult(job_id, attempt, None, ErrorInfo("ValueError", "bad",
                                                          retryable=False), 0.01)


def attached(h: Kept, link: int, session: str = "s1") -> None:
    h.client(link)
    h.take(link)
    h.msg(link, Attach(session))


def test_a_session_away_keeps_running_and_answers_what_succeeded_when_it_is_back() -> None:
    h = Kept()
    h.node(10, "n1")
    attached(h, 1)
    h.msg(1, Submit((spec("a"), spec("b"), spec("c"))))
    assert sorted(h.assigned(10)) == [("c1/a", 1), ("c1/b", 1), ("c1/c", 1)]
    h.close(1)  # away, without Goodbye: nothing is cancelled
    assert h.take(10, Cancel) == []
    h.msg(10, Result((ok("c1/a"), fail("c1/b"))))
    attached(h, 2)
    # the client sends again what it never heard of: a succeeded, b failed, c running
    h.msg(2, Submit((spec("a"), spec("b"), spec("c"))))
    outs = h.outcomes(2)
    assert set(outs) == {"a"} and outs["a"].status is JobStatus.SUCCEEDED
    assert outs["a"].node == "n1"
    assert h.assigned(10) == [("c1/b", 1)]  # a failed job runs again (its id is free)
    h.msg(10, Result((ok("c1/c"), ok("c1/b"))))
    assert set(h.outcomes(2)) == {"b", "c"}
    assert h.c.counts["answered_held"] == 1 and h.c.counts["refused"] == 0


def test_a_store_answers_jobs_sent_again_after_a_restart() -> None:
    h = Kept()
    h.c.restore(["s1"], [("s1", FlowStatus("flow1", "jobs.yaml", "running", 3, 5), None)],
                h.now)
    h.node(10, "n1")
    attached(h, 1)
    stored = JobOutcome("a", JobStatus.SUCCEEDED, 42, None, 1, "n0", WALL, WALL + 1)
    assert h.c.resumed_session(1) == "s1"
    h.msg(1, Submit((spec("a"), spec("b"))), found={"a": stored})
    assert h.outcomes(1) == {"a": stored}
    assert h.assigned(10) == [("c1/b", 1)]
    h.msg(1, StatusRequest(7))
    (reply,) = h.take(1)
    assert [f.flow_id for f in reply.flows] == ["flow1"]


def test_succeeded_outcomes_are_recorded_before_they_are_sent() -> None:
    h = Kept()
    h.node(10, "n1")
    attached(h, 1)
    h.msg(1, Submit((spec("a"), spec("b"))))
    h.order.clear()
    h.msg(10, Result((ok("c1/a"), fail("c1/b"))))
    assert h.order.index("Record") < h.order.index("Outcome")
    assert set(h.recorded()) == {"a"}  # only what succeeded is kept


def test_an_anonymous_client_records_nothing_and_its_jobs_end_with_it() -> None:
    h = Kept()
    h.node(10, "n1")
    h.client(1)
    h.msg(1, Submit((spec("a"),)))
    h.msg(10, Result((ok("c1/a"),)))
    h.msg(1, Submit((spec("b"),)))
    h.close(1)
    assert h.kept == [] and h.take(10, Cancel) != []


def test_goodbye_ends_the_session_and_forgets_it() -> None:
    h = Kept()
    h.node(10, "n1")
    attached(h, 1)
    h.msg(1, Submit((spec("a"),)))
    h.msg(1, Goodbye("done"))
    h.close(1)
    assert h.take(10, Cancel) != []
    assert Forget("s1") in h.kept
    attached(h, 2)  # the name is free again, for a fresh session
    h.msg(2, Submit((spec("a"),)))
    assert h.c.resumed_session(2) is None


def test_a_session_away_too_long_ends() -> None:
    h = Kept()
    h.node(10, "n1")
    attached(h, 1)
    h.msg(1, Submit((spec("a"),)))
    h.close(1)
    h.tick(SESSION_KEEP_S - 1)
    assert Forget("s1") not in h.kept
    h.tick(SESSION_KEEP_S + 1)
    assert Forget("s1") in h.kept
    assert h.c.to_dict()["jobs_active"] == 0 and h.c.to_dict()["sessions_away"] == 0


def test_a_session_in_use_is_refused_and_the_holder_keeps_it() -> None:
    h = Kept()
    attached(h, 1)
    attached(h, 2)
    assert [type(m) for m in h.take(2)] == [Error] and 2 in h.closed
    h.close(2)
    assert h.c.has_link(1)


def test_attach_comes_first() -> None:
    h = Kept()
    h.client(1)
    h.msg(1, Submit((spec("a"),)))
    h.msg(1, Attach("s1"))
    assert 1 in h.closed


def test_limits_declared_again_by_a_client_that_came_back_are_taken() -> None:
    h = Kept()
    attached(h, 1)
    limits = {"api": LimitSpec(2, None)}
    h.msg(1, DeclareLimits("flow1", limits))
    h.close(1)
    attached(h, 2)
    h.msg(2, DeclareLimits("flow1", limits))
    assert h.take(2, Error) == []
    h.msg(2, DeclareLimits("flow1", {"api": LimitSpec(3, None)}))
    assert len(h.take(2, Error)) == 1  # different limits under the same scope: refused


def test_flows_of_a_named_session_are_saved_and_outlive_a_goodbye() -> None:
    h = Kept()
    attached(h, 1)
    h.msg(1, FlowStatus("flow1", "jobs.yaml", "running", 0, 2))
    h.msg(1, FlowStatus("flow1", "jobs.yaml", "succeeded", 2, 2))
    saved = [k for k in h.kept if isinstance(k, SaveFlow)]
    assert [s.status.state for s in saved] == ["running", "succeeded"]
    assert saved[0].ended_at is None and saved[1].ended_at == WALL + h.now
    h.msg(1, Goodbye())
    h.close(1)
    h.client(3)
    h.take(3)
    h.msg(3, StatusRequest(1))
    (reply,) = h.take(3)
    assert [(f.flow_id, f.state) for f in reply.flows] == [("flow1", "succeeded")]


def test_a_client_back_gets_outcomes_of_jobs_that_end_after_it_came_back() -> None:
    h = Kept()
    h.node(10, "n1")
    attached(h, 1)
    h.msg(1, Submit((spec("a"),)))
    assert h.assigned(10) == [("c1/a", 1)]
    h.close(1)
    attached(h, 2)
    h.msg(2, Submit((spec("a"),)))  # still running: adopted, not refused
    assert h.outcomes(2) == {} and h.assigned(10) == []
    h.msg(10, Result((ok("c1/a"),)))
    assert h.outcomes(2)["a"].status is JobStatus.SUCCEEDED


def test_outcome_sends_go_to_the_new_link_only() -> None:
    h = Kept()
    h.node(10, "n1")
    attached(h, 1)
    h.msg(1, Submit((spec("a"),)))
    h.close(1)
    attached(h, 2)
    h.msg(10, Result((ok("c1/a"),)))
    assert h.take(1, Outcome) == [] and set(h.outcomes(2)) == {"a"}


def test_restored_coordination_is_equal_for_a_store_with_nothing() -> None:
    h = Kept()
    h.c.restore([], [], 0.0)
    assert h.c.to_dict()["sessions_away"] == 0
    c = Coordination()
    c.restore(["x"], [], 0.0)
    assert c.to_dict()["sessions_away"] == 1


def test_a_session_is_kept_as_long_as_its_client_asked_and_an_hour_at_most() -> None:
    h = Kept()
    h.client(1)
    h.msg(1, Attach("short", 10.0))
    h.client(2)
    h.msg(2, Attach("long", 10 * SESSION_KEEP_S))
    h.close(1)
    h.close(2)
    h.tick(11.0)
    assert Forget("short") in h.kept and Forget("long") not in h.kept
    h.tick(SESSION_KEEP_S + 1)
    assert Forget("long") in h.kept


def test_without_records_a_session_away_still_answers_from_what_it_held() -> None:
    h = Kept()
    h.c = Coordination(records=False)
    h.node(10, "n1")
    attached(h, 1)
    h.msg(1, Submit((spec("a"),)))
    h.close(1)
    h.msg(10, Result((ok("c1/a"),)))
    attached(h, 2)
    h.msg(2, Submit((spec("a"),)))
    assert h.outcomes(2)["a"].status is JobStatus.SUCCEEDED
    assert not any(isinstance(k, Record) for k in h.kept)
