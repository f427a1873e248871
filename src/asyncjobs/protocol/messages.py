"""Messages: what travels after the handshake, as typed values and as msgpack.

A message's payload is one msgpack array: its tag, then its fields in the order of the
dataclass. Batches (``Submit``, ``Assign``, ``Result``, ``Outcome``) hold items, each an
array of its own fields. ``MESSAGES`` is the table: tag, the directions a message may go
(sender role -> receiver role), and each field's check. Both sides run the same checks:
``encode`` before it packs (so we never send what the peer would refuse), ``decode`` on
what arrived; either names the message, the field and the job at fault. ``encode`` also
names the job whose value msgpack cannot carry.

Job arguments, results and flow params are user data: any msgpack value. Tuples arrive
as lists, and ``args`` as a tuple of them; dict keys may be any msgpack scalar.
"""

from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias, TypeVar

import msgpack

from ..core.policy import LimitSpec
from ..model import WIRE_FIELDS, ErrorInfo, JobKind, JobStatus
from .errors import LocalProtocolError, UnencodableValue
from .handshake import Role

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

# ---------------------------------------------------------------------------------------
# Items: the parts of batch messages.


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One job submitted by a client. ``None`` in kind, timeout, retries or backoff means
    "not given": the target's ``@asyncjobs.job`` defaults apply where it is imported,
    then the usual ones (kind inferred, no timeout, 0 retries, 1 s backoff)."""

    #: unique among the client's jobs
    job_id: str
    #: "module:attribute", imported where the job runs
    target: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] | None = None
    kind: JobKind | None = None
    timeout_s: float | None = None
    retries: int | None = None
    backoff_s: float | None = None
    #: named limits an attempt holds while it runs, as declared by ``DeclareLimits``
    #: (``scope:name``); cluster-wide
    limits: tuple[str, ...] = ()
    #: units of each limit (and slots of its kind) an attempt holds: n for a chunk of n
    #: io calls run at once, else 1
    weight: int = 1


@dataclass(frozen=True, slots=True)
class AttemptSpec:
    """One attempt of a job, assigned to a node. A job's attempts are numbered from 1;
    ``(job_id, attempt)`` names an attempt everywhere."""

    job_id: str
    attempt: int
    target: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] | None = None
    #: None: the node infers it from the target (and its ``@asyncjobs.job`` mark)
    kind: JobKind | None = None
    #: None: the target's mark, else no timeout
    timeout_s: float | None = None
    #: ``JobSpec.weight``: the node runs at most this many of a chunk's calls at once
    weight: int = 1


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """How an attempt ended on a node: a value, or an error."""

    job_id: str
    attempt: int
    value: Any = None
    #: None when the attempt succeeded
    error: ErrorInfo | None = None
    #: how long the attempt ran on the node
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class AttemptRef:
    """Names one attempt."""

    job_id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """How a client's job ended (a terminal status), told by the coordinator."""

    job_id: str
    status: JobStatus
    value: Any = None
    error: ErrorInfo | None = None
    attempts: int = 0
    #: the node its last attempt ran on ("" when none ran)
    node: str = ""
    #: the coordinator's clock (Unix time) when its last attempt began, and ended
    started_s: float | None = None
    ended_s: float | None = None


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node as ``asyncjobs status`` shows it (SPEC section 4)."""

    name: str
    alive: bool
    loops: int
    slots_used: int
    slots_total: int
    #: age of its last heartbeat, in seconds
    last_heartbeat_s: float


# ---------------------------------------------------------------------------------------
# Messages.


@dataclass(frozen=True, slots=True)
class Register:
    """A node's loop introduces itself: it runs that many attempts of each kind at once."""

    #: the node's name, shared by its loops
    node: str
    #: this loop's index among the node's loops, from 0
    loop: int
    loops: int
    capacity: dict[JobKind, int]


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Says "still here"; either side, at a steady pace."""

    seq: int


@dataclass(frozen=True, slots=True)
class Submit:
    """Jobs from a client, many in one frame."""

    jobs: tuple[JobSpec, ...]


@dataclass(frozen=True, slots=True)
class Assign:
    """Attempts for a node to run, many in one frame."""

    attempts: tuple[AttemptSpec, ...]


@dataclass(frozen=True, slots=True)
class Result:
    """Attempts a node finished, many in one frame."""

    results: tuple[AttemptResult, ...]


@dataclass(frozen=True, slots=True)
class Outcome:
    """A client's jobs that ended, many in one frame."""

    jobs: tuple[JobOutcome, ...]


