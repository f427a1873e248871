"""Thread attempts: blocking calls in a bounded pool of threads.

A Python thread cannot be killed, so an attempt past its timeout (or cancelled) is
reported at once and its thread is left to finish the call in the background.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from .base import error_info, timeout_info

if TYPE_CHECKING:
    from .base import AttemptKey, Call, Sink


class ThreadExecutor:
    """Runs each attempt in a ``ThreadPoolExecutor`` of ``workers`` threads."""

    def __init__(self, sink: Sink, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"thread workers must be at least 1, not {workers}")
        self.sink = sink
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._tasks: dict[AttemptKey, asyncio.Task[None]] = {}
        self._cancelling: set[AttemptKey] = set()

    def start(self, key: AttemptKey, call: Call) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="asyncjobs")
        self._tasks[key] = asyncio.get_running_loop().create_task(self._run(key, call))

    def cancel(self, key: AttemptKey) -> None:
        task = self._tasks.get(key)
        if task is not None:
            self._cancelling.add(key)
            task.cancel()

    async def aclose(self) -> None:
        tasks = list(self._tasks.items())
        for key, task in tasks:
            self._cancelling.add(key)
            task.cancel()
        if tasks:
            await asyncio.wait([t for _, t in tasks])
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self, key: AttemptKey, call: Call) -> None:
        loop = asyncio.get_running_loop()
        fn = functools.partial(call.fn, *call.args, **call.kwargs)
        try:
            fut = loop.run_in_executor(self._pool, fn)
            if call.timeout_s is None:
                result = await fut
            else:
                try:
                    result = await asyncio.wait_for(fut, call.timeout_s)
                except TimeoutError:
                    if not fut.cancelled():
                        raise  # the call itself raised TimeoutError
                    detail = "; its thread cannot be stopped and finishes in the background"
                    self.sink.failed(key, timeout_info(call.timeout_s, detail))
                    return
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
