"""A CPU worker process. Most are forked by the pool's template process
(``_template_main``), which calls ``serve``; when there is no template, this file is run
as a script by path (not ``-m``) and ``main`` prepares the process first, as the template
does. Either way it imports nothing of asyncjobs: start-up stays fast and a worker never
loads the event-loop half of the package.

How this works: the pool sends frames over a socketpair. Each frame is a header ``!IcQ``
(payload length, op, token) and a payload. The worker says ``H`` (ready, with its PID)
first, then runs jobs one at a time, in the order received, and answers each with
exactly one frame.

Rules:

1. A reader thread takes frames while the main thread runs jobs, so a ``C`` (cancel)
   for a job not yet started removes it at once, even while a long job runs: answered
   ``X``, never run. A job already taken by the main thread is answered with its result.
2. Payloads are unpickled only when the job is about to run, so a job whose function
   cannot be imported fails alone, with its own error.
3. The worker ignores SIGINT (the parent decides what Ctrl-C means) and asks the kernel
   to SIGKILL it when its parent dies, so no worker outlives a killed runner.
4. The modules that unpickling a job imported are named to the pool (``M``, sent before
   the job's answer), which has its template import them too: the next worker forked
   has them already.
5. A job whose function lives in the main module, but is missing when that module is
   imported as ``__mp_main__`` (it is defined under the ``__name__ == "__main__"``
   guard), fails with an error that says so and what to do.
"""

from __future__ import annotations

import os
import pickle
import re
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
OP_READY, OP_OK, OP_ERR, OP_CANCELLED, OP_IMPORTED = b"H", b"K", b"E", b"X", b"M"

#: pickle's message for a global it cannot find in the (re-imported) main module
_MISSING_IN_MAIN = re.compile(
    r"Can't get attribute '([^']+)' on <module '(?:__main__|__mp_main__)'(?: from '([^']*)')?>"
)


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (rule 3)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def split_frames(buf: bytearray, frames: deque[tuple[bytes, int, bytes]]) -> None:
    """Move every whole frame at the start of ``buf`` to ``frames`` (the template, which
    reads the same framing, uses this too)."""
    while len(buf) >= HEADER.size:
        size, op, token = HEADER.unpack_from(buf)
        end = HEADER.size + size
        if len(buf) < end:
            break
        frames.append((op, token, bytes(buf[HEADER.size:end])))
        del buf[:end]


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
        split_frames(self.buf, self.frames)


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


def _missing_in_main(exc: BaseException) -> bytes | None:
    """Rule 5: the error for a job function that the re-imported main module lacks."""
    found = _MISSING_IN_MAIN.search(str(exc)) if isinstance(exc, AttributeError) else None
    if found is None:
        return None
    name, path = found.group(1), found.group(2) or "the main module"
    msg = (
        f"{name!r} is not defined in {path} when cpu worker processes import it: they "
        "import the main module under the name '__mp_main__', as multiprocessing's spawn "
        'does, so nothing under `if __name__ == "__main__":` runs there. Define '
        f"{name!r} at the top level of the module, outside that block (or in a module of "
        'its own), and keep under `if __name__ == "__main__":` only the code that starts '
        "the Runner"
    )
    return pickle.dumps(error_wire(exc, retryable=False, message=msg))


class _Imports:
    """Rule 4: the modules that appeared while a job was unpickled."""

    def __init__(self) -> None:
        self.known = set(sys.modules)

    def new(self) -> list[str]:
        if len(sys.modules) == len(self.known):
            return []
        names = [n for n in list(sys.modules) if n not in self.known]
        self.known.update(names)
        return [n for n in names if n not in ("__main__", "__mp_main__")]


def _run(payload: bytes, chan: _Channel, imports: _Imports) -> tuple[bytes, bytes]:
    try:
        fn, args, kwargs = pickle.loads(payload)
    except BaseException as exc:  # noqa: BLE001 - report, never die, on a bad payload
        return OP_ERR, _missing_in_main(exc) or _error(exc, retryable=False)
    finally:
        if names := imports.new():
            chan.send(OP_IMPORTED, 0, "\n".join(names).encode())
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - SystemExit and friends fail the job too
        return OP_ERR, _error(exc)
    try:
        return OP_OK, pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException as exc:  # noqa: BLE001
        msg = f"the job's result could not be pickled: {exc}"
        return OP_ERR, pickle.dumps(error_wire(exc, retryable=False, message=msg, tb=""))


def prepare(payload: bytes) -> None:
    """Prepare this process as multiprocessing's spawn prepares a child: ``sys.path``,
    the working directory, and the parent's main module re-imported as ``__mp_main__``,
    so that functions defined there unpickle. Flagged as spawn flags it, so that a main
    module which starts a Runner when imported is caught (the CpuPool checks)."""
    import multiprocessing.process
    import multiprocessing.spawn

    me = multiprocessing.process.current_process()
    me._inheriting = True  # type: ignore[attr-defined]
    try:
        multiprocessing.spawn.prepare(pickle.loads(payload))
    finally:
        del me._inheriting  # type: ignore[attr-defined]


def channel(sock: socket.socket) -> _Channel:
    sock.setblocking(True)
    return _Channel(sock)


def serve(chan: _Channel) -> None:
    """Say ready, then run what the pool sends until it says stop or goes away. Never
    returns: the process ends in here."""
    chan.send(OP_READY, os.getpid())
    imports = _Imports()
    pending: deque[tuple[int, bytes]] = deque()
    ready = threading.Condition()

    def read_frames() -> None:
        while True:
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
            chan.fill(block=True)

    threading.Thread(target=read_frames, name="asyncjobs-reader", daemon=True).start()
    while True:
        with ready:
            while not pending:
                ready.wait()
            token, payload = pending.popleft()
        op, out = _run(payload, chan, imports)
        # answered at once, never batched: if a later job kills this process, every
        # earlier answer has been sent, so the parent blames the right job (rule 1)
        chan.send(op, token, out)


def main() -> None:
    """A worker started as a fresh interpreter: ``_worker_main.py FD PARENT_PID``; the
    pool's first frame (``I``) carries the preparation data."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fd, parent_pid = int(sys.argv[1]), int(sys.argv[2])
    die_with_parent(parent_pid)
    chan = channel(socket.socket(fileno=fd))
    while not chan.frames:
        chan.fill(block=True)
    op, _, payload = chan.frames.popleft()
    if op != OP_INIT:
        os._exit(3)
    try:
        prepare(payload)
    except BaseException as exc:  # noqa: BLE001
        chan.send(OP_ERR, 0, _error(exc, retryable=False))
        os._exit(4)
    serve(chan)


if __name__ == "__main__":
    main()
