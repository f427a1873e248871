"""Seeing a cluster: ``coordinator --http`` (``/api/nodes``, ``/api/flows``, the metrics'
histograms) against a real coordinator and node running a real flow; the ``STATUS=``
lines systemd shows, read from a datagram socket the test binds; and the shipped unit
files, checked by ``systemd-analyze verify``."""

from __future__ import annotations

import re
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import asyncjobs
from asyncjobs.daemons.node import STOP_GRACE_S
from asyncjobs.errors import ConnectionFailed
from asyncjobs.protocol import Role
from asyncjobs.transport import connect

from .harness import REPO, Coordinator, Node, wait_for_nodes

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.timeout(60)

SECRET = "ops-test-secret-41c2"
JOBS = "tests.cluster.client_jobs"
NAPS, NAP_S = 6, 0.05
#: a fan-out of io jobs (which may travel in io chunks), then one cpu job combining them
FLOW = f"""
    name: seen
    jobs:
      naps:
        foreach: {{range: {NAPS}}}
        call: {JOBS}:nap
        args: ["{{{{ item }}}}", {NAP_S}]
      total:
        needs: [naps]
        call: {JOBS}:total
        args: ["{{{{ results.naps }}}}"]
"""
UNITS = Path(REPO) / "examples" / "systemd"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Coordinator, str]]:
    """A coordinator with ``--http`` and a node ``n`` of one loop; its HTTP base URL."""
    coord = Coordinator(tmp_path, "--http", "127.0.0.1:0", secret=SECRET)
    with coord, Node(tmp_path, coord.address, "n", secret=SECRET):
        found = coord.wait_for_line(r"http on (\S+):(\d+)")
        anyio.run(lambda: wait_for_nodes(coord, ["n"]))
        yield coord, f"http://{found.group(1)}:{found.group(2)}"


async def _get(base: str, path: str) -> Any:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(f"{base}{path}") as resp:
        assert resp.status == 200, path
        return await (resp.text() if path == "/metrics" else resp.json())


def _families(text: str) -> dict[str, Any]:
    from prometheus_client.parser import text_string_to_metric_families

    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(families: dict[str, Any], family: str, sample: str) -> float:
    found = [s.value for s in families[family].samples if s.name == sample]
    assert len(found) == 1, (family, sample, families[family].samples)
    return float(found[0])


def _histogram(families: dict[str, Any], name: str) -> tuple[float, float, list[float]]:
    """count, sum, and the cumulative bucket counts in order (+Inf last)."""
    samples = families[name].samples
    buckets = [s for s in samples if s.name == f"{name}_bucket"]
    assert buckets[-1].labels["le"] == "+Inf"
    return (_value(families, name, f"{name}_count"), _value(families, name, f"{name}_sum"),
            [float(s.value) for s in buckets])


async def test_the_api_lists_nodes_and_flows_and_the_histograms_count_the_flows_jobs(
        served: tuple[Coordinator, str], tmp_path: Path) -> None:
    coord, base = served
    path = tmp_path / "seen.yaml"
    path.write_text(textwrap.dedent(FLOW))
    async with asyncjobs.connect(coord.address, secret=SECRET) as cluster:
        report = await cluster.run_flow(path)
    assert report.ok and report.results["total"] == sum(range(NAPS))
    ran = NAPS + 1

    nodes = await _get(base, "/api/nodes")
    assert [(n["name"], n["alive"], n["loops"]) for n in nodes] == [("n", True, 1)]
    assert set(nodes[0]) == {"name", "alive", "loops", "slots_used", "slots_total",
                             "last_heartbeat_s"}
    assert nodes[0]["slots_total"] > 0 and nodes[0]["last_heartbeat_s"] < 5
    # the flow's last FlowStatus may reach the coordinator after its last result
    with anyio.fail_after(10):
        for _ in range(200):
            flows = await _get(base, "/api/flows")
            if flows and flows[-1]["state"] != "running":
                break
            await anyio.sleep(0.05)
    assert len(flows) == 1 and set(flows[0]) == {"id", "file", "state", "done", "total"}
    assert flows[0]["file"].endswith("seen.yaml")
    assert (flows[0]["state"], flows[0]["done"], flows[0]["total"]) == ("succeeded", ran, ran)
    state = await _get(base, "/state")  # kept beside /api: everything, for post-mortems
    assert state["flows"] == flows
    jobs = state["counts"]["submitted"]  # io chunks carry several naps each
    assert 2 <= jobs <= ran

    metrics = _families(await _get(base, "/metrics"))
    for name in ("asyncjobs_dispatch_latency_seconds", "asyncjobs_job_duration_seconds"):
        count, total, buckets = _histogram(metrics, name)
        assert count == jobs and buckets[-1] == jobs, name
        assert buckets == sorted(buckets), name  # cumulative
        assert total >= 0, name
    _, naps_s, _ = _histogram(metrics, "asyncjobs_job_duration_seconds")
    assert naps_s >= (jobs - 1) * NAP_S  # each nap job lasted that long at least
    assert _value(metrics, "asyncjobs_jobs_submitted", "asyncjobs_jobs_submitted_total") == jobs
    assert _value(metrics, "asyncjobs_jobs_queued", "asyncjobs_jobs_queued") == 0
    assert _value(metrics, "asyncjobs_jobs_active", "asyncjobs_jobs_active") == 0
    assert _value(metrics, "asyncjobs_auth_failures", "asyncjobs_auth_failures_total") == 0