@dataclass(frozen=True, slots=True)
class Cancel:
    """Cancel jobs (client -> coordinator), or their running attempts on a node
    (coordinator -> node). A client may name whole flows."""

    job_ids: tuple[str, ...] = ()
    flow_ids: tuple[str, ...] = ()
    reason: str = "cancelled"


@dataclass(frozen=True, slots=True)
class Drain:
    """A node is stopping: send it nothing more. The attempts it names were queued on
    it and never started; run them elsewhere (not counted as failures)."""

    returned: tuple[AttemptRef, ...] = ()


@dataclass(frozen=True, slots=True)
class FlowSubmit:
    """A client hands the coordinator a jobs.yaml flow to run (placeholder: the fields may
    grow before the cluster ships; any change bumps ``VERSION``)."""

    flow_id: str
    #: the flow file's path as the client gave it
    file: str
    #: the file's text
    source: str
    params: dict[str, Any] | None = None
    resume: bool = False


@dataclass(frozen=True, slots=True)
class FlowStatus:
    """Where a flow is: sent to its client as it runs, and listed in ``StatusReply``."""

    flow_id: str
    file: str
    #: "running", "succeeded", "failed", "cancelled"
    state: str
    #: jobs after expansion that ended, and all of them
    done: int
    total: int


@dataclass(frozen=True, slots=True)
class StatusRequest:
    """A client asks for the cluster's state."""

    request_id: int


@dataclass(frozen=True, slots=True)
class StatusReply:
    """The cluster's state, answering the ``StatusRequest`` of the same id."""

    request_id: int
    nodes: tuple[NodeInfo, ...]
    flows: tuple[FlowStatus, ...]

    def to_json(self) -> dict[str, Any]:
        """SPEC section 4's object of ``asyncjobs status --json``."""
        return {
            "nodes": [{"name": n.name, "alive": n.alive, "loops": n.loops,
                       "slots_used": n.slots_used, "slots_total": n.slots_total,
                       "last_heartbeat_s": n.last_heartbeat_s} for n in self.nodes],
            "flows": [{"id": f.flow_id, "file": f.file, "state": f.state, "done": f.done,
                       "total": f.total} for f in self.flows],
        }


@dataclass(frozen=True, slots=True)
class DeclareLimits:
    """A client's named limits for one scope (a flow run): its jobs name them
    ``scope:name`` in ``JobSpec.limits``; they hold cluster-wide."""

    scope: str
    limits: dict[str, LimitSpec]


@dataclass(frozen=True, slots=True)
class ReleaseLimits:
    """The scope ended: its limits go once no running attempt holds them."""

    scope: str


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    """What a client needs to size its windows: attempts of each kind the live nodes run
    at once, in all. Sent when the client connects and whenever it changes."""

    capacity: dict[JobKind, int]
    nodes: int
    #: loop processes of the live nodes, in all (a client sizes io chunks by it)
    loops: int = 0


@dataclass(frozen=True, slots=True)
class Error:
    """A refusal at the protocol level (a duplicate node name, a message the peer may not
    send, ...). The sender usually closes the link after it."""

    #: a short machine-readable word, e.g. "duplicate-node", "protocol"
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Attach:
    """A client names its session, first thing on each link it opens: a link opened
    again (after a network break or a coordinator restart) with the same name finds the
    session's unfinished jobs still there and its succeeded ones answered without
    running them again."""

    #: the client's choice: stable across its links, unique among clients
    session: str
    #: how long the coordinator keeps the session while its client is away (it may
    #: keep it less: an hour at most)
    keep_s: float = 3600.0


@dataclass(frozen=True, slots=True)
class Goodbye:
    """The sender will send nothing more on this link."""

    reason: str = ""


Message: TypeAlias = (
    Register | Heartbeat | Submit | Assign | Result | Outcome | Cancel | Drain | FlowSubmit
    | FlowStatus | StatusRequest | StatusReply | Error | Goodbye | DeclareLimits
    | ReleaseLimits | ClusterInfo | Attach
)
Item: TypeAlias = (
    JobSpec | AttemptSpec | AttemptResult | AttemptRef | JobOutcome | NodeInfo | FlowStatus
)

