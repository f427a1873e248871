"""Two Connections and a fake link between them (h11's ConnectionPair, for our protocol).

A pair is a coordinator and one peer (a node or a client). ``exchange()`` moves bytes both
ways until the link is quiet, collecting each side's events, or the error it raised: a side
that failed still sends what it owes (Rule 5 of ``connection.py``), as a transport would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgpack

from asyncjobs.protocol import NEED_DATA, Connection, RemoteProtocolError, Role, State

if TYPE_CHECKING:
    from asyncjobs.protocol import Event, Message

SECRET = b"correct horse battery staple"


def nonce(n: int) -> bytes:
    """A deterministic nonce, different for each ``n``."""
    return bytes([n]) * 32


def state(conn: Connection) -> State:
    """``conn.state``, read afresh (mypy would keep an earlier assert's narrowing)."""
    return conn.state


def drain(conn: Connection) -> list[Event]:
    """Every event ``conn`` has ready."""
    events = []
    while (event := conn.next_event()) is not NEED_DATA:
        events.append(event)
    return events


class ConnectionPair:
    """A coordinator and a peer joined by a fake link.

    :param peer_role: the other side's role (node or client)
    :param secret: the coordinator's secret
    :param peer_secret: the peer's secret (default: the coordinator's)
    :param chunk: deliver bytes in pieces of this size (1: a byte at a time)
    """

    def __init__(
        self,
        peer_role: Role = Role.NODE,
        *,
        secret: bytes = SECRET,
        peer_secret: bytes | None = None,
        coordinator_role: Role = Role.COORDINATOR,
        nonces: tuple[int, int] = (1, 2),
        max_frame_bytes: tuple[int, int] = (2**20, 2**20),
        chunk: int | None = None,
    ) -> None:
        self.coordinator = Connection(role=coordinator_role, secret=secret,
                                      our_nonce=nonce(nonces[0]),
                                      max_frame_bytes=max_frame_bytes[0])
        self.peer = Connection(role=peer_role,
                               secret=secret if peer_secret is None else peer_secret,
                               our_nonce=nonce(nonces[1]), max_frame_bytes=max_frame_bytes[1])
        self.conns = (self.coordinator, self.peer)
        self.chunk = chunk
        self.events: dict[Connection, list[Event]] = {c: [] for c in self.conns}
        self.errors: dict[Connection, RemoteProtocolError] = {}
        #: every byte each side sent, in order
        self.sent: dict[Connection, bytearray] = {c: bytearray() for c in self.conns}

    @classmethod
    def open(cls, peer_role: Role = Role.NODE, **kwargs: Any) -> ConnectionPair:
        """A pair whose handshake is done; its events are cleared."""
        pair = cls(peer_role, **kwargs)
        pair.exchange()
        assert not pair.errors, pair.errors
        assert [c.state for c in pair.conns] == [State.OPEN, State.OPEN]
        for events in pair.events.values():
            events.clear()
        return pair

    def other(self, conn: Connection) -> Connection:
        return self.peer if conn is self.coordinator else self.coordinator

    def deliver(self, conn: Connection, data: bytes) -> list[Event]:
        """Give ``conn`` bytes its peer sent; return the events they made (an error is
        kept in ``errors``)."""
        self.sent[self.other(conn)] += data
        new: list[Event] = []
        size = self.chunk or max(len(data), 1)
        for start in range(0, len(data), size):
            if conn in self.errors:
                break
            conn.receive_data(data[start:start + size])
            try:
                new += drain(conn)
            except RemoteProtocolError as exc:
                self.errors[conn] = exc
        self.events[conn] += new
        return new

    def exchange(self) -> None:
        """Move handshake bytes both ways until neither side has any to send."""
        moved = True
        while moved:
            moved = False
            for conn in self.conns:
                data = conn.data_to_send()
                if data:
                    moved = True
                    self.deliver(self.other(conn), data)

    def send(self, conn: Connection, *msgs: Message) -> list[Event]:
        """``conn`` sends ``msgs`` in one write; return what its peer read."""
        return self.deliver(self.other(conn), conn.send_many(msgs))

    def send_raw(self, conn: Connection, wire: Any) -> list[Event]:
        """``conn`` sends any msgpack value as a properly sealed message, bypassing every
        check on the sending side: how a buggy or hostile peer would."""
        sealer = conn._sealer
        assert sealer is not None
        payload = wire if isinstance(wire, bytes) else msgpack.packb(wire)
        return self.deliver(self.other(conn), sealer.seal(payload))
