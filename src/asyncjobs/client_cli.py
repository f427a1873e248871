"""The command line's cluster half: ``asyncjobs status`` and what ``run --connect`` opens.

No coordinator at the address (refused, unreachable, not asyncjobs, the wrong secret):
one line on stderr naming the address, exit code 2, no traceback (SPEC section 4).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
from typing import TYPE_CHECKING, Any

from .errors import ClusterConfigError, ConnectionFailed, RunnerClosed

if TYPE_CHECKING:
    import argparse
    import ssl
    from collections.abc import Mapping

    from .client import Cluster
    from .protocol import StatusReply

EXIT_OK, EXIT_BAD_INPUT = 0, 2
#: how long ``status`` waits for the coordinator's answer
STATUS_TIMEOUT_S = 10.0


def client_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The client-side TLS context of ``--tls-cert/--tls-key/--tls-ca`` (None: plain TCP).

    :raises ClusterConfigError: for some of the three but not all, or unreadable files
    """
    from .transport import tls_from_files

    return tls_from_files(args.tls_cert, args.tls_key, args.tls_ca, server=False)


def open_cluster(args: argparse.Namespace, session: str | None = None) -> Cluster:
    """The cluster of ``--connect`` with the secret and TLS options (linked on entering).

    :param session: the session it attaches (None: a random one)
    :raises ClusterConfigError: a bad address, secret file or TLS files
    """
    from .auth import load_secret
    from .client import connect

    secret = load_secret(args.secret_file)
    return connect(args.connect, secret=secret, tls=client_tls(args), session=session)


def run_session(path: str, params: Mapping[str, str]) -> str:
    """The session of ``asyncjobs run FILE --connect``: the same for the same command on
    the same machine (host name, the file's absolute path and bytes, the ``--param``
    values), so running it again after its client was killed takes the unfinished run
    back on the coordinator instead of starting it over.

    :returns: ``"run:"`` and 32 hex digits of a SHA-256
    :raises OSError: the file cannot be read
    """
    with open(path, "rb") as f:
        content = f.read()
    h = hashlib.sha256()
    for part in (socket.gethostname().encode(), os.path.abspath(path).encode(),
                 json.dumps(sorted(params.items())).encode(), content):
        h.update(len(part).to_bytes(8, "big"))  # each part's length first: unambiguous
        h.update(part)
    return "run:" + h.hexdigest()[:32]


def _fail(message: str) -> int:
    print(f"asyncjobs: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def cmd_status(args: argparse.Namespace) -> int:
    """``asyncjobs status --connect HOST:PORT [--json]``: the nodes and flows."""
    from .api import run

    try:
        cluster = open_cluster(args)
    except ClusterConfigError as exc:
        return _fail(str(exc))

    async def ask() -> StatusReply | str:
        try:
            async with cluster:
                return await cluster.status(timeout_s=STATUS_TIMEOUT_S)
        except ConnectionFailed as exc:
            return str(exc)
        except (TimeoutError, RunnerClosed) as exc:
            return (f"the coordinator at {args.connect} did not answer "
                    f"({exc or 'no reply within ' + str(STATUS_TIMEOUT_S) + ' s'})")

    reply = run(ask)
    if isinstance(reply, str):
        return _fail(reply)
    if args.json:
        print(json.dumps(status_json(reply)))
    else:
        print_status(reply)
    return EXIT_OK


def status_json(reply: StatusReply) -> dict[str, Any]:
    """SPEC section 4's object: ``{"nodes": [...], "flows": [...]}``."""
    return reply.to_json()


def print_status(reply: StatusReply) -> None:
    """Two tables on stdout: nodes, then flows."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(file=sys.stdout, highlight=False)
    nodes = Table(title="nodes", title_justify="left")
    for name, justify in (("name", "left"), ("alive", "left"), ("loops", "right"),
                          ("slots used", "right"), ("slots total", "right"),
                          ("last heartbeat", "right")):
        nodes.add_column(name, justify=justify)  # type: ignore[arg-type]
    for n in reply.nodes:
        nodes.add_row(escape(n.name), "yes" if n.alive else "DEAD", str(n.loops), str(n.slots_used),
                      str(n.slots_total), f"{n.last_heartbeat_s:.1f}s ago")
    flows = Table(title="flows", title_justify="left")
    for name, justify in (("id", "left"), ("file", "left"), ("state", "left"),
                          ("done", "right"), ("total", "right")):
        flows.add_column(name, justify=justify)  # type: ignore[arg-type]
    for f in reply.flows:
        flows.add_row(escape(f.flow_id), escape(f.file), escape(f.state), str(f.done), str(f.total))
    if not reply.nodes:
        console.print("nodes: none connected")
    else:
        console.print(nodes)
    if not reply.flows:
        console.print("flows: none")
    else:
        console.print(flows)
