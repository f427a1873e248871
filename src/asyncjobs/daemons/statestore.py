"""The coordinator's durable state (``--state PATH.db``), so that it survives kill -9.

What a restart must not forget is what a client was already told, or is about to be:

1. A session's succeeded job outcome is written, and the transaction has returned,
   before the coordinator tells the client (``commit`` returns once durable). A client
   that re-submits the same job id in the same session after a restart is answered from
   here (``succeeded``), and the job does not run again. Failed, cancelled and skipped
   outcomes are not kept: running those again is what a re-submission asks for.
2. Flows are kept (upserted by session and flow id) for ``asyncjobs status`` after a
   restart; one that ended more than ``KEEP_FLOWS_S`` ago is pruned when the store opens
   and whenever flows are written, and never listed.
3. Forgetting a session (its client said goodbye, or expired) deletes its outcomes in
   the same transaction as whatever else its batch holds, after the batch's adds; its
   flows stay, for ``status``.
4. One process per file: a lock beside it (``PATH.db.lock``, ``flock``, so it goes with
   its process however that ends) makes a second coordinator fail with ``StateInUse``.
5. Group commit: while one transaction runs, the batches handed to ``commit`` wait and
   are merged (``WriteBatch.merge``, which keeps their order's meaning) into the next
   single transaction. A group costs one ``call_soon_threadsafe`` and one transaction,
   however many commits it holds; the encoding (msgpack, as the protocol packs an
   ``Outcome``'s items, so what comes back equals what a client would have received)
   happens on the store thread, by ``executemany``, never on the event loop.
6. A read (``succeeded``, ``flows``, ``sessions``) is ordered after every ``commit``
   called before it: it waits behind the group being gathered, if there is one. (A
   commit is called when its coroutine starts running: a task created for one but not
   yet run has not called it.)

Durability: WAL with ``synchronous=NORMAL`` (``SYNCHRONOUS``). A transaction that has
returned is in the WAL file, in the OS's page cache, so it survives kill -9 of the
coordinator, which is what issue 16 asks for; a power loss or kernel crash may lose the
last transactions (never corrupt the file), and then their jobs run again when their
clients re-submit them, as after a lost node. FULL would fsync the WAL once per group.
Measured (``PYTHONPATH=src python benchmarks/bench_statestore.py --repeat 5 --dir .``:
100k outcomes, 8 writers, a shared 2-core VM, ext4 on a virtual disk whose fsync takes
0.12 ms): in commits of 500, NORMAL 377k rows/s, FULL 366k; in commits of 50, NORMAL
296k, FULL 225k (-24 %); ~62 MiB peak RSS either way, and 0.07 µs a row of event loop CPU.
Beside 50k rows/s, the loop got 13 % (NORMAL) and 17.5 % (FULL) less work done (noisy).
So FULL is cheap here only because this disk's flush is; where a flush takes 1-10 ms it
adds that to every answer's latency and caps the transactions a second, for a loss that
re-running repairs. ``open(..., synchronous="FULL")`` is there for a deployment that
wants power-loss safety all the same.

The SQL is plain (tables, ``INSERT ... ON CONFLICT DO UPDATE``, ``IN`` lists) so a
PostgreSQL store can implement ``StateStore`` the same way; only the PRAGMAs at open are
SQLite's. All SQLite calls run on one thread of their own, so the event loop never waits
on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .. import pidlock
from ..errors import ClusterConfigError, StateInUse
from ..protocol.messages import FlowStatus, JobOutcome, decode_item, encode_items

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

#: how long a flow that ended is kept for ``status``
KEEP_FLOWS_S = 86400.0
#: ``PRAGMA synchronous`` in WAL mode (see the module docstring for why NORMAL)
SYNCHRONOUS: Literal["NORMAL", "FULL"] = "NORMAL"
#: job ids per ``IN (...)`` list of a ``succeeded`` query (well under every SQLite's
#: and PostgreSQL's limit on parameters)
IN_CHUNK = 500
#: bumped when the tables change; a file of a newer version is refused, never dropped
SCHEMA_VERSION = 1
#: ``outcomes.outcome``: ``encode_item`` of the ``JobOutcome`` (msgpack, as in a message)
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS outcomes ("
    " session TEXT NOT NULL, job_id TEXT NOT NULL, outcome BLOB NOT NULL,"
    " PRIMARY KEY (session, job_id))",
    "CREATE TABLE IF NOT EXISTS flows ("
    " session TEXT NOT NULL, flow_id TEXT NOT NULL, file TEXT NOT NULL,"
    " state TEXT NOT NULL, done INTEGER NOT NULL, total INTEGER NOT NULL, ended_at REAL,"
    " PRIMARY KEY (session, flow_id))",
)
#: outcomes per INSERT statement (3 parameters each: under every SQLite's limit of 999)
ROWS_PER_INSERT = 100


def _add_outcomes_sql(rows: int) -> str:
    return ("INSERT INTO outcomes (session, job_id, outcome) VALUES (?, ?, ?)"
            + ", (?, ?, ?)" * (rows - 1)
            + " ON CONFLICT (session, job_id) DO UPDATE SET outcome = excluded.outcome")


_ADD_OUTCOMES = _add_outcomes_sql(ROWS_PER_INSERT)
_FORGET = "DELETE FROM outcomes WHERE session = ?"
_PUT_FLOW = ("INSERT INTO flows (session, flow_id, file, state, done, total, ended_at)"
             " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (session, flow_id) DO UPDATE SET"
             " file = excluded.file, state = excluded.state, done = excluded.done,"
             " total = excluded.total, ended_at = excluded.ended_at")
_PRUNE_FLOWS = "DELETE FROM flows WHERE ended_at < ?"




@dataclass(frozen=True, slots=True)
class StoredFlow:
    """A flow as kept for ``status``."""

    #: the session of the client that submitted it
    session: str
    status: FlowStatus
    #: Unix time it ended; None while it runs
    ended_at: float | None


@dataclass(slots=True)
class WriteBatch:
    """Changes written in one transaction, in this order: ``forget_first``, ``outcomes``,
    ``flows``, ``forget``."""

    #: (session, a succeeded outcome); a job id already held for its session is replaced
    outcomes: list[tuple[str, JobOutcome]] = field(default_factory=list)
    #: upserted by (session, flow id)
    flows: list[StoredFlow] = field(default_factory=list)
    #: sessions whose outcomes go, after the adds of the same batch; their flows stay
    forget: list[str] = field(default_factory=list)
    #: sessions whose outcomes go before the adds: what ``merge`` makes of an earlier
    #: batch's ``forget`` (a caller leaves it empty)
    forget_first: list[str] = field(default_factory=list)

    def merge(self, other: WriteBatch) -> None:
        """Add ``other``'s changes after these: writing the result is writing this batch,
        then ``other``. ``other`` is not changed, nor shared.

        An outcome of a session forgotten in between is dropped here, and the forgetting
        moves to ``forget_first``, so that ``other``'s adds for that session survive.
        """
        gone = {*self.forget, *other.forget_first}
        if gone:
            self.outcomes = [row for row in self.outcomes if row[0] not in gone]
            self.forget_first = list(dict.fromkeys(
                [*self.forget_first, *self.forget, *other.forget_first]))
        self.outcomes.extend(other.outcomes)
        self.flows.extend(other.flows)
        self.forget = list(other.forget)

    def __bool__(self) -> bool:
        return bool(self.outcomes or self.flows or self.forget or self.forget_first)


class StateStore(Protocol):
    """The narrow seam between the coordinator and where its state lives. Blocking: the
    coordinator uses one through ``AsyncStateStore``'s thread."""

    def write(self, batch: WriteBatch) -> None:
        """Apply ``batch`` in one transaction; durable when this returns."""

    def succeeded(self, session: str, job_ids: Sequence[str]) -> dict[str, JobOutcome]:
        """The held outcomes of ``job_ids`` in ``session``; ids not held are absent."""

    def sessions(self) -> list[str]:
        """Sessions with outcomes held."""

    def flows(self) -> list[StoredFlow]:
        """The flows kept for ``status``."""

    def close(self) -> None:
        """Release the store; safe to call twice."""


