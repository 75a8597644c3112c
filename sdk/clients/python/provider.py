"""A Croupier provider (agent) written with the Python SDK: serves one echo function.

    python provider.py --id py1 --server https://127.0.0.1:8443 --tls-dir certs

The function (--function, default py.echo) answers {"agent_id": ID, "payload": <the payload>,
"calls": N}, the same shape as the built-in agent.ping. It prints a line per answered heartbeat
("heartbeat N ok"), and on SIGTERM says goodbye and exits 0. The SDK's Agent handles
registration, the tunnel, reconnects and the goodbye (see sdk/python/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

import croupier


def log(msg: str) -> None:
    print(f"py provider: {msg}", flush=True)


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--id", required=True, help="agent id; must match the agent certificate")
    p.add_argument("--server", default="https://127.0.0.1:8443")
    p.add_argument("--tls-dir", default=os.path.expanduser("~/.croupier/dev/certs"))
    p.add_argument("--game-id", default="default")
    p.add_argument("--env", default="dev")
    p.add_argument("--function", default="py.echo")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    if any("=" not in kv for kv in args.label):
        p.error("--label wants KEY=VALUE")

    agent = croupier.Agent(args.server, args.id, game_id=args.game_id, env=args.env,
                           tls=croupier.Tls.from_dir(args.tls_dir),
                           labels=dict(kv.split("=", 1) for kv in args.label), version="py-example-1")
    calls = 0

    @agent.function(args.function, kind="query", idempotent=True, category="example",
                    description="Answers with the agent id, the payload it got and how many calls "
                                "it has served (Python provider example).")
    async def echo(**payload: Any) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"agent_id": args.id, "payload": payload, "calls": calls}

    async def report() -> None:
        seen = 0
        while True:
            await asyncio.sleep(0.1)
            s = agent.state
            if s.heartbeats > seen:
                seen = s.heartbeats
                log(f"heartbeat {seen} ok (node state {s.node_state.name})")

    reporter = asyncio.create_task(report())
    log(f"serving {args.function} as {args.id}")
    try:
        await agent.run()
    finally:
        reporter.cancel()
    log(f"stopping: sent Goodbye after {calls} calls")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(main()))
