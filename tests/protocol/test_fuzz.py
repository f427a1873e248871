"""Property tests: random bytes raise only the protocol's own error, never hang, never make
a connection hold more than one frame's worth; random messages round-trip."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgpack
import pytest

hypothesis = pytest.importorskip("hypothesis")  # not yet in the "test" extra of pyproject

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from asyncjobs.core.policy import LimitSpec  # noqa: E402
from asyncjobs.model import ErrorInfo, JobKind, JobStatus  # noqa: E402
from asyncjobs.protocol import (  # noqa: E402
    NEED_DATA,
    AttemptRef,
    AttemptResult,
    AttemptSpec,
    Connection,
    Goodbye,
    JobOutcome,
    JobSpec,
    LocalProtocolError,
    NodeInfo,
    RemoteProtocolError,
    Role,
    State,
)
from asyncjobs.protocol import messages as m  # noqa: E402
from asyncjobs.protocol.framing import PREFIX  # noqa: E402

from .helpers import SECRET, ConnectionPair, nonce  # noqa: E402
from .samples import SAMPLES  # noqa: E402

if TYPE_CHECKING:
    from asyncjobs.protocol import Event, Message

LIMIT = 4096
FUZZ = settings(max_examples=150, deadline=None, database=None)


def _feed(conn: Connection, data: bytes, cuts: list[int]) -> list[Event]:
    """Feed ``data`` cut at ``cuts``; events until the first error (which must be ours).
    Every event takes a whole frame (at least 4 bytes), so a loop that returns more
    events than that is a hang in the making."""
    events: list[Event] = []
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    for start, end in zip(bounds, bounds[1:], strict=False):
        conn.receive_data(data[start:end])
        try:
            for _ in range(end // PREFIX.size + 2):
                event = conn.next_event()
                if event is NEED_DATA:
                    break
                events.append(event)
            else:
                pytest.fail("next_event kept returning events")
        except RemoteProtocolError:
            assert conn.state is State.ERROR and conn.buffered_bytes == 0
            return events
        assert conn.buffered_bytes <= LIMIT + PREFIX.size
    return events


def _fresh(role: Role = Role.COORDINATOR, n: int = 1) -> Connection:
    return Connection(role=role, secret=SECRET, our_nonce=nonce(n), max_frame_bytes=LIMIT)


@FUZZ
@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=20))
def test_random_bytes_at_a_fresh_connection(data: bytes, cuts: list[int]) -> None:
    _feed(_fresh(), data, cuts)


@FUZZ
@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=20),
       st.sampled_from([Role.NODE, Role.CLIENT]))
def test_random_bytes_after_a_valid_hello(data: bytes, cuts: list[int], role: Role) -> None:
    hello = _fresh(role, 2).data_to_send()
    assert _feed(_fresh(), hello + data, cuts) == []  # never past the proof


@FUZZ
@given(st.integers(0, 2**32 - 1), st.binary(max_size=100))
def test_any_length_prefix_on_an_open_connection(size: int, rest: bytes) -> None:
    pair = ConnectionPair.open(Role.NODE, max_frame_bytes=(LIMIT, LIMIT))
    assert _feed(pair.coordinator, PREFIX.pack(size) + rest, []) == []


# -- a valid transcript, damaged ------------------------------------------------------------


def _transcript() -> tuple[bytes, list[Event]]:
    """A node's side of a session with nonces 1 and 2, and what the coordinator read."""
    pair = ConnectionPair(Role.NODE, max_frame_bytes=(LIMIT, LIMIT))
    pair.exchange()
    msgs = [msg for sender, _, msg in SAMPLES if sender is Role.NODE]
    for msg in msgs:
        pair.send(pair.peer, msg)
    assert not pair.errors
    return bytes(pair.sent[pair.peer]), pair.events[pair.coordinator]


@FUZZ
@given(st.data())
def test_a_damaged_transcript_gives_a_prefix_of_its_events_then_our_error(data: Any) -> None:
    stream, events = _transcript()
    damaged = bytearray(stream)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(damaged) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip":
            damaged[at] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del damaged[at:at + data.draw(st.integers(1, 8))]
        else:
            damaged[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    cuts = data.draw(st.lists(st.integers(0, len(damaged)), max_size=10))
    got = _feed(_fresh(Role.COORDINATOR, 1), bytes(damaged), cuts)
    assert got == events[:len(got)]


def test_the_undamaged_transcript_replays_to_an_identical_coordinator() -> None:
    stream, events = _transcript()
    assert _feed(_fresh(Role.COORDINATOR, 1), stream, [7, 50, 99]) == events


# -- the message decoder on its own ----------------------------------------------------------

_DIRECTIONS = [(Role.NODE, Role.COORDINATOR), (Role.COORDINATOR, Role.NODE),
               (Role.CLIENT, Role.COORDINATOR), (Role.COORDINATOR, Role.CLIENT)]
_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
            | st.floats(allow_nan=False) | st.text(max_size=12) | st.binary(max_size=12))
values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=10)
_any_msgpack = st.recursive(
    _scalars | st.sampled_from(["io", "cpu", "failed", "m:f", "a.b:c"]),
    lambda inner: st.lists(inner, max_size=9)
    | st.dictionaries(st.text(max_size=6) | st.integers(0, 3), inner, max_size=3),
    max_leaves=25)


@FUZZ
@given(st.binary(max_size=500), st.sampled_from(_DIRECTIONS))
def test_random_payloads_raise_only_our_error(payload: bytes,
                                              direction: tuple[Role, Role]) -> None:
    try:
        m.decode(payload, *direction)
    except LocalProtocolError:
        pass


