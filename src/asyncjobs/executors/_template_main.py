"""The template process of a CPU pool: one fresh interpreter, prepared once as a spawned
worker would be (``sys.path``, working directory, the app's main module re-imported as
``__mp_main__``), that forks ready workers on request. A worker then costs a fork (about
a millisecond) instead of an interpreter start and the imports (50-300 ms), so a crash, a
timeout kill or a cancel kill costs the pool almost nothing. This is multiprocessing's
forkserver with the main module preloaded. Run as a script by path, like
``_worker_main``, and like it imports nothing of asyncjobs.

How this works: frames as in ``_worker_main`` (``!IcQ``: payload length, op, token) on
one socket, the control channel. The pool sends ``I`` (preparation data), then any of
``F`` (fork a worker; token: the pool's worker id; the worker's socket travels with the
frame as SCM_RIGHTS), ``P`` (reap; token: a PID) and ``L`` (import these modules). The
template says ``H`` (ready; token: its PID) or ``E`` (token 0: preparing failed; token
N: worker N could not be forked), ``W`` (worker forked; token: its id, payload: its PID)
and ``D`` (a worker exited; token: its PID, payload: its return code).

Rules:

1. The template runs no event loop and starts no thread, and holds no socket but its
   control channel and, for an instant, the sockets of workers about to be forked: a
   fork copies the one thread there is, and nothing a worker inherits is a lock that
   some other thread held, or a connection that is not its own.
2. The pool makes each worker's socketpair and sends the worker's end with ``F``; the
   template forks, the child keeps that end and closes every other descriptor of the
   template's (the control channel, other workers' ends). The pool can write jobs into
   its end before the worker exists.
3. Exits are seen without reaping (``waitid`` with ``WNOWAIT``) and reported with their
   status; a PID is reaped only when the pool says ``P``, once it will send that PID no
   more signals. Until then the PID cannot be reused, so the pool's kill by PID hits
   that worker or nothing.
4. The template dies with the pool (PR_SET_PDEATHSIG), and each worker with the template:
   no worker outlives the runner. Both ignore SIGINT: the pool decides what Ctrl-C means.
5. ``L`` names the modules that unpickling a job imported in a worker; the template
   imports them (quietly: a module it cannot import is the job's business), so the next
   worker forked has them already. Like multiprocessing's forkserver preload, a module
   that starts threads at import is then imported before a fork.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import select
import signal
import socket
import struct
import sys
from collections import deque

try:
    from . import _worker_main as worker
except ImportError:  # run as a script by path: its directory is sys.path[0]
    import _worker_main as worker  # type: ignore[import-not-found,no-redef]

HEADER = worker.HEADER
#: pool -> template
OP_INIT, OP_FORK, OP_REAP, OP_PRELOAD = b"I", b"F", b"P", b"L"
#: template -> pool
OP_READY, OP_ERR, OP_FORKED, OP_EXITED = b"H", b"E", b"W", b"D"
#: a PID or a return code, in a payload
NUMBER = struct.Struct("!q")


class _Template:
    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        self.sock = sock
        self.pid = os.getpid()
        self.buf = bytearray()
        self.frames: deque[tuple[bytes, int, bytes]] = deque()
        #: worker sockets received and not yet forked with, in the order of their frames
        self.fds: deque[int] = deque()
        #: PID -> worker id, for every child not yet reaped
        self.children: dict[int, int] = {}
        self.reported: set[int] = set()
        self.wake_r, self.wake_w = os.pipe()

    def send(self, op: bytes, token: int, payload: bytes = b"") -> None:
        try:
            self.sock.sendall(HEADER.pack(len(payload), op, token) + payload)
        except OSError:  # the pool has closed its end: nothing left to do
            os._exit(0)

    def receive(self) -> None:
        """Wait for what the pool sends and split it into ``self.frames``; the pool gone
        means this process is done."""
        try:
            data, fds, _, _ = socket.recv_fds(self.sock, 1 << 16, 16)
        except OSError:  # reset: the pool closed its end with frames unread
            os._exit(0)
        self.fds.extend(fds)
        if not data:
            os._exit(0)
        self.buf += data
        worker.split_frames(self.buf, self.frames)

    def prepare(self) -> None:
        while not self.frames:
            self.receive()
        op, _, payload = self.frames.popleft()
        if op != OP_INIT:
            os._exit(3)
        try:
            worker.prepare(payload)
        except BaseException as exc:  # noqa: BLE001 - the pool reports it
            self.send(OP_ERR, 0, pickle.dumps(worker.error_wire(exc, retryable=False)))
            os._exit(4)

    def serve(self) -> None:
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        self.send(OP_READY, self.pid)
        while True:
            while self.frames:
                op, token, payload = self.frames.popleft()
                if op == OP_FORK:
                    self.fork(token)
                elif op == OP_REAP:
                    self.reap(token)
                elif op == OP_PRELOAD:
                    self.preload(payload)
            readable, _, _ = select.select([self.sock.fileno(), self.wake_r], [], [])
            if self.wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wake_r, 4096)
                self.report_exits()
            if self.sock.fileno() in readable:
                self.receive()

    def fork(self, token: int) -> None:
        fd = self.fds.popleft()
        for stream in (sys.stdout, sys.stderr):  # else a worker would write it again
            with contextlib.suppress(Exception):
                stream.flush()
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(fd)
            self.send(OP_ERR, token, pickle.dumps(worker.error_wire(exc, retryable=False)))
            return
        if pid == 0:
            self.become_worker(fd)
        os.close(fd)
        self.children[pid] = token
        self.send(OP_FORKED, token, NUMBER.pack(pid))

    def become_worker(self, fd: int) -> None:
        """In the child: drop what is the template's (rule 2), then serve. Never returns."""
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for other in (self.wake_r, self.wake_w, *self.fds):
                os.close(other)
            self.sock.close()
            worker.die_with_parent(self.pid)
            worker.serve(worker.channel(socket.socket(fileno=fd)))
        finally:
            os._exit(70)

    def report_exits(self) -> None:
        for pid in [p for p in self.children if p not in self.reported]:
            try:
                info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                continue
            if info is None:
                continue
            code = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
            self.reported.add(pid)
            self.send(OP_EXITED, pid, NUMBER.pack(code))

    def reap(self, pid: int) -> None:
        if pid in self.reported:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            self.reported.discard(pid)
            self.children.pop(pid, None)

    @staticmethod
    def preload(payload: bytes) -> None:
        for name in payload.decode().split("\n"):
            with contextlib.suppress(BaseException):
                importlib.import_module(name)


def main() -> None:
    """``_template_main.py FD PARENT_PID``: FD is the control channel."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fd, parent_pid = int(sys.argv[1]), int(sys.argv[2])
    worker.die_with_parent(parent_pid)
    template = _Template(socket.socket(fileno=fd))
    template.prepare()
    template.serve()


if __name__ == "__main__":
    main()
