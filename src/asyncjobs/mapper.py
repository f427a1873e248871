"""``Runner.map``: many calls of one function, a bounded number in flight, results in
input order. Uses nothing but the ``Backend`` it is given.

Rules:

1. At most ``window`` jobs exist at once; the input is read only as room frees, so a map
   over a million items holds a bounded number of jobs (the result list still grows).
2. Small CPU calls go to workers in chunks (``core.chunking``), so the per-job cost
   (scheduling, framing, a wake-up of each process) is paid once per chunk. Calls of an
   ``async def`` without retries go in io chunks where the backend asks for them (a
   cluster: ``Backend.io_chunk``); the window then counts calls, not jobs.
3. Each item keeps its own outcome: a failing item fails alone. A chunk that fails as a
   whole (its worker died, a result would not pickle) is run again one item per job, so
   the item at fault is then named by itself.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections.abc import Sized
from typing import TYPE_CHECKING, Any

from .backend import Entry
from .core.chunking import Chunker
from .errors import AsyncJobsError, JobFailed, job_exception
from .executors.base import Call
from .executors.chunk import run_chunk
from .executors.iochunk import run_io_chunk
from .executors.remote import io_chunk_wire
from .model import ErrorInfo, JobKind, JobStatus

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from .backend import Backend
    from .core.commands import JobFinished
    from .targets import Target


class MapRun:
    """One call of ``Runner.map``."""

    def __init__(
        self,
        backend: Backend,
        target: Target,
        *,
        iterables: tuple[Iterable[Any], ...],
        window: int,
        return_exceptions: bool,
        ids: Iterator[int],
    ) -> None:
        self.backend = backend
        self.target = target
        self.window = window
        self.return_exceptions = return_exceptions
        self.ids = ids
        lengths = [len(it) for it in iterables if isinstance(it, Sized)]
        total = min(lengths) if len(lengths) == len(iterables) else None
        chunked = (target.kind is JobKind.CPU and target.timeout_s is None
                   and target.retries == 0)
        self.chunker = Chunker(backend.capacity(JobKind.CPU) or 1, total) if chunked else None
        #: calls per io chunk (1: none); a ``ByName`` target is no coroutine function, and
        #: its kind is the node's to say
        self.io_chunk = 1
        if (target.kind is JobKind.IO and target.retries == 0
                and inspect.iscoroutinefunction(target.fn)):
            self.io_chunk = max(1, min(backend.io_chunk(None, total), window))
        #: calls in the jobs in flight
        self.calls_in_flight = 0
        self.args: Iterator[tuple[Any, ...]] = iter(zip(*iterables, strict=False))
        self.results: list[Any] = []
        #: job id -> (index of its first item, the items' args)
        self.in_flight: dict[str, tuple[int, list[tuple[Any, ...]]]] = {}
        self.failure: AsyncJobsError | None = None
        self.wake: asyncio.Future[None] | None = None

    async def run(self) -> list[Any]:
        loop = asyncio.get_running_loop()
        exhausted = False
        try:
            while True:
                if self.failure is not None:
                    raise self.failure
                room = self.window - len(self.in_flight)
                if self.chunker is not None:
                    room = self.chunker.room(room, len(self.in_flight))
                elif self.io_chunk > 1:
                    room = (self.window - self.calls_in_flight) // self.io_chunk
                if not exhausted and room > 0:
                    batch = self._next_batch(room)
                    exhausted = len(batch) < room
                    if batch:
                        self.backend.submit(*batch)
                        continue
                if not self.in_flight:
                    return self.results
                self.wake = loop.create_future()
                await self.wake
        except BaseException:
            for job_id in list(self.in_flight):
                self.backend.cancel(job_id, "cancelled: its map() stopped early")
            raise

    # -- building jobs ----------------------------------------------------------------

    def _next_batch(self, room: int) -> list[Entry]:
        batch = []
        for _ in range(room):
            size = self.io_chunk if self.chunker is None else self.chunker.size()
            calls = list(itertools.islice(self.args, size))
            if not calls:
                break
            first = len(self.results)
            self.results.extend(itertools.repeat(None, len(calls)))
            batch.append(self._entry(first, calls))
            if len(calls) < size:
                break
        return batch

    def _entry(self, first: int, calls: list[tuple[Any, ...]], *, alone: bool = False) -> Entry:
        target = self.target
        job_id = f"{target.name}-{next(self.ids)}"
        self.in_flight[job_id] = (first, calls)
        self.calls_in_flight += len(calls)
        if self.io_chunk > 1 and not alone:
            one = [Call(target.fn, args, {}, target.timeout_s) for args in calls]
            # the timeout travels as the job's: the node gives it each call
            call = Call(run_io_chunk, (one, len(one)), {}, target.timeout_s,
                        remote=io_chunk_wire(one))
            return Entry(job_id, target.kind, self._chunk_done, call=call, weight=len(one))
        if self.chunker is not None and not alone:
            # even one-item chunks: their timing sizes the next ones
            call = Call(run_chunk, (target.fn, calls), {}, None)
            return Entry(job_id, target.kind, self._chunk_done, call=call)
        call = Call(target.fn, calls[0], {}, target.timeout_s)
        return Entry(job_id, target.kind, self._one_done, call=call,
                     retries=target.retries, backoff_s=target.backoff_s)

    # -- outcomes ---------------------------------------------------------------------

    def _one_done(self, done: JobFinished) -> None:
        first, _ = self.in_flight.pop(done.job_id)
        self.calls_in_flight -= 1
        if done.status is JobStatus.SUCCEEDED:
            self.results[first] = done.result
        else:
            self._failed(first, job_exception(done.job_id, done.status, done.attempts,
                                              done.error))
        self._wake()

    def _chunk_done(self, done: JobFinished) -> None:
        first, calls = self.in_flight.pop(done.job_id)
        self.calls_in_flight -= len(calls)
        if done.status is JobStatus.SUCCEEDED:
            outcomes, elapsed_s = done.result
            if self.chunker is not None:
                self.chunker.measured(elapsed_s, len(calls))
            for i, (ok, value, *_) in enumerate(outcomes):
                if ok:
                    self.results[first + i] = value
                else:
                    item_id = f"{done.job_id}[{i}]" if len(calls) > 1 else done.job_id
                    self._failed(first + i,
                                 JobFailed.from_error(item_id, ErrorInfo.from_wire(value)))
        elif done.status is not JobStatus.CANCELLED:
            if len(calls) == 1:
                self._failed(first, job_exception(done.job_id, done.status, done.attempts,
                                                  done.error))
            else:  # rule 3: run each item alone, so the one at fault is named
                self.backend.submit(*(self._entry(first + i, [args], alone=True)
                                      for i, args in enumerate(calls)))
        self._wake()

    def _failed(self, index: int, exc: AsyncJobsError) -> None:
        if self.return_exceptions:
            self.results[index] = exc
        elif self.failure is None:
            self.failure = exc

    def _wake(self) -> None:
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)
