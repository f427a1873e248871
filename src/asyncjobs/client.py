"""``asyncjobs.connect()``: the await API on a cluster, through one link to a coordinator
(``clusterbackend.ClusterBackend`` says how that link is used)."""

from __future__ import annotations

import hashlib
import uuid
from typing import TYPE_CHECKING, Any

import anyio

from .api import JobsApi
from .auth import load_secret, parse_address
from .clusterbackend import (
    CLUSTER_INFO_WAIT_S,
    RANDOM_SESSION_MARGIN_S,
    RECONNECT_S,
    SESSION_KEEP_S,
    ClusterBackend,
    ClusterFlowRun,
    by_name,
    drop_link,
)
from .errors import RunnerClosed
from .protocol import Role
from .targets import TargetError
from .transport import connect as open_link

if TYPE_CHECKING:
    import ssl
    from collections.abc import Awaitable, Mapping
    from pathlib import Path
    from types import TracebackType

    from .backend import Backend
    from .flow.plan import FlowPlan
    from .flowrun import FlowRun
    from .protocol import StatusReply
    from .store import RunStore
    from .targets import Target
    from .transport import Link


class Cluster(JobsApi):
    """A cluster, as ``asyncjobs.connect(address)`` opens it: the same ``submit``,
    ``map``, ``run_flow`` and ``open_flow`` as ``Runner``, run by the coordinator's nodes.

    Use it as ``async with asyncjobs.connect("host:7700") as cluster``. Leaving the block
    normally waits for every submitted job; leaving it with an exception (or
    cancellation) cancels them on the cluster. Then the link is closed.

    Jobs travel by reference: a callable must be importable by its module and name on
    the nodes (``"module:attribute"``, or a top-level function of a module), and its
    arguments and result must be plain data (msgpack: None, bool, int, float, str,
    bytes, lists and dicts). A ``"module:attribute"`` whose module this process does not
    have is sent by name alone: the nodes import it and apply its ``@asyncjobs.job``
    defaults (a wrong name then fails the job, on the node).

    Every link it opens names its ``session`` first, so a link made again after a break
    (or a coordinator restart) finds its jobs: those still running are adopted, those
    that succeeded are answered without running again.
    """

    def __init__(self, address: str, *, secret: bytes | str | None = None,
                 tls: ssl.SSLContext | None = None,
                 handshake_timeout_s: float = 5.0,
                 reconnect_s: float = RECONNECT_S,
                 session: str | None = None) -> None:
        super().__init__()
        self._reconnect_s = reconnect_s
        #: the session every link names first; a random one is kept on the coordinator
        #: only while this object may link again (no other process can name it)
        self.session = session if session is not None else "api:" + uuid.uuid4().hex
        self._keep_s = (SESSION_KEEP_S if session is not None
                        else reconnect_s + RANDOM_SESSION_MARGIN_S)
        self.address = address
        self._host, self._port = parse_address(address)
        self._secret = secret
        self._tls = tls
        self._handshake_timeout_s = handshake_timeout_s
        self._client: ClusterBackend | None = None
        #: makes this client's flow ids unique on the coordinator, and the same in a
        #: session attached again (its job ids and limit scopes are the session's)
        self._tag = hashlib.sha256(self.session.encode()).hexdigest()[:12]

    async def __aenter__(self) -> Cluster:
        """Link with the coordinator. Returns after the handshake and the coordinator's
        first ``ClusterInfo`` (nodes may come later: jobs wait for them).

        :raises ConnectionFailed: nobody listens there, the peer is not an asyncjobs
            coordinator, or it does not share our secret (``HandshakeFailed``); the
            message names the address
        :raises SessionBusy: another client's live link holds our session (a
            ``ConnectionFailed`` too)
        :raises ClusterConfigError: an unreadable or too readable secret file
        """
        if self._client is not None:
            raise RuntimeError("this cluster connection is already open")
        secret = self._secret
        key = (load_secret() if secret is None
               else secret.encode() if isinstance(secret, str) else secret)
        def link() -> Awaitable[Link]:
            return open_link(self._host, self._port, role=Role.CLIENT, secret=key,
                             tls=self._tls, handshake_timeout_s=self._handshake_timeout_s)

        # a coordinator that restarts is linked with again, and sent what is unfinished
        client = ClusterBackend(await link(), session=self.session, keep_s=self._keep_s,
                                reconnect=link,
                                reconnect_s=self._reconnect_s)
        try:
            await client.attach(max(self._handshake_timeout_s, 1.0))
        except BaseException:
            # no goodbye: it would end a session that is perhaps another client's
            await drop_link(client.link)
            raise
        self._client = client
        client.start()
        try:
            with anyio.move_on_after(CLUSTER_INFO_WAIT_S):
                await client.informed.wait()
        except BaseException:
            self._client = None
            await client.aclose(cancel=True)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client = self._client
        assert client is not None
        try:
            await client.aclose(cancel=exc_type is not None)
        finally:
            self._client = None

    @property
    def backend(self) -> ClusterBackend:
        """The open link's backend (internal, for the command line and tests).

        :raises RunnerClosed: if the cluster is not open, or its link was lost
        """
        if self._client is None:
            raise RunnerClosed("the cluster is not open: use "
                               "'async with asyncjobs.connect(address) as cluster'")
        self._client._check_open()
        return self._client

    def _backend(self) -> Backend:
        return self.backend

    def _target(self, fn: Any) -> Target:
        try:
            return super()._target(fn)
        except TargetError:
            if isinstance(fn, str):
                target = by_name(fn)
                if target is not None:
                    self._targets[fn] = target
                    return target
            raise

    async def status(self, *, timeout_s: float = 10.0) -> StatusReply:
        """The cluster's nodes and flows, as ``asyncjobs status`` shows them.

        :raises RunnerClosed: if the link is gone
        :raises TimeoutError: if the coordinator does not answer within ``timeout_s``
        """
        return await self.backend.request_status(timeout_s)

    def _flow_run(self, backend: Backend, plan: FlowPlan, path: str | Path, *,
                  env: Mapping[str, str], store: RunStore, resume: bool,
                  keep_records: bool) -> FlowRun:
        return ClusterFlowRun(self.backend, plan, file=str(path), env=env, store=store,
                              resume=resume, scope=f"flow{next(self._scopes)}-{self._tag}",
                              keep_records=keep_records)


