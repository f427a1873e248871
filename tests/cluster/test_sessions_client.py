"""A client's session (issue 16): ``Attach`` first on each link, a broken link taken
back without running succeeded jobs again, ``run --connect`` re-attaching after its
process was killed, and a session that another live client holds refused.

The first tests drive ``ClusterBackend`` over a fake link (no coordinator); the rest use
real ``asyncjobs coordinator`` and ``node`` processes and need the coordinator's side of
sessions (``core/coordination.py``).
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from typing import TYPE_CHECKING

import anyio
import pytest

import asyncjobs
from asyncjobs import clusterbackend
from asyncjobs.backend import Entry
from asyncjobs.client_cli import run_session
from asyncjobs.clusterbackend import ClusterBackend
from asyncjobs.errors import ConnectionFailed, SessionBusy
from asyncjobs.executors.base import Call
from asyncjobs.model import JobKind, JobStatus
from asyncjobs.protocol import (
    Attach,
    ClusterInfo,
    DeclareLimits,
    Error,
    Goodbye,
    Heartbeat,
    JobOutcome,
    Message,
    Outcome,
    StatusReply,
    StatusRequest,
    Submit,
)
from asyncjobs.protocol.handshake import Role
from asyncjobs.transport import Link, connect, serve
from tests import cluster_jobs
from tests.cluster_jobs import append_line

from .harness import Coordinator, Node, daemon_env, wait_for_nodes

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Iterator
    from pathlib import Path

    from asyncjobs.core.commands import JobFinished

pytestmark = pytest.mark.timeout(120)  # each test bounds its own waits well below

#: this module, as the nodes import it (``noted`` runs there)
HERE = "tests.cluster.test_sessions_client"




async def noted(path: str, i: int, seconds: float) -> int:
    """Note ``start i`` in a ledger, sleep, note ``end i``, return ``i``: a job started
    twice (not adopted) shows two starts, one run again after it succeeded two ends."""
    i = int(i)
    append_line(path, f"start {i}\n")
    await asyncio.sleep(float(seconds))
    append_line(path, f"end {i}\n")
    return i


# -- a fake link: what the client sends, and the coordinator's answers we script -------


class FakeLink:
    """A ``ClientLink`` that records what is sent and answers ``StatusRequest`` as a
    coordinator that takes the session would (or refuses it: ``busy``)."""

    address = "fake:1"

    def __init__(self, *, busy: bool = False) -> None:
        self.sent: list[Message] = []
        self.busy = busy
        self.closed = False
        self._inbox: asyncio.Queue[Message | None] = asyncio.Queue()
        self._inbox.put_nowait(ClusterInfo({}, 0))

    async def send_many(self, msgs: Iterable[Message]) -> None:
        if self.closed:
            raise anyio.ClosedResourceError
        for msg in msgs:
            self.sent.append(msg)
            if isinstance(msg, StatusRequest):
                if self.busy:
                    self._inbox.put_nowait(Error("session-busy", "held by another link"))
                    self._inbox.put_nowait(None)
                else:
                    self._inbox.put_nowait(StatusReply(msg.request_id, (), ()))

    def cut(self) -> None:
        """The link breaks, from outside."""
        self._inbox.put_nowait(None)

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Message]:
        while True:
            msg = await self._inbox.get()
            if msg is None or self.closed:
                return
            yield msg

    async def aclose(self, reason: str = "") -> None:
        self.closed = True
        self._inbox.put_nowait(None)

    def kinds(self) -> list[type]:
        return [type(m) for m in self.sent if not isinstance(m, Heartbeat)]


async def test_attach_goes_first_then_the_client_says_goodbye_on_closing() -> None:
    link = FakeLink()
    backend = ClusterBackend(link, session="s-1")
    await backend.attach(timeout_s=5)
    backend.start()
    backend.send(StatusRequest(99))
    await backend.aclose(cancel=False)
    assert link.sent[0] == Attach("s-1")
    kinds = link.kinds()
    assert kinds[:2] == [Attach, StatusRequest] and kinds[-1] is Goodbye, kinds
    assert kinds.count(Attach) == 1


async def test_start_without_attach_still_sends_attach_first() -> None:
    link = FakeLink()
    backend = ClusterBackend(link, session="s-2")
    backend.start()
    await backend.aclose(cancel=False)
    assert link.sent[0] == Attach("s-2")
    assert link.kinds()[-1] is Goodbye


async def test_an_anonymous_client_sends_no_attach() -> None:
    link = FakeLink()
    backend = ClusterBackend(link)
    await backend.attach()
    backend.start()
    await backend.aclose(cancel=False)
    assert Attach not in link.kinds()


async def test_session_busy_on_attach_raises_naming_the_address() -> None:
    backend = ClusterBackend(FakeLink(busy=True), session="s-3")
    with pytest.raises(SessionBusy) as caught:
        await backend.attach(timeout_s=5)
    assert caught.value.address == "fake:1" and caught.value.session == "s-3"
    assert "another client" in str(caught.value) and "\n" not in str(caught.value)
    assert isinstance(caught.value, ConnectionFailed | asyncjobs.AsyncJobsError)


async def test_no_answer_to_attach_is_connection_failed() -> None:
    class Mute(FakeLink):
        async def send_many(self, msgs: Iterable[Message]) -> None:
            self.sent.extend(msgs)

    with pytest.raises(ConnectionFailed, match="did not take our session"):
        await ClusterBackend(Mute(), session="s-4").attach(timeout_s=0.2)


async def test_relinking_attaches_first_retries_session_busy_and_sends_the_rest_again(
        ) -> None:
    first = FakeLink()
    links = [FakeLink(busy=True), FakeLink(busy=True), FakeLink()]
    made: list[FakeLink] = []

    async def reconnect() -> FakeLink:
        made.append(links[len(made)])
        return made[-1]

    ended: list[JobFinished] = []
    backend = ClusterBackend(first, session="s-5", reconnect=reconnect, reconnect_s=10)
    await backend.attach(timeout_s=5)
    backend.start()
    backend.declare_limits("flow1", {})
    backend.submit(Entry("j1", JobKind.CPU, ended.append,
                         call=Call(cluster_jobs.square, (2,), {}, None)))
    with anyio.fail_after(5):
        while Submit not in first.kinds():  # noqa: ASYNC110 - bounded by fail_after
            await anyio.sleep(0.01)
    first.cut()
    with anyio.fail_after(10):
        while Submit not in links[2].kinds():  # noqa: ASYNC110 - bounded by fail_after
            await anyio.sleep(0.01)
    assert len(made) == 3 and backend.lost is None and backend.reconnects == 1
    assert Goodbye not in first.kinds() and first.closed  # a goodbye ends the session
    for link in made[:2]:
        assert link.kinds() == [Attach, StatusRequest] and link.closed
    kinds = links[2].kinds()
    assert links[2].sent[0] == Attach("s-5")
    assert kinds.index(StatusRequest) < kinds.index(DeclareLimits) < kinds.index(Submit)
    again = next(m for m in links[2].sent if isinstance(m, Submit))
    assert [j.job_id for j in again.jobs] == ["j1"]
    links[2]._inbox.put_nowait(Outcome((JobOutcome("j1", JobStatus.SUCCEEDED, 4, attempts=1),)))
    with anyio.fail_after(5):
        await backend.aclose(cancel=False)
    assert [(d.job_id, d.result) for d in ended] == [("j1", 4)]
    assert links[2].kinds()[-1] is Goodbye


async def test_a_silent_coordinator_is_left_without_goodbye_and_the_session_named_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Over real TCP links: the client gives up on a coordinator that went silent, its
    link still healthy, and drops it without the ``Goodbye`` that would end the
    session; the next link names the session first."""
    monkeypatch.setattr(clusterbackend, "SILENCE_S", 0.3)
    seen: list[list[Message]] = []
    second_link = anyio.Event()

    async def coordinator(link: Link) -> None:
        got: list[Message] = []
        seen.append(got)
        if len(seen) == 2:
            second_link.set()
        async for msg in link:  # silent: answers the attach, then nothing
            got.append(msg)
            if isinstance(msg, StatusRequest):
                await link.send(StatusReply(msg.request_id, (), ()))

    async with anyio.create_task_group() as tg:
        host, port = await tg.start(functools.partial(
            serve, "127.0.0.1", 0, role=Role.COORDINATOR, secret=b"", handler=coordinator))

        async def link() -> Link:
            return await connect(host, port, role=Role.CLIENT, secret=b"")

        backend = ClusterBackend(await link(), session="s-6", reconnect=link,
                                 reconnect_s=10)
        with anyio.fail_after(15):
            await backend.attach()
            backend.start()
            await second_link.wait()
            while len(seen[0]) < 3 or len(seen[1]) < 2:  # noqa: ASYNC110 - bounded
                await anyio.sleep(0.01)
            await backend.aclose(cancel=False)
            while not seen[1] or not isinstance(seen[1][-1], Goodbye):  # noqa: ASYNC110
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    first, second = ([type(m) for m in got if not isinstance(m, Heartbeat)] for got in seen)
    assert seen[0][0] == Attach("s-6") and seen[1][0] == Attach("s-6")
    assert Goodbye not in first, first  # dropped: the session stays for the next link
    assert second[:2] == [Attach, StatusRequest] and second[-1] is Goodbye, second