# ---------------------------------------------------------------------------------------
# Field checks, shared by both sides: ``encode`` runs them over what it is about to send,
# ``decode`` over what arrived. Each takes a field's wire value and returns its typed
# value, or raises _Bad. (What leaves may hold tuples and enum members where msgpack
# gives back lists and strings; the checks take both.)


class _Bad(Exception):
    """A field's value is wrong. ``path`` grows (innermost first) as it climbs out;
    ``owner`` is the innermost item's id, when it has one."""

    def __init__(self, expected: str, got: Any) -> None:
        super().__init__(expected)
        self.expected = expected
        self.got = got
        self.path: list[str] = []
        self.owner: tuple[str, str] | None = None


Load: TypeAlias = "Callable[[Any], Any]"
Dump: TypeAlias = "Callable[[Any], Any] | None"


def _text(v: Any) -> str:
    if type(v) is str:
        return v
    raise _Bad("a string", v)


def _count(v: Any) -> int:
    if type(v) is int and 0 <= v < 2**64:
        return v
    raise _Bad("an integer from 0 to 2**64-1", v)


def _weight(v: Any) -> int:
    if type(v) is int and 1 <= v < 2**32:
        return v
    raise _Bad("a weight from 1 to 2**32-1", v)


def _opt_count(v: Any) -> int | None:
    return None if v is None else _count(v)


def _seconds(v: Any) -> float:
    if (type(v) is float or type(v) is int) and v >= 0 and math.isfinite(v):
        return float(v)
    raise _Bad("a finite number of seconds >= 0", v)


def _opt_seconds(v: Any) -> float | None:
    return None if v is None else _seconds(v)


def _flag(v: Any) -> bool:
    if type(v) is bool:
        return v
    raise _Bad("true or false", v)


def _value(v: Any) -> Any:
    return v


@functools.lru_cache(maxsize=4096)
def _is_reference(text: str) -> bool:
    module, sep, attr = text.partition(":")
    return bool(sep) and all(p.isidentifier() for p in (*module.split("."), *attr.split(".")))


def _target(v: Any) -> str:
    if type(v) is str and _is_reference(v):
        return v
    raise _Bad('a "module:attribute" reference', v)


def _args(v: Any) -> tuple[Any, ...]:
    if type(v) is list:
        return tuple(v)
    if type(v) is tuple:
        return v
    raise _Bad("a list of arguments", v)


def _opt_str_map(v: Any) -> dict[str, Any] | None:
    if v is None or (type(v) is dict and all(type(k) is str for k in v)):
        return v
    raise _Bad("a map with string keys", v)


def _opt_kind(v: Any) -> JobKind | None:
    if v is None:
        return None
    if (type(v) is str or type(v) is JobKind) and v in _KINDS:
        return JobKind(v)
    raise _Bad("a job kind (io, cpu, thread)", v)


def _final_status(v: Any) -> JobStatus:
    if (type(v) is str or type(v) is JobStatus) and v in _FINAL:
        return JobStatus(v)
    raise _Bad("a final job status (succeeded, failed, cancelled, skipped)", v)


def _capacity(v: Any) -> dict[JobKind, int]:
    if type(v) is dict and all((type(k) is str or type(k) is JobKind) and k in _KINDS
                               for k in v):
        return {JobKind(k): _count(n) for k, n in v.items()}
    raise _Bad("a map from job kinds to slot counts", v)


def _limits(v: Any) -> dict[str, LimitSpec]:
    if type(v) is not dict:
        raise _Bad("a map from limit names to [concurrency, rate per second]", v)
    out: dict[str, LimitSpec] = {}
    for name, spec in v.items():
        if type(spec) is LimitSpec:
            spec = [spec.concurrency, spec.rate_per_s]
        if type(name) is not str or type(spec) is not list or len(spec) != 2:
            raise _Bad("a map from limit names to [concurrency, rate per second]", v)
        concurrency, rate = spec
        if concurrency is not None and (type(concurrency) is not int
                                        or not 1 <= concurrency < 2**32):
            raise _Bad(f"limit {name!r}: a concurrency of at least 1, or nil", concurrency)
        if rate is not None and not ((type(rate) is float or type(rate) is int)
                                     and rate > 0 and math.isfinite(rate)):
            raise _Bad(f"limit {name!r}: a rate above 0 per second, or nil", rate)
        out[name] = LimitSpec(concurrency, None if rate is None else float(rate))
    return out


