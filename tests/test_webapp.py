"""examples/webapp under a real uvicorn: right answers next to a crashing job, a deadline
that cancels its job, and no process left behind after SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from typing import TYPE_CHECKING, Any

import aiohttp
import psutil
import pytest
from examples.webapp import jobs

from .conftest import PYTHON, REPO, python_env
from .procs import gone, wait_until_gone

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.usefixtures("no_leftover_children")

TRIES = 5_000
REQUESTS = 40
CRASH_AT = 17
CONCURRENCY = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def loop_name() -> str:
    """The test's own loop: the app runs on the same kind (uvicorn --loop)."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"


def tree(pid: int) -> list[int]:
    """``pid`` and every process descended from it, alive now."""
    root = psutil.Process(pid)
    return [pid, *(p.pid for p in root.children(recursive=True))]


def cpu_workers(pid: int) -> set[int]:
    """The asyncjobs cpu worker processes below ``pid``: forked by a worker template (so
    they show its command line, below it), or fresh interpreters of their own."""
    found = set()
    for p in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            line = " ".join(p.cmdline())
            parent = p.parent()
            below_template = parent is not None and "_template_main" in " ".join(
                parent.cmdline())
            if "_worker_main" in line or ("_template_main" in line and below_template):
                found.add(p.pid)
    return found


async def wait_until_serving(session: aiohttp.ClientSession, base: str,
                             proc: asyncio.subprocess.Process, log: Path) -> None:
    end = time.monotonic() + 30
    while True:
        assert proc.returncode is None, f"uvicorn exited {proc.returncode}:\n{log.read_text()}"
        assert time.monotonic() < end, f"uvicorn did not answer:\n{log.read_text()}"
        try:
            async with session.get(f"{base}/healthz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with session.get(url) as r:
        return r.status, await r.json()


async def test_webapp_under_uvicorn(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = python_env()
    env["ASYNCJOBS_CPU_WORKERS"] = "1"  # the recipe: cores // uvicorn workers
    log = tmp_path / "uvicorn.log"
    started: list[int] = []
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "uvicorn", "examples.webapp.app:app", "--host", "127.0.0.1",
            "--port", str(port), "--workers", "2", "--loop", loop_name(), "--no-access-log",
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
        )
        try:
            async with aiohttp.ClientSession() as session:
                await wait_until_serving(session, base, proc, log)

                # 40 requests, 10 at a time; one of them kills its worker process
                gate = asyncio.Semaphore(CONCURRENCY)

                async def one(i: int) -> tuple[int, dict[str, Any]]:
                    url = f"{base}/crash" if i == CRASH_AT else f"{base}/pi?tries={TRIES}&seed={i}"
                    async with gate:
                        return await get(session, url)

                answers = await asyncio.gather(*(one(i) for i in range(REQUESTS)))
                for i, (status, body) in enumerate(answers):
                    if i == CRASH_AT:
                        assert status == 500, body
                        assert body["error"] == "WorkerCrashed", body
                        assert f"job {body['job']} " in body["message"], body
                        assert "killed its worker process" in body["message"], body
                    else:
                        assert status == 200, (i, body)
                        assert body["hits"] == jobs.hits(TRIES, i), (i, body)

                # past its deadline: 504 at the deadline, and its worker is killed
                workers = cpu_workers(proc.pid)
                t0 = time.monotonic()
                status, body = await get(session, f"{base}/spin?ms=10000&deadline=0.5")
                waited = time.monotonic() - t0
                assert status == 504 and body["error"] == "DeadlineExceeded", body
                assert 0.5 <= waited < 3.0, waited
                end = time.monotonic() + 5
                while not any(gone(pid) for pid in workers):
                    assert time.monotonic() < end, "no worker was killed for the deadline"
                    await asyncio.sleep(0.02)

            # SIGTERM: uvicorn, its app processes and their cpu workers all end
            started = tree(proc.pid)
            assert len(started) >= 5, started  # uvicorn, 2 app processes, >= 1 worker each
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 10)
            await wait_until_gone(started, deadline_s=5.0)
            assert proc.returncode == 0, log.read_text()
            assert "Traceback" not in log.read_text(), log.read_text()
        finally:
            # only what this test started, by PID: uvicorn and what descends from it
            if proc.returncode is None:
                with contextlib.suppress(psutil.Error):
                    started = [*started, *tree(proc.pid)]
            for pid in started:
                if pid != proc.pid and not gone(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.wait()
