"""``Runner.map``: many calls of one function, a bounded number in flight, results in
input order.

Rules:

1. At most ``window`` jobs exist at once; the input is read only as room frees, so a map
   over a million items holds a bounded number of jobs (the result list still grows).
2. CPU calls without a timeout or retries go to workers in chunks, so the per-job cost
   (scheduling, framing, a wake-up of each process) is paid once per chunk. Chunks start
   at one item (two per worker in flight, until the first returns) and grow to about
   ``TARGET_CHUNK_S`` of work, as measured by the workers;
   when the input's length is known, a chunk never exceeds a quarter of each worker's
   share, so the last chunks still spread over every worker.
3. Each item keeps its own outcome: a failing item fails alone. A chunk that fails as a
   whole (its worker died, a result would not pickle) is run again one item per job, so
   the item at fault is then named by itself.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Sized
from typing import TYPE_CHECKING, Any

from .engine import Entry
from .errors import AsyncJobsError, JobFailed
from .executors.base import Call
from .executors.chunk import run_chunk
from .model import JobKind, JobStatus

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from .core.commands import JobFinished
    from .engine import Engine

TARGET_CHUNK_S = 0.01
MAX_CHUNK = 1024


def chunk_size(item_s: float | None, total: int | None, workers: int) -> int:
    """Items per chunk: about ``TARGET_CHUNK_S`` of work, at most a quarter of each
    worker's share of ``total`` (when known); 1 until an item's cost is measured."""
    if item_s is None:
        return 1
    size = MAX_CHUNK if item_s <= 0 else int(TARGET_CHUNK_S / item_s)
    if total is not None:
        size = min(size, math.ceil(total / (4 * workers)))
    return max(1, min(size, MAX_CHUNK))


def measured(item_s: float | None, elapsed_s: float, items: int) -> float:
    """The running estimate of seconds per item, after a chunk of ``items`` took
    ``elapsed_s``."""
    per_item = elapsed_s / items
    return per_item if item_s is None else 0.7 * item_s + 0.3 * per_item


class MapRun:
    """One call of ``Runner.map``."""

    def __init__(
        self,
        engine: Engine,
        *,
        fn: Callable[..., Any],
        name: str,
        kind: JobKind,
        timeout_s: float | None,
        retries: int,
        backoff_s: float,
        iterables: tuple[Iterable[Any], ...],
        window: int,
        return_exceptions: bool,
        ids: Iterator[int],
        exception_for: Callable[[JobFinished], AsyncJobsError],
    ) -> None:
        self.engine = engine
        self.fn = fn
        self.name = name
        self.kind = kind
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.window = window
        self.return_exceptions = return_exceptions
        self.ids = ids
        self.exception_for = exception_for
        self.chunked = kind is JobKind.CPU and timeout_s is None and retries == 0
        self.workers = engine.cpu.workers
        lengths = [len(it) for it in iterables if isinstance(it, Sized)]
        self.total = min(lengths) if len(lengths) == len(iterables) else None
        self.args: Iterator[tuple[Any, ...]] = iter(zip(*iterables, strict=False))
        self.results: list[Any] = []
        #: job id -> (index of its first item, the items' args)
        self.in_flight: dict[str, tuple[int, list[tuple[Any, ...]]]] = {}
        self.failure: AsyncJobsError | None = None
        self.wake: asyncio.Future[None] | None = None
        #: seconds per item, as the workers measured it (None until a chunk returns)
        self.item_s: float | None = None

    async def run(self) -> list[Any]:
        loop = asyncio.get_running_loop()
        exhausted = False
        try:
            while True:
                if self.failure is not None:
                    raise self.failure
                room = self.window - len(self.in_flight)
                if self.chunked and self.item_s is None:
                    # probing: a few one-item chunks, until one says how long items take
                    room = min(room, 2 * self.workers - len(self.in_flight))
                if not exhausted and room > 0:
                    batch = self._next_batch(room)
                    exhausted = len(batch) < room
                    if batch:
                        self.engine.submit(*batch)
                        continue
                if not self.in_flight:
                    return self.results
                self.wake = loop.create_future()
                await self.wake
        except BaseException:
            for job_id in list(self.in_flight):
                self.engine.cancel(job_id, "cancelled: its map() stopped early")
            raise

    # -- building jobs ----------------------------------------------------------------

    def _next_batch(self, room: int) -> list[Entry]:
        batch = []
        for _ in range(room):
            size = self._chunk_size()
            calls = list(itertools.islice(self.args, size))
            if not calls:
                break
            first = len(self.results)
            self.results.extend(itertools.repeat(None, len(calls)))
            batch.append(self._entry(first, calls))
            if len(calls) < size:
                break
        return batch

    def _chunk_size(self) -> int:
        return chunk_size(self.item_s, self.total, self.workers) if self.chunked else 1

    def _entry(self, first: int, calls: list[tuple[Any, ...]]) -> Entry:
        job_id = f"{self.name}-{next(self.ids)}"
        self.in_flight[job_id] = (first, calls)
        if self.chunked:  # even one-item chunks: their timing sizes the next ones
            call = Call(run_chunk, (self.fn, calls), {}, None)
            return Entry(job_id, self.kind, self._chunk_done, call=call)
        call = Call(self.fn, calls[0], {}, self.timeout_s)
        return Entry(job_id, self.kind, self._one_done, call=call,
                     retries=self.retries, backoff_s=self.backoff_s)

    # -- outcomes ---------------------------------------------------------------------

    def _one_done(self, done: JobFinished) -> None:
        first, _ = self.in_flight.pop(done.job_id)
        if done.status is JobStatus.SUCCEEDED:
            self.results[first] = done.result
        else:
            self._failed(first, self.exception_for(done))
        self._wake()

    def _chunk_done(self, done: JobFinished) -> None:
        first, calls = self.in_flight.pop(done.job_id)
        if done.status is JobStatus.SUCCEEDED:
            outcomes, elapsed_s = done.result
            self.item_s = measured(self.item_s, elapsed_s, len(calls))
            for i, (ok, value) in enumerate(outcomes):
                if ok:
                    self.results[first + i] = value
                else:
                    item_id = f"{done.job_id}[{i}]" if len(calls) > 1 else done.job_id
                    type_name, message, tb = value
                    self._failed(first + i, JobFailed(item_id, type_name, message, tb))
        elif done.status is not JobStatus.CANCELLED:
            if len(calls) == 1:
                self._failed(first, self.exception_for(done))
            else:  # rule 3: run each item alone, so the one at fault is named
                singles = []
                for i, args in enumerate(calls):
                    job_id = f"{self.name}-{next(self.ids)}"
                    self.in_flight[job_id] = (first + i, [args])
                    singles.append(Entry(job_id, self.kind, self._one_done,
                                         call=Call(self.fn, args, {}, None)))
                self.engine.submit(*singles)
        self._wake()

    def _failed(self, index: int, exc: AsyncJobsError) -> None:
        if self.return_exceptions:
            self.results[index] = exc
        elif self.failure is None:
            self.failure = exc

    def _wake(self) -> None:
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)
