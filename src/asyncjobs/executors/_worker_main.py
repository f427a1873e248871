"""A CPU worker process. Run as a script by path (not ``-m``) so it imports nothing of
asyncjobs: start-up stays fast and a worker never loads the event-loop half of the package.

How this works: the parent sends frames over a socketpair (fd in argv[1]). Each frame is
a header ``!IcQ`` (payload length, op, token) and a payload. The worker runs jobs one at
a time, in the order received, and answers each with exactly one frame.

Rules:

1. A reader thread takes frames while the main thread runs jobs, so a ``C`` (cancel)
   for a job not yet started removes it at once, even while a long job runs: answered
   ``X``, never run. A job already taken by the main thread is answered with its result.
2. Payloads are unpickled only when the job is about to run, so a job whose function
   cannot be imported fails alone, with its own error.
3. The worker ignores SIGINT (the parent decides what Ctrl-C means) and asks the kernel
   to SIGKILL it when its parent dies, so no worker outlives a killed runner.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import socket
import struct
import sys
import threading
import traceback
from collections import deque

HEADER = struct.Struct("!IcQ")
#: parent -> worker
OP_INIT, OP_RUN, OP_CANCEL, OP_STOP = b"I", b"R", b"C", b"S"
#: worker -> parent
OP_READY, OP_OK, OP_ERR, OP_CANCELLED = b"H", b"K", b"E", b"X"



def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


class _Channel:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.frames: deque[tuple[bytes, int, bytes]] = deque()
        self._send_lock = threading.Lock()

    def send(self, op: bytes, token: int, payload: bytes = b"") -> None:
        with self._send_lock:
            self.sock.sendall(HEADER.pack(len(payload), op, token) + payload)

    def fill(self, block: bool) -> None:
        """Read what is waiting (or wait for something when ``block``); split frames."""
        if block:
            select.select([self.sock], [], [])
        while True:
            try:
                chunk = self.sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            if not chunk:
                os._exit(0)  # parent closed the channel: nothing left to do
            self.buf += chunk
            if len(chunk) < (1 << 20):
                break
        while len(self.buf) >= HEADER.size:
            size, op, token = HEADER.unpack_from(self.buf)
            end = HEADER.size + size
            if len(self.buf) < end:
                break
            self.frames.append((op, token, bytes(self.buf[HEADER.size:end])))
            del self.buf[:end]


def error_wire(exc: BaseException, *, retryable: bool = True, message: str | None = None,
               tb: str | None = None) -> list[object]:
    """An exception in the layout of ``asyncjobs.model.ErrorInfo.to_wire`` (this module
    imports nothing of asyncjobs, so the layout is written out here too)."""
    if tb is None:
        tb = "".join(traceback.format_exception(exc))
    return [type(exc).__name__, str(exc) if message is None else message, tb, False,
            retryable, None, f"pid {os.getpid()}"]


def _error(exc: BaseException, *, retryable: bool = True) -> bytes:
    return pickle.dumps(error_wire(exc, retryable=retryable))


def _run(payload: bytes) -> tuple[bytes, bytes]:
    try:
        fn, args, kwargs = pickle.loads(payload)
    except BaseException as exc:  # noqa: BLE001 - report, never die, on a bad payload
        return OP_ERR, _error(exc, retryable=False)
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - SystemExit and friends fail the job too
        return OP_ERR, _error(exc)
    try:
        return OP_OK, pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException as exc:  # noqa: BLE001
        msg = f"the job's result could not be pickled: {exc}"
        return OP_ERR, pickle.dumps(error_wire(exc, retryable=False, message=msg, tb=""))


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fd, parent_pid = int(sys.argv[1]), int(sys.argv[2])
    _die_with_parent(parent_pid)
    chan = _Channel(socket.socket(fileno=fd))
    chan.sock.setblocking(True)

    while not chan.frames:
        chan.fill(block=True)
    op, _, payload = chan.frames.popleft()
    if op != OP_INIT:
        os._exit(3)
    try:
        import multiprocessing.spawn

        # same preparation as multiprocessing's spawn: sys.path, cwd, and the parent's
        # __main__ re-imported as __mp_main__, so functions defined there unpickle
        multiprocessing.spawn.prepare(pickle.loads(payload))
    except BaseException as exc:  # noqa: BLE001
        chan.send(OP_ERR, 0, _error(exc, retryable=False))
        os._exit(4)
    chan.send(OP_READY, os.getpid())

    pending: deque[tuple[int, bytes]] = deque()
    ready = threading.Condition()

    def read_frames() -> None:
        while True:
            chan.fill(block=True)
            with ready:
                while chan.frames:
                    op, token, payload = chan.frames.popleft()
                    if op == OP_RUN:
                        pending.append((token, payload))
                    elif op == OP_CANCEL:
                        for i, (t, _) in enumerate(pending):
                            if t == token:
                                del pending[i]
                                chan.send(OP_CANCELLED, token)
                                break
                    elif op == OP_STOP:
                        os._exit(0)
                ready.notify()

    threading.Thread(target=read_frames, name="asyncjobs-reader", daemon=True).start()
    while True:
        with ready:
            while not pending:
                ready.wait()
            token, payload = pending.popleft()
        op, out = _run(payload)
        # answered at once, never batched: if a later job kills this process, every
        # earlier answer has been sent, so the parent blames the right job (rule 1)
        chan.send(op, token, out)


if __name__ == "__main__":
    main()
