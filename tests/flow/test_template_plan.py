"""Templates (looked up, never evaluated) and plans (order, implied needs, lazy items)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from asyncjobs.errors import FlowError
from asyncjobs.flow.loader import load_flow
from asyncjobs.flow.plan import count_items, item_id, iter_items, plan_flow
from asyncjobs.flow.template import TemplateContext, TemplateError, references, render

from ..conftest import write_flow

if TYPE_CHECKING:
    from pathlib import Path

CTX = TemplateContext(
    params={"count": 3, "name": "x"}, env={"HOME": "/home/u"},
    results={"setup": {"exit_code": 0, "stdout": "ok"}, "sim": [1, 2, 3]},
    item={"id": 7, "tags": ["a", "b"]},
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("{{ params.count }}", 3),
        ("  {{params.count}} ", 3),
        ("n={{ params.count }}", "n=3"),
        ("{{ item }}", {"id": 7, "tags": ["a", "b"]}),
        ("{{ item.id }}", 7),
        ("{{ item.tags.1 }}", "b"),
        ("id-{{ item.id }}-{{ params.name }}", "id-7-x"),
        ("{{ env.HOME }}/out", "/home/u/out"),
        ("{{ results.sim }}", [1, 2, 3]),
        ("all: {{ results.sim }}", "all: [1, 2, 3]"),
        ("{{ results.setup.stdout }}", "ok"),
        ({"n": ["{{ params.count }}", "{{ item.id }}"]}, {"n": [3, 7]}),
        ("no templates", "no templates"),
    ],
)
def test_render_keeps_type_only_for_a_whole_template(value: object, expected: object) -> None:
    assert render(value, CTX) == expected


@pytest.mark.parametrize("value", ["{{ env.NOPE }}", "{{ item.nope }}", "{{ results.x }}"])
def test_render_names_what_is_missing(value: str) -> None:
    with pytest.raises(TemplateError, match="is not there"):
        render(value, CTX)


def test_item_outside_foreach_is_an_error() -> None:
    with pytest.raises(TemplateError, match="no item"):
        render("{{ item }}", TemplateContext())


@pytest.mark.parametrize("expr", ["{{ 1 + 1 }}", "{{ params['x'] }}", "{{ os.system }}",
                                  "{{ params }}", "{{ item.__class__ x }}"])
def test_anything_but_a_dotted_name_is_refused(expr: str) -> None:
    with pytest.raises(ValueError, match="dotted name|needs a name"):
        references(expr)


def test_order_follows_needs_and_results_imply_needs(tmp_path: Path) -> None:
    spec = load_flow(write_flow(tmp_path, """
        jobs:
          total:
            call: tests.flow.calls:total
            args: ["{{ results.sim }}"]
          sim:
            call: tests.flow.calls:add
            needs: [setup]
            foreach: [[1, 2], [3, 4]]
            args: ["{{ item.0 }}", "{{ item.1 }}"]
          setup: {shell: "true"}
          other: {shell: "true"}
    """))
    plan = plan_flow(spec)
    assert plan.order == ("setup", "other", "sim", "total")
    assert plan.needs["total"] == ("sim",) and plan.results_used == {"sim"}


def test_foreach_forms(tmp_path: Path) -> None:
    (tmp_path / "ids.txt").write_text("a\n\nb\nc\n")
    spec = load_flow(write_flow(tmp_path, """
        params: {n: 4}
        jobs:
          listed: {shell: "echo {{ item }}", foreach: [x, y]}
          ranged: {shell: "echo {{ item }}", foreach: {range: "{{ params.n }}"}}
          spans: {shell: "echo {{ item }}", foreach: {range: [2, 10, 3]}}
          lines: {shell: "echo {{ item }}", foreach: {lines: ids.txt}}
    """))
    items = {name: list(iter_items(job, spec, {})) for name, job in spec.jobs.items()}
    assert items == {"listed": ["x", "y"], "ranged": [0, 1, 2, 3], "spans": [2, 5, 8],
                     "lines": ["a", "b", "c"]}
    assert [count_items(j, spec, {}) for j in spec.jobs.values()] == [2, 4, 3, None]
    assert item_id("ranged", 3) == "ranged[3]"


def test_a_million_items_are_never_listed(tmp_path: Path) -> None:
    spec = load_flow(write_flow(tmp_path, """
        jobs:
          big: {shell: "true", foreach: {range: 1000000}}
    """))
    job = spec.jobs["big"]
    items = iter_items(job, spec, {})
    assert isinstance(items, Iterator) and next(items) == 0
    assert count_items(job, spec, {}) == 1_000_000


def test_bad_range_and_missing_lines_file(tmp_path: Path) -> None:
    spec = load_flow(write_flow(tmp_path, """
        params: {n: lots}
        jobs:
          a: {shell: "true", foreach: {range: "{{ params.n }}"}}
          b: {shell: "true", foreach: {lines: nope.txt}}
    """))
    with pytest.raises(FlowError, match="whole numbers") as info:
        count_items(spec.jobs["a"], spec, {})
    assert info.value.line == 3 and info.value.key == "jobs.a.foreach.range"
    with pytest.raises(FlowError, match="cannot read foreach lines file"):
        list(iter_items(spec.jobs["b"], spec, {}))


@pytest.mark.parametrize(
    "value",
    ["{{ params.count }}", "n={{ params.count }}-{{ item.id }}", "plain",
     {"n": ["{{ params.count }}", "{{ item.tags }}", 5], "k": "v"}, ["a", {"b": 1}], 7, None],
)
def test_compiled_templates_render_like_render(value: object) -> None:
    from asyncjobs.flow.template import compile_template

    assert compile_template(value)(CTX) == render(value, CTX)