def _dump_limits(v: dict[str, LimitSpec]) -> dict[str, list[Any]]:
    return {name: [spec.concurrency, spec.rate_per_s] for name, spec in v.items()}


def _opt_error(v: Any) -> ErrorInfo | None:
    if v is None:
        return None
    if (type(v) is list and 2 <= len(v) <= len(WIRE_FIELDS) and type(v[0]) is str
            and type(v[1]) is str):
        return ErrorInfo.from_wire(v)
    raise _Bad("an error (ErrorInfo.to_wire)", v)


def _texts(v: Any) -> tuple[str, ...]:
    if (type(v) is list or type(v) is tuple) and all(type(s) is str for s in v):
        return tuple(v)
    raise _Bad("a list of strings", v)


def _items(cls: type[Item], *, build: bool = True) -> Load:
    fast = _FAST.get(cls)

    def check(v: Any) -> tuple[Item, ...] | None:
        if type(v) is not list:
            raise _Bad(f"a list of {cls.__name__}", v)
        try:
            if fast is None:
                items = [_load(cls, item, build) for item in v]
            else:  # the common shape in one call; anything else the table's way
                items = []
                for item in v:
                    values = fast(item)
                    if values is None:
                        items.append(_load(cls, item, build))
                    elif build:
                        items.append(cls(*values))
        except _Bad as exc:
            for i, item in enumerate(v):  # the slow way, to say which
                try:
                    _load(cls, item, build)
                except _Bad:
                    exc.path.append(f"[{i}]")
                    if exc.owner is None and type(item) is list and item \
                            and type(item[0]) is str:
                        exc.owner = (_OWNERS[cls], item[0])
                    break
            raise
        return tuple(items) if build else None
    return check


_KINDS = frozenset(JobKind)
_FINAL = frozenset(s for s in JobStatus if s.terminal)
_INF = math.inf


# Fast paths for the items that travel by the thousand: each takes an item's wire form
# and returns its typed values when every field is of the usual shape (the checks of
# ``ITEMS`` would pass and give the same values), else None: then ``ITEMS``' checks run,
# and say what is wrong. So they may refuse more than the table, never accept more.
# (``x == x`` is false for NaN; ``x < _INF`` too.)


def _fast_secs(v: Any) -> bool:
    return (type(v) is float or type(v) is int) and 0 <= v < _INF


def _fast_kind(v: Any) -> bool:
    return (type(v) is str or type(v) is JobKind) and v in _KINDS


def _fast_job_spec(v: Any) -> list[Any] | None:
    if type(v) is not list or len(v) != 10:
        return None
    job_id, target, args, kwargs, kind, timeout_s, retries, backoff_s, limits, weight = v
    if (type(job_id) is str and type(target) is str and _is_reference(target)
            and (type(args) is tuple or type(args) is list) and kwargs is None
            and (kind is None or _fast_kind(kind))
            and (timeout_s is None or _fast_secs(timeout_s))
            and (retries is None or (type(retries) is int and 0 <= retries < 2**64))
            and (backoff_s is None or _fast_secs(backoff_s))
            and (type(limits) is tuple or type(limits) is list)
            and all(type(n) is str for n in limits)
            and type(weight) is int and 1 <= weight < 2**32):
        return [job_id, target, tuple(args), None, None if kind is None else JobKind(kind),
                None if timeout_s is None else float(timeout_s), retries,
                None if backoff_s is None else float(backoff_s), tuple(limits), weight]
    return None


def _fast_attempt_spec(v: Any) -> list[Any] | None:
    if type(v) is not list or len(v) != 8:
        return None
    job_id, attempt, target, args, kwargs, kind, timeout_s, weight = v
    if (type(job_id) is str and type(attempt) is int and 0 <= attempt < 2**64
            and type(target) is str and _is_reference(target)
            and (type(args) is tuple or type(args) is list) and kwargs is None
            and (kind is None or _fast_kind(kind))
            and (timeout_s is None or _fast_secs(timeout_s))
            and type(weight) is int and 1 <= weight < 2**32):
        return [job_id, attempt, target, tuple(args), None,
                None if kind is None else JobKind(kind),
                None if timeout_s is None else float(timeout_s), weight]
    return None


