"""The provider side of job events: the outbox numbers a job's events (1, 2, 3…), sends them
over the tunnel in order and keeps each one until the server acknowledges (``Ack``) that it
stored it. A job leaves the outbox once it finished and all its events were acknowledged.

A handler that emits faster than the tunnel carries events waits (at most
:data:`OUTBOX_PER_JOB` unacknowledged events per job); nothing is dropped. On every new tunnel
the outbox first sends a ``JobsReport`` of the jobs it holds (running, or finished with events
not yet acknowledged), then every unacknowledged event again, before any new one — so a server
restart or a failover loses no event.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ._structs import to_struct
from .control.v1 import control_pb2
from .function.v1 import function_pb2

#: Most unacknowledged events one job may have; emitting more waits for acknowledgements.
OUTBOX_PER_JOB = 4096

_TERMINAL = (function_pb2.DONE, function_pb2.ERROR, function_pb2.CANCELLED)


@dataclass
class _Job:
    function_id: str
    next_seq: int = 1
    unacked: deque[function_pb2.JobEvent] = field(default_factory=deque)
    finished: bool = False


def _frame(ev: function_pb2.JobEvent) -> control_pb2.AgentFrame:
    return control_pb2.AgentFrame(job_event=control_pb2.AgentJobEvent(event=ev))


class Outbox:
    """The events of the jobs running on this provider, kept until acknowledged."""

    def __init__(self) -> None:
        self._jobs: dict[str, _Job] = {}
        self._tunnel: tuple[int, asyncio.Queue[control_pb2.AgentFrame | None]] | None = None
        self._lock = asyncio.Lock()
        self._space = asyncio.Condition(self._lock)

    async def begin(self, job_id: str, function_id: str) -> bool:
        """Starts tracking a job; False when it is already known (a repeated ``Invoke``)."""
        async with self._lock:
            if job_id in self._jobs:
                return False
            self._jobs[job_id] = _Job(function_id)
            return True

    def running(self) -> int:
        """Jobs not finished yet."""
        return sum(1 for j in self._jobs.values() if not j.finished)

    def held(self) -> int:
        """Jobs in the outbox (running, or finished with events not yet acknowledged)."""
        return len(self._jobs)

    def unacked(self) -> int:
        """Events not acknowledged yet, over every job."""
        return sum(len(j.unacked) for j in self._jobs.values())

    async def emit(
        self, job_id: str, kind: int, message: str, progress: float, data: Any
    ) -> None:
        """Numbers an event, keeps it and sends it when a tunnel is up. Waits while the job's
        outbox is full. A terminal event finishes the job (later events are ignored)."""
        async with self._space:
            while True:
                job = self._jobs.get(job_id)
                if job is None or job.finished:
                    return
                if len(job.unacked) < OUTBOX_PER_JOB:
                    break
                await self._space.wait()
            ev = function_pb2.JobEvent(
                job_id=job_id,
                type=kind,  # type: ignore[arg-type]
                message=message,
                progress=progress,
                timestamp=int(time.time() * 1000),
                seq=job.next_seq,
            )
            if data is not None:
                ev.data.CopyFrom(to_struct(data))
            job.next_seq += 1
            job.finished = kind in _TERMINAL
            job.unacked.append(ev)
            if self._tunnel is not None:
                await self._tunnel[1].put(_frame(ev))

    async def ack(self, job_id: str, seq: int) -> None:
        """The server stored a job's events up to ``seq``."""
        async with self._space:
            job = self._jobs.get(job_id)
            if job is not None:
                while job.unacked and job.unacked[0].seq <= seq:
                    job.unacked.popleft()
                if job.finished and not job.unacked:
                    del self._jobs[job_id]
            self._space.notify_all()

    def report(self) -> control_pb2.JobsReport:
        """The jobs held, with their last seq."""
        return control_pb2.JobsReport(
            jobs=[
                control_pb2.RunningJob(job_id=jid, function_id=j.function_id, last_seq=j.next_seq - 1)
                for jid, j in self._jobs.items()
            ]
        )

    async def attach(
        self, generation: int, queue: asyncio.Queue[control_pb2.AgentFrame | None]
    ) -> int:
        """Uses a new tunnel: reports the jobs in the outbox, sends every unacknowledged event
        again, then lets new events through. Returns how many events were sent again."""
        async with self._lock:
            await queue.put(control_pb2.AgentFrame(jobs_report=self.report()))
            resend = [ev for j in self._jobs.values() for ev in j.unacked]
            for ev in resend:
                await queue.put(_frame(ev))
            self._tunnel = (generation, queue)
            return len(resend)

    async def detach(self, generation: int) -> None:
        """Stops using the tunnel of ``generation`` (events wait for the next one)."""
        async with self._lock:
            if self._tunnel is not None and self._tunnel[0] == generation:
                self._tunnel = None