# -- the session of run --connect ------------------------------------------------------


def test_the_run_session_is_stable_and_changes_with_the_file_its_content_and_params(
        tmp_path: Path) -> None:
    flow = tmp_path / "jobs.yaml"
    flow.write_text("jobs:\n  a: {shell: 'true'}\n")
    first = run_session(str(flow), {"x": "1", "y": "2"})
    assert first.startswith("run:") and len(first) == 4 + 32
    int(first[4:], 16)
    assert run_session(str(flow), {"y": "2", "x": "1"}) == first  # order does not count
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert run_session("jobs.yaml", {"x": "1", "y": "2"}) == first  # absolute path
    finally:
        os.chdir(cwd)
    assert run_session(str(flow), {"x": "1", "y": "3"}) != first
    assert run_session(str(flow), {"x": "1"}) != first
    assert run_session(str(flow), {"x": "1", "y": "2", "z": ""}) != first
    other = tmp_path / "other.yaml"
    other.write_bytes(flow.read_bytes())
    assert run_session(str(other), {"x": "1", "y": "2"}) != first  # another file
    flow.write_text("jobs:\n  a: {shell: 'false'}\n")
    assert run_session(str(flow), {"x": "1", "y": "2"}) != first  # another content


def test_connect_picks_a_random_api_session_unless_given() -> None:
    a, b = asyncjobs.connect("127.0.0.1:1"), asyncjobs.connect("127.0.0.1:1")
    assert a.session.startswith("api:") and a.session != b.session
    assert asyncjobs.connect("127.0.0.1:1", session="mine").session == "mine"


