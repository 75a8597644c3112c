"""Plain Python views of the protocol's messages: what the client returns and the agent reports.
Each has ``from_proto``; payloads and results are dicts (``Struct`` decoded, integral numbers as
``int``)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from ._structs import from_struct
from .common.v1 import common_pb2
from .function.v1 import function_pb2
from .registry.v1 import registry_pb2


class NodeState(enum.IntEnum):
    """Administrative state of a node (agent)."""

    #: Takes work.
    NORMAL = common_pb2.NODE_STATE_NORMAL
    #: Takes no new work; running jobs go on and heartbeats continue.
    MAINTENANCE = common_pb2.NODE_STATE_MAINTENANCE
    #: Takes no work; registration is refused.
    DISABLED = common_pb2.NODE_STATE_DISABLED


@dataclass(frozen=True)
class NodeStateRecord:
    """A node state with who set it, why and when."""

    agent_id: str
    state: NodeState
    reason: str
    actor: str
    #: Unix milliseconds.
    changed_at: int

    @classmethod
    def from_proto(cls, r: common_pb2.NodeStateRecord) -> NodeStateRecord:
        return cls(r.agent_id, NodeState(r.state), r.reason, r.actor, r.changed_at)


@dataclass(frozen=True)
class AgentResult:
    """One agent's outcome of a broadcast."""

    agent_id: str
    success: bool
    result: dict[str, Any]
    error: str
    error_code: str


@dataclass(frozen=True)
class InvokeResult:
    """The outcome of :meth:`Client.invoke`: the handler's result, or its failure
    (``success=False`` with ``error_code`` and ``error``)."""

    success: bool
    #: The handler's result (a non-object result arrives as ``{"value": v}``).
    result: dict[str, Any]
    error: str
    error_code: str
    #: The agent that ran the call (empty for broadcast).
    agent_id: str
    #: The invocation's id as the agent saw it.
    request_id: str
    #: Broadcast: one result per agent.
    results: list[AgentResult] = field(default_factory=list)

    @classmethod
    def from_proto(cls, r: function_pb2.InvokeFunctionResponse) -> InvokeResult:
        return cls(
            success=r.success,
            result=from_struct(r.result) if r.HasField("result") else {},
            error=r.error,
            error_code=r.error_code,
            agent_id=r.agent_id,
            request_id=r.request_id,
            results=[
                AgentResult(
                    a.agent_id,
                    a.success,
                    from_struct(a.result) if a.HasField("result") else {},
                    a.error,
                    a.error_code,
                )
                for a in r.results
            ],
        )


@dataclass(frozen=True)
class AgentInfo:
    """An agent as a registration lists it."""

    agent_id: str
    addr: str
    last_heartbeat: int
    labels: dict[str, str]
    node_state: NodeState
    online: bool
    version: str

    @classmethod
    def from_proto(cls, a: registry_pb2.AgentInfo) -> AgentInfo:
        return cls(
            a.agent_id, a.addr, a.last_heartbeat, dict(a.labels), NodeState(a.node_state),
            a.online, a.version,
        )


@dataclass(frozen=True)
class FunctionInfo:
    """A function as ``GetRegistrations`` lists it: its descriptor and its agents."""

    function_id: str
    game_id: str
    env: str
    description: str
    params_schema: dict[str, Any]
    result_schema: dict[str, Any]
    #: ``"query"``, ``"command"`` or empty.
    kind: str
    idempotent: bool
    #: Default timeout in seconds (0: the server's).
    timeout: int
    job: bool
    version: str
    agents: list[AgentInfo]
    #: The descriptor as the server holds it.
    descriptor: common_pb2.FunctionDescriptor

    @property
    def safe_to_retry(self) -> bool:
        """True when calls may be repeated without an idempotency key (a query or an idempotent
        function)."""
        return self.kind == "query" or self.idempotent

    @property
    def online_agents(self) -> list[AgentInfo]:
        """Agents whose tunnel is up."""
        return [a for a in self.agents if a.online]

    @classmethod
    def from_proto(cls, r: registry_pb2.FunctionRegistration) -> FunctionInfo:
        d = r.function_descriptor
        return cls(
            function_id=r.function_id,
            game_id=r.game_id,
            env=r.env,
            description=d.description,
            params_schema=from_struct(d.params_schema) if d.HasField("params_schema") else {},
            result_schema=from_struct(d.result_schema) if d.HasField("result_schema") else {},
            kind=d.semantics.kind,
            idempotent=d.semantics.idempotent,
            timeout=d.semantics.timeout,
            job=d.semantics.job,
            version=d.version,
            agents=[AgentInfo.from_proto(a) for a in r.agents],
            descriptor=d,
        )


