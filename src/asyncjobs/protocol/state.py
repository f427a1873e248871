"""A connection's states and the table of moves between them.

How this works
==============

A link between two sides lives through three phases: the handshake (``AWAIT_HELLO``,
``AWAIT_PROOF``), the session (``OPEN``, then its half-closed forms ``SENT_GOODBYE`` and
``GOT_GOODBYE``), and an end (``CLOSED`` or ``ERROR``). Both sides run the same machine:
nothing here depends on the role, so no side gets rules the other does not.

Rule 1: every change of state goes through ``transition``, which looks the pair
        (state, trigger) up in ``TRANSITIONS``; a pair not in the table is a
        ``LocalProtocolError``.
Rule 2: ``FAILED`` leads from every state but ``ERROR`` to ``ERROR``, and nothing leads
        out of ``ERROR``: a connection that saw an invalid peer is done.
Rule 3: the handshake has one order: the peer's hello, then its proof. Nothing else is
        read before ``OPEN`` and no msgpack is decoded before it.
Rule 4: messages are sent only in ``SEND_STATES`` and read only in ``RECEIVE_STATES``.
        ``Goodbye`` is a half close: after ours we send nothing; after theirs, any frame
        of theirs is an error. Both goodbyes make ``CLOSED``.
Rule 5: the end of the peer's stream is clean only after the handshake and at a frame
        boundary (``END_OF_STREAM`` -> ``CLOSED``); anywhere else it fails the connection.
"""

from __future__ import annotations

from enum import Enum

from .errors import LocalProtocolError


class State(Enum):
    """Where a connection is."""

    #: our hello is out; waiting for the peer's
    AWAIT_HELLO = "AWAIT_HELLO"
    #: the peer's hello was read and our proof is out; waiting for the peer's proof
    AWAIT_PROOF = "AWAIT_PROOF"
    #: authenticated both ways: messages flow both ways
    OPEN = "OPEN"
    #: we said Goodbye: we send nothing more; the peer may still send
    SENT_GOODBYE = "SENT_GOODBYE"
    #: the peer said Goodbye: it sends nothing more; we may still send
    GOT_GOODBYE = "GOT_GOODBYE"
    #: both said Goodbye, or the peer's stream ended cleanly
    CLOSED = "CLOSED"
    #: the peer sent something invalid; terminal
    ERROR = "ERROR"


class Trigger(Enum):
    """What moves a connection."""

    HELLO_RECEIVED = "HELLO_RECEIVED"
    PROOF_VERIFIED = "PROOF_VERIFIED"
    GOODBYE_SENT = "GOODBYE_SENT"
    GOODBYE_RECEIVED = "GOODBYE_RECEIVED"
    END_OF_STREAM = "END_OF_STREAM"
    FAILED = "FAILED"


_S, _T = State, Trigger

TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (_S.AWAIT_HELLO, _T.HELLO_RECEIVED): _S.AWAIT_PROOF,
    (_S.AWAIT_PROOF, _T.PROOF_VERIFIED): _S.OPEN,
    (_S.OPEN, _T.GOODBYE_SENT): _S.SENT_GOODBYE,
    (_S.OPEN, _T.GOODBYE_RECEIVED): _S.GOT_GOODBYE,
    (_S.SENT_GOODBYE, _T.GOODBYE_RECEIVED): _S.CLOSED,
    (_S.GOT_GOODBYE, _T.GOODBYE_SENT): _S.CLOSED,
    (_S.OPEN, _T.END_OF_STREAM): _S.CLOSED,
    (_S.SENT_GOODBYE, _T.END_OF_STREAM): _S.CLOSED,
    (_S.GOT_GOODBYE, _T.END_OF_STREAM): _S.CLOSED,
    (_S.CLOSED, _T.END_OF_STREAM): _S.CLOSED,
    **{(state, _T.FAILED): _S.ERROR for state in State if state is not _S.ERROR},
}

#: states in which we may send messages
SEND_STATES = frozenset({State.OPEN, State.GOT_GOODBYE})
#: states in which the peer may send messages
RECEIVE_STATES = frozenset({State.OPEN, State.SENT_GOODBYE})
#: states of the handshake
HANDSHAKE_STATES = frozenset({State.AWAIT_HELLO, State.AWAIT_PROOF})


def transition(state: State, trigger: Trigger) -> State:
    """The state ``trigger`` leads to from ``state``.

    :raises LocalProtocolError: when the table has no such move
    """
    try:
        return TRANSITIONS[state, trigger]
    except KeyError:
        raise LocalProtocolError(f"{trigger.name} is not possible in state {state.name}"
                                 ) from None