def _fast_attempt_result(v: Any) -> list[Any] | None:
    if (type(v) is list and len(v) == 5 and type(v[0]) is str and type(v[1]) is int
            and 0 <= v[1] < 2**64 and v[3] is None and _fast_secs(v[4])):
        return [v[0], v[1], v[2], None, float(v[4])]
    return None


def _fast_job_outcome(v: Any) -> list[Any] | None:
    if type(v) is not list or len(v) != 8:
        return None
    job_id, status, value, error, attempts, node, started_s, ended_s = v
    if (type(job_id) is str and (type(status) is str or type(status) is JobStatus)
            and status in _FINAL and error is None
            and type(attempts) is int and 0 <= attempts < 2**64
            and type(node) is str and (started_s is None or _fast_secs(started_s))
            and (ended_s is None or _fast_secs(ended_s))):
        return [job_id, JobStatus(status), value, None, attempts, node,
                None if started_s is None else float(started_s),
                None if ended_s is None else float(ended_s)]
    return None


_FAST: dict[type, Callable[[Any], list[Any] | None]] = {
    JobSpec: _fast_job_spec, AttemptSpec: _fast_attempt_spec,
    AttemptResult: _fast_attempt_result, JobOutcome: _fast_job_outcome}


def _dump_items(v: tuple[Item, ...]) -> list[list[Any]]:
    return [_dump(item) for item in v]


def _dump_error(v: ErrorInfo | None) -> list[Any] | None:
    return None if v is None else v.to_wire()


class Field(NamedTuple):
    """How one field travels: ``load`` checks what arrived and returns its value, ``dump``
    (None: as it is) prepares what leaves, ``check`` (None: ``load``) checks what leaves
    without building anything."""

    load: Load
    dump: Dump = None
    check: Load | None = None


def _batch(cls: type[Item]) -> Field:
    return Field(_items(cls), _dump_items, _items(cls, build=False))


_TEXT, _COUNT, _SECONDS, _FLAG, _VALUE = (Field(_text), Field(_count), Field(_seconds),
                                          Field(_flag), Field(_value))
_OPT_SECONDS, _OPT_KIND = Field(_opt_seconds), Field(_opt_kind)
_ARGS, _KWARGS = Field(_args), Field(_opt_str_map)
_ERROR = Field(_opt_error, _dump_error)

#: each item's fields, in wire order (= the dataclass's field order)
ITEMS: dict[type[Item], dict[str, Field]] = {
    JobSpec: {"job_id": _TEXT, "target": Field(_target), "args": _ARGS, "kwargs": _KWARGS,
              "kind": _OPT_KIND, "timeout_s": _OPT_SECONDS,
              "retries": Field(_opt_count), "backoff_s": _OPT_SECONDS,
              "limits": Field(_texts), "weight": Field(_weight)},
    AttemptSpec: {"job_id": _TEXT, "attempt": _COUNT, "target": Field(_target), "args": _ARGS,
                  "kwargs": _KWARGS, "kind": _OPT_KIND, "timeout_s": _OPT_SECONDS,
                  "weight": Field(_weight)},
    AttemptResult: {"job_id": _TEXT, "attempt": _COUNT, "value": _VALUE, "error": _ERROR,
                    "duration_s": _SECONDS},
    AttemptRef: {"job_id": _TEXT, "attempt": _COUNT},
    JobOutcome: {"job_id": _TEXT, "status": Field(_final_status), "value": _VALUE,
                 "error": _ERROR, "attempts": _COUNT, "node": _TEXT,
                 "started_s": _OPT_SECONDS, "ended_s": _OPT_SECONDS},
    NodeInfo: {"name": _TEXT, "alive": _FLAG, "loops": _COUNT, "slots_used": _COUNT,
               "slots_total": _COUNT, "last_heartbeat_s": _SECONDS},
}

_C, _N, _K = Role.COORDINATOR, Role.NODE, Role.CLIENT
_ANY = frozenset({(_C, _N), (_N, _C), (_C, _K), (_K, _C)})


class Spec(NamedTuple):
    """A message's row in ``MESSAGES``."""

    #: its first element on the wire; never reused
    tag: int
    #: (sender, receiver) pairs it may travel between
    directions: frozenset[tuple[Role, Role]]
    #: its fields in wire order (= the dataclass's field order)
    fields: dict[str, Field]


