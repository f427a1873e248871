"""Frames: a 4-byte big-endian length, then that many bytes of body.

``FrameBuffer`` splits an incoming byte stream, cut anywhere, into frame bodies; its
caller checks each length against its limit before a byte of that body is taken.
``Sealer`` and ``Opener`` protect the session once the handshake is done: a sealed body
is ``seq (8 bytes) | mac (16 bytes) | payload``, where ``mac`` is HMAC-SHA256 over
``seq | payload`` with the direction's session key, cut to 16 bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from .errors import LocalProtocolError

#: the length prefix: the body's size in bytes, not counting the prefix itself
PREFIX = struct.Struct(">I")
#: the largest frame body a connection accepts unless told otherwise (16 MiB)
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
#: the least ``max_frame_bytes`` a connection may be given: room for a modest batch
MIN_FRAME_BYTES = 1024
#: what a 4-byte prefix can say
LARGEST_FRAME_BYTES = 2**32 - 1
SEQ = struct.Struct(">Q")
MAC_BYTES = 16
#: what session protection adds to every body: sequence number and MAC
SEAL_BYTES = SEQ.size + MAC_BYTES
#: when the consumed part of the buffer passes this, it is dropped
_COMPACT_BYTES = 64 * 1024


def frame(body: bytes) -> bytes:
    """``body`` with its length prefix."""
    return PREFIX.pack(len(body)) + body


class FrameBuffer:
    """Received bytes not yet taken as frames.

    It holds the complete frames not yet taken plus the start of one more. ``feed``
    reads the prefix of every frame as it arrives: once one says more than
    ``max_frame_bytes``, nothing after that prefix is kept, so an oversized frame costs
    four bytes of memory, never its claimed size. ``peek_length`` then shows that prefix
    to the caller, who refuses it.
    """

    __slots__ = ("_buf", "_pos", "_scan", "_max", "_stopped", "eof")

    def __init__(self, max_frame_bytes: int) -> None:
        self._buf = bytearray()
        #: where the next frame (its prefix) starts
        self._pos = 0
        #: where the first frame whose body is not complete starts
        self._scan = 0
        self._max = max_frame_bytes
        #: a prefix over the limit was seen: later bytes are dropped
        self._stopped = False
        #: the peer closed its side of the stream
        self.eof = False

    @property
    def buffered_bytes(self) -> int:
        """Bytes received and not yet taken."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        """Append received bytes (any split of the stream)."""
        if self._stopped:
            return
        buf = self._buf
        buf += data
        while len(buf) - self._scan >= PREFIX.size:
            size = PREFIX.unpack_from(buf, self._scan)[0]
            if size > self._max:
                del buf[self._scan + PREFIX.size:]
                self._stopped = True
                return
            end = self._scan + PREFIX.size + size
            if end > len(buf):
                return
            self._scan = end

    def head(self, count: int) -> bytes:
        """Up to ``count`` bytes from the start of the next frame, prefix included."""
        return bytes(self._buf[self._pos:self._pos + count])

    def peek_length(self) -> int | None:
        """The next frame's length prefix, or None until its four bytes are here."""
        if len(self._buf) - self._pos < PREFIX.size:
            return None
        size: int = PREFIX.unpack_from(self._buf, self._pos)[0]
        return size

    def take(self, size: int) -> bytes | None:
        """The next frame's body (whose prefix said ``size``), or None until all of it
        is here."""
        start = self._pos + PREFIX.size
        end = start + size
        buf = self._buf
        if end > len(buf):
            return None
        body = bytes(buf[start:end])
        if end == len(buf):
            buf.clear()
            self._pos = self._scan = 0
        elif end > _COMPACT_BYTES and end > len(buf) // 2:
            del buf[:end]
            self._pos = 0
            self._scan -= end
        else:
            self._pos = end
        return body

    def clear(self) -> None:
        """Forget everything: the connection failed."""
        self._buf = bytearray()
        self._pos = self._scan = 0
        self._stopped = True


class Sealer:
    """Numbers and MACs our frames after the handshake.

    :param key: this direction's session key
    """

    __slots__ = ("_mac", "seq")

    def __init__(self, key: bytes) -> None:
        self._mac = hmac.new(key, digestmod=hashlib.sha256)
        #: the number the next frame gets
        self.seq = 0

    def seal(self, payload: bytes) -> bytes:
        """A whole frame (prefix included) carrying ``payload``."""
        seq = SEQ.pack(self.seq)
        mac = self._mac.copy()
        mac.update(seq)
        mac.update(payload)
        self.seq += 1
        return b"".join((PREFIX.pack(SEAL_BYTES + len(payload)), seq,
                         mac.digest()[:MAC_BYTES], payload))


class Opener:
    """Checks the MAC and number of each frame the peer sends after the handshake.

    :param key: the peer's direction's session key
    """

    __slots__ = ("_mac", "seq")

    def __init__(self, key: bytes) -> None:
        self._mac = hmac.new(key, digestmod=hashlib.sha256)
        #: the number the next frame must carry
        self.seq = 0

    def open(self, body: bytes) -> memoryview:
        """The payload of a sealed body.

        :raises LocalProtocolError: (the peer's fault; the connection converts it) for a
            body too short, a MAC that does not match, or a number out of sequence
        """
        if len(body) <= SEAL_BYTES:
            raise LocalProtocolError(f"a frame of {len(body)} bytes is too short to carry a "
                                     f"sequence number, a MAC and a message")
        view = memoryview(body)
        mac = self._mac.copy()
        mac.update(view[:SEQ.size])
        mac.update(view[SEAL_BYTES:])
        if not hmac.compare_digest(mac.digest()[:MAC_BYTES], view[SEQ.size:SEAL_BYTES]):
            raise LocalProtocolError("a frame failed its integrity check (its MAC does not "
                                     "match): it was altered on the way, or is not from our peer")
        seq = SEQ.unpack_from(body)[0]
        if seq != self.seq:
            raise LocalProtocolError(f"frame number {seq} arrived where {self.seq} was due: "
                                     "a replayed or reordered frame")
        self.seq += 1
        return view[SEAL_BYTES:]
