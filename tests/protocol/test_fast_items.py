"""The fast paths of batch items never accept what the table refuses, and give the same
values when they accept."""

from __future__ import annotations

import itertools
import typing

import pytest

from asyncjobs.protocol import messages as m

NAN, INF = float("nan"), float("inf")
ODD = [None, 0, 1, -1, 2**64, True, 0.5, -0.5, NAN, INF, "", "io", "cpu", "gpu",
       "succeeded", "running", "m:f", "not a ref", [], [1], (), ("a",), ["a", 1], {}, {"k": 1},
       {1: 2}, ["KeyError", "k"]]

GOOD: dict[type, list[typing.Any]] = {
    m.JobSpec: ["j", "m:f", [1], None, "io", 1.0, 0, 1.0, [], 1],
    m.AttemptSpec: ["j", 1, "m:f", [1, 2], None, "cpu", None, 25],
    m.AttemptResult: ["j", 1, {"v": 1}, None, 0.25],
    m.JobOutcome: ["j", "succeeded", 3, None, 1, "n", 1.0, 2],
}


def _cases() -> typing.Iterator[tuple[type, list[typing.Any]]]:
    for cls, good in GOOD.items():
        yield cls, list(good)
        for i, odd in itertools.product(range(len(good)), ODD):
            wire = list(good)
            wire[i] = odd
            yield cls, wire
        yield cls, good[:-1]


@pytest.mark.parametrize(("cls", "wire"), list(_cases()))
def test_a_fast_path_agrees_with_the_table(cls: type, wire: list[typing.Any]) -> None:
    got = m._FAST[cls](wire)
    try:
        expected = m._load(cls, wire)
    except m._Bad:
        assert got is None
        return
    if got is not None:
        built = cls(*got)
        assert built == expected or repr(built) == repr(expected)  # NaN != NaN
        assert [type(v) for v in got] == [type(getattr(expected, f)) for f in
                                          m._SHAPES[cls].names]


def test_the_usual_items_take_the_fast_path() -> None:
    for cls, good in GOOD.items():
        assert m._FAST[cls](good) is not None
