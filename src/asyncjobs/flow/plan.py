"""From a validated flow to a plan: the order jobs may run in, what each needs (named or
implied by ``{{ results.X }}``), and each ``foreach`` job's items, produced lazily."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import FlowError
from .spec import CallAction, FlowSpec, HttpAction, JobDef, ShellAction
from .template import TemplateContext, TemplateError, references, render

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping


def item_id(job: str, index: int) -> str:
    """A foreach item's id in reports: ``create[17]``."""
    return f"{job}[{index}]"


@dataclass(frozen=True, slots=True)
class FlowPlan:
    spec: FlowSpec
    #: job names, each after every job it needs; file order among equals
    order: tuple[str, ...]
    #: each job's needs, named and implied
    needs: dict[str, tuple[str, ...]]
    #: jobs whose results some template uses (only these results are kept)
    results_used: frozenset[str]
    #: jobs nothing needs and without foreach: their results end the summary
    finals: frozenset[str] = frozenset()


def plan_flow(spec: FlowSpec) -> FlowPlan:
    """Order the jobs.

    :raises FlowError: for a cycle in ``needs``, printed as ``a -> b -> a``
    """
    needs: dict[str, tuple[str, ...]] = {}
    used: set[str] = set()
    for job in spec.jobs.values():
        implied = [r.name for r in _refs(job) if r.root == "results"]
        used.update(implied)
        needs[job.name] = tuple(dict.fromkeys([*job.needs, *implied]))
    _check_cycles(spec, needs)
    order: list[str] = []
    placed: set[str] = set()
    remaining = list(spec.jobs)
    while remaining:
        ready = [j for j in remaining if all(n in placed for n in needs[j])]
        order.extend(ready)
        placed.update(ready)
        remaining = [j for j in remaining if j not in placed]
    needed = {n for ns in needs.values() for n in ns}
    finals = frozenset(n for n, job in spec.jobs.items()
                       if n not in needed and job.foreach is None)
    return FlowPlan(spec, tuple(order), needs, frozenset(used), finals)


def _refs(job: JobDef) -> list[Any]:
    values: list[Any] = [job.args, job.kwargs, job.env, job.cwd]
    if isinstance(job.action, ShellAction):
        values.append(job.action.command)
    elif isinstance(job.action, HttpAction):
        values += [job.action.url, job.action.json, job.action.data, job.action.headers]
    return [r for v in values for r in references(v)]


def _check_cycles(spec: FlowSpec, needs: dict[str, tuple[str, ...]]) -> None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for need in needs[name]:
            if state.get(need) == 1:
                cycle = path[path.index(need):] + [need]
                first = spec.jobs[cycle[0]]
                raise FlowError(
                    f"the needs form a cycle: {' -> '.join(cycle)}", path=spec.path,
                    line=first.line, key=f"jobs.{cycle[0]}.needs",
                )
            if need not in state:
                visit(need)
        path.pop()
        state[name] = 2

    for name in spec.jobs:
        if name not in state:
            visit(name)


def _ctx(spec: FlowSpec, env: Mapping[str, str]) -> TemplateContext:
    return TemplateContext(params=spec.params, env=env)


def _range_args(job: JobDef, spec: FlowSpec, env: Mapping[str, str]) -> tuple[int, ...]:
    assert job.foreach is not None and job.foreach.range is not None
    try:
        bounds = [render(b, _ctx(spec, env)) for b in job.foreach.range]
        return tuple(int(b) for b in bounds)
    except (TemplateError, TypeError, ValueError) as exc:
        raise FlowError(f"foreach range must give whole numbers: {exc}", path=spec.path,
                        line=job.line, key=f"jobs.{job.name}.foreach.range") from None


def _lines_path(job: JobDef, spec: FlowSpec, env: Mapping[str, str]) -> Path:
    assert job.foreach is not None and job.foreach.lines is not None
    name = str(render(job.foreach.lines, _ctx(spec, env)))
    return Path(spec.path).parent / name


def iter_items(job: JobDef, spec: FlowSpec, env: Mapping[str, str]) -> Iterator[Any]:
    """A foreach job's items, produced one at a time (a range of a million is no list).

    :raises FlowError: for a range that does not give numbers or a lines file that
        cannot be read
    """
    fe = job.foreach
    if fe is None:
        return iter(())
    if fe.items is not None:
        return iter(render(fe.items, _ctx(spec, env)))
    if fe.range is not None:
        return iter(range(*_range_args(job, spec, env)))
    path = _lines_path(job, spec, env)
    try:
        handle = path.open()
    except OSError as exc:
        raise FlowError(f"cannot read foreach lines file {str(path)!r}: {exc.strerror}",
                        path=spec.path, line=job.line,
                        key=f"jobs.{job.name}.foreach.lines") from None

    def lines() -> Iterator[str]:
        with handle:
            for line in handle:
                if line.strip():
                    yield line.rstrip("\n")

    return lines()


def count_items(job: JobDef, spec: FlowSpec, env: Mapping[str, str]) -> int:
    """How many items a foreach job has (1 for a plain job), without listing a range."""
    fe = job.foreach
    if fe is None:
        return 1
    if fe.items is not None:
        return len(fe.items)
    if fe.range is not None:
        return len(range(*_range_args(job, spec, env)))
    return sum(1 for _ in iter_items(job, spec, env))


def _action_text(job: JobDef) -> str:
    action = job.action
    if isinstance(action, CallAction):
        return f"call {action.ref}"
    if isinstance(action, ShellAction):
        first = action.command.strip().splitlines()[0]
        return f"shell {first[:60]}"
    return f"http {action.method} {action.url}"


def describe_plan(plan: FlowPlan, env: Mapping[str, str]) -> str:
    """The ``--dry-run`` text: jobs in order with kind, size, action, needs and limit."""
    spec = plan.spec
    rows = []
    total = 0
    for name in plan.order:
        job = spec.jobs[name]
        n = count_items(job, spec, env)
        total += n
        parts = [f"{name:<20}", f"{job.kind.value:<6}", f"x{n:<7}", _action_text(job)]
        if plan.needs[name]:
            parts.append(f"needs: {', '.join(plan.needs[name])}")
        if job.limit:
            parts.append(f"limit: {job.limit}")
        if job.retries:
            parts.append(f"retries: {job.retries}")
        if job.timeout_s is not None:
            parts.append(f"timeout: {job.timeout_s:g}s")
        rows.append("  " + "  ".join(parts))
    out = [f"flow {spec.name} ({spec.path}): {len(plan.order)} jobs, {total} runs", *rows]
    if spec.limits:
        out.append("limits:")
        for lname, lim in spec.limits.items():
            bits = []
            if lim.concurrency is not None:
                bits.append(f"concurrency {lim.concurrency}")
            if lim.rate_per_s is not None:
                bits.append(f"rate {lim.rate_per_s:g}/s")
            out.append(f"  {lname}: {', '.join(bits)}")
    if spec.params:
        out.append("params: " + ", ".join(f"{k}={v!r}" for k, v in spec.params.items()))
    return "\n".join(out)


__all__ = ["FlowPlan", "count_items", "describe_plan", "item_id", "iter_items", "plan_flow"]
