"""``asyncjobs.connect()``, ``run --connect`` and ``status`` against a real coordinator
(alone, and with two real nodes), over TCP on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from typing import TYPE_CHECKING

import anyio
import pytest

import asyncjobs
from asyncjobs.errors import ConnectionFailed, HandshakeFailed
from asyncjobs.model import JobKind, JobStatus

from . import client_jobs
from .harness import REPO, Coordinator, Node, daemon_env, status, wait_for_nodes

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.timeout(60)

SECRET = "client-test-secret-5e1"
JOBS = "tests.cluster.client_jobs"


#: a module the nodes have and this process has not
ONLY_ON_NODES = """
import asyncio

import asyncjobs


def twice(x):
    return 2 * x


@asyncjobs.job(timeout=0.2)
async def dawdle():
    await asyncio.sleep(5)
"""


@pytest.fixture(scope="module")
def lonely(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    """A coordinator with no node: jobs wait there."""
    coord = Coordinator(tmp_path_factory.mktemp("lonely"), secret=SECRET)
    with coord:
        yield coord


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    """A coordinator with nodes ``a`` and ``b``, one loop each."""
    tmp = tmp_path_factory.mktemp("two-nodes")
    (tmp / "only_on_nodes.py").write_text(ONLY_ON_NODES)
    env = {"PYTHONPATH": os.pathsep.join([REPO, str(tmp)])}
    coord = Coordinator(tmp, secret=SECRET)
    with coord, Node(tmp, coord.address, "a", secret=SECRET, env=env), \
            Node(tmp, coord.address, "b", secret=SECRET, env=env):
        anyio.run(lambda: wait_for_nodes(coord, ["a", "b"]))
        yield coord


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str, cwd: Path | str = REPO, secret: str | None = SECRET,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "asyncjobs", *args], capture_output=True,
                          text=True, timeout=timeout, env=daemon_env(secret), cwd=cwd)


def one_line_naming(stderr: str, address: str) -> None:
    assert stderr.count("\n") == 1 and address in stderr, stderr
    assert "Traceback" not in stderr


async def busy_slots(coord: Coordinator) -> int:
    return sum(n.slots_used for n in (await status(coord, SECRET)).nodes)


async def wait_for_lines(path: Path, text: str, count: int, timeout_s: float = 15) -> None:
    end = time.monotonic() + timeout_s
    while not path.exists() or path.read_text().count(text) < count:  # noqa: ASYNC110
        assert time.monotonic() < end, f"fewer than {count} {text!r} in {path}"
        await anyio.sleep(0.05)


# -- a coordinator alone ---------------------------------------------------------------


async def test_connect_returns_after_the_handshake_with_no_nodes(lonely: Coordinator) -> None:
    async with asyncjobs.connect(lonely.address, secret=SECRET) as cluster:
        reply = await cluster.status()
        assert reply.nodes == ()
        assert all(cluster.backend.capacity(kind) is None for kind in JobKind)


async def test_a_job_waits_for_nodes_and_its_cancel_is_answered(lonely: Coordinator) -> None:
    async with asyncjobs.connect(lonely.address, secret=SECRET) as cluster:
        job = cluster.submit(client_jobs.nap, 1, 0)
        await anyio.sleep(0.3)
        assert not job.done() and job.status is JobStatus.QUEUED
        cluster.backend.cancel(job.id)  # the future ends only with the coordinator's answer
        with anyio.fail_after(5), pytest.raises(asyncjobs.JobCancelled):
            await job
        second = cluster.submit(f"{JOBS}:nap", 2, 0)
        await anyio.sleep(0.1)
        second.cancel()
        with pytest.raises(asyncjobs.JobCancelled):
            await second
        started = time.monotonic()
    assert time.monotonic() - started < 3  # the coordinator answered the cancel


async def test_the_secret_comes_from_the_environment(lonely: Coordinator,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASYNCJOBS_SECRET", SECRET)
    async with asyncjobs.connect(lonely.address) as cluster:
        assert (await cluster.status()).nodes == ()


async def test_a_wrong_secret_or_nobody_there_raises_naming_the_address(
        lonely: Coordinator) -> None:
    with pytest.raises(HandshakeFailed) as wrong:
        async with asyncjobs.connect(lonely.address, secret="not-it"):
            pass
    nobody = f"127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionFailed) as refused:
        async with asyncjobs.connect(nobody, secret=SECRET):
            pass
    for caught, address in ((wrong, lonely.address), (refused, nobody)):
        assert isinstance(caught.value, asyncjobs.AsyncJobsError)
        assert address in str(caught.value) and "\n" not in str(caught.value)


def test_status_json_with_no_nodes_and_the_table(lonely: Coordinator) -> None:
    r = cli("status", "--connect", lonely.address, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"nodes": [], "flows": []}
    r = cli("status", "--connect", lonely.address)
    assert r.returncode == 0 and "nodes" in r.stdout and "flows" in r.stdout, r.stderr


def test_no_coordinator_wrong_secret_or_readable_secret_file_exit_2(
        lonely: Coordinator, tmp_path: Path) -> None:
    flow = tmp_path / "jobs.yaml"
    flow.write_text(f"jobs:\n  a: {{call: '{JOBS}:nap', args: [1, 0]}}\n")
    nobody = f"127.0.0.1:{free_port()}"
    for command in (["status"], ["run", str(flow)]):
        r = cli(*command, "--connect", nobody)
        assert r.returncode == 2 and "connection refused" in r.stderr
        one_line_naming(r.stderr, nobody)
        r = cli(*command, "--connect", lonely.address, secret="not-it")
        assert r.returncode == 2
        one_line_naming(r.stderr, lonely.address)
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    secret_file.chmod(0o644)
    r = cli("status", "--connect", lonely.address, "--secret-file", str(secret_file))
    assert r.returncode == 2 and "chmod 600" in r.stderr and SECRET not in r.stderr
    r = cli("run", str(flow), "--connect", lonely.address, "--loops", "2")
    assert r.returncode == 2 and "--loops" in r.stderr


# -- with two nodes --------------------------------------------------------------------


async def test_map_keeps_input_order_when_items_finish_out_of_order(
        two_nodes: Coordinator) -> None:
    async with asyncjobs.connect(two_nodes.address, secret=SECRET) as cluster:
        items = range(20)
        naps = [0.3 - 0.015 * i for i in items]  # the last item ends first
        got: list[int] = await cluster.map(client_jobs.nap, items, naps)
        assert got == list(items)


async def test_a_failing_job_raises_job_failed_with_the_remote_error(
        two_nodes: Coordinator) -> None:
    async with asyncjobs.connect(two_nodes.address, secret=SECRET) as cluster:
        with pytest.raises(asyncjobs.JobFailed) as caught:
            await cluster.submit(client_jobs.broken, "x")
    failed = caught.value
    assert failed.type_name == "ValueError" and failed.message == "no good: x"
    assert "in broken" in failed.traceback and "raise ValueError" in failed.traceback
    assert failed.where in ("a", "b")


async def test_leaving_with_an_exception_cancels_the_jobs_on_the_cluster(
        two_nodes: Coordinator, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    with pytest.raises(RuntimeError, match="boom"):
        async with asyncjobs.connect(two_nodes.address, secret=SECRET) as cluster:
            jobs = [cluster.submit(client_jobs.mark_and_sleep, str(marks), 30)
                    for _ in range(2)]
            await wait_for_lines(marks, "started", 2)
            started = time.monotonic()
            raise RuntimeError("boom")
    assert time.monotonic() - started < 6
    assert all(j.done() for j in jobs)
    with anyio.fail_after(5):
        while await busy_slots(two_nodes):  # noqa: ASYNC110 - status is asked, not told
            await anyio.sleep(0.05)
    assert "ended" not in marks.read_text()


FLOW = f"""
    name: spread
    jobs:
      where:
        foreach: {{range: 8}}
        call: {JOBS}:where
        args: ["{{{{ item }}}}"]
      squares:
        foreach: {{range: 6}}
        call: tests.cluster_jobs:square
        args: ["{{{{ item }}}}"]
        kind: cpu
      total:
        needs: [squares]
        call: {JOBS}:total
        args: ["{{{{ results.squares }}}}"]
