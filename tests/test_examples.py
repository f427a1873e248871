"""The examples stay runnable: each is run here as the README tells users to run it."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest

from .conftest import PYTHON, REPO, python_env

pytestmark = pytest.mark.usefixtures("no_leftover_children")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, *args], capture_output=True, text=True, cwd=REPO,
                          env=python_env(), timeout=120)


def test_montecarlo_flow_prints_pi() -> None:
    r = run("-m", "asyncjobs", "run", "examples/montecarlo.yaml", "--param", "jobs=200")
    assert r.returncode == 0, r.stderr
    assert "201 succeeded" in r.stderr and "pi = 3.1" in r.stderr


def test_pipeline_flow() -> None:
    r = run("-m", "asyncjobs", "run", "examples/pipeline.yaml", "--param", "n=10")
    assert r.returncode == 0 and "4 succeeded" in r.stderr, r.stderr


def test_montecarlo_and_io_fanout_scripts() -> None:
    r = run("-m", "examples.montecarlo", "--jobs", "200", "--tries", "1000")
    assert r.returncode == 0 and "pi ~ 3" in r.stdout, r.stderr
    r = run("-m", "examples.io_fanout", "--requests", "200")
    assert r.returncode == 0 and "200 requests" in r.stdout, r.stderr


def test_http_flow_against_the_mock_api() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with subprocess.Popen(
        [PYTHON, "-m", "examples.mock_api", "--port", str(port), "--fail-every", "20"],
        cwd=REPO, env=python_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    ) as api:
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "the mock API did not start"
                    time.sleep(0.05)
            r = run("-m", "asyncjobs", "run", "examples/http_flow.yaml",
                    "--param", f"api=http://127.0.0.1:{port}", "--param", "count=300")
        finally:
            api.terminate()
            api.wait(timeout=10)
    assert r.returncode == 0, r.stderr
    assert "302 succeeded" in r.stderr
