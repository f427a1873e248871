"""IO attempts: coroutines on this event loop, one task each, cancelled for real."""

from __future__ import annotations

import asyncio
import inspect
from typing import TYPE_CHECKING, Any

from ..model import ErrorInfo
from .base import timeout_info

if TYPE_CHECKING:
    from .base import AttemptKey, Call, Sink


class AttemptTimedOut(Exception):
    """Raised by ``_attempt`` when the attempt ran past its timeout."""

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info


class TaskExecutor:
    """Runs each attempt in a task of its own, which ``cancel`` and ``aclose`` cancel,
    and reports its end exactly once. Subclasses say how an attempt runs (``_attempt``).

    The task runs the job's own coroutine, and a done-callback reports how it ended: no
    wrapper coroutine per attempt, which is a frame and a wake-up less for each of a
    100,000 small jobs.
    """

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self._tasks: dict[AttemptKey, asyncio.Future[Any]] = {}
        #: each running task's attempt, so one bound method serves as every done-callback
        self._keys: dict[asyncio.Future[Any], AttemptKey] = {}
        self._cancelling: set[AttemptKey] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_done = self._ended

    def start(self, key: AttemptKey, call: Call) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        try:
            result = self._attempt(call)
        except Exception as exc:  # the call raised before it could be awaited
            self.sink.failed(key, ErrorInfo.from_exception(exc))
            return
        if inspect.iscoroutine(result):
            task: asyncio.Future[Any] = loop.create_task(result)
        elif inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
        else:
            self.sink.succeeded(key, result)  # a plain function run as io
            return
        self._tasks[key] = task
        self._keys[task] = key
        task.add_done_callback(self._on_done)

    def _attempt(self, call: Call) -> Any:
        """Start the call; return its result or an awaitable of it, or raise
        (``AttemptTimedOut`` past its timeout)."""
        raise NotImplementedError

    def _ended(self, task: asyncio.Future[Any]) -> None:
        key = self._keys.pop(task)
        del self._tasks[key]
        if task.cancelled():
            if key in self._cancelling:
                self._cancelling.discard(key)
                self.sink.cancelled(key)
            else:  # cancelled by someone else (the loop shutting down, say)
                info = ErrorInfo("CancelledError", "the attempt's task was cancelled from "
                                 "outside the runner", retryable=False)
                self.sink.failed(key, info)
            return
        self._cancelling.discard(key)
        exc = task.exception()
        if exc is None:
            self.sink.succeeded(key, task.result())
        elif isinstance(exc, AttemptTimedOut):
            self.sink.failed(key, exc.info)
        else:
            self.sink.failed(key, ErrorInfo.from_exception(exc))

    def cancel(self, key: AttemptKey) -> None:
        task = self._tasks.get(key)
        if task is not None:
            self._cancelling.add(key)
            task.cancel()

    def kill_all(self) -> None:
        """Nothing to kill: attempts are tasks, cancelled by ``aclose``."""

    async def aclose(self) -> None:
        """Cancel every attempt still running and wait for them to unwind."""
        tasks = list(self._tasks.items())
        for key, task in tasks:
            self._cancelling.add(key)
            task.cancel()
        if tasks:
            await asyncio.wait([t for _, t in tasks])


class IoExecutor(TaskExecutor):
    """Runs each attempt as a coroutine in a task on the running loop."""

    def _attempt(self, call: Call) -> Any:
        if call.timeout_s is None:
            # the job's own coroutine, awaited by the attempt's task: no frame between
            return call.fn(*call.args, **call.kwargs)
        return run_timed(call, call.timeout_s)


async def run_timed(call: Call, timeout_s: float) -> Any:
    """The call's result, awaited if it is awaitable.

    :raises AttemptTimedOut: past ``timeout_s``
    """
    scope = asyncio.timeout(timeout_s)
    try:
        async with scope:
            result = call.fn(*call.args, **call.kwargs)
            if inspect.isawaitable(result):
                result = await result
            return result
    except TimeoutError:
        if not scope.expired():
            raise  # the job's own TimeoutError: a failure like any other
        raise AttemptTimedOut(timeout_info(timeout_s)) from None
