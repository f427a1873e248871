"""The public await API: ``Runner``, ``Job`` and ``run``."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from .backend import JobEntry
from .engine import Engine, local_engine
from .errors import JobCancelled, RunnerClosed, job_exception
from .eventloop import run as run
from .executors.base import Call
from .mapper import MapRun
from .model import JobKind, JobStatus
from .targets import resolve_target

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Mapping
    from pathlib import Path
    from types import TracebackType

    from .backend import Backend
    from .clusterbackend import ClusterBackend
    from .core.commands import JobFinished
    from .flow.plan import FlowPlan
    from .flowrun import FlowRun
    from .localcluster import LocalCluster
    from .report import FlowReport
    from .store import RunStore
    from .targets import Target

P = ParamSpec("P")
T = TypeVar("T")

class Job(asyncio.Future[T], JobEntry):
    """A submitted job: an asyncio future of its result. Await it for the result; it
    raises ``JobFailed``, ``JobTimeout`` or ``JobCancelled`` if the job did not succeed.

    Being a future, it goes into ``asyncio.gather``, ``asyncio.wait`` and ``wait_for`` as
    it is (no task per job). Cancelling it cancels the job (a running cpu job's worker is
    killed); so does cancelling a task that awaits it, as with asyncio tasks. After
    ``job.cancel()``, ``await job`` raises ``JobCancelled``; a task (or ``gather``) that
    was itself cancelled gets ``CancelledError``, as asyncio's rules want.

    It is also what the runner's backend keeps for the job (its ``JobEntry``): one object
    per submitted job.
    """

    __slots__ = ("job_id", "_backend", "_final", "kind", "limits", "retries", "backoff_s",
                 "_fn", "_args", "_kwargs", "_timeout_s")

    def __init__(self, job_id: str, backend: Backend, loop: asyncio.AbstractEventLoop,
                 target: Target, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__(loop=loop)
        self.job_id = job_id
        self._backend = backend
        self._final: JobStatus | None = None
        self.kind = target.kind
        self.limits = ()
        self.retries = target.retries
        self.backoff_s = target.backoff_s
        self._fn = target.fn
        self._args = args
        self._kwargs = kwargs
        self._timeout_s = target.timeout_s

    @property
    def id(self) -> str:
        """The job's id, e.g. ``"hits-17"``."""
        return self.job_id

    @property
    def status(self) -> JobStatus:
        """Where the job is now: queued, running, retrying, or how it ended."""
        if self._final is not None:
            return self._final
        if self.cancelled():
            return JobStatus.CANCELLED
        return self._backend.status(self.id) or JobStatus.QUEUED

    def cancel(self, msg: Any | None = None) -> bool:
        """Cancel the job; a running attempt is stopped (a CPU job's worker is killed).

        :returns: False if the job had already finished
        """
        if self.done():
            return False
        super().cancel(msg)
        self._backend.cancel(self.id)
        return True

    def __await__(self) -> Generator[Any, None, T]:
        if not self.done():
            self._asyncio_future_blocking = True
            try:
                yield self
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # the awaiting task is being cancelled (and so was this job)
            if not self.done():  # pragma: no cover - asyncio resumes us only when done
                raise RuntimeError("await wasn't used with future")
        if self.cancelled():
            raise JobCancelled(self.id)
        return self.result()

    __iter__ = __await__

    def begin(self, attempt: int) -> Call:
        return Call(self._fn, self._args, self._kwargs, self._timeout_s)

    def finished(self, done: JobFinished) -> None:
        self._final = done.status
        self._args, self._kwargs = (), {}  # a finished job keeps no arguments alive
        if self.done():
            return
        if done.status is JobStatus.SUCCEEDED:
            self.set_result(done.result)
        else:
            self.set_exception(job_exception(done.job_id, done.status, done.attempts,
                                             done.error))
            if done.status is JobStatus.CANCELLED:
                self.exception()  # a cancelled job nobody awaits is not an error to log

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.status.value}>"


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class JobsApi:
    """What ``Runner`` and a cluster (``connect()``) share: ``submit``, ``map``,
    ``run_flow`` and ``open_flow``, written against the ``Backend`` alone. A subclass says
    which backend (``_backend``)."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._scopes = itertools.count(1)
        self._targets: dict[Any, Target] = {}

    def _backend(self) -> Backend:
        """The open backend.

        :raises RunnerClosed: if it is not open
        """
        raise NotImplementedError

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
        backend = self._backend()
        target = self._target(fn)
        job_id = f"{target.name}-{next(self._ids)}"
        handle: Job[Any] = Job(job_id, backend, asyncio.get_running_loop(), target, args,
                               kwargs)
        backend.submit(handle)
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
        backend = self._backend()
        target = self._target(fn)
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        if window is None:
            window = self._default_window(target.kind)
        elif window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        return await MapRun(
            backend, target, iterables=iterables, window=window,
            return_exceptions=return_exceptions, ids=self._ids,
        ).run()

    async def run_flow(
        self,
        path: str | Path,
        *,
        params: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        resume: bool = False,
        max_file_bytes: int | None = None,
    ) -> FlowReport:
        """Run a jobs.yaml flow on this runner and return its report. Its state is kept
        in ``.asyncjobs/`` beside the file.

        Several flows may run at once on one runner: each has its own named limits (two
        files' ``api`` limits are two pools), and they share the runner's workers.

        :param params: overrides of the file's ``params`` (text is coerced to each
            default's type, as ``--param`` is)
        :param env: what templates see as ``env`` and shell jobs inherit (default: ours)
        :param resume: skip the jobs that succeeded in the last run of the same file with
            the same inputs
        :param max_file_bytes: refuse a larger flow file before parsing it (default
            10 MiB)
        :returns: the ``FlowReport``; ``report.ok`` is true when every job succeeded
        :raises FlowError: for an invalid file, before anything runs
        :raises RunInProgress: if another run of the same file is in progress
        :raises StateUnavailable: if the run state beside the file cannot be opened
        :raises RunnerClosed: if the runner is not open
        """
        return await self.open_flow(path, params=params, env=env, resume=resume,
                                    max_file_bytes=max_file_bytes).run()

    def open_flow(
        self,
        path: str | Path,
        *,
        params: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        resume: bool = False,
        plan: FlowPlan | None = None,
        keep_records: bool = True,
        max_file_bytes: int | None = None,
    ) -> FlowRun:
        """Validate a flow and make its run, without starting it (``await run.run()``
        does; ``run_flow`` does both). The command line uses this to show progress.

        :param plan: the file's plan, when already loaded (``path`` must be its file)
        :param keep_records: keep every job's record in ``report.records`` (else only
            the summary's aggregates; ``report.stream_json`` writes them as they come)
        :raises FlowError: for an invalid file
        :raises RunnerClosed: if the runner is not open
        """
        from .flow.loader import load_flow
        from .flow.plan import plan_flow
        from .flow.yamlnodes import MAX_FLOW_BYTES
        from .store import RunStore

        backend = self._backend()
        if plan is None:
            plan = plan_flow(load_flow(path, params, max_bytes=max_file_bytes or MAX_FLOW_BYTES))
        run_env = os.environ if env is None else env
        return self._flow_run(backend, plan, path, env=run_env,
                              store=RunStore(path, plan.spec.name), resume=resume,
                              keep_records=keep_records)

    def _flow_run(self, backend: Backend, plan: FlowPlan, path: str | Path, *,
                  env: Mapping[str, str], store: RunStore, resume: bool,
                  keep_records: bool) -> FlowRun:
        """The run of one flow; a cluster's reports its progress to the coordinator."""
        from .flowrun import FlowRun

        return FlowRun(backend, plan, env=env, store=store, resume=resume,
                       scope=f"flow{next(self._scopes)}", keep_records=keep_records)

    def _target(self, fn: Any) -> Target:
        """``resolve_target``, remembered per callable for this runner's life: a loop of
        ``submit(fn, i)`` resolves ``fn`` once."""
        try:
            return self._targets[fn]
        except KeyError:
            target = self._targets[fn] = resolve_target(fn)
            return target
        except TypeError:  # an unhashable callable
            return resolve_target(fn)

    def _default_window(self, kind: JobKind) -> int:
        capacity = self._backend().capacity(kind)
        if capacity is None:
            return 1024
        # cpu: room for the few jobs each worker holds besides the one it runs
        return max(64, (8 if kind is JobKind.CPU else 2) * capacity)


class Runner(JobsApi):
    """Runs jobs in this process: ``io`` jobs on the current event loop, ``cpu`` jobs in
    worker processes, ``thread`` jobs in a thread pool.

    Use it as ``async with Runner() as runner``. Leaving the block normally waits for
    every submitted job; leaving it with an exception (or cancellation) cancels them.
    Either way, every worker process has exited when the block ends.

    :param cpu_workers: worker processes for ``cpu`` jobs (default:
        ``$ASYNCJOBS_CPU_WORKERS`` when set, else the usable cores)
    :param loops: event loops. With more than 1, this process schedules and a node of
        ``loops`` loop processes beside it runs the jobs (``localcluster.py``): io jobs
        spread over the loops, the cpu workers are shared among them
    :param io_concurrency: most ``io`` attempts at once (default: no bound)
    :param thread_workers: threads for ``thread`` jobs (default: cores + 4, at most 32)
    :param prestart: entering the Runner returns once its cpu workers are up and ready
        for a first job (default: they start with the first cpu job)
    :param warm: start the cpu pool's template process on entering (a few tens of ms
        of CPU in a process of its own), so that a first cpu job forks its worker in a
        few ms instead of waiting for an interpreter; set False in a process that runs
        no cpu jobs
    :raises ValueError: for a count below 1, or an ``ASYNCJOBS_CPU_WORKERS`` that is not
        a positive integer
    """

    def __init__(
        self,
        *,
        cpu_workers: int | None = None,
        loops: int = 1,
        io_concurrency: int | None = None,
        thread_workers: int | None = None,
        prestart: bool = False,
        warm: bool = True,
    ) -> None:
        if loops < 1:
            raise ValueError(f"loops must be at least 1, not {loops}")
        self.loops = loops
        cores = _cpu_count()
        from_env = os.environ.get("ASYNCJOBS_CPU_WORKERS", "").strip()
        if cpu_workers is None and from_env:  # SPEC 5; set but empty counts as unset
            if not (from_env.isascii() and from_env.isdigit() and int(from_env) > 0):
                raise ValueError(f"ASYNCJOBS_CPU_WORKERS must be a positive integer (the "
                                 f"number of cpu worker processes), not {from_env!r}")
            cpu_workers = int(from_env)
        self.cpu_workers = cores if cpu_workers is None else cpu_workers
        self.prestart = prestart
        self.warm = warm
        self.io_concurrency = io_concurrency
        self.thread_workers = min(32, cores + 4) if thread_workers is None else thread_workers
        for name in ("cpu_workers", "thread_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if io_concurrency is not None and io_concurrency < 1:
            raise ValueError(f"io_concurrency must be at least 1, not {io_concurrency}")
        super().__init__()
        self._engine: Engine | None = None
        #: with loops > 1: the coordinator and node beside this process, and the link
        self._local: LocalCluster | None = None
        self._remote: ClusterBackend | None = None

    async def __aenter__(self) -> Runner:
        """Open the runner. Its cpu pool's template process starts now, so that the
        first cpu job does not wait for an interpreter to start; with ``prestart`` the
        workers start too, and this returns once they are ready.

        :raises RuntimeError: if this Runner is open already
        :raises WorkerStartFailed: with ``prestart``, if the cpu workers cannot start
            (``asyncjobs.errors.WorkerStartFailed``; the message says why, e.g. a main
            module that starts a Runner when imported)
        """
        if self._engine is not None or self._remote is not None:
            raise RuntimeError("this Runner is already open")
        if self.loops > 1:
            await self._open_loops()
            return self
        from .executors.cpu import CpuPool  # here: the loops' runner never needs it
        engine = self._engine = local_engine(
            cpu_workers=self.cpu_workers,
            io_concurrency=self.io_concurrency,
            thread_workers=self.thread_workers,
        )
        pool = engine.executors[JobKind.CPU]
        if isinstance(pool, CpuPool) and (self.warm or self.prestart):
            ready = pool.prestart(workers=self.prestart)
            if self.prestart:
                try:
                    await ready
                except BaseException:
                    try:
                        await engine.aclose(cancel=True)
                    finally:
                        self._engine = None
                    raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._remote is not None:
            await self._close_loops(cancel=exc_type is not None)
            return
        engine = self._engine
        assert engine is not None
        try:
            await engine.aclose(cancel=exc_type is not None)
        finally:
            self._engine = None

    async def _open_loops(self) -> None:
        from .clusterbackend import CLUSTER_INFO_WAIT_S, ClusterBackend
        from .localcluster import LocalCluster

        local = LocalCluster(loops=self.loops, cpu_workers=self.cpu_workers,
                             io_concurrency=self.io_concurrency)
        link = await local.start()
        self._local, self._remote = local, ClusterBackend(link)
        self._remote.start()
        # its first ClusterInfo sizes windows and io chunks: a map right away needs it
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._remote.informed.wait(), CLUSTER_INFO_WAIT_S)

    async def _close_loops(self, *, cancel: bool) -> None:
        remote, local = self._remote, self._local
        assert remote is not None and local is not None
        try:
            await remote.aclose(cancel=cancel)
        finally:
            self._remote = self._local = None
            await local.aclose()

    @property
    def engine(self) -> Engine:
        """The engine of the open runner (internal, for flows and tests; with ``loops``
        above 1 the engines are in the loop processes, and this raises)."""
        if self._engine is None:
            raise RunnerClosed("the Runner is not open: use 'async with Runner() as runner'"
                               if self._remote is None else
                               f"this Runner runs its jobs in {self.loops} loop processes; "
                               f"it has no engine of its own")
        return self._engine

    def _backend(self) -> Backend:
        return self._remote if self._remote is not None else self.engine
