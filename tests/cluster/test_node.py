"""``asyncjobs node`` with a real coordinator: loops register and run jobs, a killed loop
comes back, the secret stays out of every child, a wrong secret retries slowly, a
restarted coordinator is found again, SIGTERM drains and leaves nothing behind."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import psutil
import pytest

from asyncjobs.executors.remote import IO_CHUNK, SHELL
from asyncjobs.model import JobKind
from asyncjobs.protocol import Role
from asyncjobs.protocol.messages import Cancel, JobOutcome, JobSpec, Outcome, Submit
from asyncjobs.transport import Link, connect
from tests.cluster_jobs import append_line

from .harness import Coordinator, Node, wait_for_nodes

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

pytestmark = pytest.mark.timeout(60)

SECRET = "node-test-secret-7f3a9c"
HERE = "tests.cluster.test_node"


# -- jobs the nodes run (imported there by reference) ------------------------------------


async def secret_seen() -> dict[str, Any]:
    """What a job sees of the secret: its environment, and its loop's pid."""
    return {"env": os.environ.get("ASYNCJOBS_SECRET"), "pid": os.getpid()}


def cpu_secret_seen() -> dict[str, Any]:
    return {"env": os.environ.get("ASYNCJOBS_SECRET"), "pid": os.getpid()}


async def unencodable() -> object:
    return {1, 2}


async def huge(size: int) -> bytes:
    return b"x" * size


async def block_the_loop(marker: str, seconds: float) -> None:
    """A job that never yields: its loop's event loop stops turning."""
    append_line(marker, f"{os.getpid()}\n")
    time.sleep(seconds)  # noqa: ASYNC251 - blocking its event loop is the point




async def ledger(path: str, seconds: float) -> int:
    """Note its start and end in a shared file; the pid of its loop."""
    append_line(path, "+\n")
    await asyncio.sleep(seconds)
    append_line(path, "-\n")
    return os.getpid()


async def marked_sleep(marker: str, seconds: float, value: object) -> object:
    append_line(marker, "started")
    await asyncio.sleep(seconds)
    return value


# -- helpers ---------------------------------------------------------------------------


def spec(job_id: str, target: str, *args: Any, kind: str | None = "io") -> JobSpec:
    return JobSpec(job_id, target, tuple(args), None, kind, None, 0, None, ())  # type: ignore[arg-type]


