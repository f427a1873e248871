"""``{{ … }}`` templates. Never evaluated as Python: an expression is a dotted path under
one of four roots (``item``, ``params``, ``env``, ``results``), looked up, nothing else.

A string that is exactly one template keeps the value's type (``"{{ params.count }}"``
gives the int); inside other text a value becomes text (JSON for lists and dicts).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import FlowError

ROOTS = ("item", "params", "env", "results")
_TEMPLATE = re.compile(r"\{\{(.*?)\}\}")
_EXPR = re.compile(r"^(item|params|env|results)((?:\.[A-Za-z0-9_\-]+)*)$")
_MISSING = object()


class TemplateError(FlowError):
    """A template names something that is not there (raised while rendering)."""


@dataclass(frozen=True, slots=True)
class Ref:
    """One ``{{ root.path }}``; ``path`` is the dotted rest (empty for ``{{ item }}``)."""

    root: str
    path: tuple[str, ...]
    text: str

    @property
    def name(self) -> str:
        """The first name after the root: the param, env var or job it refers to."""
        return self.path[0] if self.path else ""


@functools.lru_cache(maxsize=4096)  # every item of a foreach renders the same templates
def parse_expr(expr: str) -> Ref:
    """Parse what stands between ``{{`` and ``}}``.

    :raises ValueError: for anything but a dotted path under a known root
    """
    text = expr.strip()
    m = _EXPR.match(text)
    if not m:
        raise ValueError(
            f"template {{{{ {text} }}}} is not a dotted name under one of "
            f"{', '.join(ROOTS)} (templates are looked up, never evaluated)"
        )
    path = tuple(p for p in m.group(2).split(".") if p)
    if m.group(1) in ("params", "env", "results") and not path:
        raise ValueError(f"template {{{{ {text} }}}} needs a name: {m.group(1)}.NAME")
    return Ref(m.group(1), path, text)


def references(value: Any) -> list[Ref]:
    """Every template reference in a value (strings, lists and dicts, recursively).

    :raises ValueError: for a malformed template
    """
    found: list[Ref] = []
    if isinstance(value, str):
        found.extend(parse_expr(m.group(1)) for m in _TEMPLATE.finditer(value))
    elif isinstance(value, list):
        for v in value:
            found.extend(references(v))
    elif isinstance(value, dict):
        for k, v in value.items():
            found.extend(references(k))
            found.extend(references(v))
    return found


@dataclass(slots=True)
class TemplateContext:
    params: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    results: Mapping[str, Any] = field(default_factory=dict)
    item: Any = _MISSING


def lookup(ref: Ref, ctx: TemplateContext) -> Any:
    """The value a reference names.

    :raises TemplateError: when it names something that is not there
    """
    roots: dict[str, Any] = {
        "item": ctx.item, "params": ctx.params, "env": ctx.env, "results": ctx.results,
    }
    value = roots[ref.root]
    if value is _MISSING:
        raise TemplateError(f"{{{{ {ref.text} }}}}: there is no item outside a foreach job")
    walked = [ref.root]
    for part in ref.path:
        walked.append(part)
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list | tuple) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise TemplateError(f"{{{{ {ref.text} }}}}: {'.'.join(walked)} is not there")
    return value


def _as_text(value: Any) -> str:
    if type(value) is str:
        return value
    if type(value) is int:
        return str(value)
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list | tuple | bool) or value is None:
        return json.dumps(value)
    return str(value)


def _getter(ref: Ref) -> Callable[[TemplateContext], Any]:
    """``lookup`` of one reference, with the common forms (``item``, ``params.X``) made
    direct: compiled templates run once per foreach item."""
    if ref.root == "item" and not ref.path:
        def item(ctx: TemplateContext) -> Any:
            value = ctx.item
            if value is _MISSING:
                return lookup(ref, ctx)  # raises, with the message
            return value

        return item
    if ref.root == "params" and len(ref.path) == 1:
        name = ref.path[0]

        def param(ctx: TemplateContext) -> Any:
            params = ctx.params
            if name in params:
                return params[name]
            return lookup(ref, ctx)  # raises, with the message

        return param
    return lambda ctx: lookup(ref, ctx)


def compile_template(value: Any) -> Callable[[TemplateContext], Any]:
    """``render`` prepared once for a value rendered many times (every foreach item):
    parts without templates become constants, a whole template a direct lookup.

    :raises ValueError: for a malformed template
    """
    if isinstance(value, str):
        if "{{" not in value:
            return lambda ctx: value
        whole = _TEMPLATE.fullmatch(value.strip())
        if whole and value.strip().count("{{") == 1:
            return _getter(parse_expr(whole.group(1)))
        pieces: list[str | Callable[[TemplateContext], Any]] = []
        last = 0
        for m in _TEMPLATE.finditer(value):
            pieces.append(value[last:m.start()])
            pieces.append(_getter(parse_expr(m.group(1))))
            last = m.end()
        pieces.append(value[last:])
        if len(pieces) == 3:  # "text {{ ref }} text", the usual form
            head, get, tail = pieces
            assert isinstance(head, str) and isinstance(tail, str) and callable(get)
            return lambda ctx: head + _as_text(get(ctx)) + tail
        return lambda ctx: "".join(
            [p if isinstance(p, str) else _as_text(p(ctx)) for p in pieces]
        )
    if isinstance(value, list):
        if not references(value):
            return lambda ctx: list(value)
        items = [compile_template(v) for v in value]
        return lambda ctx: [f(ctx) for f in items]
    if isinstance(value, dict):
        if not references(value):
            return lambda ctx: dict(value)
        pairs = [(compile_template(k), compile_template(v)) for k, v in value.items()]
        return lambda ctx: {k(ctx): v(ctx) for k, v in pairs}
    return lambda ctx: value


def render(value: Any, ctx: TemplateContext) -> Any:
    """Fill in every template in ``value`` (strings, lists and dicts, recursively).

    :raises TemplateError: when a template names something that is not there
    """
    if isinstance(value, str):
        whole = _TEMPLATE.fullmatch(value.strip())
        if whole and value.strip().count("{{") == 1:
            return lookup(parse_expr(whole.group(1)), ctx)
        if "{{" not in value:
            return value
        return _TEMPLATE.sub(lambda m: _as_text(lookup(parse_expr(m.group(1)), ctx)), value)
    if isinstance(value, list):
        return [render(v, ctx) for v in value]
    if isinstance(value, dict):
        return {render(k, ctx): render(v, ctx) for k, v in value.items()}
    return value
