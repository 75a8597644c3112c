"""Retries of calls that are safe to repeat, with the rule of the Rust SDK.

A failed call is tried again, with exponential backoff (100 ms doubling to 30 s, ±20 % jitter;
at most :attr:`RetryPolicy.max_attempts` attempts in all, and never past the call's deadline),
when:

- the server was never reached (the connection could not be made): nothing was sent, so any call
  may be repeated; or
- it failed with ``UNAVAILABLE`` (the server answered that no agent could take it, an agent was
  lost mid-call, or the connection broke after the request left) **and** the call is safe to
  repeat:

  - it carries an idempotency key (the server runs a key once and answers repeats with the first
    outcome), or
  - the function's descriptor says ``semantics.kind = "query"`` or ``semantics.idempotent`` (the
    client learns this from ``GetRegistrations`` and trusts it for a minute), or
  - the function is listed in :attr:`RetryPolicy.safe_functions`; or
  - the call is a read of the registry or of jobs, or a cancel (always safe).

Nothing else is retried: a handler that answered (even with ``success=false``), a deadline, a
permission or validation error, or a call failed fast by an open circuit breaker. Starting a job
follows the invocation rule: with a key, the same key returns the same job.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import grpc

from .backoff import Backoff


@dataclass(frozen=True)
class RetryPolicy:
    """How a client retries calls that are safe to repeat."""

    #: Attempts in all, the first included; 1 never retries.
    max_attempts: int = 5
    #: Delay before the first retry, seconds.
    initial_backoff: float = 0.1
    #: Longest delay between attempts, seconds.
    max_backoff: float = 30.0
    #: Random variation of each delay (0.2 = ±20 %).
    jitter: float = 0.2
    #: Functions the caller declares safe to repeat whatever their descriptor says.
    safe_functions: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def none(cls) -> RetryPolicy:
        """Never retries."""
        return cls(max_attempts=1)

    def backoff(self) -> Backoff:
        """A fresh backoff with this policy's delays."""
        return Backoff(self.initial_backoff, self.max_backoff, self.jitter)


class Failure(enum.Enum):
    """Where a failed call failed."""

    #: The server answered with this status.
    ANSWERED = "answered"
    #: The connection could not be made: nothing was sent.
    NOT_SENT = "not_sent"
    #: The connection broke: the request may or may not have reached the server.
    BROKEN = "broken"
    #: The call's own deadline passed before any answer.
    LOCAL_DEADLINE = "deadline"
    #: The circuit breaker refused the call.
    CIRCUIT_OPEN = "circuit_open"


class Decision(enum.Enum):
    """What to do after a failed attempt."""

    RETRY = "retry"
    RETRY_IF_SAFE = "retry_if_safe"
    STOP = "stop"


def decide(failure: Failure, code: grpc.StatusCode) -> Decision:
    """The retry rule for one failure."""
    if failure is Failure.NOT_SENT:
        return Decision.RETRY
    if failure in (Failure.ANSWERED, Failure.BROKEN) and code == grpc.StatusCode.UNAVAILABLE:
        return Decision.RETRY_IF_SAFE
    return Decision.STOP
