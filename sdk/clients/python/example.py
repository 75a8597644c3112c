"""A Croupier caller written with the Python SDK (sdk/python, `pip install sdk/python`).

It connects with mutual TLS and checks, in this order:
 1. registry: the function to call has an online agent;
 2. invoke: --function (agent.ping) echoes the payload it was given;
 3. watch: watch_registrations delivers the initial state (ADDED events, then SYNCED);
 4. job: agent.countdown {"steps": 3, "ms": 50} as a job: seqs 1, 2, 3... without a gap, START
    first, DONE last;
 5. errors: a misspelt function is refused NOT_FOUND, and the status's google.rpc.ErrorInfo says
    why (reason FUNCTION_NOT_FOUND) with details (the function, the nearest registered names).

With --echo-only it runs steps 1 and 2 only (used to call a provider that serves one function).
It prints one line per check and exits 1 with "FAILED: ..." when any check fails.

    python example.py --server https://127.0.0.1:8443 --tls-dir certs --identity client-c1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import croupier
from croupier import EventType, RegistrationEventType


class Failure(Exception):
    """A failed check."""


async def check_registry(args: argparse.Namespace, client: croupier.Client) -> None:
    fs = await client.functions()
    print(f"[registry] {len(fs)} functions in {args.game_id}/{args.env}")
    for f in fs:
        agents = ", ".join(f"{a.agent_id} ({'online' if a.online else 'offline'}, "
                           f"{a.node_state.name})" for a in f.agents)
        print(f"  {f.function_id:<20} {agents}")
    if not any(f.function_id == args.function and f.online_agents for f in fs):
        raise Failure(f"registry: {args.function} has no online agent in {args.game_id}/{args.env}")


async def check_invoke(args: argparse.Namespace, client: croupier.Client) -> None:
    where = f"invoke {args.function}: "
    payload = {"from": "python-example", "nonce": str(time.time_ns()), "n": 42,
               "list": [1, "two", True, None]}
    r = await client.invoke(args.function, payload, timeout=args.timeout)
    if not r.success:
        raise Failure(where + f"the handler failed: {r.error_code}: {r.error}")
    print(f"[invoke] {args.function} served by {r.agent_id} (request {r.request_id}): "
          f"{json.dumps(r.result)}")
    if r.result.get("payload") != payload:
        raise Failure(where + f"the result does not echo the payload: got {r.result.get('payload')}")
    if args.expect_agent and r.agent_id != args.expect_agent:
        raise Failure(where + f"served by {r.agent_id}, want {args.expect_agent}")
    print("[invoke] the result echoes the payload")


async def check_watch(args: argparse.Namespace, client: croupier.Client) -> None:
    added = set()
    async for ev in client.watch_registrations():
        if ev.type is RegistrationEventType.ADDED:
            added.add(ev.function_id)
            print(f"[watch] ADDED {ev.function_id} (revision {ev.revision})")
        elif ev.type is RegistrationEventType.SYNCED:
            print(f"[watch] SYNCED at revision {ev.revision} after {len(added)} ADDED events")
            if args.function not in added:
                raise Failure(f"watch: the initial state has no ADDED event for {args.function}")
            return
        else:
            raise Failure(f"watch: unexpected {ev.type.name} event before SYNCED")


async def check_job(args: argparse.Namespace, client: croupier.Client) -> None:
    where = f"job {args.job_function}: "
    job = await client.start_job(args.job_function, {"steps": 3, "ms": 50})
    print(f"[job] started {args.job_function}: job {job.id}")
    events = []
    async for ev in job:
        print(f"[job] seq {ev.seq} {ev.type.name:<8} progress {ev.progress:.2f} {json.dumps(ev.message)}")
        if ev.seq != len(events) + 1:
            raise Failure(where + f"event {len(events) + 1} has seq {ev.seq}")
        events.append(ev)
    if not events or events[0].type is not EventType.START or events[-1].type is not EventType.DONE:
        raise Failure(where + f"want START first and DONE last, got {[e.type.name for e in events]}")
    print(f"[job] {len(events)} events, seqs 1..{len(events)} consecutive, START first, DONE last")


async def check_error_info(args: argparse.Namespace, client: croupier.Client) -> None:
    misspelt = args.function[:-2] + args.function[-1] + args.function[-2]
    try:
        await client.invoke(misspelt, {}, timeout=args.timeout)
    except croupier.RpcError as e:
        details = ", ".join(f"{k}={v}" for k, v in sorted(e.details.items()))
        print(f"[error] {misspelt}: code={e.code.name} reason={e.reason} details={{{details}}} "
              f"message={e.message}")
        if e.reason != "FUNCTION_NOT_FOUND":
            raise Failure(f"errors: want ErrorInfo reason FUNCTION_NOT_FOUND, got {e.reason!r}") from None
        return
    raise Failure(f"errors: {misspelt} was served")


async def run(args: argparse.Namespace) -> None:
    tls = croupier.Tls.from_dir(args.tls_dir, args.identity)
    async with croupier.Client(args.server, tls=tls, game_id=args.game_id, env=args.env,
                               pool_size=2, default_timeout=args.timeout) as client:
        print(f"connecting to {args.server} as {args.identity} (tls dir {args.tls_dir})")
        await check_registry(args, client)
        await check_invoke(args, client)
        if not args.echo_only:
            await asyncio.wait_for(check_watch(args, client), args.timeout)
            await asyncio.wait_for(check_job(args, client), args.timeout)
            await check_error_info(args, client)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default="https://127.0.0.1:8443")
    p.add_argument("--tls-dir", default=os.path.expanduser("~/.croupier/dev/certs"))
    p.add_argument("--identity", default="client-dev")
    p.add_argument("--game-id", default="default")
    p.add_argument("--env", default="dev")
    p.add_argument("--timeout", type=int, default=30)
    p.add_argument("--function", default="agent.ping")
    p.add_argument("--expect-agent", default="")
    p.add_argument("--job-function", default="agent.countdown")
    p.add_argument("--echo-only", action="store_true")
    args = p.parse_args()
    try:
        asyncio.run(run(args))
    except (Failure, croupier.CroupierError, asyncio.TimeoutError) as e:
        print(f"python example: FAILED: {e!r}" if isinstance(e, asyncio.TimeoutError)
              else f"python example: FAILED: {e}", file=sys.stderr)
        return 1
    print("python example: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
