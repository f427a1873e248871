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
    and reports its end exactly once. Subclasses say how an attempt runs (``_attempt``)."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self._tasks: dict[AttemptKey, asyncio.Task[None]] = {}
        self._cancelling: set[AttemptKey] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, key: AttemptKey, call: Call) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        self._tasks[key] = loop.create_task(self._run(key, call))

    def _attempt(self, call: Call) -> Any:
        """Start the call; return its result or an awaitable of it, or raise
        (``AttemptTimedOut`` past its timeout)."""
        raise NotImplementedError

    async def _run(self, key: AttemptKey, call: Call) -> None:
        try:
            result = self._attempt(call)
            if inspect.isawaitable(result):
                result = await result
        except AttemptTimedOut as timed_out:
            self.sink.failed(key, timed_out.info)
        except asyncio.CancelledError:
            if key not in self._cancelling:
                raise
            self.sink.cancelled(key)
        except Exception as exc:
            self.sink.failed(key, ErrorInfo.from_exception(exc))
        else:
            self.sink.succeeded(key, result)
        finally:
            del self._tasks[key]
            self._cancelling.discard(key)

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
        return self._timed(call, call.timeout_s)

    async def _timed(self, call: Call, timeout_s: float) -> Any:
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
