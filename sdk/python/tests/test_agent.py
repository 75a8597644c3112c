"""A decorated Python provider served through a real server and called by the client."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import time

import grpc
import pytest
from pydantic import BaseModel

import croupier
from conftest import Mesh, online, wait_until


class PlayerInfo(BaseModel):
    player_id: str
    level: int
    detail: bool


def make_agent(mesh: Mesh, agent_id: str, env: str, **kw: object) -> croupier.Agent:
    return croupier.Agent(
        mesh.url, agent_id, env=env, tls=croupier.Tls.from_dir(mesh.certs), **kw  # type: ignore[arg-type]
    )


async def test_registers_derived_schemas_and_serves_typed_calls(
    mesh: Mesh, agent_id: str, env: str
) -> None:
    agent = make_agent(mesh, agent_id, env, labels={"zone": "eu"})

    @agent.function("player.info", timeout=3.0, description="Get a player", kind="query")
    async def player_info(player_id: str, detail: bool = False) -> PlayerInfo:
        return PlayerInfo(player_id=player_id, level=10, detail=detail)

    async with agent.running(), mesh.client(env=env) as client:
        await agent.wait_connected()
        [f] = await client.functions(function_id="player.info")
        assert f.description == "Get a player"
        assert (f.kind, f.timeout) == ("query", 3)
        assert f.params_schema["properties"]["player_id"]["type"] == "string"
        assert f.params_schema["properties"]["detail"] == {
            "default": False, "title": "Detail", "type": "boolean"
        }
        assert f.params_schema["required"] == ["player_id"]
        assert f.params_schema["additionalProperties"] is False
        assert f.result_schema["properties"]["level"]["type"] == "integer"
        assert [(a.agent_id, a.online, a.labels) for a in f.agents] == [(agent_id, True, {"zone": "eu"})]

        info = await client.invoke_typed("player.info", {"player_id": "p1", "detail": True}, PlayerInfo)
        assert info == PlayerInfo(player_id="p1", level=10, detail=True)
        raw = await client.invoke("player.info", {"player_id": "p2"})
        assert raw.success and raw.agent_id == agent_id and raw.request_id
        assert raw.result == {"player_id": "p2", "level": 10, "detail": False}


async def test_bad_payload_is_refused_by_the_server_naming_the_field(
    mesh: Mesh, agent_id: str, env: str
) -> None:
    agent = make_agent(mesh, agent_id, env)
    calls = 0

    @agent.function("player.level")
    async def level(player_id: str, level: int) -> dict[str, int]:
        nonlocal calls
        calls += 1
        return {"level": level}

    async with agent.running(), mesh.client(env=env) as client:
        await agent.wait_connected()
        with pytest.raises(croupier.RpcError) as e:
            await client.invoke("player.level", {"player_id": "p1", "level": "high"})
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "at /level" in e.value.message and "integer" in e.value.message, e.value.message
        with pytest.raises(croupier.RpcError) as e:
            await client.invoke("player.level", {"level": 3})
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "player_id" in e.value.message, e.value.message
        with pytest.raises(croupier.RpcError) as e:
            await client.invoke("player.level", {"player_id": "p", "level": 1, "extra": 1})
        assert "extra" in e.value.message, e.value.message
        assert calls == 0, "a refused payload never reaches the handler"
        assert (await client.invoke_typed("player.level", {"player_id": "p", "level": 7})) == {"level": 7}
        assert calls == 1


async def test_handler_errors_become_failures_and_tracebacks_stay_in_the_log(
    mesh: Mesh, agent_id: str, env: str, caplog: pytest.LogCaptureFixture
) -> None:
    agent = make_agent(mesh, agent_id, env)

    @agent.function("player.ban")
    async def ban(player_id: str) -> dict[str, str]:
        if player_id == "admin":
            raise croupier.HandlerError("FORBIDDEN", "admins cannot be banned")
        raise KeyError(player_id)

    caplog.set_level(logging.ERROR, logger="croupier.agent")
    async with agent.running(), mesh.client(env=env) as client:
        await agent.wait_connected()
        r = await client.invoke("player.ban", {"player_id": "admin"})
        assert (r.success, r.error_code, r.error) == (False, "FORBIDDEN", "admins cannot be banned")
        with pytest.raises(croupier.HandlerError) as e:
            await client.invoke_typed("player.ban", {"player_id": "p9"})
        assert e.value.code == "INTERNAL" and e.value.agent_id == agent_id
        assert "KeyError" in e.value.message and "Traceback" not in e.value.message
        assert 'File "' not in e.value.message
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "handler of player.ban failed" in logged
    assert any(r.exc_info for r in caplog.records), "the traceback is logged on the agent"


async def test_deadline_cancels_the_handler(mesh: Mesh, agent_id: str, env: str) -> None:
    agent = make_agent(mesh, agent_id, env)
    cancelled = asyncio.Event()

    @agent.function("slow.op")
    async def slow(ms: int) -> dict[str, int]:
        try:
            await asyncio.sleep(ms / 1000)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {"slept": ms}

    async with agent.running(), mesh.client(env=env) as client:
        await agent.wait_connected()
        t0 = time.monotonic()
        with pytest.raises(croupier.RpcError) as e:
            await client.invoke("slow.op", {"ms": 10_000}, timeout=1)
        assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED, e.value
        assert time.monotonic() - t0 < 3.0
        await asyncio.wait_for(cancelled.wait(), 3.0)
        assert agent.in_flight == 0


async def test_a_slow_handler_never_blocks_another(mesh: Mesh, agent_id: str, env: str) -> None:
    agent = make_agent(mesh, agent_id, env)

    @agent.function("work.slow")
    async def slow() -> dict[str, bool]:
        await asyncio.sleep(1.5)
        return {"done": True}

    @agent.function("work.fast")
    def fast(n: int) -> int:  # a plain function runs in a thread
        return n * 2

    async with agent.running(), mesh.client(env=env) as client:
        await agent.wait_connected()
        t0 = time.monotonic()
        slow_calls = [asyncio.create_task(client.invoke("work.slow")) for _ in range(8)]
        await asyncio.sleep(0.2)
        for i in range(5):
            assert await client.invoke_typed("work.fast", {"n": i}) == i * 2
        assert time.monotonic() - t0 < 1.4, "fast calls answered while slow ones run"
        results = await asyncio.gather(*slow_calls)
        assert all(r.success for r in results)
        assert time.monotonic() - t0 < 3.0, "slow calls ran concurrently"


async def test_cancelled_when_the_node_is_disabled_and_state_changes_reach_the_agent(
    mesh: Mesh, agent_id: str, env: str
) -> None:
    agent = make_agent(mesh, agent_id, env)
    records: list[croupier.NodeStateRecord] = []
    agent.on_node_state(records.append)

    @agent.function("svc.ping")
    async def ping() -> str:
        return "pong"

    async with agent.running(), mesh.client(env=env) as client, mesh.admin() as admin:
        await agent.wait_connected()
        assert await client.invoke_typed("svc.ping") == "pong"
        rec = await admin.set_node_state(agent_id, croupier.NodeState.MAINTENANCE, "patching")
        assert rec.state == croupier.NodeState.MAINTENANCE and "admin/ops" in rec.actor
        await wait_until(lambda: agent.state.node_state == croupier.NodeState.MAINTENANCE)
        assert [(r.state, r.reason) for r in records] == [(croupier.NodeState.MAINTENANCE, "patching")]
        with pytest.raises(croupier.RpcError) as e:
            await client.invoke("svc.ping")
        assert e.value.code == grpc.StatusCode.UNAVAILABLE and "maintenance" in e.value.message
        [a] = [a for a in await client.agents("default", env) if a.agent_id == agent_id]
        assert a.node_state.state == croupier.NodeState.MAINTENANCE
        await admin.set_node_state(agent_id, croupier.NodeState.NORMAL, "done")
        await wait_until(lambda: agent.state.node_state == croupier.NodeState.NORMAL)
        assert await client.invoke_typed("svc.ping") == "pong"


def cli(mesh: Mesh, identity: str, *args: str) -> str:
    """Runs the croupier CLI against the mesh; its stdout (a failure fails the test)."""
    out = subprocess.run(
        [mesh.bin, *args, "--server", mesh.url, "--tls-dir", str(mesh.certs), "--identity", identity],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


async def test_reports_node_events_and_handlers_get_their_assignment_config(
    mesh: Mesh, agent_id: str, env: str
) -> None:
    agent = make_agent(mesh, agent_id, env)

    @agent.function("svc.cfg")
    async def cfg(ctx: croupier.CallContext) -> dict[str, str]:
        return dict(ctx.config)

    # Reported before the tunnel opens: it waits, then goes out on it.
    agent.report_event("match.crashed", entity_id="m7", message="match 7 crashed", data={"code": 3})
    async with agent.running(), mesh.client(env=env) as client:
        await agent.wait_connected()
        assert await client.invoke_typed("svc.cfg") == {}
        cli(
            mesh, "admin-ops", "assign", "set", f"cfg-{agent_id}", "--function", "svc.cfg",
            "--game-id", "default", "--env", env, "--agent", agent_id, "--config", "level=3",
        )
        assert await client.invoke_typed("svc.cfg") == {"level": "3"}

        def crashed() -> list[dict[str, object]]:
            text = cli(mesh, "client-c1", "events", "--json", "--node", agent_id, "--type", "match.crashed")
            return [json.loads(line) for line in text.splitlines()]

        await wait_until(lambda: len(crashed()) == 1)
        [event] = crashed()
        assert event["entity_id"] == "m7" and event["node_id"] == agent_id
        assert event["data"] == {"code": "3"} and event["message"] == "match 7 crashed"


@croupier.service("logic")
class LogicService:
    """The design's example service."""

    def __init__(self) -> None:
        self.players: dict[str, dict[str, object]] = {"p1": {"level": 10}}

    @croupier.method(timeout=5.0, description="Get a player", kind="query")
    async def get_player_info(self, player_id: str) -> dict[str, object]:
        return {"player_id": player_id, **self.players.get(player_id, {"level": 1})}

    @croupier.method(description="Update a player")
    async def update_player(self, player_id: str, **fields: object) -> bool:
        self.players.setdefault(player_id, {}).update(fields)
        return True


async def test_class_based_service_maps_to_service_method_ids(
    mesh: Mesh, agent_id: str, env: str
) -> None:
    agent = make_agent(mesh, agent_id, env)
    svc = LogicService()
    assert agent.add_service(svc) == ["logic.get_player_info", "logic.update_player"]
    async with agent.running(), mesh.client(env=env) as client:
        await agent.wait_connected()
        fs = {f.function_id: f for f in await client.functions()}
        assert fs["logic.get_player_info"].timeout == 5
        assert fs["logic.update_player"].params_schema["additionalProperties"] is True
        assert await client.invoke_typed("logic.update_player", {"player_id": "p1", "level": 15}) is True
        got = await client.invoke_typed("logic.get_player_info", {"player_id": "p1"})
        assert got == {"player_id": "p1", "level": 15}
        assert await online(client, agent_id, "logic.get_player_info", env)
