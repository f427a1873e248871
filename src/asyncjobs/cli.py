"""The ``asyncjobs`` command: argv in, exit code out.

Exit codes: 0 every job succeeded; 1 a job failed or was skipped; 2 bad input or
configuration; 130 interrupted (Ctrl-C or SIGTERM: running jobs are cancelled, their
subprocesses killed, and the summary is still printed).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from typing import TYPE_CHECKING, Any

from . import __version__
from .config import parse_size
from .errors import FlowError, RunInProgress, StateUnavailable

if TYPE_CHECKING:
    from .flow.plan import FlowPlan

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's own, as wide as the terminal as argparse makes it, without its import
    of shutil (~3 ms at every start: argparse makes a formatter for each argument)."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        if width is None:  # shutil.get_terminal_size().columns - 2
            try:
                columns = int(os.environ["COLUMNS"])
            except (KeyError, ValueError):
                columns = 0
            stdout = sys.__stdout__
            if columns <= 0 and stdout is not None:
                try:
                    columns = os.get_terminal_size(stdout.fileno()).columns
                except (AttributeError, ValueError, OSError):
                    columns = 0
            width = (columns or 80) - 2
        super().__init__(prog, indent_increment, max_help_position, width)


class _Parser(argparse.ArgumentParser):
    """With ``_HelpFormatter``, as are its subcommands' parsers (argparse makes them of
    their parent's class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="asyncjobs",
        description="An asyncio job runner: IO jobs as coroutines, CPU jobs on every core.",
    )
    parser.add_argument("--version", action="version", version=f"asyncjobs {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser("run", help="run a jobs.yaml flow",
                              description="Run a jobs.yaml flow: embedded in this process, "
                                          "in N loop processes beside it (--loops N), or "
                                          "on a cluster (--connect HOST:PORT).")
    run.add_argument("file", metavar="FILE", help="the flow file (jobs.yaml)")
    run.add_argument("--param", action="append", default=[], metavar="K=V",
                     help="override a param of the file (repeatable)")
    run.add_argument("--cpu-workers", type=int, metavar="N",
                     help="worker processes for cpu jobs (default: the usable cores)")
    run.add_argument("--loops", type=int, metavar="N",
                     help="event loop processes that run the jobs (default 1: this "
                          "process; more: a node of N loops beside it)")
    run.add_argument("--connect", metavar="HOST:PORT",
                     help="run the flow's jobs on the cluster of the coordinator at "
                          "HOST:PORT instead of in this process")
    run.add_argument("--report", metavar="PATH.json", help="write a JSON report of every job")
    run.add_argument("--resume", action="store_true",
                     help="skip the jobs that succeeded in the last run of this file "
                          "with the same inputs")
    run.add_argument("--dry-run", action="store_true",
                     help="validate and print the plan; run nothing")
    run.add_argument("--max-file-size", default="10MiB", metavar="SIZE",
                     help="refuse a flow file larger than this, before parsing it "
                          "(default: 10MiB)")
    run.add_argument("--quiet", action="store_true",
                     help="no progress; print the summary only when something failed")
    _tcp_options(run)

    coord = commands.add_parser(
        "coordinator", help="schedule jobs for a cluster of nodes",
        description="Accept nodes and clients, and schedule the clients' jobs on the nodes.")
    coord.add_argument("--listen", default="127.0.0.1:7700", metavar="HOST:PORT",
                       help="where nodes and clients connect (default: 127.0.0.1:7700; "
                            "any other than a loopback address needs a secret)")
    coord.add_argument("--state", metavar="PATH.db",
                       help="keep what a restart must not lose (sessions' succeeded jobs, "
                            "flows) in this SQLite file (default: $STATE_DIRECTORY/"
                            "coordinator.db under systemd, else "
                            "~/.local/state/asyncjobs/coordinator.db)")
    coord.add_argument("--no-state", action="store_true",
                       help="keep everything in memory: a restart forgets it all")
    coord.add_argument("--http", metavar="HOST:PORT",
                       help="serve /healthz, /metrics and JSON state here")
    coord.add_argument("--dead-after", type=float, default=5.0, metavar="SECONDS",
                       help="declare a node dead when it is silent this long (default: 5)")
    _tcp_options(coord)

    node = commands.add_parser(
        "node", help="run a cluster's jobs on this machine",
        description="Connect to a coordinator and run the jobs it assigns, one event loop "
                    "per core.")
    node.add_argument("--connect", required=True, metavar="HOST:PORT",
                      help="the coordinator's address")
    node.add_argument("--loops", type=int, metavar="N",
                      help="event loop processes (default: the usable cores)")
    node.add_argument("--cpu-workers", type=int, metavar="N",
                      help="cpu worker processes for the whole node, shared by its loops "
                           "(default: the usable cores)")
    node.add_argument("--io-concurrency", type=int, metavar="N",
                      help="io attempts each loop runs at once (default: 100)")
    node.add_argument("--name", metavar="NAME",
                      help="the node's name (default: the host name)")
    node.add_argument("--drain-timeout", type=float, default=30.0, metavar="SECONDS",
                      help="on SIGTERM, how long running jobs may take to finish (default: 30)")
    _tcp_options(node)

    status = commands.add_parser(
        "status", help="show a cluster's nodes and flows",
        description="Show the nodes and flows of the coordinator at HOST:PORT.")
    status.add_argument("--connect", required=True, metavar="HOST:PORT",
                        help="the coordinator's address")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    _tcp_options(status)
    return parser


