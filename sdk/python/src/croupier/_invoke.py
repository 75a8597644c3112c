"""The agent's side of one invocation: run the handler in its own task with its deadline and
cancellation, and answer (a ``result`` frame for a call, job events through the outbox for a
job).

Every ``Invoke`` runs concurrently with the others: a slow handler never blocks another. When
the deadline passes or a ``Cancel`` arrives, the handler's task is cancelled
(``asyncio.CancelledError`` where it awaits). A plain call is answered at once then; a job's
handler gets ``cancel_grace`` seconds to clean up before its terminal event. A handler's
exception is logged here with its traceback; the caller gets only its type and message.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ._structs import from_struct, to_struct
from .context import CallContext, JobContext
from .control.v1 import control_pb2
from .errors import HandlerError
from .function.v1 import function_pb2
from .functions import FunctionSpec
from .outbox import Outbox
from .stats import StatsBook

log = logging.getLogger("croupier.agent")

Queue = asyncio.Queue[control_pb2.AgentFrame | None]


@dataclass
class _Running:
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str | None = None

    def cancel(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.cancelled.set()


def _failure(request_id: str, code: str, message: str) -> control_pb2.AgentFrame:
    return control_pb2.AgentFrame(
        result=control_pb2.InvokeResult(
            request_id=request_id, success=False, error=message, error_code=code
        )
    )


class Runner:
    """Runs the invocations of one agent."""

    def __init__(
        self, specs: dict[str, FunctionSpec], outbox: Outbox, agent_id: str, cancel_grace: float
    ) -> None:
        self.specs = specs
        self.outbox = outbox
        self.agent_id = agent_id
        self.cancel_grace = cancel_grace
        self.stats = StatsBook()
        self._running: dict[str, _Running] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stragglers: set[asyncio.Task[Any]] = set()

    @property
    def in_flight(self) -> int:
        """Invocations (calls and jobs) running now."""
        return len(self._running)

    def start(self, inv: control_pb2.Invoke, out: Queue) -> None:
        """Starts serving ``inv`` in its own task."""
        task = asyncio.get_running_loop().create_task(
            self._serve(inv, out), name=f"croupier-invoke {inv.function_id} {inv.request_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel(self, request_id: str, reason: str) -> bool:
        """Cancels a running invocation; False when none has that id."""
        r = self._running.get(request_id)
        if r is None:
            return False
        r.cancel(reason)
        return True

    def cancel_all(self, reason: str) -> int:
        """Cancels every running invocation; returns how many."""
        for r in list(self._running.values()):
            r.cancel(reason)
        return len(self._running)

    async def close(self) -> None:
        """Waits for the serving tasks (they end soon after being cancelled)."""
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, *self._stragglers, return_exceptions=True)

    def _context(self, inv: control_pb2.Invoke, timeout: float) -> CallContext:
        return CallContext(
            request_id=inv.request_id,
            function_id=inv.function_id,
            caller=inv.caller,
            game_id=inv.game_id,
            env=inv.env,
            idempotency_key=inv.idempotency_key,
            deadline=time.monotonic() + timeout,
            payload=from_struct(inv.payload) if inv.HasField("payload") else {},
            traceparent=inv.traceparent,
            config=dict(inv.config),
        )

    async def _call_handler(self, spec: FunctionSpec, ctx: CallContext) -> Any:
        args = spec.signature.arguments(ctx.payload, spec.function_id)
        if spec.signature.context_param is not None:
            args[spec.signature.context_param] = ctx
        if spec.signature.is_async:
            value = await spec.handler(**args)
        else:
            value = await asyncio.to_thread(functools.partial(spec.handler, **args))
        return spec.signature.result(value)

    async def _run(
        self, spec: FunctionSpec, ctx: CallContext, running: _Running, timeout: float, grace: float
    ) -> tuple[Any, BaseException | None, bool]:
        """Runs the handler until it ends, the deadline passes or it is cancelled. Returns
        (value, exception, deadline_passed)."""
        task = asyncio.get_running_loop().create_task(self._call_handler(spec, ctx))
        waiter = asyncio.get_running_loop().create_task(running.cancelled.wait())
        try:
            done, _ = await asyncio.wait(
                {task, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            deadline_passed = False
            if task not in done:
                deadline_passed = waiter not in done
                task.cancel()
                if grace > 0:
                    await asyncio.wait({task}, timeout=grace)
                if not task.done():
                    self._stragglers.add(task)
                    task.add_done_callback(self._stragglers.discard)
                    task.add_done_callback(self._log_straggler)
                    why = "did not stop within the cancel grace" if grace > 0 else "was cancelled"
                    return None, HandlerError("CANCELLED", f"the handler {why}"), deadline_passed
            if task.cancelled():
                return None, asyncio.CancelledError(), deadline_passed
            exc = task.exception()
            return (None if exc else task.result()), exc, deadline_passed
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            waiter.cancel()

    def _log_straggler(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("a cancelled handler failed later", exc_info=task.exception())

    def _describe(self, spec: FunctionSpec, ctx: CallContext, exc: BaseException) -> HandlerError:
        if isinstance(exc, HandlerError):
            return exc
        log.error(
            "handler of %s failed (request %s, caller %s)",
            spec.function_id,
            ctx.request_id,
            ctx.caller,
            exc_info=exc,
        )
        return HandlerError("INTERNAL", f"the handler raised {type(exc).__name__}: {exc}")

    async def _serve(self, inv: control_pb2.Invoke, out: Queue) -> None:
        spec = self.specs.get(inv.function_id)
        if spec is None:
            message = f"this agent does not provide {inv.function_id}"
            if not inv.job_id:
                await out.put(_failure(inv.request_id, "NOT_FOUND", message))
            elif await self.outbox.begin(inv.job_id, inv.function_id):
                await self.outbox.emit(
                    inv.job_id, function_pb2.ERROR, message, 0.0, {"code": "NOT_FOUND"}
                )
            return
        if inv.job_id and not await self.outbox.begin(inv.job_id, inv.function_id):
            log.debug("job %s already runs here; repeated Invoke ignored", inv.job_id)
            return
        running = _Running()
        self._running[inv.request_id] = running
        timeout = max(inv.timeout_ms, 1) / 1000.0
        t0 = time.monotonic()
        ok = False
        try:
            if inv.job_id:
                ok = await self._serve_job(spec, inv, running, timeout)
            else:
                ok = await self._serve_call(spec, inv, running, timeout, out)
        finally:
            self._running.pop(inv.request_id, None)
            self.stats.get(inv.function_id).record(ok, time.monotonic() - t0)

    async def _serve_call(
        self,
        spec: FunctionSpec,
        inv: control_pb2.Invoke,
        running: _Running,
        timeout: float,
        out: Queue,
    ) -> bool:
        ctx = self._context(inv, timeout)
        if spec.is_job:
            ctx = JobContext(ctx, None)
        value, exc, deadline_passed = await self._run(spec, ctx, running, timeout, 0.0)
        if running.reason is not None:
            frame = _failure(inv.request_id, "CANCELLED", f"the call was cancelled: {running.reason}")
        elif deadline_passed:
            frame = _failure(inv.request_id, "DEADLINE_EXCEEDED", "the call's deadline passed")
        elif exc is not None:
            e = self._describe(spec, ctx, exc)
            frame = _failure(inv.request_id, e.code, e.message)
        else:
            frame = control_pb2.AgentFrame(
                result=control_pb2.InvokeResult(
                    request_id=inv.request_id, success=True, result=to_struct(value)
                )
            )
        await out.put(frame)
        return frame.result.success

    async def _serve_job(
        self, spec: FunctionSpec, inv: control_pb2.Invoke, running: _Running, timeout: float
    ) -> bool:
        job_id = inv.job_id
        await self.outbox.emit(
            job_id, function_pb2.START, f"started on {self.agent_id}", 0.0,
            {"agent_id": self.agent_id},
        )
        ctx = JobContext(self._context(inv, timeout), self.outbox)
        value, exc, deadline_passed = await self._run(
            spec, ctx, running, timeout, self.cancel_grace
        )
        ok = False
        if running.reason is not None:
            kind, msg, progress, data = function_pb2.CANCELLED, running.reason, 0.0, {"code": "CANCELLED"}
        elif deadline_passed:
            kind, msg, progress = function_pb2.ERROR, f"the job's deadline ({timeout:g} s) passed", 0.0
            data = {"code": "DEADLINE_EXCEEDED"}
        elif exc is not None:
            e = self._describe(spec, ctx, exc)
            kind, msg, progress, data = function_pb2.ERROR, e.message, 0.0, {"code": e.code}
        else:
            kind, msg, progress, data = function_pb2.DONE, "done", 1.0, value
            ok = True
        await self.outbox.emit(job_id, kind, msg, progress, data)
        return ok
