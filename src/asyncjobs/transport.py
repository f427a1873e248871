"""TCP and TLS links that pump bytes through the sans-IO ``protocol.Connection``.

How this works:

1. ``connect()`` opens a stream, ``serve()`` accepts them; both run the handshake under
   one deadline (``handshake_timeout_s``) and hand back a ``Link`` only once the peer's
   ``Hello`` arrived, i.e. once it proved it holds the secret.
2. ``Connection.data_to_send()`` is written after every ``next_event`` loop, even one
   that raised, so a peer with the wrong secret reads "authentication failed" too.
3. At most ``max_unauthenticated`` accepted streams are in their handshake at once; one
   more closes the oldest at once. Idle sockets cannot exhaust a listener, and a real
   peer (whose handshake takes one round trip) still gets in while they pile up.
4. ``Link.send`` encodes at once (errors reach the caller, nothing is queued) and queues
   the frame. The first sender of a loop iteration becomes the flusher: it yields once,
   then writes everything queued meanwhile in one write. A sender waits while more than
   ``max_queued_bytes`` are queued (writing them itself when nobody else is): a peer
   that does not read gives back-pressure.
5. A link owns no task: reading happens in ``receive()``, writing in the flushing
   ``send``. Errors keep anyio's meanings: closed by us ``ClosedResourceError``, broken
   from outside (including a peer that broke the protocol) ``BrokenResourceError``, ended
   by the peer ``EndOfStream``.
"""

from __future__ import annotations

import logging
import ssl
from collections import deque
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from anyio.streams.tls import TLSStream

from .errors import ClusterConfigError, ConnectionFailed, HandshakeFailed, HandshakeTimeout
from .protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    NEED_DATA,
    Connection,
    ConnectionNotOpen,
    Error,
    Goodbye,
    Hello,
    LocalProtocolError,
    Message,
    RemoteProtocolError,
    Role,
    State,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable
    from pathlib import Path

log = logging.getLogger(__name__)

