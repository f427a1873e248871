"""The public await API: ``Runner``, ``Job`` and ``run``."""

from __future__ import annotations

import asyncio
import itertools
import os
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from .engine import Engine, Entry
from .errors import AsyncJobsError, JobCancelled, JobFailed, JobTimeout, RunnerClosed
from .executors.base import Call
from .mapper import MapRun
from .model import JobKind, JobStatus
from .targets import resolve_target

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Mapping
    from pathlib import Path
    from types import TracebackType

    from .core.commands import JobFinished
    from .report import FlowReport

P = ParamSpec("P")
T = TypeVar("T")

def exception_for(done: JobFinished) -> AsyncJobsError:
    """The exception a job that did not succeed raises to whoever awaits it."""
    err = done.error
    if done.status is JobStatus.CANCELLED:
        return JobCancelled(done.job_id, err.message if err else "cancelled")
    if err is None:
        return JobFailed(done.job_id, "Unknown", "no error was recorded", "", done.attempts)
    cls = JobTimeout if err.timed_out else JobFailed
    return cls(done.job_id, err.type_name, err.message, err.traceback, done.attempts)


class Job(Generic[T]):
    """A submitted job. Await it for its result; it raises ``JobFailed``, ``JobTimeout``
    or ``JobCancelled`` if it did not succeed. Cancelling the task that awaits it
    cancels the job too, as with an asyncio task."""

    __slots__ = ("id", "_engine", "_future", "_final")

    def __init__(self, job_id: str, engine: Engine, future: asyncio.Future[T]) -> None:
        #: the job's id, e.g. ``"hits-17"``
        self.id = job_id
        self._engine = engine
        self._future = future
        self._final: JobStatus | None = None

    @property
    def status(self) -> JobStatus:
        """Where the job is now: queued, running, retrying, or how it ended."""
        if self._final is not None:
            return self._final
        return self._engine.status(self.id) or JobStatus.QUEUED

    def done(self) -> bool:
        return self._final is not None

    def cancel(self) -> bool:
        """Cancel the job; a running attempt is stopped (a CPU job's worker is killed).

        :returns: False if the job had already finished
        """
        if self._final is not None:
            return False
        self._engine.cancel(self.id)
        return True

    def __await__(self) -> Generator[Any, None, T]:
        try:
            return (yield from self._future.__await__())
        except asyncio.CancelledError:
            self.cancel()
            raise

    def _finish(self, done: JobFinished) -> None:
        self._final = done.status
        fut = self._future
        if fut.done():
            return
        if done.status is JobStatus.SUCCEEDED:
            fut.set_result(done.result)
        else:
            fut.set_exception(exception_for(done))
            if done.status is JobStatus.CANCELLED:
                fut.exception()  # a cancelled job nobody awaits is not an error to log

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.status.value}>"


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class Runner:
    """Runs jobs in this process: ``io`` jobs on the current event loop, ``cpu`` jobs in
    worker processes, ``thread`` jobs in a thread pool.

    Use it as ``async with Runner() as runner``. Leaving the block normally waits for
    every submitted job; leaving it with an exception (or cancellation) cancels them.
    Either way, every worker process has exited when the block ends.

    :param cpu_workers: worker processes for ``cpu`` jobs (default: the usable cores)
    :param loops: event loops; 1 embedded (more arrive with the cluster)
    :param io_concurrency: most ``io`` attempts at once (default: no bound)
    :param thread_workers: threads for ``thread`` jobs (default: cores + 4, at most 32)
    :raises ValueError: for a count below 1
    """

    def __init__(
        self,
        *,
        cpu_workers: int | None = None,
        loops: int = 1,
        io_concurrency: int | None = None,
        thread_workers: int | None = None,
    ) -> None:
        if loops != 1:
            raise ValueError(
                f"loops={loops}: an embedded Runner drives one event loop; "
                "several loops per machine come with loop nodes (asyncjobs node --loops N)"
            )
        cores = _cpu_count()
        self.cpu_workers = cores if cpu_workers is None else cpu_workers
        self.io_concurrency = io_concurrency
        self.thread_workers = min(32, cores + 4) if thread_workers is None else thread_workers
        for name in ("cpu_workers", "thread_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if io_concurrency is not None and io_concurrency < 1:
            raise ValueError(f"io_concurrency must be at least 1, not {io_concurrency}")
        self._engine: Engine | None = None
        self._ids = itertools.count(1)

    async def __aenter__(self) -> Runner:
        if self._engine is not None:
            raise RuntimeError("this Runner is already open")
        self._engine = Engine(
            cpu_workers=self.cpu_workers,
            io_concurrency=self.io_concurrency,
            thread_workers=self.thread_workers,
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        engine = self._engine
        assert engine is not None
        try:
            await engine.aclose(cancel=exc_type is not None)
        finally:
            self._engine = None

    @property
    def engine(self) -> Engine:
        """The engine of the open runner (internal, for flows and tests)."""
        if self._engine is None:
            raise RunnerClosed("the Runner is not open: use 'async with Runner() as runner'")
        return self._engine

    @overload
    def submit(
        self, fn: Callable[P, Coroutine[Any, Any, T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Job[T]: ...
    @overload
    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Job[T]: ...
    @overload
    def submit(self, fn: str, /, *args: Any, **kwargs: Any) -> Job[Any]: ...

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Job[Any]:
        """Start a job now and return its ``Job`` at once.

        :param fn: a callable, or ``"module:attribute"``
        :returns: the job; await it for its result
        :raises RunnerClosed: if the runner is not open
        :raises TypeError: if ``fn`` is not callable
        :raises ImportError: if a ``"module:attribute"`` cannot be imported
        """
        engine = self.engine
        target = resolve_target(fn)
        job_id = f"{target.name}-{next(self._ids)}"
        handle: Job[Any] = Job(job_id, engine, asyncio.get_running_loop().create_future())
        engine.submit(Entry(
            job_id, target.kind, handle._finish,
            call=Call(target.fn, args, kwargs, target.timeout_s),
            retries=target.retries, backoff_s=target.backoff_s,
        ))
        return handle

    async def map(
        self,
        fn: Callable[..., Awaitable[T]] | Callable[..., T] | str,
        /,
        *iterables: Iterable[Any],
        window: int | None = None,
        return_exceptions: bool = False,
    ) -> list[T]:
        """Run ``fn`` over the items, like the builtin ``map``; return results in input order.

        At most ``window`` jobs exist at once, however long the input, so a map over a
        million items holds a bounded number of jobs (the result list still grows).

        :param iterables: one iterable per positional argument of ``fn``
        :param window: most jobs in flight (default: twice what the kind runs at once,
            at least 64)
        :param return_exceptions: put each failure's exception in the list instead of
            raising the first one
        :returns: the results, in input order
        :raises JobFailed: the first failure, when ``return_exceptions`` is false; the
            jobs still in flight are cancelled
        :raises RunnerClosed: if the runner is not open
        """
        engine = self.engine
        target = resolve_target(fn)
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        if window is None:
            window = self._default_window(target.kind)
        elif window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        return await MapRun(
            engine, fn=target.fn, name=target.name, kind=target.kind,
            timeout_s=target.timeout_s, retries=target.retries, backoff_s=target.backoff_s,
            iterables=iterables, window=window, return_exceptions=return_exceptions,
            ids=self._ids, exception_for=exception_for,
        ).run()

    async def run_flow(
        self,
        path: str | Path,
        *,
        params: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        resume: bool = False,
    ) -> FlowReport:
        """Run a jobs.yaml flow on this runner and return its report. Its state is kept
        in ``.asyncjobs/`` beside the file.

        :param params: overrides of the file's ``params`` (text is coerced to each
            default's type, as ``--param`` is)
        :param env: what templates see as ``env`` and shell jobs inherit (default: ours)
        :param resume: skip the jobs that succeeded in the last run of the same file with
            the same inputs
        :returns: the ``FlowReport``; ``report.ok`` is true when every job succeeded
        :raises FlowError: for an invalid file, before anything runs
        :raises RunnerClosed: if the runner is not open
        """
        from .flow.loader import load_flow
        from .flow.plan import count_items, plan_flow
        from .flowrun import FlowRun
        from .store import RunStore

        engine = self.engine
        plan = plan_flow(load_flow(path, params))
        run_env = os.environ if env is None else env
        for name in plan.order:  # foreach sources are checked before anything runs
            count_items(plan.spec.jobs[name], plan.spec, run_env)
        store = RunStore(path, plan.spec.name)
        run = FlowRun(engine, plan, env=run_env, store=store, resume=resume)
        return await run.run()

    def _default_window(self, kind: JobKind) -> int:
        if kind is JobKind.CPU:
            capacity: int | None = self.engine.cpu.capacity
        elif kind is JobKind.THREAD:
            capacity = self.thread_workers
        else:
            capacity = self.io_concurrency
        if capacity is None:
            return 1024
        return max(64, 2 * capacity)


def run(main: Callable[[], Coroutine[Any, Any, T]], *, use_uvloop: bool = True) -> T:
    """Run ``main()`` on a new event loop: uvloop where it is installed, else asyncio's.

    :param main: an ``async def`` taking no arguments
    :param use_uvloop: set False to force asyncio's own loop
    :returns: what ``main()`` returns
    """
    if use_uvloop:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - platforms without uvloop
            pass
        else:
            return uvloop.run(main())
    return asyncio.run(main())
