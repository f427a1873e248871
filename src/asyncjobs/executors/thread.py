"""Thread attempts: blocking calls in a bounded pool of threads.

A Python thread cannot be killed, so an attempt past its timeout (or cancelled) is
reported at once and its thread is left to finish the call in the background. Python's
exit waits for such a thread; ``calls_in_threads()`` tells how many are still running,
so ``asyncjobs run`` can say so and exit without waiting for them.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .base import timeout_info
from .io import AttemptTimedOut, TaskExecutor

if TYPE_CHECKING:
    from collections.abc import Callable

    from .base import AttemptKey, Call, Sink


_lock = threading.Lock()
#: calls running in any runner's threads, process-wide (threads are the process's)
_running = 0


def calls_in_threads() -> int:
    """How many thread-job calls are running now, in any runner of this process."""
    return _running


def _counted(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    global _running
    with _lock:
        _running += 1
    try:
        return fn(*args, **kwargs)
    finally:
        with _lock:
            _running -= 1


class ThreadExecutor(TaskExecutor):
    """Runs each attempt in a ``ThreadPoolExecutor`` of ``workers`` threads."""

    def __init__(self, sink: Sink, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"thread workers must be at least 1, not {workers}")
        super().__init__(sink)
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None

    def start(self, key: AttemptKey, call: Call) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="asyncjobs")
        super().start(key, call)

    async def aclose(self) -> None:
        await super().aclose()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def _attempt(self, call: Call) -> Any:
        fut = asyncio.get_running_loop().run_in_executor(
            self._pool, functools.partial(_counted, call.fn, *call.args, **call.kwargs)
        )
        if call.timeout_s is None:
            return await fut
        try:
            return await asyncio.wait_for(fut, call.timeout_s)
        except TimeoutError:
            if not fut.cancelled():
                raise  # the call itself raised TimeoutError
            detail = "; its thread cannot be stopped and finishes in the background"
            raise AttemptTimedOut(timeout_info(call.timeout_s, detail)) from None
