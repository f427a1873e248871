"""Run state in SQLite, for ``--resume`` (the coordinator's own is ``daemons/statestore.py``).

Every run of a flow records the jobs that succeeded in ``.asyncjobs/state.db`` beside
the flow file (WAL mode): their id, fingerprint (a digest of the job's definition and of
the inputs its templates use, shared by a ``foreach`` job's items), item key and, when a
template or the summary uses it, their result. That is all ``--resume`` needs, and all
that is written, because this is on the hot path of a 100,000-job flow: what succeeded
since the last write goes as one msgpack blob, one row per write. (A row per job cost
~6 µs per job, most of it the store thread and the event loop taking turns at the GIL.)
``--resume`` reads the last run of the same file: a job recorded there with the same
fingerprint and item is not run again. (The full per-job record is ``--report``'s.)

A run may be killed at any moment, and ``--resume`` must not forget what it knew:

1. A resumed run starts by carrying the last run's records (the newest of each job, as
   one blob) into its own, in the transaction that creates it, so the newest run always
   holds everything done so far, however many runs were killed before.
2. The first write follows the first success at once, then one at most every
   ``FLUSH_EVERY_S``: a kill loses that much work, and the write under way, at most.
3. One run of a file at a time: a lock beside the database (``flock``, so it dies with
   its process) makes a second one fail with ``RunInProgress``. Runs of other files in
   the same folder share the database: every connection waits for the others
   (``BUSY_TIMEOUT_S``), writes are single statements or short ``BEGIN IMMEDIATE``
   transactions, and what SQLite still answers "busy" is retried.

All SQLite calls run on one thread of their own, so the event loop never waits on disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgpack

from . import pidlock
from .errors import RunInProgress, StateUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable

_T = TypeVar("_T")

STATE_DIR = ".asyncjobs"
KEEP_RUNS = 5
#: the longest a write waits after the first success since the last one
FLUSH_EVERY_S = 0.1
#: how long a connection waits for another run's write (SQLite's busy timeout), and how
#: long "busy" answers that come without waiting are retried
BUSY_TIMEOUT_S = 30.0

#: bumped when the tables change; a state file of another version is started afresh
#: (it only ever saves work on ``--resume``, it never holds anything else)
SCHEMA_VERSION = 3
#: ``succeeded.jobs``: msgpack ``[[fingerprint, [[job_id, item_key, packed_result], ...]],
#: ...]``, the jobs that succeeded since the previous write (packed_result: msgpack of the
#: result, or nil when not kept); a resumed run's ``seq`` 0 holds what it carried over
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY, flow_path TEXT NOT NULL, flow_name TEXT NOT NULL,
    started REAL NOT NULL, ended REAL, status TEXT
);
CREATE TABLE IF NOT EXISTS succeeded (
    run_id INTEGER NOT NULL, seq INTEGER NOT NULL, jobs BLOB NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
"""

#: job id -> (fingerprint, item key, packed result or None)
Rows = dict[str, tuple[str, str, bytes | None]]


def fingerprint(definition: Any, item: Any, inputs: Any) -> str:
    """A stable digest of what a job would run with; any change means a new run."""
    text = json.dumps([definition, item, inputs], sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


#: item keys longer than this are stored as their digest
ITEM_KEY_CHARS = 64


def item_key(item: Any) -> str:
    """What tells one item of a ``foreach`` from another, as short text. Items are
    mostly small scalars, and this runs for every item, so those are kept as they are
    (no hashing); longer items are digested."""
    if type(item) is int:
        return str(item)
    if item is None or isinstance(item, int | float | str | bool):
        text = f"{type(item).__name__}:{item!r}"
    else:
        text = "json:" + json.dumps(item, sort_keys=True, default=repr)
    if len(text) <= ITEM_KEY_CHARS:
        return text
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def pack_result(value: Any) -> bytes | None:
    """The result as msgpack, or None when it is not plain data."""
    try:
        return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError):
        return None


class Prior:
    """What the last run recorded as succeeded: job id -> (fingerprint, item key,
    packed result)."""

    def __init__(self, rows: Rows) -> None:
        self.rows = rows
        #: the job ``match`` last allowed to skip (its record is carried over as it is)
        self.matched: str | None = None

    def match(self, job_id: str, digest: str, key: str,
              need_result: bool) -> tuple[bool, Any]:
        """Whether ``job_id`` may be skipped, and its result."""
        row = self.rows.get(job_id)
        if row is None or row[0] != digest or row[1] != key:
            return False, None
        if row[2] is None:
            if need_result:
                return False, None
            self.matched = job_id
            return True, None
        self.matched = job_id
        return True, msgpack.unpackb(row[2], raw=False)


