"""Transport checks, each written once and run over plain TCP and over TLS."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import pytest

from asyncjobs.protocol import (
    NEED_DATA,
    VERSION,
    AuthenticationFailed,
    Connection,
    Error,
    Heartbeat,
    Hello,
    Message,
    RemoteProtocolError,
    Role,
    VersionMismatch,
)
from asyncjobs.transport import ConnectionFailed, HandshakeFailed, Link

from .conftest import SECRET

if TYPE_CHECKING:
    from .conftest import Transport

pytestmark = pytest.mark.timeout(30)


async def _receive_n(link: Link, n: int) -> list[Message]:
    got: list[Message] = []
    with anyio.fail_after(10):
        for _ in range(n):
            got.append(await link.receive())
    return got


async def _read_until_closed(stream: anyio.abc.ByteStream, *, max_reads: int = 100) -> bytes:
    """What the listener sent before it closed the stream."""
    data = b""
    for _ in range(max_reads):
        try:
            data += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return data
    raise AssertionError(f"still open after {max_reads} reads")


# -- the checks -------------------------------------------------------------------------


async def check_one_batch_larger_than_the_queue_bound_goes_out(t: Transport) -> None:
    """A single send_many of more than max_queued_bytes: its sender writes what is queued
    rather than wait for a flush nobody else would make."""
    big = Error("filler", "x" * 65536)
    async with t.pair(max_queued_bytes=256 * 1024) as (client, server):
        received: list[Message] = []

        async def read() -> None:
            for _ in range(40):
                received.append(await server.receive())

        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            with anyio.fail_after(10):
                await client.send_many([big] * 40)  # ~2.6 MB, ten times the bound
    assert len(received) == 40


async def check_round_trip(t: Transport) -> None:
    async with t.pair() as (client, server):
        assert client.peer.role is Role.COORDINATOR
        assert server.peer.role is Role.NODE
        for i in range(500):
            await client.send(Heartbeat(seq=i))
        assert await _receive_n(server, 500) == [Heartbeat(seq=i) for i in range(500)]
        await server.send_many(Heartbeat(seq=i) for i in range(500))
        assert await _receive_n(client, 500) == [Heartbeat(seq=i) for i in range(500)]


async def check_the_peer_ending_gives_end_of_stream(t: Transport) -> None:
    async with t.pair() as (client, server):
        await client.send(Heartbeat(seq=1))
        await client.aclose()
        assert await _receive_n(server, 1) == [Heartbeat(seq=1)]
        got = []
        with anyio.fail_after(5):
            async for msg in server:
                got.append(msg)
        assert [type(m).__name__ for m in got] == ["Goodbye"]
        # the peer's end is a lost link to a sender, not a fault of its message (a client
        # then sends its jobs again on the next link instead of failing them)
        with pytest.raises(anyio.BrokenResourceError, match="has ended"):
            await server.send(Heartbeat(seq=3))
        with pytest.raises(anyio.ClosedResourceError):
            await client.send(Heartbeat(seq=2))
        with pytest.raises(anyio.ClosedResourceError):
            await client.receive()


async def check_sends_in_one_iteration_go_out_in_few_writes(t: Transport) -> None:
    async with t.pair() as (client, server):
        await client.send_many(Heartbeat(seq=i) for i in range(1000))
        assert client.writes == 1
        async with anyio.create_task_group() as tg:
            for i in range(1000, 1200):
                tg.start_soon(client.send, Heartbeat(seq=i))
        assert client.writes <= 3, client.writes
        got = await _receive_n(server, 1200)
        assert sorted(m.seq for m in got if isinstance(m, Heartbeat)) == list(range(1200))


async def check_wrong_secret_fails_on_both_sides(t: Transport) -> None:
    refused: list[Exception] = []
    refused_event = anyio.Event()

    def on_refused(address: str, exc: Exception) -> None:
        refused.append(exc)
        refused_event.set()

    async def handler(link: Link) -> None:
        raise AssertionError("a peer with the wrong secret reached the handler")

    async with t.server(handler, on_refused=on_refused) as addr:
        with pytest.raises(HandshakeFailed) as info:
            await t.connect(addr, secret=b"wrong")
        assert isinstance(info.value.cause, AuthenticationFailed)
        assert isinstance(info.value, ConnectionFailed)
        assert f"127.0.0.1:{addr[1]}" in str(info.value)
        assert "authentication failed" in str(info.value)
        with anyio.fail_after(5):
            await refused_event.wait()
    [server_error] = refused
    assert isinstance(server_error, HandshakeFailed)
    assert isinstance(server_error.cause, AuthenticationFailed)


async def check_silent_peer_dropped_at_the_deadline(t: Transport) -> None:
    async with t.server(handshake_timeout_s=0.3) as addr:
        stream = await anyio.connect_tcp(*addr)
        start = anyio.current_time()
        with anyio.fail_after(5):
            await _read_until_closed(stream)
        assert anyio.current_time() - start >= 0.25
        await stream.aclose()


async def check_half_a_hello_then_silence_dropped(t: Transport) -> None:
    hello = Connection(role=Role.NODE, secret=b"x").data_to_send()
    async with t.server(handshake_timeout_s=0.3) as addr:
        stream = await t.raw(addr)
        await stream.send(hello[:20])
        with anyio.fail_after(5):
            await _read_until_closed(stream)
        await anyio.aclose_forcefully(stream)


async def check_garbage_dropped_before_the_deadline(t: Transport) -> None:
    async with t.server(handshake_timeout_s=20) as addr:
        stream = await t.raw(addr)
        await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 4)
        with anyio.fail_after(5):
            await _read_until_closed(stream)
        await anyio.aclose_forcefully(stream)


async def check_huge_length_prefix_closes_the_link(t: Transport) -> None:
    async with t.pair() as (client, server):
        await client._stream.send(b"\xff\xff\xff\xff")
        with anyio.fail_after(5), pytest.raises(anyio.BrokenResourceError) as info:
            await server.receive()
        assert isinstance(info.value.__cause__, RemoteProtocolError)
        with anyio.fail_after(5):
            msg = await client.receive()
        assert isinstance(msg, Error)
        assert msg.code == "protocol"
        with anyio.fail_after(5), pytest.raises((anyio.EndOfStream,
                                                 anyio.BrokenResourceError)):
            await client.receive()
        with pytest.raises(anyio.BrokenResourceError):
            await server.send(Heartbeat(seq=1))


async def check_idle_sockets_are_capped_and_a_real_peer_gets_in(t: Transport) -> None:
    cap = 16
    closed = 0
    enough = anyio.Event()

    async def watch(stream: anyio.abc.ByteStream) -> None:
        nonlocal closed
        await _read_until_closed(stream)
        closed += 1
        if closed >= 200 - cap:
            enough.set()

    async with t.server(handshake_timeout_s=20, max_unauthenticated=cap) as addr:
        idle = []
        async with anyio.create_task_group() as tg:
            for _ in range(200):
                stream = await anyio.connect_tcp(*addr)
                idle.append(stream)
                tg.start_soon(watch, stream)
            with anyio.fail_after(10):
                await enough.wait()
            start = anyio.current_time()
            with anyio.fail_after(2):
                link = await t.connect(addr)
            assert anyio.current_time() - start < 1.0
            await link.send(Heartbeat(seq=1))
            await link.aclose()
            tg.cancel_scope.cancel()
        for stream in idle:
            await anyio.aclose_forcefully(stream)


async def check_closed_port_names_the_address(t: Transport) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConnectionFailed) as info:
        await t.connect(("127.0.0.1", port))
    text = str(info.value)
    assert f"127.0.0.1:{port}" in text
    assert "\n" not in text
    assert info.value.address == f"127.0.0.1:{port}"


def _handshake_then_stop_reading(addr: tuple[str, int], t: Transport) -> socket.socket:
    """A peer on a blocking socket (run in a thread): it completes the handshake and
    then reads nothing, so the kernel's buffers fill up."""
    sock = socket.create_connection(addr, timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    if t.client_tls is not None:
        sock = t.client_tls.wrap_socket(sock)
    conn = Connection(role=Role.NODE, secret=SECRET)
    sock.sendall(conn.data_to_send())
    for _ in range(100):
        conn.receive_data(sock.recv(65536))
        events = []
        while (event := conn.next_event()) is not NEED_DATA:
            events.append(event)
        sock.sendall(conn.data_to_send())
        if any(isinstance(e, Hello) for e in events):
            sock.setblocking(True)
            return sock
    raise AssertionError("no handshake after 100 reads")


def _read_messages(sock: socket.socket, n: int) -> int:
    """Drain ``sock`` as ``_handshake_then_stop_reading``'s peer would: count frames."""
    count = 0
    buf = b""
    for _ in range(100_000):
        if count >= n:
            return count
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        buf += chunk
        while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
            buf = buf[4 + int.from_bytes(buf[:4], "big"):]
            count += 1
    return count


async def check_a_peer_that_never_reads_gives_back_pressure(t: Transport) -> None:
    limit = 256 * 1024
    big = Error("filler", "x" * 65536)
    per_task = 300
    sent = [0, 0]
    links = anyio.create_memory_object_stream[Link](1)
    done = anyio.Event()

    async def handler(link: Link) -> None:
        await links[0].send(link)
        await done.wait()

    async def produce(i: int, link: Link) -> None:
        for _ in range(per_task):
            await link.send(big)
            sent[i] += 1

    async with t.server(handler, max_queued_bytes=limit) as addr:
        sock = await anyio.to_thread.run_sync(_handshake_then_stop_reading, addr, t)
        try:
            with anyio.fail_after(5):
                server = await links[1].receive()
            async with anyio.create_task_group() as tg:
                tg.start_soon(produce, 0, server)
                tg.start_soon(produce, 1, server)
                # a queue filling up sets no event: poll it, within a deadline
                with anyio.fail_after(10):
                    while server.queued_bytes < limit:  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                assert server.queued_bytes < limit + 2 * 70_000
                assert sum(sent) < 2 * per_task
                read = await anyio.to_thread.run_sync(_read_messages, sock, 2 * per_task)
            assert read == 2 * per_task
            assert sent == [per_task, per_task]
        finally:
            done.set()
            sock.close()
            links[0].close()
            links[1].close()


async def check_closing_wakes_a_receiver_with_closed_resource(t: Transport) -> None:
    async with t.pair() as (client, _server):
        async def close_soon() -> None:
            await anyio.wait_all_tasks_blocked()
            await client.aclose()

        async with anyio.create_task_group() as tg:
            tg.start_soon(close_soon)
            with anyio.fail_after(5), pytest.raises(anyio.ClosedResourceError):
                await client.receive()


async def check_another_version_fails_with_version_mismatch(t: Transport) -> None:
    ours = Connection(role=Role.COORDINATOR, secret=SECRET)
    theirs = Hello(Role.COORDINATOR, ours.our_hello.nonce, ours.our_hello.max_frame_bytes,
                   version=VERSION + 1).to_bytes()

    async def old_coordinator(stream: anyio.abc.ByteStream) -> None:
        async with stream:
            await stream.send(len(theirs).to_bytes(4, "big") + theirs)
            await _read_until_closed(stream)

    if t.server_tls is not None:
        pytest.skip("the fake peer speaks plain TCP")
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = int(listener.extra(anyio.abc.SocketAttribute.local_address)[1])
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, old_coordinator)
            with pytest.raises(HandshakeFailed) as info:
                await t.connect(("127.0.0.1", port))
            tg.cancel_scope.cancel()
    assert isinstance(info.value.cause, VersionMismatch)
    assert f"version {VERSION + 1}" in str(info.value)


