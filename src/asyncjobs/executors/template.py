"""The pool's side of its template process (``_template_main``): start it, ask it for
workers, hear how they exit, and reap it."""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..model import ErrorInfo
from . import _template_main as wire
from .channel import Channel

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Iterable, Mapping

TEMPLATE_SCRIPT = str(Path(wire.__file__).resolve())
#: how long to wait for a process's exit status once it should be exiting
REAP_TIMEOUT_S = 5.0


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

    check()


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
        parent_end, child_end = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, script, str(child_end.fileno()), str(os.getpid())],
                pass_fds=(child_end.fileno(),), stdin=subprocess.DEVNULL, env=env,
            )
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        self.pid = self.proc.pid
        self.ready = False
        #: why preparing failed, as the template said
        self.error: ErrorInfo | None = None
        #: the process has been reaped; ``returncode`` is its status
        self.gone = False
        self.returncode: int | None = None
        self.chan = Channel(parent_end, loop, self._on_frame, self._on_eof)
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

