"""What a job calls: ``"module:attribute"`` resolved, ``@asyncjobs.job`` defaults read, and
the one kind inference, shared by ``Runner.submit``/``map`` and by flows.

Kind inference unwraps what wraps a function without changing how it runs
(``functools.partial``, bound methods, objects with ``__call__``): an ``async def``
anywhere under those runs as ``io``, anything else as ``cpu``. ``@asyncjobs.job(kind=...)``
overrides it. Before this module the API and the flow loader each had a rule of their
own, and an object with ``async def __call__`` ran as ``io`` through ``submit`` but as
``cpu`` from a flow.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .marks import DEFAULTS_ATTR
from .model import JobKind

if TYPE_CHECKING:
    from collections.abc import Callable


class TargetError(ImportError):
    """A ``"module:attribute"`` that cannot be resolved to a callable. The message says
    which part failed and, for a typo, the closest name."""


@dataclass(frozen=True, slots=True)
class Target:
    """A callable with the settings its jobs run under unless a job says otherwise."""

    fn: Callable[..., Any]
    #: a short name for job ids, e.g. ``"hits"``
    name: str
    kind: JobKind
    timeout_s: float | None = None
    retries: int = 0
    backoff_s: float = 1.0


def _innermost(fn: Any) -> Any:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return fn


def infer_kind(fn: Any) -> JobKind:
    """``io`` for an ``async def`` (also inside a partial, a bound method, or an object's
    ``__call__``), ``cpu`` for anything else."""
    inner = _innermost(fn)
    if inspect.iscoroutinefunction(inner):
        return JobKind.IO
    call = getattr(type(inner), "__call__", None)  # noqa: B004 - callable objects
    if call is not None and inspect.iscoroutinefunction(_innermost(call)):
        return JobKind.IO
    return JobKind.CPU


def resolve_ref(ref: str) -> Callable[..., Any]:
    """Import ``"module:attribute"`` (the attribute may be dotted).

    :raises TargetError: if ``ref`` is not of that form, the module cannot be imported
        (whatever its import raised, ``SystemExit`` included), the attribute is missing,
        or it is not callable
    """
    if not isinstance(ref, str):
        raise TargetError(f"expected 'module:attribute', got {ref!r}")
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise TargetError(f"expected 'module:attribute', got {ref!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # user code at import: anything may escape
        raise TargetError(f"cannot import module {module_name!r} for {ref!r}: "
                          f"{type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            import difflib  # here: only a bad reference needs it

            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TargetError(f"module {module_name!r} has no attribute {attr!r}{hint}") from None
    if not callable(obj):
        raise TargetError(f"{ref!r} is not callable")
    return obj  # type: ignore[no-any-return]


def reference_of(fn: Callable[..., Any]) -> str:
    """The ``"module:attribute"`` a node imports ``fn`` by (remembered per function: a
    map of 100,000 calls checks its function once).

    :raises TargetError: if ``fn`` has no such name: a lambda, a function defined inside
        another, a partial, a callable object, or anything of ``__main__`` (a node's
        ``__main__`` is not the client's)
    """
    try:
        return _REFERENCES[fn]
    except (KeyError, TypeError):  # TypeError: unhashable; checked each time
        pass
    ref = _reference_of(fn)
    with contextlib.suppress(TypeError):
        if len(_REFERENCES) >= _REFERENCES_MAX:
            _REFERENCES.clear()
        _REFERENCES[fn] = ref
    return ref


_REFERENCES: dict[Any, str] = {}
_REFERENCES_MAX = 4096


def _reference_of(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        raise TargetError(f"{fn!r} cannot be sent to a cluster: nodes import a job's "
                          f"callable by its module and name, and it has none (a lambda, a "
                          f"local function, a partial or a callable object); define it at "
                          f"the top level of a module, or pass 'module:attribute'")
    if module == "__main__":
        raise TargetError(f"{fn!r} cannot be sent to a cluster: it is defined in __main__, "
                          f"which nodes cannot import; move it to a module of its own")
    ref = f"{module}:{qualname}"
    try:
        same = resolve_ref(ref) is fn
    except TargetError:
        same = False
    if not same:
        raise TargetError(f"{fn!r} cannot be sent to a cluster: {ref!r} does not import "
                          f"as the same object here, so a node would not find it either")
    return ref


def resolve_target(fn: Callable[..., Any] | str) -> Target:
    """The callable (imported, for a ``"module:attribute"``) and its job defaults.

    :raises TargetError: for a reference that cannot be resolved
    :raises TypeError: if ``fn`` is neither callable nor text
    """
    if isinstance(fn, str):
        fn = resolve_ref(fn)
    elif not callable(fn):
        raise TypeError(f"a job needs a callable or 'module:attribute', not {fn!r}")
    inner = _innermost(fn)
    name = getattr(inner, "__name__", None) or type(inner).__name__
    marks: dict[str, Any] = getattr(inner, DEFAULTS_ATTR, None) or {}
    kind = marks.get("kind")
    retries = marks.get("retries")
    backoff = marks.get("backoff")
    return Target(
        fn=fn, name=name, kind=infer_kind(fn) if kind is None else JobKind(kind),
        timeout_s=marks.get("timeout"), retries=0 if retries is None else retries,
        backoff_s=1.0 if backoff is None else backoff,
    )
