"""What a handler may ask for: :class:`CallContext` (the invocation) and, for jobs,
:class:`JobContext` (the invocation and the means to report progress, log lines and data).

A handler gets the context by declaring a parameter annotated with one of these classes (or a
parameter named ``ctx``). Cancellation is asyncio's own: when the caller's deadline passes, the
call or job is cancelled, or the agent shuts down, the handler's task is cancelled and
``asyncio.CancelledError`` is raised where it awaits.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .function.v1 import function_pb2

if TYPE_CHECKING:
    from .outbox import Outbox


@dataclass(frozen=True)
class CallContext:
    """One invocation as the agent received it."""

    #: Unique id of this invocation (the job id for a job).
    request_id: str
    #: The function.
    function_id: str
    #: Identity of the caller (spiffe URI).
    caller: str
    #: Game of the call.
    game_id: str
    #: Environment of the call.
    env: str
    #: Idempotency key, if the caller gave one.
    idempotency_key: str
    #: When the caller stops waiting (``time.monotonic()`` clock); the handler is cancelled then.
    deadline: float
    #: The payload as received.
    payload: dict[str, Any]
    #: W3C trace context of the call (``traceparent``; "" when the server sent none).
    traceparent: str = ""
    #: The function's configuration on this agent, from the admins' assignments
    #: (``croupier assign set … --config k=v``); empty when none applies.
    config: dict[str, str] = field(default_factory=dict)

    def time_left(self) -> float:
        """Seconds until the deadline (0 when it has passed)."""
        return max(0.0, self.deadline - time.monotonic())


class JobContext(CallContext):
    """A job's invocation, with the means to report. Reporting waits while the job has
    :data:`~croupier.outbox.OUTBOX_PER_JOB` events not yet acknowledged by the server, so a
    handler is slowed down rather than losing events. When a job function is invoked
    synchronously (``InvokeFunction``) its reports go nowhere and only the result matters."""

    _outbox: Outbox | None

    def __init__(self, call: CallContext, outbox: Outbox | None) -> None:
        super().__init__(**{f: getattr(call, f) for f in CallContext.__dataclass_fields__})
        object.__setattr__(self, "_outbox", outbox)

    @property
    def job_id(self) -> str:
        """The job id (empty when invoked synchronously)."""
        return self.request_id if self._outbox is not None else ""

    async def progress(self, fraction: float, message: str = "") -> None:
        """Reports progress: ``fraction`` in 0.0–1.0 (clamped) and a message."""
        f = 0.0 if math.isnan(fraction) else min(max(fraction, 0.0), 1.0)
        await self._emit(function_pb2.PROGRESS, message, f, None)

    async def log(self, line: str) -> None:
        """Reports a log line."""
        await self._emit(function_pb2.LOG, line, 0.0, None)

    async def data(self, message: str, data: Any) -> None:
        """Reports structured data with a message (a ``LOG`` event carrying ``data``)."""
        await self._emit(function_pb2.LOG, message, 0.0, data)

    async def _emit(self, kind: int, message: str, progress: float, data: Any) -> None:
        if self._outbox is not None:
            await self._outbox.emit(self.request_id, kind, message, progress, data)
