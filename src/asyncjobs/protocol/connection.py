"""``Connection``: one side of a link, as bytes in and events out. No socket, no timer.

How this works
==============

The transport owns the stream; the connection only converts. On creating a connection,
write ``data_to_send()`` (our hello). Then, for every chunk read::

    conn.receive_data(chunk)                     # b"" when the peer closed
    while (event := conn.next_event()) is not NEED_DATA:
        handle(event)                            # the peer's Hello first, then messages
    stream.write(conn.data_to_send())            # our proof, during the handshake

and to send, ``stream.write(conn.send(msg))`` or ``conn.send_many(msgs)`` for several
messages in one write.

Rule 1: the first event is always the peer's ``Hello``, returned once its proof has
        verified: the peer holds the secret, speaks our version, and its role may talk
        to ours. Before it, ``send`` refuses everything.
Rule 2: ``receive_data`` and ``next_event`` are the one place bytes enter. Checks shared
        with the sending side raise ``LocalProtocolError``; there it becomes
        ``RemoteProtocolError``, the connection moves to ``State.ERROR`` and stays there.
        Any other exception from them is a bug of ours.
Rule 3: a frame's length prefix is checked against the limit of the state (a hello, a
        proof, then ``max_frame_bytes``) as soon as its four bytes are here, before any
        of its body is kept.
Rule 4: ``send`` checks everything (state, role, encoding, the peer's frame limit) before
        it numbers a frame: a ``LocalProtocolError`` from it leaves the connection as it
        was, so one job whose arguments cannot be encoded spoils nothing else.
Rule 5: after a ``RemoteProtocolError``, ``data_to_send()`` still returns what is owed
        (our proof, so a peer with the wrong secret learns it too) and ``send`` still takes
        an ``Error`` when the session keys exist, to tell the peer why before closing.
"""

from __future__ import annotations

import hmac
import secrets as _secrets
from enum import Enum
from typing import TYPE_CHECKING, Final, TypeAlias

from .errors import (
    AuthenticationFailed,
    ConnectionNotOpen,
    FrameTooLarge,
    LocalProtocolError,
    RemoteProtocolError,
)
from .framing import (
    DEFAULT_MAX_FRAME_BYTES,
    LARGEST_FRAME_BYTES,
    MIN_FRAME_BYTES,
    SEAL_BYTES,
    FrameBuffer,
    Opener,
    Sealer,
    frame,
)
from .handshake import (
    HELLO_HEAD_BYTES,
    HELLO_MAX_BYTES,
    NONCE_BYTES,
    PROOF_BYTES,
    Hello,
    Role,
    check_peer,
    describe_stranger,
    proof,
    session_key,
)
from .messages import Error, Goodbye, Message, check_direction, decode, encode
from .state import HANDSHAKE_STATES, RECEIVE_STATES, SEND_STATES, State, Trigger, transition

if TYPE_CHECKING:
    from collections.abc import Iterable


class Sentinel(Enum):
    """Values ``next_event`` returns that are not events."""

    #: nothing complete is buffered: read more and call ``receive_data``
    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return self.value


NEED_DATA: Final = Sentinel.NEED_DATA
#: what ``next_event`` returns besides ``NEED_DATA``
Event: TypeAlias = Hello | Message


