"""Settings values written by people: durations ("30s", "500ms"), rates ("200/s") and
sizes ("64MiB")."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_RATE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PER = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
        "h": 3600.0, "hour": 3600.0}


def parse_duration(value: object) -> float:
    """Seconds from ``30``, ``2.5``, ``"30s"``, ``"500ms"``, ``"2m"`` or ``"1h"``.

    :raises ValueError: for anything else, or a bool
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 30 or '30s', got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return float(m.group(1)) * _SECONDS[m.group(2) or "s"]
    raise ValueError(f"expected a duration like 30, '30s', '500ms' or '2m', got {value!r}")


_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kKmMgG]i?[bB]|[bB])?\s*$")
_BYTES = {"b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2, "gb": 1000**3,
          "gib": 1024**3}


def parse_size(value: object) -> int:
    """Bytes from ``4096``, ``"64MiB"``, ``"10MB"``, ``"512KiB"`` or ``"1GiB"``.

    :raises ValueError: for anything else, a bool, or a size below one byte
    """
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if isinstance(value, str) and (m := _SIZE.match(value)):
        size = int(float(m.group(1)) * _BYTES[(m.group(2) or "b").lower()])
        if size >= 1:
            return size
    raise ValueError(f"expected a size like 4096, '64MiB' or '10MB', got {value!r}")


def parse_rate(value: object) -> float:
    """Events per second from ``"200/s"``, ``"10/m"`` or ``"5/h"``.

    :raises ValueError: for anything else, or a rate that is not above zero
    """
    if isinstance(value, str) and (m := _RATE.match(value)):
        rate = float(m.group(1)) / _PER[m.group(2)]
        if rate > 0:
            return rate
    raise ValueError(f"expected a rate above zero like '200/s', '10/m' or '5/h', got {value!r}")
