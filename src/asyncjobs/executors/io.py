"""IO attempts: coroutines on this event loop, one task each, cancelled for real."""

from __future__ import annotations

import asyncio
import inspect
from typing import TYPE_CHECKING, Any

from .base import error_info, timeout_info

if TYPE_CHECKING:
    from ..model import ErrorInfo
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

    def start(self, key: AttemptKey, call: Call) -> None:
        self._tasks[key] = asyncio.get_running_loop().create_task(self._run(key, call))

    async def _attempt(self, call: Call) -> Any:
        """Run the call; return its result, or raise (``AttemptTimedOut`` past its timeout)."""
        raise NotImplementedError

    async def _run(self, key: AttemptKey, call: Call) -> None:
        try:
            result = await self._attempt(call)
        except AttemptTimedOut as timed_out:
            self.sink.failed(key, timed_out.info)
        except asyncio.CancelledError:
            if key not in self._cancelling:
                raise
            self.sink.cancelled(key)
        except Exception as exc:
            self.sink.failed(key, error_info(exc))
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

    async def _attempt(self, call: Call) -> Any:
        if call.timeout_s is None:
            return await _invoke(call)
        scope = asyncio.timeout(call.timeout_s)
        try:
            async with scope:
                return await _invoke(call)
        except TimeoutError:
            if not scope.expired():
                raise  # the job's own TimeoutError: a failure like any other
            raise AttemptTimedOut(timeout_info(call.timeout_s)) from None


async def _invoke(call: Call) -> Any:
    result = call.fn(*call.args, **call.kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result
