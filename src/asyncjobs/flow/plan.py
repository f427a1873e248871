"""From a validated flow to a plan: the order jobs may run in, what each needs (named or
implied by ``{{ results.X }}``), and each ``foreach`` job's items, produced lazily."""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ..errors import FlowError
from .spec import CallAction, FlowSpec, HttpAction, JobDef, ShellAction
from .template import TemplateContext, TemplateError, references, render
from .yamlnodes import printable

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping


def item_id(job: str, index: int) -> str:
    """A foreach item's id in reports: ``create[17]``."""
    return f"{job}[{index}]"


@dataclass(frozen=True, slots=True)
class FlowPlan:
    spec: FlowSpec
    #: job names, each after every job it needs; level by level, file order within one
    order: tuple[str, ...]
    #: each job's needs, named and implied
    needs: dict[str, tuple[str, ...]]
    #: jobs whose results some template uses (only these results are kept)
    results_used: frozenset[str]
    #: jobs nothing needs and without foreach: their results end the summary
    finals: frozenset[str] = frozenset()
    #: level 0: the jobs needing nothing; level k: the jobs whose last need is in level
    #: k-1 (file order within a level); ``order`` is these, one after the other
    levels: tuple[tuple[str, ...], ...] = ()


def plan_flow(spec: FlowSpec) -> FlowPlan:
    """Order the jobs, in time linear in jobs plus needs (no recursion: a chain of
    thousands of jobs is fine).

    :raises FlowError: for a cycle in ``needs``, printed as ``a -> b -> a``
    """
    needs: dict[str, tuple[str, ...]] = {}
    used: set[str] = set()
    for job in spec.jobs.values():
        implied = [r.name for r in _refs(job) if r.root == "results"]
        used.update(implied)
        needs[job.name] = tuple(dict.fromkeys([*job.needs, *implied]))
    levels = _levels(spec, needs)
    order = tuple(name for level in levels for name in level)
    needed = {n for ns in needs.values() for n in ns}
    finals = frozenset(n for n, job in spec.jobs.items()
                       if n not in needed and job.foreach is None)
    return FlowPlan(spec, order, needs, frozenset(used), finals, levels)


def _refs(job: JobDef) -> list[Any]:
    values: list[Any] = [job.args, job.kwargs, job.env, job.cwd]
    if isinstance(job.action, ShellAction):
        values.append(job.action.command)
    elif isinstance(job.action, HttpAction):
        values += [job.action.url, job.action.json, job.action.data, job.action.headers]
    return [r for v in values for r in references(v)]


def _levels(spec: FlowSpec, needs: dict[str, tuple[str, ...]]) -> tuple[tuple[str, ...], ...]:
    """Kahn's algorithm, a level at a time: each job counts its unplaced needs down.

    :raises FlowError: for a need naming no job, or a cycle
    """
    needed_by: dict[str, list[str]] = {name: [] for name in spec.jobs}
    waiting: dict[str, int] = {}
    for name in spec.jobs:
        for need in needs[name]:
            if need not in needed_by:
                raise FlowError(f"job {name!r} needs unknown job {need!r}", path=spec.path,
                                line=spec.jobs[name].line, key=f"jobs.{name}.needs")
            needed_by[need].append(name)
        waiting[name] = len(needs[name])
    level_of: dict[str, int] = {}
    current = [name for name in spec.jobs if not waiting[name]]
    depth = 0
    while current:
        following = []
        for name in current:
            level_of[name] = depth
            for later in needed_by[name]:
                waiting[later] -= 1
                if not waiting[later]:
                    following.append(later)
        current = following
        depth += 1
    if len(level_of) < len(spec.jobs):
        raise _cycle(spec, needs, waiting)
    buckets: list[list[str]] = [[] for _ in range(depth)]
    for name in spec.jobs:  # file order within each level
        buckets[level_of[name]].append(name)
    return tuple(tuple(b) for b in buckets)