class Connection:
    """One side of an asyncjobs link, sans IO.

    :param role: what this side is
    :param secret: the cluster's shared secret (``b""`` when there is none: the
        handshake then proves nothing, which only a loopback listener may accept)
    :param our_nonce: this connection's nonce, ``NONCE_BYTES`` long; default fresh
        random bytes (give one only in tests: a nonce must never repeat)
    :param max_frame_bytes: the largest frame body we accept; the peer learns it
    :raises ValueError: for a nonce of the wrong length or a limit out of range
    :raises TypeError: for a secret or nonce that is not bytes
    """

    __slots__ = ("role", "our_hello", "peer", "state", "_secret", "_frames", "_outbox",
                 "_our_bytes", "_their_bytes", "_their_hello", "_sealer", "_opener",
                 "_error")

    def __init__(
        self,
        *,
        role: Role,
        secret: bytes,
        our_nonce: bytes | None = None,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        if not isinstance(secret, bytes):
            raise TypeError(f"secret must be bytes, not {type(secret).__name__}")
        if our_nonce is None:
            our_nonce = _secrets.token_bytes(NONCE_BYTES)
        elif not isinstance(our_nonce, bytes):
            raise TypeError(f"our_nonce must be bytes, not {type(our_nonce).__name__}")
        if len(our_nonce) != NONCE_BYTES:
            raise ValueError(f"our_nonce must be {NONCE_BYTES} bytes, not {len(our_nonce)}")
        if not MIN_FRAME_BYTES <= max_frame_bytes <= LARGEST_FRAME_BYTES:
            raise ValueError(f"max_frame_bytes must be from {MIN_FRAME_BYTES} to "
                             f"{LARGEST_FRAME_BYTES}, not {max_frame_bytes}")
        self.role = Role(role)
        #: our hello, as sent
        self.our_hello = Hello(self.role, our_nonce, max_frame_bytes)
        #: the peer's hello, once its proof verified (None before)
        self.peer: Hello | None = None
        self.state = State.AWAIT_HELLO
        self._secret = secret
        self._frames = FrameBuffer(max_frame_bytes)
        self._our_bytes = self.our_hello.to_bytes()
        self._outbox = bytearray(frame(self._our_bytes))
        self._their_bytes = b""
        self._their_hello: Hello | None = None
        self._sealer: Sealer | None = None
        self._opener: Opener | None = None
        self._error: RemoteProtocolError | None = None

    def __repr__(self) -> str:
        peer = self.peer.role if self.peer else "?"
        return f"<Connection {self.role} -> {peer} {self.state.name}>"

    @property
    def buffered_bytes(self) -> int:
        """Bytes received and not yet turned into events (never more than the frames
        received whole plus ``max_frame_bytes`` and a prefix)."""
        return self._frames.buffered_bytes

    def data_to_send(self) -> bytes:
        """Handshake bytes the connection produced itself (our hello, then our proof);
        empty once they were taken. Write them after creating the connection and after
        every ``next_event`` loop, even one that raised."""
        data = bytes(self._outbox)
        self._outbox.clear()
        return data

    # -- receiving ----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Add bytes read from the stream; ``b""`` means the peer closed its side. Nothing
        is parsed until ``next_event``; once the connection failed, bytes are dropped.

        :raises LocalProtocolError: for data after ``b""``
        """
        if self.state is State.ERROR:
            return  # the link is to be closed; keep nothing
        if self._frames.eof:
            if data:
                raise LocalProtocolError("data received after the end of the stream")
            return
        if data:
            self._frames.feed(data)
        else:
            self._frames.eof = True

    def next_event(self) -> Event | Sentinel:
        """The next event (the peer's ``Hello``, then messages) or ``NEED_DATA``.

        :raises RemoteProtocolError: the peer sent something invalid (its subclasses
            ``AuthenticationFailed`` and ``VersionMismatch`` say which); the connection is
            now in ``State.ERROR``: close it
        """
        if self._error is not None:
            raise RemoteProtocolError(f"the connection failed earlier: {self._error}")
        try:
            return self._next_event()
        except LocalProtocolError as exc:
            error = RemoteProtocolError(str(exc))
            self._fail(error)
            raise error from exc
        except RemoteProtocolError as exc:
            self._fail(exc)
            raise

    def _fail(self, error: RemoteProtocolError) -> None:
        self.state = transition(self.state, Trigger.FAILED)
        self._error = error
        self._frames.clear()

    def _next_event(self) -> Event | Sentinel:
        frames = self._frames
        while True:
            size = frames.peek_length()
            if size is not None:
                self._check_length(size)
                body = frames.take(size)
            else:
                body = None
            if body is None:
                return self._need_data()
            if self.state is State.AWAIT_HELLO:
                self._read_hello(body)
            elif self.state is State.AWAIT_PROOF:
                return self._read_proof(body)
            else:
                assert self._opener is not None and self._their_hello is not None
                msg = decode(self._opener.open(body), self._their_hello.role, self.role)
                if type(msg) is Goodbye:
                    self.state = transition(self.state, Trigger.GOODBYE_RECEIVED)
                return msg

    def _check_length(self, size: int) -> None:
        state = self.state
        if state is State.AWAIT_HELLO:
            if not HELLO_HEAD_BYTES <= size <= HELLO_MAX_BYTES:
                raise LocalProtocolError(describe_stranger(self._frames.head(16)))
        elif state is State.AWAIT_PROOF:
            if size != PROOF_BYTES:
                raise LocalProtocolError(f"expected the peer's {PROOF_BYTES}-byte handshake "
                                         f"proof, got a frame of {size} bytes")
        elif state not in RECEIVE_STATES:
            raise LocalProtocolError(f"the peer sent a frame after its Goodbye "
                                     f"(connection {state.name})")
        elif size > self.our_hello.max_frame_bytes:
            raise LocalProtocolError(f"the peer sent a frame of {size} bytes; we accept at "
                                     f"most {self.our_hello.max_frame_bytes} "
                                     "(max_frame_bytes)")

    def _need_data(self) -> Sentinel:
        frames = self._frames
        if frames.eof:
            if frames.buffered_bytes:
                raise LocalProtocolError("the peer closed the connection in the middle of "
                                         f"a frame ({frames.buffered_bytes} bytes of it came)")
            if self.state in HANDSHAKE_STATES:
                raise LocalProtocolError(
                    "the peer closed the connection during the handshake: it may not share "
                    "our secret, speak our version, or be an asyncjobs peer at all")
            self.state = transition(self.state, Trigger.END_OF_STREAM)
        return NEED_DATA

    def _read_hello(self, body: bytes) -> None:
        theirs = Hello.from_bytes(body, min_frame_bytes=MIN_FRAME_BYTES)
        check_peer(self.our_hello, theirs)
        self._their_hello = theirs
        self._their_bytes = body
        self._outbox += frame(proof(self._secret, self._our_bytes, body))
        self.state = transition(self.state, Trigger.HELLO_RECEIVED)

    def _read_proof(self, body: bytes) -> Hello:
        expected = proof(self._secret, self._their_bytes, self._our_bytes)
        if not hmac.compare_digest(body, expected):
            raise AuthenticationFailed()
        assert self._their_hello is not None
        self._sealer = Sealer(session_key(self._secret, self._our_bytes, self._their_bytes))
        self._opener = Opener(session_key(self._secret, self._their_bytes, self._our_bytes))
        self.state = transition(self.state, Trigger.PROOF_VERIFIED)
        self.peer = self._their_hello
        return self._their_hello

    # -- sending ------------------------------------------------------------------------

    def send(self, msg: Message) -> bytes:
        """The frame that carries ``msg``: write it to the stream.

        :raises UnencodableValue: a job's arguments, result or params cannot be msgpack;
            nothing was sent
        :raises FrameTooLarge: the message is larger than the peer accepts; nothing was
            sent: split the batch
        :raises LocalProtocolError: the message cannot be sent now (handshake not done,
            after our Goodbye) or by our role to the peer's
        """
        payload = self._payload(msg)
        assert self._sealer is not None
        data = self._sealer.seal(payload)
        if type(msg) is Goodbye:
            self.state = transition(self.state, Trigger.GOODBYE_SENT)
        return data

    def send_many(self, msgs: Iterable[Message]) -> bytes:
        """The frames that carry ``msgs``, in order, as one write. All are checked first:
        when one cannot be sent, none is.

        :raises: as ``send``; also ``LocalProtocolError`` for a message after a Goodbye
        """
        msgs = list(msgs)
        for msg in msgs[:-1]:
            if type(msg) is Goodbye:
                raise LocalProtocolError("nothing may follow a Goodbye")
        payloads = [self._payload(msg) for msg in msgs]
        assert self._sealer is not None or not payloads
        data = b"".join(self._sealer.seal(p) for p in payloads) if self._sealer else b""
        if msgs and type(msgs[-1]) is Goodbye:
            self.state = transition(self.state, Trigger.GOODBYE_SENT)
        return data

    def _payload(self, msg: Message) -> bytes:
        name = type(msg).__name__
        if isinstance(msg, Hello):
            raise LocalProtocolError("the connection sends its Hello itself")
        state = self.state
        if state not in SEND_STATES and not (
            state is State.ERROR and type(msg) is Error and self._sealer is not None
        ):
            if state in HANDSHAKE_STATES:
                why = "the handshake is not done: wait for the peer's Hello event"
            elif state is State.ERROR:
                why = "the connection failed: only an Error may still be sent"
            else:
                why = "nothing may follow our Goodbye, or the end of the stream"
            raise ConnectionNotOpen(f"cannot send {name} in state {state.name}: {why}")
        assert self._their_hello is not None
        check_direction(type(msg), self.role, self._their_hello.role)
        payload = encode(msg)
        size = SEAL_BYTES + len(payload)
        if size > self._their_hello.max_frame_bytes:
            raise FrameTooLarge(name, size, self._their_hello.max_frame_bytes)
        return payload

