"""`asyncjobs run` as a user runs it: a real subprocess, its exit code and output."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from typing import TYPE_CHECKING

import psutil
import pytest

from .conftest import PYTHON, python_env, write_flow
from .procs import wait_until_gone_sync

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.usefixtures("no_leftover_children")


def asyncjobs(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "asyncjobs", *args], capture_output=True, text=True,
                          env=python_env(), timeout=timeout)


def test_success_exits_0_with_summary_and_report(tmp_path: Path) -> None:
    path = write_flow(tmp_path, """
        name: sums
        params: {n: 3}
        jobs:
          setup: {shell: "echo ready"}
          square:
            needs: [setup]
            foreach: {range: "{{ params.n }}"}
            call: tests.jobs:square
            args: ["{{ item }}"]
    """)
    report = tmp_path / "out" / "report.json"
    r = asyncjobs("run", str(path), "--param", "n=4", "--report", str(report), "--quiet")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # --quiet and all is well: nothing to say
    data = json.loads(report.read_text())
    # in the order jobs ended: setup first, its items after it, in any order
    ids = [j["id"] for j in data["jobs"]]
    assert ids[0] == "setup" and sorted(ids[1:]) == [f"square[{i}]" for i in range(4)]
    for job in data["jobs"]:
        assert job["status"] == "succeeded" and job["attempts"] == 1 and job["node"] == "local"
        assert job["start"] <= job["end"] and job["error"] is None
    r = asyncjobs("run", str(path))
    assert r.returncode == 0 and "sums: ok — 4 succeeded" in r.stderr


def test_failure_exits_1_and_names_it(tmp_path: Path) -> None:
    path = write_flow(tmp_path, """
        jobs:
          broken: {shell: "echo 'disk full' >&2; exit 4"}
          after: {needs: [broken], shell: "true"}
          other: {shell: "true"}
    """)
    r = asyncjobs("run", str(path))
    assert r.returncode == 1
    assert "1 succeeded, 1 failed, 1 skipped" in r.stderr
    assert "failed broken: ShellFailed: exit code 4: disk full" in r.stderr


def test_bad_input_exits_2_before_anything_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = write_flow(tmp_path, f"""
        jobs:
          a: {{shell: "touch {marker}"}}
          b:
            shell: "true"
            neds: [a]
    """)
    r = asyncjobs("run", str(path))
    assert r.returncode == 2 and not marker.exists()
    assert f"{path}:5 (jobs.b.neds): unknown key 'neds'" in r.stderr
    assert "did you mean 'needs'?" in r.stderr
    assert asyncjobs("run", str(tmp_path / "missing.yaml")).returncode == 2
    assert asyncjobs("run", str(path), "--param", "novalue").returncode == 2
    assert asyncjobs("run", str(path), "--loops", "0").returncode == 2
    path.write_text("jobs:\n  a: {shell: 'true', foreach: {lines: missing.txt}}\n")
    r = asyncjobs("run", str(path))
    assert r.returncode == 2 and "cannot read foreach lines file" in r.stderr, r.stderr


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = write_flow(tmp_path, f"""
        limits: {{api: 5}}
        jobs:
          a: {{shell: "touch {marker}"}}
          b: {{needs: [a], foreach: {{range: 7}}, limit: api, shell: "touch {marker}"}}
    """)
    r = asyncjobs("run", str(path), "--dry-run")
    assert r.returncode == 0 and not marker.exists()
    assert "2 jobs, 8 runs" in r.stdout and "x7" in r.stdout and "api: concurrency 5" in r.stdout


def test_ctrl_c_cancels_kills_and_still_summarises(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    path = write_flow(tmp_path, f"""
        jobs:
          quick: {{shell: "true"}}
          slow: {{needs: [quick], shell: "echo $$ > {pid_file}; sleep 60"}}
    """)
    with subprocess.Popen([PYTHON, "-m", "asyncjobs", "run", str(path)], env=python_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            deadline = time.monotonic() + 20
            while not (pid_file.exists() and pid_file.read_text().strip()):
                assert time.monotonic() < deadline, "the slow job never started"
                time.sleep(0.02)
            shell_pid = int(pid_file.read_text())
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "1 succeeded, 1 cancelled" in stderr
    wait_until_gone_sync([shell_pid], deadline_s=2)


def test_a_second_run_of_the_same_file_exits_2_naming_the_first(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    path = write_flow(tmp_path, f"""
        jobs:
          wait: {{shell: "touch {marker} && sleep 30"}}
    """)
    first = subprocess.Popen([PYTHON, "-m", "asyncjobs", "run", str(path), "--quiet"],
                             env=python_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            if marker.exists():
                break
            time.sleep(0.02)
        assert marker.exists()
        r = asyncjobs("run", str(path), "--quiet")
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip() == (f"asyncjobs: error: another run of {path} is in progress "
                                    f"(pid {first.pid}); wait for it or stop it")
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(10)


def test_a_state_folder_that_cannot_be_made_exits_2(tmp_path: Path) -> None:
    path = write_flow(tmp_path, "jobs:\n  a: {shell: 'true'}\n")
    (tmp_path / ".asyncjobs").write_text("a file where the state folder should be")
    r = asyncjobs("run", str(path), "--quiet")
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("asyncjobs: error: cannot open the run state ")
    assert "Traceback" not in r.stderr


def test_a_thread_job_past_its_timeout_does_not_hold_the_exit(tmp_path: Path) -> None:
    path = write_flow(tmp_path, """
        jobs:
          stuck: {call: tests.flow.calls:nap, args: [300], kind: thread, timeout: 0.2}
    """)
    started = time.monotonic()
    r = asyncjobs("run", str(path), timeout=60)
    assert r.returncode == 1, r.stderr
    assert time.monotonic() - started < 30
    assert "failed stuck: TimeoutError: attempt ran past its timeout of 0.2s" in r.stderr
    assert r.stderr.rstrip().endswith("asyncjobs: a thread job was still running (Python "
                                      "cannot stop a thread); exiting without waiting for it")


def test_max_file_size_refuses_a_larger_file_and_can_raise_the_limit(tmp_path: Path) -> None:
    padding = "# " + "x" * 2000 + "\n"
    path = write_flow(tmp_path, padding + "jobs:\n  a: {shell: 'true'}\n")
    r = asyncjobs("run", str(path), "--quiet", "--max-file-size", "1KiB")
    assert r.returncode == 2
    assert "over the limit of 1,024 bytes" in r.stderr and "--max-file-size" in r.stderr
    assert "Traceback" not in r.stderr
    assert asyncjobs("run", str(path), "--quiet", "--max-file-size", "1MiB").returncode == 0
    bad = asyncjobs("run", str(path), "--max-file-size", "lots")
    assert bad.returncode == 2 and "--max-file-size: expected a size" in bad.stderr


def test_bad_input_leaves_no_early_template_behind(tmp_path: Path) -> None:
    # a flow naming a call starts the cpu pool's template before the file is validated;
    # bad input must end it too
    mark = f"asyncjobs-test-{os.getpid()}-{time.monotonic_ns()}"
    path = write_flow(tmp_path, "jobs:\n  a: {call: 'no_such_module_xyz:f'}\n")
    env = {**python_env(), "ASYNCJOBS_TEST_MARK": mark}
    r = subprocess.run([PYTHON, "-m", "asyncjobs", "run", str(path)], capture_output=True,
                       text=True, env=env, timeout=60)
    assert r.returncode == 2 and "no_such_module_xyz" in r.stderr
    left = []
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            if proc.environ().get("ASYNCJOBS_TEST_MARK") == mark:
                left.append(proc.pid)
    wait_until_gone_sync(left, deadline_s=5.0)


def test_a_flows_cpu_calls_run_in_workers_forked_with_their_module(tmp_path: Path) -> None:
    # the command names the calls' modules to the pool's template before the first
    # workers fork: no worker imports them at its first job
    path = write_flow(tmp_path, """
        name: preload
        jobs:
          forked:
            foreach: {range: 8}
            call: tests.executors.preloaded:imported_before_fork
            args: ["{{ item }}"]
          all:
            call: builtins:all
            args: ["{{ results.forked }}"]
    """)
    r = asyncjobs("run", str(path), "--cpu-workers", "2")
    assert r.returncode == 0, r.stderr
    assert "all = True" in r.stderr, r.stderr