async def test_auth_failures_count_peers_without_the_secret(
        served: tuple[Coordinator, str]) -> None:
    coord, base = served
    with pytest.raises(ConnectionFailed):
        await connect(coord.host, coord.port, role=Role.CLIENT, secret=b"not the secret")
    with anyio.fail_after(10):  # the coordinator counts it as it drops the stream
        for _ in range(200):
            metrics = _families(await _get(base, "/metrics"))
            if _value(metrics, "asyncjobs_handshakes_refused",
                      "asyncjobs_handshakes_refused_total") >= 1:
                break
            await anyio.sleep(0.05)
    assert _value(metrics, "asyncjobs_auth_failures", "asyncjobs_auth_failures_total") == 1


async def test_jobs_queued_counts_jobs_no_node_has(tmp_path: Path) -> None:
    from asyncjobs.protocol.messages import JobSpec, Submit

    coord = Coordinator(tmp_path, "--http", "127.0.0.1:0")
    with coord:
        found = coord.wait_for_line(r"http on (\S+):(\d+)")
        base = f"http://{found.group(1)}:{found.group(2)}"
        link = await connect(coord.host, coord.port, role=Role.CLIENT, secret=b"")
        async with link:
            await link.send(Submit(tuple(JobSpec(f"j{i}", f"{JOBS}:nap", (i, 0))
                                         for i in range(3))))
            with anyio.fail_after(10):
                for _ in range(200):
                    metrics = _families(await _get(base, "/metrics"))
                    if _value(metrics, "asyncjobs_jobs_queued", "asyncjobs_jobs_queued"):
                        break
                    await anyio.sleep(0.05)
            assert _value(metrics, "asyncjobs_jobs_queued", "asyncjobs_jobs_queued") == 3
            count, _, _ = _histogram(metrics, "asyncjobs_dispatch_latency_seconds")
            assert count == 0  # none was sent to a node


# -- systemd: STATUS= ----------------------------------------------------------------------


def _status_lines(sock: socket.socket, pattern: str, timeout_s: float = 15.0) -> list[str]:
    """Notifications until a ``STATUS=`` line matches ``pattern`` (the lines come when
    they change, every 2 s at most); all the ``STATUS=`` lines seen."""
    seen: list[str] = []
    end = time.monotonic() + timeout_s
    for _ in range(1000):
        sock.settimeout(max(0.01, end - time.monotonic()))
        try:
            got = sock.recv(1000).decode()
        except TimeoutError:
            break
        if got.startswith("STATUS="):
            seen.append(got.removeprefix("STATUS="))
            if re.fullmatch(pattern, seen[-1]):
                return seen
    raise AssertionError(f"no STATUS= matching {pattern!r} in {timeout_s} s: {seen}")


