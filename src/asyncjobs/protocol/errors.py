"""The protocol's errors: who is at fault (us or the peer), with typed fields.

They hang under ``asyncjobs.errors.AsyncJobsError`` like every error of the package; they
live here, next to the protocol, because nothing outside a link raises them.

``LocalProtocolError`` means we misused the API (a bug of ours, or a value of the user's
that cannot travel); ``RemoteProtocolError`` means the peer sent something invalid: the
connection is then in its terminal ``ERROR`` state and the transport should close it.
"""

from __future__ import annotations

from ..errors import AsyncJobsError


class ProtocolError(AsyncJobsError):
    """Root of the protocol's errors. Never raised itself."""


class LocalProtocolError(ProtocolError, RuntimeError):
    """We misused the connection: sent a message in the wrong state or role, say. Nothing
    was sent and the connection is as it was; the caller has a bug to fix."""


class ConnectionNotOpen(LocalProtocolError):
    """Nothing may be sent in the connection's state: its handshake is not done, it
    failed, or it ended (our ``Goodbye``, or the peer's end of the stream, which a
    reader may see while a sender still holds messages). Not the message's fault:
    whatever was refused may go again on the next connection."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something invalid. The connection is now in ``State.ERROR``: close
    the stream (after writing ``data_to_send()``, so the peer learns what it can)."""


class AuthenticationFailed(RemoteProtocolError):
    """The peer's handshake proof does not match: it does not hold our secret (or we do
    not hold its). Both sides see the same error, so neither learns which was wrong."""

    def __str__(self) -> str:
        return ("authentication failed: the peer does not share our secret; give every "
                "coordinator, node and client the same ASYNCJOBS_SECRET or --secret-file")


class VersionMismatch(RemoteProtocolError):
    """The peer speaks another version of the protocol. Both sides see it.

    :param ours: our protocol version
    :param theirs: the peer's protocol version
    """

    def __init__(self, ours: int, theirs: int) -> None:
        super().__init__(ours, theirs)
        self.ours = ours
        self.theirs = theirs

    def __str__(self) -> str:
        return (f"the peer speaks asyncjobs protocol version {self.theirs}, we speak "
                f"version {self.ours}: run the same asyncjobs release on the coordinator, "
                "its nodes and its clients")


class FrameTooLarge(LocalProtocolError):
    """A message we were asked to send is larger than the peer accepts (its hello says
    how much). Nothing was sent; split the batch and send the parts.

    :param message: the message's type name
    :param size: the frame body's size in bytes
    :param limit: the peer's ``max_frame_bytes``
    """

    def __init__(self, message: str, size: int, limit: int) -> None:
        super().__init__(message, size, limit)
        self.message = message
        self.size = size
        self.limit = limit

    def __str__(self) -> str:
        return (f"{self.message} would be a frame of {self.size} bytes; the peer accepts at "
                f"most {self.limit} (its max_frame_bytes): send it in smaller batches")


class UnencodableValue(LocalProtocolError, TypeError):
    """A job's arguments or result cannot travel as msgpack. Nothing was sent and the
    connection is as it was: fail that job, send the rest.

    :param job_id: the job whose value cannot be encoded (a flow's id for its params)
    :param field: which of its values: ``"args"``, ``"kwargs"``, ``"value"``, ``"params"``
    :param reason: msgpack's complaint
    :param owner: ``"job"``, or ``"flow"`` for a flow's params
    """

    def __init__(self, job_id: str, field: str, reason: str, *, owner: str = "job") -> None:
        super().__init__(job_id, field, reason)
        self.job_id = job_id
        self.field = field
        self.reason = reason
        self.owner = owner

    def __str__(self) -> str:
        return (f"{self.owner} {self.job_id}: its {self.field} cannot travel as msgpack "
                f"({self.reason});"
                " pass plain data: None, bool, int, float, str, bytes, lists and dicts of them")
