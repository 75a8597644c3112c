"""Calls the LogicService example through the mesh and prints the client's stats.

    python examples/logic_client.py [--server URL] [--tls-dir DIR] [--identity client-dev]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from logic_service import PlayerInfo

import croupier


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default="https://127.0.0.1:8443")
    p.add_argument("--tls-dir", default=os.path.expanduser("~/.croupier/dev/certs"))
    p.add_argument("--identity", default=None, help="certificate stem (default: the only client-*)")
    p.add_argument("--game-id", default="default")
    p.add_argument("--env", default="dev")
    args = p.parse_args()
    tls = croupier.Tls.from_dir(args.tls_dir, args.identity)
    async with croupier.Client(args.server, tls=tls, game_id=args.game_id, env=args.env) as client:
        player = await client.invoke_typed("logic.get_player_info", {"player_id": "123"}, PlayerInfo)
        print("before:", player)
        ok = await client.invoke_typed(
            "logic.update_player", {"player_id": "123", "level": 15}, bool, timeout=5.0
        )
        player = await client.invoke_typed("logic.get_player_info", {"player_id": "123"}, PlayerInfo)
        print("updated:", ok, "after:", player)
        try:
            await client.invoke_typed("logic.get_player_info", {"player_id": "nobody"}, PlayerInfo)
        except croupier.HandlerError as e:
            print("unknown player:", e.code, e.message)
        for fid, s in client.stats().functions.items():
            print(f"{fid}: {s.calls} calls, {s.successes} ok, avg {s.avg_ms:.1f} ms, "
                  f"p99 {s.p99_ms:.1f} ms")
        return 0 if player.level == 15 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