def test_systemctl_status_shows_what_the_coordinator_and_node_do(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as for_coord, \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as for_node:
        for_coord.bind(str(tmp_path / "coord.sock"))
        for_node.bind(str(tmp_path / "node.sock"))
        coord = Coordinator(tmp_path, env={"NOTIFY_SOCKET": str(tmp_path / "coord.sock")})
        with coord:
            addr = re.escape(coord.address)
            first = _status_lines(for_coord, rf"serving on {addr}; 0 nodes, 0 loops; "
                                             rf"0 jobs active")
            assert len(first) == 1
            node = Node(tmp_path, coord.address, "n", loops=2, cpu_workers=0,
                        env={"NOTIFY_SOCKET": str(tmp_path / "node.sock")})
            with node:
                _status_lines(for_node, rf"connected to {addr}; 2 loops, 2 registered")
                _status_lines(for_coord, rf"serving on {addr}; 1 node, 2 loops; "
                                         rf"0 jobs active")
                assert node.stop() == 0
            assert coord.stop() == 0


def test_without_notify_socket_nothing_is_said(tmp_path: Path) -> None:
    from asyncjobs.daemons.systemd import Notifier

    calls: list[str] = []

    def describe() -> str:
        calls.append("called")
        return "x"

    anyio.run(Notifier().report_status, describe)  # returns at once
    assert calls == []


# -- systemd: the unit files -----------------------------------------------------------


def _directives(text: str) -> dict[str, list[str]]:
    """``Section.Key`` -> its values, in order (a unit file may repeat a key)."""
    out: dict[str, list[str]] = {}
    section = ""
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def _units() -> list[Path]:
    return sorted(UNITS.glob("*.service"))


def test_the_shipped_units_are_hardened_notify_services() -> None:
    from asyncjobs.cli import build_parser

    assert [u.name for u in _units()] == ["asyncjobs-coordinator.service",
                                          "asyncjobs-node.service"]
    for unit in _units():
        d = _directives(unit.read_text())
        one = {k: v[-1] for k, v in d.items()}
        assert one["Service.Type"] == "notify", unit
        assert one["Service.Restart"] == "on-failure", unit
        assert float(one["Service.WatchdogSec"]) > 0, unit
        assert one["Service.KillMode"] == "mixed", unit
        assert one["Service.NoNewPrivileges"] == "yes", unit
        assert one["Service.ProtectSystem"] == "strict", unit
        assert one["Service.PrivateTmp"] == "yes", unit
        assert one.get("Service.StateDirectory"), unit
        assert one.get("Service.DynamicUser") == "yes" or one.get("Service.User"), unit
        assert one["Service.LoadCredential"].startswith("secret:"), unit
        argv = shlex.split(one["Service.ExecStart"])
        assert argv[0].startswith("/") and argv[0].endswith("/asyncjobs"), unit
        assert argv[argv.index("--secret-file") + 1] == "%d/secret", unit
        assert "ASYNCJOBS_SECRET" not in unit.read_text(), unit
        args = build_parser().parse_args(argv[1:])  # flags the command really has
        if args.command == "node":
            assert float(one["Service.TimeoutStopSec"]) > args.drain_timeout + STOP_GRACE_S
        else:
            # the state goes to $STATE_DIRECTORY/coordinator.db, --state's default there
            assert args.state is None or args.state.startswith("%S/"), unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed here")
def test_systemd_analyze_verify_accepts_the_shipped_units(tmp_path: Path) -> None:
    """``verify`` checks ExecStart's program exists: the copies run this virtualenv's
    ``asyncjobs`` (the shipped units name /opt/asyncjobs/venv/bin/asyncjobs). It exits 0
    on an unknown key or a bad value, only saying so: any line about a unit fails."""
    exe = Path(sys.executable).parent / "asyncjobs"
    if not exe.exists():
        pytest.skip(f"no asyncjobs script beside {sys.executable}")
    copies = []
    for unit in _units():
        text = unit.read_text()
        shipped = shlex.split(_directives(text)["Service.ExecStart"][-1])[0]
        name = unit.name.replace("@.service", "@a.service")  # a template needs an instance
        (tmp_path / name).write_text(text.replace(shipped, str(exe)))
        copies.append(name)
    done = subprocess.run(["systemd-analyze", "verify", *(f"./{c}" for c in copies)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    said = [line for line in (done.stdout + done.stderr).splitlines()
            if any(c in line for c in copies)]
    assert done.returncode == 0 and not said, done.stdout + done.stderr
