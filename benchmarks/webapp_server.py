"""The app that ``benchmarks/webapp.py`` serves under uvicorn: one Starlette app, one
handler, three ways to run its CPU job, picked by ``WEBAPP_BENCH_VARIANT``:

- ``asyncjobs``: ``await runner.submit(fn, *args)``, the ``Runner`` opened in the lifespan
  (as ``examples/webapp/app.py`` does);
- ``ppe``: ``await loop.run_in_executor(pool, fn, *args)`` on a ``ProcessPoolExecutor``
  opened in the lifespan (the platform's start method: fork on Linux);
- ``asyncjobs-shield``: ``await asyncio.shield(runner.submit(fn, *args))``: the deadline
  ends the wait but not the job, which runs to its end (no worker is killed), as a
  ``ProcessPoolExecutor`` job does;
- ``anyio``: ``await anyio.to_process.run_sync(fn, *args, cancellable=True, limiter=...)``
  (``cancellable=True``: at the deadline its worker is killed, as asyncjobs does; with
  the default ``False`` the wait would be shielded and outlive the deadline).

Each with ``WEBAPP_BENCH_WORKERS`` worker processes (default 2). Endpoints:
``/pi?tries=N``, ``/spin?ms=M&deadline=S`` (``asyncio.timeout(S)`` around the await,
504 ``DeadlineExceeded`` past it), ``/healthz``. The jobs are ``examples.webapp.jobs``'.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING, Any

from examples.webapp import jobs
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from starlette.requests import Request

VARIANT = os.environ.get("WEBAPP_BENCH_VARIANT", "asyncjobs")
WORKERS = int(os.environ.get("WEBAPP_BENCH_WORKERS", "2"))
DEADLINE_S = 10.0


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    if VARIANT == "asyncjobs":
        import asyncjobs

        # Runner(prestart=True) will go here once it is released (workers up before
        # the first request); until then the warm-up burst starts them
        async with asyncjobs.Runner(cpu_workers=WORKERS) as runner:
            yield {"offload": runner.submit}
    elif VARIANT == "asyncjobs-shield":
        import asyncjobs

        async with asyncjobs.Runner(cpu_workers=WORKERS) as runner:

            def shielded(fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
                return asyncio.shield(runner.submit(fn, *args))

            yield {"offload": shielded}
    elif VARIANT == "ppe":
        loop = asyncio.get_running_loop()
        with ProcessPoolExecutor(WORKERS) as pool:

            def in_pool(fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
                return loop.run_in_executor(pool, fn, *args)

            yield {"offload": in_pool}
            pool.shutdown(wait=False, cancel_futures=True)
    elif VARIANT == "anyio":
        import anyio
        import anyio.to_process

        limiter = anyio.CapacityLimiter(WORKERS)

        def in_process(fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
            return anyio.to_process.run_sync(fn, *args, cancellable=True, limiter=limiter)

        yield {"offload": in_process}
    else:
        raise SystemExit(f"unknown WEBAPP_BENCH_VARIANT={VARIANT!r}")


def error(status: int, name: str, message: str) -> JSONResponse:
    return JSONResponse({"error": name, "message": message}, status_code=status)


async def answer(request: Request, fn: Callable[..., Any], *args: Any) -> JSONResponse:
    deadline_s = float(request.query_params.get("deadline", DEADLINE_S))
    try:
        async with asyncio.timeout(deadline_s):
            result = await request.state.offload(fn, *args)
    except TimeoutError as exc:
        if type(exc).__name__ != "TimeoutError":  # asyncjobs.JobTimeout, the job's own
            return error(504, type(exc).__name__, str(exc))
        return error(504, "DeadlineExceeded", "no answer within the request's deadline")
    except Exception as exc:  # JobFailed, BrokenProcessPool, BrokenWorkerProcess, ...
        return error(500, getattr(exc, "type_name", type(exc).__name__),
                     (str(exc).strip().splitlines() or [""])[0])
    return JSONResponse({"result": result})


async def pi(request: Request) -> JSONResponse:
    return await answer(request, jobs.hits, int(request.query_params["tries"]))


async def spin(request: Request) -> JSONResponse:
    return await answer(request, jobs.spin, float(request.query_params["ms"]))


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True, "variant": VARIANT, "pid": os.getpid()})


app = Starlette(
    routes=[Route("/pi", pi), Route("/spin", spin), Route("/healthz", healthz)],
    lifespan=lifespan,
)