class RunStore:
    """One run's records, written in batches on a thread of their own.

    :param flow_path: the flow file; the database lives in ``.asyncjobs/`` beside it
    """

    def __init__(self, flow_path: str | Path, flow_name: str) -> None:
        #: the file as the caller named it, for messages
        self.shown_path = str(flow_path)
        self.flow_path = str(Path(flow_path).resolve())
        self.flow_name = flow_name
        self.db_path = Path(self.flow_path).parent / STATE_DIR / "state.db"
        self.lock_path = self.db_path.parent / f"{Path(self.flow_path).name}.lock"
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="asyncjobs-store")
        #: whether the thread is shut down (after ``close``, or an ``open`` that failed)
        self._shut = False
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._run_id: int | None = None
        #: what this run carried over from the last one (``open(resume=True)``)
        self._prior: Prior | None = None
        #: fingerprint -> [(job id, item key, packed result or None)], not yet written
        self._pending: dict[str, list[tuple[str, str, bytes | None]]] = {}
        #: set when ``_pending`` stops being empty
        self._dirty = asyncio.Event()
        self._seq = 0
        self._flusher: asyncio.Task[None] | None = None

    async def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def open(self, *, resume: bool) -> Prior | None:
        """Start recording a run; with ``resume``, return what the last run left.

        On failure nothing stays open, and ``close`` may still be called.

        :raises RunInProgress: if another run of the same file is going on
        :raises StateUnavailable: if the state folder, its lock file or the database
            cannot be created or read
        """
        try:
            prior = await self._call(self._open, resume)
        except (OSError, sqlite3.Error) as exc:
            self._shutdown()
            raise StateUnavailable(str(self.db_path), f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            self._shutdown()
            raise
        self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())
        return prior

    def _open(self, resume: bool) -> Prior | None:
        try:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = _lock(self.lock_path, self.shown_path)
            conn = self._conn = sqlite3.connect(
                self.db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            _retry(lambda: conn.execute("PRAGMA journal_mode=WAL"))
            conn.execute("PRAGMA synchronous=NORMAL")
            _retry(lambda: _transaction(conn, _migrate))
            prior = None
            carried = b""
            if resume:
                rows = _unpack_rows(_retry(lambda: conn.execute(
                    "SELECT jobs FROM succeeded WHERE run_id = (SELECT id FROM runs"
                    " WHERE flow_path = ? ORDER BY id DESC LIMIT 1) ORDER BY seq",
                    (self.flow_path,),
                ).fetchall()))
                prior = self._prior = Prior(rows)
                carried = _pack_rows(rows)
            self._run_id = _retry(lambda: _transaction(conn, self._start_run, carried))
            return prior
        except BaseException:
            self._release()
            raise

    def _start_run(self, conn: sqlite3.Connection, carried: bytes) -> int:
        run_id = conn.execute(
            "INSERT INTO runs (flow_path, flow_name, started) VALUES (?, ?, ?)",
            (self.flow_path, self.flow_name, time.time()),
        ).lastrowid
        assert run_id is not None
        if carried:
            conn.execute("INSERT INTO succeeded (run_id, seq, jobs) VALUES (?, 0, ?)",
                         (run_id, carried))
        old = conn.execute(
            "SELECT id FROM runs WHERE flow_path = ? ORDER BY id DESC LIMIT -1 OFFSET ?",
            (self.flow_path, KEEP_RUNS),
        ).fetchall()
        for (old_id,) in old:
            conn.execute("DELETE FROM succeeded WHERE run_id = ?", (old_id,))
            conn.execute("DELETE FROM runs WHERE id = ?", (old_id,))
        return run_id

    def succeeded(self, job_id: str, digest: str, key: str, result: Any = None, *,
                  keep_result: bool) -> None:
        """Queue a job that succeeded; written within ``FLUSH_EVERY_S``.

        A job the ``Prior`` of ``open`` has just matched is not written again: this run
        carried its record over already.

        :param digest: the job's ``fingerprint``
        :param key: its item's ``item_key`` ("" for a job without ``foreach``)
        :param keep_result: store the result too (something after it uses it)
        """
        prior = self._prior
        if prior is not None and job_id == prior.matched:
            return
        packed = pack_result(result) if keep_result else None
        jobs = self._pending.get(digest)
        if jobs is None:
            if not self._pending:
                self._dirty.set()
            jobs = self._pending[digest] = []
        jobs.append((job_id, key, packed))

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            started = loop.time()
            await self.flush()
            await asyncio.sleep(started + FLUSH_EVERY_S - loop.time())

    async def flush(self) -> None:
        """Write what succeeded since the last write, now.

        :raises sqlite3.Error: if it cannot be written (it stays queued)
        """
        pending, self._pending = self._pending, {}
        if not pending:
            return
        self._seq += 1
        try:
            await self._call(self._write, self._seq, pending)
        except BaseException:  # cancelled midway, it may still land: then twice, harmlessly
            for digest, jobs in pending.items():
                self._pending.setdefault(digest, []).extend(jobs)
            raise

    def _write(self, seq: int, pending: dict[str, list[tuple[str, str, bytes | None]]]) -> None:
        conn = self._conn
        assert conn is not None
        blob = msgpack.packb(list(pending.items()), use_bin_type=True)
        _retry(lambda: conn.execute(
            "INSERT INTO succeeded (run_id, seq, jobs) VALUES (?, ?, ?)",
            (self._run_id, seq, blob)))

    async def close(self, status: str) -> None:
        """Write what is left, mark the run ended, and close the database.

        Safe to call more than once, and after an ``open`` that failed or never happened.

        :raises sqlite3.Error: if what is left cannot be written (everything is closed
            all the same)
        """
        if self._shut:
            return
        try:
            flusher, self._flusher = self._flusher, None
            if flusher is not None:
                flusher.cancel()
                await asyncio.wait([flusher])
                if not flusher.cancelled():
                    flusher.exception()  # a failed write: its jobs are still queued
            if self._run_id is not None:
                # one trip to the store thread, not three (write, end, close): this is
                # the last thing a run does before its command can exit
                pending, self._pending = self._pending, {}
                if pending:
                    self._seq += 1
                await self._call(self._finish, self._seq, pending, status)
        finally:
            self._shutdown()

    def _finish(self, seq: int, pending: dict[str, list[tuple[str, str, bytes | None]]],
                status: str) -> None:
        try:
            if pending:
                self._write(seq, pending)
            self._end(status)
        finally:
            self._release()

    def _end(self, status: str) -> None:
        conn = self._conn
        assert conn is not None
        _retry(lambda: conn.execute("UPDATE runs SET ended = ?, status = ? WHERE id = ?",
                                    (time.time(), status, self._run_id)))

    def _shutdown(self) -> None:
        """Close the database and the lock on the store thread, once whatever it is
        doing is done, and end the thread."""
        if not self._shut:
            self._shut = True
            if self._conn is not None or self._lock_fd is not None:
                self._thread.submit(self._release)
            self._thread.shutdown(wait=True)

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            pidlock.unlock(fd)


def _lock(path: Path, shown_path: str) -> int:
    """:raises RunInProgress: if another run holds the lock"""
    try:
        return pidlock.lock(path)
    except pidlock.Held as held:
        raise RunInProgress(shown_path, held.pid) from None


def _busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _retry(fn: Callable[[], _T]) -> _T:
    """``fn()``, again while SQLite answers "busy" without having waited (changing the
    journal mode, a lock it cannot wait for), for up to ``BUSY_TIMEOUT_S``."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    pause_s = 0.005
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if not _busy(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause_s)
        pause_s = min(pause_s * 2, 0.1)


def _transaction(conn: sqlite3.Connection, fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(conn, *args)`` in one write transaction, taken at once (so no other write
    can come between its reads and its writes)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        out = fn(conn, *args)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return out


def _migrate(conn: sqlite3.Connection) -> None:
    if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
        conn.execute("DROP TABLE IF EXISTS succeeded")
        conn.execute("DROP TABLE IF EXISTS runs")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


def _unpack_rows(blobs: list[tuple[bytes]]) -> Rows:
    """One run's blobs, in order, as one row per job (the newest wins)."""
    rows: Rows = {}
    for (blob,) in blobs:
        for digest, jobs in msgpack.unpackb(blob, raw=False):
            for job_id, key, result in jobs:
                rows[job_id] = (digest, key, result)
    return rows


def _pack_rows(rows: Rows) -> bytes:
    """``rows`` as one blob of the ``succeeded.jobs`` layout (empty for no rows)."""
    if not rows:
        return b""
    by_digest: dict[str, list[tuple[str, str, bytes | None]]] = {}
    for job_id, (digest, key, result) in rows.items():
        jobs = by_digest.get(digest)
        if jobs is None:
            jobs = by_digest[digest] = []
        jobs.append((job_id, key, result))
    return msgpack.packb(list(by_digest.items()), use_bin_type=True)  # type: ignore[no-any-return]
