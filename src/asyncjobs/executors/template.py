"""How the pool's processes are prepared and started: the preparation data (what a
spawned ``multiprocessing`` child gets), the check that refuses a Runner while the main
module is being imported for a worker, and the pool's side of its template process
(``_template_main``): start it, ask it for workers, hear how they exit, reap it."""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import subprocess
import sys
from typing import TYPE_CHECKING, Protocol

from ..errors import UnguardedMainModule
from ..model import ErrorInfo
from . import _template_main as wire
from .channel import Channel

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Iterable, Mapping

TEMPLATE_SCRIPT = os.path.realpath(wire.__file__)
#: how long to wait for a process's exit status once it should be exiting
REAP_TIMEOUT_S = 5.0


def check_not_preparing() -> None:
    """Refuse to start a pool inside a worker that is importing the main module (rule 6).

    :raises UnguardedMainModule: with what to do about it
    """
    # only a process multiprocessing prepares can be inheriting: one that has not
    # imported it is not (and ``asyncjobs run`` imports it no sooner than it must)
    process = sys.modules.get("multiprocessing.process")
    if process is None or not getattr(process.current_process(), "_inheriting", False):
        return
    main = sys.modules.get("__mp_main__") or sys.modules.get("__main__")
    path = getattr(main, "__file__", None) or "the main module"
    raise UnguardedMainModule(
        f"{path} starts an asyncjobs Runner when it is imported. cpu worker processes "
        "import the main module, as multiprocessing's spawn does, to find the functions "
        "defined there, so the code that starts the Runner must run only when the file "
        'is run as a program: put it under `if __name__ == "__main__":`, e.g.\n\n'
        '    if __name__ == "__main__":\n'
        "        asyncjobs.run(main)\n"
    )


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "exit status unknown"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        if -returncode == signal.SIGKILL:
            return f"killed by {name} (out of memory, or killed from outside)"
        return f"killed by {name}"
    return f"exit code {returncode}"


def preparation_data() -> bytes:
    """What a spawned child is prepared with: ``sys.path``, cwd, the main module."""
    import multiprocessing
    import multiprocessing.spawn

    method_was_set = multiprocessing.get_start_method(allow_none=True) is not None
    prep = multiprocessing.spawn.get_preparation_data("asyncjobs-worker")
    prep.pop("authkey", None)  # refuses to pickle; workers use no multiprocessing auth
    if not method_was_set:  # asking fixed it: leave the app free to choose one later
        multiprocessing.set_start_method(None, force=True)
        prep.pop("start_method", None)
    return pickle.dumps(prep)


class TemplateOwner(Protocol):
    """What a template tells its pool."""

    def template_ready(self, template: Template) -> None: ...
    def worker_forked(self, worker_id: int, pid: int) -> None: ...
    def worker_not_forked(self, worker_id: int, error: ErrorInfo) -> None: ...
    def worker_exited(self, pid: int, returncode: int) -> None: ...
    def template_gone(self, template: Template) -> None: ...


def reap_soon(loop: asyncio.AbstractEventLoop, proc: subprocess.Popen[bytes],
              on_exit: Callable[[int | None], None]) -> None:
    """Call ``on_exit(returncode)`` once ``proc``, which should be exiting, has exited;
    SIGKILL it if it has not within ``REAP_TIMEOUT_S`` (None: no status could be had)."""
    deadline = loop.time() + REAP_TIMEOUT_S
    delay = 0.001

    def check() -> None:
        nonlocal delay
        code = proc.poll()
        if code is None and loop.time() < deadline:
            loop.call_later(delay, check)
            delay = min(2 * delay, 0.05)
            return
        if code is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = proc.wait(timeout=1.0)
        on_exit(code)

    if proc.poll() is not None or not hasattr(os, "pidfd_open"):
        check()
        return
    # heard at once, not at the next of the polling steps (1, 2, 4 ms...): this is on
    # the way out of every run; then checked as above
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:
        check()
        return

    def exited() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        timer.cancel()
        check()

    try:
        loop.add_reader(pidfd, exited)
    except (OSError, NotImplementedError):
        os.close(pidfd)
        check()
        return
    timer = loop.call_at(deadline, exited)


def worker_env() -> dict[str, str]:
    """The environment of the template and its workers: ours, less the cluster secret."""
    return {k: v for k, v in os.environ.items() if k != "ASYNCJOBS_SECRET"}


def _spawn(script: str, env: Mapping[str, str]) -> tuple[subprocess.Popen[bytes],
                                                         socket.socket]:
    """Start a template process; return it and our end of its channel."""
    parent_end, child_end = socket.socketpair()
    try:
        proc = subprocess.Popen(
            [sys.executable, script, str(child_end.fileno()), str(os.getpid())],
            pass_fds=(child_end.fileno(),), stdin=subprocess.DEVNULL, env=env,
        )
    except BaseException:
        parent_end.close()
        raise
    finally:
        child_end.close()
    return proc, parent_end