#: The protocol's vocabulary. Roles are enforced from here, on send and on receive.
MESSAGES: dict[type[Message], Spec] = {
    Register: Spec(1, frozenset({(_N, _C)}), {
        "node": _TEXT, "loop": _COUNT, "loops": _COUNT, "capacity": Field(_capacity)}),
    Heartbeat: Spec(2, _ANY, {"seq": _COUNT}),
    Submit: Spec(3, frozenset({(_K, _C)}), {"jobs": _batch(JobSpec)}),
    Assign: Spec(4, frozenset({(_C, _N)}), {"attempts": _batch(AttemptSpec)}),
    Result: Spec(5, frozenset({(_N, _C)}), {"results": _batch(AttemptResult)}),
    Outcome: Spec(6, frozenset({(_C, _K)}), {"jobs": _batch(JobOutcome)}),
    Cancel: Spec(7, frozenset({(_K, _C), (_C, _N)}), {
        "job_ids": Field(_texts), "flow_ids": Field(_texts), "reason": _TEXT}),
    Drain: Spec(8, frozenset({(_N, _C)}), {"returned": _batch(AttemptRef)}),
    FlowSubmit: Spec(9, frozenset({(_K, _C)}), {
        "flow_id": _TEXT, "file": _TEXT, "source": _TEXT,
        "params": _KWARGS, "resume": _FLAG}),
    FlowStatus: Spec(10, frozenset({(_C, _K), (_K, _C)}), {
        "flow_id": _TEXT, "file": _TEXT, "state": _TEXT, "done": _COUNT, "total": _COUNT}),
    StatusRequest: Spec(11, frozenset({(_K, _C)}), {"request_id": _COUNT}),
    StatusReply: Spec(12, frozenset({(_C, _K)}), {
        "request_id": _COUNT, "nodes": _batch(NodeInfo), "flows": _batch(FlowStatus)}),
    Error: Spec(13, _ANY, {"code": _TEXT, "message": _TEXT}),
    Goodbye: Spec(14, _ANY, {"reason": _TEXT}),
    DeclareLimits: Spec(15, frozenset({(_K, _C)}), {
        "scope": _TEXT, "limits": Field(_limits, _dump_limits)}),
    ReleaseLimits: Spec(16, frozenset({(_K, _C)}), {"scope": _TEXT}),
    ClusterInfo: Spec(17, frozenset({(_C, _K)}), {
        "capacity": Field(_capacity), "nodes": _COUNT, "loops": _COUNT}),
    Attach: Spec(18, frozenset({(_K, _C)}), {"session": _TEXT, "keep_s": _SECONDS}),
}
# FlowStatus is a message and, inside StatusReply, an item too.
ITEMS[FlowStatus] = MESSAGES[FlowStatus].fields


class _Shape(NamedTuple):
    names: tuple[str, ...]
    loads: tuple[Load, ...]
    dumps: tuple[Dump, ...]
    checks: tuple[Load, ...]
    #: all fields at once, in wire order (one C call instead of a getattr per field)
    get: Callable[[Any], Any]
    #: no field has a dump: the values travel as they are
    plain: bool


def _shape(cls: type, table: dict[str, Field]) -> _Shape:
    names = tuple(table)
    if names != tuple(f.name for f in fields(cls)):
        raise AssertionError(f"{cls.__name__}: wire fields {names} differ from its dataclass")
    dumps = tuple(f.dump for f in table.values())
    # attrgetter of one name returns the value, not a 1-tuple
    get = operator.attrgetter(*names) if len(names) > 1 else (
        lambda obj, name=names[0]: (getattr(obj, name),))
    return _Shape(names, tuple(f.load for f in table.values()), dumps,
                  tuple(f.check or f.load for f in table.values()), get,
                  all(d is None for d in dumps))


_SHAPES: dict[type, _Shape] = {
    **{cls: _shape(cls, table) for cls, table in ITEMS.items()},
    **{cls: _shape(cls, spec.fields) for cls, spec in MESSAGES.items()},
}
_BY_TAG: dict[int, type[Message]] = {spec.tag: cls for cls, spec in MESSAGES.items()}


_OWNERS: dict[type, str] = {JobSpec: "job", AttemptSpec: "job", AttemptResult: "job",
                            AttemptRef: "job", JobOutcome: "job", NodeInfo: "node",
                            FlowStatus: "flow"}


