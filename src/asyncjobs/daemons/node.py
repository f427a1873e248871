"""``asyncjobs node``: a supervisor that runs one loop process per core (SPEC sections 4
and 6).

How this works:

1. ``main`` checks the flags and reads the secret, then removes ``ASYNCJOBS_SECRET``
   from this process's environment before anything starts: loops, jobs and workers
   never see it. Each loop gets its settings, the secret as hex among them, as one JSON
   line on its stdin (never argv, never the environment: both are readable in
   ``/proc``), and the pipe stays open so the loop sees the supervisor die.
2. The node's cpu workers are a budget for the host, split across the loops: loop ``i``
   gets ``cpu // loops`` plus one for ``i < cpu % loops``. A loop with none runs no cpu
   jobs (it registers a cpu capacity of 0) and starts no pool.
3. A loop process that dies is started again after a delay that doubles from
   ``RESTART_FIRST_S`` up to ``RESTART_CAP_S``, back to the first once a loop ran for
   ``RESTART_RESET_AFTER_S``: a loop that cannot start does not spin.
4. SIGTERM or SIGINT: forwarded as SIGTERM to every loop (each drains: queued attempts
   go back to the coordinator, running ones get ``--drain-timeout``); loops still alive
   ``STOP_GRACE_S`` after that are killed. Exit 0. Only processes we started are
   signalled, by PID.
5. Each loop writes on a status pipe: a pulse every second while its event loop turns,
   and a mark once it registered. A loop silent for ``LOOP_SILENT_S`` is stuck (a job
   that never yields, say) and is killed, then started again: its link may still be
   open, so the coordinator cannot tell. The first registration is systemd's
   ``READY=1``; SIGTERM is ``STOPPING=1``; ``WATCHDOG=1`` follows ``WatchdogSec``;
   ``STATUS=`` counts the loop processes that registered since they started.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import socket
import sys
import time
from typing import TYPE_CHECKING

from ..auth import SECRET_ENV, load_secret, parse_address
from ..errors import ClusterConfigError
from .settings import REGISTERED, LoopSettings
from .spawn import LoopChild, loop_env
from .systemd import SYSTEMD_ENV, Notifier

if TYPE_CHECKING:
    import argparse
    from collections.abc import Mapping
    from typing import IO

log = logging.getLogger("asyncjobs.node")

EXIT_OK, EXIT_BAD_INPUT = 0, 2
#: io attempts each loop runs at once, unless --io-concurrency says
DEFAULT_IO_CONCURRENCY = 100
#: restart delays of a loop process that died
RESTART_FIRST_S = 0.5
RESTART_CAP_S = 10.0
RESTART_RESET_AFTER_S = 30.0
#: after the drain timeout, how long loops may take to say goodbye before SIGKILL
STOP_GRACE_S = 5.0
#: a loop whose event loop did not pulse for this long is killed and started again
LOOP_SILENT_S = 15.0


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def cpu_share(total: int, loops: int, index: int) -> int:
    """Loop ``index``'s share of ``total`` cpu workers split over ``loops`` loops."""
    return total // loops + (1 if index < total % loops else 0)


def settings_from_args(args: argparse.Namespace, secret: bytes) -> list[LoopSettings]:
    """Each loop's settings.

    :raises ClusterConfigError: for a flag value that cannot work, saying which
    """
    host, port = parse_address(args.connect)
    if port == 0:
        raise ClusterConfigError(f"--connect {args.connect}: the coordinator's port "
                                 "cannot be 0")
    cores = usable_cores()
    loops = cores if args.loops is None else args.loops
    if loops < 1:
        raise ClusterConfigError(f"--loops must be at least 1, not {loops}")
    cpu = cores if args.cpu_workers is None else args.cpu_workers
    if cpu < 0:
        raise ClusterConfigError(f"--cpu-workers must be 0 or more, not {cpu}")
    io = DEFAULT_IO_CONCURRENCY if args.io_concurrency is None else args.io_concurrency
    if io < 1:
        raise ClusterConfigError(f"--io-concurrency must be at least 1, not {io}")
    drain = args.drain_timeout
    if not (math.isfinite(drain) and drain >= 0):
        raise ClusterConfigError(f"--drain-timeout must be 0 or more seconds, not {drain}")
    name = socket.gethostname() if args.name is None else args.name
    if not name.strip() or not name.isprintable():
        raise ClusterConfigError(f"--name must be printable text, not {name!r}")
    if args.tls_cert or args.tls_key or args.tls_ca:
        # the loops load the files themselves; load them once here to fail early and
        # clearly (imported here: without TLS the supervisor never needs the transport)
        from ..transport import tls_from_files

        tls_from_files(args.tls_cert, args.tls_key, args.tls_ca, server=False)
    return loop_settings(host, port, secret, loops=loops, cpu_workers=cpu,
                         io_concurrency=io, name=name, drain_timeout_s=float(drain),
                         tls_cert=args.tls_cert, tls_key=args.tls_key, tls_ca=args.tls_ca)