# -- run each check over each transport --------------------------------------------------


async def test_round_trip(transport: Transport) -> None:
    await check_round_trip(transport)


async def test_the_peer_ending_gives_end_of_stream(transport: Transport) -> None:
    await check_the_peer_ending_gives_end_of_stream(transport)


async def test_sends_in_one_iteration_go_out_in_few_writes(transport: Transport) -> None:
    await check_sends_in_one_iteration_go_out_in_few_writes(transport)


async def test_wrong_secret_fails_on_both_sides(transport: Transport) -> None:
    await check_wrong_secret_fails_on_both_sides(transport)


async def test_silent_peer_dropped_at_the_deadline(transport: Transport) -> None:
    await check_silent_peer_dropped_at_the_deadline(transport)


async def test_half_a_hello_then_silence_dropped(transport: Transport) -> None:
    await check_half_a_hello_then_silence_dropped(transport)


async def test_garbage_dropped_before_the_deadline(transport: Transport) -> None:
    await check_garbage_dropped_before_the_deadline(transport)


async def test_huge_length_prefix_closes_the_link(transport: Transport) -> None:
    await check_huge_length_prefix_closes_the_link(transport)


async def test_idle_sockets_are_capped_and_a_real_peer_gets_in(
    transport: Transport,
) -> None:
    await check_idle_sockets_are_capped_and_a_real_peer_gets_in(transport)


async def test_closed_port_names_the_address(transport: Transport) -> None:
    await check_closed_port_names_the_address(transport)


async def test_one_batch_larger_than_the_queue_bound_goes_out(transport: Transport) -> None:
    await check_one_batch_larger_than_the_queue_bound_goes_out(transport)


async def test_a_peer_that_never_reads_gives_back_pressure(transport: Transport) -> None:
    await check_a_peer_that_never_reads_gives_back_pressure(transport)


async def test_closing_wakes_a_receiver_with_closed_resource(transport: Transport) -> None:
    await check_closing_wakes_a_receiver_with_closed_resource(transport)


async def test_another_version_fails_with_version_mismatch(transport: Transport) -> None:
    await check_another_version_fails_with_version_mismatch(transport)
