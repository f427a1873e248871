"""Shell jobs through real /bin/sh processes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

import asyncjobs
from asyncjobs import JobFailed, JobTimeout, Runner
from asyncjobs.executors.shell import TAIL_BYTES, run_shell

from ..procs import wait_until_gone

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.usefixtures("no_leftover_children")


async def test_result_has_exit_code_and_output_tails(tmp_path: Path) -> None:
    out = await run_shell("echo hello; echo oops >&2; pwd", cwd=str(tmp_path),
                          env={"PATH": "/usr/bin:/bin"})
    assert out == {"exit_code": 0, "stdout": f"hello\n{tmp_path}\n", "stderr": "oops\n"}


async def test_output_keeps_only_the_tail() -> None:
    out = await run_shell(f"head -c {3 * TAIL_BYTES} /dev/zero | tr '\\0' a; echo END")
    assert len(out["stdout"]) == TAIL_BYTES and out["stdout"].endswith("aEND\n")


async def test_non_zero_exit_fails_with_last_stderr_line() -> None:
    async with Runner() as runner:
        with pytest.raises(JobFailed) as info:
            await runner.submit(run_shell, "echo first >&2; echo 'disk full' >&2; exit 3")
    assert info.value.type_name == "ShellFailed"
    assert info.value.message == "exit code 3: disk full"


async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"

    @asyncjobs.job(timeout=0.5)
    async def step() -> object:
        return await run_shell(f"sleep 30 & sleep 30 & echo $$ $! > {pids_file}; wait")

    async with Runner() as runner:
        with pytest.raises(JobTimeout):
            await runner.submit(step)
    pids = [int(p) for p in pids_file.read_text().split()]
    assert len(pids) == 2
    await wait_until_gone(pids, deadline_s=2)


async def test_background_children_die_with_a_finished_step(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    out = await run_shell(f"sleep 30 > /dev/null 2>&1 & echo $! > {pid_file}; echo done")
    assert out["stdout"] == "done\n"
    pid = int(pid_file.read_text())
    await wait_until_gone([pid], deadline_s=2)
