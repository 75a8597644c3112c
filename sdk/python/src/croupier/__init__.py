"""Croupier's Python asyncio SDK: serve functions as an agent, invoke them through the mesh.

Layout:

- :mod:`croupier.agent` — :class:`Agent`, the provider runtime (registration, the ``Connect``
  tunnel, heartbeats, reconnects, resume, goodbye);
  :mod:`croupier.functions` — the function specs, descriptors and the class-based form
  (:func:`service`, :func:`method`); :mod:`croupier.schema` — JSON Schemas derived from type
  hints; :mod:`croupier.context` — :class:`CallContext` and :class:`JobContext`;
  :mod:`croupier.outbox` — job events kept until acknowledged and replayed after a reconnect.
- :mod:`croupier.client` — :class:`Client` (invoke, jobs, registry, watch, node state, stats);
  :mod:`croupier.jobs` — :class:`Job`; :mod:`croupier.pool` — channel pools;
  :mod:`croupier.retry`, :mod:`croupier.breaker`, :mod:`croupier.backoff` — failure handling;
  :mod:`croupier.stats` — call statistics.
- :mod:`croupier.models` — plain views of the protocol's messages; :mod:`croupier.tls` — mTLS
  material; :mod:`croupier.errors` — exceptions.
- ``croupier.{common,control,function,registry}.v1`` — code generated from ``proto/``.
"""

from .agent import Agent, AgentState
from .backoff import Backoff
from .breaker import BreakerPolicy, BreakerState
from .client import Client, Stats
from .context import CallContext, JobContext
from .errors import (
    CircuitOpenError,
    ConfigError,
    CroupierError,
    DecodeError,
    HandlerError,
    RpcError,
)
from .functions import method, service
from .jobs import Job
from .models import (
    AgentDetail,
    AgentInfo,
    AgentResult,
    EventType,
    FunctionInfo,
    InvokeResult,
    JobEvent,
    JobRecord,
    NodeState,
    NodeStateRecord,
    RegistrationEvent,
    RegistrationEventType,
)
from .retry import RetryPolicy
from .stats import StatsSnapshot
from .tls import Tls, TlsError

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentDetail",
    "AgentInfo",
    "AgentResult",
    "AgentState",
    "Backoff",
    "BreakerPolicy",
    "BreakerState",
    "CallContext",
    "CircuitOpenError",
    "Client",
    "ConfigError",
    "CroupierError",
    "DecodeError",
    "EventType",
    "FunctionInfo",
    "HandlerError",
    "InvokeResult",
    "Job",
    "JobContext",
    "JobEvent",
    "JobRecord",
    "NodeState",
    "NodeStateRecord",
    "RegistrationEvent",
    "RegistrationEventType",
    "RetryPolicy",
    "RpcError",
    "Stats",
    "StatsSnapshot",
    "Tls",
    "TlsError",
    "method",
    "service",
]
