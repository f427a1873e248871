"""``asyncjobs coordinator``: the sockets around ``core.coordination.Coordination``.

Every decision is made by ``Coordination`` (pure, tested without a socket); this module
only moves messages. Each link has a reader (the transport buffers what nobody reads, so
every link is read all the time) and a writer that drains the link's outbox (a send
cancelled mid-write would break the link, so sends are never cancelled; a link is
closed instead). One timer wakes the state when a retry, a rate token or a node's
deadline is due, and one ticker sends heartbeats.

The coordinator never imports user code: a job's target is a name it hands to a node.

With a store (``--state``), what ``Coordination`` asks to keep (``Record``, ``SaveFlow``,
``Forget``) is gathered and committed by one committer task, a transaction at a time:
what arrives while one commits goes in the next (group commit). Everything for a client
link waits behind the commit under way, in order, so no client learns of a succeeded job
before it is durable; nodes' links never wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import itertools
import logging
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from ..auth import is_loopback, load_secret, parse_address
from ..core.coordination import Close, Coordination, Forget, Output, Record, SaveFlow, Send
from ..errors import ClusterConfigError, HandshakeFailed
from ..protocol import FrameTooLarge, Role
from ..protocol.errors import AuthenticationFailed
from ..protocol.messages import Assign, Message, Outcome, Submit, encode
from ..transport import Link, serve, tls_from_files
from .systemd import Notifier

if TYPE_CHECKING:
    import argparse
    import ssl
    from collections.abc import Iterable

    from ..protocol.messages import JobOutcome
    from .statestore import AsyncStateStore, WriteBatch

log = logging.getLogger("asyncjobs.coordinator")

HEARTBEAT_S = 1.0
#: how long a node's link may take to send its ``Register`` after the handshake
REGISTER_TIMEOUT_S = 5.0


class _Peer:
    __slots__ = ("link", "outbox", "wake", "scope", "client")

    def __init__(self, link: Link | None, *, client: bool = True) -> None:
        #: None for a ``LocalLink``, which reads ``outbox`` itself
        self.link = link
        #: a client's link: what it is sent waits behind the commit under way
        self.client = client
        self.outbox: list[Message] = []
        self.wake = asyncio.Event()
        self.scope = anyio.CancelScope()


class LocalLink:
    """A client's link to a coordinator in this very process (``Runner(loops=N)``): the
    same messages and rules as over TCP, without encoding them. Made by
    ``CoordinatorServer.local_link()``; has the methods of ``transport.Link`` a client
    uses."""

    address = "this process"

    def __init__(self, server: CoordinatorServer, link_id: int, peer: _Peer) -> None:
        self._server = server
        self._id = link_id
        self._peer = peer
        self._closed = False

    async def send(self, msg: Message) -> None:
        await self.send_many((msg,))

    async def send_many(self, msgs: Iterable[Message]) -> None:
        """Deliver in order. Each message is checked as a TCP link checks it (``encode``:
        a value msgpack cannot carry is refused here too, naming the job), so a job
        behaves the same whichever way it reaches the coordinator.

        :raises LocalProtocolError: for a message the coordinator would refuse; those
            before it were delivered
        """
        for msg in msgs:
            encode(msg)
            self._server._local_message(self._id, msg)

    async def receive(self) -> Message:
        peer = self._peer
        while not peer.outbox:
            if self._closed or self._id not in self._server._peers:
                raise anyio.EndOfStream
            peer.wake.clear()
            await peer.wake.wait()
        return peer.outbox.pop(0) if len(peer.outbox) > 1 else peer.outbox.pop()

    def __aiter__(self) -> LocalLink:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self, reason: str = "") -> None:
        if not self._closed:
            self._closed = True
            self._peer.wake.set()
            self._server._local_closed(self._id)

    async def __aenter__(self) -> LocalLink:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class CoordinatorServer:
    """Serves one ``Coordination`` on a TCP (or TLS) listener."""

    def __init__(self, *, secret: bytes, dead_after_s: float = 5.0,
                 tls: ssl.SSLContext | None = None, heartbeat_s: float = HEARTBEAT_S,
                 store: AsyncStateStore | None = None) -> None:
        self.secret = secret
        self.store = store
        #: what the next commit writes, and what clients are sent once it is durable
        self._batch: WriteBatch | None = None
        self._held: list[tuple[_Peer, Message]] = []
        self._commit_wake = asyncio.Event()
        #: commits started and finished (a lookup waits for those begun before it)
        self._commits_begun = 0
        self._commits_done = 0
        self._commit_done = asyncio.Event()
        #: sessions being looked up: what they recorded meanwhile (a job that ends while
        #: its resubmission waits for the store would be in neither)
        self._watched: dict[str, dict[str, JobOutcome]] = {}
        self.tls = tls
        self.heartbeat_s = heartbeat_s
        self.dead_after_s = dead_after_s
        self.state: Coordination | None = None
        self._peers: dict[int, _Peer] = {}
        self._ids = itertools.count(1)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.refused = 0
        #: handshakes refused because the peer did not prove the secret
        self.auth_failures = 0
        #: set when a node's loop registers (``Runner(loops=N)`` waits for its own)
        self.node_joined = asyncio.Event()

    async def serve(self, host: str, port: int, *,
                    task_status: anyio.abc.TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
                    ) -> None:
        """Accept nodes and clients until cancelled; readiness reports the bound address."""
        loop = self._loop = asyncio.get_running_loop()
        self.state = Coordination(dead_after_s=self.dead_after_s,
                                  wall_offset=time.time() - loop.time(),
                                  records=self.store is not None)
        if self.store is not None:
            flows = await self.store.flows()
            self.state.restore(await self.store.sessions(),
                               [(f.session, f.status, f.ended_at) for f in flows], loop.time())
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._heartbeats)
            if self.store is not None:
                tg.start_soon(self._committer)
            addr = await tg.start(functools.partial(
                serve, host, port, role=Role.COORDINATOR, secret=self.secret,
                handler=self._handle, tls=self.tls, on_refused=self._on_refused))
            task_status.started(addr)

    def local_link(self) -> LocalLink:
        """A client link from this process (the server must be serving)."""
        assert self.state is not None
        link_id = next(self._ids)
        peer = self._peers[link_id] = _Peer(None)
        self._apply(self.state.client_joined(link_id, self._now()))
        return LocalLink(self, link_id, peer)

    def _local_message(self, link_id: int, msg: Message) -> None:
        assert self.state is not None
        if link_id not in self._peers:
            raise anyio.BrokenResourceError("the coordinator closed this link")
        self._apply(self.state.message(link_id, msg, self._now()))

    def _local_closed(self, link_id: int) -> None:
        assert self.state is not None
        if self._peers.pop(link_id, None) is not None:
            self._apply(self.state.link_closed(link_id, self._now()))

    def _on_refused(self, address: str, error: Exception) -> None:
        self.refused += 1
        if isinstance(error, HandshakeFailed) and isinstance(error.cause,
                                                              AuthenticationFailed):
            self.auth_failures += 1

    # -- links ------------------------------------------------------------------------

    async def _handle(self, link: Link) -> None:
        assert self.state is not None
        link_id = next(self._ids)
        peer = self._peers[link_id] = _Peer(
            link, client=link.peer is None or link.peer.role is not Role.NODE)
        try:
            with peer.scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._writer, peer)
                    try:
                        await self._read(link_id, link)
                    except (anyio.EndOfStream, anyio.BrokenResourceError,
                            anyio.ClosedResourceError):
                        pass
                    tg.cancel_scope.cancel()
        finally:
            self._peers.pop(link_id, None)
            self._apply(self.state.link_closed(link_id, self._now()))
            with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                await self._flush_last(peer)

    async def _read(self, link_id: int, link: Link) -> None:
        """Everything the peer sends, into the state, until the link ends."""
        assert self.state is not None
        if link.peer is not None and link.peer.role is Role.NODE:
            first: Message | None = None
            with anyio.move_on_after(REGISTER_TIMEOUT_S):
                first = await link.receive()
            if first is None:
                log.info("%s did not register in %g s", link.address, REGISTER_TIMEOUT_S)
                return
            self._apply(self.state.node_joined(link_id, first, self._now()))
            self.node_joined.set()
            if not self.state.has_link(link_id):
                return  # refused: its Error goes out as the link closes
        else:
            self._apply(self.state.client_joined(link_id, self._now()))
        async for msg in link:
            found = None
            if type(msg) is Submit and self.store is not None:
                session = self.state.resumed_session(link_id)
                if session is not None:
                    found = await self._succeeded(session, msg)
            self._apply(self.state.message(link_id, msg, self._now(), found))

    async def _writer(self, peer: _Peer) -> None:
        assert peer.link is not None
        try:
            while True:
                await peer.wake.wait()
                peer.wake.clear()
                msgs, peer.outbox = peer.outbox, []
                await _send(peer.link, msgs)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            peer.scope.cancel()  # the reader sees the same; the link is closing

    async def _flush_last(self, peer: _Peer) -> None:
        """Write what is left for a link being closed (an ``Error`` that says why)."""
        if peer.outbox and peer.link is not None:
            msgs, peer.outbox = peer.outbox, []
            try:
                await _send(peer.link, msgs)
            except Exception:  # noqa: BLE001 - the link is going anyway
                pass

    def _apply(self, outputs: list[Output]) -> None:
        assert self.state is not None
        for out in outputs:
            kind = type(out)
            if kind is Record or kind is SaveFlow or kind is Forget:
                self._keep(out)
                continue
            assert isinstance(out, Send | Close)
            peer = self._peers.get(out.link)
            if peer is None:
                continue
            if kind is Send:
                assert isinstance(out, Send)
                if peer.client and (self._batch is not None
                                    or self._commits_begun > self._commits_done):
                    self._held.append((peer, out.msg))
                    self._commit_wake.set()
                    continue
                peer.outbox.append(out.msg)
                peer.wake.set()
            else:
                assert isinstance(out, Close)
                if peer.link is None:  # a LocalLink: it reads the end of the stream
                    self._peers.pop(out.link, None)
                    self._apply(self.state.link_closed(out.link, self._now()))
                    peer.wake.set()
                    continue
                log.info("closing %s: %s", peer.link.address, out.reason)
                peer.scope.cancel()
        self._arm_timer()

    # -- the store --------------------------------------------------------------------

    def _keep(self, out: Output) -> None:
        if self.store is None:
            return
        from .statestore import StoredFlow, WriteBatch

        batch = self._batch
        if batch is None:
            batch = self._batch = WriteBatch()
            self._commit_wake.set()
        if type(out) is Record:
            assert isinstance(out, Record)
            session = out.session
            batch.outcomes.extend((session, o) for o in out.outcomes)
            watched = self._watched.get(session)
            if watched is not None:
                watched.update((o.job_id, o) for o in out.outcomes)
        elif type(out) is SaveFlow:
            assert isinstance(out, SaveFlow)
            batch.flows.append(StoredFlow(out.session, out.status, out.ended_at))
        else:
            assert isinstance(out, Forget)
            batch.forget.append(out.session)

    async def _committer(self) -> None:
        """Commit what accumulated, one transaction at a time; then send what waited.

        :raises StateWriteFailed: the store could not write (a full disk): the
            coordinator stops rather than tell clients of results it does not keep
        """
        assert self.store is not None
        failed = False
        try:
            while True:
                await self._commit_wake.wait()
                self._commit_wake.clear()
                await self._commit_once()
        except (OSError, sqlite3.Error) as exc:
            failed = True
            raise StateWriteFailed(f"cannot write the state file: {exc}") from exc
        finally:
            if not failed:
                with anyio.CancelScope(shield=True):
                    await self._commit_once()  # SIGTERM: what is pending is kept

    async def _commit_once(self) -> None:
        """Commit the batch; then send what waited for it (what was held before it was
        taken: sends held while it commits wait for the next)."""
        assert self.store is not None
        batch, self._batch = self._batch, None
        held, self._held = self._held, []
        if batch is not None:
            self._commits_begun += 1
            try:
                await self.store.commit(batch)
            finally:
                self._commits_done += 1
                self._commit_done.set()
                self._commit_done.clear()
        for peer, msg in held:
            peer.outbox.append(msg)
            peer.wake.set()

    async def _succeeded(self, session: str, msg: Submit) -> dict[str, JobOutcome]:
        """What the store holds as succeeded among the jobs ``msg`` sends again, once
        every commit begun before this call is done."""
        assert self.store is not None
        watched = self._watched[session] = {}
        try:
            want = self._commits_begun + (1 if self._batch is not None else 0)
            while self._commits_done < want:
                self._commit_wake.set()
                await self._commit_done.wait()
            found = await self.store.succeeded(session, [spec.job_id for spec in msg.jobs])
        finally:
            del self._watched[session]
        found.update(watched)
        return found

    # -- time -------------------------------------------------------------------------

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _arm_timer(self) -> None:
        assert self.state is not None and self._loop is not None
        wake = self.state.next_wake()
        if wake is None or (self._timer_at is not None and self._timer_at <= wake):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = wake
        self._timer = self._loop.call_at(wake, self._on_timer)

    def _on_timer(self) -> None:
        assert self.state is not None
        self._timer = self._timer_at = None
        self._apply(self.state.tick(self._now()))

    async def _heartbeats(self) -> None:
        assert self.state is not None
        while True:
            await anyio.sleep(self.heartbeat_s)
            self._apply(self.state.heartbeat())
            self._apply(self.state.tick(self._now()))


async def _send(link: Link, msgs: list[Message]) -> None:
    """Send in order; a batch too large for one frame goes in halves."""
    try:
        await link.send_many(msgs)
        return
    except FrameTooLarge:
        pass
    for msg in msgs:
        await _send_one(link, msg)


async def _send_one(link: Link, msg: Message) -> None:
    try:
        await link.send(msg)
    except FrameTooLarge:
        if type(msg) is Outcome and len(msg.jobs) > 1:
            half = len(msg.jobs) // 2
            await _send_one(link, Outcome(msg.jobs[:half]))
            await _send_one(link, Outcome(msg.jobs[half:]))
        elif type(msg) is Assign and len(msg.attempts) > 1:
            half = len(msg.attempts) // 2
            await _send_one(link, Assign(msg.attempts[:half]))
            await _send_one(link, Assign(msg.attempts[half:]))
        else:
            raise


# -- the command ---------------------------------------------------------------------------


def _fail(message: str) -> int:
    print(f"asyncjobs: error: {message}", file=sys.stderr)
    return 2


def main(args: argparse.Namespace) -> int:
    """``asyncjobs coordinator``: serve until SIGTERM or Ctrl-C, then exit 0."""
    try:
        host, port = parse_address(args.listen, default_host="127.0.0.1")
        http = None if args.http is None else parse_address(args.http,
                                                             default_host="127.0.0.1")
        secret = load_secret(args.secret_file)
        tls = tls_from_files(args.tls_cert, args.tls_key, args.tls_ca, server=True)
    except ClusterConfigError as exc:
        return _fail(str(exc))
    if not secret and not is_loopback(host):
        return _fail(f"--listen {args.listen} is reachable from other machines: give the "
                     f"cluster a secret (ASYNCJOBS_SECRET or --secret-file), or listen on "
                     f"127.0.0.1")
    if args.dead_after <= 0:
        return _fail(f"--dead-after must be above 0, not {args.dead_after}")
    if args.state is not None and args.no_state:
        return _fail("give --state or --no-state, not both")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="asyncjobs coordinator: %(message)s")
    state_path = None
    if not args.no_state:
        from .statestore import default_state_path

        state_path = Path(args.state) if args.state is not None else default_state_path()
    _tune_gc()
    from ..eventloop import run

    try:
        return run(lambda: _serve(host, port, http, state_path, secret=secret,
                                  dead_after_s=args.dead_after, tls=tls))
    except (OSError, BaseExceptionGroup) as exc:
        bind = _os_error(exc)
        if bind is None:
            raise
        return _fail(f"cannot listen on {args.listen}: {bind.strerror or bind}")


#: gen-0 threshold of the coordinator's process (CPython's default is 700)
GC_GEN0_THRESHOLD = 10_000


def _tune_gc() -> None:
    """The process is the coordinator's alone (as ``asyncjobs run``'s is the run's): freeze
    what exists now, so no full collection walks it again, and collect the youngest
    generation less often. It makes about ten short-lived objects per job; with the
    defaults the collector took ~15 % of the coordination's CPU on 20k io jobs."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def _os_error(exc: BaseException) -> OSError | None:
    """The ``OSError`` of a failed bind, alone or inside task groups' exception groups."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _os_error(inner)
            if found is not None:
                return found
    return None


async def _serve(host: str, port: int, http: tuple[str, int] | None,
                 state_path: Path | None, **options: Any) -> int:
    store = None
    if state_path is not None:
        from .statestore import AsyncStateStore

        try:
            store = await AsyncStateStore.open(state_path)
        except ClusterConfigError as exc:
            return _fail(str(exc))
        except OSError as exc:
            return _fail(f"cannot open the state file {state_path}: "
                         f"{exc.strerror or exc} (give --state another path, or --no-state)")
        except sqlite3.Error as exc:
            return _fail(f"{state_path} is not a state file this coordinator can use "
                         f"({exc}): give --state another path")
        print(f"asyncjobs coordinator: state in {state_path}", file=sys.stderr, flush=True)
    try:
        return await _serve_with(CoordinatorServer(store=store, **options), host, port, http)
    except BaseExceptionGroup as group:
        failed, rest = group.split(StateWriteFailed)
        if failed is None or rest is not None:
            raise
        leaf: BaseException = failed
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        print(f"asyncjobs coordinator: error: {leaf}; stopped, so that no client is "
              f"told of a result it does not keep", file=sys.stderr, flush=True)
        return 1
    finally:
        if store is not None:
            with anyio.CancelScope(shield=True), contextlib.suppress(sqlite3.Error):
                await store.aclose()


async def _serve_with(server: CoordinatorServer, host: str, port: int,
                      http: tuple[str, int] | None) -> int:
    loop = asyncio.get_running_loop()
    notifier = Notifier.from_env()
    web = None
    try:
        async with anyio.create_task_group() as tg:
            bound = await tg.start(functools.partial(server.serve, host, port))
            print(f"asyncjobs coordinator: listening on {_shown(*bound)}", file=sys.stderr,
                  flush=True)
            if http is not None:
                from .http import start_http

                web = await start_http(server, *http)
                for addr in web.addresses:
                    print(f"asyncjobs coordinator: http on {_shown(addr[0], addr[1])}",
                          file=sys.stderr, flush=True)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, functools.partial(_stop, tg.cancel_scope,
                                                               notifier))
            tg.start_soon(notifier.feed_watchdog)
            notifier.notify("READY=1")
            tg.start_soon(notifier.report_status,
                          functools.partial(_status_line, server, _shown(*bound)))
    finally:
        if web is not None:
            with anyio.CancelScope(shield=True):
                await web.cleanup()
    print("asyncjobs coordinator: stopped", file=sys.stderr, flush=True)
    return 0


class StateWriteFailed(Exception):
    """The state file could not be written while serving."""


def _stop(scope: anyio.CancelScope, notifier: Notifier) -> None:
    notifier.notify("STOPPING=1")
    scope.cancel()


def _status_line(server: CoordinatorServer, address: str) -> str:
    """systemd's ``STATUS=``: "serving on HOST:PORT; 2 nodes, 14 loops; 1,203 jobs active"."""
    if server.state is None:
        return f"starting on {address}"
    data = server.state.to_dict()
    nodes = sum(1 for n in data["nodes"] if n["alive"])
    return (f"serving on {address}; {nodes} node{'s' * (nodes != 1)}, {data['loops']} "
            f"loop{'s' * (data['loops'] != 1)}; {data['jobs_active']:,} jobs active")


def _shown(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