def default_state_path(environ: Mapping[str, str] | None = None) -> Path:
    """Where the coordinator keeps its state without ``--state``: systemd's
    ``$STATE_DIRECTORY`` (its first entry), else ``$XDG_STATE_HOME/asyncjobs``, else
    ``~/.local/state/asyncjobs``; the file is ``coordinator.db`` in it.

    :param environ: the environment to read (default ``os.environ``)
    """
    env = os.environ if environ is None else environ
    systemd = env.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd:
        return Path(systemd) / "coordinator.db"
    xdg = env.get("XDG_STATE_HOME", "")
    # the XDG spec: a relative path is invalid and is ignored
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "state"
    return base / "asyncjobs" / "coordinator.db"


class SqliteStateStore:
    """``StateStore`` in one SQLite file (WAL). Blocking, and bound to the thread that
    opened it (SQLite's own rule): use ``AsyncStateStore`` from an event loop.

    Made by ``open``.
    """

    def __init__(self, conn: sqlite3.Connection, lock_fd: int, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = conn
        self._lock_fd: int | None = lock_fd
        #: transactions written by ``write``
        self.transactions = 0
        self._in_sql = "?" + ", ?" * (IN_CHUNK - 1)

    @classmethod
    def open(cls, path: str | Path, *,
             synchronous: Literal["NORMAL", "FULL"] = SYNCHRONOUS) -> SqliteStateStore:
        """Open (creating its folder and tables) the state file ``path``, and lock it.

        :param synchronous: ``"NORMAL"`` survives kill -9; ``"FULL"`` a power loss too
        :raises StateInUse: if another process holds it
        :raises ClusterConfigError: if a newer asyncjobs wrote it
        :raises OSError: if its folder or lock file cannot be created
        :raises sqlite3.Error: if it is not a database SQLite can open
        """
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', not {synchronous!r}")
        path = Path(path)
        # jobs' results are the users' data: the folder and the file are the owner's
        # alone (SQLite gives its -wal and -shm files the database file's mode)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = _lock(path.with_name(path.name + ".lock"), str(path))
        conn: sqlite3.Connection | None = None
        try:
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            conn = sqlite3.connect(path, isolation_level=None)
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise sqlite3.OperationalError(f"{path}: WAL mode refused (got {mode!r})")
            conn.execute(f"PRAGMA synchronous={synchronous}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ClusterConfigError(
                    f"{path} was written by a newer asyncjobs (state schema {version}, this "
                    f"one knows {SCHEMA_VERSION}); upgrade, or give --state another file")
            conn.execute("BEGIN")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(_PRUNE_FLOWS, (time.time() - KEEP_FLOWS_S,))
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn is not None:
                conn.close()
            pidlock.unlock(fd)
            raise
        return cls(conn, fd, path)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"the state store {self.path} is closed")
        return self._conn

    def write(self, batch: WriteBatch) -> None:
        """Apply ``batch`` in one transaction (see ``WriteBatch`` for the order).

        :raises UnencodableValue: if an outcome's value cannot be packed (nothing is
            written)
        :raises sqlite3.Error: if SQLite fails (nothing is written)
        """
        conn = self._db()
        params: list[str | bytes] = []
        if batch.outcomes:
            blobs = encode_items([outcome for _, outcome in batch.outcomes])
            params = [value for (session, outcome), blob
                      in zip(batch.outcomes, blobs, strict=True)
                      for value in (session, outcome.job_id, blob)]
        conn.execute("BEGIN")
        try:
            if batch.forget_first:
                conn.executemany(_FORGET, [(s,) for s in batch.forget_first])
            step = 3 * ROWS_PER_INSERT
            for start in range(0, len(params), step):
                chunk = params[start:start + step]
                conn.execute(_ADD_OUTCOMES if len(chunk) == step
                             else _add_outcomes_sql(len(chunk) // 3), chunk)
            if batch.flows:
                conn.executemany(_PUT_FLOW, [
                    (f.session, f.status.flow_id, f.status.file, f.status.state,
                     f.status.done, f.status.total, f.ended_at) for f in batch.flows])
                conn.execute(_PRUNE_FLOWS, (time.time() - KEEP_FLOWS_S,))
            if batch.forget:
                conn.executemany(_FORGET, [(s,) for s in batch.forget])
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.transactions += 1

    def succeeded(self, session: str, job_ids: Sequence[str]) -> dict[str, JobOutcome]:
        """The held outcomes of ``job_ids`` in ``session``; ids not held are absent.

        :raises sqlite3.Error: if SQLite fails
        :raises asyncjobs.protocol.LocalProtocolError: if a stored outcome is damaged
        """
        conn = self._db()
        found: dict[str, JobOutcome] = {}
        for start in range(0, len(job_ids), IN_CHUNK):
            chunk = list(job_ids[start:start + IN_CHUNK])
            marks = self._in_sql if len(chunk) == IN_CHUNK else "?" + ", ?" * (len(chunk) - 1)
            for job_id, blob in conn.execute(
                    f"SELECT job_id, outcome FROM outcomes WHERE session = ?"
                    f" AND job_id IN ({marks})", [session, *chunk]):
                found[job_id] = decode_item(JobOutcome, blob)
        return found

    def sessions(self) -> list[str]:
        """Sessions with outcomes held, sorted.

        :raises sqlite3.Error: if SQLite fails
        """
        return [s for (s,) in self._db().execute(
            "SELECT DISTINCT session FROM outcomes ORDER BY session")]

    def flows(self) -> list[StoredFlow]:
        """The flows kept for ``status`` (none that ended over ``KEEP_FLOWS_S`` ago), by
        session and flow id.

        :raises sqlite3.Error: if SQLite fails
        """
        rows = self._db().execute(
            "SELECT session, flow_id, file, state, done, total, ended_at FROM flows"
            " WHERE ended_at IS NULL OR ended_at >= ? ORDER BY session, flow_id",
            (time.time() - KEEP_FLOWS_S,))
        return [StoredFlow(session, FlowStatus(flow_id, file, state, done, total), ended_at)
                for session, flow_id, file, state, done, total, ended_at in rows]

    def close(self) -> None:
        """Close the database and release the lock; safe to call twice."""
        conn, self._conn = self._conn, None
        fd, self._lock_fd = self._lock_fd, None
        try:
            if conn is not None:
                conn.close()
        finally:
            if fd is not None:
                pidlock.unlock(fd)


#: what the store thread runs: (function, its argument, what gets the result or the
#: exception on the event loop)
_Op = tuple["Callable[[Any], Any]", Any, "Callable[[Any, BaseException | None], None]"]


class _Group:
    """The commits gathered for one transaction."""

    __slots__ = ("batch", "done", "followers")

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.batch = WriteBatch()
        self.done = done
        #: reads called after these commits, sent to the thread after the group
        self.followers: list[_Op] = []


class AsyncStateStore:
    """A ``StateStore`` seen from an event loop: one dedicated thread runs it, and
    ``commit`` gathers the batches handed in while a transaction runs into the next one
    (rule 5). Made by ``open``; ``aclose`` when done.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._store: StateStore | None = None
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="asyncjobs-statestore",
                                        daemon=True)
        #: the group being gathered (None: no commit waits for a transaction)
        self._open: _Group | None = None
        #: the group whose transaction runs (None: none runs)
        self._writing: _Group | None = None
        self._closed = False
        #: transactions written, and ``commit`` calls they held
        self.transactions = 0
        self.commits = 0

    @classmethod
    async def open(cls, path: str | Path, *,
                   synchronous: Literal["NORMAL", "FULL"] = SYNCHRONOUS) -> AsyncStateStore:
        """Open the state file ``path`` on a thread of its own (``SqliteStateStore.open``).

        :raises StateInUse: if another process holds it
        :raises ClusterConfigError: if a newer asyncjobs wrote it
        :raises OSError: if its folder or lock file cannot be created
        :raises sqlite3.Error: if it is not a database SQLite can open
        """
        self = cls(asyncio.get_running_loop())
        self._thread.start()

        def open_here(where: str | Path) -> None:
            self._store = SqliteStateStore.open(where, synchronous=synchronous)

        try:
            await self._call(open_here, path)
        except BaseException:  # cancelled too: the thread may still open it, then closes it
            self._closed = True
            self._queue.put((self._close_here, None, _ignore))
            self._queue.put(None)
            raise
        return self

    def _close_here(self, _: Any) -> None:
        store, self._store = self._store, None
        if store is not None:
            store.close()

    def _serve(self) -> None:
        while (op := self._queue.get()) is not None:
            fn, arg, settle = op
            result: Any = None
            error: BaseException | None = None
            try:
                result = fn(arg)
            except BaseException as exc:  # handed to the loop, raised there
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                self._loop.call_soon_threadsafe(settle, result, error)

    async def _call(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        future: asyncio.Future[Any] = self._loop.create_future()
        op: _Op = (fn, arg, lambda result, error: _settle(future, result, error))
        if self._open is not None:
            self._open.followers.append(op)
        else:
            self._queue.put(op)
        return await future

    def _live(self) -> StateStore:
        if self._closed or self._store is None:
            raise RuntimeError("the state store is closed")
        return self._store

    async def commit(self, batch: WriteBatch) -> None:
        """Write ``batch``; returns once it is durable (rule 5: with whatever else was
        handed in meanwhile, in one transaction). Cancelling the wait does not withdraw
        the batch.

        :raises UnencodableValue: if an outcome of the group cannot be packed (nothing
            of the group is written)
        :raises sqlite3.Error: if the group's transaction fails (nothing of it is
            written)
        :raises RuntimeError: if the store is closed
        """
        self._live()
        group = self._open
        if group is None:
            group = self._open = _Group(self._loop.create_future())
        group.batch.merge(batch)
        self.commits += 1
        if self._writing is None:
            self._start_next()
        await asyncio.shield(group.done)

    def _start_next(self) -> None:
        group, self._open = self._open, None
        if group is None:
            return
        self._writing = group
        assert self._store is not None
        self._queue.put((self._store.write, group.batch, self._written))
        for op in group.followers:
            self._queue.put(op)

    def _written(self, _: Any, error: BaseException | None) -> None:
        group, self._writing = self._writing, None
        assert group is not None
        if error is None:
            self.transactions += 1
        _settle(group.done, None, error)
        if error is not None:
            group.done.exception()  # retrieved: the commits that wait get it; none may
        self._start_next()

    async def succeeded(self, session: str, job_ids: Sequence[str]) -> dict[str, JobOutcome]:
        """The held outcomes of ``job_ids`` in ``session``, after every ``commit``
        called before this (rule 6); ids not held are absent.

        :raises sqlite3.Error: if SQLite fails
        :raises RuntimeError: if the store is closed
        """
        store = self._live()
        ids = list(job_ids)
        found: dict[str, JobOutcome] = await self._call(
            lambda _: store.succeeded(session, ids), None)
        return found

    async def sessions(self) -> list[str]:
        """Sessions with outcomes held, after every ``commit`` called before this.

        :raises sqlite3.Error: if SQLite fails
        :raises RuntimeError: if the store is closed
        """
        store = self._live()
        found: list[str] = await self._call(lambda _: store.sessions(), None)
        return found

    async def flows(self) -> list[StoredFlow]:
        """The flows kept for ``status``, after every ``commit`` called before this.

        :raises sqlite3.Error: if SQLite fails
        :raises RuntimeError: if the store is closed
        """
        store = self._live()
        found: list[StoredFlow] = await self._call(lambda _: store.flows(), None)
        return found

    async def aclose(self) -> None:
        """Wait for the commits under way, close the store (releasing its lock) and end
        its thread. Safe to call twice.

        :raises sqlite3.Error: if closing the database fails (the lock is released and
            the thread ended all the same)
        """
        if self._closed:
            return
        self._closed = True  # no commit from here on: the ones under way are the last
        pending = [g.done for g in (self._writing, self._open) if g is not None]
        if pending:
            await asyncio.wait(pending)
        try:
            await self._call(self._close_here, None)
        finally:
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join)


def _ignore(_: Any, __: BaseException | None) -> None:
    pass


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # its waiter was cancelled
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


def _lock(path: Path, shown_path: str) -> int:
    """:raises StateInUse: if another process holds the lock"""
    try:
        return pidlock.lock(path)
    except pidlock.Held as held:
        raise StateInUse(shown_path, held.pid) from None

