"""Jobs: events streamed in order, cancellation, and no event lost over a server restart."""

from __future__ import annotations

import asyncio

import croupier
from conftest import Mesh, wait_until
from croupier import EventType


def make_agent(mesh: Mesh, agent_id: str, env: str) -> croupier.Agent:
    return croupier.Agent(mesh.url, agent_id, env=env, tls=croupier.Tls.from_dir(mesh.certs))


def check_sequence(events: list[croupier.JobEvent], last: EventType) -> None:
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), [e.seq for e in events]
    assert events[0].type == EventType.START
    assert events[-1].type == last
    assert not any(e.type.terminal for e in events[:-1])


async def test_a_job_streams_progress_logs_and_its_result(
    mesh: Mesh, agent_id: str, env: str
) -> None:
    agent = make_agent(mesh, agent_id, env)

    @agent.job("match.replay", description="Replays a match")
    async def replay(ctx: croupier.JobContext, match_id: str, steps: int = 4) -> dict[str, object]:
        for i in range(steps):
            await ctx.progress((i + 1) / steps, f"step {i + 1}")
            await ctx.log(f"replayed round {i + 1} of {match_id}")
        await ctx.data("summary", {"rounds": steps})
        return {"match_id": match_id, "rounds": steps, "job": ctx.job_id}

    async with agent.running(), mesh.client(env=env) as client:
        await agent.wait_connected()
        [f] = await client.functions(function_id="match.replay")
        assert f.job and f.description == "Replays a match"
        job = await client.start_job("match.replay", {"match_id": "m1"})
        events = [e async for e in job]
        check_sequence(events, EventType.DONE)
        kinds = [e.type for e in events]
        assert kinds == [EventType.START] + [EventType.PROGRESS, EventType.LOG] * 4 + [
            EventType.LOG, EventType.DONE
        ]
        assert [e.progress for e in events if e.type == EventType.PROGRESS] == [0.25, 0.5, 0.75, 1.0]
        assert events[0].data == {"agent_id": agent_id}
        assert events[-2].data == {"rounds": 4}
        assert events[-1].data == {"match_id": "m1", "rounds": 4, "job": job.id}
        assert await job.result() == {"match_id": "m1", "rounds": 4, "job": job.id}
        rec = await job.record()
        assert (rec.status, rec.agent_id, rec.last_seq) == ("completed", agent_id, len(events))
        # A late subscriber replays from any seq.
        assert [e.seq async for e in job.events(from_seq=5)] == list(range(5, len(events) + 1))


async def test_a_cancelled_job_cancels_its_handler(mesh: Mesh, agent_id: str, env: str) -> None:
    agent = make_agent(mesh, agent_id, env)
    cleaned = asyncio.Event()

    @agent.job("match.long")
    async def long(ctx: croupier.JobContext) -> dict[str, bool]:
        try:
            for i in range(600):
                await ctx.progress(i / 600, f"tick {i}")
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            await ctx.log("cleaning up")
            cleaned.set()
            raise
        return {"finished": True}

    async with agent.running(), mesh.client(env=env) as client:
        await agent.wait_connected()
        job = await client.start_job("match.long")
        events: list[croupier.JobEvent] = []
        async for e in job:
            events.append(e)
            if len(events) == 4:
                assert await job.cancel("not now")
        await asyncio.wait_for(cleaned.wait(), 5)
        check_sequence(events, EventType.CANCELLED)
        assert events[-1].message == "not now"
        assert events[-2].message == "cleaning up", "the handler's cleanup is reported"
        rec = await job.record()
        assert (rec.status, rec.cancel_reason) == ("cancelled", "not now")
        try:
            await job.result()
        except croupier.HandlerError as e:
            assert e.code == "CANCELLED"
        else:
            raise AssertionError("a cancelled job has no result")
        assert not await job.cancel("again"), "a finished job cannot be cancelled"


async def test_a_job_deadline_ends_it_with_an_error(mesh: Mesh, agent_id: str, env: str) -> None:
    agent = make_agent(mesh, agent_id, env)

    @agent.job("match.stuck")
    async def stuck(ctx: croupier.JobContext) -> None:
        await asyncio.sleep(60)

    async with agent.running(), mesh.client(env=env) as client:
        await agent.wait_connected()
        job = await client.start_job("match.stuck", timeout=1)
        events = [e async for e in job]
        check_sequence(events, EventType.ERROR)
        assert events[-1].data == {"code": "DEADLINE_EXCEEDED"}


async def test_a_server_restart_mid_job_loses_no_event(fresh_mesh: Mesh, agent_id: str, env: str) -> None:
    mesh = fresh_mesh
    agent = make_agent(mesh, agent_id, env)
    steps = 40

    @agent.job("match.count")
    async def count(ctx: croupier.JobContext) -> dict[str, int]:
        for i in range(steps):
            await ctx.progress((i + 1) / steps, f"step {i + 1}")
            await ctx.log(f"line {i + 1}")
            await asyncio.sleep(0.05)
        return {"steps": steps}

    async with agent.running():
        await agent.wait_connected()
        client = mesh.client(env=env)
        job = await client.start_job("match.count")
        seen: list[croupier.JobEvent] = []
        async for e in job:
            seen.append(e)
            if len(seen) == 10:
                break
        await client.close()
        session = agent.state.session_id
        mesh.restart()  # SIGKILL: nothing flushed, no goodbye
        await agent.wait_connected(timeout=30, connects=2)
        client = mesh.client(env=env)
        async with client:
            async for e in job:  # resumes from the next seq
                seen.append(e)
            check_sequence(seen, EventType.DONE)
            assert len(seen) == 1 + 2 * steps + 1, "START + (PROGRESS, LOG) per step + DONE"
            assert not any(e.type == EventType.GAP for e in seen)
            rec = await job.record()
            assert (rec.status, rec.last_seq) == ("completed", len(seen))
            everything = [e async for e in client.job(job.id).events()]
            assert [e.seq for e in everything] == [e.seq for e in seen]
        assert agent.state.session_id != session or agent.state.resumed
        await wait_until(lambda: agent._outbox.held() == 0, timeout=5)