def _load(cls: type[Any], data: Any, build: bool = True) -> Any:
    """The ``cls`` whose wire form is ``data``; with ``build`` false, only check it."""
    shape = _SHAPES[cls]
    if type(data) is not list or len(data) != len(shape.names):
        raise _Bad(f"a list of {len(shape.names)} fields", data)
    loads = shape.loads if build else shape.checks
    try:
        values = [load(value) for load, value in zip(loads, data, strict=True)]
    except _Bad as exc:
        for name, load, value in zip(shape.names, loads, data, strict=True):
            try:  # the slow way, to say which
                load(value)
            except _Bad:
                exc.path.append(name)
                break
        raise
    return cls(*values) if build else None


def _explain(cls: type, exc: _Bad) -> str:
    path = "".join(p if p.startswith("[") else "." + p for p in reversed(exc.path))
    owner = f" ({exc.owner[0]} {exc.owner[1]!r})" if exc.owner else ""
    return f"{cls.__name__}{path}{owner}: expected {exc.expected}, got {_describe(exc.got)}"


def _dump(obj: Any) -> list[Any]:
    shape = _SHAPES[type(obj)]
    values = shape.get(obj)
    if shape.plain:
        return list(values)
    return [value if dump is None else dump(value)
            for value, dump in zip(values, shape.dumps, strict=True)]


# ---------------------------------------------------------------------------------------
# The codec.


#: messages only the coordinator sends, built from what it checked as it arrived (the
#: jobs of a ``Submit``, the items of a ``Result``): their fields are not checked again
#: on the way out, the bulk of its encoding work; msgpack still refuses what it cannot
#: carry, naming the job
_BUILT_FROM_CHECKED = frozenset({Assign, Outcome})


def check_direction(cls: type[Message], sender: Role, receiver: Role) -> None:
    """Refuse a message its sender's role may not send to its receiver's.

    :raises LocalProtocolError: naming both roles and the allowed directions (the
        connection turns it into a ``RemoteProtocolError`` when the peer sent it)
    """
    directions = MESSAGES[cls].directions
    if (sender, receiver) not in directions:
        allowed = ", ".join(sorted(f"{a} -> {b}" for a, b in directions))
        raise LocalProtocolError(f"a {sender} cannot send {cls.__name__} to a {receiver} "
                                 f"({cls.__name__} goes {allowed})")


def encode(msg: Message) -> bytes:
    """``msg``'s payload, checked as the peer will check it.

    :raises UnencodableValue: naming the job (or flow) whose arguments, result or params
        msgpack cannot carry
    :raises LocalProtocolError: for a field the peer would refuse (naming the message, the
        field and the job), or any other that cannot be encoded
    """
    cls = type(msg)
    wire = _dump(msg)
    if cls not in _BUILT_FROM_CHECKED:
        try:
            _load(cls, wire, build=False)
        except _Bad as exc:
            raise LocalProtocolError(_explain(cls, exc)) from None
    try:
        packed: bytes = msgpack.packb([MESSAGES[cls].tag, *wire])
    except (TypeError, ValueError, OverflowError) as exc:
        for owner, ident, field, value in _user_values(msg):
            try:
                msgpack.packb(value)
            except (TypeError, ValueError, OverflowError) as inner:
                raise UnencodableValue(ident, field, str(inner), owner=owner) from inner
        raise LocalProtocolError(f"{type(msg).__name__} cannot be encoded: {exc}") from exc
    return packed


def _user_values(msg: Message) -> Iterator[tuple[str, str, str, Any]]:
    """(owner, id, field, value) for each piece of user data in ``msg``."""
    if isinstance(msg, FlowSubmit):
        yield "flow", msg.flow_id, "params", msg.params
        return
    items: tuple[Any, ...] = ()
    if isinstance(msg, Submit | Outcome):
        items = msg.jobs
    elif isinstance(msg, Assign):
        items = msg.attempts
    elif isinstance(msg, Result):
        items = msg.results
    for item in items:
        for field in ("args", "kwargs", "value"):
            if hasattr(item, field):
                yield "job", item.job_id, field, getattr(item, field)


