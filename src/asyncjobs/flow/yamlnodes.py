"""A flow file's bytes to plain values, remembering the line of every key: errors must
say where.

How this works: the bytes are checked first (size, UTF-8, printable characters), then
PyYAML's parser (libyaml's, when installed) turns the text into *events*, and this module
builds the values from them itself, in one loop over an explicit stack. PyYAML's own
constructors never run. The rules this keeps:

1. Only plain values come out: text, whole numbers, floats, true/false, null, lists and
   mappings. An explicit tag other than ``!!str !!int !!float !!bool !!null !!seq !!map``
   is an error naming its line. An unquoted date stays text (as in YAML 1.2).
2. Nesting is at most ``MAX_DEPTH`` lists and mappings deep, aliases included, so what
   walks the values later never recurses too deep; nothing here recurses at all.
3. An alias (``*name``) reuses its anchor's value, never copies it. The values it adds to
   the document (its anchor's size, known since the anchor closed) are counted, and past
   ``MAX_ALIAS_VALUES`` the file is refused: an alias bomb costs its own size, no more.
4. A merge key (``<<``) takes a mapping or a list of mappings; the mapping's own keys win,
   then the merged mappings in the order written. Mapping keys are plain values.
5. A duplicate key is an error, not a silent overwrite.
6. Every exception the YAML library or a conversion raises becomes a ``FlowError`` here,
   where the text enters.
"""

from __future__ import annotations

import codecs
import os
import re
import stat
from typing import TYPE_CHECKING, Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

from ..errors import FlowError

if TYPE_CHECKING:
    from pathlib import Path

try:
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