class Client:
    """A raw client link: ``Submit`` jobs, collect their ``Outcome`` items."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.outcomes: dict[str, JobOutcome] = {}

    async def submit(self, *jobs: JobSpec) -> None:
        await self.link.send(Submit(jobs))

    async def wait(self, job_ids: Sequence[str], timeout_s: float = 20.0
                   ) -> dict[str, JobOutcome]:
        with anyio.fail_after(timeout_s):
            while not all(j in self.outcomes for j in job_ids):
                msg = await self.link.receive()
                if isinstance(msg, Outcome):
                    self.outcomes.update((o.job_id, o) for o in msg.jobs)
        return {j: self.outcomes[j] for j in job_ids}


async def client(coord: Coordinator, secret: str = SECRET) -> Client:
    link = await connect(coord.host, coord.port, role=Role.CLIENT, secret=secret.encode())
    return Client(link)


def slots(loops: int, cpu_workers: int, io: int = 100) -> int:
    """A node's slots once all its loops registered (the supervisor's split)."""
    threads = max(1, min(32, len(os.sched_getaffinity(0)) + 4) // loops)
    return loops * (io + threads) + cpu_workers


def loop_pids(node: Node) -> list[int]:
    pids = []
    for p in psutil.Process(node.pid).children():
        try:  # a loop that was just killed may be gone between the listing and this
            if "asyncjobs.daemons._loop_main" in " ".join(p.cmdline()):
                pids.append(p.pid)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return pids


def wait_until(check: Any, timeout_s: float = 20.0, what: str = "") -> Any:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or check}")


def succeeded(outcomes: dict[str, JobOutcome]) -> dict[str, Any]:
    bad = {k: (o.status, o.error) for k, o in outcomes.items() if o.status != "succeeded"}
    assert not bad, bad
    return {k: o.value for k, o in outcomes.items()}


@pytest.fixture
def coord(tmp_path: Path) -> Iterator[Coordinator]:
    c = Coordinator(tmp_path, secret=SECRET)
    with c:
        yield c


# -- tests -----------------------------------------------------------------------------


async def test_two_loops_register_run_jobs_and_never_see_the_secret(
        tmp_path: Path, coord: Coordinator) -> None:
    node = Node(tmp_path, coord.address, "n2", loops=2, cpu_workers=1, secret=SECRET)
    with node:
        nodes = await wait_for_nodes(coord, ["n2"], loops=2, slots=slots(2, 1))
        assert nodes["n2"].alive
        c = await client(coord)
        async with c.link:
            jobs = [spec(f"io{i}", f"{HERE}:secret_seen") for i in range(12)]
            jobs.append(spec("cpu", f"{HERE}:cpu_secret_seen", kind="cpu"))
            jobs.append(JobSpec("sh", SHELL, ("echo \"[$ASYNCJOBS_SECRET]\"",),
                                {"env": {"STEP": "1"}, "cwd": None}, JobKind.IO, None, 0,
                                None, ()))
            await c.submit(*jobs)
            values = succeeded(await c.wait([j.job_id for j in jobs]))
            assert values.pop("sh")["stdout"] == "[]\n"
        loops = loop_pids(node)
        assert len(loops) == 2
        assert {values[f"io{i}"]["pid"] for i in range(12)} == set(loops)  # both loops ran
        assert all(v["env"] is None for v in values.values())
        assert values["cpu"]["pid"] not in loops  # a cpu worker, below a loop
        for proc in psutil.Process(node.pid).children(recursive=True):
            for part in ("cmdline", "environ"):
                try:
                    seen = Path(f"/proc/{proc.pid}/{part}").read_bytes()
                except (FileNotFoundError, ProcessLookupError):
                    continue  # it ended since the listing
                assert SECRET.encode() not in seen
        assert SECRET not in node.text()
        assert node.stop() == 0


async def test_a_killed_loop_is_started_again_and_registers_again(
        tmp_path: Path, coord: Coordinator) -> None:
    node = Node(tmp_path, coord.address, "k", loops=2, cpu_workers=0, secret=SECRET)
    with node:
        await wait_for_nodes(coord, ["k"], loops=2, slots=slots(2, 0))
        first = wait_until(lambda: len(loop_pids(node)) == 2 and loop_pids(node))
        os.kill(first[0], signal.SIGKILL)
        again = wait_until(lambda: (len(p := loop_pids(node)) == 2 and first[0] not in p
                                    and p), what="a new loop process")
        assert first[1] in again
        node.wait_for_line(r"loop \d exited \(code -9\)")
        await wait_for_nodes(coord, ["k"], loops=2, slots=slots(2, 0))
        c = await client(coord)
        async with c.link:
            jobs = [spec(f"j{i}", f"{HERE}:secret_seen") for i in range(8)]
            await c.submit(*jobs)
            values = succeeded(await c.wait([j.job_id for j in jobs]))
        assert {v["pid"] for v in values.values()} == set(again)
        assert node.stop() == 0


async def test_a_wrong_secret_never_runs_a_job_and_retries_slowly(
        tmp_path: Path, coord: Coordinator) -> None:
    marker = tmp_path / "ran"
    node = Node(tmp_path, coord.address, "w", loops=1, cpu_workers=0,
                secret="not-the-secret")
    with node:
        node.wait_for_line("handshake with .* failed")
        c = await client(coord)
        async with c.link:
            await c.submit(spec("m", f"{HERE}:marked_sleep", str(marker), 0, 1))
            began = coord.text().count("authentication failed")
            await anyio.sleep(2.0)
            tries = coord.text().count("authentication failed") - began
            assert not c.outcomes
        assert 1 <= tries <= 12, tries  # backoff from 0.1 s doubling, with jitter
        assert not marker.exists()
        assert node.text().count("handshake with") == 1  # logged once a minute at most
        assert "not-the-secret" not in node.text()
        assert node.stop() == 0


async def test_the_node_reconnects_after_the_coordinator_restarts(tmp_path: Path) -> None:
    first = Coordinator(tmp_path, secret=SECRET, name="first")
    try:
        node = Node(tmp_path, first.address, "r", loops=1, cpu_workers=0, secret=SECRET)
        with node:
            await wait_for_nodes(first, ["r"])
            port = first.port
            assert first.stop() == 0
            node.wait_for_line("lost the link|closed the link|said goodbye")
            second = Coordinator(tmp_path, "--listen", f"127.0.0.1:{port}",
                                 secret=SECRET, name="second")
            with second:
                await wait_for_nodes(second, ["r"])
                c = await client(second)
                async with c.link:
                    await c.submit(spec("after", f"{HERE}:secret_seen"))
                    succeeded(await c.wait(["after"]))
            assert node.stop() == 0
    finally:
        first.stop()


async def test_sigterm_drains_running_jobs_exits_0_and_leaves_no_process(
        tmp_path: Path, coord: Coordinator) -> None:
    marker = tmp_path / "started"
    node = Node(tmp_path, coord.address, "t", loops=2, cpu_workers=2, secret=SECRET)
    try:
        await wait_for_nodes(coord, ["t"], loops=2, slots=slots(2, 2))
        c = await client(coord)
        async with c.link:
            await c.submit(spec("cpu", "tests.jobs:square", 3, kind="cpu"))
            assert succeeded(await c.wait(["cpu"])) == {"cpu": 9}
            family = psutil.Process(node.pid).children(recursive=True)
            await c.submit(spec("slow", f"{HERE}:marked_sleep", str(marker), 1.0, "done"))
            await anyio.to_thread.run_sync(wait_until, marker.exists)
            node.signal(signal.SIGTERM)
            assert succeeded(await c.wait(["slow"])) == {"slow": "done"}
        assert await anyio.to_thread.run_sync(node.proc.wait, 15) == 0
        gone, alive = psutil.wait_procs(family, timeout=5)
        assert not alive, alive
        assert "draining" in node.text()
    finally:
        node.stop()


def _notice(sock: socket.socket) -> bytes:
    """The next systemd notification other than a ``STATUS=`` line (those come every
    few seconds, in between; tests/cluster/test_ops.py reads them)."""
    for _ in range(100):
        got = sock.recv(1000)
        if not got.startswith(b"STATUS="):
            return got
    raise AssertionError("only STATUS= lines")


async def test_io_concurrency_bounds_the_io_jobs_a_loop_runs_at_once(
        tmp_path: Path, coord: Coordinator) -> None:
    path = tmp_path / "ledger"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(20)
    node = Node(tmp_path, coord.address, "io", "--io-concurrency", "2", loops=1,
                cpu_workers=1, secret=SECRET, env={"NOTIFY_SOCKET": str(tmp_path / "notify")})
    with node, notify:
        assert await anyio.to_thread.run_sync(_notice, notify) == b"READY=1"
        await wait_for_nodes(coord, ["io"])
        for pid in loop_pids(node):
            assert b"NOTIFY_SOCKET" not in Path(f"/proc/{pid}/environ").read_bytes()
        c = await client(coord)
        async with c.link:
            jobs = [spec(f"l{i}", f"{HERE}:ledger", str(path), 0.15) for i in range(8)]
            await c.submit(*jobs)
            succeeded(await c.wait([j.job_id for j in jobs]))
        running = most = 0
        for line in path.read_text().split():
            running += 1 if line == "+" else -1
            most = max(most, running)
        assert most == 2
        assert node.stop() == 0
        assert _notice(notify) == b"STOPPING=1"


async def test_a_chunk_heavier_than_a_loop_runs_no_more_calls_at_once_than_its_slots(
        tmp_path: Path, coord: Coordinator) -> None:
    path = tmp_path / "ledger"
    node = Node(tmp_path, coord.address, "io", "--io-concurrency", "2", loops=1,
                cpu_workers=0, secret=SECRET)
    with node:
        await wait_for_nodes(coord, ["io"])
        c = await client(coord)
        async with c.link:
            calls = [[f"{HERE}:ledger", [str(path), 0.1], None] for _ in range(5)]
            chunk = dataclasses.replace(spec("chunk", IO_CHUNK, calls), weight=5)
            await c.submit(chunk, spec("after", f"{HERE}:ledger", str(path), 0.1))
            done = await c.wait(["chunk", "after"])
        outcomes, _elapsed = succeeded(done)["chunk"]
        assert [ok for ok, *_ in outcomes] == [True] * 5
        running = most = 0
        for line in path.read_text().split():
            running += 1 if line == "+" else -1
            most = max(most, running)
        assert most == 2


async def test_sigterm_hands_queued_attempts_back_and_they_run_elsewhere(
        tmp_path: Path, coord: Coordinator) -> None:
    a = Node(tmp_path, coord.address, "a", "--io-concurrency", "1", loops=1, cpu_workers=0,
             secret=SECRET)
    b: Node | None = None
    try:
        await wait_for_nodes(coord, ["a"])
        c = await client(coord)
        async with c.link:
            markers = [tmp_path / f"m{i}" for i in range(3)]
            await c.submit(*(spec(f"s{i}", f"{HERE}:marked_sleep", str(m), 1.0, i)
                             for i, m in enumerate(markers)))
            first = await anyio.to_thread.run_sync(
                wait_until, lambda: [m for m in markers if m.exists()])
            a.signal(signal.SIGTERM)  # before b exists: a must hand the other two back
            b = Node(tmp_path, coord.address, "b", loops=1, cpu_workers=0, secret=SECRET)
            done = await c.wait([f"s{i}" for i in range(3)])
            assert succeeded(done) == {f"s{i}": i for i in range(3)}
            ran_on_a = {k for k, o in done.items() if o.node == "a"}
            assert ran_on_a == {f"s{markers.index(first[0])}"}  # the one running
            assert all(o.attempts == 1 for o in done.values())  # handed back: no new try
        assert await anyio.to_thread.run_sync(a.proc.wait, 15) == 0
        assert "2 attempts handed back" in a.text()
    finally:
        a.stop()
        if b is not None:
            b.stop()


async def test_a_job_still_running_when_the_drain_times_out_runs_again_elsewhere(
        tmp_path: Path, coord: Coordinator) -> None:
    """The node stopping is not the job's failure: cut short past --drain-timeout, the
    attempt is not answered, and the coordinator runs it on another node."""
    marker = tmp_path / "started"
    a = Node(tmp_path, coord.address, "a", "--drain-timeout", "0.3", loops=1,
             cpu_workers=0, secret=SECRET)
    b: Node | None = None
    try:
        await wait_for_nodes(coord, ["a"])
        c = await client(coord)
        async with c.link:
            await c.submit(spec("long", f"{HERE}:marked_sleep", str(marker), 2.0, "done"))
            await anyio.to_thread.run_sync(wait_until, marker.exists)
            a.signal(signal.SIGTERM)
            assert await anyio.to_thread.run_sync(a.proc.wait, 15) == 0
            b = Node(tmp_path, coord.address, "b", loops=1, cpu_workers=0, secret=SECRET)
            done = await c.wait(["long"])
            assert succeeded(done) == {"long": "done"}
            assert done["long"].node == "b"
    finally:
        a.stop()
        if b is not None:
            b.stop()


async def test_a_cancelled_job_stops_on_its_node(tmp_path: Path, coord: Coordinator) -> None:
    marker = tmp_path / "started"
    node = Node(tmp_path, coord.address, "c", loops=1, cpu_workers=0, secret=SECRET)
    with node:
        await wait_for_nodes(coord, ["c"])
        c = await client(coord)
        async with c.link:
            await c.submit(spec("long", f"{HERE}:marked_sleep", str(marker), 30, None))
            await anyio.to_thread.run_sync(wait_until, marker.exists)
            began = time.monotonic()
            await c.link.send(Cancel(("long",), (), "test"))
            done = await c.wait(["long"], timeout_s=10)
            assert done["long"].status == "cancelled"
            assert time.monotonic() - began < 5
            await c.submit(spec("next", f"{HERE}:secret_seen"))
            succeeded(await c.wait(["next"]))
        assert node.stop() == 0


def test_bad_flags_are_one_line_and_exit_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    from .harness import daemon_env

    for args in (["--loops", "0"], ["--io-concurrency", "0"], ["--cpu-workers", "-1"],
                 ["--drain-timeout", "-1"], ["--tls-cert", "x"]):
        done = subprocess.run(
            [sys.executable, "-m", "asyncjobs", "node", "--connect", "127.0.0.1:9", *args],
            capture_output=True, text=True, timeout=30, env=daemon_env(SECRET))
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.startswith("asyncjobs: error: ") and done.stderr.count("\n") == 1


async def test_results_msgpack_cannot_carry_fail_alone(
        tmp_path: Path, coord: Coordinator) -> None:
    node = Node(tmp_path, coord.address, "u", loops=1, cpu_workers=0, secret=SECRET)
    with node:
        await wait_for_nodes(coord, ["u"])
        c = await client(coord)
        async with c.link:
            jobs = [spec("set", f"{HERE}:unencodable"), spec("big", f"{HERE}:huge", 17 << 20),
                    *(spec(f"ok{i}", f"{HERE}:secret_seen") for i in range(5))]
            await c.submit(*jobs)
            done = await c.wait([j.job_id for j in jobs])
        assert done["set"].status == "failed" and done["set"].error is not None
        assert done["set"].error.type_name == "UnencodableValue"
        assert "cannot travel as msgpack" in done["set"].error.message
        assert done["set"].error.where == "u"
        assert done["big"].status == "failed" and done["big"].error is not None
        assert done["big"].error.type_name == "ResultTooLarge"
        assert all(done[f"ok{i}"].status == "succeeded" for i in range(5))
        assert node.stop() == 0


async def test_a_node_joins_a_tls_cluster(tmp_path: Path,
                                         tls_files: tuple[Path, Path, Path]) -> None:
    from asyncjobs.transport import tls_contexts

    cert, key, ca = tls_files
    tls = ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(ca)]
    coord = Coordinator(tmp_path, *tls, secret=SECRET)
    with coord:
        node = Node(tmp_path, coord.address, "tls", *tls, loops=1, cpu_workers=0,
                    secret=SECRET)
        with node:
            link = await connect(coord.host, coord.port, role=Role.CLIENT,
                                 secret=SECRET.encode(), tls=tls_contexts(cert, key, ca)[1])
            async with link:
                c = Client(link)
                await c.submit(spec("t", f"{HERE}:secret_seen"))
                succeeded(await c.wait(["t"]))
            assert node.stop() == 0


async def test_a_loop_stuck_in_a_job_is_killed_and_started_again(
        tmp_path: Path, coord: Coordinator) -> None:
    """The stuck threshold is shortened to 3 s in this one node process."""
    import subprocess
    import sys

    from .harness import REPO, daemon_env

    marker = tmp_path / "stuck"
    log = tmp_path / "node-stuck.log"
    code = ("import sys; import asyncjobs.daemons.node as n; n.LOOP_SILENT_S = 3.0; "
            "from asyncjobs.cli import main; sys.exit(main(sys.argv[1:]))")
    with open(log, "wb") as out:  # noqa: ASYNC230 - once, before the node starts
        proc = subprocess.Popen(  # noqa: ASYNC220 - it runs beside this loop
            [sys.executable, "-c", code, "node", "--connect", coord.address, "--name", "s",
             "--loops", "1", "--cpu-workers", "0"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=daemon_env(SECRET),
            cwd=REPO)
    try:
        await wait_for_nodes(coord, ["s"])
        c = await client(coord)
        async with c.link:
            await c.submit(spec("stuck", f"{HERE}:block_the_loop", str(marker), 30))
            await anyio.to_thread.run_sync(wait_until, marker.exists)
            first = int(marker.read_text().split()[0])
            await anyio.to_thread.run_sync(
                lambda: wait_until(lambda: "is stuck" in log.read_text(), 15))
            again = await anyio.to_thread.run_sync(lambda: wait_until(
                lambda: [p.pid for p in psutil.Process(proc.pid).children()
                         if p.pid != first], 15))
            assert not psutil.pid_exists(first) or psutil.Process(first).status() == "zombie"
            assert again
            await c.link.send(Cancel(("stuck",), (), "enough"))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code_ = await anyio.to_thread.run_sync(proc.wait, 15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    assert code_ == 0, log.read_text()


async def test_a_node_killed_with_sigkill_leaves_no_process(
        tmp_path: Path, coord: Coordinator) -> None:
    node = Node(tmp_path, coord.address, "o", loops=1, cpu_workers=1, secret=SECRET)
    with node:
        await wait_for_nodes(coord, ["o"])
        c = await client(coord)
        async with c.link:
            await c.submit(spec("cpu", "tests.jobs:square", 4, kind="cpu"))
            assert succeeded(await c.wait(["cpu"])) == {"cpu": 16}
        family = psutil.Process(node.pid).children(recursive=True)
        assert len(family) >= 2  # the loop and its cpu pool
        node.signal(signal.SIGKILL)
        gone, alive = await anyio.to_thread.run_sync(
            lambda: psutil.wait_procs(family, timeout=10))
        assert not alive, [p.cmdline() for p in alive]


@pytest.mark.parametrize("given", [b"", b"not json\n", b'{"host": "x"}\n'])
def test_a_loop_process_without_valid_settings_says_so_and_exits_2(given: bytes) -> None:
    import subprocess
    import sys

    from .harness import REPO, daemon_env

    done = subprocess.run([sys.executable, "-m", "asyncjobs.daemons._loop_main"],
                          input=given, capture_output=True, timeout=30,
                          env=daemon_env(), cwd=REPO)
    assert done.returncode == 2
    assert b"got no valid settings on stdin" in done.stderr
    assert b"Traceback" not in done.stderr
