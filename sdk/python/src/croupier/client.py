"""The caller's side: :class:`Client`, on ``grpc.aio``.

::

    async with croupier.Client("https://cp:8443", tls=croupier.Tls.from_dir("certs", "client-c1"),
                               game_id="g", env="prod") as client:
        info = await client.invoke_typed("player.info", {"player_id": "p1"}, PlayerInfo)
        job = await client.start_job("match.replay", {"match_id": "m1"})
        async for event in job:
            print(event.seq, event.type.name, event.progress, event.message)

Every call has a deadline: the call's ``timeout``, else the descriptor's default timeout (learned
from ``GetRegistrations``), else the client's ``default_timeout``. It goes to the first server
whose circuit breaker lets it through, on a channel of that server's pool, and is retried by the
rule of :mod:`croupier.retry` when that is safe. :meth:`Client.stats` reports calls per function
and per server.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar, overload

import grpc
import pydantic
from pydantic import TypeAdapter

from ._structs import to_struct, unwrap
from ._transport import ServerStats, Transport
from .breaker import BreakerPolicy
from .control.v1 import control_pb2, control_pb2_grpc
from .errors import DecodeError, HandlerError, RpcError
from .function.v1 import function_pb2, function_pb2_grpc
from .jobs import Job
from .models import (
    AgentDetail,
    FunctionInfo,
    InvokeResult,
    JobRecord,
    NodeState,
    NodeStateRecord,
    RegistrationEvent,
    RegistrationEventType,
)
from .pool import PoolSlot
from .registry.v1 import registry_pb2, registry_pb2_grpc
from .retry import RetryPolicy
from .schema import validation_message
from .stats import StatsBook, StatsSnapshot
from .tls import Tls

M = TypeVar("M")

#: How much later than the server-side timeout the client's gRPC deadline falls, so the
#: server's own ``DEADLINE_EXCEEDED`` (which names the agent) arrives first.
DEADLINE_GRACE = 1.0
#: How long what the client learned from a descriptor (safe to repeat, timeout) is trusted.
DESCRIPTOR_TTL = 60.0
#: Longest wait for the descriptor lookup.
LOOKUP_TIMEOUT = 5.0


def decode(function_id: str, result: dict[str, Any], model: type[M] | None) -> Any:
    """A result as ``model`` (a non-object result arrives wrapped as ``{"value": v}``)."""
    if model is None:
        return unwrap(result)
    adapter: TypeAdapter[M] = TypeAdapter(model)
    try:
        return adapter.validate_python(result)
    except pydantic.ValidationError as first:
        if len(result) == 1 and "value" in result:
            try:
                return adapter.validate_python(result["value"])
            except pydantic.ValidationError:
                pass
        raise DecodeError(
            f"decoding the result of {function_id}: {validation_message(first)}"
        ) from None


_ANY: TypeAdapter[Any] = TypeAdapter(Any)


def _payload(function_id: str, payload: Any) -> Any:
    if payload is None:
        return {}
    if isinstance(payload, pydantic.BaseModel):
        return payload.model_dump(mode="json")
    if isinstance(payload, Mapping):
        return _ANY.dump_python(payload, mode="json")
    raise TypeError(
        f"the payload of {function_id} must be a mapping or a pydantic model, not "
        f"{type(payload).__name__}"
    )


class Stats(dict[str, Any]):
    """What :meth:`Client.stats` returns: ``functions`` (function id → :class:`StatsSnapshot`)
    and ``servers`` (URL → :class:`ServerStats`), also as attributes."""

    @property
    def functions(self) -> dict[str, StatsSnapshot]:
        """Per function: calls made through this client."""
        return self["functions"]  # type: ignore[no-any-return]

    @property
    def servers(self) -> dict[str, ServerStats]:
        """Per server: attempts, breaker state and pool."""
        return self["servers"]  # type: ignore[no-any-return]


class Client:
    """A client of one or more Croupier servers (failover in the order given)."""

    def __init__(
        self,
        server: str | Sequence[str],
        *,
        tls: Tls,
        game_id: str = "default",
        env: str = "dev",
        pool_size: int = 10,
        health_interval: float = 10.0,
        default_timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        breaker: BreakerPolicy | None = None,
    ) -> None:
        """``server``: a URL, a comma-separated list or a sequence. ``tls``: without an
        identity, the directory's only ``client-*`` certificate. ``pool_size`` channels per
        server (10–20 suit most callers), each health-checked every ``health_interval`` s."""
        servers = server.split(",") if isinstance(server, str) else list(server)
        servers = [s.strip() for s in servers if s.strip()]
        self.game_id = game_id
        self.env = env
        self.default_timeout = default_timeout
        self.retry = retry or RetryPolicy()
        self._tls = tls.resolved(None)
        self._transport = Transport(
            servers,
            self._tls,
            pool_size=pool_size,
            health_interval=health_interval,
            retry=self.retry,
            breaker=breaker or BreakerPolicy(),
        )
        self._started = False
        self._fn_stats = StatsBook()
        self._descriptors: dict[tuple[str, str, str], tuple[float, FunctionInfo | None]] = {}

    @property
    def servers(self) -> list[str]:
        """The servers, in failover order."""
        return [c.url for c in self._transport.conns]

    async def __aenter__(self) -> Client:
        self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _start(self) -> None:
        if not self._started:
            self._started = True
            self._transport.start()

    async def close(self) -> None:
        """Closes every channel."""
        await self._transport.close()

    # --- invocation ----------------------------------------------------------------------

    async def invoke(
        self,
        function_id: str,
        payload: Any = None,
        *,
        timeout: float | None = None,
        idempotency_key: str = "",
        route: str = "",
        hash_key: str = "",
        target: str = "",
        selector: Mapping[str, str] | None = None,
        version: str = "",
        game_id: str | None = None,
        env: str | None = None,
    ) -> InvokeResult:
        """Invokes a function and waits for its result. ``payload``: a mapping or a pydantic
        model. ``route``: ``""``/``"lb"``, ``"round_robin"``, ``"hash"`` (with ``hash_key``),
        ``"targeted"`` (implied by ``target``) or ``"broadcast"``. A handler failure is
        ``success=False`` in the result; a gRPC failure raises :class:`RpcError`."""
        self._start()
        game, env_ = game_id or self.game_id, env or self.env
        struct = to_struct(_payload(function_id, payload))
        info = None
        if timeout is None or not (idempotency_key or function_id in self.retry.safe_functions):
            info = await self._descriptor(game, env_, function_id)
        if timeout is None:
            timeout = float(info.timeout) if info and info.timeout > 0 else self.default_timeout
        safe = bool(idempotency_key) or function_id in self.retry.safe_functions or bool(
            info and info.safe_to_retry
        )
        deadline = time.monotonic() + timeout + DEADLINE_GRACE
        opts = function_pb2.InvokeOptions(
            idempotency_key=idempotency_key,
            routing_mode="targeted" if target and not route else route,
            target_agent=target,
            hash_key=hash_key,
            selector=dict(selector or {}),
            version=version,
        )

        async def attempt(slot: PoolSlot, left: float) -> function_pb2.InvokeFunctionResponse:
            # A retry gets what is left of the call's timeout.
            opts.timeout = max(1, math.ceil(left - DEADLINE_GRACE))
            req = function_pb2.InvokeFunctionRequest(
                game_id=game, env=env_, function_id=function_id, payload=struct, options=opts
            )
            stub = slot.stub(function_pb2_grpc.FunctionServiceStub)
            return await stub.InvokeFunction(req, timeout=left)  # type: ignore[no-any-return]

        t0 = time.monotonic()
        ok = False
        try:
            resp = await self._transport.call(function_id, deadline, safe, attempt)
            result = InvokeResult.from_proto(resp)
            ok = result.success
            return result
        finally:
            self._fn_stats.get(function_id).record(ok, time.monotonic() - t0)

    @overload
    async def invoke_typed(
        self, function_id: str, payload: Any, model: type[M], **options: Any
    ) -> M: ...

    @overload
    async def invoke_typed(
        self, function_id: str, payload: Any = None, model: None = None, **options: Any
    ) -> Any: ...

    async def invoke_typed(
        self, function_id: str, payload: Any = None, model: type[M] | None = None, **options: Any
    ) -> Any:
        """Invokes a function and returns its result as ``model`` (a pydantic model or any type
        pydantic validates; None: the plain result). A handler failure raises
        :class:`HandlerError` with its code; a result that does not fit raises
        :class:`DecodeError` naming the field. Options as for :meth:`invoke`."""
        r = await self.invoke(function_id, payload, **options)
        if not r.success:
            raise HandlerError(r.error_code, r.error, function=function_id, agent_id=r.agent_id)
        return decode(function_id, r.result, model)

    async def start_job(
        self,
        function_id: str,
        payload: Any = None,
        *,
        timeout: float | None = None,
        idempotency_key: str = "",
        route: str = "",
        hash_key: str = "",
        target: str = "",
        selector: Mapping[str, str] | None = None,
        version: str = "",
        game_id: str | None = None,
        env: str | None = None,
    ) -> Job:
        """Starts a function as a job and returns its :class:`Job` at once. ``timeout`` is how
        long the job may run (else the descriptor's, else the server's maximum). Retried like
        :meth:`invoke` (with a key, a repeat returns the same job)."""
        self._start()
        game, env_ = game_id or self.game_id, env or self.env
        struct = to_struct(_payload(function_id, payload))
        safe = bool(idempotency_key) or function_id in self.retry.safe_functions
        req = function_pb2.InvokeJobRequest(
            game_id=game,
            env=env_,
            function_id=function_id,
            payload=struct,
            options=function_pb2.InvokeOptions(
                idempotency_key=idempotency_key,
                timeout=math.ceil(timeout) if timeout else 0,
                routing_mode="targeted" if target and not route else route,
                target_agent=target,
                hash_key=hash_key,
                selector=dict(selector or {}),
                version=version,
            ),
        )

        async def attempt(slot: PoolSlot, left: float) -> function_pb2.InvokeJobResponse:
            stub = slot.stub(function_pb2_grpc.FunctionServiceStub)
            return await stub.InvokeJob(req, timeout=left)  # type: ignore[no-any-return]

        deadline = time.monotonic() + self.default_timeout
        resp = await self._transport.call(function_id, deadline, safe, attempt)
        return Job(self, resp.job_id)

    def job(self, job_id: str) -> Job:
        """A handle on an existing job."""
        return Job(self, job_id)

    # --- reads and admin -----------------------------------------------------------------

    async def _read(self, what: str, method: str, stub_cls: type[Any], req: Any) -> Any:
        """A request that is always safe to repeat, with the default deadline."""
        self._start()

        async def attempt(slot: PoolSlot, left: float) -> Any:
            return await getattr(slot.stub(stub_cls), method)(req, timeout=left)

        deadline = time.monotonic() + self.default_timeout
        return await self._transport.call(what, deadline, True, attempt)

    async def _cancel_job(self, job_id: str, reason: str) -> function_pb2.CancelJobResponse:
        req = function_pb2.CancelJobRequest(job_id=job_id, reason=reason)
        r: function_pb2.CancelJobResponse = await self._read(
            "CancelJob", "CancelJob", function_pb2_grpc.FunctionServiceStub, req
        )
        return r

    def _stream_job_events(
        self, req: function_pb2.StreamJobEventsRequest
    ) -> AsyncIterator[function_pb2.JobEvent]:
        self._start()
        return self._transport.stream(
            "StreamJobEvents",
            lambda slot: slot.stub(function_pb2_grpc.FunctionServiceStub).StreamJobEvents(req),
        )

    async def get_job(self, job_id: str) -> JobRecord:
        """One job's record."""
        r = await self._read(
            "GetJob", "GetJob", function_pb2_grpc.FunctionServiceStub,
            function_pb2.GetJobRequest(job_id=job_id),
        )
        return JobRecord.from_proto(r.job)

    async def list_jobs(
        self,
        *,
        function_id: str = "",
        agent_id: str = "",
        status: str = "",
        page_size: int = 0,
        page_token: str = "",
        game_id: str = "",
        env: str = "",
    ) -> tuple[list[JobRecord], str]:
        """A page of job records, newest first, and the next page's token (empty at the end)."""
        req = function_pb2.ListJobsRequest(
            function_id=function_id, agent_id=agent_id, status=status, page_size=page_size,
            page_token=page_token, game_id=game_id, env=env,
        )
        r = await self._read("ListJobs", "ListJobs", function_pb2_grpc.FunctionServiceStub, req)
        return [JobRecord.from_proto(j) for j in r.jobs], r.next_page_token

    async def functions(
        self, game_id: str | None = None, env: str | None = None, function_id: str = ""
    ) -> list[FunctionInfo]:
        """The functions of a game and environment (default: the client's; ``""`` matches
        every one), sorted by game, env and id, with descriptors and agents."""
        req = registry_pb2.GetRegistrationsRequest(
            game_id=self.game_id if game_id is None else game_id,
            env=self.env if env is None else env,
            function_id=function_id,
        )
        r = await self._read(
            "GetRegistrations", "GetRegistrations", registry_pb2_grpc.RegistryServiceStub, req
        )
        out = sorted(
            (FunctionInfo.from_proto(x) for x in r.registrations),
            key=lambda f: (f.game_id, f.env, f.function_id),
        )
        now = time.monotonic()
        for f in out:
            self._descriptors[(f.game_id, f.env, f.function_id)] = (now, f)
        return out

    async def _descriptor(self, game: str, env: str, function_id: str) -> FunctionInfo | None:
        """The function's descriptor, from the cache (a minute) or ``GetRegistrations``; None
        when it cannot be had."""
        key = (game, env, function_id)
        hit = self._descriptors.get(key)
        if hit is not None and time.monotonic() - hit[0] < DESCRIPTOR_TTL:
            return hit[1]
        try:
            found = await asyncio.wait_for(self.functions(game, env, function_id), LOOKUP_TIMEOUT)
        except (RpcError, asyncio.TimeoutError):
            return None
        info = next((f for f in found if f.function_id == function_id), None)
        self._descriptors[key] = (time.monotonic(), info)
        return info

    async def agents(self, game_id: str = "", env: str = "") -> list[AgentDetail]:
        """Agents, sorted by id; empty arguments match everything."""
        r = await self._read(
            "ListAgents", "ListAgents", registry_pb2_grpc.RegistryServiceStub,
            registry_pb2.ListAgentsRequest(game_id=game_id, env=env),
        )
        return [AgentDetail.from_proto(a) for a in r.agents]

    async def watch_registrations(
        self,
        *,
        game_id: str | None = None,
        env: str | None = None,
        function_id: str = "",
        start_revision: int = 0,
    ) -> AsyncIterator[RegistrationEvent]:
        """The current registrations (``ADDED`` events, then ``SYNCED``), then every change.
        A broken stream is resumed from the revision after the last event seen; a revision
        the server no longer keeps (``OUT_OF_RANGE``) starts over with the initial state."""
        revision = start_revision
        failures = 0
        while True:
            req = registry_pb2.WatchRegistrationsRequest(
                game_id=self.game_id if game_id is None else game_id,
                env=self.env if env is None else env,
                function_id=function_id,
                start_revision=revision,
            )
            self._start()
            stream = self._transport.stream(
                "WatchRegistrations",
                lambda slot: slot.stub(registry_pb2_grpc.RegistryServiceStub).WatchRegistrations(
                    req
                ),
            )
            try:
                async for raw in stream:
                    failures = 0
                    ev = RegistrationEvent.from_proto(raw)
                    # The initial state's events share the snapshot revision: resume after it
                    # only once it was delivered whole.
                    if ev.type is RegistrationEventType.SYNCED or revision > 0 or start_revision:
                        revision = max(revision, ev.revision + 1)
                    yield ev
            except RpcError as e:
                if e.code == grpc.StatusCode.OUT_OF_RANGE:
                    revision = 0
                elif e.code != grpc.StatusCode.UNAVAILABLE:
                    raise
            failures += 1
            await asyncio.sleep(min(0.1 * 2 ** min(failures, 8), 5.0))

    async def set_node_state(
        self, agent_id: str, state: NodeState, reason: str = ""
    ) -> NodeStateRecord:
        """Sets a node's state (needs an admin certificate) and returns the recorded state."""
        r = await self._read(
            "SetNodeState", "SetNodeState", control_pb2_grpc.ControlServiceStub,
            control_pb2.SetNodeStateRequest(agent_id=agent_id, state=int(state), reason=reason),  # type: ignore[arg-type]
        )
        return NodeStateRecord.from_proto(r.record)

    # --- stats ---------------------------------------------------------------------------

    def stats(self) -> Stats:
        """Per function (calls through :meth:`invoke`) and per server (attempts, breaker state,
        pool): calls, successes, failures, average and p50/p99 latency, QPS over the last
        minute."""
        return Stats(
            functions=self._fn_stats.snapshot(),
            servers={c.url: c.snapshot() for c in self._transport.conns},
        )
