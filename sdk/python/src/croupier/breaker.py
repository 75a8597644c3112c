"""The per-server circuit breaker of a :class:`~croupier.Client`, with the settings of the
asyncio gRPC framework design: 5 failures open it, it stays open 30 s, and 3 successes in
half-open close it.

- **closed**: calls go through. A call that could not reach the server (the connection could
  not be made or broke) counts as a failure; any answer from the server, errors included, resets
  the count. ``failure_threshold`` failures in a row open the breaker.
- **open**: for ``recovery_timeout`` seconds calls fail at once with
  :class:`~croupier.CircuitOpenError` without touching the network.
- **half-open**: then one probe call at a time goes through (others fail fast). A probe that
  reaches the server counts a success; ``success_threshold`` of them close the breaker. A probe
  that fails opens it for another ``recovery_timeout``.

An ``UNAVAILABLE`` answered by the server (no usable agent, an agent lost mid-call) does not
count: the server is up, and one function without agents must not cut a client off from every
other function. A call that ran out of its own deadline is neutral.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from .errors import CircuitOpenError


@dataclass(frozen=True)
class BreakerPolicy:
    """When a breaker opens, for how long, and how it closes again."""

    #: Consecutive failures to reach the server that open the breaker; 0 never opens it.
    failure_threshold: int = 5
    #: Seconds the breaker stays open before it lets a probe through.
    recovery_timeout: float = 30.0
    #: Successful probes in half-open that close the breaker.
    success_threshold: int = 3

    @classmethod
    def disabled(cls) -> BreakerPolicy:
        """A breaker that never opens."""
        return cls(failure_threshold=0)


class BreakerState(str, enum.Enum):
    """The state of a breaker."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Outcome(enum.Enum):
    """What one call told the breaker."""

    #: The server answered (success or not).
    REACHED = "reached"
    #: The server could not be reached.
    UNREACHABLE = "unreachable"
    #: Nothing learned (the call's own deadline passed, or it was cancelled).
    NEUTRAL = "neutral"


class Permit:
    """One call let through by a breaker; report how it went with :meth:`record`."""

    def __init__(self, breaker: CircuitBreaker, probe: bool) -> None:
        self._breaker = breaker
        self.probe = probe
        self._done = False

    def record(self, outcome: Outcome, why: str = "") -> None:
        """Reports the call's outcome (once; later reports are ignored)."""
        if not self._done:
            self._done = True
            self._breaker._record(self.probe, outcome, why)


class CircuitBreaker:
    """A circuit breaker for one server."""

    def __init__(
        self,
        server: str,
        policy: BreakerPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.server = server
        self.policy = policy or BreakerPolicy()
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._successes = 0
        self._probing = False
        self._open_until = 0.0
        self._last_error = ""
        #: Times the breaker opened.
        self.opened = 0

    @property
    def state(self) -> BreakerState:
        """The current state (an open breaker whose interval is over reports half-open)."""
        if self._state is BreakerState.OPEN and self._clock() >= self._open_until:
            return BreakerState.HALF_OPEN
        return self._state

    def allows(self) -> bool:
        """True when :meth:`acquire` would let a call through now."""
        s = self.state
        return s is BreakerState.CLOSED or (s is BreakerState.HALF_OPEN and not self._probing)

    def acquire(self) -> Permit:
        """Lets one call through, or raises :class:`CircuitOpenError`."""
        if self._state is BreakerState.OPEN:
            left = self._open_until - self._clock()
            if left > 0:
                raise CircuitOpenError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"circuit open for {self.server} (for {left:.1f} s more) after "
                    f"{self.policy.failure_threshold} consecutive failures to reach it "
                    f"(last: {self._last_error}); failing fast",
                    server=self.server,
                )
            self._state = BreakerState.HALF_OPEN
            self._successes = 0
            self._probing = False
        if self._state is BreakerState.HALF_OPEN:
            if self._probing:
                raise CircuitOpenError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"circuit half-open for {self.server}: waiting for a probe call to reach it "
                    f"(last failure: {self._last_error}); failing fast",
                    server=self.server,
                )
            self._probing = True
            return Permit(self, probe=True)
        return Permit(self, probe=False)

    def _record(self, probe: bool, outcome: Outcome, why: str) -> None:
        if probe:
            self._probing = False
        if outcome is Outcome.REACHED:
            if self._state is BreakerState.HALF_OPEN:
                if probe:
                    self._successes += 1
                    if self._successes >= max(self.policy.success_threshold, 1):
                        self._state = BreakerState.CLOSED
                        self._failures = 0
            else:
                self._failures = 0
        elif outcome is Outcome.UNREACHABLE:
            self._last_error = why
            if self._state is BreakerState.HALF_OPEN:
                self._open()
            elif self._state is BreakerState.CLOSED:
                self._failures += 1
                threshold = self.policy.failure_threshold
                if threshold > 0 and self._failures >= threshold:
                    self._open()

    def _open(self) -> None:
        self._state = BreakerState.OPEN
        self._open_until = self._clock() + self.policy.recovery_timeout
        self._successes = 0
        self.opened += 1