def _tcp_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--secret-file", metavar="PATH",
                        help="the cluster secret, from a file only you may read (default: "
                             "$ASYNCJOBS_SECRET)")
    parser.add_argument("--tls-cert", metavar="PATH", help="this side's TLS certificate")
    parser.add_argument("--tls-key", metavar="PATH", help="its private key")
    parser.add_argument("--tls-ca", metavar="PATH",
                        help="the CA that signs the cluster's certificates")


def _fail(message: str) -> int:
    print(f"asyncjobs: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _params(pairs: list[str]) -> dict[str, str] | str:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            return f"--param takes K=V, got {pair!r}"
        params[key.strip()] = value
    return params


def _importable_from(*folders: str) -> None:
    """Let ``call: module:attr`` find modules in the current folder and beside the flow
    file, as ``python -m`` would; worker processes inherit this ``sys.path``."""
    for folder in reversed(folders):
        if folder not in sys.path:
            sys.path.insert(0, folder)


def cmd_run(args: argparse.Namespace) -> int:
    if args.connect:
        given = [f for f, v in (("--loops", args.loops), ("--cpu-workers", args.cpu_workers))
                 if v is not None]
        if given:
            return _fail(f"{' and '.join(given)} with --connect: the cluster's nodes run the "
                         "jobs, with their own settings (asyncjobs node --loops N "
                         "--cpu-workers N)")
    elif args.loops is not None and args.loops < 1:
        return _fail(f"--loops must be at least 1, not {args.loops}")
    if args.cpu_workers is not None and args.cpu_workers < 1:
        return _fail(f"--cpu-workers must be at least 1, not {args.cpu_workers}")
    params = _params(args.param)
    if isinstance(params, str):
        return _fail(params)
    try:
        max_bytes = parse_size(args.max_file_size)
    except ValueError as exc:
        return _fail(f"--max-file-size: {exc}")
    _importable_from(os.getcwd(), os.path.dirname(os.path.abspath(args.file)))
    template_early = not args.dry_run and not args.connect and (args.loops or 1) == 1 \
        and _names_a_call(args.file)
    if template_early:
        _start_template_early()
    loops_early = not args.dry_run and not args.connect and (args.loops or 1) > 1
    if loops_early:
        # the loop processes boot (~100 ms of imports each) while this one imports,
        # loads the file and starts their coordinator; they read their settings then
        from .daemons.spawn import start_early

        # http steps need aiohttp (~100 ms): the loops import it while they wait
        start_early(args.loops, ("aiohttp",) if _mentions(args.file, b"http:") else ())
    if args.dry_run:
        from .flow.loader import load_flow
        from .flow.plan import describe_plan, plan_flow

        try:
            print(describe_plan(plan_flow(load_flow(args.file, params, max_bytes=max_bytes)),
                                os.environ))
        except FlowError as exc:
            return _fail(str(exc))
        return EXIT_OK
    from .api import run

    try:
        return run(lambda: _run_flow(args, params, max_bytes))
    finally:
        # what a run that ended before using it (bad input) did not adopt; imported
        # only then: the cpu pool's modules are ~8 ms that --loops N never needs
        if template_early:
            from .executors.template import discard_early

            discard_early()
        if loops_early:
            from .daemons import spawn

            spawn.discard_early()


def _start_template_early() -> None:
    """Start the cpu pool's template process, and send it its preparation data, before
    this one imports the loader and the event-loop half of the package and validates the
    file: the template's interpreter start and its import of the main module (~50 ms)
    then overlap ours, instead of following them."""
    from .executors.template import start_early, worker_env

    try:
        start_early(worker_env())
    except OSError:
        pass  # the pool starts its own, or falls back, and says so


def _names_a_call(path: str) -> bool:
    """Whether the flow file may have cpu jobs: it names a ``call`` (a guess made before
    the file is parsed; a wrong guess costs a process start, or the head start)."""
    return _mentions(path, b"call")


def _mentions(path: str, word: bytes) -> bool:
    """Whether ``word`` is in the first MiB of the file (a guess at what it needs)."""
    try:
        with open(path, "rb") as f:
            return word in f.read(1 << 20)
    except OSError:
        return False


#: gen-0 threshold while a flow runs (CPython's default is 700)
GC_GEN0_THRESHOLD = 10_000


def _tune_gc() -> None:
    """This process is the run's alone, so tune the cyclic GC for it (a library embedded
    in someone's app would not). What exists now (modules, classes, the plan) lives until
    exit: freeze it, so no full collection walks it again. And collect the youngest
    generation less often: a run makes many short-lived containers per job, and with
    the defaults the collector took ~15 % of the CPU on the HTTP benchmark. The young
    generations only are collected first: a full collection (~3 ms, before the first
    job starts) would find little, as imports make few cycles."""
    gc.collect(1)
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


async def _run_flow(args: argparse.Namespace, params: dict[str, str], max_bytes: int) -> int:
    import asyncio  # here, not at the top: --dry-run, --help and --version never need it
    import contextlib
    import signal

    from .api import JobsApi, Runner
    from .errors import ClusterConfigError, ConnectionFailed, SessionBusy
    from .flow.loader import load_flow
    from .flow.plan import plan_flow
    from .model import JobKind
    from .progress import Progress

    loop = asyncio.get_running_loop()
    plan: FlowPlan | None = None
    opener: contextlib.AbstractAsyncContextManager[JobsApi]
    if args.connect:
        from .client_cli import open_cluster, run_session

        try:  # bad input is told before the coordinator is asked anything
            plan = plan_flow(load_flow(args.file, params, max_bytes=max_bytes))
            # the same command run again (after this process was killed) re-attaches
            opener = open_cluster(args, session=run_session(args.file, params))
        except (FlowError, ClusterConfigError) as exc:
            return _fail(str(exc))
        except OSError as exc:
            return _fail(f"cannot read {args.file}: {exc.strerror or exc}")
    else:
        # The cpu pool's template process (a fresh interpreter) starts as the Runner
        # opens, so it boots on another core while this one validates the file; loop
        # processes take longer to start than the file to validate, so check it first.
        loops = args.loops or 1
        if loops > 1:
            try:
                plan = plan_flow(load_flow(args.file, params, max_bytes=max_bytes))
            except FlowError as exc:
                return _fail(str(exc))
        opener = Runner(cpu_workers=args.cpu_workers, loops=loops,
                        warm=loops == 1 and _names_a_call(args.file))
    async with contextlib.AsyncExitStack() as stack:
        try:
            runner = await stack.enter_async_context(opener)
        except SessionBusy as exc:
            return _fail(f"the flow {args.file} is already running from another client "
                         f"of the coordinator at {exc.address}")
        except ConnectionFailed as exc:  # no coordinator there (SPEC 4): one line
            return _fail(str(exc))
        try:
            if plan is None:
                plan = plan_flow(load_flow(args.file, params, max_bytes=max_bytes))
            # foreach sources (a lines file, a templated range) are checked here too,
            # before anything runs; records stream to --report as jobs end (a million
            # items are not held)
            flow = runner.open_flow(args.file, plan=plan, resume=args.resume,
                                    keep_records=False)
        except FlowError as exc:
            return _fail(str(exc))
        if isinstance(runner, Runner) and runner.loops == 1 and any(job.kind is JobKind.CPU
                                              for job in plan.spec.jobs.values()):
            from .executors.cpu import CpuPool

            pool = runner.engine.executors[JobKind.CPU]
            if isinstance(pool, CpuPool):
                # imported once in the template, not by each worker at its first job
                pool.preload(_cpu_modules(plan))
                pool.prestart()  # the workers fork now, while the run is set up
        if args.report:
            flow.report.stream_json(args.report)
        _tune_gc()
        task = asyncio.ensure_future(flow.run())
        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, task.cancel)
        progress = None if args.quiet else Progress(flow)
        if progress is not None:
            progress.start()
        try:
            await asyncio.wait([task])
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            if progress is not None:
                await progress.stop()
        interrupted = task.cancelled()
        if not interrupted:
            try:
                task.result()  # a bug in the run itself surfaces here
            except (RunInProgress, StateUnavailable) as exc:  # before anything ran
                flow.report.discard_json()
                return _fail(str(exc))
    report = flow.report
    report.close_json()
    if not args.quiet or not report.ok:
        for line in report.summary_lines():
            print(line, file=sys.stderr)
    code = EXIT_INTERRUPTED if interrupted else EXIT_OK if report.ok else EXIT_FAILED
    _leave_stuck_threads(code)
    return code


