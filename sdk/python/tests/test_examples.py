"""The LogicService example against a real server, and goodbye on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import Mesh, online, wait_until

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


async def test_logic_service_example_and_goodbye_on_sigterm(mesh: Mesh, env: str) -> None:
    flags = ["--server", mesh.url, "--tls-dir", str(mesh.certs), "--env", env]
    provider = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "logic_service.py"), *flags, "--id", "logic-1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        async with mesh.client(env=env) as client:
            await wait_until(lambda: online(client, "logic-1", "logic.get_player_info", env), 20)
            out = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, str(EXAMPLES / "logic_client.py"), *flags, "--identity", "client-c1"],
                capture_output=True, text=True, timeout=60,
            )
            assert out.returncode == 0, out.stdout + out.stderr
            assert "after: player_id='123' level=15 name='Ada'" in out.stdout, out.stdout
            assert "unknown player: NOT_FOUND no player nobody" in out.stdout, out.stdout
            assert "logic.get_player_info: 3 calls, 2 ok" in out.stdout, out.stdout

            provider.send_signal(signal.SIGTERM)
            t0 = time.monotonic()
            # Goodbye removes the registration at once (offline by heartbeat would take 3 s).
            await wait_until(
                lambda: _gone(client), timeout=2.5, interval=0.05
            )
            assert time.monotonic() - t0 < 2.5
            code = await asyncio.to_thread(provider.wait, 10)
            log = provider.stdout.read() if provider.stdout else ""
            assert code == 0, log
            assert "said goodbye" in log and "goodbye" in log.splitlines()[-1], log
    finally:
        if provider.poll() is None:
            provider.kill()
            provider.wait()


async def _gone(client) -> bool:  # type: ignore[no-untyped-def]
    return all(a.agent_id != "logic-1" for a in await client.agents())
