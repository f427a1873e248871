"""Shell jobs: ``/bin/sh -c`` in a process group of its own, killed as a group.

The shell runs in a new session, so its children share its process group. Whatever ends
the attempt (exit, timeout, cancellation), the whole group is SIGKILLed before the
attempt reports, so no background child of a shell step outlives it. And when the
runner itself dies (even ``kill -9``), a ``ShellGuard`` process kills the groups still
running (``_shellguard_main.py`` says why and how).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

GUARD_SCRIPT = str(Path(__file__).resolve().with_name("_shellguard_main.py"))

#: bytes of stdout and of stderr kept per attempt (the tail: the end is what explains)
TAIL_BYTES = 64 * 1024
REAP_TIMEOUT_S = 5.0
#: most characters of the last stderr line in a failure's message
LAST_LINE_CHARS = 1000


class ShellFailed(Exception):
    """The command exited non-zero. Carries the same fields as a shell job's result."""

    def __init__(self, command: str, exit_code: int, stdout: str, stderr: str) -> None:
        last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        if len(last) > LAST_LINE_CHARS:  # the whole tail is in .stderr; this is a headline
            last = last[:LAST_LINE_CHARS] + "…"
        super().__init__(f"exit code {exit_code}" + (f": {last}" if last else ""))
        self.command = command
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr


async def _tail(stream: asyncio.StreamReader | None) -> str:
    buf = bytearray()
    if stream is not None:
        while chunk := await stream.read(65536):
            buf += chunk
            if len(buf) > TAIL_BYTES:
                del buf[: len(buf) - TAIL_BYTES]
    return buf.decode("utf-8", "replace")


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


#: a guarded shell job's first words: wait for the runner's go on stdin (sent once the
#: guard knows the job's group), then become the user's command (``exec``: same pid, so
#: same group). A runner killed before its go leaves the read at end of file: the job
#: exits without running anything. (The guard's own pipe is never handed to a job: a
#: child keeps the descriptors it is given as stdio, and would hold the pipe open.)
GATE = 'read -r _ || exit 125; exec 0</dev/null; exec /bin/sh -c "$1"'


class ShellGuard:
    """The guard process of one run's shell jobs, started with the first of them.

    ``aclose`` ends it (nothing is left to kill by then); if this process dies first,
    the guard sees its stdin end and kills the groups still listed.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    def watch(self, pgid: int) -> None:
        self._send(f"+{pgid}\n")

    def forget(self, pgid: int) -> None:
        self._send(f"-{pgid}\n")

    def _send(self, line: str) -> None:
        with contextlib.suppress(BrokenPipeError):
            pipe = self._pipe()
            pipe.write(line.encode())
            pipe.flush()

    def _pipe(self) -> IO[bytes]:
        if self._proc is None:
            # -I -S: isolated, no site packages to import: a 10 ms start, once per run
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", GUARD_SCRIPT], stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, start_new_session=True, close_fds=True,
            )
        assert self._proc.stdin is not None
        return self._proc.stdin

    async def aclose(self) -> None:
        """End the guard and wait for it (bounded)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        for _ in range(int(REAP_TIMEOUT_S / 0.01)):
            if proc.poll() is not None:
                return
            await asyncio.sleep(0.01)
        proc.kill()
        proc.wait()


async def run_shell(
    command: str, *, env: Mapping[str, str] | None = None, cwd: str | None = None,
    guard: ShellGuard | None = None,
) -> dict[str, Any]:
    """Run ``command`` with ``/bin/sh -c``.

    :param guard: kills the command's process group if this process dies first
    :returns: ``{"exit_code": 0, "stdout": tail, "stderr": tail}``
    :raises ShellFailed: on a non-zero exit
    """
    if guard is None:
        argv, stdin = ["/bin/sh", "-c", command], subprocess.DEVNULL
    else:
        argv, stdin = ["/bin/sh", "-c", GATE, "asyncjobs-shell", command], subprocess.PIPE
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True, env=env, cwd=cwd,
    )
    if guard is not None:
        guard.watch(proc.pid)  # its group is its pid: it leads a session of its own
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.close()
    readers = [asyncio.ensure_future(_tail(proc.stdout)), asyncio.ensure_future(_tail(proc.stderr))]
    try:
        exit_code = await proc.wait()
    finally:
        # the group outlives the shell when it left children behind; kill it either way
        _kill_group(proc.pid)
        if guard is not None:
            guard.forget(proc.pid)
        if proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.shield(asyncio.wait_for(proc.wait(), REAP_TIMEOUT_S))
        done, pending = await asyncio.shield(asyncio.wait(readers, timeout=REAP_TIMEOUT_S))
        for reader in pending:
            reader.cancel()
    stdout, stderr = (r.result() if r in done else "" for r in readers)
    if exit_code != 0:
        raise ShellFailed(command, exit_code, stdout, stderr)
    return {"exit_code": exit_code, "stdout": stdout, "stderr": stderr}