@dataclass(frozen=True)
class AgentDetail:
    """An agent in full, as ``ListAgents`` reports it."""

    agent_id: str
    game_id: str
    env: str
    version: str
    functions: list[str]
    labels: dict[str, str]
    node_state: NodeStateRecord
    online: bool
    last_heartbeat: int
    owner: str
    status: dict[str, str]
    addr: str
    in_flight: int

    @classmethod
    def from_proto(cls, a: registry_pb2.AgentDetail) -> AgentDetail:
        return cls(
            a.agent_id, a.game_id, a.env, a.version, list(a.functions), dict(a.labels),
            NodeStateRecord.from_proto(a.node_state), a.online, a.last_heartbeat, a.owner,
            dict(a.status), a.addr, a.in_flight,
        )


class EventType(enum.IntEnum):
    """Job event type."""

    START = function_pb2.START
    PROGRESS = function_pb2.PROGRESS
    LOG = function_pb2.LOG
    DONE = function_pb2.DONE
    ERROR = function_pb2.ERROR
    CANCELLED = function_pb2.CANCELLED
    GAP = function_pb2.GAP

    @property
    def terminal(self) -> bool:
        """True for DONE, ERROR and CANCELLED."""
        return self in (EventType.DONE, EventType.ERROR, EventType.CANCELLED)


@dataclass(frozen=True)
class JobEvent:
    """One event of a job."""

    job_id: str
    type: EventType
    message: str
    progress: float
    #: Unix milliseconds.
    timestamp: int
    data: dict[str, Any]
    #: 1, 2, 3… (0 for GAP).
    seq: int

    @classmethod
    def from_proto(cls, e: function_pb2.JobEvent) -> JobEvent:
        return cls(
            e.job_id, EventType(e.type), e.message, e.progress, e.timestamp,
            from_struct(e.data) if e.HasField("data") else {}, e.seq,
        )


@dataclass(frozen=True)
class JobRecord:
    """A job's record."""

    job_id: str
    function_id: str
    game_id: str
    env: str
    agent_id: str
    caller: str
    #: pending, running, completed, failed, cancelled.
    status: str
    created_at: int
    started_at: int
    ended_at: int
    result: dict[str, Any]
    error: str
    error_code: str
    last_seq: int
    first_seq: int
    cancel_reason: str

    @classmethod
    def from_proto(cls, j: function_pb2.JobRecord) -> JobRecord:
        return cls(
            j.job_id, j.function_id, j.game_id, j.env, j.agent_id, j.caller, j.status,
            j.created_at, j.started_at, j.ended_at,
            from_struct(j.result) if j.HasField("result") else {}, j.error, j.error_code,
            j.last_seq, j.first_seq, j.cancel_reason,
        )


class RegistrationEventType(enum.IntEnum):
    """Registration event type."""

    ADDED = registry_pb2.ADDED
    UPDATED = registry_pb2.UPDATED
    REMOVED = registry_pb2.REMOVED
    SYNCED = registry_pb2.SYNCED


@dataclass(frozen=True)
class RegistrationEvent:
    """A registration change (or, before SYNCED, part of the initial state)."""

    type: RegistrationEventType
    #: The function (empty for SYNCED).
    function_id: str
    #: The agent whose change caused the event (empty for the initial state and descriptors).
    agent_id: str
    revision: int
    #: The registration (a delta for changes, see the protocol).
    registration: FunctionInfo | None

    @classmethod
    def from_proto(cls, e: registry_pb2.RegistrationEvent) -> RegistrationEvent:
        reg = FunctionInfo.from_proto(e.registration) if e.HasField("registration") else None
        return cls(
            RegistrationEventType(e.type), e.registration.function_id, e.agent_id, e.revision, reg
        )
