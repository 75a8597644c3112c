"""Call statistics: per function and per server, on the caller's and on the provider's side.

Each :class:`CallStats` counts calls, successes and failures since it was made, keeps their
average latency, and over the last minute the p50/p99 latency and the calls per second.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

#: The window of the percentiles and of the QPS figure, seconds.
WINDOW = 60.0
#: Most samples kept per window (older ones are dropped first).
MAX_SAMPLES = 20_000


@dataclass(frozen=True)
class StatsSnapshot:
    """The figures of one function or server at one moment."""

    #: Calls made (attempts, for a server).
    calls: int
    #: Calls that succeeded (for a function: ``success=true``; for a server: answered).
    successes: int
    #: Calls that failed.
    failures: int
    #: Average latency over every call, milliseconds.
    avg_ms: float
    #: Median latency over the last minute, milliseconds.
    p50_ms: float
    #: 99th percentile latency over the last minute, milliseconds.
    p99_ms: float
    #: Calls per second over the last minute (or since the first call, when more recent).
    qps: float


class CallStats:
    """Counters and a one-minute window of latencies."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._start = clock()
        self.calls = 0
        self.successes = 0
        self.failures = 0
        self._total_s = 0.0
        self._window: deque[tuple[float, float]] = deque()

    def record(self, ok: bool, seconds: float) -> None:
        """Counts one call that took ``seconds``."""
        now = self._clock()
        self.calls += 1
        if ok:
            self.successes += 1
        else:
            self.failures += 1
        self._total_s += seconds
        self._window.append((now, seconds))
        if len(self._window) > MAX_SAMPLES:
            self._window.popleft()
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._window and self._window[0][0] < now - WINDOW:
            self._window.popleft()

    def snapshot(self) -> StatsSnapshot:
        """The figures now."""
        now = self._clock()
        self._trim(now)
        lat = sorted(s for _, s in self._window)

        def pct(p: float) -> float:
            if not lat:
                return 0.0
            return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000.0

        span = min(WINDOW, max(now - self._start, 1e-3))
        return StatsSnapshot(
            calls=self.calls,
            successes=self.successes,
            failures=self.failures,
            avg_ms=(self._total_s / self.calls * 1000.0) if self.calls else 0.0,
            p50_ms=pct(0.50),
            p99_ms=pct(0.99),
            qps=len(self._window) / span,
        )


class StatsBook:
    """:class:`CallStats` by name, made on first use."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._by: dict[str, CallStats] = {}

    def get(self, name: str) -> CallStats:
        """The stats of ``name``."""
        s = self._by.get(name)
        if s is None:
            s = self._by[name] = CallStats(self._clock)
        return s

    def snapshot(self) -> dict[str, StatsSnapshot]:
        """Every name's figures, sorted by name."""
        return {k: self._by[k].snapshot() for k in sorted(self._by)}
