"""The item codec: one item packed on its own, as inside a message, for the coordinator's
state store; what comes back equals what a message's peer would get."""

from __future__ import annotations

from typing import Any

import pytest

from asyncjobs.model import JobStatus
from asyncjobs.protocol import (
    AttemptResult,
    FlowStatus,
    JobOutcome,
    LocalProtocolError,
    Outcome,
    Role,
    UnencodableValue,
)
from asyncjobs.protocol.messages import decode, decode_item, encode, encode_item, encode_items

from .samples import BOOM

OUTCOMES = [
    JobOutcome("a", JobStatus.SUCCEEDED, 3141, None, 1, "node-a", 1.7e9, 1.7e9 + 0.25),
    JobOutcome("b", JobStatus.FAILED, None, BOOM, 3, "node-b", 1.0, 2.0),
    JobOutcome("c", JobStatus.SKIPPED),
    JobOutcome("d\x00é ' \"", JobStatus.SUCCEEDED,
               {"l": [1, [2.5, None]], 7: b"\x00\xff", "t": (1, 2), "f": -0.0}, None, 2, ""),
]


def _as_received(item: JobOutcome) -> JobOutcome:
    """``item`` as the client gets it inside an ``Outcome`` message."""
    msg = decode(encode(Outcome((item,))), Role.COORDINATOR, Role.CLIENT)
    assert isinstance(msg, Outcome)
    return msg.jobs[0]


@pytest.mark.parametrize("item", OUTCOMES, ids=lambda o: repr(o.job_id))
def test_an_outcome_comes_back_as_a_message_would_bring_it(item: JobOutcome) -> None:
    back = decode_item(JobOutcome, encode_item(item))
    assert back == _as_received(item)
    assert type(back.status) is JobStatus


def test_tuples_come_back_as_lists_as_on_the_wire() -> None:
    back = decode_item(JobOutcome, encode_item(OUTCOMES[3]))
    assert back.value["t"] == [1, 2] and back.value[7] == b"\x00\xff"


def test_encode_items_equals_encode_item_one_by_one() -> None:
    assert encode_items(OUTCOMES) == [encode_item(o) for o in OUTCOMES]
    flow = FlowStatus("f", "jobs.yaml", "running", 1, 2)
    assert decode_item(FlowStatus, encode_item(flow)) == flow


def test_mixed_classes_are_refused() -> None:
    mixed: list[Any] = [OUTCOMES[0], AttemptResult("a", 1)]
    with pytest.raises(LocalProtocolError, match="one class"):
        encode_items(mixed)


def test_a_value_msgpack_cannot_carry_names_its_job() -> None:
    with pytest.raises(UnencodableValue, match="job x: its value") as info:
        encode_item(JobOutcome("x", JobStatus.SUCCEEDED, object()))
    assert info.value.job_id == "x"


@pytest.mark.parametrize("data", [b"\xc1", b"\x93\x01\x02\x03", b"\x98" + b"\xc0" * 8])
def test_damaged_bytes_are_refused_naming_the_class(data: bytes) -> None:
    with pytest.raises(LocalProtocolError, match="JobOutcome"):
        decode_item(JobOutcome, data)
