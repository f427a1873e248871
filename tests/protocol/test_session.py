"""After the handshake: every frame numbered and MACed; Goodbye; failing and saying why."""

from __future__ import annotations

import pytest

from asyncjobs.protocol import (
    NEED_DATA,
    ConnectionNotOpen,
    Error,
    Goodbye,
    Heartbeat,
    LocalProtocolError,
    RemoteProtocolError,
    Role,
    State,
)

from .helpers import ConnectionPair, state


def _frames(pair: ConnectionPair, n: int) -> list[bytes]:
    return [pair.peer.send(Heartbeat(i)) for i in range(n)]


def _refused(pair: ConnectionPair, data: bytes, says: str) -> None:
    conn = pair.coordinator
    conn.receive_data(data)
    with pytest.raises(RemoteProtocolError, match=says):
        while conn.next_event() is not NEED_DATA:
            pass
    assert conn.state is State.ERROR


@pytest.mark.parametrize("where", [4, 12, -1], ids=["sequence-number", "mac", "payload"])
def test_a_tampered_frame_is_refused(where: int) -> None:
    pair = ConnectionPair.open(Role.NODE)
    data = bytearray(_frames(pair, 1)[0])
    data[where] ^= 0x01
    _refused(pair, bytes(data), "integrity check")


def test_a_replayed_frame_is_refused() -> None:
    pair = ConnectionPair.open(Role.NODE)
    first, second = _frames(pair, 2)
    assert pair.deliver(pair.coordinator, first + second) == [Heartbeat(0), Heartbeat(1)]
    _refused(pair, first, "frame number 0 arrived where 2 was due: a replayed or reordered")


def test_reordered_frames_are_refused() -> None:
    pair = ConnectionPair.open(Role.NODE)
    first, second = _frames(pair, 2)
    _refused(pair, second + first, "frame number 1 arrived where 0 was due")


def test_a_dropped_frame_is_noticed() -> None:
    pair = ConnectionPair.open(Role.NODE)
    _, second, third = _frames(pair, 3)
    _refused(pair, second + third, "frame number 1 arrived where 0 was due")


def test_a_frame_sent_back_to_its_sender_is_refused() -> None:
    pair = ConnectionPair.open(Role.NODE)
    own = pair.coordinator.send(Heartbeat(0))
    _refused(pair, own, "integrity check")  # each direction has its own key


def test_a_frame_from_another_session_is_refused() -> None:
    other = ConnectionPair.open(Role.NODE, nonces=(5, 6))
    stolen = other.peer.send(Heartbeat(0))
    _refused(ConnectionPair.open(Role.NODE), stolen, "integrity check")


def test_sending_after_the_peer_ended_its_stream_is_refused_as_not_open() -> None:
    pair = ConnectionPair.open(Role.CLIENT)
    pair.peer.receive_data(b"")
    pair.peer.next_event()
    # not the message's fault: a client sends it again on its next connection
    with pytest.raises(ConnectionNotOpen, match="cannot send Heartbeat in state CLOSED"):
        pair.peer.send(Heartbeat(1))
    assert issubclass(ConnectionNotOpen, LocalProtocolError)


def test_goodbye_is_a_half_close() -> None:
    pair = ConnectionPair.open(Role.NODE)
    node, coordinator = pair.peer, pair.coordinator
    assert pair.send(node, Heartbeat(1), Goodbye("draining")) == [Heartbeat(1),
                                                                  Goodbye("draining")]
    assert node.state is State.SENT_GOODBYE and coordinator.state is State.GOT_GOODBYE
    with pytest.raises(LocalProtocolError, match="cannot send Heartbeat in state SENT_GOODBYE"):
        node.send(Heartbeat(2))
    assert pair.send(coordinator, Heartbeat(3)) == [Heartbeat(3)]  # the other way still runs
    assert pair.send(coordinator, Goodbye()) == [Goodbye()]
    assert state(node) is state(coordinator) is State.CLOSED


def test_a_frame_after_the_peers_goodbye_is_refused() -> None:
    pair = ConnectionPair.open(Role.NODE)
    late = pair.peer.send(Goodbye())  # sealed before anything stops it
    pair.deliver(pair.coordinator, late)
    forged = pair.peer._sealer.seal(b"\x92\x02\x01")  # type: ignore[union-attr]
    _refused(pair, forged, "after its Goodbye")


def test_nothing_may_follow_a_goodbye_in_one_write() -> None:
    pair = ConnectionPair.open(Role.NODE)
    with pytest.raises(LocalProtocolError, match="nothing may follow a Goodbye"):
        pair.peer.send_many([Goodbye(), Heartbeat(1)])
    assert pair.peer.state is State.OPEN
    assert pair.send(pair.peer, Heartbeat(1)) == [Heartbeat(1)]


def test_after_a_peer_error_we_can_still_say_why() -> None:
    pair = ConnectionPair.open(Role.NODE)
    pair.send_raw(pair.peer, [99])
    error = pair.errors[pair.coordinator]
    assert "unknown message tag 99" in str(error)
    with pytest.raises(LocalProtocolError, match="only an Error may still be sent"):
        pair.coordinator.send(Heartbeat(1))
    told = pair.send(pair.coordinator, Error("protocol", str(error)))
    assert told == [Error("protocol", "unknown message tag 99")]


def test_an_error_during_the_handshake_leaves_nothing_to_send_messages_with() -> None:
    pair = ConnectionPair(Role.NODE, peer_secret=b"other")
    pair.exchange()
    with pytest.raises(LocalProtocolError, match="cannot send Error in state ERROR"):
        pair.coordinator.send(Error("auth", "no"))
