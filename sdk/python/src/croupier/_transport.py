"""The client's way to the servers: one channel pool and one circuit breaker per server, the
attempt loop that applies the retry rule (:mod:`croupier.retry`), failover between servers, and
the classification of failures ("never sent", "connection broke", "answered").

A call goes to the first server, in the order given, whose breaker lets it through. A failure to
reach a server (nothing sent, or the connection broke) moves the client on to the next server
for the attempts that follow; it stays there until that one fails in turn.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import grpc
import grpc.aio
from google.rpc import error_details_pb2, status_pb2

from .breaker import BreakerPolicy, BreakerState, CircuitBreaker, Outcome, Permit
from .errors import CircuitOpenError, ConfigError, RpcError
from .pool import EOF, ChannelPool, PoolSlot, PoolStats
from .retry import Decision, Failure, RetryPolicy, decide
from .stats import CallStats, StatsSnapshot
from .tls import Tls

T = TypeVar("T")

#: Longest wait for a connection to come up before a call counts as "never sent".
CONNECT_TIMEOUT = 5.0

# Messages gRPC core gives when a connection (not the server) failed.
_TRANSPORT_HINTS = (
    "socket closed",
    "connection reset",
    "failed to connect",
    "broken pipe",
    "transport closed",
    "connection refused",
    "stream removed",
    "goaway",
    "keepalive",
    "stream removed",
    "connection timed out",
    "end of tcp stream",
    "recvmsg",
    "sendmsg",
    "handshake",
    "connection lost",
    "connection aborted",
)


class _NotSent(Exception):
    """The connection could not be made within the time allowed."""


@dataclass(frozen=True)
class ServerStats:
    """The figures of one server: attempts sent to it, its breaker and its pool."""

    #: The server URL.
    server: str
    #: Attempts (a retried call counts each attempt), their latency and QPS.
    calls: StatsSnapshot
    #: The breaker's state.
    breaker: BreakerState
    #: Times the breaker opened.
    breaker_opened: int
    #: The channel pool.
    pool: PoolStats


class ServerConn:
    """One server: its pool, breaker and stats."""

    def __init__(
        self, url: str, tls: Tls, pool_size: int, health_interval: float, policy: BreakerPolicy
    ) -> None:
        self.url = url
        self.pool = ChannelPool(url, tls, pool_size, health_interval)
        self.breaker = CircuitBreaker(url, policy)
        self.stats = CallStats()

    def snapshot(self) -> ServerStats:
        """The server's figures now."""
        return ServerStats(
            server=self.url,
            calls=self.stats.snapshot(),
            breaker=self.breaker.state,
            breaker_opened=self.breaker.opened,
            pool=self.pool.stats(),
        )


def error_info(e: grpc.aio.AioRpcError) -> tuple[str, dict[str, str]]:
    """The ``google.rpc.ErrorInfo`` (reason, metadata) a status carries in
    ``grpc-status-details-bin``, as the server sends it with every error; ("", {}) without one."""
    pairs = cast("list[tuple[str, object]]", list(e.trailing_metadata() or ()))
    for key, value in pairs:
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        status = status_pb2.Status()
        try:
            status.ParseFromString(value)
        except Exception:  # noqa: BLE001 - a malformed detail is no detail
            return "", {}
        for any_ in status.details:
            info = error_details_pb2.ErrorInfo()
            if any_.Is(info.DESCRIPTOR) and any_.Unpack(info):
                return info.reason, dict(info.metadata)
    return "", {}


def classify(e: grpc.aio.AioRpcError, channel: grpc.aio.Channel, local_deadline: float) -> Failure:
    """Where a failed attempt failed."""
    code = e.code()
    details = (e.details() or "").lower()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() >= local_deadline - 0.05:
        return Failure.LOCAL_DEADLINE
    if code == grpc.StatusCode.UNAVAILABLE:
        state = channel.get_state(False)
        if state != grpc.ChannelConnectivity.READY or any(h in details for h in _TRANSPORT_HINTS):
            return Failure.BROKEN
    if code == grpc.StatusCode.CANCELLED and "locally cancelled" in details:
        return Failure.LOCAL_DEADLINE
    return Failure.ANSWERED


def outcome_of(failure: Failure) -> Outcome:
    """What a failure tells the breaker."""
    if failure in (Failure.NOT_SENT, Failure.BROKEN):
        return Outcome.UNREACHABLE
    if failure is Failure.ANSWERED:
        return Outcome.REACHED
    return Outcome.NEUTRAL


async def ensure_ready(channel: grpc.aio.Channel, timeout: float) -> None:
    """Waits until ``channel`` is connected; raises :class:`_NotSent` when it fails to connect
    or does not within ``timeout``."""
    state = channel.get_state(True)
    if state == grpc.ChannelConnectivity.READY:
        return
    end = time.monotonic() + timeout
    while True:
        if state == grpc.ChannelConnectivity.READY:
            return
        if state in (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN):
            raise _NotSent(f"connection failed ({state.name})")
        left = end - time.monotonic()
        if left <= 0:
            raise _NotSent(f"not connected within {timeout:.1f} s ({state.name})")
        try:
            await asyncio.wait_for(channel.wait_for_state_change(state), left)
        except asyncio.TimeoutError:
            raise _NotSent(f"not connected within {timeout:.1f} s ({state.name})") from None
        state = channel.get_state(True)


Safe = bool | Callable[[], Awaitable[bool]]