#: a flow file larger than this is refused before it is parsed (``load_flow(max_bytes=)``)
MAX_FLOW_BYTES = 10 * 2**20
#: lists and mappings nested deeper than this are refused (a real flow nests < 10 deep)
MAX_DEPTH = 100
#: values that aliases may add to a document beyond the ones written out
MAX_ALIAS_VALUES = 1_000_000

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL, _SEQ, _MAP, _MERGE = (
    _TAG + t for t in ("str", "int", "float", "bool", "null", "seq", "map", "merge")
)
_SCALAR_TAGS = frozenset({_STR, _INT, _FLOAT, _BOOL, _NULL})
_ALLOWED = "!!str !!int !!float !!bool !!null !!seq !!map"
#: the implicit types of YAML 1.1 that stay (timestamps and ``=`` are read as text)
_RESOLVERS: dict[str, list[tuple[str, re.Pattern[str]]]] = {
    first: kept
    for first, pairs in Resolver.yaml_implicit_resolvers.items()
    if first is not None
    and (kept := [(t, rx) for t, rx in pairs if t in (_BOOL, _NULL, _INT, _FLOAT, _MERGE)])
}
_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
#: what YAML allows in a stream (PyYAML's Reader), less a byte order mark past the start;
#: compiled on first use (~4 ms for its ranges), for a file that is not all ASCII
_NON_PRINTABLE = (
    "[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]"
)
#: the same, for an ASCII text
_NON_PRINTABLE_ASCII = re.compile("[^\x09\x0a\x0d\x20-\x7e]")
#: control characters, which a terminal obeys rather than shows, and bidi overrides
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with control characters written as escapes (``\\x1b``), safe to print."""
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def control_character(text: str) -> str | None:
    """The first control character in ``text`` as ``U+001B``, or None."""
    m = _CONTROL.search(text)
    return None if m is None else f"U+{ord(m.group()):04X}"


class Located:
    """Plain values plus the 1-based line of each dotted key path (``jobs.a.needs``).

    Lines are kept for keys reached through mappings only; a key inside a list, or inside
    an alias, answers with the line of its nearest ancestor that has one.
    """

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
        """A ``FlowError`` at ``key``'s line; control characters in the key or message
        are escaped, since the error is printed on a terminal."""
        return FlowError(printable(message), path=self.path, line=self.line(key),
                         key=printable(key) or None)


def _where(text: str, pos: int) -> tuple[int, int]:
    """1-based line and column of ``pos`` in ``text``."""
    line_start = text.rfind("\n", 0, pos) + 1
    return text.count("\n", 0, pos) + 1, pos - line_start + 1


def read_flow(path: Path, max_bytes: int = MAX_FLOW_BYTES) -> str:
    """The text of a flow file: at most ``max_bytes`` of UTF-8 (a byte order mark is
    allowed). ``load_yaml`` checks its characters.

    :raises FlowError: for a file that cannot be read, is too large or is not UTF-8,
        naming where
    """
    try:
        with path.open("rb") as handle:
            info = os.fstat(handle.fileno())
            if stat.S_ISREG(info.st_mode) and info.st_size > max_bytes:
                raise _too_large(str(path), info.st_size, max_bytes)
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise FlowError(f"cannot read the flow file: {exc.strerror or exc}",
                        path=str(path)) from None
    if len(data) > max_bytes:
        raise _too_large(str(path), None, max_bytes)
    return decode_flow(data, str(path))


def _too_large(path: str, size: int | None, max_bytes: int) -> FlowError:
    what = "more than" if size is None else f"{size:,} bytes,"
    return FlowError(
        f"the flow file is {what} over the limit of {max_bytes:,} bytes; it is read whole, "
        "so a file this large needs a higher limit (asyncjobs run --max-file-size, or "
        "max_file_bytes= in Python)", path=path,
    )


def decode_flow(data: bytes, path: str) -> str:
    """Bytes to text: UTF-8 only, with a clear error for anything else.

    :raises FlowError: naming the first byte that is not UTF-8 (offset, line, column),
        or a UTF-16/UTF-32 byte order mark
    """
    skip = 0
    if data.startswith(codecs.BOM_UTF8):
        skip = len(codecs.BOM_UTF8)
    elif data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise FlowError("the flow file is UTF-32 (it starts with a UTF-32 byte order mark); "
                        "save it as UTF-8", path=path, line=1)
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise FlowError("the flow file is UTF-16 (it starts with a UTF-16 byte order mark); "
                        "save it as UTF-8", path=path, line=1)
    try:
        text = data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        pos = exc.start + skip
        line = data.count(b"\n", 0, pos) + 1
        column = pos - (data.rfind(b"\n", 0, pos) + 1) + 1
        raise FlowError(
            f"the flow file is not UTF-8: byte 0x{data[pos]:02x} at offset {pos} (line "
            f"{line}, column {column}) is {exc.reason}; save the file as UTF-8",
            path=path, line=line,
        ) from None
    return text


def check_printable(text: str, path: str) -> None:
    """:raises FlowError: for the first character YAML does not allow in a stream"""
    pattern = _NON_PRINTABLE_ASCII if text.isascii() else re.compile(_NON_PRINTABLE)
    m = pattern.search(text)
    if m is None:
        return
    line, column = _where(text, m.start())
    code = ord(m.group())
    if code == 0:
        what = "a NUL byte (is this a binary file, or UTF-16 without a byte order mark?)"
    elif code == 0xFEFF:
        what = "a byte order mark (U+FEFF) past the start of the file"
    else:
        what = f"the control character U+{code:04X}"
    raise FlowError(
        f"line {line}, column {column}: {what} is not allowed in a YAML file; inside "
        'double quotes write it as an escape ("\\x07", "\\u001b")', path=path, line=line,
    )


def load_yaml(
    text: str, path: str, *, max_depth: int = MAX_DEPTH,
    max_alias_values: int = MAX_ALIAS_VALUES,
) -> Located:
    """Parse ``text`` (one YAML document) into plain values (rules 1-6 above).

    :param max_depth: lists and mappings nested deeper than this are refused
    :param max_alias_values: values aliases may add beyond the ones written out
    :raises FlowError: on a YAML syntax error, a tag or value that is not plain, a
        duplicate key, nesting too deep or aliases that expand too far, with its line
    """
    check_printable(text, path)
    loader = _Loader(text)
    try:
        return _Builder(path, max_depth, max_alias_values).run(loader)
    except FlowError:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or str(exc)
        raise FlowError(f"YAML syntax error: {problem}", path=path, line=line) from None
    except yaml.reader.ReaderError as exc:
        line = _where(text, exc.position)[0] if isinstance(exc.position, int) else None
        raise FlowError(f"YAML syntax error: {exc.reason}", path=path, line=line) from None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise FlowError(f"YAML syntax error: {exc}", path=path) from None
    finally:
        loader.dispose()


class _Frame:
    """A list or mapping being built."""

    __slots__ = ("value", "is_map", "path", "record", "size", "height", "anchor", "key",
                 "has_key", "key_is_merge", "merges")

    def __init__(self, value: Any, path: str, record: bool, anchor: str | None) -> None:
        self.value = value
        self.is_map = isinstance(value, dict)
        #: dotted key path (``jobs.a.args.2``)
        self.path = path
        #: whether the lines of this mapping's keys are kept (only under mappings)
        self.record = record
        #: values in it, aliases expanded, itself included on close
        self.size = 0
        #: the deepest nesting below it
        self.height = 0
        self.anchor = anchor
        self.key: Any = None
        self.has_key = False
        self.key_is_merge = False
        #: mappings merged in (``<<``), in the order their keys apply
        self.merges: list[dict[Any, Any]] = []


class _Builder:
    def __init__(self, path: str, max_depth: int, max_alias_values: int) -> None:
        self.path = path
        self.max_depth = max_depth
        self.max_alias_values = max_alias_values
        self.lines: dict[str, int] = {}
        #: anchor name -> (value, size, height)
        self.anchors: dict[str, tuple[Any, int, int]] = {}
        self.open_anchors: set[str] = set()
        self.alias_values = 0
        self.stack: list[_Frame] = []
        self.root: Any = None
        self.bool_values = SafeConstructor.bool_values

    def fail(self, line: int | None, message: str) -> FlowError:
        key = ""
        if self.stack:
            top = self.stack[-1]
            key = top.path
            if top.is_map and top.has_key:
                key = f"{key}.{top.key}" if key else str(top.key)
        return FlowError(printable(message), path=self.path, line=line,
                         key=printable(key) or None)

    def run(self, loader: Any) -> Located:
        get_event = loader.get_event
        stack = self.stack
        documents = 0
        while True:
            event = get_event()
            cls = type(event)
            line = event.start_mark.line + 1
            if cls is yaml.ScalarEvent:
                value = self.scalar(event, line)
                if event.anchor is not None:
                    self.anchors[event.anchor] = ("<<" if value is _MERGE_KEY else value, 1, 0)
                self.add(value, 1, 0, line)
            elif cls is yaml.MappingStartEvent or cls is yaml.SequenceStartEvent:
                self.start(event, line, cls is yaml.MappingStartEvent)
            elif cls is yaml.MappingEndEvent or cls is yaml.SequenceEndEvent:
                frame = stack.pop()
                value = frame.value
                if frame.merges:
                    merged: dict[Any, Any] = {}
                    for source in frame.merges:
                        merged.update(source)
                    merged.update(value)
                    value = merged
                size, height = frame.size + 1, frame.height + 1
                if frame.anchor is not None:
                    self.anchors[frame.anchor] = (value, size, height)
                    self.open_anchors.discard(frame.anchor)
                self.add(value, size, height, line)
            elif cls is yaml.AliasEvent:
                self.alias(event.anchor, line)
            elif cls is yaml.DocumentStartEvent:
                documents += 1
                if documents > 1:
                    raise FlowError("a flow file holds one YAML document; a second one "
                                    "starts here (---)", path=self.path, line=line)
            elif cls is yaml.StreamEndEvent:
                return Located(self.root, self.lines, self.path)

    def start(self, event: Any, line: int, is_map: bool) -> None:
        tag = event.tag
        if tag is not None and tag != "!" and tag != (_MAP if is_map else _SEQ):
            what = "a mapping" if is_map else "a list"
            raise self.fail(line, f"the tag {_tag_text(tag)} is not accepted on {what} "
                            f"(only the plain YAML types are: {_ALLOWED})")
        stack = self.stack
        if len(stack) >= self.max_depth:
            raise self.fail(line, f"lists and mappings are nested more than {self.max_depth} "
                            "deep here")
        anchor = event.anchor
        if anchor is not None:
            self.open_anchors.add(anchor)
        value: Any = {} if is_map else []
        if not stack:
            self.lines[""] = line
            stack.append(_Frame(value, "", True, anchor))
            return
        top = stack[-1]
        if top.is_map:
            if not top.has_key:
                raise self.fail(line, "a mapping key must be a plain value (text or a "
                                "number), not a list or mapping")
            path = f"{top.path}.{top.key}" if top.path else str(top.key)
            stack.append(_Frame(value, path, top.record, anchor))
        else:
            stack.append(_Frame(value, f"{top.path}.{len(top.value)}", False, anchor))

    def alias(self, name: str, line: int) -> None:
        if name in self.open_anchors:
            raise self.fail(line, f"the alias *{name} is used inside the value it names "
                            f"(&{name}); a flow file cannot hold a recursive structure")
        found = self.anchors.get(name)
        if found is None:
            raise self.fail(line, f"the alias *{name} names no anchor: write &{name} on a "
                            "value before it")
        value, size, height = found
        self.alias_values += size
        if self.alias_values > self.max_alias_values:
            raise self.fail(line, f"aliases expand to more than {self.max_alias_values:,} "
                            "values (each *alias repeats its anchor's whole value); a "
                            "file this large by aliases is refused (an alias bomb?)")
        if len(self.stack) + height > self.max_depth:
            raise self.fail(line, f"the alias *{name} nests lists and mappings more than "
                            f"{self.max_depth} deep here")
        self.add(value, size, height, line)

    def add(self, value: Any, size: int, height: int, line: int) -> None:
        stack = self.stack
        if not stack:
            self.root = value
            self.lines.setdefault("", line)
            return
        top = stack[-1]
        top.size += size
        if not top.is_map:
            top.value.append(value)
            if height > top.height:
                top.height = height
            return
        if not top.has_key:
            self.set_key(top, value, line)
            return
        top.has_key = False
        if top.key_is_merge:
            self.merge(top, value, height, line)
            return
        top.value[top.key] = value
        if height > top.height:
            top.height = height

    def set_key(self, top: _Frame, key: Any, line: int) -> None:
        if isinstance(key, dict | list):
            raise self.fail(line, "a mapping key must be a plain value (text or a number), "
                            "not a list or mapping")
        top.has_key = True
        top.key_is_merge = key is _MERGE_KEY
        if top.key_is_merge:
            top.key = "<<"
            return
        top.key = key
        if key in top.value:
            path = f"{top.path}.{key}" if top.path else str(key)
            raise FlowError(printable(f"duplicate key {key!r}"), path=self.path, line=line,
                            key=printable(path))
        if top.record:
            self.lines[f"{top.path}.{key}" if top.path else str(key)] = line

    def merge(self, top: _Frame, value: Any, height: int, line: int) -> None:
        if isinstance(value, dict):
            top.merges.append(value)
            top.height = max(top.height, height - 1)
            return
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            top.merges.extend(reversed(value))  # the first mapping listed wins
            top.height = max(top.height, height - 2)
            return
        raise self.fail(line, "a merge key (<<) takes a mapping or a list of mappings, "
                        f"got {_kind(value)}")

    def scalar(self, event: Any, line: int) -> Any:
        tag = event.tag
        value: str = event.value
        if tag is None or tag == "!":
            if not event.implicit[0]:
                return value
            resolved = _STR
            for candidate, regexp in _RESOLVERS.get(value[:1], ()):
                if regexp.match(value):
                    resolved = candidate
                    break
            if resolved is _STR:
                return value
            if resolved == _MERGE:
                top = self.stack[-1] if self.stack else None
                return _MERGE_KEY if top is not None and top.is_map and not top.has_key \
                    else value
            tag = resolved
        elif tag not in _SCALAR_TAGS:
            raise self.fail(line, f"the tag {_tag_text(tag)} is not accepted (only the plain "
                            f"YAML types are: {_ALLOWED})")
        return self.construct(tag, value, line)

    def construct(self, tag: str, value: str, line: int) -> Any:
        if tag == _STR:
            return value
        if tag == _NULL:
            if value not in _NULLS:
                raise self.fail(line, f"!!null takes ~, null or nothing, got {_short(value)}")
            return None
        if tag == _BOOL:
            found = self.bool_values.get(value.lower())
            if found is None:
                raise self.fail(line, f"!!bool takes true/false (or yes/no, on/off), got "
                                f"{_short(value)}")
            return found
        node = yaml.ScalarNode(tag, value)
        try:
            if tag == _INT:
                return SafeConstructor.construct_yaml_int(_CONSTRUCTOR, node)
            return SafeConstructor.construct_yaml_float(_CONSTRUCTOR, node)
        except (ValueError, IndexError, KeyError, OverflowError, yaml.YAMLError) as exc:
            kind = "whole number" if tag == _INT else "number"
            if len(value) > 40:
                digits = sum(c.isdigit() for c in value)
                raise self.fail(line, f"{_short(value)} ({len(value):,} characters, {digits:,} "
                                f"digits) is too long for a {kind}; quote it to keep it as "
                                "text") from None
            raise self.fail(line, f"{_short(value)} is not a {kind} ({exc})") from None


class _MergeKey:
    """The plain ``<<`` key of a mapping (rule 4)."""


_MERGE_KEY = _MergeKey()
_CONSTRUCTOR = SafeConstructor()


def _tag_text(tag: str) -> str:
    short = "!!" + tag[len(_TAG):] if tag.startswith(_TAG) else tag
    return repr(short)


def _short(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:20] + "…" + value[-10:])


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "text", bool: "true/false",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)