def _cpu_modules(plan: FlowPlan) -> list[str]:
    """The modules a worker imports to run the flow's cpu calls (a chunk's runner too)."""
    from .executors.chunk import run_chunk
    from .flow.spec import CallAction
    from .model import JobKind

    modules = {job.action.ref.partition(":")[0] for job in plan.spec.jobs.values()
               if job.kind is JobKind.CPU and isinstance(job.action, CallAction)}
    return sorted(modules | {run_chunk.__module__}) if modules else []


def _leave_stuck_threads(code: int) -> None:
    """Exit now if a thread job is still running (past its timeout, or cancelled):
    Python's exit would wait for its thread, forever if the call never returns, and
    nothing can stop a thread. Everything else is closed and written by now."""
    from .executors.thread import calls_in_threads

    left = calls_in_threads()
    if left:
        jobs = "a thread job was" if left == 1 else f"{left} thread jobs were"
        print(f"asyncjobs: {jobs} still running (Python cannot stop a thread); "
              "exiting without waiting for it", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        return cmd_run(args)
    if args.command == "coordinator":
        from .daemons.coordinator import main as coordinator_main

        return coordinator_main(args)
    if args.command == "node":
        from .daemons.node import main as node_main

        return node_main(args)
    if args.command == "status":
        from .client_cli import cmd_status

        return cmd_status(args)
    parser.print_help(sys.stderr)
    return EXIT_BAD_INPUT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
