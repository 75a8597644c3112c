"""The client's failure handling through a real server: breaker, pool, retries, failover, watch
resume, stats; and the agent's session resume and failover."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

import croupier
from conftest import Mesh, Proxy, new_agent_id, online, wait_until


def make_agent(mesh: Mesh, agent_id: str, env: str, server: str | list[str] | None = None) -> croupier.Agent:
    agent = croupier.Agent(server or mesh.url, agent_id, env=env, tls=croupier.Tls.from_dir(mesh.certs))

    @agent.function("echo.query", kind="query")
    async def echo(n: int = 0) -> dict[str, int]:
        return {"n": n}

    @agent.function("echo.fail")
    async def fail() -> None:
        raise croupier.HandlerError("NOPE", "always fails")

    return agent


async def test_the_breaker_opens_and_recovers(mesh: Mesh, proxy: Proxy, agent_id: str, env: str) -> None:
    agent = make_agent(mesh, agent_id, env)
    policy = croupier.BreakerPolicy(failure_threshold=3, recovery_timeout=1.0, success_threshold=2)
    client = croupier.Client(
        proxy.url, tls=mesh.tls(), env=env, pool_size=2, breaker=policy,
        retry=croupier.RetryPolicy.none(),
    )
    async with agent.running(), client:
        await agent.wait_connected()
        assert (await client.invoke("echo.query", {"n": 1})).success
        url = proxy.url
        await proxy.stop()
        for _ in range(3):
            with pytest.raises(croupier.RpcError) as e:
                await client.invoke("echo.query", timeout=2)
            assert e.value.code == grpc.StatusCode.UNAVAILABLE
            assert not isinstance(e.value, croupier.CircuitOpenError)
        assert client.stats().servers[url].breaker == croupier.BreakerState.OPEN
        accepted = proxy.accepted
        t0 = time.monotonic()
        with pytest.raises(croupier.CircuitOpenError) as e:
            await client.invoke("echo.query")
        assert time.monotonic() - t0 < 0.1, "an open breaker fails fast"
        assert "circuit open" in e.value.message
        await proxy.resume()
        assert proxy.accepted == accepted, "nothing was sent while open"
        await asyncio.sleep(1.1)
        assert client.stats().servers[url].breaker == croupier.BreakerState.HALF_OPEN
        assert (await client.invoke("echo.query", {"n": 2})).success
        assert client.stats().servers[url].breaker == croupier.BreakerState.HALF_OPEN, "1 of 2"
        assert (await client.invoke("echo.query", {"n": 3})).success
        assert client.stats().servers[url].breaker == croupier.BreakerState.CLOSED
        assert client.stats().servers[url].breaker_opened == 1


async def test_the_pool_survives_a_killed_connection(mesh: Mesh, proxy: Proxy, agent_id: str, env: str) -> None:
    agent = make_agent(mesh, agent_id, env)
    client = croupier.Client(proxy.url, tls=mesh.tls(), env=env, pool_size=4, health_interval=0.3)
    async with agent.running(), client:
        await agent.wait_connected()
        for i in range(8):
            assert (await client.invoke("echo.query", {"n": i})).success
        assert proxy.connections == 4, "one connection per channel of the pool"
        pool = client.stats().servers[proxy.url].pool
        assert (pool.size, pool.ready) == (4, 4)
        proxy.kill_one()
        results = await asyncio.gather(*(client.invoke("echo.query", {"n": i}) for i in range(40)))
        assert all(r.success for r in results)
        await wait_until(lambda: client.stats().servers[proxy.url].pool.ready == 4, timeout=10)
        assert proxy.connections == 4
        for i in range(8):
            assert (await client.invoke("echo.query", {"n": i})).success


async def test_unavailable_is_retried_only_when_safe(mesh: Mesh, env: str) -> None:
    client = mesh.client(env=env)
    async with client, mesh.admin() as admin:
        # Descriptors without agents: a query (safe to repeat) and a command.
        for fid, kind in (("gone.query", "query"), ("gone.command", "command")):
            d = croupier.common.v1.common_pb2.FunctionDescriptor(id=fid)
            d.semantics.kind = kind
            req = croupier.function.v1.function_pb2.RegisterFunctionRequest(
                game_id="default", env=env, function_descriptor=d
            )
            await admin._read("RegisterFunction", "RegisterFunction",
                              croupier.function.v1.function_pb2_grpc.FunctionServiceStub, req)
        await client.functions()  # the descriptors say which calls are safe to repeat
        before = client.stats().servers[mesh.url].calls.calls
        t0 = time.monotonic()
        with pytest.raises(croupier.RpcError) as e:
            await client.invoke("gone.query", timeout=10)
        took = time.monotonic() - t0
        assert e.value.code == grpc.StatusCode.UNAVAILABLE
        # The server's machine code, from the status's google.rpc.ErrorInfo.
        assert e.value.reason == "NO_AGENT", e.value
        attempts = client.stats().servers[mesh.url].calls.calls - before
        assert attempts == 5, "5 attempts in all"
        assert 1.5 * 0.8 <= took < 4.0, f"backoff 100+200+400+800 ms ±20 %, took {took:.2f} s"
        before = client.stats().servers[mesh.url].calls.calls
        with pytest.raises(croupier.RpcError):
            await client.invoke("gone.command", timeout=10)
        assert client.stats().servers[mesh.url].calls.calls - before == 1, "a command is not repeated"
        before = client.stats().servers[mesh.url].calls.calls
        with pytest.raises(croupier.RpcError):
            await client.invoke("gone.command", timeout=10, idempotency_key="k1")
        assert client.stats().servers[mesh.url].calls.calls - before == 5, "a keyed call is"


async def test_stats_add_up_to_the_calls_made(mesh: Mesh, agent_id: str, env: str) -> None:
    agent = make_agent(mesh, agent_id, env)
    client = mesh.client(env=env)
    async with agent.running(), client:
        await agent.wait_connected()
        await client.functions()  # learn the descriptors first
        base = client.stats().servers[mesh.url].calls.calls
        for i in range(20):
            assert (await client.invoke("echo.query", {"n": i})).success
        for _ in range(5):
            assert not (await client.invoke("echo.fail")).success
        for _ in range(3):
            with pytest.raises(croupier.RpcError):
                await client.invoke("echo.query", {"n": "x"})
        s = client.stats()
        q, f = s.functions["echo.query"], s.functions["echo.fail"]
        assert (q.calls, q.successes, q.failures) == (23, 20, 3)
        assert (f.calls, f.successes, f.failures) == (5, 0, 5)
        assert 0 < q.p50_ms <= q.p99_ms and q.avg_ms > 0 and q.qps > 0
        server = s.servers[mesh.url]
        assert server.calls.calls - base == 28, "one attempt per call, none retried"
        assert server.breaker == croupier.BreakerState.CLOSED
        served = agent.stats()
        assert (served["echo.query"].calls, served["echo.query"].successes) == (20, 20)
        assert (served["echo.fail"].calls, served["echo.fail"].failures) == (5, 5)


async def test_failover_to_the_next_server(mesh: Mesh, agent_id: str, env: str) -> None:
    dead = Proxy(1)  # nothing listens behind it once stopped
    await dead.start()
    dead_url = dead.url
    await dead.stop()
    agent = make_agent(mesh, agent_id, env, server=[dead_url, mesh.url])
    client = croupier.Client([dead_url, mesh.url], tls=mesh.tls(), env=env, pool_size=1)
    async with agent.running(), client:
        state = await agent.wait_connected()
        assert state.server == mesh.url
        r = await client.invoke("echo.query", {"n": 5})
        assert r.success and r.result == {"n": 5}
        s = client.stats().servers
        assert s[dead_url].calls.failures >= 1 and s[mesh.url].calls.successes >= 1


async def test_the_agent_resumes_its_session_after_a_broken_tunnel(
    mesh: Mesh, proxy: Proxy, agent_id: str, env: str
) -> None:
    agent = make_agent(mesh, agent_id, env, server=proxy.url)
    async with agent.running(), mesh.client(env=env) as client:
        first = await agent.wait_connected()
        proxy.kill_all()
        state = await agent.wait_connected(timeout=15, connects=2)
        assert state.resumed and state.session_id == first.session_id
        assert (await client.invoke("echo.query", {"n": 1})).success


async def test_watch_registrations_resumes_from_its_revision(
    mesh: Mesh, proxy: Proxy, env: str
) -> None:
    client = croupier.Client(proxy.url, tls=mesh.tls(), env=env, pool_size=1)
    events: list[croupier.RegistrationEvent] = []

    async def watch() -> None:
        async for ev in client.watch_registrations():
            events.append(ev)

    async with client:
        task = asyncio.create_task(watch())
        try:
            await wait_until(lambda: any(e.type == croupier.RegistrationEventType.SYNCED for e in events))
            a1, a2 = new_agent_id(), new_agent_id()
            async with make_agent(mesh, a1, env).running() as agent:
                await agent.wait_connected()
                await wait_until(lambda: any(e.agent_id == a1 for e in events))
                proxy.kill_all()  # the watch breaks and resumes from the next revision
                async with make_agent(mesh, a2, env).running() as agent2:
                    await agent2.wait_connected()
                    await wait_until(lambda: any(e.agent_id == a2 for e in events), timeout=20)
            await wait_until(
                lambda: any(e.agent_id == a2 and e.type == croupier.RegistrationEventType.REMOVED
                            for e in events)
            )
        finally:
            task.cancel()
    assert sum(e.type == croupier.RegistrationEventType.SYNCED for e in events) == 1, "no resync"
    revs = [e.revision for e in events if e.agent_id]
    assert revs == sorted(revs) and len(revs) == len(set((e.revision, e.function_id, e.agent_id, e.type) for e in events if e.agent_id))
    added = {(e.agent_id, e.function_id) for e in events if e.type == croupier.RegistrationEventType.ADDED and e.agent_id}
    assert added == {(a, f) for a in (a1, a2) for f in ("echo.fail", "echo.query")}
    assert await online(client, a1, "echo.query", env) is False
