"""The handshake: hellos with fixed binary layouts, mutual HMAC proofs, session keys.

Both sides send a hello at once; each, on reading the peer's hello, sends its proof::

    hello  = magic "\\x89AJB" | version u16 | role u8 | max_frame_bytes u32 | nonce 32 B
    proof(A -> B)       = HMAC-SHA256(secret, b"asyncjobs proof\\0"   | hello_A | hello_B)
    session_key(A -> B) = HMAC-SHA256(secret, b"asyncjobs session\\0" | hello_A | hello_B)

A proof binds both nonces, both roles, the version and (by the order of the hellos) the
direction, so a proof reflected back at its sender, or replayed from an earlier
handshake (whose nonce the receiver no longer uses), does not verify. The secret never
crosses the wire; no msgpack is decoded here.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from enum import StrEnum

from .errors import LocalProtocolError, VersionMismatch

#: the first bytes of every hello, in every version
MAGIC = b"\x89AJB"
#: this protocol's version; any change to a layout or a message's fields bumps it
VERSION = 2
NONCE_BYTES = 32
#: magic, version, role code, max_frame_bytes, nonce
HELLO = struct.Struct(">4sHBI32s")
#: what every version's hello fits in, so that any version can read another's version
HELLO_MAX_BYTES = 256
#: magic and version: the part of a hello every version shares
HELLO_HEAD_BYTES = 6
PROOF_BYTES = hashlib.sha256().digest_size
_PROOF_LABEL = b"asyncjobs proof\x00"
_SESSION_LABEL = b"asyncjobs session\x00"


class Role(StrEnum):
    """What a connection's side is; the hello carries it, and it decides what may be sent."""

    #: schedules jobs; accepts nodes and clients
    COORDINATOR = "coordinator"
    #: runs jobs the coordinator assigns; cannot submit
    NODE = "node"
    #: submits jobs and flows and follows them; cannot take jobs
    CLIENT = "client"


#: a role's code in the hello
ROLE_CODES: dict[Role, int] = {Role.COORDINATOR: 1, Role.NODE: 2, Role.CLIENT: 3}
_ROLES_BY_CODE = {code: role for role, code in ROLE_CODES.items()}
#: who may be at the other end of a link
PEERS: dict[Role, frozenset[Role]] = {
    Role.COORDINATOR: frozenset({Role.NODE, Role.CLIENT}),
    Role.NODE: frozenset({Role.COORDINATOR}),
    Role.CLIENT: frozenset({Role.COORDINATOR}),
}


@dataclass(frozen=True, slots=True)
class Hello:
    """A side's hello. ``Connection.next_event()`` returns the peer's once its proof has
    verified: from then on it is known to hold the secret."""

    role: Role
    #: fresh random bytes, one per connection
    nonce: bytes
    #: the largest frame body this side accepts
    max_frame_bytes: int
    version: int = VERSION

    def to_bytes(self) -> bytes:
        """The hello's frame body."""
        return HELLO.pack(MAGIC, self.version, ROLE_CODES[self.role], self.max_frame_bytes,
                          self.nonce)

    @classmethod
    def from_bytes(cls, body: bytes, *, min_frame_bytes: int) -> Hello:
        """Read a peer's hello.

        :raises VersionMismatch: when the peer speaks another version
        :raises LocalProtocolError: (the peer's fault; the connection converts it) for
            anything else wrong
        """
        if body[:len(MAGIC)] != MAGIC or len(body) < HELLO_HEAD_BYTES:
            raise LocalProtocolError(describe_stranger(body))
        version = int.from_bytes(body[len(MAGIC):HELLO_HEAD_BYTES], "big")
        if version != VERSION:
            raise VersionMismatch(VERSION, version)
        if len(body) != HELLO.size:
            raise LocalProtocolError(f"a version {VERSION} hello is {HELLO.size} bytes, "
                                     f"the peer's is {len(body)}")
        _, _, code, max_frame_bytes, nonce = HELLO.unpack(body)
        role = _ROLES_BY_CODE.get(code)
        if role is None:
            raise LocalProtocolError(f"the peer's hello names an unknown role (code {code})")
        if max_frame_bytes < min_frame_bytes:
            raise LocalProtocolError(f"the peer accepts frames of at most {max_frame_bytes} "
                                     f"bytes; at least {min_frame_bytes} are needed")
        return cls(role, nonce, max_frame_bytes, version)


def check_peer(ours: Hello, theirs: Hello) -> None:
    """Refuse a peer that cannot be at the other end of our link.

    :raises LocalProtocolError: (the peer's fault) for our own nonce coming back (a
        reflected hello) or a pair of roles that never talk
    """
    if hmac.compare_digest(theirs.nonce, ours.nonce):
        raise LocalProtocolError("the peer's hello carries our own nonce: a reflected "
                                 "handshake")
    if theirs.role not in PEERS[ours.role]:
        raise LocalProtocolError(
            f"a {ours.role} does not talk to a {theirs.role}: nodes and clients connect to "
            "a coordinator")


def proof(secret: bytes, sender: bytes, receiver: bytes) -> bytes:
    """What ``sender`` sends to prove it holds ``secret``, given both hellos' bytes."""
    return hmac.digest(secret, _PROOF_LABEL + sender + receiver, "sha256")


def session_key(secret: bytes, sender: bytes, receiver: bytes) -> bytes:
    """The key that MACs the frames ``sender`` sends to ``receiver`` after the handshake."""
    return hmac.digest(secret, _SESSION_LABEL + sender + receiver, "sha256")


def describe_stranger(head: bytes) -> str:
    """Why a first frame is no asyncjobs hello, from the bytes the peer began with."""
    if head[:1] == b"\x16" and head[1:2] == b"\x03":
        return ("the peer speaks TLS and we do not: give both sides the --tls-* options, "
                "or neither")
    return (f"the peer does not speak the asyncjobs protocol (it began with {head[:16]!r}): "
            "check the address")