def connect(address: str, *, secret: bytes | str | None = None,
            tls: ssl.SSLContext | None = None, reconnect_s: float = RECONNECT_S,
            session: str | None = None) -> Cluster:
    """A cluster to run jobs on: use as ``async with asyncjobs.connect("host:7700") as
    cluster``, then ``cluster.submit``, ``map``, ``run_flow`` as on a ``Runner``.

    :param address: the coordinator's ``HOST:PORT``
    :param secret: the cluster's secret (default: ``$ASYNCJOBS_SECRET``)
    :param tls: a client-side TLS context (``transport.tls_contexts(...)[1]``), or None
        for plain TCP
    :param reconnect_s: when the link breaks (the coordinator restarts, the network
        blinks), how long to try linking again before unfinished jobs fail; once linked,
        they are sent again (at-least-once: a job may run twice, its result counts once)
    :param session: the name this client gives the coordinator first on each link it
        opens (None: a random ``"api:..."``, the same for every link of this cluster
        object). A link opened again with the same session, after a break or a
        coordinator restart, takes the session back: its jobs still running are
        adopted, its succeeded ones answered without running again. Closing the cluster
        (leaving the block) ends the session. A client that dies without closing leaves
        it kept on the coordinator, its jobs running: for an hour with a session given
        here (choose a stable name, one per logical run and unique among clients, to
        re-attach from a new process), for ``reconnect_s`` and 30 s with a random one
        (which no other process can name: its jobs are then cancelled).
    :returns: the cluster, linked when its ``async with`` is entered
    :raises ClusterConfigError: if ``address`` is not ``HOST:PORT``
    """
    return Cluster(address, secret=secret, tls=tls, reconnect_s=reconnect_s,
                   session=session)
