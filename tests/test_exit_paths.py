"""No worker outlives its runner, however the runner's process ends."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

from .conftest import PYTHON, python_env
from .procs import wait_until_gone_sync

if TYPE_CHECKING:
    from pathlib import Path

SCRIPT = """
import asyncio, os, sys
import asyncjobs
from tests import jobs
from tests.conftest import cpu_pids

async def main():
    async with asyncjobs.Runner(cpu_workers=2) as runner:
        marks = [f"{sys.argv[2]}.{i}" for i in range(2)]
        for m in marks:
            runner.submit(jobs.hang, m)
        while not all(os.path.exists(m) for m in marks):
            await asyncio.sleep(0.01)
        print(" ".join(map(str, cpu_pids(runner))), flush=True)
        if sys.argv[1] == "raise":
            raise KeyboardInterrupt
        await asyncio.sleep(60)

if __name__ == "__main__":
    asyncjobs.run(main)
"""


@pytest.mark.parametrize("how", ["raise", "sigint", "sigterm", "sigkill"])
def test_workers_die_with_their_runner(tmp_path: Path, how: str) -> None:
    script = tmp_path / "app.py"
    script.write_text(SCRIPT)
    sig = {"sigint": signal.SIGINT, "sigterm": signal.SIGTERM, "sigkill": signal.SIGKILL}
    with subprocess.Popen(
        [PYTHON, str(script), how, str(tmp_path / "mark")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=python_env(), text=True,
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stderr is not None
            line = proc.stdout.readline()
            workers = [int(p) for p in line.split()]
            assert len(workers) == 2, proc.stderr.read()
            if how in sig:
                proc.send_signal(sig[how])
            proc.wait(timeout=15)
            stderr = proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if how in ("raise", "sigint"):
        assert proc.returncode in (130, -signal.SIGINT)
        assert "KeyboardInterrupt" in stderr
    wait_until_gone_sync(workers, deadline_s=2.0)


@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
def test_shell_jobs_die_with_a_killed_run(tmp_path: Path, how: str) -> None:
    # a plain shell step and one that leaves a background child: every process of both
    # groups must end when `asyncjobs run` is killed, even by SIGKILL
    pids = tmp_path / "pids"
    pids.mkdir()
    flow = tmp_path / "jobs.yaml"
    flow.write_text(f"""
jobs:
  plain: {{shell: "echo $$ > {pids}/plain; exec sleep 300"}}
  nested:
    shell: "echo $$ > {pids}/nested; sleep 300 & echo $! > {pids}/child; wait"
""")
    started: list[int] = []
    with subprocess.Popen([PYTHON, "-m", "asyncjobs", "run", str(flow), "--quiet"],
                          env=python_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL) as proc:
        try:
            for _ in range(500):
                if all((pids / n).exists() and (pids / n).read_text().strip()
                       for n in ("plain", "nested", "child")):
                    break
                time.sleep(0.02)
            started = [int((pids / n).read_text()) for n in ("plain", "nested", "child")]
            proc.send_signal(signal.SIGKILL if how == "sigkill" else signal.SIGTERM)
            proc.wait(timeout=15)
            wait_until_gone_sync(started, deadline_s=10.0)  # a loaded machine is slow
        finally:
            for pid in started:  # only what this test started, by PID
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
