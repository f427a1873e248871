"""The wire protocol, sans IO: bytes in, events out, as h11 is for HTTP.

Pure: no sockets, no event loop, no clock. ``Connection`` turns received bytes into
events and messages into bytes; the transport moves the bytes. ``docs/protocol.md`` has
the frame and handshake layouts and the message table.
"""

from __future__ import annotations

from .connection import NEED_DATA as NEED_DATA
from .connection import Connection as Connection
from .connection import Event as Event
from .errors import AuthenticationFailed as AuthenticationFailed
from .errors import ConnectionNotOpen as ConnectionNotOpen
from .errors import FrameTooLarge as FrameTooLarge
from .errors import LocalProtocolError as LocalProtocolError
from .errors import ProtocolError as ProtocolError
from .errors import RemoteProtocolError as RemoteProtocolError
from .errors import UnencodableValue as UnencodableValue
from .errors import VersionMismatch as VersionMismatch
from .framing import DEFAULT_MAX_FRAME_BYTES as DEFAULT_MAX_FRAME_BYTES
from .handshake import VERSION as VERSION
from .handshake import Hello as Hello
from .handshake import Role as Role
from .messages import Assign as Assign
from .messages import Attach as Attach
from .messages import AttemptRef as AttemptRef
from .messages import AttemptResult as AttemptResult
from .messages import AttemptSpec as AttemptSpec
from .messages import Cancel as Cancel
from .messages import ClusterInfo as ClusterInfo
from .messages import DeclareLimits as DeclareLimits
from .messages import Drain as Drain
from .messages import Error as Error
from .messages import FlowStatus as FlowStatus
from .messages import FlowSubmit as FlowSubmit
from .messages import Goodbye as Goodbye
from .messages import Heartbeat as Heartbeat
from .messages import JobOutcome as JobOutcome
from .messages import JobSpec as JobSpec
from .messages import Message as Message
from .messages import NodeInfo as NodeInfo
from .messages import Outcome as Outcome
from .messages import Register as Register
from .messages import ReleaseLimits as ReleaseLimits
from .messages import Result as Result
from .messages import StatusReply as StatusReply
from .messages import StatusRequest as StatusRequest
from .messages import Submit as Submit
from .state import State as State

__all__ = (
    "DEFAULT_MAX_FRAME_BYTES",
    "NEED_DATA",
    "VERSION",
    "Assign",
    "Attach",
    "AttemptRef",
    "AttemptResult",
    "AttemptSpec",
    "AuthenticationFailed",
    "Cancel",
    "ClusterInfo",
    "Connection",
    "DeclareLimits",
    "Drain",
    "Error",
    "Event",
    "FlowStatus",
    "FlowSubmit",
    "ConnectionNotOpen",
    "FrameTooLarge",
    "Goodbye",
    "Heartbeat",
    "Hello",
    "JobOutcome",
    "JobSpec",
    "LocalProtocolError",
    "Message",
    "NodeInfo",
    "Outcome",
    "ProtocolError",
    "Register",
    "ReleaseLimits",
    "RemoteProtocolError",
    "Result",
    "Role",
    "State",
    "StatusReply",
    "StatusRequest",
    "Submit",
    "UnencodableValue",
    "VersionMismatch",
)
