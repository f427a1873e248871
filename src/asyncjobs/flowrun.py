"""Running a planned flow on a ``Backend`` (the engine embedded; a coordinator's link later).

Rules:

1. Which job of the file may start is ``flow.state.FlowState``'s to say: a job starts
   once every job it needs has succeeded; if one did not, it is skipped, and so are the
   jobs needing it. Other branches keep running. This module only carries that out.
2. A ``foreach`` job's items are fed to the backend as room frees (at most ``window`` in
   flight), so 100,000 items never mean 100,000 live jobs or coroutines.
3. Templates are rendered when an attempt starts, from the results of the jobs it needs;
   a template that names something missing fails that job, not the run.
4. Results are kept only for jobs some template uses (``{{ results.JOB }}``); a foreach
   job's result is the list of its items' results, in item order.
5. Small CPU calls (no timeout, no retries) go to workers in chunks (``core.chunking``,
   as ``Runner.map``); each item keeps its own record, result, error and time, and a
   chunk whose worker died is run again one item per job, so the culprit is named alone.
   Io calls under no rate go in chunks too where the backend asks for it
   (``Backend.io_chunk``: a cluster, whose jobs each cross three processes): a chunk of
   n calls runs them at once on one loop, each with its own timeout, and holds n units
   of the job's limit until it ends. A call of a chunk that fails, and may be retried,
   runs again alone after the backoff, as the retry it is: its attempts, backoff and
   ``Retry-After`` as if it had been a job of its own from the start.
6. The run's named limits are declared in a scope of its own, so two flows' ``api``
   limits are two pools, and released when the run ends, however it ends.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import TYPE_CHECKING, Any

from .backend import Entry
from .core.chunking import Chunker
from .core.policy import LimitSpec, backoff_delay, scoped
from .errors import FlowError
from .executors.base import Call
from .executors.chunk import run_chunk
from .executors.iochunk import run_io_chunk
from .executors.remote import http_wire, io_chunk_wire, shell_wire
from .executors.shell import ShellGuard, run_shell
from .flow.plan import count_items, item_id, iter_items
from .flow.spec import CallAction, HttpAction, ShellAction
from .flow.state import FlowFinished, FlowStarted, FlowState, JobEnded, SkipJob, StartJob
from .flow.template import TemplateContext, compile_template, references
from .model import ErrorInfo, JobKind, JobStatus
from .report import FlowReport, JobRecord
from .store import fingerprint, item_key
from .targets import resolve_ref

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from .backend import Backend
    from .core.commands import JobFinished
    from .executors.http import HttpClient
    from .flow.plan import FlowPlan
    from .flow.spec import JobDef
    from .flow.state import FlowCommand, FlowEvent
    from .store import Prior, RunStore

DEFAULT_WINDOW = 1024
_NO_ITEM = object()


def _key(item: Any) -> str:
    """The item's key in the resume state ("" for a job without ``foreach``)."""
    return "" if item is _NO_ITEM else item_key(item)


def _failing(exc: Exception) -> Callable[[Any], Call]:
    def fail(item: Any) -> Call:
        raise exc

    return fail


