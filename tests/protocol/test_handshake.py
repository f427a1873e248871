"""The handshake: who may talk, proofs both ways, and what a stranger or attacker gets."""

from __future__ import annotations

import pytest

from asyncjobs.protocol import (
    NEED_DATA,
    AuthenticationFailed,
    Connection,
    Heartbeat,
    LocalProtocolError,
    RemoteProtocolError,
    Role,
    State,
    VersionMismatch,
)
from asyncjobs.protocol import handshake as hs
from asyncjobs.protocol.framing import frame

from .helpers import SECRET, ConnectionPair, drain, nonce, state


@pytest.mark.parametrize("peer_role", [Role.NODE, Role.CLIENT])
def test_handshake_opens_both_sides(peer_role: Role) -> None:
    pair = ConnectionPair(peer_role)
    pair.exchange()
    assert pair.events == {pair.coordinator: [pair.peer.our_hello],
                           pair.peer: [pair.coordinator.our_hello]}
    assert pair.coordinator.peer == pair.peer.our_hello
    assert pair.peer.peer is not None and pair.peer.peer.role is Role.COORDINATOR
    assert pair.coordinator.state is pair.peer.state is State.OPEN


def test_handshake_a_byte_at_a_time() -> None:
    pair = ConnectionPair(Role.CLIENT, chunk=1)
    pair.exchange()
    assert not pair.errors
    assert pair.events[pair.peer] == [pair.coordinator.our_hello]
    assert pair.send(pair.peer, Heartbeat(1), Heartbeat(2)) == [Heartbeat(1), Heartbeat(2)]


def test_a_fresh_nonce_for_every_connection() -> None:
    a, b = (Connection(role=Role.NODE, secret=SECRET) for _ in range(2))
    assert a.our_hello.nonce != b.our_hello.nonce
    assert len(a.our_hello.nonce) == hs.NONCE_BYTES


@pytest.mark.parametrize("peer_secret", [b"wrong", b"", SECRET + b"!"])
def test_wrong_secret_fails_on_both_sides_alike(peer_secret: bytes) -> None:
    pair = ConnectionPair(Role.NODE, peer_secret=peer_secret)
    pair.exchange()
    coordinator_error, peer_error = (pair.errors[c] for c in pair.conns)
    assert type(coordinator_error) is type(peer_error) is AuthenticationFailed
    assert str(coordinator_error) == str(peer_error)  # neither learns which side was wrong
    assert str(peer_error).startswith("authentication failed")
    assert pair.events == {pair.coordinator: [], pair.peer: []}
    assert pair.coordinator.state is pair.peer.state is State.ERROR
    assert pair.coordinator.peer is None


def test_no_secret_on_both_sides_still_handshakes() -> None:
    pair = ConnectionPair.open(Role.CLIENT, secret=b"")
    assert pair.send(pair.peer, Heartbeat(1)) == [Heartbeat(1)]


def test_the_secret_never_crosses_the_wire() -> None:
    pair = ConnectionPair.open(Role.NODE)
    pair.send(pair.peer, Heartbeat(1))
    for sent in pair.sent.values():
        assert SECRET not in sent
        assert SECRET[:8] not in sent


def test_hello_layout_is_fixed() -> None:
    conn = Connection(role=Role.CLIENT, secret=SECRET, our_nonce=nonce(9),
                      max_frame_bytes=4096)
    assert conn.data_to_send() == (b"\x00\x00\x00\x2b" + b"\x89AJB" + b"\x00\x02" + b"\x03"
                                   + b"\x00\x00\x10\x00" + nonce(9))
    assert conn.data_to_send() == b""


def _hello(version: int = hs.VERSION, role: int = 2, max_frame: int = 2**20,
           n: int = 7, extra: bytes = b"") -> bytes:
    return frame(b"\x89AJB" + version.to_bytes(2, "big") + bytes([role])
                 + max_frame.to_bytes(4, "big") + nonce(n) + extra)


def _fails(conn: Connection, data: bytes, error: type[Exception] = RemoteProtocolError
           ) -> RemoteProtocolError:
    conn.receive_data(data)
    with pytest.raises(error) as info:
        drain(conn)
    assert conn.state is State.ERROR
    assert isinstance(info.value, RemoteProtocolError)
    return info.value


@pytest.mark.parametrize("extra", [b"", b"\x00" * 40], ids=["same-layout", "longer-hello"])
def test_a_peer_of_another_version_gets_both_versions_named(extra: bytes) -> None:
    coordinator = Connection(role=Role.COORDINATOR, secret=SECRET)
    theirs = hs.VERSION + 1
    error = _fails(coordinator, _hello(version=theirs, extra=extra), VersionMismatch)
    assert isinstance(error, VersionMismatch) and (error.ours, error.theirs) == (hs.VERSION,
                                                                              theirs)
    assert f"version {theirs}, we speak version {hs.VERSION}" in str(error)


def test_our_version_is_where_every_version_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    ours = Connection(role=Role.NODE, secret=SECRET).data_to_send()
    assert ours[4:10] == b"\x89AJB" + hs.VERSION.to_bytes(2, "big")
    theirs = hs.VERSION + 1
    monkeypatch.setattr(hs, "VERSION", theirs)  # what a newer build makes of our hello
    with pytest.raises(VersionMismatch,
                       match=f"version {theirs - 1}, we speak version {theirs}"):
        hs.Hello.from_bytes(ours[4:], min_frame_bytes=1024)


def test_a_reflected_hello_fails() -> None:
    conn = Connection(role=Role.COORDINATOR, secret=SECRET)
    error = _fails(conn, conn.data_to_send())
    assert "reflected" in str(error)