# -- with real daemons ------------------------------------------------------------------


@pytest.fixture
def one_node(tmp_path: Path) -> Iterator[Coordinator]:
    """A coordinator (no secret, 127.0.0.1, state in a file of its own) with node ``a``."""
    coord = Coordinator(tmp_path)
    with coord, Node(tmp_path, coord.address, "a"):
        anyio.run(lambda: wait_for_nodes(coord, ["a"]))
        yield coord


@pytest.fixture(params=["memory", "sqlite"])
def one_node_either_state(request: pytest.FixtureRequest, tmp_path: Path
                          ) -> Iterator[Coordinator]:
    """``one_node``, its coordinator's state in memory or in SQLite (``--state``)."""
    state = (["--state", str(tmp_path / "state.db")] if request.param == "sqlite"
             else ["--no-state"])
    coord = Coordinator(tmp_path, *state)
    with coord, Node(tmp_path, coord.address, "a"):
        anyio.run(lambda: wait_for_nodes(coord, ["a"]))
        yield coord


def ledger_counts(path: Path, kind: str = "end") -> Counter[int]:
    """How many times each job noted ``kind`` (``start`` or ``end``) in the ledger."""
    text = path.read_text() if path.exists() else ""
    return Counter(int(i) for k, i in (line.split() for line in text.splitlines())
                   if k == kind)


