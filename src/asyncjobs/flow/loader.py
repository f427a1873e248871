"""Load and validate jobs.yaml (version 1). Every error names the file, the line, the
key at fault and what was expected, and suggests the closest key for a typo."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import parse_duration, parse_rate
from ..errors import FlowError
from ..model import JobKind
from ..targets import TargetError, resolve_target
from .spec import (
    Action,
    CallAction,
    FlowSpec,
    Foreach,
    HttpAction,
    JobDef,
    LimitSpec,
    ShellAction,
)
from .template import references
from .yamlnodes import (
    MAX_FLOW_BYTES,
    Located,
    control_character,
    load_yaml,
    read_flow,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ..targets import Target

TOP_KEYS = ("name", "version", "params", "defaults", "limits", "jobs")
DEFAULT_KEYS = ("retries", "backoff", "timeout")
LIMIT_KEYS = ("concurrency", "rate")
ACTIONS = ("call", "shell", "http")
JOB_KEYS = (*ACTIONS, "needs", "foreach", "limit", "kind", "retries", "backoff", "timeout",
            "args", "kwargs", "env", "cwd")
HTTP_KEYS = ("method", "url", "json", "data", "headers", "expect")
FOREACH_KEYS = ("range", "lines")


def _suggest(word: str, choices: tuple[str, ...] | list[str]) -> str:
    import difflib  # here: only a bad file needs it

    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


class _Checker:
    def __init__(self, doc: Located, resolve: Callable[[str], Target]) -> None:
        self.doc = doc
        self._resolve = resolve
        #: each reference resolved once, however many jobs call it
        self._targets: dict[str, Target | TargetError] = {}

    def target(self, ref: str, key: str) -> Target:
        found = self._targets.get(ref)
        if found is None:
            try:
                found = self._resolve(ref)
            except TargetError as exc:
                found = exc
            self._targets[ref] = found
        if isinstance(found, TargetError):
            raise self.fail(key, str(found))
        return found

    def fail(self, key: str, message: str) -> Exception:
        return self.doc.error(key, message)

    def mapping(self, value: Any, key: str, what: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"{what} must be a mapping, got {_kind(value)}")
        for k in value:
            if not isinstance(k, str):
                raise self.fail(key, f"keys of {what} must be text, got {k!r}")
        return value

    def keys(self, value: dict[str, Any], allowed: tuple[str, ...], key: str, what: str) -> None:
        for k in value:
            if k not in allowed:
                where = f"{key}.{k}" if key else k
                raise self.fail(
                    where, f"unknown key {k!r} in {what}{_suggest(k, allowed)} "
                    f"(expected one of: {', '.join(allowed)})",
                )

    def int_at_least(self, value: Any, key: str, low: int, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise self.fail(key, f"{what} must be a whole number of at least {low}, got {value!r}")
        return value

    def duration(self, value: Any, key: str, *, positive: bool) -> float:
        try:
            seconds = parse_duration(value)
        except (ValueError, OverflowError) as exc:
            raise self.fail(key, str(exc)) from None
        if not math.isfinite(seconds):
            raise self.fail(key, f"must be a finite number of seconds, got {value!r}")
        if seconds < 0 or (positive and seconds == 0):
            need = "above 0" if positive else "0 or more"
            raise self.fail(key, f"must be {need} seconds, got {value!r}")
        return seconds

    def str_list(self, value: Any, key: str, what: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, f"{what} must be a list of names, got {_kind(value)}")
        return value


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "text", bool: "true/false",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _coerce_param(name: str, raw: str, default: Any, ck: _Checker) -> Any:
    try:
        if isinstance(default, bool):
            low = raw.strip().lower()
            if low in ("true", "yes", "1", "on"):
                return True
            if low in ("false", "no", "0", "off"):
                return False
            raise ValueError
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, str):
            return raw
        return load_yaml(raw, f"--param {name}").value
    except ValueError:  # FlowError included
        wanted = type(default).__name__
        raise ck.fail(f"params.{name}", f"--param {name}={raw!r}: expected a {wanted} "
                      f"like the default {default!r}") from None


def load_flow(
    path: str | Path,
    params_override: Mapping[str, Any] | None = None,
    *,
    text: str | None = None,
    resolve: Callable[[str], Target] = resolve_target,
    max_bytes: int = MAX_FLOW_BYTES,
) -> FlowSpec:
    """Read, parse and validate a flow file.

    :param params_override: ``--param K=V`` values; text is coerced to each default's type
    :param text: the file's text, if already read
    :param resolve: turns a ``call`` reference into its kind and job defaults, raising
        ``TargetError``; the default imports it here (a cluster client may check
        without importing)
    :param max_bytes: a larger flow file is refused before it is parsed (default 10 MiB)
    :raises FlowError: for the first problem found, with its line and key
    """
    path = Path(path)
    if text is None:
        text = read_flow(path, max_bytes)
    elif len(text) > max_bytes:
        raise FlowError(f"the flow text is {len(text):,} characters, over the limit of "
                        f"{max_bytes:,} bytes (max_file_bytes=)", path=str(path))
    doc = load_yaml(text, str(path))
    ck = _Checker(doc, resolve)
    top = ck.mapping(doc.value, "", "a flow file")
    ck.keys(top, TOP_KEYS, "", "the flow file")
    if top.get("version", 1) != 1:
        raise ck.fail("version", f"only version 1 is known, got {top['version']!r}")
    name = top.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise ck.fail("name", f"name must be text, got {_kind(name)}")
    _printed_name(ck, name, "name", "the flow's name")

    params = dict(ck.mapping(top.get("params") or {}, "params", "params"))
    for k, raw in (params_override or {}).items():
        if k not in params:
            raise ck.fail("params", f"--param {k}: the flow declares no param {k!r}"
                          f"{_suggest(k, list(params))}")
        params[k] = _coerce_param(k, raw, params[k], ck) if isinstance(raw, str) else raw

    defaults = ck.mapping(top.get("defaults") or {}, "defaults", "defaults")
    ck.keys(defaults, DEFAULT_KEYS, "defaults", "defaults")

    limits: dict[str, LimitSpec] = {}
    for lname, spec in ck.mapping(top.get("limits") or {}, "limits", "limits").items():
        key = f"limits.{lname}"
        _printed_name(ck, lname, key, f"limit name {lname!r}")
        if isinstance(spec, int) and not isinstance(spec, bool):
            spec = {"concurrency": spec}
        spec = ck.mapping(spec, key, f"limit {lname!r} (a number, or concurrency/rate)")
        ck.keys(spec, LIMIT_KEYS, key, f"limit {lname!r}")
        conc = spec.get("concurrency")
        if conc is not None:
            conc = ck.int_at_least(conc, f"{key}.concurrency", 1, "concurrency")
        rate = None
        if "rate" in spec:
            try:
                rate = parse_rate(spec["rate"])
            except ValueError as exc:
                raise ck.fail(f"{key}.rate", str(exc)) from None
        if conc is None and rate is None:
            raise ck.fail(key, f"limit {lname!r} needs a concurrency, a rate or both")
        limits[lname] = LimitSpec(conc, rate)

    jobs_raw = top.get("jobs")
    if jobs_raw is None:
        raise ck.fail("", "the flow file has no 'jobs'")
    jobs_raw = ck.mapping(jobs_raw, "jobs", "jobs")
    if not jobs_raw:
        raise ck.fail("jobs", "'jobs' is empty")
    jobs: dict[str, JobDef] = {}
    for jname, body in jobs_raw.items():
        _printed_name(ck, jname, f"jobs.{jname}", f"job name {jname!r}")
        jobs[jname] = _job(ck, jname, body, defaults, limits, path)
    spec = FlowSpec(name=name, path=str(path), params=params, limits=limits, jobs=jobs)
    _check_references(ck, spec)
    return spec


def _printed_name(ck: _Checker, name: str, key: str, what: str) -> None:
    """Names are kept as written, but reports print them: no control characters."""
    found = control_character(name)
    if found is not None:
        raise ck.fail(key, f"{what} holds the control character {found}; names are printed "
                      "in reports and on terminals, so write them without control characters")


def _job(ck: _Checker, jname: str, body: Any, defaults: dict[str, Any],
         limits: dict[str, LimitSpec], path: Path) -> JobDef:
    key = f"jobs.{jname}"
    body = ck.mapping(body, key, f"job {jname!r}")
    ck.keys(body, JOB_KEYS, key, f"job {jname!r}")
    given = [a for a in ACTIONS if a in body]
    if len(given) != 1:
        found = ", ".join(given) if given else "none"
        raise ck.fail(key, f"job {jname!r} must have exactly one of call, shell, http "
                      f"(found: {found})")
    action, marks = _action(ck, given[0], body[given[0]], f"{key}.{given[0]}")
    only_for = {"args": "call", "kwargs": "call", "env": "shell", "cwd": "shell"}
    for name, owner in only_for.items():
        if name in body and given[0] != owner:
            raise ck.fail(f"{key}.{name}", f"{name} applies to {owner} jobs; job {jname!r} "
                          f"is a {given[0]} job")

    kind = JobKind.IO if not isinstance(action, CallAction) else marks.pop("kind")
    if "kind" in body:
        try:
            kind = JobKind(body["kind"])
        except ValueError:
            raise ck.fail(f"{key}.kind", f"kind must be one of io, cpu, thread; got "
                          f"{body['kind']!r}") from None
        if not isinstance(action, CallAction) and kind is not JobKind.IO:
            raise ck.fail(f"{key}.kind", f"a {given[0]} job runs as io; kind {kind.value} "
                          "is only for call jobs")

    def setting(name: str) -> tuple[Any, str] | None:
        if name in body:
            return body[name], f"{key}.{name}"
        if name in defaults:
            return defaults[name], f"defaults.{name}"
        return None

    retries = marks.get("retries") or 0
    if (got := setting("retries")) is not None:
        retries = ck.int_at_least(got[0], got[1], 0, "retries")
    backoff = marks.get("backoff")
    backoff_s = 1.0 if backoff is None else float(backoff)
    if (got := setting("backoff")) is not None:
        backoff_s = ck.duration(got[0], got[1], positive=False)
    timeout_s = marks.get("timeout")
    if (got := setting("timeout")) is not None:
        timeout_s = ck.duration(got[0], got[1], positive=True)

    needs = tuple(ck.str_list(body.get("needs", []), f"{key}.needs", "needs"))
    limit = body.get("limit")
    if limit is not None and limit not in limits:
        known = ", ".join(limits) or "none are declared under 'limits'"
        raise ck.fail(f"{key}.limit", f"unknown limit {limit!r}{_suggest(str(limit), list(limits))}"
                      f" (known: {known})")
    args = body.get("args", [])
    if not isinstance(args, list):
        raise ck.fail(f"{key}.args", f"args must be a list, got {_kind(args)}")
    kwargs = ck.mapping(body.get("kwargs", {}), f"{key}.kwargs", "kwargs")
    env = ck.mapping(body.get("env", {}), f"{key}.env", "env")
    cwd = body.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        raise ck.fail(f"{key}.cwd", f"cwd must be text, got {_kind(cwd)}")
    return JobDef(
        name=jname, line=ck.doc.line(key), action=action, kind=kind, needs=needs,
        foreach=_foreach(ck, body.get("foreach"), f"{key}.foreach", path),
        limit=limit, retries=retries, backoff_s=backoff_s, timeout_s=timeout_s,
        args=args, kwargs=kwargs, env=env, cwd=cwd, raw=body,
    )


def _action(ck: _Checker, which: str, value: Any, key: str) -> tuple[Action, dict[str, Any]]:
    if which == "shell":
        if not isinstance(value, str) or not value.strip():
            raise ck.fail(key, f"shell must be a command line (text), got {_kind(value)}")
        return ShellAction(value), {}
    if which == "http":
        spec = ck.mapping(value, key, "http")
        ck.keys(spec, HTTP_KEYS, key, "http")
        if not isinstance(spec.get("url"), str):
            raise ck.fail(f"{key}.url" if "url" in spec else key, "http needs a url (text)")
        method = spec.get("method", "GET")
        if not isinstance(method, str):
            raise ck.fail(f"{key}.method", f"method must be text, got {_kind(method)}")
        expect = spec.get("expect")
        if expect is not None:
            if isinstance(expect, int) and not isinstance(expect, bool):
                expect = [expect]
            if not isinstance(expect, list) or not all(
                isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in expect
            ):
                raise ck.fail(f"{key}.expect", f"expect must be a list of HTTP statuses like "
                              f"[200, 201], got {expect!r}")
            expect = tuple(expect)
        headers = ck.mapping(spec.get("headers", {}), f"{key}.headers", "headers")
        data = spec.get("data")
        if data is not None and not isinstance(data, str):
            raise ck.fail(f"{key}.data", f"data must be text (use json: for structures), "
                          f"got {_kind(data)}")
        return HttpAction(url=spec["url"], method=method.upper(), json=spec.get("json"),
                          data=data, headers=headers, expect=expect), {}
    if not isinstance(value, str) or ":" not in value:
        raise ck.fail(key, f"call must be 'module:attribute', got {value!r}")
    target = ck.target(value, key)
    marks = {"kind": target.kind, "retries": target.retries, "backoff": target.backoff_s,
             "timeout": target.timeout_s}
    return CallAction(value), marks


def _foreach(ck: _Checker, value: Any, key: str, path: Path) -> Foreach | None:
    if value is None:
        return None
    if isinstance(value, list):
        return Foreach(items=value)
    spec = ck.mapping(value, key, "foreach (a list, {range: …} or {lines: FILE})")
    ck.keys(spec, FOREACH_KEYS, key, "foreach")
    if len(spec) != 1:
        raise ck.fail(key, "foreach takes exactly one of range, lines")
    if "lines" in spec:
        if not isinstance(spec["lines"], str):
            raise ck.fail(f"{key}.lines", "lines must be a file name")
        return Foreach(lines=spec["lines"])
    bounds = spec["range"]
    bounds = bounds if isinstance(bounds, list) else [bounds]
    if not 1 <= len(bounds) <= 3:
        raise ck.fail(f"{key}.range", "range is N, [start, stop] or [start, stop, step]")
    for b in bounds:
        if isinstance(b, bool) or not isinstance(b, int | str):
            raise ck.fail(f"{key}.range", f"range bounds must be whole numbers or templates, "
                          f"got {b!r}")
    return Foreach(range=bounds)


def _check_references(ck: _Checker, spec: FlowSpec) -> None:
    for job in spec.jobs.values():
        key = f"jobs.{job.name}"
        for need in job.needs:
            if need not in spec.jobs:
                raise ck.fail(f"{key}.needs", f"job {job.name!r} needs unknown job {need!r}"
                              f"{_suggest(need, list(spec.jobs))}")
            if need == job.name:
                raise ck.fail(f"{key}.needs", f"job {job.name!r} needs itself")
        for field_name, value in _templated_fields(job):
            fkey = f"{key}.{field_name}"
            try:
                refs = references(value)
            except ValueError as exc:
                raise ck.fail(fkey, str(exc)) from None
            for ref in refs:
                if ref.root == "params" and ref.name not in spec.params:
                    raise ck.fail(fkey, f"{{{{ {ref.text} }}}} names unknown param "
                                  f"{ref.name!r}{_suggest(ref.name, list(spec.params))}")
                if ref.root == "results":
                    if ref.name not in spec.jobs:
                        raise ck.fail(fkey, f"{{{{ {ref.text} }}}} names unknown job "
                                      f"{ref.name!r}{_suggest(ref.name, list(spec.jobs))}")
                    if field_name.startswith("foreach"):
                        raise ck.fail(fkey, "foreach cannot use results (it is planned "
                                      "before jobs run)")
                if ref.root == "item" and job.foreach is None:
                    raise ck.fail(fkey, f"{{{{ {ref.text} }}}} is only known in a job with "
                                  "foreach")


def _templated_fields(job: JobDef) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = [("args", job.args), ("kwargs", job.kwargs),
                                  ("env", job.env), ("cwd", job.cwd)]
    action = job.action
    if isinstance(action, ShellAction):
        out.append(("shell", action.command))
    elif isinstance(action, HttpAction):
        out += [("http.url", action.url), ("http.json", action.json),
                ("http.data", action.data), ("http.headers", action.headers)]
    if job.foreach is not None:
        out += [("foreach", job.foreach.items), ("foreach.range", job.foreach.range),
                ("foreach.lines", job.foreach.lines)]
    return out