class Transport:
    """Pools, breakers and the attempt loop over a list of servers."""

    def __init__(
        self,
        servers: Sequence[str],
        tls: Tls,
        *,
        pool_size: int,
        health_interval: float,
        retry: RetryPolicy,
        breaker: BreakerPolicy,
    ) -> None:
        if not servers:
            raise ConfigError("no server address configured")
        self.retry = retry
        self.conns = [ServerConn(s, tls, pool_size, health_interval, breaker) for s in servers]
        self._current = 0

    def start(self) -> None:
        """Starts the pools' health checks."""
        for c in self.conns:
            c.pool.start()

    async def close(self) -> None:
        """Closes every pool."""
        await asyncio.gather(*(c.pool.close() for c in self.conns))

    def _pick(self) -> tuple[ServerConn, Permit]:
        n = len(self.conns)
        first: CircuitOpenError | None = None
        for k in range(n):
            conn = self.conns[(self._current + k) % n]
            try:
                return conn, conn.breaker.acquire()
            except CircuitOpenError as e:
                first = first or e
        assert first is not None
        if n > 1:
            raise CircuitOpenError(
                grpc.StatusCode.UNAVAILABLE,
                f"every server's circuit is open ({first.message})",
                server=first.server,
            )
        raise first

    def _failed_over(self, conn: ServerConn) -> None:
        if len(self.conns) > 1 and self.conns[self._current % len(self.conns)] is conn:
            self._current = (self._current + 1) % len(self.conns)

    async def call(
        self,
        what: str,
        deadline: float,
        safe: Safe,
        attempt: Callable[[PoolSlot, float], Awaitable[T]],
    ) -> T:
        """Runs ``attempt(slot, seconds_left)`` until it succeeds or the retry rule, the
        attempts, the deadline or the breakers say stop. ``safe`` (a bool, or an async callable
        awaited at most once and only when needed) says whether the call may be repeated."""
        backoff = self.retry.backoff()
        known_safe: bool | None = safe if isinstance(safe, bool) else None
        attempts = 0
        while True:
            conn, permit = self._pick()
            attempts += 1
            left = deadline - time.monotonic()
            slot = conn.pool.pick()
            channel = slot.channel
            t0 = time.monotonic()
            try:
                if left <= 0:
                    permit.record(Outcome.NEUTRAL)
                    raise RpcError(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"{what}: the call's deadline passed before an attempt could be made",
                        server=conn.url,
                    )
                await ensure_ready(channel, min(left, CONNECT_TIMEOUT))
                result = await attempt(slot, deadline - time.monotonic())
            except _NotSent as e:
                failure, code = Failure.NOT_SENT, grpc.StatusCode.UNAVAILABLE
                err = RpcError(code, f"cannot reach {conn.url}: {e}", server=conn.url)
            except grpc.aio.AioRpcError as e:
                failure, code = classify(e, channel, deadline), e.code()
                msg = e.details() or code.name
                if failure is Failure.BROKEN:
                    msg = f"connection to {conn.url} failed: {msg}"
                elif failure is Failure.LOCAL_DEADLINE:
                    msg = f"{conn.url} did not answer {what} before the call's deadline"
                reason, details = error_info(e)
                err = RpcError(code, msg, server=conn.url, reason=reason, details=details)
            except asyncio.CancelledError:
                permit.record(Outcome.NEUTRAL)
                raise
            else:
                permit.record(Outcome.REACHED)
                conn.stats.record(True, time.monotonic() - t0)
                return result
            outcome = outcome_of(failure)
            if failure is Failure.BROKEN and conn.pool.other_ready(slot):
                # One connection broke while others to the same server work: that says nothing
                # about the server, so it does not count towards opening its circuit.
                outcome = Outcome.NEUTRAL
            permit.record(outcome, err.message)
            conn.stats.record(False, time.monotonic() - t0)
            if failure in (Failure.NOT_SENT, Failure.BROKEN):
                conn.pool.mark_broken(slot, channel, err.message)
                self._failed_over(conn)
            if attempts >= max(self.retry.max_attempts, 1):
                raise err
            decision = decide(failure, code)
            if decision is Decision.STOP:
                raise err
            if decision is Decision.RETRY_IF_SAFE:
                if known_safe is None:
                    assert not isinstance(safe, bool)
                    known_safe = await safe()
                if not known_safe:
                    raise err
            delay = backoff.next_delay()
            if time.monotonic() + delay >= deadline:
                raise err
            await asyncio.sleep(delay)

    async def stream(
        self,
        what: str,
        open_call: Callable[[PoolSlot], grpc.aio.UnaryStreamCall[Any, T]],
    ) -> AsyncIterator[T]:
        """Opens a server-streaming call through a breaker (once: the caller decides how to
        resume) and yields its messages; failures are :class:`RpcError`."""
        conn, permit = self._pick()
        slot = conn.pool.pick()
        channel = slot.channel
        try:
            await ensure_ready(channel, CONNECT_TIMEOUT)
        except _NotSent as e:
            permit.record(Outcome.UNREACHABLE, str(e))
            conn.pool.mark_broken(slot, channel, str(e))
            self._failed_over(conn)
            raise RpcError(
                grpc.StatusCode.UNAVAILABLE, f"cannot reach {conn.url}: {e}", server=conn.url
            ) from None
        call = open_call(slot)
        try:
            while True:
                try:
                    msg = await call.read()
                except grpc.aio.AioRpcError as e:
                    failure = classify(e, channel, float("inf"))
                    permit.record(outcome_of(failure), e.details() or "")
                    if failure is Failure.BROKEN:
                        conn.pool.mark_broken(slot, channel, e.details() or "")
                        self._failed_over(conn)
                    reason, details = error_info(e)
                    raise RpcError(
                        e.code(),
                        e.details() or e.code().name,
                        server=conn.url,
                        reason=reason,
                        details=details,
                    ) from None
                if msg is EOF:
                    permit.record(Outcome.REACHED)
                    return
                permit.record(Outcome.REACHED)
                yield cast(T, msg)
        finally:
            permit.record(Outcome.NEUTRAL)
            call.cancel()