#: bytes read from the stream at once
READ_BYTES = 65536
#: default bound on encoded bytes waiting to be written, per link
DEFAULT_MAX_QUEUED_BYTES = 4 * 1024 * 1024
#: how long ``aclose`` waits to write its ``Goodbye`` to a peer that does not read
CLOSE_TIMEOUT_S = 1.0


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Link:
    """An authenticated link with a peer. Made by ``connect()`` and ``serve()``.

    ``async for msg in link`` reads messages until the peer ends the link.
    """

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        conn: Connection,
        *,
        address: str,
        max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
    ) -> None:
        if conn.peer is None:
            raise LocalProtocolError("a Link needs a connection past its handshake")
        #: the peer's hello: its authenticated role and frame limit
        self.peer: Hello = conn.peer
        #: ``"host:port"`` of the peer
        self.address = address
        #: how many writes went to the stream (a test and metrics counter)
        self.writes = 0
        self._stream = stream
        self._conn = conn
        self._max_queued_bytes = max_queued_bytes
        self._queue: list[bytes] = []
        self._queued_bytes = 0
        self._space = anyio.Event()
        self._flushing = False
        self._events: deque[Message] = deque()
        self._receiving = False
        self._closed = False
        self._broken: BaseException | None = None
        self._remote_error: RemoteProtocolError | None = None
        self._eof = False

    def __repr__(self) -> str:
        return f"<Link {self._conn.role} -> {self.peer.role} {self.address}>"

    @property
    def queued_bytes(self) -> int:
        """Encoded bytes waiting to be written (the write in progress included)."""
        return self._queued_bytes

    # -- sending ------------------------------------------------------------------------

    def _check_can_send(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        if self._broken is not None:
            raise anyio.BrokenResourceError(f"the link with {self.address} is broken: "
                                            f"{self._broken}") from self._broken

    async def send(self, msg: Message) -> None:
        """Send one message; messages sent in the same loop iteration go out in one write.

        :raises LocalProtocolError: the message may not be sent (``FrameTooLarge``,
            ``UnencodableValue``, a wrong direction); nothing was queued
        :raises anyio.ClosedResourceError: we closed the link
        :raises anyio.BrokenResourceError: the link broke
        """
        await self.send_many((msg,))

    async def send_many(self, msgs: Iterable[Message]) -> None:
        """Send several messages, in order, in as few writes as possible.

        Waits while more than ``max_queued_bytes`` wait to be written.

        :raises LocalProtocolError: a message may not be sent; those before it are
            queued, it and those after it are not
        :raises anyio.ClosedResourceError: we closed the link
        :raises anyio.BrokenResourceError: the link broke, or the peer ended it
        """
        for msg in msgs:
            self._check_can_send()
            while self._queued_bytes >= self._max_queued_bytes:
                if self._flushing:
                    await self._space.wait()
                else:  # nobody is writing: our own batch filled the queue, so write it
                    await self._flush()
                self._check_can_send()
            try:
                data = self._conn.send(msg)
            except ConnectionNotOpen as exc:
                # the reader saw the peer end the stream while this sender held messages:
                # the link is lost, not the message wrong (it may go on the next link)
                raise anyio.BrokenResourceError(
                    f"the link with {self.address} has ended: {exc}") from exc
            self._queue.append(data)
            self._queued_bytes += len(data)
        if not self._flushing and self._queue:
            await self._flush()

    async def _flush(self) -> None:
        self._flushing = True
        try:
            await anyio.lowlevel.checkpoint()  # let this iteration's senders queue theirs
            while self._queue and self._broken is None and not self._closed:
                data = b"".join(self._queue)
                self._queue.clear()
                try:
                    await self._stream.send(data)
                except BaseException as exc:
                    # a write cut short (cancelled included) leaves the stream at an
                    # unknown offset: nothing more can be framed on it
                    self._break(exc)
                    raise
                self._queued_bytes -= len(data)
                self._wake_senders()
                self.writes += 1
        finally:
            self._flushing = False

    def _wake_senders(self) -> None:
        self._space.set()
        self._space = anyio.Event()

    def _break(self, exc: BaseException) -> None:
        if self._broken is None and not self._closed:
            self._broken = exc
        self._queue.clear()
        self._queued_bytes = 0
        self._wake_senders()

    # -- receiving ----------------------------------------------------------------------

    async def receive(self) -> Message:
        """The next message from the peer.

        :raises anyio.EndOfStream: the peer ended the link (after its ``Goodbye`` or at a
            frame boundary)
        :raises anyio.ClosedResourceError: we closed the link
        :raises anyio.BrokenResourceError: the link broke, or the peer broke the protocol
            (the protocol's error is the ``__cause__``; the link is then closed)
        :raises anyio.BusyResourceError: another task is already receiving
        """
        if self._receiving:
            raise anyio.BusyResourceError("receiving from")
        self._receiving = True
        try:
            while True:
                if self._events:
                    return self._events.popleft()
                if self._closed:
                    raise anyio.ClosedResourceError
                if self._remote_error is not None:
                    raise anyio.BrokenResourceError(
                        f"{self.address} broke the protocol: {self._remote_error}"
                    ) from self._remote_error
                if self._broken is not None:
                    raise anyio.BrokenResourceError(
                        f"the link with {self.address} is broken: {self._broken}"
                    ) from self._broken
                if self._eof:
                    raise anyio.EndOfStream
                await self._read()
        finally:
            self._receiving = False

    async def _read(self) -> None:
        try:
            chunk = await self._stream.receive(READ_BYTES)
        except anyio.EndOfStream:
            chunk = b""
        except (anyio.BrokenResourceError, OSError, ssl.SSLError) as exc:
            self._break(exc)
            return
        except anyio.ClosedResourceError:
            if not self._closed:
                raise
            return
        self._conn.receive_data(chunk)
        if not await self._take_events():
            return
        if not chunk:
            self._eof = True

    async def _abort(self, exc: RemoteProtocolError) -> None:
        """Tell the peer why (best effort), then close the stream."""
        data = self._conn.data_to_send()
        try:
            data += self._conn.send(Error("protocol", str(exc)))
        except LocalProtocolError:
            pass
        self._break(exc)
        with anyio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
            try:
                await self._stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError,
                    anyio.BusyResourceError, OSError):
                pass
        await anyio.aclose_forcefully(self._stream)

    async def _after_handshake(self) -> None:
        """Take the events that arrived with the peer's proof."""
        await self._take_events()

    async def _take_events(self) -> bool:
        """Move what the connection decoded to the receive queue; False once the peer
        sent something invalid (the link is then aborted)."""
        try:
            while (event := self._conn.next_event()) is not NEED_DATA:
                if not isinstance(event, Hello):
                    self._events.append(event)
        except RemoteProtocolError as exc:
            self._remote_error = exc
            await self._abort(exc)
            return False
        return True

    def __aiter__(self) -> Link:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    # -- closing ------------------------------------------------------------------------

    async def abort(self, reason: str = "aborted") -> None:
        """Close without ``Goodbye``: to the peer the link broke (a client that links
        again this way keeps its session on the coordinator; a goodbye would end it)."""
        self._break(ConnectionAbortedError(reason))
        await self.aclose(reason)

    async def aclose(self, reason: str = "") -> None:
        """Send ``Goodbye`` (best effort, bounded by ``CLOSE_TIMEOUT_S``) and close.

        Idempotent. Other tasks waiting on this link get ``ClosedResourceError``.
        """
        if self._closed:
            return
        healthy = self._broken is None and self._remote_error is None
        self._closed = True
        self._wake_senders()
        with anyio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
            if (healthy and not self._flushing
                    and self._conn.state in (State.OPEN, State.GOT_GOODBYE)):
                try:
                    data = b"".join(self._queue) + self._conn.send(Goodbye(reason))
                    self._queue.clear()
                    await self._stream.send(data)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError,
                        anyio.BusyResourceError, LocalProtocolError, OSError):
                    pass
            await self._stream.aclose()

    async def __aenter__(self) -> Link:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


