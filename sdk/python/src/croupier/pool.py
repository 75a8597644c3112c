"""A pool of ``grpc.aio`` channels to one server, used round-robin.

Each channel has its own HTTP/2 connection (a local subchannel pool), so a killed connection
costs one channel of the pool, not all of them. A background task checks every channel every
``health_interval`` seconds: a channel in ``TRANSIENT_FAILURE`` or ``SHUTDOWN``, or whose
``grpc.health.v1`` check fails, is rebuilt (closed and opened anew). A call that finds its
connection broken marks the channel for an immediate rebuild too. Round-robin skips channels
known to be broken while a healthy one is left.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .tls import Tls, target_of

log = logging.getLogger("croupier.pool")

_S = TypeVar("_S")

#: Largest message sent or accepted (the server's default limit).
MAX_MESSAGE_BYTES = 10 * 1024 * 1024
#: What a stream's ``read()`` returns at its end (``grpc.aio.EOF``, missing from the stubs).
EOF: Any = getattr(grpc.aio, "EOF")
#: The service whose health the pool checks.
HEALTH_SERVICE = "croupier.function.v1.FunctionService"

_BAD = (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN)


def channel_options(local_pool: bool = True) -> list[tuple[str, Any]]:
    """The options of every channel the SDK opens."""
    opts: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        # Reconnect quickly once the server is back (gRPC's own default grows to 120 s).
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 5_000),
        # Retries are the SDK's business (the rule in croupier.retry).
        ("grpc.enable_retries", 0),
    ]
    if local_pool:
        opts.append(("grpc.use_local_subchannel_pool", 1))
    return opts


def open_channel(server: str, tls: Tls) -> grpc.aio.Channel:
    """A new mTLS channel to ``server``."""
    return grpc.aio.secure_channel(target_of(server), tls.credentials(), options=channel_options())


@dataclass(frozen=True)
class PoolStats:
    """The state of a pool."""

    #: Channels in the pool.
    size: int
    #: Channels not known to be broken.
    healthy: int
    #: Channels whose connection is up (``READY``).
    ready: int
    #: Channels rebuilt since the pool started.
    rebuilt: int
    #: Health checks that failed.
    health_failures: int


class PoolSlot:
    """One channel of a pool, with the stubs made on it."""

    __slots__ = ("channel", "broken", "index", "_stubs")

    def __init__(self, channel: grpc.aio.Channel, index: int) -> None:
        self.channel = channel
        self.broken = False
        self.index = index
        self._stubs: dict[Any, Any] = {}

    def stub(self, cls: Callable[[grpc.aio.Channel], _S]) -> _S:
        """A stub of ``cls`` on this slot's channel (made once per channel)."""
        s = self._stubs.get(cls)
        if s is None:
            s = self._stubs[cls] = cls(self.channel)
        return s

    def replace(self, channel: grpc.aio.Channel) -> None:
        """Puts a new channel in the slot."""
        self.channel = channel
        self.broken = False
        self._stubs = {}


class ChannelPool:
    """``size`` channels to one server, round-robin, health-checked and rebuilt when broken."""

    def __init__(
        self, server: str, tls: Tls, size: int = 10, health_interval: float = 10.0
    ) -> None:
        if size < 1:
            raise ValueError("a pool needs at least one channel")
        self.server = server
        self._tls = tls
        self._slots = [PoolSlot(open_channel(server, tls), i) for i in range(size)]
        self._next = 0
        self._health_interval = health_interval
        self._task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self.rebuilt = 0
        self.health_failures = 0

    def start(self) -> None:
        """Starts the health checks (needs a running event loop)."""
        if self._task is None and self._health_interval > 0:
            self._task = asyncio.get_running_loop().create_task(
                self._health_loop(), name=f"croupier-pool-health {self.server}"
            )

    def pick(self) -> PoolSlot:
        """The next slot, round-robin, skipping broken channels while a healthy one is left."""
        n = len(self._slots)
        for _ in range(n):
            i = self._next % n
            self._next += 1
            slot = self._slots[i]
            if not slot.broken and slot.channel.get_state(False) not in _BAD:
                return slot
        # Every channel is known to be broken: rebuild the next one and try it.
        i = self._next % n
        self._next += 1
        self._rebuild(i, "every channel is broken")
        return self._slots[i]

    def other_ready(self, slot: PoolSlot) -> bool:
        """Whether another channel than ``slot``'s is connected and not known to be broken."""
        return any(
            s is not slot and not s.broken and s.channel.get_state(False) == grpc.ChannelConnectivity.READY
            for s in self._slots
        )

    def mark_broken(self, slot: PoolSlot, channel: grpc.aio.Channel, why: str) -> None:
        """A call found the connection of ``slot`` broken: rebuild it now (unless it was
        rebuilt since ``channel`` was handed out)."""
        if slot.channel is channel:
            self._rebuild(slot.index, why)

    def _rebuild(self, index: int, why: str) -> None:
        slot = self._slots[index]
        old = slot.channel
        slot.replace(open_channel(self.server, self._tls))
        # Connect now rather than on the next call through it: a pool keeps its size ready.
        slot.channel.get_state(try_to_connect=True)
        self.rebuilt += 1
        log.info("rebuilt channel %d to %s: %s", index, self.server, why)
        task = asyncio.get_running_loop().create_task(old.close(grace=1.0))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def check(self) -> None:
        """Checks every channel once; rebuilds the broken ones."""
        for i, slot in enumerate(list(self._slots)):
            state = slot.channel.get_state(False)
            if state in _BAD:
                self._rebuild(i, f"channel state {state.name}")
                continue
            if state != grpc.ChannelConnectivity.READY:
                continue  # idle or connecting: nothing to check yet
            stub = health_pb2_grpc.HealthStub(slot.channel)
            try:
                resp = await stub.Check(
                    health_pb2.HealthCheckRequest(service=HEALTH_SERVICE), timeout=3.0
                )
                serving = resp.status == health_pb2.HealthCheckResponse.SERVING
            except (grpc.aio.AioRpcError, asyncio.TimeoutError) as e:
                serving = False
                log.debug("health check of %s failed: %s", self.server, e)
            if not serving:
                self.health_failures += 1
                self._rebuild(i, "health check failed")

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self._health_interval)
            try:
                await self.check()
            except Exception:  # noqa: BLE001 — the loop must go on
                log.exception("pool health check of %s", self.server)

    def stats(self) -> PoolStats:
        """The pool's state now."""
        states = [s.channel.get_state(False) for s in self._slots]
        return PoolStats(
            size=len(self._slots),
            healthy=sum(1 for s, st in zip(self._slots, states) if not s.broken and st not in _BAD),
            ready=sum(1 for st in states if st == grpc.ChannelConnectivity.READY),
            rebuilt=self.rebuilt,
            health_failures=self.health_failures,
        )

    async def close(self) -> None:
        """Stops the health checks and closes every channel."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await asyncio.gather(*(s.channel.close(grace=0.5) for s in self._slots))
        await asyncio.gather(*self._closing, return_exceptions=True)