def test_a_reflected_proof_fails() -> None:
    coordinator = Connection(role=Role.COORDINATOR, secret=SECRET, our_nonce=nonce(1))
    node = Connection(role=Role.NODE, secret=SECRET, our_nonce=nonce(2))
    coordinator.data_to_send()
    coordinator.receive_data(node.data_to_send())
    assert drain(coordinator) == []
    own_proof = coordinator.data_to_send()
    _fails(coordinator, own_proof, AuthenticationFailed)


@pytest.mark.parametrize("replayer", ["coordinator", "peer"])
def test_a_replayed_handshake_fails(replayer: str) -> None:
    first = ConnectionPair.open(Role.NODE, nonces=(1, 2))
    first.send(first.peer, Heartbeat(1))
    first.send(first.coordinator, Heartbeat(2))
    # a listener records one side's bytes and plays them to a fresh connection of the other
    recorded = bytes(first.sent[getattr(first, replayer)])
    victim_role = Role.NODE if replayer == "coordinator" else Role.COORDINATOR
    victim = Connection(role=victim_role, secret=SECRET, our_nonce=nonce(3))
    _fails(victim, recorded, AuthenticationFailed)


@pytest.mark.parametrize(("a", "b"), [(Role.NODE, Role.NODE), (Role.CLIENT, Role.NODE),
                                      (Role.COORDINATOR, Role.COORDINATOR)])
def test_roles_that_never_talk_are_refused_on_both_sides(a: Role, b: Role) -> None:
    pair = ConnectionPair(b, coordinator_role=a)
    pair.exchange()
    for conn in pair.conns:
        assert f"a {conn.role} does not talk to a {pair.other(conn).role}" in str(pair.errors[conn])


@pytest.mark.parametrize(("first_bytes", "says"), [
    (b"HTTP/1.1 400 Bad Request\r\n\r\n", "does not speak the asyncjobs protocol"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "speaks TLS"),
    (b"\x00\x00\x00\x05hello", "does not speak the asyncjobs protocol"),
    (b"\x00\x00\x00\x30" + b"GET / HTTP/1.1\r\n" * 3, "does not speak the asyncjobs protocol"),
])
def test_a_stranger_is_told_apart(first_bytes: bytes, says: str) -> None:
    assert says in str(_fails(Connection(role=Role.COORDINATOR, secret=SECRET), first_bytes))


@pytest.mark.parametrize(("hello", "says"), [
    (_hello(extra=b"\x00"), "hello is 43 bytes, the peer's is 44"),
    (_hello(role=9), "unknown role (code 9)"),
    (_hello(max_frame=100), "accepts frames of at most 100 bytes"),
])
def test_a_malformed_hello_is_refused(hello: bytes, says: str) -> None:
    assert says in str(_fails(Connection(role=Role.COORDINATOR, secret=SECRET), hello))


def test_a_proof_of_the_wrong_size_is_refused_at_its_prefix() -> None:
    conn = Connection(role=Role.COORDINATOR, secret=SECRET)
    error = _fails(conn, _hello() + b"\x00\x00\x10\x00")
    assert "32-byte handshake proof, got a frame of 4096 bytes" in str(error)
    assert conn.buffered_bytes == 0


def test_a_peer_that_closes_during_the_handshake() -> None:
    conn = Connection(role=Role.NODE, secret=SECRET)
    conn.receive_data(_hello(role=1))
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="closed the connection during the handshake"):
        conn.next_event()


def test_nothing_is_sent_before_the_peer_is_authenticated() -> None:
    pair = ConnectionPair(Role.NODE)
    with pytest.raises(LocalProtocolError, match="handshake is not done"):
        pair.peer.send(Heartbeat(1))
    pair.deliver(pair.peer, pair.coordinator.data_to_send())  # its hello: the proof goes out
    assert pair.peer.state is State.AWAIT_PROOF
    with pytest.raises(LocalProtocolError, match="handshake is not done"):
        pair.peer.send(Heartbeat(1))
    pair.exchange()
    assert state(pair.peer) is State.OPEN and not pair.errors


def test_the_hello_is_not_sent_by_hand() -> None:
    pair = ConnectionPair.open()
    with pytest.raises(LocalProtocolError, match="sends its Hello itself"):
        pair.peer.send(pair.peer.our_hello)  # type: ignore[arg-type]


def test_a_failed_connection_keeps_failing_and_keeps_nothing() -> None:
    conn = Connection(role=Role.COORDINATOR, secret=SECRET)
    _fails(conn, b"\xff\xff\xff\xff")
    conn.receive_data(b"more" * 1000)
    assert conn.buffered_bytes == 0
    with pytest.raises(RemoteProtocolError, match="failed earlier: .*does not speak"):
        conn.next_event()


@pytest.mark.parametrize(("kwargs", "error", "says"), [
    ({"our_nonce": b"short"}, ValueError, "must be 32 bytes"),
    ({"our_nonce": "x" * 32}, TypeError, "our_nonce must be bytes"),
    ({"secret": "text"}, TypeError, "secret must be bytes"),
    ({"max_frame_bytes": 100}, ValueError, "max_frame_bytes must be from 1024"),
    ({"max_frame_bytes": 2**32}, ValueError, "max_frame_bytes must be from 1024"),
])
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception], says: str) -> None:
    args: dict[str, object] = {"role": Role.NODE, "secret": SECRET, **kwargs}
    with pytest.raises(error, match=says):
        Connection(**args)  # type: ignore[arg-type]
