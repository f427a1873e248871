"""Frames: limits checked on the prefix, any split of the stream, the end of the stream."""

from __future__ import annotations

import random

import pytest

from asyncjobs.protocol import (
    NEED_DATA,
    Connection,
    Heartbeat,
    LocalProtocolError,
    RemoteProtocolError,
    Role,
    State,
    Submit,
)
from asyncjobs.protocol.framing import PREFIX, FrameBuffer, frame
from asyncjobs.protocol.messages import JobSpec

from .helpers import SECRET, ConnectionPair, drain
from .samples import SAMPLES


def _open_node_side(max_frame_bytes: int = 1024) -> tuple[ConnectionPair, Connection]:
    pair = ConnectionPair.open(Role.NODE, max_frame_bytes=(max_frame_bytes, max_frame_bytes))
    return pair, pair.coordinator


@pytest.mark.parametrize("claimed", [1025, 2**20, 2**32 - 1])
def test_a_frame_over_the_limit_is_refused_before_its_body(claimed: int) -> None:
    _, conn = _open_node_side(max_frame_bytes=1024)
    conn.receive_data(PREFIX.pack(claimed) + b"x" * 100)
    assert conn.buffered_bytes <= PREFIX.size
    with pytest.raises(RemoteProtocolError, match=f"a frame of {claimed} bytes; we accept at "
                                                  "most 1024"):
        conn.next_event()
    assert conn.state is State.ERROR and conn.buffered_bytes == 0


@pytest.mark.parametrize("state", ["handshake", "open"])
def test_a_prefix_of_2_to_the_32_minus_1_is_refused_at_once(state: str) -> None:
    if state == "handshake":
        conn = Connection(role=Role.COORDINATOR, secret=SECRET)
    else:
        conn = _open_node_side()[1]
    conn.receive_data(b"\xff\xff\xff\xff")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    assert conn.state is State.ERROR


def test_the_frame_buffer_keeps_nothing_after_an_oversized_prefix() -> None:
    buf = FrameBuffer(1024)
    buf.feed(frame(b"ok") + PREFIX.pack(5000) + b"y" * 3000)
    buf.feed(b"z" * 10_000)
    assert buf.buffered_bytes == 4 + 2 + 4
    assert buf.take(buf.peek_length() or 0) == b"ok"
    assert buf.peek_length() == 5000  # its reader refuses it


def test_frames_split_anywhere_come_out_whole() -> None:
    rng = random.Random(5)
    bodies = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
              for _ in range(400)]
    stream = b"".join(frame(b) for b in bodies)
    buf, out, pos = FrameBuffer(1024), [], 0
    while pos < len(stream):
        step = rng.choice([1, 2, 3, 7, 64, 999, 70_000])
        buf.feed(stream[pos:pos + step])
        pos += step
        while (size := buf.peek_length()) is not None and (body := buf.take(size)) is not None:
            out.append(body)
    assert out == bodies and buf.buffered_bytes == 0


def test_a_whole_session_a_byte_at_a_time() -> None:
    pair = ConnectionPair(Role.CLIENT, chunk=1)
    pair.exchange()
    msgs = [m for sender, receiver, m in SAMPLES if (sender, receiver) == (Role.CLIENT,
                                                                          Role.COORDINATOR)]
    assert pair.send(pair.peer, *msgs) == msgs
    back = [m for s, r, m in SAMPLES if (s, r) == (Role.COORDINATOR, Role.CLIENT)]
    assert pair.send(pair.coordinator, *back) == back


def test_many_frames_in_one_chunk() -> None:
    pair = ConnectionPair.open(Role.NODE)
    beats = [Heartbeat(i) for i in range(1000)]
    assert pair.send(pair.peer, *beats) == beats


def test_a_frame_that_cannot_hold_a_seal_is_refused() -> None:
    _, conn = _open_node_side()
    conn.receive_data(frame(b"\x00" * 24))
    with pytest.raises(RemoteProtocolError, match="too short to carry"):
        conn.next_event()


def test_the_end_of_the_stream_at_a_frame_boundary_closes() -> None:
    pair, conn = _open_node_side()
    pair.send(pair.peer, Heartbeat(1))
    conn.receive_data(b"")
    assert conn.next_event() is NEED_DATA
    assert conn.state is State.CLOSED
    conn.receive_data(b"")  # again: no harm
    with pytest.raises(LocalProtocolError, match="after the end of the stream"):
        conn.receive_data(b"late")


def test_the_end_of_the_stream_mid_frame_fails() -> None:
    pair, conn = _open_node_side()
    data = pair.peer.send(Heartbeat(1))
    conn.receive_data(data[:-1])
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="closed the connection in the middle of a "
                                                  "frame"):
        conn.next_event()


def test_frames_as_large_as_the_limit_pass() -> None:
    pair = ConnectionPair.open(Role.CLIENT, max_frame_bytes=(4096, 4096))
    for size in range(3900, 4100, 7):
        msg = Submit((JobSpec("j", "m:f", (b"x" * size,)),))
        try:
            data = pair.peer.send(msg)
        except LocalProtocolError:
            continue  # too large for the peer: refused before sending (see test_messages)
        assert len(data) - 4 <= 4096
        assert pair.deliver(pair.coordinator, data) == [msg]
    assert not pair.errors
    assert drain(pair.coordinator) == []
