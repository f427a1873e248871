"""Entry of one loop process of ``asyncjobs node``:
``python -m asyncjobs.daemons._loop_main [MODULE...]``, its settings as one JSON line on
stdin; the modules named are imported in a thread while it waits for them (``aiohttp``
for a flow with http steps: ~100 ms that its first request would wait for).

The settings (the secret among them) come on stdin, never in argv or the environment,
which other users of the machine may read in ``/proc``. Stdin then stays open: its end
means the supervisor is gone (even killed with SIGKILL), and the loop stops at once.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys


def main() -> int:
    # Keep the supervisor's pipe on a private descriptor (not inherited), and give jobs
    # and their children /dev/null as stdin: none of them holds the pipe open.
    watch_fd = os.dup(0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    import anyio

    code = anyio.run(_run, watch_fd, backend="asyncio",
                     backend_options={"use_uvloop": _have_uvloop()})
    from ..executors.thread import calls_in_threads

    if calls_in_threads():  # Python would wait for a thread job forever at exit
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    # The interpreter's exit still frees everything, but its cyclic collections walk
    # every object (~30 ms with aiohttp loaded) while the supervisor, and the runner's
    # user, wait for this process to end; objects frozen are not walked.
    import gc

    gc.freeze()
    return code


def _have_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover - platforms without uvloop
        return False
    return True


async def _read_line(fd: int) -> bytes:
    """The first line on ``fd`` (less, if it ends first), the event loop turning."""
    import asyncio

    loop = asyncio.get_running_loop()
    data = bytearray()
    done = loop.create_future()

    def readable() -> None:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        data.extend(chunk)
        if (not chunk or b"\n" in chunk) and not done.done():
            done.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
    return bytes(data)


def _preload(modules: list[str]) -> None:
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # a job that needs it says why, if one ever does
            pass


async def _run(watch_fd: int) -> int:
    import asyncio

    from .loop import LoopProcess, LoopSettings, prepare

    # Everything but the settings is ready before they come: a loop started early
    # (asyncjobs run --loops N) waits for them while its runner still starts.
    prepare()
    if sys.argv[1:]:
        import threading

        threading.Thread(target=_preload, args=(sys.argv[1:],), daemon=True,
                         name="asyncjobs-preload").start()
    os.set_blocking(watch_fd, False)
    line = await _read_line(watch_fd)
    try:
        settings = LoopSettings.from_json(json.loads(line))
    except (ValueError, TypeError, KeyError) as exc:
        print(f"asyncjobs: error: a loop process got no valid settings on stdin: "
              f"{type(exc).__name__}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format=f"%(asctime)s asyncjobs node {settings.name} loop {settings.index} "
               f"[%(levelname)s] %(message)s")
    proc = LoopProcess(settings)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, proc.request_stop)
    loop.add_signal_handler(signal.SIGINT, proc.request_stop)

    def supervisor_readable() -> None:
        try:
            data = os.read(watch_fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(watch_fd)
            logging.getLogger("asyncjobs.node").warning(
                "%s: the node's supervisor is gone; stopping", proc.tag)
            proc.request_stop(hurry=True)

    if settings.status_fd is not None:  # ours alone: no job's process inherits it
        os.set_inheritable(settings.status_fd, False)
        os.set_blocking(settings.status_fd, False)
    loop.add_reader(watch_fd, supervisor_readable)
    try:
        await proc.run()
    finally:
        loop.remove_reader(watch_fd)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
