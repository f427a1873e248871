"""The shell guard: a small process that kills shell jobs' process groups when the runner
that started them dies, even by SIGKILL. Run as a script by path, importing nothing of
asyncjobs.

Why: a shell job runs in a session of its own (so its whole group can be killed when it
ends), which also means nothing ties it to the runner's life: ``kill -9`` of the runner
left ``sh -c 'sleep 300 & wait'`` and its children alive under init. Worker processes
have PR_SET_PDEATHSIG, but that reaches one process, not a group, and a shell's
background children are not its to take along.

How this works: the runner writes ``+PGID`` when a shell job's group starts (the job
waits for the runner's go until then) and ``-PGID`` when the job ended and its group
was killed, one per line, on this process's stdin. When stdin reaches its end — the
runner closed it, exited or died — every group still listed is SIGKILLed and this
process exits. It runs in a session of its own, so the signals a
terminal sends the runner's group (Ctrl-C) do not reach it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    groups: set[int] = set()
    for line in sys.stdin.buffer:
        text = line.strip()
        with contextlib.suppress(ValueError):
            if text.startswith(b"+"):
                groups.add(int(text[1:]))
            elif text.startswith(b"-"):
                groups.discard(int(text[1:]))
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


if __name__ == "__main__":
    main()
