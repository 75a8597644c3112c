"""The provider runtime: a Python process that is a Croupier agent.

::

    agent = croupier.Agent(server="https://cp:8443", agent_id="logic-1", game_id="g", env="prod",
                           tls=croupier.Tls.from_dir("certs"), labels={"zone": "eu"})

    @agent.function("player.info", timeout=3.0, description="Get a player")
    async def player_info(player_id: str, detail: bool = False) -> PlayerInfo: ...

    @agent.job("match.replay")
    async def replay(ctx: croupier.JobContext, match_id: str) -> dict: ...

    await agent.run()

:meth:`Agent.run` registers the agent with its functions' descriptors (schemas derived from the
type hints), opens the ``Connect`` tunnel (``Hello`` → ``Welcome``), heartbeats, serves every
``Invoke`` in its own task, reconnects with backoff (100 ms → 30 s, ±20 %) moving on to the next
server of its list after each lost session, presents its session id again to resume it, and on
SIGTERM/SIGINT (or :meth:`Agent.stop`) says ``Goodbye``, lets running calls finish within
``shutdown_grace`` and cancels the rest.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar, cast, overload

import grpc
import grpc.aio

from ._invoke import Runner
from .backoff import Backoff
from .control.v1 import control_pb2, control_pb2_grpc, fleet_pb2
from .errors import ConfigError
from .functions import FunctionSpec, Options, make_spec, service_specs
from .models import NodeState, NodeStateRecord
from .outbox import Outbox
from .pool import EOF, open_channel
from .stats import StatsSnapshot
from .tls import Tls

#: Node events kept while no tunnel is open; past this the oldest are dropped.
MAX_QUEUED_REPORTS = 1024

log = logging.getLogger("croupier.agent")

F = TypeVar("F", bound=Callable[..., Any])

#: How long a registration or a tunnel opening may take.
RPC_TIMEOUT = 10.0


@dataclass(frozen=True)
class AgentState:
    """The connection state of an :class:`Agent`."""

    #: Tunnel open.
    connected: bool = False
    #: Current session id.
    session_id: str = ""
    #: Server in use.
    server: str = ""
    #: Node state the server reported.
    node_state: NodeState = NodeState.NORMAL
    #: Times the tunnel was (re)opened.
    connects: int = 0
    #: True when the last registration resumed the previous session.
    resumed: bool = False
    #: Why the last session ended or failed, if it did.
    last_error: str = ""
    #: Heartbeats the server answered, over every session.
    heartbeats: int = 0


class _SessionEnded(Exception):
    pass


def _servers(server: str | Sequence[str]) -> list[str]:
    items = server.split(",") if isinstance(server, str) else list(server)
    out = [s.strip() for s in items if s.strip()]
    if not out:
        raise ConfigError("no server address configured")
    return out


class Agent:
    """A Croupier agent serving the functions registered with its decorators."""

    def __init__(
        self,
        server: str | Sequence[str],
        agent_id: str,
        *,
        tls: Tls,
        game_id: str = "default",
        env: str = "dev",
        labels: Mapping[str, str] | None = None,
        version: str = "",
        shutdown_grace: float = 10.0,
        cancel_grace: float = 10.0,
        backoff: Backoff | None = None,
        status: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        """``server``: a URL, a comma-separated list or a sequence (failover order).
        ``tls``: from :meth:`Tls.from_dir` (without an identity, ``agent-<agent_id>`` is used).
        ``status``: extra entries for every heartbeat's status map."""
        self.servers = _servers(server)
        self.agent_id = agent_id
        self.game_id = game_id
        self.env = env
        self.labels = dict(labels or {})
        self.version = version
        self.shutdown_grace = shutdown_grace
        self._tls = tls
        self._backoff = backoff or Backoff()
        self._status = status
        self._specs: dict[str, FunctionSpec] = {}
        self._outbox = Outbox()
        self._runner = Runner(self._specs, self._outbox, agent_id, cancel_grace)
        self._state = AgentState()
        self._state_changed: asyncio.Condition | None = None
        # Node events waiting for a tunnel (oldest dropped past MAX_QUEUED_REPORTS).
        self._reports: collections.deque[control_pb2.AgentFrame] = collections.deque()
        self._reports_ready: asyncio.Event | None = None
        self.reports_dropped = 0
        self._node_callbacks: list[Callable[[NodeStateRecord], Any]] = []
        self._stop: asyncio.Event | None = None
        self._running = False

    # --- registration of functions -----------------------------------------------------

    @overload
    def function(self, function_id: F, /) -> F: ...

    @overload
    def function(
        self,
        function_id: str | None = None,
        /,
        *,
        timeout: float | None = None,
        description: str | None = None,
        name: str = "",
        category: str = "",
        kind: str = "",
        idempotent: bool = False,
        version: str = "",
        allowed_roles: Sequence[str] = (),
        allowed_identities: Sequence[str] = (),
        sensitive_fields: Sequence[str] = (),
        display_name: str = "",
    ) -> Callable[[F], F]: ...

    def function(
        self, function_id: str | F | None = None, /, **options: Any
    ) -> F | Callable[[F], F]:
        """Registers a function. Its params/result JSON Schemas come from the handler's type
        hints (:mod:`croupier.schema`); ``timeout`` (seconds) is its default deadline;
        ``kind="query"`` or ``idempotent=True`` lets callers retry it. The handler may be
        ``async`` (preferred) or plain (run in a thread). Usable bare: ``@agent.function``
        registers the function under the handler's name."""
        return self._decorator(function_id, options, job=False)

    @overload
    def job(self, function_id: F, /) -> F: ...

    @overload
    def job(
        self,
        function_id: str | None = None,
        /,
        *,
        timeout: float | None = None,
        description: str | None = None,
        name: str = "",
        category: str = "",
        kind: str = "",
        idempotent: bool = False,
        version: str = "",
        allowed_roles: Sequence[str] = (),
        allowed_identities: Sequence[str] = (),
        sensitive_fields: Sequence[str] = (),
        display_name: str = "",
    ) -> Callable[[F], F]: ...

    def job(self, function_id: str | F | None = None, /, **options: Any) -> F | Callable[[F], F]:
        """Registers a job function: its handler takes a :class:`~croupier.JobContext` to report
        progress, log lines and data. Started with ``InvokeJob`` it emits ``START``, its
        reports and one terminal event (``DONE`` with the result, ``ERROR`` with a code, or
        ``CANCELLED``); invoked synchronously it runs to its result."""
        return self._decorator(function_id, options, job=True)

    def _decorator(
        self, function_id: str | F | None, options: dict[str, Any], job: bool
    ) -> F | Callable[[F], F]:
        opts = Options(job=job, **options)

        def register(fn: F) -> F:
            fid = function_id if isinstance(function_id, str) else fn.__name__
            self.add(make_spec(fid, fn, opts))
            return fn

        if callable(function_id):
            return register(function_id)
        return register

    def add(self, spec: FunctionSpec) -> None:
        """Adds a function spec (what the decorators do); replaces one with the same id."""
        if self._running:
            raise ConfigError("functions must be added before the agent runs")
        self._specs[spec.function_id] = spec

    def add_service(self, instance: object, name: str | None = None) -> list[str]:
        """Registers the :func:`~croupier.method` methods of a :func:`~croupier.service`
        object as functions ``<service>.<method>``; returns their ids."""
        specs = service_specs(instance, name)
        for s in specs:
            self.add(s)
        return [s.function_id for s in specs]

    @property
    def functions(self) -> dict[str, FunctionSpec]:
        """The registered functions by id."""
        return dict(self._specs)

    def on_node_state(self, callback: Callable[[NodeStateRecord], Any]) -> Callable[[NodeStateRecord], Any]:
        """Calls ``callback(record)`` (sync or async) when the server changes this node's
        state (``StateChange``). Usable as a decorator."""
        self._node_callbacks.append(callback)
        return callback

    # --- observation ---------------------------------------------------------------------

    @property
    def state(self) -> AgentState:
        """The connection state now."""
        return self._state

    def stats(self) -> dict[str, StatsSnapshot]:
        """Per function served: calls, successes, failures, latency, QPS."""
        return self._runner.stats.snapshot()

    @property
    def in_flight(self) -> int:
        """Invocations running now."""
        return self._runner.in_flight

    async def wait_connected(self, timeout: float = 30.0, connects: int = 1) -> AgentState:
        """Waits until the tunnel is open and has been opened at least ``connects`` times."""
        cond = self._cond()
        async with cond:
            await asyncio.wait_for(
                cond.wait_for(lambda: self._state.connected and self._state.connects >= connects),
                timeout,
            )
        return self._state

    def _cond(self) -> asyncio.Condition:
        if self._state_changed is None:
            self._state_changed = asyncio.Condition()
        return self._state_changed

    async def _set_state(self, **changes: Any) -> None:
        self._state = replace(self._state, **changes)
        cond = self._cond()
        async with cond:
            cond.notify_all()

    # --- running -------------------------------------------------------------------------

    def stop(self) -> None:
        """Asks :meth:`run` to say goodbye and return."""
        if self._stop is not None:
            self._stop.set()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Agent]:
        """Runs the agent in a background task for the duration of the block, then stops it::

        async with agent.running():
            await agent.wait_connected()
            ...
        """
        task = asyncio.get_running_loop().create_task(self.run(handle_signals=False))
        try:
            yield self
        finally:
            self.stop()
            await task

    async def run(self, *, handle_signals: bool = True) -> None:
        """Runs until :meth:`stop` (or SIGTERM/SIGINT when ``handle_signals``; a second signal
        exits the process at once with status 130): registers, serves, reconnects."""
        if not self._specs:
            raise ConfigError("the agent has no functions")
        self._running = True
        self._stop = asyncio.Event()
        tls = self._tls.resolved(f"agent-{self.agent_id}")
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(signum, self._on_signal, signum)
                    installed.append(signum)
                except (NotImplementedError, RuntimeError):
                    pass
        backoff = self._backoff.fresh()
        index = 0
        try:
            while not self._stop.is_set():
                server = self.servers[index % len(self.servers)]
                try:
                    await self._session(server, tls, backoff)
                except _SessionEnded as e:
                    await self._set_state(connected=False, last_error=str(e))
                    log.warning("tunnel to %s lost: %s; reconnecting", server, e)
                    index += 1
                else:
                    break
                try:
                    await asyncio.wait_for(self._stop.wait(), backoff.next_delay())
                except asyncio.TimeoutError:
                    pass
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
            await self._set_state(connected=False)
            await self._runner.close()
            self._running = False

    def _on_signal(self, sig: int) -> None:
        assert self._stop is not None
        if self._stop.is_set():
            log.warning("second %s: exiting at once", signal.Signals(sig).name)
            os._exit(130)
        log.info("got %s: saying goodbye", signal.Signals(sig).name)
        self._stop.set()

    async def _notify_node_state(self, record: NodeStateRecord) -> None:
        await self._set_state(node_state=record.state)
        for cb in self._node_callbacks:
            try:
                r = cb(record)
                if asyncio.iscoroutine(r):
                    await r
            except Exception:  # noqa: BLE001 — a callback must not end the session
                log.exception("node state callback failed")

    async def _session(self, server: str, tls: Tls, backoff: Backoff) -> None:
        """One session on ``server``, presenting the last session id to resume it: returns
        after a shutdown; raises :class:`_SessionEnded` when the session is lost."""
        assert self._stop is not None
        channel = open_channel(server, tls)
        try:
            await self._session_on(channel, server, self._state.session_id, backoff)
        finally:
            await channel.close(grace=None)

    async def _session_on(
        self, channel: grpc.aio.Channel, server: str, session_id: str, backoff: Backoff
    ) -> None:
        assert self._stop is not None
        control = control_pb2_grpc.ControlServiceStub(channel)  # type: ignore[no-untyped-call]
        req = control_pb2.RegisterAgentRequest(
            agent_id=self.agent_id,
            game_id=self.game_id,
            env=self.env,
            version=self.version,
            functions=sorted(self._specs),
            labels=self.labels,
            descriptors=[s.descriptor for s in self._specs.values()],
            session_id=session_id,
        )
        try:
            reg = await control.RegisterAgent(req, timeout=RPC_TIMEOUT)
        except grpc.aio.AioRpcError as e:
            if e.code() in (
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.UNAUTHENTICATED,
            ):
                log.error("registration refused: %s: %s", e.code().name, e.details())
            raise _SessionEnded(f"RegisterAgent: {e.code().name}: {e.details()}") from None
        session_id = reg.session_id
        await self._set_state(session_id=session_id, resumed=reg.resumed)
        interval = float(max(reg.heartbeat_interval, 1))
        out: asyncio.Queue[control_pb2.AgentFrame | None] = asyncio.Queue(maxsize=1024)
        await out.put(
            control_pb2.AgentFrame(
                hello=control_pb2.Hello(agent_id=self.agent_id, session_id=session_id)
            )
        )

        async def frames() -> AsyncIterator[control_pb2.AgentFrame]:
            while True:
                f = await out.get()
                if f is None:
                    return
                yield f

        call = control.Connect(frames())
        try:
            first = await asyncio.wait_for(call.read(), RPC_TIMEOUT)
        except (grpc.aio.AioRpcError, asyncio.TimeoutError) as e:
            call.cancel()
            raise _SessionEnded(f"Connect: {e}") from None
        if first is EOF or first.WhichOneof("frame") != "welcome":
            call.cancel()
            raise _SessionEnded("the server did not welcome the tunnel")
        backoff.reset()
        generation = self._state.connects + 1
        await self._set_state(
            connected=True,
            session_id=session_id,
            server=server,
            connects=generation,
            resumed=reg.resumed,
            node_state=NodeState(first.welcome.node_state),
        )
        resent = await self._outbox.attach(generation, out)
        log.info(
            "tunnel open to %s as %s (session %s, resumed %s, %d job events sent again)",
            server, self.agent_id, session_id, reg.resumed, resent,
        )
        over = asyncio.Event()
        loop = asyncio.get_running_loop()
        heartbeat = loop.create_task(self._heartbeats(control, session_id, interval, over))
        reports = loop.create_task(self._forward_reports(out))
        reader = loop.create_task(self._read_frames(call, out))
        stop = loop.create_task(self._stop.wait())
        lost = loop.create_task(over.wait())
        try:
            done, _ = await asyncio.wait({reader, stop, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            over.set()
            heartbeat.cancel()
            reports.cancel()
            stop.cancel()
            lost.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        if reader in done:
            ended: str | None = reader.result()
        elif stop in done:
            ended = None
        else:
            ended = "the session expired"
        if ended is not None:
            await self._outbox.detach(generation)
            call.cancel()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            raise _SessionEnded(ended)
        await self._goodbye(call, out, generation, reader)

    def report_event(
        self,
        type: str,
        *,
        entity_id: str = "",
        status: str = "",
        message: str = "",
        data: Mapping[str, Any] | None = None,
    ) -> None:
        """Reports a node event (``croupier events`` shows it): ``type`` is dotted lowercase,
        e.g. ``"match.crashed"``; the server sets the node id and the sequence number. Events
        wait while no tunnel is open (at most :data:`MAX_QUEUED_REPORTS`; past that the oldest
        are dropped and counted in ``reports_dropped``)."""
        event = fleet_pb2.NodeEvent(
            type=type,
            entity_id=entity_id,
            status=status,
            message=message,
            timestamp=int(time.time() * 1000),
            data={k: str(v) for k, v in (data or {}).items()},
        )
        self._reports.append(control_pb2.AgentFrame(node_event=event))
        while len(self._reports) > MAX_QUEUED_REPORTS:
            self._reports.popleft()
            self.reports_dropped += 1
        if self._reports_ready is not None:
            self._reports_ready.set()

    async def _forward_reports(self, out: asyncio.Queue[control_pb2.AgentFrame | None]) -> None:
        """Sends queued reports down the open tunnel until the session ends."""
        if self._reports_ready is None:
            self._reports_ready = asyncio.Event()
        while True:
            while self._reports:
                frame = self._reports[0]
                await out.put(frame)
                self._reports.popleft()
            self._reports_ready.clear()
            await self._reports_ready.wait()

    async def _read_frames(
        self,
        call: grpc.aio.StreamStreamCall[control_pb2.AgentFrame, control_pb2.ServerFrame],
        out: asyncio.Queue[control_pb2.AgentFrame | None],
    ) -> str:
        """Reads and dispatches frames until the tunnel ends; returns why it ended."""
        while True:
            try:
                frame = await call.read()
            except grpc.aio.AioRpcError as e:
                return f"{e.code().name}: {e.details()}"
            if frame is EOF:
                return "the server closed the tunnel"
            await self._dispatch(cast(control_pb2.ServerFrame, frame), out)

    async def _dispatch(
        self, frame: control_pb2.ServerFrame, out: asyncio.Queue[control_pb2.AgentFrame | None]
    ) -> None:
        kind = frame.WhichOneof("frame")
        if kind == "invoke":
            self._runner.start(frame.invoke, out)
        elif kind == "cancel":
            if self._runner.cancel(frame.cancel.request_id, frame.cancel.reason):
                log.debug("cancelled %s: %s", frame.cancel.request_id, frame.cancel.reason)
        elif kind == "ack":
            await self._outbox.ack(frame.ack.job_id, frame.ack.seq)
        elif kind == "state_change":
            # Apply, then acknowledge: disabled cancels every running call and job;
            # maintenance lets them finish (the server sends no new work).
            raw = frame.state_change.record
            rec = NodeStateRecord.from_proto(raw)
            log.info("node state now %s (%r by %s)", rec.state.name, rec.reason, rec.actor)
            if rec.state == NodeState.DISABLED:
                self._runner.cancel_all(f"node disabled by {rec.actor}: {rec.reason}")
            await self._notify_node_state(rec)
            applied = control_pb2.StateApplied(changed_at=raw.changed_at, state=raw.state)
            await out.put(control_pb2.AgentFrame(state_applied=applied))
        elif kind == "goaway":
            # Keep serving: the server closes the tunnel once its calls are done, and the next
            # session goes to the next server.
            log.info("server going away: %s", frame.goaway.reason)

    async def _heartbeats(
        self,
        control: control_pb2_grpc.ControlServiceStub,
        session_id: str,
        interval: float,
        over: asyncio.Event,
    ) -> None:
        while True:
            await asyncio.sleep(interval)  # registration counts as the first heartbeat
            status = dict(self._status() if self._status else {})
            status["in_flight"] = str(self._runner.in_flight)
            status["running_jobs"] = str(self._outbox.running())
            req = control_pb2.HeartbeatRequest(
                agent_id=self.agent_id,
                timestamp=int(time.time() * 1000),
                status=status,
                session_id=session_id,
            )
            try:
                resp = await control.Heartbeat(req, timeout=interval)
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    log.warning("session expired (%s); registering again", e.details())
                    over.set()
                    return
                log.warning("heartbeat failed: %s: %s", e.code().name, e.details())
                continue
            await self._set_state(
                node_state=NodeState(resp.node_state), heartbeats=self._state.heartbeats + 1
            )

    async def _goodbye(
        self,
        call: grpc.aio.StreamStreamCall[control_pb2.AgentFrame, control_pb2.ServerFrame],
        out: asyncio.Queue[control_pb2.AgentFrame | None],
        generation: int,
        reader: asyncio.Task[str],
    ) -> None:
        """Goodbye, then the drain: running calls get ``shutdown_grace``, the rest is cancelled
        (jobs get 2 s to report CANCELLED), then the stream is closed. The reader goes on
        meanwhile (acks, cancels)."""
        await out.put(
            control_pb2.AgentFrame(goodbye=control_pb2.Goodbye(reason="agent shutting down"))
        )
        end = time.monotonic() + self.shutdown_grace
        while self._runner.in_flight > 0 and time.monotonic() < end and not reader.done():
            await asyncio.sleep(0.02)
        if self._runner.cancel_all("the agent shut down"):
            end = time.monotonic() + 2.0
            while self._runner.in_flight > 0 and time.monotonic() < end and not reader.done():
                await asyncio.sleep(0.02)
        await self._outbox.detach(generation)
        await out.put(None)  # close our side; the server closes its side after the goodbye
        try:
            await asyncio.wait_for(asyncio.shield(reader), 2.0)
        except asyncio.TimeoutError:
            pass
        finally:
            call.cancel()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        log.info("%s said goodbye", self.agent_id)
