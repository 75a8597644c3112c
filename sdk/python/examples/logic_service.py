"""The design's example service, as a Croupier agent: ``LogicService`` with
``get_player_info`` and ``update_player``, registered as ``logic.get_player_info`` and
``logic.update_player``.

Against ``croupier dev`` (add an agent certificate first)::

    croupier certs init --dir ~/.croupier/dev/certs --agent logic-1
    python examples/logic_service.py                 # serves until Ctrl-C (goodbye on SIGTERM)
    python examples/logic_client.py                  # in another terminal

Flags: --server (default https://127.0.0.1:8443), --tls-dir (default the dev certificates),
--id (default logic-1), --game-id, --env, --label KEY=VALUE.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from pydantic import BaseModel

import croupier


class PlayerInfo(BaseModel):
    """What get_player_info answers."""

    player_id: str
    level: int
    name: str = ""


@croupier.service("logic")
class LogicService:
    """Player logic served to the rest of the backend."""

    def __init__(self) -> None:
        self.players: dict[str, dict[str, object]] = {"123": {"level": 10, "name": "Ada"}}

    @croupier.method(timeout=3.0, description="Get a player", kind="query")
    async def get_player_info(self, player_id: str) -> PlayerInfo:
        """Get a player."""
        p = self.players.get(player_id)
        if p is None:
            raise croupier.HandlerError("NOT_FOUND", f"no player {player_id}")
        return PlayerInfo(player_id=player_id, **p)  # type: ignore[arg-type]

    @croupier.method(description="Update a player's data")
    async def update_player(self, player_id: str, **fields: object) -> bool:
        """Update a player's data: any fields besides player_id are stored."""
        self.players.setdefault(player_id, {"level": 1}).update(fields)
        return True


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default="https://127.0.0.1:8443")
    p.add_argument("--tls-dir", default=os.path.expanduser("~/.croupier/dev/certs"))
    p.add_argument("--id", default="logic-1", help="agent id; needs agent-ID.pem/.key")
    p.add_argument("--game-id", default="default")
    p.add_argument("--env", default="dev")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    return p.parse_args()


async def main() -> None:
    args = parse()
    agent = croupier.Agent(
        args.server,
        args.id,
        game_id=args.game_id,
        env=args.env,
        tls=croupier.Tls.from_dir(args.tls_dir),
        labels=dict(kv.split("=", 1) for kv in args.label),
    )
    print("serving", ", ".join(agent.add_service(LogicService())), "as", args.id, flush=True)
    await agent.run()
    print("goodbye", flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
