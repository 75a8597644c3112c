"""The caller's side of jobs: :class:`Job`, what :meth:`Client.start_job` returns.

``async for event in job`` follows the job's events from the first (or from where the
iteration left off) until the terminal one, resuming with ``from_seq`` after a broken stream or
a server restart, so no event is seen twice or missed. :meth:`Job.cancel` asks for the job to be
cancelled; :meth:`Job.wait` follows it to its end and returns its record.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from .errors import DecodeError, HandlerError, RpcError
from .function.v1 import function_pb2
from .models import JobEvent, JobRecord

if TYPE_CHECKING:
    from .client import Client

M = TypeVar("M")

#: Attempts to reopen a broken event stream before giving up.
STREAM_RETRIES = 20


class Job:
    """A started job."""

    def __init__(self, client: Client, job_id: str) -> None:
        self._client = client
        #: The job id.
        self.id = job_id
        self._next = 1

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    def __aiter__(self) -> AsyncIterator[JobEvent]:
        return self.events(self._next, _track=True)

    async def events(self, from_seq: int = 1, *, _track: bool = False) -> AsyncIterator[JobEvent]:
        """The job's events from ``from_seq``, then live until the terminal one. A broken
        stream (``UNAVAILABLE``, e.g. a server restart) is reopened from the next seq."""
        nxt = max(from_seq, 1)
        failures = 0
        while True:
            req = function_pb2.StreamJobEventsRequest(job_id=self.id, from_seq=nxt)
            try:
                async for ev in self._client._stream_job_events(req):
                    failures = 0
                    event = JobEvent.from_proto(ev)
                    if event.seq > 0:
                        nxt = event.seq + 1
                        if _track:
                            self._next = nxt
                    yield event
                    if event.type.terminal:
                        return
                return
            except RpcError as e:
                if e.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND):
                    raise
                # NOT_FOUND: a restarted server that has not loaded the job yet.
                failures += 1
                if failures > STREAM_RETRIES:
                    raise
                await asyncio.sleep(min(0.1 * failures, 1.0))

    async def cancel(self, reason: str = "") -> bool:
        """Asks for the job to be cancelled; False when it had already finished."""
        resp = await self._client._cancel_job(self.id, reason)
        return resp.success

    async def record(self) -> JobRecord:
        """The job's record now."""
        return await self._client.get_job(self.id)

    async def wait(self) -> JobRecord:
        """Follows the job to its end and returns its record."""
        async for _ in self.events(self._next):
            pass
        return await self.record()

    async def result(self, model: type[M] | None = None) -> Any:
        """Waits for the end and returns the result (as ``model`` when given). A failed or
        cancelled job raises :class:`HandlerError` with its code (``CANCELLED`` for a cancel)."""
        rec = await self.wait()
        if rec.status == "completed":
            from .client import decode

            return decode(rec.function_id, rec.result, model)
        if rec.status == "cancelled":
            raise HandlerError(
                "CANCELLED", rec.cancel_reason or rec.error, function=rec.function_id,
                agent_id=rec.agent_id,
            )
        if rec.status == "failed":
            raise HandlerError(
                rec.error_code or "FAILED", rec.error or rec.status, function=rec.function_id,
                agent_id=rec.agent_id,
            )
        raise DecodeError(f"job {self.id} ended its stream in status {rec.status}")