async def wait_for_ledger(path: Path, ends: int, timeout_s: float = 20) -> Counter[int]:
    """Wait until ``ends`` jobs have ended; how many times each ended."""
    deadline = time.monotonic() + timeout_s
    while True:
        seen = ledger_counts(path)
        if sum(seen.values()) >= ends:
            return seen
        assert time.monotonic() < deadline, f"fewer than {ends} ends in {path}: {seen}"
        await anyio.sleep(0.02)


def assert_each_ran_once(path: Path, jobs: int) -> None:
    """Each job started once (those running at a break were adopted, not started again)
    and ended once (those that had succeeded were not run again)."""
    for kind in ("start", "end"):
        seen = ledger_counts(path, kind)
        assert set(seen) == set(range(jobs)) and set(seen.values()) == {1}, (kind, seen)


def cut(link: object) -> None:
    """Break a TCP link from our side, as a network fault would: both directions shut
    down, no ``Goodbye`` (our transport's socket stays ours to close)."""
    assert isinstance(link, Link)
    raw = link._stream.extra(anyio.abc.SocketAttribute.raw_socket)
    dup = socket.socket(fileno=os.dup(raw.fileno()))
    try:
        dup.shutdown(socket.SHUT_RDWR)
    finally:
        dup.close()


async def test_a_cut_link_is_taken_back_and_each_job_runs_and_ends_once(
        one_node: Coordinator, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    n = 30
    with anyio.fail_after(60):
        async with asyncjobs.connect(one_node.address, session="test-cut",
                                     reconnect_s=20) as cluster:
            backend = cluster.backend
            jobs = [cluster.submit(noted, str(ledger), i, 0.1 + 0.05 * i)
                    for i in range(n)]
            await wait_for_ledger(ledger, 5)
            cut(backend.link)
            results = [await j for j in jobs]
            assert backend.reconnects == 1
    assert results == list(range(n))
    assert_each_ran_once(ledger, n)


async def test_a_second_client_of_a_held_session_is_refused(one_node: Coordinator) -> None:
    with anyio.fail_after(45):
        async with asyncjobs.connect(one_node.address, session="test-busy",
                                     reconnect_s=5):
            with pytest.raises(SessionBusy) as caught:
                async with asyncjobs.connect(one_node.address, session="test-busy"):
                    pass
            assert caught.value.address == one_node.address
        async with asyncjobs.connect(one_node.address, session="test-busy",
                                     reconnect_s=5) as cluster:
            assert await cluster.submit(cluster_jobs.square, 3) == 9  # free once closed
            assert cluster.backend.reconnects == 0


def slow_flow(tmp_path: Path, ledger: Path, items: int, seconds: float) -> Path:
    """A flow of ``items`` ledger jobs, two at a time, ``seconds`` each."""
    flow = tmp_path / "jobs.yaml"
    flow.write_text(textwrap.dedent(f"""
        limits:
          two: 2
        jobs:
          work:
            foreach: {{range: {items}}}
            limit: two
            call: {HERE}:noted
            args: ["{ledger}", "{{{{ item }}}}", {seconds}]
    """))
    return flow


def start_run(flow: Path, address: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "asyncjobs", "run", flow.name, "--connect", address,
         "--quiet"], cwd=flow.parent, env=daemon_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


async def test_run_connect_killed_then_run_again_takes_the_run_back(
        one_node_either_state: Coordinator, tmp_path: Path) -> None:
    one_node = one_node_either_state
    durable = "--no-state" not in one_node.argv
    ledger = tmp_path / "ledger"
    items = 24
    flow = slow_flow(tmp_path, ledger, items, 0.25)
    first = start_run(flow, one_node.address)  # noqa: ASYNC220 - runs beside this loop
    try:
        await wait_for_ledger(ledger, 6)
        os.kill(first.pid, signal.SIGKILL)
        await anyio.to_thread.run_sync(first.wait, 10)
        before = ledger_counts(ledger)
        started = ledger_counts(ledger, "start")
        assert sum(before.values()) < items, "the flow ended before the kill"
    finally:
        stop(first)
    second = await anyio.to_thread.run_sync(lambda: subprocess.run(
        [sys.executable, "-m", "asyncjobs", "run", flow.name, "--connect",
         one_node.address, "--quiet"], cwd=tmp_path, env=daemon_env(),
        capture_output=True, text=True, timeout=45))
    assert second.returncode == 0, second.stderr
    if durable:
        after = ledger_counts(ledger)
        assert all(after[i] == 1 for i in before), (before, after)  # done: not again
        assert_each_ran_once(ledger, items)
    else:
        # in memory, a coordinator keeps only what succeeded while the client was away;
        # what the killed client had been told of is in no store, and runs again (and so
        # may a job that ended before the coordinator saw the link close, its outcome
        # sent to the dead client): only jobs not started at the kill must run once
        starts, ends = ledger_counts(ledger, "start"), ledger_counts(ledger)
        rest = set(range(items)) - set(started)
        assert all(starts[i] == 1 and ends[i] == 1 for i in rest), (before, starts, ends)


async def test_two_runs_of_the_same_flow_the_second_exits_2_in_one_line(
        one_node: Coordinator, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    flow = slow_flow(tmp_path, ledger, 20, 0.5)
    first = start_run(flow, one_node.address)  # noqa: ASYNC220 - runs beside this loop
    try:
        await wait_for_ledger(ledger, 1)
        second = await anyio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, "-m", "asyncjobs", "run", flow.name, "--connect",
             one_node.address], cwd=tmp_path, env=daemon_env(), capture_output=True,
            text=True, timeout=30))
        assert second.returncode == 2, second.stderr
        assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr
        assert (f"the flow jobs.yaml is already running from another client of the "
                f"coordinator at {one_node.address}") in second.stderr, second.stderr
        assert first.poll() is None  # the first one runs on
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGINT)
        try:
            first.communicate(timeout=15)
        finally:
            stop(first)


