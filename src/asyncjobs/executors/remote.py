"""How a call travels to a node and is rebuilt there.

On the wire an attempt is a reference, ``"module:attribute"``, with plain-data arguments
(``protocol.AttemptSpec``): network input is never unpickled, so nothing else can cross.
Most calls are a user's function, sent by the name it is imported under. Three are ours
and need the node's own resources, so they travel under reserved references that the
node maps to its own shell guard, HTTP session and chunk runner:

- ``SHELL``: a flow's shell step. Only the step's own ``env:`` travels; the node's
  environment is the base (a client's environment, secret included, stays home).
- ``HTTP``: a flow's http step, on the node's shared session.
- ``CHUNK``: several calls of one function as one attempt (``run_chunk``); the function
  travels by reference too.
- ``IO_CHUNK``: several io calls (each one of the above or a user's reference) run at
  once as one attempt (``run_io_chunk``), at most the attempt's weight together.

``to_wire`` is the client's half, ``NodeCalls`` the node's.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

from ..model import JobKind
from ..targets import Target, TargetError, reference_of, resolve_target
from .base import Call
from .chunk import run_chunk

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .http import HttpClient
    from .shell import ShellGuard

SHELL = "asyncjobs.executors.remote:SHELL"
HTTP = "asyncjobs.executors.remote:HTTP"
CHUNK = "asyncjobs.executors.remote:CHUNK"
IO_CHUNK = "asyncjobs.executors.remote:IO_CHUNK"
BUILTINS = frozenset({SHELL, HTTP, CHUNK, IO_CHUNK})

#: (reference, args, kwargs): a call as plain data
WireCall = tuple[str, tuple[Any, ...], dict[str, Any]]


def shell_wire(command: str, env: dict[str, str], cwd: str | None) -> WireCall:
    """A shell step as it travels: ``env`` holds the step's own variables only."""
    return SHELL, (command,), {"env": env, "cwd": cwd}


def http_wire(method: str, url: str, **kwargs: Any) -> WireCall:
    return HTTP, (method, url), kwargs


def io_chunk_wire(calls: list[Call]) -> WireCall:
    """Several io calls as one attempt of ``IO_CHUNK``.

    :raises TargetError: as ``to_wire``, for the first call that cannot travel
    """
    return IO_CHUNK, ([to_wire(c) for c in calls],), {}


def to_wire(call: Call) -> WireCall:
    """The call as a reference and plain data.

    :raises TargetError: if its function cannot be imported by name on a node (a lambda,
        a local function, a function of ``__main__``)
    """
    if call.remote is not None:
        return call.remote
    if call.fn is run_chunk:
        fn, calls, *rest = call.args
        return CHUNK, (reference_of(fn), calls, rest[0] if rest else None), {}
    return reference_of(call.fn), call.args, call.kwargs


class NodeCalls:
    """A node's half: rebuilds each attempt's call from its reference, importing each
    user target once (and remembering a target that failed to import, so a thousand
    attempts of a missing module cost one import).

    :param shell_guard: kills shell steps' process groups if the node dies
    :param http: the node's HTTP session for http steps
    """

    def __init__(self, *, shell_guard: ShellGuard | None = None,
                 http: HttpClient | None = None) -> None:
        self._shell_guard = shell_guard
        self._http = http
        self._targets: dict[str, Target | TargetError] = {}

    def target(self, ref: str) -> Target:
        """The resolved target of a user reference (cached).

        :raises TargetError: if it cannot be imported
        """
        found = self._targets.get(ref)
        if found is None:
            try:
                found = resolve_target(ref)
            except TargetError as exc:
                found = exc
            self._targets[ref] = found
        if isinstance(found, TargetError):
            raise found
        return found

    def to_import(self, ref: str, args: tuple[Any, ...]) -> str | None:
        """The user reference an attempt of ``ref`` would import first, if it has not been
        tried yet (None: a builtin, or imported already)."""
        if ref == CHUNK:
            ref = args[0] if args and isinstance(args[0], str) else ""
        elif ref == IO_CHUNK:  # a flow's chunk: its calls share one target
            first = args[0][0] if args and args[0] and args[0][0] else ()
            ref = first[0] if first and isinstance(first[0], str) else ""
        if not ref or ref in BUILTINS or ref in self._targets:
            return None
        return ref

    def preload(self, refs: Iterable[str]) -> None:
        """Import these references now, remembering each outcome as ``target`` does. A
        node calls this in a thread: a module that takes seconds to import (a large ML
        library) must not stop the event loop, whose heartbeats keep the node alive."""
        for ref in refs:
            with contextlib.suppress(TargetError):
                self.target(ref)

    def build(self, ref: str, args: tuple[Any, ...], kwargs: dict[str, Any] | None,
              kind: JobKind | None, timeout_s: float | None,
              at_once: int = 1) -> tuple[Call, JobKind]:
        """The call an attempt runs, and its kind (``kind`` given, else the target's).
        ``at_once``: how many calls of an ``IO_CHUNK`` may run together.

        :raises TargetError: if the reference cannot be imported
        :raises ValueError: for arguments of a builtin that do not fit it
        """
        kwargs = kwargs or {}
        if ref == IO_CHUNK:
            from .iochunk import run_io_chunk

            (wire_calls,) = args
            built = [self.build(r, tuple(a), k, JobKind.IO, timeout_s)[0]
                     for r, a, k in wire_calls]
            return Call(run_io_chunk, (built, at_once), {}, None), JobKind.IO
        if ref == SHELL:
            from .shell import run_shell

            (command,) = args
            env = dict(os.environ)
            env.update({str(k): str(v) for k, v in (kwargs.get("env") or {}).items()})
            cwd = kwargs.get("cwd")
            if cwd is not None and not os.path.isdir(cwd):
                cwd = None  # the client's folder is not on this machine: run in ours
            return (Call(run_shell, (command,), {"env": env, "cwd": cwd,
                                                  "guard": self._shell_guard}, timeout_s),
                    JobKind.IO)
        if ref == HTTP:
            if self._http is None:
                from .http import HttpClient

                self._http = HttpClient()
            return Call(self._http.request, tuple(args), kwargs, timeout_s), JobKind.IO
        if ref == CHUNK:
            fn_ref, calls, chunk_kwargs = args
            target = self.target(fn_ref)
            calls = [tuple(c) for c in calls]
            return (Call(run_chunk, (target.fn, calls, chunk_kwargs), {}, timeout_s),
                    kind or target.kind)
        target = self.target(ref)
        timeout = timeout_s if timeout_s is not None else target.timeout_s
        return Call(target.fn, tuple(args), kwargs, timeout), kind or target.kind

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