"""


async def test_a_flow_gives_the_same_results_as_embedded(two_nodes: Coordinator,
                                                         tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text(textwrap.dedent(FLOW))
    async with asyncjobs.Runner(cpu_workers=1) as runner:
        here = await runner.run_flow(path)
    async with asyncjobs.connect(two_nodes.address, secret=SECRET) as cluster:
        there = await cluster.run_flow(path)
    assert here.ok and there.ok
    assert there.results["total"] == here.results["total"] == sum(i * i for i in range(6))


def test_run_connect_reports_both_nodes_and_status_lists_the_flow(
        two_nodes: Coordinator, tmp_path: Path) -> None:
    (tmp_path / "jobs.yaml").write_text(textwrap.dedent(FLOW))
    r = cli("run", "jobs.yaml", "--connect", two_nodes.address, "--report", "report.json",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "spread: ok" in r.stderr
    records = json.loads((tmp_path / "report.json").read_text())["jobs"]
    assert len(records) == 8 + 6 + 1 and all(j["status"] == "succeeded" for j in records)
    assert {j["node"] for j in records if j["id"].startswith("where[")} == {"a", "b"}
    assert all(j["start"] and j["end"] for j in records)
    r = cli("status", "--connect", two_nodes.address, "--json")
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert sorted(n["name"] for n in shown["nodes"]) == ["a", "b"]
    assert all(set(n) == {"name", "alive", "loops", "slots_used", "slots_total",
                          "last_heartbeat_s"} for n in shown["nodes"])
    ours = [f for f in shown["flows"] if f["file"] == "jobs.yaml"]
    assert ours and ours[-1]["state"] == "succeeded"
    assert ours[-1]["done"] == ours[-1]["total"] == 15
    assert set(ours[-1]) == {"id", "file", "state", "done", "total"}


async def test_ctrl_c_exits_130_and_cancels_the_jobs_on_the_cluster(
        two_nodes: Coordinator, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    (tmp_path / "sleepy.yaml").write_text(textwrap.dedent(f"""
        jobs:
          sleepy:
            foreach: {{range: 4}}
            call: {JOBS}:mark_and_sleep
            args: ["{marks}", 30]
    """))
    run = subprocess.Popen(  # noqa: ASYNC220 - the command runs beside this loop
        [sys.executable, "-m", "asyncjobs", "run", "sleepy.yaml", "--connect",
         two_nodes.address], cwd=tmp_path,
        env=daemon_env(SECRET), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        await wait_for_lines(marks, "started", 4)
        shown = [(f.state, f.done, f.total) for f in (await status(two_nodes, SECRET)).flows
                 if f.file == "sleepy.yaml"]
        assert shown == [("running", 0, 4)]
        os.kill(run.pid, signal.SIGINT)
        _, err = run.communicate(timeout=15)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    with anyio.fail_after(5):
        while await busy_slots(two_nodes):  # noqa: ASYNC110 - status is asked, not told
            await anyio.sleep(0.05)
    assert "ended" not in marks.read_text()
    flows = (await status(two_nodes, SECRET)).flows
    assert [(f.state, f.done, f.total) for f in flows
            if f.file == "sleepy.yaml"] == [("cancelled", 4, 4)]


async def test_jobs_that_cannot_travel_fail_alone_and_the_rest_run(
        two_nodes: Coordinator) -> None:
    async with asyncjobs.connect(two_nodes.address, secret=SECRET) as cluster:
        # one loop iteration: one Submit, from which the two bad ones are taken out
        good = [cluster.submit(client_jobs.nap, i, 0) for i in range(100)]
        local = cluster.submit(lambda: 1)
        odd = cluster.submit(client_jobs.nap, object(), 0)
        more = [cluster.submit(client_jobs.nap, i, 0) for i in range(100, 200)]
        with pytest.raises(asyncjobs.JobFailed, match="cannot be sent to a cluster"):
            await local
        with pytest.raises(asyncjobs.JobFailed, match="msgpack") as caught:
            await odd
        assert caught.value.job_id in str(caught.value)
        assert [await j for j in good + more] == list(range(200))


async def test_a_lost_coordinator_fails_the_unfinished_jobs_and_submit_raises(
        tmp_path: Path) -> None:
    coord = Coordinator(tmp_path, secret=SECRET)
    try:
        async with asyncjobs.connect(coord.address, secret=SECRET,
                                     reconnect_s=1.0) as cluster:
            job = cluster.submit(client_jobs.nap, 1, 0)
            await anyio.sleep(0.2)
            coord.signal(signal.SIGKILL)
            with anyio.fail_after(15), pytest.raises(asyncjobs.JobFailed) as caught:
                await job
            assert caught.value.type_name == "ConnectionLost"
            assert coord.address in caught.value.message
            with pytest.raises(asyncjobs.AsyncJobsError, match="lost"):
                cluster.submit(client_jobs.nap, 2, 0)
    finally:
        coord.stop()


async def test_a_cancelled_task_cancels_its_jobs_on_the_cluster(two_nodes: Coordinator,
                                                                 tmp_path: Path) -> None:
    marks = tmp_path / "marks"

    async def body() -> None:
        async with asyncjobs.connect(two_nodes.address, secret=SECRET) as cluster:
            await cluster.map(client_jobs.mark_and_sleep, [str(marks)] * 2, [30] * 2)

    with anyio.move_on_after(10) as scope:  # anyio's cancellation, level-triggered
        async with anyio.create_task_group() as tg:
            tg.start_soon(body)
            await wait_for_lines(marks, "started", 2)
            started = time.monotonic()
            tg.cancel_scope.cancel()
    assert not scope.cancelled_caught and time.monotonic() - started < 6
    with anyio.fail_after(5):
        while await busy_slots(two_nodes):  # noqa: ASYNC110 - status is asked, not told
            await anyio.sleep(0.05)
    assert "ended" not in marks.read_text()


def test_a_flow_with_limits_shell_steps_and_resume(two_nodes: Coordinator,
                                                  tmp_path: Path) -> None:
    (tmp_path / "jobs.yaml").write_text(textwrap.dedent(f"""
        limits:
          one: 1
        jobs:
          hello: {{shell: "echo hello from $0"}}
          slow:
            foreach: {{range: 4}}
            limit: one
            call: {JOBS}:nap
            args: ["{{{{ item }}}}", 0.2]
    """))
    started = time.monotonic()
    r = cli("run", "jobs.yaml", "--connect", two_nodes.address, "--report", "r.json",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    records = {j["id"]: j for j in json.loads((tmp_path / "r.json").read_text())["jobs"]}
    slow = sorted((records[f"slow[{i}]"]["start"], records[f"slow[{i}]"]["end"])
                  for i in range(4))
    assert all(a[1] <= b[0] for a, b in zip(slow, slow[1:], strict=False)), slow  # one at once
    assert time.monotonic() - started > 0.8
    r = cli("run", "jobs.yaml", "--connect", two_nodes.address, "--resume", cwd=tmp_path)
    assert r.returncode == 0 and "5 resumed" in r.stderr, r.stderr


def test_something_that_is_not_asyncjobs_is_one_line_and_exit_2() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        with subprocess.Popen([sys.executable, "-m", "asyncjobs", "status", "--connect",
                               address], stderr=subprocess.PIPE, text=True,
                              env=daemon_env(SECRET)) as status_cmd:
            peer, _ = listener.accept()
            with peer:
                peer.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n" + b" " * 64)
                _, err = status_cmd.communicate(timeout=15)
    assert status_cmd.returncode == 2
    one_line_naming(err, address)


def test_run_connect_starts_no_process_here(two_nodes: Coordinator, tmp_path: Path) -> None:
    (tmp_path / "jobs.yaml").write_text(textwrap.dedent("""
        jobs:
          squares:
            foreach: {range: 20}
            call: tests.cluster_jobs:square
            args: ["{{ item }}"]
            kind: cpu
          hello: {shell: "echo hi"}
    """))
    code = textwrap.dedent(f"""
        import subprocess, sys
        started = []
        popen_init = subprocess.Popen.__init__
        def noted(self, args, *rest, **kw):
            started.append(args)
            popen_init(self, args, *rest, **kw)
        subprocess.Popen.__init__ = noted
        from asyncjobs.cli import main
        print(main(["run", "jobs.yaml", "--connect", "{two_nodes.address}", "--quiet"]),
              started)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=30, env=daemon_env(SECRET), cwd=tmp_path)
    assert r.stdout.strip() == "0 []", r.stdout + r.stderr


