"""A real ``asyncjobs coordinator`` process: how it starts, stops, and stands bad peers."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import anyio
import psutil
import pytest

from asyncjobs.errors import HandshakeFailed
from asyncjobs.protocol import Role
from asyncjobs.transport import connect

from .harness import Coordinator, Node, daemon_env, status, wait_for_nodes

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(60)


async def test_it_serves_status_with_no_nodes_and_stops_on_sigterm(tmp_path: Path) -> None:
    coord = Coordinator(tmp_path)
    try:
        reply = await status(coord)
        assert reply.nodes == () and reply.flows == ()
    finally:
        assert coord.stop() == 0
    assert "stopped" in coord.text()


def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "asyncjobs", *args], capture_output=True,
                          text=True, timeout=30, env=env or daemon_env())


def test_a_public_address_without_a_secret_is_refused() -> None:
    done = _run_cli("coordinator", "--listen", "0.0.0.0:0")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "secret" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_secret_file_others_may_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("s3cret\n")
    path.chmod(0o644)
    done = _run_cli("coordinator", "--listen", "127.0.0.1:0", "--secret-file", str(path))
    assert done.returncode == 2 and "chmod 600" in done.stderr
    assert "s3cret" not in done.stderr


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _run_cli("coordinator", "--listen", f"127.0.0.1:{port}")
    assert done.returncode == 2 and f"127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


async def test_a_peer_with_the_wrong_secret_is_refused_and_others_still_served(
        tmp_path: Path) -> None:
    with Coordinator(tmp_path, secret="right") as coord:
        for role in (Role.NODE, Role.CLIENT):
            for secret in (b"wrong", b""):  # a wrong secret, and none
                with pytest.raises(HandshakeFailed):
                    await connect(coord.host, coord.port, role=role, secret=secret)
        assert (await status(coord)).nodes == ()


def _rss_mib(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


async def test_hostile_sockets_are_dropped_and_a_real_peer_still_gets_in(
        tmp_path: Path) -> None:
    """Garbage, a length prefix of 2**32-1, half a frame then silence, and 500 idle
    sockets: each is dropped by its deadline, memory stays bounded, a client gets in."""
    with Coordinator(tmp_path, secret="s") as coord:
        await status(coord)
        rss_before = _rss_mib(coord.pid)
        addr = (coord.host, coord.port)
        bad = []
        for payload in (os.urandom(64), struct.pack(">I", 2**32 - 1) + b"x" * 100,
                        struct.pack(">I", 43) + b"\x89AJB\x00"):
            s = socket.create_connection(addr)
            s.sendall(payload)
            bad.append(s)
        idle = [socket.create_connection(addr) for _ in range(500)]
        try:
            t0 = time.monotonic()
            await status(coord, secret="s")
            assert time.monotonic() - t0 < 1.0
            # a real node, started now, joins in about its own start-up time
            with Node(tmp_path, coord.address, "n", secret="s", cpu_workers=0):
                await wait_for_nodes(coord, ["n"], timeout_s=5)
            # every bad socket is closed by the coordinator within its 5 s deadline
            for s in bad:
                s.settimeout(7.0)
                try:
                    while s.recv(4096):
                        pass
                except ConnectionResetError:
                    pass
            assert _rss_mib(coord.pid) - rss_before < 50
        finally:
            for s in bad + idle:
                s.close()
        await anyio.sleep(0.1)
        assert [(n.name, n.alive) for n in (await status(coord)).nodes] == [("n", False)]


async def test_http_serves_health_metrics_and_state(tmp_path: Path) -> None:
    import aiohttp

    from asyncjobs.protocol.messages import JobSpec, Outcome, Submit

    with Coordinator(tmp_path, "--http", "127.0.0.1:0") as coord:
        found = coord.wait_for_line(r"http on (\S+):(\d+)")
        base = f"http://{found.group(1)}:{found.group(2)}"
        link = await connect(coord.host, coord.port, role=Role.CLIENT, secret=b"")
        async with link:
            await link.send(Submit((JobSpec("a", "m:f", limits=("nope:x",)),)))
            with anyio.fail_after(5):
                async for msg in link:
                    if isinstance(msg, Outcome):
                        break
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/healthz") as resp:
                assert resp.status == 200 and (await resp.json()) == {"ok": True}
            async with http.get(f"{base}/metrics") as resp:
                text = await resp.text()
            async with http.get(f"{base}/state") as resp:
                state = await resp.json()
    assert "asyncjobs_jobs_refused_total 1.0" in text
    assert "asyncjobs_nodes_alive 0.0" in text
    assert state["counts"]["refused"] == 1 and state["nodes"] == []


def test_under_systemd_it_says_ready_feeds_the_watchdog_and_says_stopping(
        tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sd:
        sd.bind(path)
        sd.settimeout(10)
        coord = Coordinator(tmp_path, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
        try:
            got = [sd.recv(100).decode() for _ in range(3)]
            assert "READY=1" in got and "WATCHDOG=1" in got
        finally:
            assert coord.stop() == 0
        rest = []
        sd.settimeout(0.5)
        try:
            while True:
                rest.append(sd.recv(100).decode())
        except TimeoutError:
            pass
    assert "STOPPING=1" in rest


def _read_until_closed(sock: socket.socket, timeout_s: float = 7.0) -> bytes:
    sock.settimeout(timeout_s)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def test_a_reflected_or_replayed_handshake_gets_nowhere(tmp_path: Path) -> None:
    from asyncjobs.protocol import NEED_DATA, Connection

    with Coordinator(tmp_path, secret="s") as coord:
        addr = (coord.host, coord.port)
        # reflection: the coordinator's own hello, sent back to it
        with socket.create_connection(addr) as s:
            s.settimeout(5)
            hello = s.recv(47)
            s.sendall(hello)
            assert len(_read_until_closed(s)) < 200  # closed, and nothing sealed sent
        # replay: a real client's handshake bytes, recorded, then sent on a new stream
        conn = Connection(role=Role.CLIENT, secret=b"s")
        with socket.create_connection(addr) as s:
            s.settimeout(5)
            sent = conn.data_to_send()
            s.sendall(sent)
            got = b""
            while conn.next_event() is NEED_DATA and len(got) < 1000:
                chunk = s.recv(4096)
                got += chunk
                conn.receive_data(chunk)
            proof = conn.data_to_send()
            s.sendall(proof)
            recorded = sent + proof
        with socket.create_connection(addr) as s:
            s.sendall(recorded)
            _read_until_closed(s)  # the coordinator's new nonce makes the old proof fail
        assert coord.proc.poll() is None
        log = coord.text()
        assert "a reflected handshake" in log and "authentication failed" in log