@FUZZ
@given(st.integers(0, 15), st.lists(_any_msgpack, max_size=9), st.sampled_from(_DIRECTIONS))
def test_message_shaped_values_raise_only_our_error(tag: int, fields: list[Any],
                                                    direction: tuple[Role, Role]) -> None:
    try:
        msg = m.decode(msgpack.packb([tag, *fields]), *direction)
    except LocalProtocolError:
        return
    assert m.decode(m.encode(msg), *direction) == msg  # what passes the checks re-encodes


# -- random messages round-trip ------------------------------------------------------------

ids = st.text(max_size=12)
counts = st.integers(0, 2**40)
seconds = st.floats(0, 1e9, allow_nan=False)
_name = r"[A-Za-z_][A-Za-z0-9_]{0,6}"  # ASCII: \w would take "²", which is no identifier
targets = st.from_regex(rf"{_name}(\.{_name}){{0,2}}:{_name}", fullmatch=True)
args = st.lists(values, max_size=3).map(tuple)
kwargs = st.none() | st.dictionaries(st.text(max_size=6), values, max_size=3)
kinds = st.none() | st.sampled_from(JobKind)
errors = st.builds(ErrorInfo, ids, ids, st.text(max_size=30), st.booleans(), st.booleans(),
                   st.none() | seconds, ids)
texts = st.lists(ids, max_size=3).map(tuple)


def batch(item: Any) -> Any:
    return st.lists(item, max_size=4).map(tuple)


flow_status = st.builds(m.FlowStatus, ids, ids, ids, counts, counts)
STRATEGIES: dict[type, Any] = {
    m.Register: st.builds(m.Register, ids, counts, counts,
                          st.dictionaries(st.sampled_from(JobKind), counts)),
    m.Heartbeat: st.builds(m.Heartbeat, counts),
    m.Submit: st.builds(m.Submit, batch(st.builds(
        JobSpec, ids, targets, args, kwargs, kinds, st.none() | seconds, st.none() | counts,
        st.none() | seconds, texts))),
    m.Assign: st.builds(m.Assign, batch(st.builds(
        AttemptSpec, ids, counts, targets, args, kwargs, kinds, st.none() | seconds))),
    m.Result: st.builds(m.Result, batch(st.builds(
        AttemptResult, ids, counts, values, st.none() | errors, seconds))),
    m.Outcome: st.builds(m.Outcome, batch(st.builds(
        JobOutcome, ids, st.sampled_from([s for s in JobStatus if s.terminal]), values,
        st.none() | errors, counts, ids, st.none() | seconds, st.none() | seconds))),
    m.Cancel: st.builds(m.Cancel, texts, texts, ids),
    m.Drain: st.builds(m.Drain, batch(st.builds(AttemptRef, ids, counts))),
    m.FlowSubmit: st.builds(m.FlowSubmit, ids, ids, st.text(max_size=40),
                            st.none() | st.dictionaries(ids, values, max_size=3), st.booleans()),
    m.FlowStatus: flow_status,
    m.StatusRequest: st.builds(m.StatusRequest, counts),
    m.StatusReply: st.builds(m.StatusReply, counts, batch(st.builds(
        NodeInfo, ids, st.booleans(), counts, counts, counts, seconds)), batch(flow_status)),
    m.Error: st.builds(m.Error, ids, ids),
    m.Goodbye: st.builds(m.Goodbye, ids),
    m.DeclareLimits: st.builds(m.DeclareLimits, ids, st.dictionaries(ids, st.builds(
        LimitSpec, st.none() | st.integers(1, 2**31),
        st.none() | st.floats(1e-6, 1e9, allow_nan=False)), max_size=3)),
    m.ReleaseLimits: st.builds(m.ReleaseLimits, ids),
    m.ClusterInfo: st.builds(m.ClusterInfo, st.dictionaries(st.sampled_from(JobKind), counts),
                             counts),
    m.Attach: st.builds(m.Attach, ids),
}


def test_every_message_has_a_strategy() -> None:
    assert set(STRATEGIES) == set(m.MESSAGES)


def _messages(sender: Role, receiver: Role) -> Any:
    return st.one_of([strategy for cls, strategy in STRATEGIES.items()
                      if cls is not Goodbye and (sender, receiver) in m.MESSAGES[cls].directions])


@st.composite
def sessions(draw: Any) -> tuple[Role, list[tuple[bool, Message]], int]:
    role = draw(st.sampled_from([Role.NODE, Role.CLIENT]))
    steps = draw(st.lists(st.tuples(st.just(True), _messages(Role.COORDINATOR, role))
                          | st.tuples(st.just(False), _messages(role, Role.COORDINATOR)),
                          max_size=8))
    return role, steps, draw(st.sampled_from([1, 3, 17, 4096]))


@settings(max_examples=100, deadline=None, database=None)
@given(sessions())
def test_random_message_sequences_round_trip(session: tuple[Role, list[tuple[bool, Message]],
                                                            int]) -> None:
    role, steps, chunk = session
    pair = ConnectionPair.open(role, chunk=chunk)
    for from_coordinator, msg in steps:
        sender = pair.coordinator if from_coordinator else pair.peer
        assert pair.send(sender, msg) == [msg]
    everything = [msg for from_coordinator, msg in steps if not from_coordinator]
    assert pair.send(pair.peer, *everything, Goodbye("done")) == [*everything, Goodbye("done")]