#: a template started before any event loop, by ``start_early``: (process, our end of
#: its channel, its script, its environment, the preparation data sent to it), until a
#: pool adopts or ``discard_early`` ends it. Process-wide, as the process it stands for.
_early: tuple[subprocess.Popen[bytes], socket.socket, str, dict[str, str], bytes] | None = None


def start_early(env: Mapping[str, str], script: str = TEMPLATE_SCRIPT) -> None:
    """Start a template process now, for the first pool opened later in this process
    with the same script, environment and preparation data. ``asyncjobs run`` calls
    this first thing, so the template's interpreter boots and prepares while the command
    imports and validates its file.

    :raises OSError: if the process cannot be started
    """
    global _early
    if _early is None:
        proc, ours = _spawn(script, env)
        # sent now, not when a pool adopts it: the template prepares (imports the main
        # module) at once; its preparation data is ours by then (sys.path, cwd, argv)
        try:
            prep = preparation_data()
        except Exception:  # the pool meets it again, and reports it, when it makes its own
            _early = (proc, ours, script, dict(env), b"")
            discard_early()
            return
        try:
            ours.sendall(wire.HEADER.pack(len(prep), wire.OP_INIT, 0) + prep)
        except OSError:
            pass  # it has died already: adopting it fails, and a pool starts its own
        _early = (proc, ours, script, dict(env), prep)


def discard_early() -> None:
    """End an early template that no pool adopted (its run never started)."""
    global _early
    early, _early = _early, None
    if early is not None:
        proc, ours = early[0], early[1]
        ours.close()  # the template exits at the end of its channel
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _adopt_early(script: str, env: Mapping[str, str], prep: bytes
                 ) -> tuple[subprocess.Popen[bytes], socket.socket] | None:
    """The early template, if it was started and prepared as this pool would (it was
    sent its ``I`` frame already)."""
    global _early
    early = _early
    if (early is None or early[2] != script or early[3] != dict(env) or early[4] != prep
            or early[0].poll() is not None):
        discard_early()
        return None
    _early = None
    return early[0], early[1]


class Template:
    """One template process, started at once.

    :param owner: hears what the template says
    :param prep: the pickled preparation data (``multiprocessing.spawn``)
    :param env: the template's environment, and so its workers'
    :raises OSError: if the process cannot be started
    """

    def __init__(self, owner: TemplateOwner, loop: asyncio.AbstractEventLoop, prep: bytes,
                 env: Mapping[str, str], script: str = TEMPLATE_SCRIPT) -> None:
        self.owner = owner
        self.loop = loop
        early = _adopt_early(script, env, prep)
        self.proc, parent_end = early or _spawn(script, env)
        self.pid = self.proc.pid
        self.ready = False
        #: why preparing failed, as the template said
        self.error: ErrorInfo | None = None
        #: the process has been reaped; ``returncode`` is its status
        self.gone = False
        self.returncode: int | None = None
        self.chan = Channel(parent_end, loop, self._on_frame, self._on_eof)
        if early is None:
            self.chan.send(wire.OP_INIT, 0, prep)

    def fork(self, worker_id: int, sock: socket.socket) -> None:
        """Ask for a worker on ``sock`` (its end of the pool's socketpair; sent, then
        closed here)."""
        self.chan.send(wire.OP_FORK, worker_id, fds=[sock])

    def reap(self, pid: int) -> None:
        self.chan.send(wire.OP_REAP, pid)

    def preload(self, modules: Iterable[str]) -> None:
        self.chan.send(wire.OP_PRELOAD, 0, "\n".join(modules).encode())

    def close(self) -> None:
        """End it: a ready template exits when its channel closes; one still preparing
        is killed. Its workers die with it."""
        if self.chan.closed:
            return
        self.chan.flush()
        self.chan.close()
        if not self.ready:
            self.kill()
        reap_soon(self.loop, self.proc, self._on_reaped)

    def kill(self) -> None:
        if not self.gone:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    def _on_frame(self, op: bytes, token: int, payload: bytes) -> None:
        if op == wire.OP_FORKED:
            (pid,) = wire.NUMBER.unpack(payload)
            self.owner.worker_forked(token, pid)
        elif op == wire.OP_EXITED:
            (code,) = wire.NUMBER.unpack(payload)
            self.owner.worker_exited(token, code)
        elif op == wire.OP_READY:
            self.ready = True
            self.owner.template_ready(self)
        elif op == wire.OP_ERR:
            error = ErrorInfo.from_wire(pickle.loads(payload))
            if token:
                self.owner.worker_not_forked(token, error)
            else:
                self.error = error

    def _on_eof(self) -> None:
        reap_soon(self.loop, self.proc, self._on_reaped)

    def _on_reaped(self, returncode: int | None) -> None:
        self.gone = True
        self.returncode = returncode
        self.owner.template_gone(self)