class _Running:
    """One job of the file while its items run."""

    __slots__ = ("job", "items", "next_index", "in_flight", "failed", "results", "exhausted",
                 "digest", "make_call", "chunker", "limits", "window", "low_water",
                 "cancelled", "io_chunk")

    def __init__(self, job: JobDef, items: Iterator[Any], keep_results: bool,
                 digest: str, make_call: Callable[[Any], Call], window: int,
                 limits: tuple[str, ...], chunker: Chunker | None, io_chunk: int = 1) -> None:
        self.job = job
        #: most items in flight; refilled in batches once no more than ``low_water`` are
        self.window = window
        self.low_water = window - min(64, window // 4)
        self.make_call = make_call
        #: the scoped limits an item's (or a chunk's) attempt holds besides its kind's
        self.limits = limits
        #: small CPU calls go to workers in chunks (rule 5)
        self.chunker = chunker
        #: io calls per chunk (rule 5; 1: each is a job of its own)
        self.io_chunk = io_chunk
        #: fingerprint of the job's definition and of the inputs its templates use
        self.digest = digest
        self.items = items
        self.next_index = 0
        self.in_flight = 0
        self.failed = False
        self.cancelled = False
        self.exhausted = False
        self.results: list[Any] | None = [] if keep_results else None


class _Item(Entry):
    """One item of a job while it runs: its record and result slot, and, when it runs as
    a job of its own, the backend's entry for it (one object per item, no closures)."""

    __slots__ = ("flow", "running", "index", "item", "record", "tried")

    def __init__(self, flow: FlowRun, running: _Running, index: int, item: Any,
                 record: JobRecord) -> None:
        self.flow = flow
        self.running = running
        self.index = index
        self.item = item
        self.record = record
        #: attempts it had in a chunk before it ran alone (rule 5)
        self.tried = 0

    def entry(self, tried: int = 0) -> _Item:
        """The item as a job of its own, after ``tried`` attempts in a chunk."""
        running = self.running
        job = running.job
        self.job_id = f"{self.flow.scope}/{self.record.id}"  # unique among the runner's jobs
        self.kind = job.kind
        self.limits = running.limits
        self.tried = tried
        # its retries go on where the chunk's attempt left them: backoff doubles per retry
        self.retries = job.retries - tried
        self.backoff_s = job.backoff_s * 2.0 ** tried
        self.weight = 1
        self.flow._live.add(self.job_id)
        return self

    def begin(self, attempt: int) -> Call:
        self.start(time.time())
        return self.running.make_call(self.item)

    def finished(self, done: JobFinished) -> None:
        self.flow._live.discard(done.job_id)
        error = done.error.first_line if done.error is not None else None
        if done.node:
            self.record.node = done.node
            if done.started_s is not None:
                self.record.started = done.started_s
        ended = done.ended_s if done.ended_s is not None else time.time()
        self.finish(done.status, self.tried + done.attempts, done.result, error, ended)

    def start(self, now: float) -> None:
        if self.record.started is None:
            self.record.started = now
            self.flow.running += 1
        self.record.status = JobStatus.RUNNING

    def requeue(self) -> None:
        """Back to waiting (its chunk failed whole and it will run alone)."""
        if self.record.status is JobStatus.RUNNING:
            self.flow.running -= 1
        self.record.status = JobStatus.QUEUED
        self.record.started = None

    def finish(self, status: JobStatus, attempts: int, result: Any, error: str | None,
               ended: float) -> None:
        flow, running, record = self.flow, self.running, self.record
        if record.status is JobStatus.RUNNING:
            flow.running -= 1
        record.status = status
        record.attempts = attempts
        record.ended = ended
        record.error = error
        flow.report.add(record)
        flow.done += 1
        if status is JobStatus.SUCCEEDED:
            if running.results is not None:
                running.results[self.index] = result
            if flow.store is not None:
                key = _key(self.item)
                flow.store.succeeded(record.id, running.digest, key, result,
                                     keep_result=running.results is not None)
        else:
            running.failed = True
            if status is JobStatus.CANCELLED:
                running.cancelled = True
            flow.failed += 1
        running.in_flight -= 1
        # refill, or end the job: once every item is out, only the last one's end can
        if running.in_flight <= running.low_water and not (running.exhausted
                                                            and running.in_flight):
            flow._feed(running)


class FlowRun:
    """Runs one flow plan on a backend; ``report`` fills in as jobs end.

    :param env: the environment templates see as ``env`` and shell jobs inherit
    :param scope: a name for this run's limits, unique among the backend's open runs
    :param keep_records: keep every job's record in the report (a million-item run
        that streams its records to a file need not)
    """

    def __init__(
        self, backend: Backend, plan: FlowPlan, *, env: Mapping[str, str],
        store: RunStore | None = None, resume: bool = False, scope: str = "flow",
        keep_records: bool = True,
    ) -> None:
        self.backend = backend
        self.store = store
        self.resume = resume
        self.scope = scope
        self._prior: Prior | None = None
        #: jobs not run again because the last run had done them (``--resume``)
        self.resumed = 0
        self.plan = plan
        self.spec = plan.spec
        self.env = dict(env)
        self.child_env = {k: v for k, v in self.env.items() if k != "ASYNCJOBS_SECRET"}
        self.report = FlowReport(self.spec.name, self.spec.path, started=time.time(),
                                 keep_records=keep_records)

        self.results: dict[str, Any] = {}
        self.done = 0
        self.failed = 0
        self.running = 0
        self.state = FlowState(plan.order, plan.needs)
        self._inbox: list[FlowEvent] = []
        self._busy = False
        self._active: dict[str, _Running] = {}
        #: one pooled HTTP session for the run's http jobs (aiohttp is imported only then)
        self._http: HttpClient | None = None
        #: kills the run's shell process groups if this process dies (kill -9)
        self._shell_guard: ShellGuard | None = None
        self._finished: asyncio.Future[None] | None = None
        #: ids of the backend jobs submitted and not yet finished (items or chunks)
        self._live: set[str] = set()
        #: calls of io chunks waiting to be retried alone, and their timers (rule 5)
        self._waiting: dict[_Item, asyncio.TimerHandle] = {}
        self._rng = random.Random()
        #: items per job, counted once (None: a lines file, known once read)
        self._counts: dict[str, int | None] = {
            n: count_items(self.spec.jobs[n], self.spec, self.env) for n in plan.order
        }
        #: items in all (None while a lines file is unread)
        self.total: int | None = (None if None in self._counts.values()
                                  else sum(n or 0 for n in self._counts.values()))

    async def run(self) -> FlowReport:
        """Run every job; return the report (also on cancellation, marked interrupted).

        :raises asyncio.CancelledError: after cancelling what runs, when cancelled
        """
        self._finished = asyncio.get_running_loop().create_future()
        declared = False
        try:
            if self.store is not None:
                self._prior = await self.store.open(resume=self.resume)
            if self.spec.limits:
                self.backend.declare_limits(self.scope, {
                    name: LimitSpec(lim.concurrency, lim.rate_per_s)
                    for name, lim in self.spec.limits.items()
                })
                declared = True
            self._handle(FlowStarted(f"{self.scope}-start"))
            await self._finished
        except BaseException:
            self.report.interrupted = True
            for job_id in list(self._live):
                self.backend.cancel(job_id, "cancelled: the run was interrupted")
            for it, timer in list(self._waiting.items()):
                timer.cancel()
                it.finish(JobStatus.CANCELLED, 1, None, "cancelled: the run was interrupted",
                          time.time())
            raise
        finally:
            self.report.ended = time.time()
            try:
                if declared:
                    self.backend.release_limits(self.scope)
                if self._http is not None:
                    await self._http.aclose()
                if self._shell_guard is not None:
                    await self._shell_guard.aclose()
            finally:
                if self.store is not None:
                    status = "interrupted" if self.report.interrupted else (
                        "ok" if self.report.ok else "failed")
                    await self.store.close(status)
        return self.report

    # -- jobs of the file (rule 1) ----------------------------------------------------

    def _handle(self, event: FlowEvent) -> None:
        """Feed the flow's state machine; carry out what it says. Re-entered from a
        command (a job whose items were all resumed ends at once), it queues."""
        self._inbox.append(event)
        if self._busy:
            return
        self._busy = True
        try:
            while self._inbox:
                batch, self._inbox = self._inbox, []
                for cmd in self.state.handle(*batch):
                    self._execute(cmd)
        finally:
            self._busy = False

    def _execute(self, cmd: FlowCommand) -> None:
        if type(cmd) is StartJob:
            self._start(cmd.job)
        elif type(cmd) is SkipJob:
            self._skip(cmd.job, cmd.cause)
        else:
            assert type(cmd) is FlowFinished
            if self._finished is not None and not self._finished.done():
                self._finished.set_result(None)

    def _skip(self, name: str, cause: str) -> None:
        self.done += self._counts[name] or 0
        self.report.add(JobRecord(
            name, name, JobStatus.SKIPPED,
            error=f"Skipped: needs {cause}, which did not succeed",
        ))

    def _start(self, name: str) -> None:
        job = self.spec.jobs[name]
        items: Iterator[Any] = (
            iter_items(job, self.spec, self.env) if job.foreach is not None
            else iter((_NO_ITEM,))
        )
        keep = name in self.plan.results_used or name in self.plan.finals
        try:
            make_call = self._compile(job)
        except Exception as exc:  # validated at load; a module may still fail to import now
            make_call = _failing(exc)
        chunked = (job.kind is JobKind.CPU and isinstance(job.action, CallAction)
                   and job.timeout_s is None and job.retries == 0)
        chunker = (Chunker(self.backend.capacity(JobKind.CPU) or 1, self._counts[name])
                   if chunked else None)
        limits = (scoped(self.scope, job.limit),) if job.limit else ()
        running = _Running(job, items, keep, self._digest(job), make_call, self._window(job),
                           limits, chunker, self._io_chunk(job))
        self._active[name] = running
        self._feed(running)

    def _io_chunk(self, job: JobDef) -> int:
        """Io calls per chunk for this job's items (rule 5)."""
        if job.kind is not JobKind.IO or job.foreach is None:
            return 1
        most = None
        if job.limit is not None:
            limit = self.spec.limits[job.limit]
            if limit.rate_per_s is not None:
                return 1  # a rate spaces calls out; a chunk would start its calls together
            most = limit.concurrency
        return max(1, min(self.backend.io_chunk(most, self._counts[job.name]),
                          self._window(job)))

    def _window(self, job: JobDef) -> int:
        if job.limit is None:
            return DEFAULT_WINDOW
        conc = self.spec.limits[job.limit].concurrency
        return DEFAULT_WINDOW if conc is None else max(64, 2 * conc)

    def _feed(self, running: _Running) -> None:
        room = running.window - running.in_flight
        if running.in_flight > running.low_water or self.report.interrupted:
            return  # refill in batches, not one item per finished one; none once stopping
        chunker = running.chunker
        size = running.io_chunk
        if chunker is not None:
            size = min(chunker.size(), running.window)
            room = chunker.room(room, running.in_flight)
        # cpu items always go as chunks: a chunk of one is how an item's cost is measured
        chunked = chunker is not None or size > 1
        if size > 1:
            # whole chunks only: a refill of the few items that just finished would go
            # out as a chunk of those few (a run of 3,000 items went in 1,200 chunks)
            room = (room // size) * size
        batch: list[Entry] = []
        group: list[_Item] = []
        while room > 0 and not running.exhausted:
            try:
                item = next(running.items)
            except StopIteration:
                running.exhausted = True
                break
            except FlowError as exc:  # a lines file that turned bad midway: the job fails
                running.exhausted = running.failed = True
                self.failed += 1
                self.report.add(JobRecord(item_id(running.job.name, running.next_index),
                                          running.job.name, JobStatus.FAILED,
                                          error=f"FlowError: {exc}"))
                break
            index = running.next_index
            running.next_index += 1
            if self._resumed(running, index, item):
                continue
            group.append(self._item(running, index, item))
            room -= 1
            if len(group) == size:
                batch.append(self._chunk(running, group) if chunked else group[0].entry())
                group = []
        if group:
            batch.append(self._chunk(running, group) if chunked or len(group) > 1
                         else group[0].entry())
        if batch:
            self.backend.submit(*batch)
        self._maybe_finished(running)

    def _maybe_finished(self, running: _Running) -> None:
        if not running.exhausted or running.in_flight:
            return
        name = running.job.name
        if self._active.pop(name, None) is None:
            return  # ended already (a refill after the last item)
        ok = not running.failed
        if ok and running.results is not None:
            self.results[name] = (
                running.results if running.job.foreach is not None else running.results[0]
            )
            if name in self.plan.finals:
                self.report.results[name] = self.results[name]
        status = (JobStatus.SUCCEEDED if ok else
                  JobStatus.CANCELLED if running.cancelled else JobStatus.FAILED)
        self._handle(JobEnded(name, status, f"{self.scope}-ended-{name}"))

    # -- resume -----------------------------------------------------------------------

    def _digest(self, job: JobDef) -> str:
        # foreach is left out: an item is itself whatever the fan-out's size
        definition = {k: v for k, v in job.raw.items() if k != "foreach"}
        refs = {(r.root, r.name) for r in references(definition)}
        inputs = {
            f"{root}.{name}": (self.spec.params.get(name) if root == "params"
                               else self.env.get(name) if root == "env"
                               else self.results.get(name) if root == "results" else None)
            for root, name in sorted(refs) if root != "item"
        }
        return fingerprint(definition, None, inputs)

    def _resumed(self, running: _Running, index: int, item: Any) -> bool:
        """Skip an item the last run did with the same inputs (``--resume``)."""
        if self._prior is None:
            return False
        job = running.job
        job_id = item_id(job.name, index) if job.foreach is not None else job.name
        key = _key(item)
        ok, result = self._prior.match(job_id, running.digest, key, running.results is not None)
        if not ok:
            return False
        now = time.time()
        self.report.add(JobRecord(job_id, job.name, JobStatus.SUCCEEDED, 0,
                                             started=now, ended=now))
        if running.results is not None:
            running.results.append(result)
        if self.store is not None:
            self.store.succeeded(job_id, running.digest, key, result,
                                 keep_result=running.results is not None)
        self.done += 1
        self.resumed += 1
        self.report.resumed += 1
        return True

    # -- items ------------------------------------------------------------------------

    def _item(self, running: _Running, index: int, item: Any) -> _Item:
        job = running.job
        job_id = item_id(job.name, index) if job.foreach is not None else job.name
        record = JobRecord(job_id, job.name)
        if running.results is not None:
            running.results.append(None)
        running.in_flight += 1
        return _Item(self, running, index, item, record)

    def _chunk(self, running: _Running, items: list[_Item]) -> Entry:
        """Several items as one job (rule 5); each keeps its own record and outcome."""
        job = running.job
        chunk_id = f"{self.scope}/{job.name}[{items[0].index}..{items[-1].index}]"
        self._live.add(chunk_id)
        io = running.chunker is None

        def prepare(_attempt: int) -> Call:
            calls = [running.make_call(it.item) for it in items]
            if io:
                # the per-call timeout travels as the job's: the node gives it each call
                return Call(run_io_chunk, (calls, len(calls)), {}, job.timeout_s,
                            remote=io_chunk_wire(calls))
            kwargs = [c.kwargs for c in calls]
            return Call(run_chunk, (calls[0].fn, [c.args for c in calls],
                                    kwargs if any(kwargs) else None), {}, None)

        def on_start(attempt: int) -> None:
            now = time.time()
            for it in items:
                it.start(now)

        def on_done(done: JobFinished) -> None:
            self._live.discard(chunk_id)
            now = time.time() if done.ended_s is None else done.ended_s
            if done.node:
                for it in items:
                    it.record.node = done.node
            if done.status is JobStatus.SUCCEEDED and io:
                outcomes, elapsed_s = done.result
                at = now - elapsed_s
                for it, (ok, value, began, took_s) in zip(items, outcomes, strict=True):
                    it.record.started = at + began
                    if ok:
                        it.finish(JobStatus.SUCCEEDED, 1, value, None, at + began + took_s)
                        continue
                    info = ErrorInfo.from_wire(value)
                    if job.retries and info.retryable:
                        self._retry_alone(it, info)
                    else:
                        it.finish(JobStatus.FAILED, 1, None, info.first_line,
                                  at + began + took_s)
            elif done.status is JobStatus.SUCCEEDED:
                outcomes, elapsed_s = done.result
                assert running.chunker is not None
                running.chunker.measured(elapsed_s, len(items))
                # each item's own time, as its worker measured it (rule 5)
                at = now - elapsed_s
                for it, (ok, value, took_s) in zip(items, outcomes, strict=True):
                    it.record.started = at
                    at += took_s
                    if ok:
                        it.finish(JobStatus.SUCCEEDED, 1, value, None, at)
                    else:
                        line = ErrorInfo.from_wire(value).first_line
                        it.finish(JobStatus.FAILED, 1, None, line, at)
            elif done.status is JobStatus.CANCELLED or len(items) == 1:
                error = done.error.first_line if done.error is not None else None
                for it in items:
                    it.finish(done.status, done.attempts, None, error, now)
            else:  # the chunk failed whole (its worker died): each item alone names the culprit
                for it in items:
                    it.requeue()
                self.backend.submit(*(it.entry() for it in items))

        return Entry(chunk_id, job.kind, on_done, prepare=prepare, limits=running.limits,
                     on_start=on_start, weight=len(items) if io else 1)

    def _retry_alone(self, it: _Item, info: ErrorInfo) -> None:
        """A call of an io chunk failed and may be retried: run it alone after the first
        retry's backoff (or the ``Retry-After`` it was given), as retry 1 (rule 5)."""
        it.requeue()
        delay = backoff_delay(1, it.running.job.backoff_s, self._rng)
        if info.retry_after_s is not None:
            delay = max(delay, info.retry_after_s)

        def submit() -> None:
            del self._waiting[it]
            self.backend.submit(it.entry(tried=1))

        self._waiting[it] = asyncio.get_running_loop().call_later(delay, submit)

    def _compile(self, job: JobDef) -> Callable[[Any], Call]:
        """What builds one attempt's call from an item: templates compiled and the
        callable imported once per job, not once per item."""
        params, env, results = self.spec.params, self.env, self.results

        def ctx(item: Any) -> TemplateContext:
            if item is _NO_ITEM:
                return TemplateContext(params, env, results)
            return TemplateContext(params, env, results, item)

        action = job.action
        timeout_s = job.timeout_s
        if isinstance(action, CallAction):
            fn = resolve_ref(action.ref)
            args, kwargs = compile_template(job.args), compile_template(job.kwargs)

            def call(item: Any) -> Call:
                c = ctx(item)
                return Call(fn, tuple(args(c)), kwargs(c), timeout_s)

            return call
        if isinstance(action, ShellAction):
            command, job_env = compile_template(action.command), compile_template(job.env)
            cwd = compile_template(job.cwd)
            default_cwd = os.path.dirname(self.spec.path) or None
            base_env = self.child_env
            if self._shell_guard is None:
                self._shell_guard = ShellGuard()
            guard = self._shell_guard

            def shell(item: Any) -> Call:
                c = ctx(item)
                own = {str(k): str(v) for k, v in job_env(c).items()}
                run_env = dict(base_env)
                run_env.update(own)
                text, where = command(c), cwd(c) or default_cwd
                return Call(run_shell, (text,),
                            {"env": run_env, "cwd": where, "guard": guard}, timeout_s,
                            remote=shell_wire(text, own, where))

            return shell
        assert isinstance(action, HttpAction)
        url, body = compile_template(action.url), compile_template(action.json)
        data, headers = compile_template(action.data), compile_template(action.headers)
        if self._http is None:
            from .executors.http import HttpClient

            self._http = HttpClient()
        method, expect, request = action.method, action.expect, self._http.request

        def http(item: Any) -> Call:
            c = ctx(item)
            where = url(c)
            kwargs = {"json": body(c), "data": data(c), "headers": headers(c),
                      "expect": expect}
            return Call(request, (method, where), kwargs, timeout_s,
                        remote=http_wire(method, where, **kwargs))

        return http
