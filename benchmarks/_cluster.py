"""What the cluster benchmarks share: real ``asyncjobs coordinator`` and ``asyncjobs node``
processes on 127.0.0.1, stopped by their PID, and a sampler of peak RSS over processes
and their descendants. (The idea of ``tests/cluster/harness.py``; benchmarks do not
import tests.)

Every process is started from the repository root with the root on ``PYTHONPATH``, so
nodes import ``benchmarks.cluster_jobs`` (and ``examples``) by the name the client
uses. ``stop()`` sends SIGTERM to its PID and, past a deadline, SIGKILL to that PID and
to the descendants it had (by their PIDs); a daemon whose starter dies gets SIGTERM
(``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0


def env_with_root() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", ""))
                                        if p)
    return env


def asyncjobs_argv() -> list[str]:
    """The venv's ``asyncjobs`` console script (as a user runs it), else ``-m asyncjobs``."""
    script = Path(sys.executable).parent / "asyncjobs"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "asyncjobs"]


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the process that started it dies (even
    killed with SIGKILL, say by the harness's timeout), so no daemon outlives a run."""
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class DaemonExited(RuntimeError):
    """A daemon exited before it said it was ready (its log's tail is the message)."""


class Daemon:
    """A process we started, its stderr+stdout in ``log``."""

    def __init__(self, argv: Sequence[str], log: Path) -> None:
        self.argv = list(argv)
        self.log = log
        self._log_file = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*asyncjobs_argv(), *argv], stdin=subprocess.DEVNULL, stdout=self._log_file,
            stderr=self._log_file, env=env_with_root(), cwd=ROOT,
            preexec_fn=_die_with_parent,
        )
        self.pid = self.proc.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_line(self, pattern: str, timeout_s: float = START_TIMEOUT_S) -> re.Match[str]:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            found = re.search(pattern, self.text())
            if found:
                return found
            if self.proc.poll() is not None:
                raise DaemonExited(f"{self.argv[0]} exited {self.proc.returncode} before "
                                   f"{pattern!r}:\n{self.text()[-2000:]}")
            time.sleep(0.02)
        raise RuntimeError(f"no {pattern!r} from {self.argv[0]} in {timeout_s} s")

    def descendants(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            return psutil.Process(self.pid).children(recursive=True)
        return []

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL past ``timeout_s`` (to it and its descendants, by PID)."""
        kids = self.descendants()
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
            for kid in kids:  # anything it left behind (it should leave nothing)
                with contextlib.suppress(psutil.Error):
                    if kid.is_running():
                        kid.kill()
            return self.proc.returncode
        finally:
            self._log_file.close()


class Coordinator(Daemon):
    def __init__(self, folder: Path, *args: str) -> None:
        if "--state" not in args:  # the figures without a store unless asked
            args = (*args, "--no-state")
        super().__init__(["coordinator", "--listen", "127.0.0.1:0", *args],
                         folder / "coordinator.log")
        try:
            found = self.wait_for_line(r"listening on (\S+):(\d+)")
        except BaseException:
            self.stop()
            raise
        self.address = f"{found.group(1)}:{found.group(2)}"


class Node(Daemon):
    def __init__(self, folder: Path, address: str, name: str, *, loops: int,
                 cpu_workers: int, io_concurrency: int | None = None) -> None:
        args = ["node", "--connect", address, "--name", name, "--loops", str(loops),
                "--cpu-workers", str(cpu_workers)]
        if io_concurrency is not None:
            args += ["--io-concurrency", str(io_concurrency)]
        super().__init__(args, folder / f"node-{name}.log")
        self.name = name


@contextlib.contextmanager
def cluster(nodes: int, *, loops: int = 1, cpu_workers: int = 1,
            io_concurrency: int | None = None,
            coordinator_args: Sequence[str] = ()) -> Iterator[tuple[Coordinator, list[Node]]]:
    """A coordinator and ``nodes`` nodes named n0, n1, …; every process stopped on exit
    (nodes first), whatever happens. Wait for the nodes with ``wait_for_nodes``."""
    with tempfile.TemporaryDirectory(prefix="asyncjobs-bench-") as tmp:
        folder = Path(tmp)
        coordinator = Coordinator(folder, *coordinator_args)
        started: list[Node] = []
        try:
            for i in range(nodes):
                started.append(Node(folder, coordinator.address, f"n{i}", loops=loops,
                                    cpu_workers=cpu_workers, io_concurrency=io_concurrency))
            yield coordinator, started
        except BaseException:
            for d in (*started, coordinator):
                sys.stderr.write(f"--- {d.log.name}\n{d.text()[-3000:]}\n")
            raise
        finally:
            for node in started:
                node.stop()
            coordinator.stop()


async def wait_for_nodes(cluster_api: object, names: Sequence[str], loops: int = 1,
                         timeout_s: float = START_TIMEOUT_S) -> None:
    """Wait until each named node is alive with all its loops registered (over an open
    ``asyncjobs.connect`` cluster)."""
    import asyncio

    end = time.monotonic() + timeout_s
    seen: dict[str, object] = {}
    while time.monotonic() < end:
        reply = await cluster_api.status()  # type: ignore[attr-defined]
        seen = {n.name: n for n in reply.nodes}
        if all(n in seen and seen[n].alive and seen[n].loops == loops  # type: ignore[attr-defined]
               and seen[n].slots_total > 0 for n in names):  # type: ignore[attr-defined]
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"nodes {list(names)} not all up in {timeout_s} s: {seen}")


def _tree(pid: int) -> list[psutil.Process]:
    """A process and its live descendants (none if it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_rss_mib(pid: int) -> float:
    """RSS of a process and all its descendants, summed, in MiB (0 if it is gone)."""
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total / 2**20


class RssSampler:
    """Samples, every ``every_s``, the RSS of each named process tree (the process and
    its descendants, summed) and keeps each one's peak and the peak of their sum.
    A thread of the measuring process: start before the timed span, stop after."""

    def __init__(self, every_s: float = 0.1) -> None:
        self.every_s = every_s
        self.trees: dict[str, int] = {}
        self.peaks: dict[str, float] = {}
        self.peak_total = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, label: str, pid: int) -> None:
        self.trees[label] = pid
        self.peaks.setdefault(label, 0.0)

    def sample(self) -> None:
        total = 0.0
        for label, pid in list(self.trees.items()):
            mib = tree_rss_mib(pid)
            self.peaks[label] = max(self.peaks[label], mib)
            total += mib
        self.peak_total = max(self.peak_total, total)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def start(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def run_watched(argv: list[str], rss: RssSampler, label: str
                ) -> tuple[dict[str, float], int, str, str]:
    """Run a command from the repository root, its RSS sampled under ``label``; its
    timing (``_harness.Clock``), exit code, stdout and stderr."""
    import _harness

    clock = _harness.Clock()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env_with_root(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        rss.watch(label, proc.pid)
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return clock.stop(), proc.returncode, out, err


def vm_hwm_mib(pid: int) -> float:
    """A process's own peak RSS (``VmHWM``) from ``/proc``, in MiB (0 if unreadable)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of sorted values, nearest rank."""
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


MAX_WARMUP_ROUNDS = 50


async def warm_asyncjobs(cluster_api: object, fn: object, processes: int,
                         delay_s: float = 0.02) -> None:
    """Map ``fn`` (a ``pid_after`` job) until ``processes`` distinct processes answered."""
    seen: set[int] = set()
    for _ in range(MAX_WARMUP_ROUNDS):
        seen.update(await cluster_api.map(fn, [delay_s] * (2 * processes)))  # type: ignore[attr-defined]
        if len(seen) >= processes:
            return
    raise RuntimeError(f"only {len(seen)} of {processes} processes answered the warm-up")


def warm_dask(client: object, fn: object, processes: int, delay_s: float = 0.02) -> None:
    seen: set[int] = set()
    for _ in range(MAX_WARMUP_ROUNDS):
        futures = client.map(fn, [delay_s] * (2 * processes), pure=False)  # type: ignore[attr-defined]
        seen.update(client.gather(futures))  # type: ignore[attr-defined]
        if len(seen) >= processes:
            return
    raise RuntimeError(f"only {len(seen)} of {processes} dask workers answered the warm-up")


@contextlib.contextmanager
def dask_cluster(n_workers: int) -> Iterator[tuple[object, object]]:
    """``LocalCluster(n_workers, threads_per_worker=1)`` (worker processes, the scheduler
    in this process) with ``worker-saturation: inf`` (Dask's fastest setting for many
    small tasks), and a ``Client``; closed on exit."""
    import dask
    from dask.distributed import Client, LocalCluster

    dask.config.set({"distributed.scheduler.worker-saturation": float("inf")})
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      host="127.0.0.1", dashboard_address=None) as lc, Client(lc) as client:
        yield lc, client


def dask_version() -> str:
    try:
        import distributed
    except ImportError:
        return "not installed (pip install -e '.[bench]')"
    return str(distributed.__version__)


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its live descendants."""
    total = 0.0
    for p in _tree(pid):
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total