def decode(payload: bytes | memoryview, sender: Role, receiver: Role) -> Message:
    """The message in a payload the peer (``sender``) sent.

    :raises LocalProtocolError: (the peer's fault; the connection converts it) for bytes
        that are not msgpack, an unknown tag, a message ``sender`` may not send, or a
        field of the wrong type, naming the message and the field
    """
    try:
        data = msgpack.unpackb(payload, strict_map_key=False)
    except Exception as exc:  # msgpack raises many kinds; every one means a bad peer
        raise LocalProtocolError(f"a message is not valid msgpack: {exc!r:.200}") from exc
    if type(data) is not list or not data or type(data[0]) is not int:
        raise LocalProtocolError(f"a message must be a msgpack array that begins with its "
                                 f"type tag, not {_describe(data)}")
    cls = _BY_TAG.get(data[0])
    if cls is None:
        raise LocalProtocolError(f"unknown message tag {data[0]}")
    check_direction(cls, sender, receiver)
    expected = len(_SHAPES[cls].names)
    if len(data) - 1 != expected:
        raise LocalProtocolError(f"{cls.__name__} has {expected} fields, the peer sent "
                                 f"{len(data) - 1}")
    try:
        msg: Message = _load(cls, data[1:])
    except _Bad as exc:
        raise LocalProtocolError(_explain(cls, exc)) from None
    return msg


_I = TypeVar("_I", bound=Item)


def encode_item(item: Item) -> bytes:
    """One item (a ``JobOutcome``, a ``FlowStatus``, ...) on its own, packed as it is
    inside a message, for keeping it outside one (the coordinator's state store);
    ``decode_item`` gives back what the peer of a message would get. Its fields are not
    checked: an item built from checked input stays valid.

    :raises UnencodableValue: naming the job whose value msgpack cannot carry
    :raises LocalProtocolError: for any other field that cannot be encoded
    """
    return encode_items((item,))[0]


def encode_items(items: Iterable[Item]) -> list[bytes]:
    """``encode_item`` of each of ``items`` (all of one class), with one packer and the
    field conversions looked up once: ~0.5 µs a ``JobOutcome`` instead of ~1.7.

    :raises UnencodableValue: naming the job whose value msgpack cannot carry
    :raises LocalProtocolError: for any other field that cannot be encoded
    """
    out: list[bytes] = []
    pack = msgpack.Packer().pack
    cls: type | None = None
    get: Callable[[Any], Any] | None = None
    dumps: list[tuple[int, Callable[[Any], Any]]] = []
    item: Any = None
    try:
        for item in items:
            if type(item) is not cls:
                if cls is not None:
                    raise LocalProtocolError(f"encode_items takes items of one class, got "
                                             f"{cls.__name__} and {type(item).__name__}")
                cls = type(item)
                shape = _SHAPES[cls]
                get = shape.get
                # an item's converted fields (its error) all give None for None
                dumps = [(i, d) for i, d in enumerate(shape.dumps) if d is not None]
            assert get is not None
            wire = list(get(item))
            for i, dump in dumps:
                if wire[i] is not None:
                    wire[i] = dump(wire[i])
            out.append(pack(wire))
    except (TypeError, ValueError, OverflowError) as exc:
        for field in ("args", "kwargs", "value"):
            try:
                msgpack.packb(getattr(item, field, None))
            except (TypeError, ValueError, OverflowError) as inner:
                raise UnencodableValue(getattr(item, "job_id", ""), field,
                                       str(inner)) from inner
        raise LocalProtocolError(f"{type(item).__name__} cannot be encoded: {exc}") from exc
    return out


def decode_item(cls: type[_I], data: bytes | memoryview) -> _I:
    """The ``cls`` that ``encode_item`` packed into ``data``, checked as on arrival.

    :raises LocalProtocolError: for bytes that are not msgpack or not a valid ``cls``
    """
    try:
        wire = msgpack.unpackb(data, strict_map_key=False)
    except Exception as exc:  # msgpack raises many kinds; each means damaged bytes
        raise LocalProtocolError(f"a stored {cls.__name__} is not valid msgpack: "
                                 f"{exc!r:.200}") from exc
    fast = _FAST.get(cls)
    values = None if fast is None else fast(wire)
    if values is not None:
        return cls(*values)
    try:
        item: _I = _load(cls, wire)
    except _Bad as exc:
        raise LocalProtocolError(_explain(cls, exc)) from None
    return item


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"