# -- the handshake ----------------------------------------------------------------------


async def _handshake(stream: anyio.abc.ByteStream, conn: Connection, address: str) -> None:
    """Run the handshake to the peer's ``Hello``; leave later events in ``conn``.

    :raises HandshakeFailed: the peer failed the handshake or closed the stream during it
    """
    await _send_during_handshake(stream, conn.data_to_send(), address)
    while True:
        try:
            chunk = await stream.receive(READ_BYTES)
        except anyio.EndOfStream:
            chunk = b""
        except (anyio.BrokenResourceError, OSError, ssl.SSLError) as exc:
            raise ConnectionFailed(address, f"the stream broke during the handshake: "
                                            f"{exc or type(exc).__name__}") from exc
        conn.receive_data(chunk)
        try:
            event = conn.next_event()
        except RemoteProtocolError as exc:
            data = conn.data_to_send()
            if data:
                with anyio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                    try:
                        await stream.send(data)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError,
                            OSError):
                        pass
            raise HandshakeFailed(address, exc) from exc
        data = conn.data_to_send()
        if data:
            await _send_during_handshake(stream, data, address)
        if isinstance(event, Hello):
            return


async def _send_during_handshake(
    stream: anyio.abc.ByteStream, data: bytes, address: str
) -> None:
    try:
        await stream.send(data)
    except (anyio.BrokenResourceError, OSError) as exc:
        raise ConnectionFailed(address, f"the stream broke during the handshake: "
                                        f"{exc or type(exc).__name__}") from exc


