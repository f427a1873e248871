"""The cpu pool's template process, prestart, the ``__main__`` guard and
``ASYNCJOBS_CPU_WORKERS``, through real processes."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import textwrap
from typing import TYPE_CHECKING

import anyio
import psutil
import pytest

from asyncjobs import JobFailed, Runner
from asyncjobs.errors import WorkerStartFailed
from asyncjobs.executors import cpu, template
from asyncjobs.executors.cpu import CpuPool
from asyncjobs.model import JobKind

from ..conftest import PYTHON, cpu_pids, python_env
from ..procs import wait_until_gone, wait_until_gone_sync
from . import cpujobs, preloaded
from .test_cpu import wait_for_file

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.usefixtures("no_leftover_children")


def pool_of(runner: Runner) -> CpuPool:
    pool = runner.engine.executors[JobKind.CPU]
    assert isinstance(pool, CpuPool)
    return pool


@pytest.fixture
def no_template(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A template that dies before it is ready: the pool falls back to fresh workers."""
    script = tmp_path / "no_template.py"
    script.write_text("raise SystemExit(1)\n")
    monkeypatch.setattr(CpuPool, "template_script", str(script))


def run_script(tmp_path: Path, source: str, *args: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.run([PYTHON, str(script), *args], capture_output=True, text=True,
                          env=python_env(), cwd=tmp_path, timeout=60, check=False)


# -- the template -------------------------------------------------------------------------


def python_process(code: str, *, wait: bool = False) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([PYTHON, "-c", code])
    if wait:
        proc.wait()
    return proc


async def test_reap_soon_hears_an_exit_and_kills_a_process_past_its_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    fds = len(os.listdir("/proc/self/fd"))
    exits: asyncio.Queue[int | None] = asyncio.Queue()
    ending = python_process("import time; time.sleep(0.2)")
    template.reap_soon(loop, ending, exits.put_nowait)
    assert await asyncio.wait_for(exits.get(), 10) == 0
    monkeypatch.setattr(template, "REAP_TIMEOUT_S", 0.3)
    stuck = python_process("import time; time.sleep(60)")
    template.reap_soon(loop, stuck, exits.put_nowait)
    assert await asyncio.wait_for(exits.get(), 10) == -signal.SIGKILL
    gone = python_process("pass", wait=True)
    template.reap_soon(loop, gone, exits.put_nowait)  # exited already: at once
    assert exits.get_nowait() == 0
    assert len(os.listdir("/proc/self/fd")) == fds  # nothing left open (a pidfd)



async def test_workers_are_forked_by_one_template_that_is_our_child() -> None:
    async with Runner(cpu_workers=2, prestart=True) as runner:
        template = pool_of(runner).template_pid()
        assert template is not None and psutil.Process(template).ppid() == os.getpid()
        workers = cpu_pids(runner)
        assert len(workers) == 2
        assert {psutil.Process(p).ppid() for p in workers} == {template}
        assert await runner.submit(cpujobs.parent) == template
    await wait_until_gone([template, *workers])



async def test_an_early_template_is_adopted_only_if_prepared_as_the_pool_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # asyncjobs run starts the template, and sends it its preparation data, first thing
    template.start_early(template.worker_env())
    assert template._early is not None
    same = template._early[0]
    async with Runner(cpu_workers=1) as runner:
        assert await runner.submit(cpujobs.parent) == same.pid == pool_of(runner).template_pid()
    await wait_until_gone([same.pid])
    template.start_early(template.worker_env())
    assert template._early is not None
    other = template._early[0]
    monkeypatch.syspath_prepend(str(tmp_path))  # the pool's preparation data differs now
    async with Runner(cpu_workers=1) as runner:
        pid = await runner.submit(cpujobs.parent)
        assert pid == pool_of(runner).template_pid() != other.pid
    assert other.poll() is not None  # ended when the pool would not adopt it

async def test_a_replacement_worker_comes_with_the_modules_jobs_needed() -> None:
    async with Runner(cpu_workers=1) as runner:
        first = await runner.submit(preloaded.imported_in)  # unpickling imported it
        assert first == cpu_pids(runner)[0]
        with pytest.raises(JobFailed, match="killed its worker process") as info:
            await runner.submit(cpujobs.crash)
        assert info.value.type_name == "WorkerCrashed"
        # the replacement was forked after the template imported the module
        assert await runner.submit(preloaded.imported_in) == pool_of(runner).template_pid()
        await wait_until_gone([first])


async def test_workers_die_with_their_template_and_the_pool_starts_another(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    async with Runner(cpu_workers=2, prestart=True) as runner:
        pool = pool_of(runner)
        template, workers = pool.template_pid(), cpu_pids(runner)
        assert template is not None
        job = runner.submit(cpujobs.busy, 30, str(tmp_path / "m"))
        await wait_for_file(tmp_path / "m")
        psutil.Process(template).kill()
        with pytest.raises(JobFailed, match=f"template process \\(pid {template}") as info:
            await job
        assert info.value.type_name == "WorkerCrashed"
        await wait_until_gone([template, *workers])
        new = await runner.submit(cpujobs.parent)
        assert new == pool.template_pid() and new != template
    assert "template process" in caplog.text and "starting a new one" in caplog.text


async def test_a_job_submitted_as_the_template_dies_runs_on_a_new_worker() -> None:
    # the pool hears its template's end before its workers' ends: no job may go to them
    for _ in range(5):
        async with Runner(cpu_workers=2, prestart=True) as runner:
            pool = pool_of(runner)
            assert await runner.submit(cpujobs.parent) == pool.template_pid()
            template = pool.template_pid()
            assert template is not None
            psutil.Process(template).kill()
            with anyio.fail_after(10):
                while pool.template_pid() == template:  # noqa: ASYNC110 - bounded
                    await asyncio.sleep(0)
            new = await runner.submit(cpujobs.parent)  # not WorkerCrashed
            assert new == pool.template_pid() != template


async def test_without_a_template_workers_start_as_fresh_interpreters(
    no_template: None, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="asyncjobs")
    async with Runner(cpu_workers=1) as runner:
        assert await runner.submit(cpujobs.parent) == os.getpid()
        with pytest.raises(JobFailed, match="killed its worker process"):
            await runner.submit(cpujobs.crash)
        assert await runner.submit(cpujobs.parent) == os.getpid()
        assert pool_of(runner).template_pid() is None
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "starting each worker as a fresh interpreter" in warnings[0].getMessage()


@pytest.mark.parametrize("template", [True, False])
async def test_the_cluster_secret_stays_out_of_workers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, template: bool,
) -> None:
    if not template:
        monkeypatch.setattr(CpuPool, "template_script", str(tmp_path / "missing.py"))
    monkeypatch.setenv("ASYNCJOBS_SECRET", "s3cret")
    monkeypatch.setenv("ASYNCJOBS_TEST_KEPT", "kept")
    async with Runner(cpu_workers=1, prestart=True) as runner:
        assert await runner.submit(cpujobs.env, "ASYNCJOBS_SECRET") is None
        assert await runner.submit(cpujobs.env, "ASYNCJOBS_TEST_KEPT") == "kept"
        template_pid = pool_of(runner).template_pid()
        if template:
            assert template_pid is not None
            assert "ASYNCJOBS_SECRET" not in psutil.Process(template_pid).environ()


async def test_workers_that_cannot_start_break_the_pool_after_three_tries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("raise SystemExit(3)\n")
    monkeypatch.setattr(CpuPool, "template_script", str(bad))
    monkeypatch.setattr(cpu, "WORKER_SCRIPT", str(bad))
    async with Runner(cpu_workers=1) as runner:
        with pytest.raises(JobFailed, match=r"fail to start \(exit code 3\)") as info:
            await runner.submit(cpujobs.parent)
        assert info.value.type_name == "WorkerStartFailed"


RUNNER_KILLED = """
    import asyncio, sys
    import asyncjobs
    from tests.executors import cpujobs

    async def main():
        async with asyncjobs.Runner(cpu_workers=2, prestart=True) as runner:
            pool = runner.engine.executors[asyncjobs.model.JobKind.CPU]
            runner.submit(cpujobs.busy, 60)
            print(pool.template_pid(), *pool.pids(), flush=True)
            await asyncio.sleep(60)

    if __name__ == "__main__":
        asyncjobs.run(main)
"""


def test_the_template_and_its_workers_die_with_a_killed_runner(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(RUNNER_KILLED))
    with subprocess.Popen([PYTHON, str(script)], stdout=subprocess.PIPE, text=True,
                          env=python_env(), cwd=tmp_path) as proc:
        try:
            assert proc.stdout is not None
            pids = [int(p) for p in proc.stdout.readline().split()]
            assert len(pids) == 3
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    wait_until_gone_sync(pids, deadline_s=5.0)


# -- prestart -------------------------------------------------------------------------------


async def test_prestart_returns_once_every_worker_is_ready() -> None:
    async with Runner(cpu_workers=2, prestart=True) as runner:
        workers = cpu_pids(runner)
        assert len(workers) == 2
        assert all(psutil.Process(p).is_running() for p in workers)
        assert await runner.submit(cpujobs.busy, 0) in workers
        assert cpu_pids(runner) == workers  # the first job started nothing


async def test_prestart_without_a_template_waits_for_fresh_workers(no_template: None) -> None:
    async with Runner(cpu_workers=2, prestart=True) as runner:
        assert len(cpu_pids(runner)) == 2
        assert await runner.submit(cpujobs.parent) == os.getpid()


async def test_pool_prestart_starts_at_the_call_and_is_awaited_later() -> None:
    # what the command line does: start the workers, validate the flow, then wait
    async with Runner(cpu_workers=2) as runner:
        pool = pool_of(runner)
        assert cpu_pids(runner) == []
        ready = pool.prestart()
        assert not ready.done()
        await ready
        assert len(cpu_pids(runner)) == 2


async def test_a_prestart_nobody_awaits_is_no_error() -> None:
    async with Runner(cpu_workers=1) as runner:
        pool_of(runner).prestart()


async def test_prestart_raises_when_the_workers_cannot_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("raise SystemExit(3)\n")
    monkeypatch.setattr(CpuPool, "template_script", str(bad))
    monkeypatch.setattr(cpu, "WORKER_SCRIPT", str(bad))
    runner = Runner(cpu_workers=2, prestart=True)
    with pytest.raises(WorkerStartFailed, match=r"fail to start \(exit code 3\)"):
        async with runner:
            pytest.fail("entered a runner whose workers cannot start")
    with pytest.raises(RuntimeError, match="not open"):
        runner.engine  # noqa: B018 - the failed enter left it closed


# -- the __main__ guard (issue 19 item 4) ------------------------------------------------


NO_GUARD = """
    import asyncjobs

    def square(x):
        return x * x

    async def main():
        async with asyncjobs.Runner(cpu_workers=1, prestart=PRESTART) as runner:
            print(await runner.submit(square, 7))

    asyncjobs.run(main)
"""


@pytest.mark.parametrize("prestart", [False, True])
def test_a_script_without_the_main_guard_gets_an_error_naming_it(
    tmp_path: Path, prestart: bool,
) -> None:
    r = run_script(tmp_path, NO_GUARD.replace("PRESTART", str(prestart)))
    assert r.returncode == 1
    error = "errors.WorkerStartFailed: " if prestart else "errors.JobFailed: "
    [line] = [x for x in r.stderr.splitlines() if x.startswith(f"asyncjobs.{error}")]
    assert "cpu worker processes cannot start: " in line
    assert "app.py starts an asyncjobs Runner when it is imported" in line
    assert 'if __name__ == "__main__":' in r.stderr and "asyncjobs.run(main)" in r.stderr
    assert "Can't get attribute" not in r.stderr


IN_GUARD = """
    import asyncjobs

    async def main():
        async with asyncjobs.Runner(cpu_workers=1) as runner:
            try:
                await runner.submit(square, 7)
            except asyncjobs.JobFailed as exc:
                print(exc.type_name, exc.attempts, exc.message)

    if __name__ == "__main__":
        def square(x):
            return x * x

        asyncjobs.run(main)
"""


def test_a_job_function_defined_under_the_main_guard_gets_an_error_naming_it(
    tmp_path: Path,
) -> None:
    r = run_script(tmp_path, IN_GUARD)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("AttributeError 1 'square' is not defined in ")
    assert "app.py when cpu worker processes import it" in r.stdout
    assert 'outside that block' in r.stdout


BROKEN_IMPORT = """
    import asyncjobs
    from tests.executors import cpujobs

    if __name__ == "__mp_main__":
        raise RuntimeError("this module cannot be imported twice")

    async def main():
        async with asyncjobs.Runner(cpu_workers=1) as runner:
            try:
                await runner.submit(cpujobs.parent)
            except asyncjobs.JobFailed as exc:
                print(exc.type_name, exc.message)
                print(exc.traceback)

    if __name__ == "__main__":
        asyncjobs.run(main)
"""


def test_a_main_module_that_fails_in_workers_breaks_the_pool_with_its_error(
    tmp_path: Path,
) -> None:
    r = run_script(tmp_path, BROKEN_IMPORT)
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert first == ("WorkerStartFailed cpu worker processes fail to start (this module "
                     "cannot be imported twice)")
    assert "RuntimeError: this module cannot be imported twice" in r.stdout


# -- ASYNCJOBS_CPU_WORKERS ----------------------------------------------------------------


def test_cpu_workers_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASYNCJOBS_CPU_WORKERS", "3")
    assert Runner().cpu_workers == 3
    assert Runner(cpu_workers=2).cpu_workers == 2
    monkeypatch.setenv("ASYNCJOBS_CPU_WORKERS", " 5 ")
    assert Runner().cpu_workers == 5
    monkeypatch.setenv("ASYNCJOBS_CPU_WORKERS", "")
    assert Runner().cpu_workers == len(os.sched_getaffinity(0))
    monkeypatch.delenv("ASYNCJOBS_CPU_WORKERS")
    assert Runner().cpu_workers == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", "+2"])
def test_a_bad_cpu_workers_variable_is_named(
    monkeypatch: pytest.MonkeyPatch, value: str,
) -> None:
    monkeypatch.setenv("ASYNCJOBS_CPU_WORKERS", value)
    with pytest.raises(ValueError, match="ASYNCJOBS_CPU_WORKERS must be a positive "
                                         f"integer .*not {re.escape(repr(value))}"):
        Runner()
    assert Runner(cpu_workers=1).cpu_workers == 1


async def test_the_environment_sizes_a_real_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASYNCJOBS_CPU_WORKERS", "1")
    async with Runner(prestart=True) as runner:
        assert len(cpu_pids(runner)) == 1
