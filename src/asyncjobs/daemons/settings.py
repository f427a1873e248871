"""What one loop process of ``asyncjobs node`` is told: its settings, and what it writes
on its status pipe. Apart from ``loop.py`` so that the supervisor, which only starts
loops, does not import the engine and the transport (~40 ms before its loops start)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ssl
    from collections.abc import Mapping

#: what a loop writes on its status pipe
PULSE, REGISTERED = b".", b"R"


@dataclass(frozen=True, slots=True)
class LoopSettings:
    """What one loop process needs; the supervisor sends it as JSON on stdin."""

    host: str
    port: int
    #: the cluster secret (never logged, never in argv or the environment)
    secret: bytes = dataclasses.field(repr=False)
    #: this loop's index, from 0, and the node's loop count
    index: int
    loops: int
    #: the node's name (``Register.node``; ``where`` in errors)
    name: str
    #: cpu worker processes of this loop (its share of the node's); 0: runs no cpu jobs
    cpu_workers: int
    #: io attempts at once
    io_concurrency: int
    #: threads for thread jobs
    thread_workers: int
    #: on SIGTERM, how long running attempts may take to finish
    drain_timeout_s: float = 30.0
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    #: a pipe to the supervisor: ``PULSE`` every ``HEARTBEAT_S`` while the event loop
    #: turns, ``REGISTERED`` once a ``Register`` went out (None: no supervisor)
    status_fd: int | None = None

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["secret"] = self.secret.hex()
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LoopSettings:
        """:raises ValueError: for a malformed secret; :raises TypeError: missing fields"""
        return cls(**{**data, "secret": bytes.fromhex(data["secret"])})

    def client_tls(self) -> ssl.SSLContext | None:
        if self.tls_cert is None or self.tls_key is None or self.tls_ca is None:
            return None
        from ..transport import (
            tls_contexts,  # the loop's import: the supervisor's start stays light
        )

        return tls_contexts(self.tls_cert, self.tls_key, self.tls_ca)[1]
