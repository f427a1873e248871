"""Whole runs of ``Coordination`` under random node deaths, joins and answer orders: every
job a client submits is answered exactly once, and no loop ever holds more than its
slots plus the prefetch."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from asyncjobs.core.coordination import Close, Coordination, Record, Send
from asyncjobs.core.nodes import PREFETCH_PER_LOOP
from asyncjobs.model import JobKind, JobStatus
from asyncjobs.protocol.messages import (
    Assign,
    Attach,
    AttemptResult,
    Cancel,
    Outcome,
    Register,
    Result,
    Submit,
)
from asyncjobs.protocol.messages import JobSpec as Spec

IO = JobKind.IO
CLIENT = 1
SLOTS = 2


class Run:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.c = Coordination(rng=random.Random(seed))
        self.now = 0.0
        self.links: dict[int, str] = {}  # node link -> node name
        self.held: dict[int, list[tuple[str, int]]] = {}
        self.outcomes: dict[str, list[Any]] = {}
        self.next_link = 100
        self.cancelled: set[str] = set()
        self.take(self.c.client_joined(CLIENT, self.now))

    def take(self, outputs: list[Send | Close]) -> None:
        for out in outputs:
            if isinstance(out, Close):
                if out.link in self.links:
                    self.close(out.link)
                continue
            msg = out.msg
            if isinstance(msg, Assign):
                held = self.held[out.link]
                held.extend((a.job_id, a.attempt) for a in msg.attempts)
                assert len(held) <= SLOTS + PREFETCH_PER_LOOP, held
            elif isinstance(msg, Outcome):
                for o in msg.jobs:
                    self.outcomes.setdefault(o.job_id, []).append(o)
            elif isinstance(msg, Cancel) and out.link in self.held:
                self.cancelled.update(msg.job_ids)

    def join(self) -> None:
        link = self.next_link
        self.next_link += 1
        self.links[link] = f"n{link}"
        self.held[link] = []
        self.take(self.c.node_joined(link, Register(f"n{link}", 0, 1, {IO: SLOTS}), self.now))

    def close(self, link: int) -> None:
        del self.links[link]
        del self.held[link]
        self.take(self.c.link_closed(link, self.now))

    def answer(self, link: int, n: int) -> None:
        held = self.held[link]
        done = [held.pop(self.rng.randrange(len(held))) for _ in range(min(n, len(held)))]
        results = tuple(AttemptResult(j, a, f"{j}@{a}") for j, a in done)
        self.take(self.c.message(link, Result(results), self.now))

    def step(self, step: str) -> None:
        """One of the steps both tests take: a node answers, joins or dies; time passes."""
        self.now += 0.5
        links = list(self.links)
        if step == "answer" and links:
            self.answer(self.rng.choice(links), self.rng.randint(1, 4))
        elif step == "join":
            self.join()
        elif step == "kill" and links:
            self.close(self.rng.choice(links))
        elif step == "tick":
            self.take(self.c.tick(self.now))

    def settle(self, jobs: int) -> None:
        """A healthy node, answering everything it holds until all is done (bounded)."""
        self.join()
        for _ in range(10 * jobs + 10):
            if len(self.outcomes) == jobs:
                break
            for link in list(self.links):
                self.answer(link, 4)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), jobs=st.integers(1, 40),
       steps=st.lists(st.sampled_from(["answer", "answer", "answer", "join", "kill",
                                       "cancel", "tick"]), max_size=60))
def test_every_job_is_answered_exactly_once(seed: int, jobs: int, steps: list[str]) -> None:
    run = Run(seed)
    run.join()
    specs = tuple(Spec(f"j{i}", "m:f", (i,), None, IO, None, 0, None) for i in range(jobs))
    run.take(run.c.message(CLIENT, Submit(specs), run.now))
    for step in steps:
        if step == "cancel":
            job = f"j{run.rng.randrange(jobs)}"
            run.take(run.c.message(CLIENT, Cancel((job,)), run.now))
        else:
            run.step(step)
    run.settle(jobs)
    assert set(run.outcomes) == {s.job_id for s in specs}
    assert all(len(v) == 1 for v in run.outcomes.values())
    for job_id, (out,) in run.outcomes.items():
        if out.status is JobStatus.SUCCEEDED:
            assert out.value.startswith(f"c1/{job_id}@")
        else:
            assert out.status in (JobStatus.CANCELLED, JobStatus.FAILED)
            assert out.status is JobStatus.CANCELLED or out.error.type_name == "KilledNodes"


class SessionRun(Run):
    """A client with a session that goes away and comes back; a store made of the
    ``Record``s the coordination asked to keep."""

    def __init__(self, seed: int) -> None:
        self.client = CLIENT
        self.stored: dict[str, Any] = {}
        self.assigned_after_record: list[str] = []
        super().__init__(seed)
        self.take(self.c.message(CLIENT, Attach("s"), self.now))

    def take(self, outputs: list[Any]) -> None:
        for out in outputs:
            if isinstance(out, Record):
                self.stored.update((o.job_id, o) for o in out.outcomes)
            elif isinstance(out, Send) and isinstance(out.msg, Assign):
                self.assigned_after_record += [
                    a.job_id for a in out.msg.attempts
                    if a.job_id.split("/", 1)[1] in self.stored]
        super().take([o for o in outputs if isinstance(o, Send | Close)
                      and not (isinstance(o, Send) and isinstance(o.msg, Outcome)
                               and o.link != self.client)])

    def away(self) -> None:
        if self.client is not None:
            self.take(self.c.link_closed(self.client, self.now))
            self.client = None

    def back(self, specs: tuple[Spec, ...]) -> None:
        if self.client is not None:
            return
        self.client = self.next_link
        self.next_link += 1
        self.take(self.c.client_joined(self.client, self.now))
        self.take(self.c.message(self.client, Attach("s"), self.now))
        again = tuple(s for s in specs if s.job_id not in self.outcomes)
        found = {s.job_id: self.stored[s.job_id] for s in again if s.job_id in self.stored}
        self.take(self.c.message(self.client, Submit(again), self.now, found))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), jobs=st.integers(1, 30),
       steps=st.lists(st.sampled_from(["answer", "answer", "answer", "join", "kill",
                                       "away", "back", "tick"]), max_size=60))
def test_a_session_that_comes_and_goes_hears_of_each_job_once_and_reruns_no_success(
        seed: int, jobs: int, steps: list[str]) -> None:
    run = SessionRun(seed)
    run.join()
    specs = tuple(Spec(f"j{i}", "m:f", (i,), None, IO, None, 0, None) for i in range(jobs))
    run.take(run.c.message(CLIENT, Submit(specs), run.now))
    for step in steps:
        if step == "away":
            run.away()
        elif step == "back":
            run.back(specs)
        else:
            run.step(step)
    run.back(specs)
    run.settle(jobs)
    assert set(run.outcomes) == {s.job_id for s in specs}
    assert all(len(v) == 1 for v in run.outcomes.values()), run.outcomes
    assert run.assigned_after_record == []
    for job_id, (out,) in run.outcomes.items():
        if out.status is JobStatus.SUCCEEDED:
            assert out.value.startswith(f"c1/{job_id}@")
            assert run.stored[job_id] == out