def _cycle(spec: FlowSpec, needs: dict[str, tuple[str, ...]],
           waiting: dict[str, int]) -> FlowError:
    """The cycle reached from the first job (in file order) that could not be placed.

    Every such job still waits for a need that could not be placed either, so following
    those needs from it must come back to a job already seen: that is the cycle.
    """
    name = next(n for n in spec.jobs if waiting[n])
    path: list[str] = []
    seen: dict[str, int] = {}
    while name not in seen:
        seen[name] = len(path)
        path.append(name)
        name = next(n for n in needs[name] if waiting[n])
    cycle = [*path[seen[name]:], name]
    first = spec.jobs[cycle[0]]
    return FlowError(f"the needs form a cycle: {' -> '.join(cycle)}", path=spec.path,
                     line=first.line, key=f"jobs.{cycle[0]}.needs")


def _ctx(spec: FlowSpec, env: Mapping[str, str]) -> TemplateContext:
    return TemplateContext(params=spec.params, env=env)


#: a line of a foreach lines file longer than this is an error, not a memory hog
MAX_LINE_BYTES = 2**20


def _error(job: JobDef, spec: FlowSpec, field: str, message: str) -> FlowError:
    return FlowError(message, path=spec.path, line=job.line,
                     key=f"jobs.{job.name}.foreach.{field}" if field else f"jobs.{job.name}")


def _range_args(job: JobDef, spec: FlowSpec, env: Mapping[str, str]) -> tuple[int, ...]:
    assert job.foreach is not None and job.foreach.range is not None
    try:
        bounds = [render(b, _ctx(spec, env)) for b in job.foreach.range]
        return tuple(int(b) for b in bounds)
    except (TemplateError, TypeError, ValueError, OverflowError) as exc:
        raise _error(job, spec, "range", f"foreach range must give whole numbers: "
                     f"{str(exc)[:200]}") from None


def _range(job: JobDef, spec: FlowSpec, env: Mapping[str, str]) -> range:
    try:
        return range(*_range_args(job, spec, env))
    except ValueError as exc:  # a step of 0
        raise _error(job, spec, "range", f"foreach range: {exc}") from None


def _range_len(job: JobDef, spec: FlowSpec, env: Mapping[str, str]) -> int:
    items = _range(job, spec, env)
    try:
        return len(items)
    except OverflowError:
        raise _error(job, spec, "range", f"foreach {items} has more than {sys.maxsize:,} "
                     "items") from None


def _lines_path(job: JobDef, spec: FlowSpec, env: Mapping[str, str]) -> Path:
    assert job.foreach is not None and job.foreach.lines is not None
    try:
        name = str(render(job.foreach.lines, _ctx(spec, env)))
    except TemplateError as exc:
        raise _error(job, spec, "lines", exc.message) from None
    return Path(spec.path).parent / name


def _unreadable(job: JobDef, spec: FlowSpec, path: Path, exc: OSError | ValueError) -> FlowError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return _error(job, spec, "lines", f"cannot read foreach lines file {str(path)!r}: {reason}")


def _check_lines(job: JobDef, spec: FlowSpec, env: Mapping[str, str]) -> Path:
    """The lines file can be opened for reading; nothing is read, and a FIFO without a
    writer yet does not block (``O_NONBLOCK``)."""
    path = _lines_path(job, spec, env)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        finally:
            os.close(fd)
    except (OSError, ValueError) as exc:
        raise _unreadable(job, spec, path, exc) from None
    return path


def iter_items(job: JobDef, spec: FlowSpec, env: Mapping[str, str]) -> Iterator[Any]:
    """A foreach job's items, produced one at a time: a range is never listed and a
    lines file is read a line at a time, as items are taken (it may never end).

    :raises FlowError: for a range that does not give numbers or a lines file that
        cannot be opened; while iterating, for a line of a lines file longer than
        ``MAX_LINE_BYTES``, not UTF-8, or a read that fails (naming the file and line)
    """
    fe = job.foreach
    if fe is None:
        return iter(())
    if fe.items is not None:
        try:
            return iter(render(fe.items, _ctx(spec, env)))
        except TemplateError as exc:
            raise _error(job, spec, "", exc.message) from None
    if fe.range is not None:
        return iter(_range(job, spec, env))
    path = _lines_path(job, spec, env)
    try:
        handle = path.open("rb")
    except (OSError, ValueError) as exc:
        raise _unreadable(job, spec, path, exc) from None
    return _read_lines(job, spec, path, handle)