async def test_a_coordinator_restart_with_state_runs_no_succeeded_job_again(
        tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    state = tmp_path / "state.db"
    n = 20
    coord = Coordinator(tmp_path, "--state", str(state), name="first")
    second: Coordinator | None = None
    try:
        with Node(tmp_path, coord.address, "a"):
            await wait_for_nodes(coord, ["a"])
            async with asyncjobs.connect(coord.address, session="test-restart",
                                         reconnect_s=20) as cluster:
                jobs = [cluster.submit(noted, str(ledger), i, 0.2 + 0.1 * i)
                        for i in range(n)]
                done = {await jobs[0], await jobs[1], await jobs[2]}
                coord.signal(signal.SIGKILL)
                await anyio.to_thread.run_sync(coord.proc.wait, 10)
                before = ledger_counts(ledger)
                second = await anyio.to_thread.run_sync(lambda: Coordinator(
                    tmp_path, "--state", str(state), "--listen", f"127.0.0.1:{coord.port}",
                    name="second"))
                with anyio.fail_after(45):
                    results = [await j for j in jobs]
                assert cluster.backend.reconnects == 1
        assert results == list(range(n))
        ran = ledger_counts(ledger)
        assert set(ran) == set(range(n))
        assert all(ran[i] == 1 for i in done), (done, ran)  # succeeded: not run again
        assert all(ran[i] == 1 for i in before), (before, ran)  # recorded in the state
    finally:
        coord.stop()
        if second is not None:
            second.stop()
