"""Where the cluster's secret and addresses come from (SPEC section 4).

The secret comes from ``ASYNCJOBS_SECRET`` or a file, never from a flag's value: a value
on a command line is readable by every user of the machine (``ps``). A file that group or
others may read is refused for the same reason, naming the ``chmod`` that fixes it.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from typing import TYPE_CHECKING

from .errors import ClusterConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

SECRET_ENV = "ASYNCJOBS_SECRET"
DEFAULT_PORT = 7700


def read_secret_file(path: str) -> bytes:
    """The file's content less trailing whitespace.

    :raises ClusterConfigError: the file cannot be read, group or others may read it, or
        it is empty
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise ClusterConfigError(f"cannot read the secret file {path}: "
                                 f"{exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ClusterConfigError(
                f"the secret file {path} may be read by others (mode "
                f"{stat.S_IMODE(mode):o}); make it yours alone: chmod 600 {path}")
        with os.fdopen(fd, "rb", closefd=False) as f:
            secret = f.read().rstrip()
    finally:
        os.close(fd)
    if not secret:
        raise ClusterConfigError(f"the secret file {path} is empty")
    return secret


def load_secret(secret_file: str | None = None,
                env: Mapping[str, str] | None = None) -> bytes:
    """The secret from ``secret_file`` if given, else ``$ASYNCJOBS_SECRET``, else ``b""``
    (no secret: only loopback addresses work without one).

    :raises ClusterConfigError: as ``read_secret_file``
    """
    if secret_file is not None:
        return read_secret_file(secret_file)
    value = (os.environ if env is None else env).get(SECRET_ENV, "")
    return value.strip().encode()


def parse_address(text: str, *, default_host: str | None = None) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as ``(host, port)``.

    :raises ClusterConfigError: naming what is wrong
    """
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ClusterConfigError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        if default_host is None:
            raise ClusterConfigError(f"expected HOST:PORT, got {text!r} (no host)")
        host = default_host
    if not (port_text.isascii() and port_text.isdigit() and 0 <= int(port_text) <= 65535):
        raise ClusterConfigError(f"expected HOST:PORT with a port from 0 to 65535, "
                                 f"got {text!r}")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