def _connection(role: Role, secret: bytes, max_frame_bytes: int) -> Connection:
    return Connection(role=role, secret=secret, max_frame_bytes=max_frame_bytes)


async def connect(
    host: str,
    port: int,
    *,
    role: Role,
    secret: bytes,
    tls: ssl.SSLContext | None = None,
    handshake_timeout_s: float = 5.0,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
) -> Link:
    """Open an authenticated link with the listener at ``host:port``.

    :param role: what this side is (a node or a client connecting to a coordinator)
    :param secret: the cluster's shared secret (``b""`` for none)
    :param tls: a client-side context (``tls_contexts()``), or None for plain TCP
    :param handshake_timeout_s: the deadline for connecting and the whole handshake
    :param max_frame_bytes: the largest frame body we accept
    :param max_queued_bytes: how many encoded bytes ``send`` queues before it waits
    :returns: the link, past the handshake; ``link.peer`` is the peer's hello
    :raises ConnectionFailed: nobody listens at the address, or the stream broke
    :raises HandshakeFailed: a wrong secret (``.cause`` is ``AuthenticationFailed``),
        another protocol version (``VersionMismatch``), or another handshake error
    :raises HandshakeTimeout: the peer did not finish the handshake in time
    """
    address = _address(host, port)
    conn = _connection(role, secret, max_frame_bytes)
    stream: anyio.abc.ByteStream | None = None
    try:
        with anyio.fail_after(handshake_timeout_s):
            try:
                if tls is None:
                    stream = await anyio.connect_tcp(host, port)
                else:
                    stream = await anyio.connect_tcp(
                        host, port, tls=True, ssl_context=tls,
                        tls_standard_compatible=False,
                    )
            except OSError as exc:  # ssl.SSLError included
                raise ConnectionFailed(address, _os_reason(exc)) from exc
            except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:
                raise ConnectionFailed(address, "the peer closed the stream during the "
                                                "TLS handshake") from exc
            await _handshake(stream, conn, address)
    except TimeoutError as exc:
        if stream is not None:
            await anyio.aclose_forcefully(stream)
        raise HandshakeTimeout(address, f"no handshake within {handshake_timeout_s} s"
                               ) from exc
    except BaseException:
        if stream is not None:
            await anyio.aclose_forcefully(stream)
        raise
    link = Link(stream, conn, address=address, max_queued_bytes=max_queued_bytes)
    await link._after_handshake()
    return link


def _os_reason(exc: OSError) -> str:
    causes = getattr(exc, "exceptions", None)
    if causes:
        exc = causes[0]
    # anyio says "all connection attempts failed" and keeps the last one as the cause
    if not exc.strerror and isinstance(exc.__cause__, OSError):
        exc = exc.__cause__
    return (exc.strerror or str(exc) or type(exc).__name__).lower()


