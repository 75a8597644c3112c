"""Exponential backoff with jitter (the game-node design's numbers: 100 ms → 30 s, ×2, ±20 %)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays that start at ``initial``, double up to ``maximum`` and vary by ±``jitter``."""

    initial: float = 0.1
    maximum: float = 30.0
    jitter: float = 0.2
    _next: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.jitter = min(max(self.jitter, 0.0), 1.0)
        self.maximum = max(self.maximum, self.initial)
        self._next = self.initial

    def next_delay(self) -> float:
        """The next delay, in seconds."""
        base = self._next
        self._next = min(self._next * 2, self.maximum)
        return base * (1.0 + random.uniform(-self.jitter, self.jitter))

    def reset(self) -> None:
        """Back to the initial delay (after a success)."""
        self._next = self.initial

    def fresh(self) -> Backoff:
        """A new backoff with the same settings."""
        return Backoff(self.initial, self.maximum, self.jitter)
