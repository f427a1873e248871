"""Messages: every type round-trips, each field is checked on arrival, roles hold both ways,
and a value msgpack cannot carry names its job."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import msgpack
import pytest

from asyncjobs.model import ErrorInfo, JobKind, JobStatus
from asyncjobs.protocol import (
    Assign,
    AttemptResult,
    AttemptSpec,
    Error,
    FlowSubmit,
    FrameTooLarge,
    Heartbeat,
    JobOutcome,
    JobSpec,
    LocalProtocolError,
    Message,
    Outcome,
    Register,
    Result,
    Role,
    State,
    Submit,
    UnencodableValue,
)
from asyncjobs.protocol import connection as connection_module
from asyncjobs.protocol.messages import MESSAGES, decode, encode

from .helpers import ConnectionPair
from .samples import BOOM, SAMPLES, C, K, N


def _pair_for(sender: Role, receiver: Role) -> tuple[ConnectionPair, typing.Any]:
    pair = ConnectionPair.open(receiver if sender is C else sender)
    return pair, pair.coordinator if sender is C else pair.peer


@pytest.mark.parametrize(("sender", "receiver", "msg"), SAMPLES,
                         ids=[f"{type(m).__name__}-{s}" for s, _, m in SAMPLES])
def test_every_message_round_trips(sender: Role, receiver: Role, msg: Message) -> None:
    pair, conn = _pair_for(sender, receiver)
    assert pair.send(conn, msg) == [msg]
    assert decode(encode(msg), sender, receiver) == msg


def test_every_message_type_has_a_sample_and_a_row() -> None:
    types = set(typing.get_args(Message))
    assert {type(m) for _, _, m in SAMPLES} == types == set(MESSAGES)
    tags = [spec.tag for spec in MESSAGES.values()]
    assert len(set(tags)) == len(tags)


def test_ok_follows_the_error() -> None:
    assert AttemptResult("a", 1, 5).ok and not AttemptResult("a", 1, error=BOOM).ok


def test_tuples_arrive_as_lists_and_args_as_a_tuple() -> None:
    msg = Submit((JobSpec("a", "m:f", ((1, 2), [3]), {"t": (4,)}),))
    got = decode(encode(msg), K, C)
    assert isinstance(got, Submit)
    assert got.jobs[0].args == ([1, 2], [3]) and got.jobs[0].kwargs == {"t": [4]}


def test_a_batch_goes_in_one_frame() -> None:
    pair = ConnectionPair.open(Role.CLIENT)
    jobs = tuple(JobSpec(f"j{i}", "examples.montecarlo:hits", (4000,)) for i in range(5000))
    data = pair.peer.send(Submit(jobs))
    assert int.from_bytes(data[:4], "big") == len(data) - 4  # one frame
    assert len(data) < 45 * len(jobs)  # the target's 24 bytes, then some 17 per job
    assert pair.deliver(pair.coordinator, data) == [Submit(jobs)]


# -- roles -------------------------------------------------------------------------------

_FORBIDDEN = [(s, r, m) for s, r in [(N, C), (C, N), (K, C), (C, K)]
              for m in {type(m): m for _, _, m in SAMPLES}.values()
              if (s, r) not in MESSAGES[type(m)].directions]


def test_the_rules_of_the_spec_are_in_the_table() -> None:
    forbidden = {(s, r, type(m)) for s, r, m in _FORBIDDEN}
    assert (N, C, Submit) in forbidden and (N, C, FlowSubmit) in forbidden  # nodes never submit
    assert (K, C, Result) in forbidden and (C, K, Assign) in forbidden  # clients take no jobs


@pytest.mark.parametrize(("sender", "receiver", "msg"), _FORBIDDEN,
                         ids=[f"{s}-{type(m).__name__}-{r}" for s, r, m in _FORBIDDEN])
def test_a_role_may_not_send_what_is_not_its_to_send(sender: Role, receiver: Role,
                                                     msg: Message) -> None:
    pair, conn = _pair_for(sender, receiver)
    name = type(msg).__name__
    with pytest.raises(LocalProtocolError, match=f"a {sender} cannot send {name} to a "
                                                 f"{receiver}"):
        conn.send(msg)
    assert conn.state is State.OPEN
    assert pair.send(conn, Heartbeat(1)) == [Heartbeat(1)]  # nothing was spoiled


@pytest.mark.parametrize(("sender", "receiver", "msg"), _FORBIDDEN,
                         ids=[f"{s}-{type(m).__name__}-{r}" for s, r, m in _FORBIDDEN])
def test_a_peer_that_sends_what_its_role_may_not_is_refused(
        sender: Role, receiver: Role, msg: Message, monkeypatch: pytest.MonkeyPatch) -> None:
    pair, conn = _pair_for(sender, receiver)
    monkeypatch.setattr(connection_module, "check_direction", lambda *args: None)
    assert pair.send(conn, msg) == []
    error = pair.errors[pair.other(conn)]
    assert f"a {sender} cannot send {type(msg).__name__} to a {receiver}" in str(error)
    assert pair.other(conn).state is State.ERROR


# -- validation on arrival ---------------------------------------------------------------

_JOB: list[typing.Any] = ["a", "m:f", [], None, None, None, None, None, [], 1]


@pytest.mark.parametrize(("wire", "says"), [
    ([3, [["a", "m:f", [], ["not", "a", "map"], None, None, None, None, [], 1]]],
     "Submit.jobs[0].kwargs (job 'a'): expected a map with string keys, got list"),
    ([3, [_JOB, ["b", "m:f", [], {1: 2}, None, None, None, None, [], 1]]],
     "Submit.jobs[1].kwargs (job 'b'): expected a map with string keys"),
    ([3, [["a", "m:f", [], None, "gpu", None, None, None, [], 1]]],
     "Submit.jobs[0].kind (job 'a'): expected a job kind (io, cpu, thread), got str 'gpu'"),
    ([3, [["a", "not a reference", [], None, None, None, None, None, [], 1]]],
     'Submit.jobs[0].target (job \'a\'): expected a "module:attribute" reference'),
    ([3, [["a", "m:f", [], None, None, float("inf"), None, None, [], 1]]],
     "Submit.jobs[0].timeout_s (job 'a'): expected a finite number of seconds"),
    ([3, [["a", "m:f", [], None, None, None, True, None, [], 1]]],
     "Submit.jobs[0].retries (job 'a'): expected an integer from 0 to 2**64-1, got bool True"),
    ([3, [["a", "m:f", [], None, None, None, -1, None, [], 1]]],
     "Submit.jobs[0].retries (job 'a'): expected an integer from 0 to 2**64-1, got int -1"),
    ([3, [[7, "m:f", [], None, None, None, None, None, [], 1]]],
     "Submit.jobs[0].job_id: expected a string, got int 7"),
    ([3, [["a", "m:f", [], None, None, None, None]]],
     "Submit.jobs[0] (job 'a'): expected a list of 10 fields"),
    ([3, [["a", "m:f", [], None, None, None, None, None, [], 0]]],
     "Submit.jobs[0].weight (job 'a'): expected a weight from 1 to 2**32-1, got int 0"),
    ([3, "jobs"], "Submit.jobs: expected a list of JobSpec, got str 'jobs'"),
    ([3], "Submit has 1 fields, the peer sent 0"),
    ([3, [], "extra"], "Submit has 1 fields, the peer sent 2"),
    ([11, 1], "a client cannot send"),  # StatusRequest comes from clients only
    ([99], "unknown message tag 99"),
    ([], "must be a msgpack array that begins with its type tag"),
    ({"tag": 3}, "must be a msgpack array"),
    (["3", []], "must be a msgpack array"),
    (b"\xc1", "not valid msgpack"),
    (msgpack.packb([2, 1]) + b"\x00", "not valid msgpack"),
    (b"\x92\x02\xa2\xff\xfe", "not valid msgpack"),  # a str that is not UTF-8
    (b"\xdd\xff\xff\xff\xff", "not valid msgpack"),  # an array claiming 2**32-1 items
])
def test_a_malformed_message_names_the_message_and_the_field(wire: typing.Any,
                                                             says: str) -> None:
    pair = ConnectionPair.open(Role.NODE if "client cannot" in says else Role.CLIENT)
    if "client cannot" in says:  # turn the pair around: the node sends a client's message
        says = "a node cannot send StatusRequest"
    pair.send_raw(pair.peer, wire)
    assert says in str(pair.errors[pair.coordinator])


@pytest.mark.parametrize(("wire", "says"), [
    ([5, [["a", 1, None, ["ValueError"], 0.0]]],
     "Result.results[0].error (job 'a'): expected an error"),
    ([5, [["a", 1, None, ["E", "m", "", False, True, None, "", "x"], 0.0]]],
     "Result.results[0].error (job 'a'): expected an error"),
    ([5, [["a", 1, None, None, -1.0]]],
     "Result.results[0].duration_s (job 'a'): expected a finite"),
    ([1, "n", 0, 1, {"gpu": 1}], "Register.capacity: expected a map from job kinds"),
    ([1, "n", 0, 1, {"io": -1}], "Register.capacity: expected an integer from 0 to 2**64-1"),
    ([8, [["a", "1"]]],
     "Drain.returned[0].attempt (job 'a'): expected an integer from 0 to 2**64-1, got str"),
])
def test_node_messages_are_checked_too(wire: typing.Any, says: str) -> None:
    pair = ConnectionPair.open(Role.NODE)
    pair.send_raw(pair.peer, wire)
    assert says in str(pair.errors[pair.coordinator])


@pytest.mark.parametrize(("wire", "says"), [
    ([6, [["a", "running", None, None, 1, "", None, None]]],
     "Outcome.jobs[0].status (job 'a'): expected a final job status"),
    ([12, 1, [["n", 1, 1, 0, 1, 0.0]], []],
     "StatusReply.nodes[0].alive (node 'n'): expected true or false"),
    ([12, 1, [], [["f", "jobs.yaml", "running", 1]]],
     "StatusReply.flows[0] (flow 'f'): expected a list of 5 fields"),
])
def test_coordinator_messages_are_checked_too(wire: typing.Any, says: str) -> None:
    pair = ConnectionPair.open(Role.CLIENT)
    pair.send_raw(pair.coordinator, wire)
    assert says in str(pair.errors[pair.peer])


def test_an_error_from_an_older_peer_takes_the_defaults() -> None:
    pair = ConnectionPair.open(Role.NODE)
    got = pair.send_raw(pair.peer, [5, [["a", 1, None, ["KeyError", "k"], 0.5]]])
    assert got == [Result((AttemptResult("a", 1, None, ErrorInfo("KeyError", "k"), 0.5),))]


# -- what cannot travel ------------------------------------------------------------------

@pytest.mark.parametrize(("job", "field"), [
    (JobSpec("b", "m:f", (1, object())), "args"),
    (JobSpec("b", "m:f", (), {"when": {1, 2}}), "kwargs"),
    (JobSpec("b", "m:f", (2**70,)), "args"),
])
def test_an_argument_msgpack_cannot_encode_names_its_job(job: JobSpec, field: str) -> None:
    pair = ConnectionPair.open(Role.CLIENT)
    good = JobSpec("a", "m:f", (1,))
    with pytest.raises(UnencodableValue) as info:
        pair.peer.send(Submit((good, job, JobSpec("c", "m:f"))))
    assert (info.value.job_id, info.value.field) == ("b", field)
    assert str(info.value).startswith(f"job b: its {field} cannot travel as msgpack (")
    assert isinstance(info.value, TypeError)
    assert pair.send(pair.peer, Submit((good,))) == [Submit((good,))]  # the link is intact


@pytest.mark.parametrize(("job", "says"), [
    (JobSpec("b", "not a reference"), 'Submit.jobs[1].target (job \'b\'): expected a "module:'),
    (JobSpec("b", "m:f", retries=-1), "Submit.jobs[1].retries (job 'b'): expected an integer"),
    (JobSpec("b", "m:f", timeout_s=float("nan")), "Submit.jobs[1].timeout_s (job 'b')"),
    (JobSpec("b", "m:f", (), {1: "x"}),  # type: ignore[dict-item]
     "Submit.jobs[1].kwargs (job 'b'): expected a map"),
    (JobSpec("b", "m:f", kind="gpu"),  # type: ignore[arg-type]
     "Submit.jobs[1].kind (job 'b'): expected a job kind"),
])
def test_what_the_peer_would_refuse_is_refused_here_naming_the_job(job: JobSpec,
                                                                   says: str) -> None:
    pair = ConnectionPair.open(Role.CLIENT)
    good = JobSpec("a", "m:f")
    with pytest.raises(LocalProtocolError) as info:
        pair.peer.send(Submit((good, job)))
    assert says in str(info.value)
    assert pair.send(pair.peer, Submit((good,))) == [Submit((good,))]  # the link is intact


def test_kinds_and_statuses_go_as_members_or_as_text() -> None:
    msg = Submit((JobSpec("a", "m:f", kind="cpu"),))  # type: ignore[arg-type]
    got = decode(encode(msg), K, C)
    assert isinstance(got, Submit) and got.jobs[0].kind is JobKind.CPU


def test_a_result_msgpack_cannot_encode_names_its_job() -> None:
    pair = ConnectionPair.open(Role.NODE)
    with pytest.raises(UnencodableValue, match="job x: its value cannot travel"):
        pair.peer.send(Result((AttemptResult("x", 2, value=object()),)))
    with pytest.raises(UnencodableValue, match="job y: its args cannot travel"):
        pair.coordinator.send(Assign((AttemptSpec("y", 1, "m:f", (print,)),)))


def test_an_outcome_msgpack_cannot_encode_names_its_job() -> None:
    pair = ConnectionPair.open(Role.CLIENT)
    with pytest.raises(UnencodableValue, match="job z: its value"):
        pair.coordinator.send(Outcome((JobOutcome("z", JobStatus.SUCCEEDED, object()),)))


def test_flow_params_msgpack_cannot_encode_name_the_flow() -> None:
    pair = ConnectionPair.open(Role.CLIENT)
    with pytest.raises(UnencodableValue, match="flow f1: its params cannot travel"):
        pair.peer.send(FlowSubmit("f1", "jobs.yaml", "", {"p": object()}))


def test_a_field_of_ours_that_cannot_encode_is_a_local_error() -> None:
    pair = ConnectionPair.open(Role.NODE)
    with pytest.raises(LocalProtocolError, match="Register.capacity: expected an integer"):
        pair.peer.send(Register("n", 0, 1, {JobKind.IO: object()}))  # type: ignore[dict-item]
    with pytest.raises(LocalProtocolError, match="Heartbeat.seq: expected an integer from 0"):
        pair.peer.send(Heartbeat(2**64))
    with pytest.raises(LocalProtocolError, match="Error cannot be encoded: .*surrogate") as info:
        pair.peer.send(Error("x", "\ud800"))  # a str, but not one UTF-8 can carry
    assert not isinstance(info.value, UnencodableValue)
    with pytest.raises(UnencodableValue, match="job j: its value"):
        pair.peer.send(Result((AttemptResult("j", 1, ["\ud800"]),)))  # a value: names the job
    assert pair.send(pair.peer, Heartbeat(1)) == [Heartbeat(1)]


def test_a_message_larger_than_the_peer_accepts_is_refused_before_sending() -> None:
    pair = ConnectionPair.open(Role.CLIENT, max_frame_bytes=(2048, 2**20))
    jobs = tuple(JobSpec(f"j{i}", "m:f", ("x" * 100,)) for i in range(30))
    with pytest.raises(FrameTooLarge) as info:
        pair.peer.send(Submit(jobs))
    assert info.value.limit == 2048 and info.value.size > 2048
    assert "send it in smaller batches" in str(info.value)
    assert pair.send(pair.peer, Submit(jobs[:10]), Submit(jobs[10:20])) == [
        Submit(jobs[:10]), Submit(jobs[10:20])]
    assert pair.send(pair.coordinator, Heartbeat(1)) == [Heartbeat(1)]  # it accepts 1 MiB


def test_send_many_sends_nothing_when_one_message_cannot_go() -> None:
    pair = ConnectionPair.open(Role.CLIENT)
    bad = Submit((JobSpec("bad", "m:f", (object(),)),))
    with pytest.raises(UnencodableValue):
        pair.peer.send_many([Heartbeat(1), bad, Heartbeat(2)])
    assert pair.send(pair.peer, Heartbeat(3)) == [Heartbeat(3)]  # numbering is intact


def test_messages_are_frozen_and_slotted() -> None:
    for _, _, msg in SAMPLES:
        assert "__slots__" in vars(type(msg))
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(msg, dataclasses.fields(msg)[0].name, None)


def test_the_message_table_in_the_docs_matches_the_code() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \| [^|]+ \| ([^\n]+) \|$", doc, re.MULTILINE)
    assert {name: int(tag) for tag, name, _ in rows} == {
        cls.__name__: spec.tag for cls, spec in MESSAGES.items()}
    for _, name, text in rows:
        spec = next(s for c, s in MESSAGES.items() if c.__name__ == name)
        assert all(f"`{field}`" in text for field in spec.fields), name
