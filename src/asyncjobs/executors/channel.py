"""The pool's end of a framed socket to a worker or template process, read and written
on the event loop without a stream, a task or an await.

Why not asyncio streams: before the pool kills a worker it must read what the worker
has already sent (the answer of the very job it means to stop may be waiting), and a
stream cannot be read to the bottom without awaiting. Here ``drain()`` does it at once,
from any callback, on asyncio's loop and on uvloop alike (``add_reader``/``add_writer``).

Frames are ``HEADER`` (payload length, op, token) then the payload, as in
``_worker_main``. Rules:

1. Frames are handed to ``on_frame`` one at a time, in order, each taken off the buffer
   before its handler runs: a handler may call ``drain()`` again (it goes on where the
   outer call stopped) and no frame is handled twice or skipped.
2. ``on_eof`` is called once, after every frame that arrived before the end of the
   stream was handled; nothing is handed on after it.
3. Frames sent in one loop iteration go out in one write; what the socket will not take
   now waits for it to be writable. File descriptors (``SCM_RIGHTS``) travel with the
   first byte of the frame they were sent with, in order with every other frame.
"""

from __future__ import annotations

import array
import socket
from collections import deque
from typing import TYPE_CHECKING

from ._worker_main import HEADER

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Sequence

READ_CHUNK = 1 << 18


class Channel:
    """One end of a socketpair, framed.

    :param sock: the pool's end; made non-blocking, and owned (closed) by the channel
    :param on_frame: ``(op, token, payload)`` for each frame received
    :param on_eof: called once when the peer's end is closed (the process has exited,
        or closed it)
    """

    __slots__ = ("sock", "fd", "loop", "on_frame", "on_eof", "inbuf", "out", "closed",
                 "_eof_seen", "_eof_told", "_flush_due", "_writing")

    def __init__(
        self, sock: socket.socket, loop: asyncio.AbstractEventLoop,
        on_frame: Callable[[bytes, int, bytes], None], on_eof: Callable[[], None],
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self.loop = loop
        self.on_frame = on_frame
        self.on_eof = on_eof
        self.inbuf = bytearray()
        #: what waits to be written: [bytes, the sockets whose fds go with its first byte]
        self.out: deque[tuple[bytearray, list[socket.socket]]] = deque()
        self.closed = False
        self._eof_seen = False
        self._eof_told = False
        self._flush_due = False
        self._writing = False
        loop.add_reader(self.fd, self.drain)

    # -- in -------------------------------------------------------------------------------

    def drain(self) -> None:
        """Read what has arrived, without blocking, and hand on every whole frame; at the
        end of the stream, call ``on_eof``."""
        if self.closed:
            return
        if not self._eof_seen:
            self._read()
        buf = self.inbuf
        size_of = HEADER.size
        while not self.closed and len(buf) >= size_of:
            size, op, token = HEADER.unpack_from(buf)
            end = size_of + size
            if len(buf) < end:
                break
            payload = bytes(buf[size_of:end])
            del buf[:end]
            self.on_frame(op, token, payload)
        if self._eof_seen and not self._eof_told and not self.closed:
            self._eof_told = True
            self.close()
            self.on_eof()

    def _read(self) -> None:
        recv = self.sock.recv
        while True:
            try:
                chunk = recv(READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # reset by a killed peer: the same as its end
                chunk = b""
            if not chunk:
                self._eof_seen = True
                return
            self.inbuf += chunk
            if len(chunk) < READ_CHUNK:
                return

    # -- out ------------------------------------------------------------------------------

    def send(self, op: bytes, token: int, payload: bytes = b"",
             fds: Sequence[socket.socket] = ()) -> None:
        """Queue a frame for this loop iteration's write. ``fds``: sockets whose file
        descriptors travel with it; the channel closes them once they are sent."""
        if self.closed:
            for s in fds:
                s.close()
            return
        frame = HEADER.pack(len(payload), op, token) + payload
        if fds or not self.out:  # fds go with the first byte of a write of their own
            self.out.append((bytearray(frame), list(fds)))
        else:
            self.out[-1][0].extend(frame)
        if not self._flush_due and not self._writing:
            self._flush_due = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what is queued, as far as the socket takes it now."""
        self._flush_due = False
        out = self.out
        while out and not self.closed:
            data, fds = out[0]
            try:
                if fds:
                    rights = array.array("i", [s.fileno() for s in fds])
                    n = self.sock.sendmsg(
                        [data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
                else:
                    n = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # the peer is gone; its end of stream will tell
                self._drop_output()
                return
            if fds:
                for s in fds:
                    s.close()
                fds.clear()
            del data[:n]
            if data:
                break
            out.popleft()
        want_writer = bool(out) and not self.closed
        if want_writer and not self._writing:
            self._writing = True
            self.loop.add_writer(self.fd, self.flush)
        elif not want_writer and self._writing:
            self._writing = False
            self.loop.remove_writer(self.fd)

    def _drop_output(self) -> None:
        for _, fds in self.out:
            for s in fds:
                s.close()
        self.out.clear()
        if self._writing:
            self._writing = False
            self.loop.remove_writer(self.fd)

    def close(self) -> None:
        """Stop reading and writing, and close the socket (what is unsent is dropped)."""
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.fd)
        self._drop_output()
        self.sock.close()