def loop_settings(host: str, port: int, secret: bytes, *, loops: int, cpu_workers: int,
                  io_concurrency: int, name: str, drain_timeout_s: float,
                  tls_cert: str | None = None, tls_key: str | None = None,
                  tls_ca: str | None = None) -> list[LoopSettings]:
    """The settings of a node's ``loops`` loops (values checked already)."""
    threads = max(1, min(32, usable_cores() + 4) // loops)
    return [LoopSettings(host=host, port=port, secret=secret, index=i, loops=loops,
                         name=name, cpu_workers=cpu_share(cpu_workers, loops, i),
                         io_concurrency=io_concurrency, thread_workers=threads,
                         drain_timeout_s=drain_timeout_s, tls_cert=tls_cert,
                         tls_key=tls_key, tls_ca=tls_ca)
            for i in range(loops)]


def main(args: argparse.Namespace) -> int:
    """Run ``asyncjobs node``; the process's exit code."""
    try:
        secret = load_secret(args.secret_file)
    except ClusterConfigError as exc:
        return _fail(str(exc))
    os.environ.pop(SECRET_ENV, None)  # before any process starts
    try:
        settings = settings_from_args(args, secret)
    except ClusterConfigError as exc:
        return _fail(str(exc))
    systemd = {name: os.environ.pop(name) for name in SYSTEMD_ENV if name in os.environ}
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s asyncjobs node {settings[0].name} "
                               f"[%(levelname)s] %(message)s")
    return asyncio.run(Supervisor(settings, Notifier.from_env(systemd)).run())