async def test_a_batch_past_the_frame_limit_is_split_and_a_job_past_it_fails_alone(
        two_nodes: Coordinator) -> None:
    async with asyncjobs.connect(two_nodes.address, secret=SECRET) as cluster:
        big = b"x" * (6 << 20)  # three of them exceed the 16 MiB frame limit
        fitting = [cluster.submit(client_jobs.size_of, big) for _ in range(3)]
        huge = cluster.submit(client_jobs.size_of, b"x" * (17 << 20))
        with pytest.raises(asyncjobs.JobFailed, match="more than the coordinator accepts"):
            await huge
        assert [await j for j in fitting] == [len(big)] * 3


async def test_a_reference_only_the_nodes_can_import_travels_by_name(
        two_nodes: Coordinator) -> None:
    async with asyncjobs.connect(two_nodes.address, secret=SECRET) as cluster:
        assert await cluster.submit("only_on_nodes:twice", 21) == 42
        assert await cluster.map("only_on_nodes:twice", range(5)) == [0, 2, 4, 6, 8]
        with pytest.raises(asyncjobs.JobTimeout):  # its @job(timeout=0.2), on the node
            await cluster.submit("only_on_nodes:dawdle")
        with pytest.raises(asyncjobs.JobFailed, match="nowhere_at_all"):
            await cluster.submit("nowhere_at_all:fn")
        with pytest.raises(ImportError, match="did you mean 'nap'"):  # a module we have
            cluster.submit(f"{JOBS}:napp")
