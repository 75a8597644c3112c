"""Unit tests: schemas from type hints, the breaker's states, backoff, the outbox, Structs."""

from __future__ import annotations

import asyncio
from typing import Optional

import pytest
from pydantic import BaseModel

import croupier
from croupier._structs import from_struct, to_struct
from croupier.backoff import Backoff
from croupier.breaker import BreakerPolicy, BreakerState, CircuitBreaker, Outcome
from croupier.control.v1 import control_pb2
from croupier.function.v1 import function_pb2
from croupier.outbox import OUTBOX_PER_JOB, Outbox
from croupier.retry import Decision, Failure, decide
from croupier.schema import derive

import grpc


class Kick(BaseModel):
    player_id: str
    reason: Optional[str] = None


def test_schema_from_a_model_parameter() -> None:
    async def kick(k: Kick) -> list[str]: ...

    s = derive(kick)
    assert s.params_schema["properties"]["player_id"] == {"title": "Player Id", "type": "string"}
    assert s.params_schema["required"] == ["player_id"]
    assert s.result_schema == {
        "type": "object", "properties": {"value": {"type": "array", "items": {"type": "string"}}},
        "required": ["value"],
    }
    assert s.arguments({"player_id": "p"}, "f") == {"k": Kick(player_id="p")}


def test_schema_from_plain_parameters_and_context() -> None:
    async def f(ctx: croupier.JobContext, n: int, tags: list[str] | None = None) -> Kick: ...

    s = derive(f)
    assert s.context_param == "ctx"
    assert s.params_schema["required"] == ["n"]
    assert s.params_schema["properties"]["n"]["type"] == "integer"
    assert s.params_schema["additionalProperties"] is False
    assert s.result_schema["title"] == "Kick"
    assert s.arguments({"n": 3}, "f") == {"n": 3, "tags": None}
    with pytest.raises(croupier.HandlerError) as e:
        s.arguments({"n": "x"}, "f")
    assert e.value.code == "INVALID_ARGUMENT" and "at /n" in e.value.message
    assert s.result(Kick(player_id="a")) == {"player_id": "a", "reason": None}


def test_kwargs_accept_extra_fields() -> None:
    def update(player_id: str, **fields: object) -> bool: ...

    s = derive(update)
    assert s.params_schema["additionalProperties"] is True
    assert not s.is_async
    assert s.arguments({"player_id": "p", "level": 2}, "f") == {"player_id": "p", "level": 2}


def test_breaker_opens_after_failures_and_closes_after_successes() -> None:
    now = [0.0]
    b = CircuitBreaker("s", BreakerPolicy(failure_threshold=5, recovery_timeout=30, success_threshold=3),
                       clock=lambda: now[0])
    for _ in range(4):
        b.acquire().record(Outcome.UNREACHABLE, "refused")
    b.acquire().record(Outcome.REACHED)
    assert b.state is BreakerState.CLOSED, "an answer resets the count"
    for _ in range(5):
        b.acquire().record(Outcome.UNREACHABLE, "refused")
    assert b.state is BreakerState.OPEN
    with pytest.raises(croupier.CircuitOpenError):
        b.acquire()
    now[0] = 30.0
    assert b.state is BreakerState.HALF_OPEN
    p = b.acquire()
    with pytest.raises(croupier.CircuitOpenError):
        b.acquire()  # one probe at a time
    p.record(Outcome.REACHED)
    b.acquire().record(Outcome.REACHED)
    assert b.state is BreakerState.HALF_OPEN
    b.acquire().record(Outcome.UNREACHABLE, "again")
    assert b.state is BreakerState.OPEN, "a failed probe opens it again"
    now[0] = 61.0
    for _ in range(3):
        b.acquire().record(Outcome.REACHED)
    assert b.state is BreakerState.CLOSED and b.opened == 2


def test_the_retry_rule() -> None:
    U, D = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED
    assert decide(Failure.NOT_SENT, U) is Decision.RETRY
    assert decide(Failure.ANSWERED, U) is Decision.RETRY_IF_SAFE
    assert decide(Failure.BROKEN, U) is Decision.RETRY_IF_SAFE
    for f, c in ((Failure.ANSWERED, D), (Failure.ANSWERED, grpc.StatusCode.INVALID_ARGUMENT),
                 (Failure.LOCAL_DEADLINE, D), (Failure.CIRCUIT_OPEN, U)):
        assert decide(f, c) is Decision.STOP


def test_backoff_doubles_caps_and_jitters() -> None:
    b = Backoff()
    for base in [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30, 30]:
        d = b.next_delay()
        assert base * 0.8 - 1e-9 <= d <= base * 1.2 + 1e-9
    b.reset()
    assert b.next_delay() <= 0.12


def test_structs_round_trip_with_integers() -> None:
    v = {"a": 1, "b": [True, None, "x", 2.5], "c": {"d": -3}}
    assert from_struct(to_struct(v)) == v
    assert from_struct(to_struct(7)) == {"value": 7}


async def test_outbox_keeps_events_until_acked_and_resends_on_attach() -> None:
    out = Outbox()
    assert await out.begin("j1", "f")
    assert not await out.begin("j1", "f"), "a repeated Invoke is not a new job"
    await out.emit("j1", function_pb2.START, "s", 0.0, None)
    await out.emit("j1", function_pb2.LOG, "l", 0.0, None)
    q: asyncio.Queue[control_pb2.AgentFrame | None] = asyncio.Queue()
    assert await out.attach(1, q) == 2
    frames = [q.get_nowait() for _ in range(q.qsize())]
    assert frames[0].WhichOneof("frame") == "jobs_report"
    assert [(j.job_id, j.last_seq) for j in frames[0].jobs_report.jobs] == [("j1", 2)]
    assert [f.job_event.event.seq for f in frames[1:]] == [1, 2]
    await out.ack("j1", 1)
    await out.emit("j1", function_pb2.DONE, "d", 1.0, {"ok": True})
    assert out.running() == 0 and out.held() == 1
    q2: asyncio.Queue[control_pb2.AgentFrame | None] = asyncio.Queue()
    await out.attach(2, q2)
    frames = [q2.get_nowait() for _ in range(q2.qsize())]
    assert [(j.job_id, j.last_seq) for j in frames[0].jobs_report.jobs] == [("j1", 3)]
    assert [f.job_event.event.seq for f in frames[1:]] == [2, 3]
    await out.ack("j1", 3)
    assert out.held() == 0, "finished and acknowledged jobs are let go"


async def test_a_full_outbox_makes_the_emitter_wait() -> None:
    out = Outbox()
    await out.begin("j", "f")
    for _ in range(OUTBOX_PER_JOB):
        await out.emit("j", function_pb2.LOG, "", 0.0, None)
    blocked = asyncio.create_task(out.emit("j", function_pb2.LOG, "one more", 0.0, None))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    await out.ack("j", 10)
    await asyncio.wait_for(blocked, 5)