def _read_lines(job: JobDef, spec: FlowSpec, path: Path, handle: BinaryIO,
                max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[str]:
    """The file's lines that are not blank, without their line ends."""
    with handle:
        number = 0
        while True:
            try:
                raw = handle.readline(max_line_bytes + 2)  # room for a \r\n line end
            except OSError as exc:
                raise _unreadable(job, spec, path, exc) from None
            if not raw:
                return
            number += 1
            raw = raw.removesuffix(b"\n").removesuffix(b"\r")
            if len(raw) > max_line_bytes:
                raise _error(job, spec, "lines", f"line {number} of foreach lines file "
                             f"{str(path)!r} is longer than {max_line_bytes:,} bytes")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _error(job, spec, "lines", f"line {number} of foreach lines file "
                             f"{str(path)!r} is not UTF-8 (byte 0x{raw[exc.start]:02x} at "
                             f"column {exc.start + 1})") from None
            if line.strip():
                yield line


def count_items(job: JobDef, spec: FlowSpec, env: Mapping[str, str]) -> int | None:
    """How many items a foreach job has (1 for a plain job), without listing a range or
    reading a lines file: for ``{lines: FILE}`` it checks that the file can be opened
    and returns None (unknown until read).

    :raises FlowError: for a range that does not give numbers (or more than
        ``sys.maxsize`` of them), or a lines file that cannot be opened
    """
    fe = job.foreach
    if fe is None:
        return 1
    if fe.items is not None:
        return len(fe.items)
    if fe.range is not None:
        return _range_len(job, spec, env)
    _check_lines(job, spec, env)
    return None


#: ``--dry-run`` counts (and shows) the lines of a lines file up to this size
DESCRIBE_LINES_BYTES = 2**20
#: a fan-out larger than this shows its first and last ``SHOWN_ENDS`` items only
SHOWN_ALL = 7
SHOWN_ENDS = 3
#: a rendered item or action longer than this is cut, with "…"
SHOWN_CHARS = 60


def _short(text: str, limit: int = SHOWN_CHARS) -> str:
    text = printable(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _show(value: Any) -> str:
    """An item as JSON (``"a"``, ``7``, ``{"id": 1}``), short and safe to print."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return _short(text)


def _action_text(job: JobDef) -> str:
    action = job.action
    if isinstance(action, CallAction):
        return _short(f"call {action.ref}")
    if isinstance(action, ShellAction):
        lines = action.command.strip().splitlines()
        return _short(f"shell {lines[0] if lines else ''}")
    return _short(f"http {action.method} {action.url}")


@dataclass(slots=True)
class _Items:
    """What ``--dry-run`` says about one job's items."""

    #: how many (None: unknown until read)
    count: int | None
    #: (index, value) of the items shown; an elision (None) between the two ends
    shown: list[tuple[int, Any] | None]
    #: where the items come from, when not the file itself
    source: str = ""


def _ends(count: int) -> list[int | None]:
    if count <= SHOWN_ALL:
        return list(range(count))
    return [*range(SHOWN_ENDS), None, *range(count - SHOWN_ENDS, count)]


def _describe_items(job: JobDef, spec: FlowSpec, env: Mapping[str, str]) -> _Items:
    fe = job.foreach
    if fe is None:
        return _Items(1, [])
    if fe.range is not None:
        items = _range(job, spec, env)
        count = _range_len(job, spec, env)
        return _Items(count, [None if i is None else (i, items[i]) for i in _ends(count)])
    if fe.items is not None:
        ctx = _ctx(spec, env)
        values = fe.items
        try:
            shown = [None if i is None else (i, render(values[i], ctx))
                     for i in _ends(len(values))]
        except TemplateError as exc:
            raise _error(job, spec, "", exc.message) from None
        return _Items(len(values), shown)
    path = _check_lines(job, spec, env)
    source = f"lines of {printable(str(path))}"
    try:
        info = path.stat()
    except (OSError, ValueError):
        return _Items(None, [], source)
    if not stat.S_ISREG(info.st_mode) or info.st_size > DESCRIBE_LINES_BYTES:
        return _Items(None, [], source)
    try:
        handle = path.open("rb")
    except (OSError, ValueError) as exc:
        raise _unreadable(job, spec, path, exc) from None
    lines = list(_read_lines(job, spec, path, handle))
    return _Items(len(lines), [None if i is None else (i, lines[i])
                               for i in _ends(len(lines))], source)


def describe_plan(plan: FlowPlan, env: Mapping[str, str]) -> str:
    """The ``--dry-run`` text (SPEC §4: the jobs after expansion, their order, the limits).

    Jobs are listed by dependency level (level 0 needs nothing; level k runs after level
    k-1), in file order within a level, each with its kind, number of items, action,
    needs, limit and retry settings; a ``foreach`` job's items follow, each with its
    value, the first and last few only for a large fan-out. A lines file's items are
    counted when it is a small file, else shown as unknown until read. Then the limits,
    with the jobs using each, and the params.

    :raises FlowError: for a foreach source that cannot give its items (as ``count_items``)
    """
    spec = plan.spec
    levels = plan.levels or (plan.order,)
    described = {name: _describe_items(spec.jobs[name], spec, env) for name in plan.order}
    sizes = {name: "x?" if d.count is None else f"x{d.count:,}" for name, d in described.items()}
    name_width = min(30, max((len(n) for n in plan.order), default=0))
    size_width = max((len(s) for s in sizes.values()), default=0)
    body: list[str] = []
    for depth, level in enumerate(levels):
        body.append(f"level {depth} (needs nothing):" if depth == 0
                    else f"level {depth} (after level {depth - 1}):")
        for name in level:
            job, items = spec.jobs[name], described[name]
            parts = [f"{name:<{name_width}}", f"{job.kind.value:<6}",
                     f"{sizes[name]:<{size_width}}", _action_text(job)]
            if plan.needs[name]:
                parts.append(f"needs: {', '.join(plan.needs[name])}")
            if job.limit:
                parts.append(f"limit: {job.limit}")
            if job.retries:
                parts.append(f"retries: {job.retries}")
            if job.timeout_s is not None:
                parts.append(f"timeout: {job.timeout_s:g}s")
            body.append("  " + "  ".join(parts))
            if items.source:
                unknown = ": unknown until read" if items.count is None else ""
                body.append(f"    ({items.source}{unknown})")
            for shown in items.shown:
                if shown is None:
                    assert items.count is not None
                    hidden = items.count - 2 * SHOWN_ENDS
                    body.append(f"    … ({hidden:,} more; {items.count:,} items)")
                else:
                    body.append(f"    {item_id(name, shown[0])}  {_show(shown[1])}")
    total = sum(d.count or 0 for d in described.values())
    unread = sum(d.count is None for d in described.values())
    head = f"flow {_short(spec.name)} ({printable(spec.path)}): {len(plan.order):,} jobs, " \
           f"{total:,} runs"
    if unread:
        head += f" + the lines of {unread} file{'s' if unread > 1 else ''} (unknown until read)"
    out = [head, *body]
    if spec.limits:
        out.append("limits:")
        for lname, lim in spec.limits.items():
            bits = []
            if lim.concurrency is not None:
                bits.append(f"concurrency {lim.concurrency}")
            if lim.rate_per_s is not None:
                bits.append(f"rate {lim.rate_per_s:g}/s")
            users = [n for n in plan.order if spec.jobs[n].limit == lname]
            used = f"used by {', '.join(users)}" if users else "used by no job"
            out.append(f"  {lname}: {', '.join(bits)}; {used}")
    if spec.params:
        out.append("params: " + ", ".join(f"{k}={_short(repr(v))}"
                                           for k, v in spec.params.items()))
    return "\n".join(out)


__all__ = ["FlowPlan", "count_items", "describe_plan", "item_id", "iter_items", "plan_flow"]
