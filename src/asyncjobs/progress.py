"""Progress while a flow runs: a live line on a terminal, a plain line every few seconds
otherwise (logs, CI). Reads the run's counters; never touches the jobs."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from .flowrun import FlowRun

PLAIN_EVERY_S = 5.0
LIVE_EVERY_S = 0.2


def status_line(run: FlowRun, elapsed_s: float) -> str:
    """``done 120/10000 · failed 2 · running 50 · 820.0/s · ETA 12s``"""
    done, total = run.done, run.total
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    known = total is not None and rate > 0 and done < total
    eta = f"{(total - done) / rate:.0f}s" if known and total is not None else "-"
    return (f"done {done}/{'?' if total is None else total} · failed {run.failed} · "
            f"running {run.running} · {rate:,.1f}/s · ETA {eta}")


class Progress:
    """Shows ``status_line`` until stopped.

    :param live: redraw one line in place (a terminal); otherwise print a line every
        ``PLAIN_EVERY_S`` seconds
    """

    def __init__(self, run: FlowRun, *, stream: TextIO = sys.stderr, live: bool | None = None):
        self.run = run
        self.stream = stream
        self.live = stream.isatty() if live is None else live
        self._task: asyncio.Task[None] | None = None
        self._started = time.monotonic()
        self._rich: Any = None

    def start(self) -> None:
        self._started = time.monotonic()
        if self.live:
            from rich.console import Console
            from rich.live import Live

            self._rich = Live("", console=Console(file=self.stream), transient=True,
                              auto_refresh=False)
            self._rich.start()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        every = LIVE_EVERY_S if self.live else PLAIN_EVERY_S
        while True:
            await asyncio.sleep(every)
            self._show()

    def _show(self) -> None:
        line = status_line(self.run, time.monotonic() - self._started)
        if self._rich is not None:
            from rich.text import Text

            self._rich.update(Text(line), refresh=True)  # Text: no markup, no highlighting
        else:
            print(line, file=self.stream, flush=True)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._rich is not None:
            self._rich.stop()
            self._rich = None
