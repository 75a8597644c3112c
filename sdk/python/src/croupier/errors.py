"""The exceptions of the SDK.

- :class:`HandlerError` is raised by a handler to fail a call with a code; the caller receives
  ``success=false`` with that ``error_code`` and message. A caller's :meth:`Client.invoke_typed`
  raises the same class when the handler failed.
- :class:`RpcError` is a gRPC-level failure: bad payload (``INVALID_ARGUMENT``, the message names
  the field), no agent (``UNAVAILABLE``), deadline, permission, … :class:`CircuitOpenError` is
  the client failing fast while a server's breaker is open.
"""

from __future__ import annotations

import grpc


class CroupierError(Exception):
    """Base class of the SDK's errors."""


class HandlerError(CroupierError):
    """A handler's failure: reaches the caller as ``success=false`` with ``code`` and
    ``message``. Raise it from a handler to choose the code (e.g. ``"NOT_FOUND"``)."""

    def __init__(
        self, code: str, message: str, *, function: str = "", agent_id: str = ""
    ) -> None:
        super().__init__(f"{code}: {message}")
        #: Machine-readable code, e.g. ``"NOT_FOUND"``, ``"INSUFFICIENT_FUNDS"``.
        self.code = code
        #: Human-readable message.
        self.message = message
        #: The function, on the caller's side.
        self.function = function
        #: The agent that ran it, on the caller's side (empty when unknown).
        self.agent_id = agent_id


class RpcError(CroupierError):
    """A call failed at the gRPC level."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        server: str = "",
        reason: str = "",
        details: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        #: The gRPC status code.
        self.code = code
        #: The status message (the server's, or the SDK's for failures to reach it).
        self.message = message
        #: The server the call went to.
        self.server = server
        #: The server's machine code (``google.rpc.ErrorInfo.reason``: ``FUNCTION_NOT_FOUND``,
        #: ``NO_AGENT``, ``SCHEMA_VIOLATION``...); empty when the server sent none.
        self.reason = reason
        #: The ErrorInfo's details (function, field, agent, nearest names...).
        self.details = dict(details or {})


class CircuitOpenError(RpcError):
    """The client's circuit breaker for every usable server is open: the call failed fast
    (``UNAVAILABLE``) without touching the network."""


class DecodeError(CroupierError):
    """A result does not have the expected type (the message names the field)."""


class ConfigError(CroupierError):
    """The SDK was configured in a way that cannot work (no servers, a bad decorator)."""
