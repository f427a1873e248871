"""asyncjobs inside a web app: a Starlette app whose CPU-bound endpoints run their work in
the Runner's worker processes, so the event loop keeps serving while the math runs.

Run from the repository root (``pip install -e ".[examples]"``; README.md beside this
file says why ``python -m uvicorn`` rather than the ``uvicorn`` script)::

    python -m uvicorn examples.webapp.app:app --port 8000
    ASYNCJOBS_CPU_WORKERS=$(( $(nproc) / 2 )) python -m uvicorn examples.webapp.app:app --workers 2

    curl 'localhost:8000/pi?tries=200000'         # 200 {"pi": 3.14..., ...}
    curl 'localhost:8000/spin?ms=5000'            # 504 JobTimeout: spin's own 2 s timeout
    curl 'localhost:8000/spin?ms=1500&deadline=0.5'   # 504 DeadlineExceeded after 0.5 s
    curl 'localhost:8000/crash'                   # 500 WorkerCrashed; the app serves on

- The ``Runner`` lives in the ASGI lifespan: it opens before the first request and
  closes after the last one, in every app process.
- ``JobFailed`` → 500 with the error's type and first line; ``JobTimeout`` (the job's
  own ``timeout``) → 504; the request's deadline (``asyncio.timeout`` around the await)
  → 504. When the deadline fires, the handler's wait is cancelled and so is its job: a
  job still queued is dropped, a running one has its worker process killed (and
  replaced), so an abandoned request burns no core.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

import asyncjobs

from . import jobs

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from starlette.requests import Request

#: the longest any request waits for its job, in seconds; a request may ask for less
#: with ``?deadline=SECONDS``
DEADLINE_S = float(os.environ.get("WEBAPP_DEADLINE_S", "10"))
MAX_TRIES = 50_000_000


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    # cpu_workers=None: $ASYNCJOBS_CPU_WORKERS when set, else one per core. Under
    # `uvicorn --workers N` every app process has its own Runner, so set
    # ASYNCJOBS_CPU_WORKERS=cores//N to keep N processes from starting N x cores workers.
    # prestart: entering the block waits until the cpu workers are up, so the first
    # requests do not pay their start.
    async with asyncjobs.Runner(prestart=True) as runner:
        yield {"runner": runner}  # handlers read it as request.state.runner


class BadRequest(Exception):
    pass


def error(status: int, name: str, message: str, job: str | None = None) -> JSONResponse:
    return JSONResponse({"error": name, "message": message, "job": job}, status_code=status)


def number(request: Request, name: str, default: float | None, low: float, high: float,
           parse: Callable[[str], float] = float) -> float:
    """The query parameter ``name``, parsed and within ``low..high``.

    :raises BadRequest: it is missing (and has no default), malformed or out of range
    """
    raw = request.query_params.get(name)
    if raw is None:
        if default is None:
            raise BadRequest(f"missing query parameter {name!r}")
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise BadRequest(f"{name}={raw!r} is not a number") from None
    if not low <= value <= high:
        raise BadRequest(f"{name}={raw} is outside {low:g}..{high:g}")
    return value


async def run_job(request: Request, fn: Callable[..., Any], *args: Any) -> Any:
    """Submit ``fn(*args)`` as a job and await it within the request's deadline.

    :raises TimeoutError: the deadline passed (the job has been cancelled)
    :raises JobFailed: the job failed (``JobTimeout``: it ran past its own timeout)
    """
    runner: asyncjobs.Runner = request.state.runner
    deadline_s = number(request, "deadline", DEADLINE_S, 0.001, DEADLINE_S)
    async with asyncio.timeout(deadline_s):
        # leaving this block by the deadline cancels the await, which cancels the job:
        # a running cpu job's worker is killed, so nobody computes an unwanted answer
        return await runner.submit(fn, *args)


async def answer(request: Request, fn: Callable[..., Any], *args: Any,
                 shape: Callable[[Any], dict[str, Any]]) -> JSONResponse:
    """Run the job and map how it ended to an HTTP response."""
    try:
        result = await run_job(request, fn, *args)
    except BadRequest as exc:
        return error(400, "BadRequest", str(exc))
    except asyncjobs.JobTimeout as exc:  # before JobFailed: a JobTimeout is one
        return error(504, "JobTimeout", first_line(exc.message), exc.job_id)
    except asyncjobs.JobFailed as exc:
        return error(500, exc.type_name, first_line(exc.message), exc.job_id)
    except asyncjobs.JobCancelled as exc:  # the runner is closing: the app shuts down
        return error(503, "JobCancelled", str(exc), exc.job_id)
    except TimeoutError:  # asyncio.timeout: the request's deadline
        return error(504, "DeadlineExceeded",
                     "no answer within the request's deadline; its job was cancelled")
    return JSONResponse(shape(result))


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


async def pi(request: Request) -> JSONResponse:
    """``GET /pi?tries=N[&seed=S][&deadline=SECONDS]``: estimate pi from N random points."""
    try:
        tries = int(number(request, "tries", 100_000, 1, MAX_TRIES, int))
        seed = None
        if "seed" in request.query_params:
            seed = int(number(request, "seed", None, 0, 2**63, int))
        return await answer(request, jobs.hits, tries, seed,
                            shape=lambda n: {"pi": 4 * n / tries, "hits": n, "tries": tries})
    except BadRequest as exc:
        return error(400, "BadRequest", str(exc))


async def spin(request: Request) -> JSONResponse:
    """``GET /spin?ms=M[&deadline=SECONDS]``: burn M ms of CPU (the job's timeout is 2 s)."""
    try:
        ms = number(request, "ms", None, 0, 60_000)
        return await answer(request, jobs.spin, ms, shape=lambda spent: {"ms": spent})
    except BadRequest as exc:
        return error(400, "BadRequest", str(exc))


async def crash(request: Request) -> JSONResponse:
    """``GET /crash``: a job that kills its worker process (for demos): 500 WorkerCrashed."""
    return await answer(request, jobs.crash, 3, shape=lambda _: {})


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True, "pid": os.getpid()})


app = Starlette(
    routes=[
        Route("/pi", pi),
        Route("/spin", spin),
        Route("/crash", crash),
        Route("/healthz", healthz),
    ],
    lifespan=lifespan,
)