async def serve(
    host: str,
    port: int,
    *,
    role: Role,
    secret: bytes,
    handler: Callable[[Link], Awaitable[Any]],
    tls: ssl.SSLContext | None = None,
    handshake_timeout_s: float = 5.0,
    max_unauthenticated: int = 64,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
    on_refused: Callable[[str, Exception], object] | None = None,
    task_status: anyio.abc.TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Accept links at ``host:port`` until cancelled; run ``handler(link)`` for each.

    Use as ``addr = await tg.start(functools.partial(serve, ...))``: readiness reports
    the bound ``(host, port)``, so port 0 works. The link is closed when the handler
    returns; an exception from a handler is logged and ends only that link.

    :param handshake_timeout_s: a stream that has not finished its handshake by then
        (TLS included) is closed
    :param max_unauthenticated: streams in their handshake at once; a stream beyond
        it makes the listener close the oldest one at once, so a flood of idle sockets
        cannot lock real peers out
    :param on_refused: called with the peer's address and the error when a stream is
        dropped during its handshake (``HandshakeFailed``, ``HandshakeTimeout``,
        ``ConnectionFailed``); for counting and status, not for control
    :raises OSError: the address cannot be bound
    """
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    # cancel scopes of the streams in their handshake, oldest first
    in_handshake: dict[object, anyio.CancelScope] = {}

    async def accepted(raw: anyio.abc.SocketStream) -> None:
        remote = raw.extra(anyio.abc.SocketAttribute.remote_address)
        address = (_address(str(remote[0]), int(remote[1])) if isinstance(remote, tuple)
                   else str(remote))
        if len(in_handshake) >= max_unauthenticated:
            oldest = next(iter(in_handshake))
            log.debug("%d connections in their handshake: dropping the oldest",
                      len(in_handshake))
            in_handshake.pop(oldest).cancel()
        stream: anyio.abc.ByteStream = raw
        conn = _connection(role, secret, max_frame_bytes)
        key = object()
        try:
            with anyio.fail_after(handshake_timeout_s), anyio.CancelScope() as scope:
                in_handshake[key] = scope
                if tls is not None:
                    stream = await TLSStream.wrap(raw, server_side=True, ssl_context=tls,
                                                  standard_compatible=False)
                await _handshake(stream, conn, address)
        except (TimeoutError, ConnectionFailed, OSError, ssl.SSLError,
                anyio.BrokenResourceError, anyio.EndOfStream) as exc:
            error = (exc if isinstance(exc, ConnectionFailed)
                     else HandshakeTimeout(address, f"no handshake within "
                                                    f"{handshake_timeout_s} s")
                     if isinstance(exc, TimeoutError)
                     else ConnectionFailed(address, f"{type(exc).__name__}: {exc}"))
            log.info("dropped %s during the handshake: %s", address, error)
            await anyio.aclose_forcefully(stream)
            if on_refused is not None:
                on_refused(address, error)
            return
        except BaseException:
            await anyio.aclose_forcefully(stream)
            raise
        finally:
            in_handshake.pop(key, None)
        if scope.cancelled_caught:
            await anyio.aclose_forcefully(stream)
            return
        link = Link(stream, conn, address=address, max_queued_bytes=max_queued_bytes)
        async with link:
            await link._after_handshake()
            try:
                await handler(link)
            except Exception:
                log.exception("the handler for %s failed; its link is closed", address)

    async with listener, anyio.create_task_group() as tg:
        bound = listener.extra(anyio.abc.SocketAttribute.local_address)
        task_status.started((str(bound[0]), int(bound[1])))
        await listener.serve(accepted, task_group=tg)


def tls_contexts(
    cert: str | Path, key: str | Path, ca: str | Path
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """TLS contexts for a cluster whose certificates ``ca`` signed.

    Both sides present ``cert`` and require the peer's certificate (mutual TLS). The
    client does not check the host name: the CA is the cluster's own.

    :returns: ``(server_context, client_context)``
    :raises OSError: a file cannot be read
    :raises ssl.SSLError: a file is not a valid certificate or key
    """
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca))
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_cert_chain(str(cert), str(key))
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    client.check_hostname = False
    client.load_cert_chain(str(cert), str(key))
    return server, client


def tls_from_files(cert: str | None, key: str | None, ca: str | None, *,
                   server: bool) -> ssl.SSLContext | None:
    """The context of ``--tls-cert``, ``--tls-key`` and ``--tls-ca`` (None when none is
    given), for a listener (``server``) or for a side that connects.

    :raises ClusterConfigError: for some of the three but not all, or files that do not
        load (saying why)
    """
    given = (cert, key, ca)
    if not any(given):
        return None
    if cert is None or key is None or ca is None:
        raise ClusterConfigError("TLS needs all three of --tls-cert, --tls-key and --tls-ca")
    try:
        contexts = tls_contexts(cert, key, ca)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ClusterConfigError(f"cannot load the TLS files: {exc}") from None
    return contexts[0] if server else contexts[1]
