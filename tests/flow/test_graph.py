"""Plans of large graphs: ordering and cycle detection are iterative and linear."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from asyncjobs.errors import FlowError
from asyncjobs.flow.loader import load_flow
from asyncjobs.flow.plan import plan_flow

from ..conftest import write_flow

if TYPE_CHECKING:
    from pathlib import Path

N = 5_000


def chain(n: int, *, reverse: bool) -> str:
    """``j0 <- j1 <- … `` (forward: each job needs the one above it) or, reversed, each
    job needs the one declared after it."""
    lines = ["jobs:"]
    for i in range(n):
        need = i + 1 if reverse else i - 1
        needs = f", needs: [j{need}]" if 0 <= need < n else ""
        lines.append(f"  j{i}: {{shell: 'true'{needs}}}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("reverse", [False, True], ids=["declared-in-order", "reversed"])
def test_a_long_chain_is_planned_without_recursion(tmp_path: Path, reverse: bool) -> None:
    spec = load_flow(write_flow(tmp_path, chain(N, reverse=reverse)))
    started = time.perf_counter()
    plan = plan_flow(spec)
    elapsed = time.perf_counter() - started
    expected = [f"j{i}" for i in range(N)]
    assert list(plan.order) == (expected[::-1] if reverse else expected)
    assert len(plan.levels) == N and all(len(level) == 1 for level in plan.levels)
    assert elapsed < 5, f"{elapsed:.1f}s"  # loose: linear work is milliseconds


@pytest.mark.parametrize("reverse", [False, True], ids=["declared-in-order", "reversed"])
def test_a_long_cycle_is_reported_without_recursion(tmp_path: Path, reverse: bool) -> None:
    text = chain(N, reverse=reverse)
    last = f"j{N - 1}" if reverse else "j0"
    other = "j0" if reverse else f"j{N - 1}"
    text = text.replace(f"  {last}: {{shell: 'true'}}", f"  {last}: {{shell: 'true', "
                        f"needs: [{other}]}}")
    started = time.perf_counter()
    with pytest.raises(FlowError, match="the needs form a cycle") as info:
        plan_flow(load_flow(write_flow(tmp_path, text)))
    assert time.perf_counter() - started < 10
    cycle = info.value.message.split(": ", 1)[1].split(" -> ")
    assert len(cycle) == N + 1 and cycle[0] == cycle[-1] == "j0"
    assert info.value.key == "jobs.j0.needs" and info.value.line == 2


def test_the_cycle_is_the_one_reached_from_the_first_job(tmp_path: Path) -> None:
    spec = load_flow(write_flow(tmp_path, """
        jobs:
          c: {shell: x, needs: [a]}
          ok: {shell: x}
          a: {shell: x, needs: [ok, b]}
          b: {shell: x, needs: [a]}
    """))
    with pytest.raises(FlowError, match=r"cycle: a -> b -> a$") as info:
        plan_flow(spec)
    assert (info.value.line, info.value.key) == (4, "jobs.a.needs")


def test_levels_group_jobs_by_their_last_need(tmp_path: Path) -> None:
    spec = load_flow(write_flow(tmp_path, """
        jobs:
          report: {shell: x, needs: [b, a]}
          b: {shell: x, needs: [a]}
          a: {shell: x}
          c: {shell: x}
          d: {shell: x, needs: [c]}
    """))
    plan = plan_flow(spec)
    assert plan.levels == (("a", "c"), ("b", "d"), ("report",))
    assert plan.order == ("a", "c", "b", "d", "report")