def _fail(message: str) -> int:
    print(f"asyncjobs: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


class Supervisor:
    """Starts the loop processes, restarts those that die, stops them on a signal (or
    ``stop``).

    :param env: the loops' environment (default: ours less the secret)
    :param output: where the loops' stdout and stderr go (default: ours)
    :param logger: where the supervisor logs (default: ``asyncjobs.node``)
    :param signals: stop on SIGTERM and SIGINT (False: the caller calls ``stop``)
    :param started: loop processes started already (``LoopChild``), used before new ones
    """

    def __init__(self, settings: list[LoopSettings], notifier: Notifier | None = None, *,
                 env: Mapping[str, str] | None = None, output: IO[bytes] | None = None,
                 logger: logging.Logger | None = None, signals: bool = True,
                 started: list[LoopChild] | None = None) -> None:
        self.settings = settings
        self.notifier = notifier or Notifier()
        self.log = logger or log
        self._env = loop_env() if env is None else dict(env)
        self._output = output
        self._signals = signals
        self._started = list(started or ())
        self._procs: dict[int, LoopChild] = {}
        self._pulses: dict[int, float] = {}
        self._ready = False
        self._stopping = asyncio.Event()
        #: loops whose current process has registered (once; it relinks by itself)
        self._registered: set[int] = set()

    @property
    def registered(self) -> int:
        """How many loops' current processes have registered."""
        return len(self._registered)

    def stop(self) -> None:
        """Stop as on SIGTERM: the loops drain, then ``run`` returns."""
        self._stopping.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        if self._signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stopping.set)
        s = self.settings[0]
        self.log.info("node %s: %d loops, connecting to %s:%d", s.name, len(self.settings),
                 s.host, s.port)
        tasks = [asyncio.create_task(self._keep(one)) for one in self.settings]
        watch = asyncio.create_task(self._watch())
        status = asyncio.create_task(self.notifier.report_status(self._status_line))
        try:
            await self._stopping.wait()
            watch.cancel()
            self.notifier.notify("STOPPING=1")
            self.log.info("node %s: stopping: the loops drain (up to %g s)", s.name,
                     s.drain_timeout_s)
            for proc in list(self._procs.values()):
                proc.send_signal(signal.SIGTERM)
            done, pending = await asyncio.wait(
                tasks, timeout=s.drain_timeout_s + STOP_GRACE_S)
            for proc in list(self._procs.values()):
                if proc.returncode is None:
                    self.log.warning("node %s: loop pid %d did not stop in time; killing "
                                     "it", s.name, proc.pid)
                    proc.send_signal(signal.SIGKILL)
            if pending:
                await asyncio.wait(pending, timeout=STOP_GRACE_S)
        finally:
            watch.cancel()
            status.cancel()
            for task in tasks:
                task.cancel()
            for proc in list(self._procs.values()):
                if proc.returncode is None:
                    proc.send_signal(signal.SIGKILL)
                    await proc.wait()
            for child in self._started:  # started for a loop that never came to use it
                child.discard()
            self._started.clear()
            if self._signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
        self.log.info("node %s: stopped", s.name)
        return EXIT_OK

    async def _keep(self, settings: LoopSettings) -> None:
        """Keep one loop process running until the node stops."""
        delay = RESTART_FIRST_S
        while not self._stopping.is_set():
            began = time.monotonic()
            code = await self._run_once(settings)
            if self._stopping.is_set():
                return
            if time.monotonic() - began >= RESTART_RESET_AFTER_S:
                delay = RESTART_FIRST_S
            self.log.warning("node %s: loop %d exited (code %s); starting it again in %.1f s",
                        settings.name, settings.index, code, delay)
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
            except TimeoutError:
                pass
            delay = min(RESTART_CAP_S, delay * 2)

    async def _watch(self) -> None:
        """Kill loops whose event loop stopped turning; feed systemd's watchdog."""
        every = 1.0 if self.notifier.watchdog_s is None else min(
            1.0, self.notifier.watchdog_s / 2)
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            for index, proc in list(self._procs.items()):
                silent = now - self._pulses.get(index, now)
                if silent > LOOP_SILENT_S and proc.returncode is None:
                    self.log.error("node %s: loop %d (pid %d) is stuck: no sign of life "
                                   "for %.0f s; killing it", self.settings[0].name, index,
                                   proc.pid, silent)
                    proc.send_signal(signal.SIGKILL)
                    self._pulses.pop(index, None)
            if self.notifier.watchdog_s is not None:
                self.notifier.notify("WATCHDOG=1")

    def _status(self, index: int, fd: int) -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(fd)
            return
        self._pulses[index] = time.monotonic()
        if REGISTERED in data:
            self._registered.add(index)
        if REGISTERED in data and not self._ready:
            self._ready = True
            self.notifier.notify("READY=1")

    def _status_line(self) -> str:
        """systemd's ``STATUS=``: "connected to HOST:PORT; 4 loops, 4 registered"."""
        s, n = self.settings[0], len(self.settings)
        where = f"[{s.host}]:{s.port}" if ":" in s.host else f"{s.host}:{s.port}"
        verb = "draining; connected to" if self._stopping.is_set() else (
            "connected to" if self._registered else "connecting to")
        return f"{verb} {where}; {n} loop{'s' * (n != 1)}, {len(self._registered)} registered"

    async def _run_once(self, settings: LoopSettings) -> int | None:
        loop = asyncio.get_running_loop()
        if self._started:
            proc = self._started.pop(0)
        else:
            try:
                proc = LoopChild(self._env, self._output)
            except OSError as exc:
                self.log.error("node %s: cannot start loop %d: %s", settings.name,
                               settings.index, exc)
                return None
        self._procs[settings.index] = proc
        self._pulses[settings.index] = time.monotonic()
        proc.send(settings)
        if self._stopping.is_set():  # started as the node began to stop: it drains too
            proc.send_signal(signal.SIGTERM)
        os.set_blocking(proc.status_fd, False)
        loop.add_reader(proc.status_fd, self._status, settings.index, proc.status_fd)
        try:
            self.log.info("node %s: loop %d started (pid %d)", settings.name,
                          settings.index, proc.pid)
            return await proc.wait()
        finally:
            if proc.returncode is None:  # cancelled: the node is going down
                await asyncio.shield(self._reap(proc))
            self._procs.pop(settings.index, None)
            self._pulses.pop(settings.index, None)
            self._registered.discard(settings.index)
            loop.remove_reader(proc.status_fd)
            proc.close()

    async def _reap(self, proc: LoopChild) -> None:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
