"""YAML to plain values, remembering the line of every key: errors must say where.

Only PyYAML's safe constructors run (no arbitrary objects), and duplicate keys are an
error rather than a silent overwrite.
"""

from __future__ import annotations

from typing import Any

import yaml

from ..errors import FlowError


class Located:
    """Plain values plus the 1-based line of each dotted key path (``jobs.a.needs``)."""

    def __init__(self, value: Any, lines: dict[str, int], path: str) -> None:
        self.value = value
        self.lines = lines
        self.path = path

    def line(self, key: str) -> int | None:
        """The line of ``key``, or of its nearest ancestor that has one."""
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key.rpartition(".")[0]
        return self.lines.get("")

    def error(self, key: str, message: str) -> FlowError:
        return FlowError(message, path=self.path, line=self.line(key), key=key or None)


def load_yaml(text: str, path: str) -> Located:
    """Parse ``text`` safely.

    :raises FlowError: on a YAML syntax error or a duplicate key, with its line
    """
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else None
            problem = exc.problem or str(exc)
            raise FlowError(f"YAML syntax error: {problem}", path=path, line=line) from None
        except yaml.YAMLError as exc:
            raise FlowError(f"YAML syntax error: {exc}", path=path) from None
        lines: dict[str, int] = {}
        value = None if node is None else _convert(loader, node, "", lines, path)
        if node is not None:
            lines[""] = node.start_mark.line + 1
        return Located(value, lines, path)
    finally:
        loader.dispose()


def _convert(
    loader: yaml.SafeLoader, node: yaml.Node, key: str, lines: dict[str, int], path: str
) -> Any:
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # merge keys (<<) as PyYAML would
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            name = loader.construct_object(key_node, deep=True)
            child = f"{key}.{name}" if key else str(name)
            if name in out:
                raise FlowError(
                    f"duplicate key {name!r}", path=path,
                    line=key_node.start_mark.line + 1, key=child,
                )
            lines[child] = key_node.start_mark.line + 1
            out[name] = _convert(loader, value_node, child, lines, path)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item_node in enumerate(node.value):
            child = f"{key}.{i}"
            lines[child] = item_node.start_mark.line + 1
            items.append(_convert(loader, item_node, child, lines, path))
        return items
    return loader.construct_object(node, deep=True)
