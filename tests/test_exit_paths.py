"""No worker outlives its runner, however the runner's process ends."""

from __future__ import annotations

import signal
import subprocess
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
