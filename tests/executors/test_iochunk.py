"""Io chunks: several io calls as one attempt (``run_io_chunk``), and how many go in one
(``core.chunking.io_chunk_size``)."""

from __future__ import annotations

import asyncio

import pytest

from asyncjobs.core.chunking import MAX_IO_CHUNK, io_chunk_size
from asyncjobs.executors.base import Call
from asyncjobs.executors.iochunk import run_io_chunk
from asyncjobs.model import ErrorInfo


class Gauge:
    """Counts the calls running at once."""

    def __init__(self) -> None:
        self.now = self.most = 0

    async def call(self, value: int, seconds: float = 0.02) -> int:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.now -= 1
        if value < 0:
            raise ValueError(f"bad value {value}")
        return value * 10


async def test_calls_run_at_once_and_each_keeps_its_own_outcome() -> None:
    gauge = Gauge()
    calls = [Call(gauge.call, (i,), {}, None) for i in (1, -2, 3)]
    outcomes, elapsed = await run_io_chunk(calls, 3)
    assert gauge.most == 3
    assert [(ok, value) for ok, value, _, _ in outcomes[::2]] == [(True, 10), (True, 30)]
    ok, error, began, took = outcomes[1]
    info = ErrorInfo.from_wire(error)
    assert not ok and (info.type_name, info.message) == ("ValueError", "bad value -2")
    assert 0 <= began < 0.01 and 0.015 < took <= elapsed < 1.0


async def test_no_more_than_at_once_run_together() -> None:
    gauge = Gauge()
    outcomes, _ = await run_io_chunk([Call(gauge.call, (i, 0.01), {}, None) for i in range(7)], 2)
    assert gauge.most == 2
    assert [value for _, value, _, _ in outcomes] == [i * 10 for i in range(7)]
    assert outcomes[6][2] >= 0.025  # the 7th began once three pairs had ended


async def test_a_call_past_its_timeout_fails_alone_as_a_timeout() -> None:
    gauge = Gauge()
    calls = [Call(gauge.call, (1, 0.01), {}, 0.5), Call(gauge.call, (2, 5.0), {}, 0.05)]
    outcomes, elapsed = await run_io_chunk(calls, 2)
    assert outcomes[0][:2] == (True, 10)
    info = ErrorInfo.from_wire(outcomes[1][1])
    assert not outcomes[1][0] and info.timed_out and "timeout of 0.05s" in info.message
    assert elapsed < 1.0


async def test_a_plain_function_runs_as_an_io_call() -> None:
    outcomes, _ = await run_io_chunk([Call(divmod, (7, 2), {}, None),
                                      Call(divmod, (1, 0), {}, None)], 2)
    assert outcomes[0][:2] == (True, (3, 1))
    assert ErrorInfo.from_wire(outcomes[1][1]).type_name == "ZeroDivisionError"


@pytest.mark.parametrize(("most", "loops", "slots", "total", "size"), [
    (100, 2, 2048, 10_000, 25),   # 2 chunks per loop within the limit
    (None, 2, 2048, 10_000, MAX_IO_CHUNK),
    (100, 2, 2048, 8, 2),         # 8 calls still spread over both loops
    (100, 2, 2048, 3, 1),
    (100, 1, 2, 10_000, 1),       # a loop of 2 slots: no chunks
    (100, 0, None, 10_000, 1),    # no loops known: no chunks
    (7, 1, None, None, 3),
    (1, 1, None, None, 1),
])
def test_chunk_sizes(most: int | None, loops: int, slots: int | None, total: int | None,
                     size: int) -> None:
    assert io_chunk_size(most, loops, slots, total) == size
