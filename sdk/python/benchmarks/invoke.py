"""Calls per second through the mesh with the Python SDK, at a given concurrency.

    python benchmarks/invoke.py [--croupier target/debug/croupier] [--duration 5] [--concurrency 64]

It starts a `croupier server` (fresh certificates, a port from the OS), a Rust agent
(`croupier agent`, serving agent.ping) and a Python provider (this script in `provider` mode, a
separate process, serving bench.echo), then measures with the Python client:

  1. Python client -> server -> Rust agent (agent.ping);
  2. Python client -> server -> Python provider (bench.echo).

Each phase warms up for a second, then runs `concurrency` callers for `duration` seconds and
prints calls/s, p50 and p99 latency. Compare with `croupier bench invoke --concurrency 64`
(Rust client -> server -> in-process Rust agent). Every process it starts is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import croupier

ROOT = Path(__file__).resolve().parents[3]


async def provider(args: argparse.Namespace) -> None:
    agent = croupier.Agent(args.server, "bench-1", tls=croupier.Tls.from_dir(args.tls_dir))

    @agent.function("bench.echo", kind="query")
    async def echo(**payload: Any) -> dict[str, Any]:
        return payload

    await agent.run()


async def phase(client: croupier.Client, function_id: str, concurrency: int, duration: float) -> dict[str, Any]:
    payload = {"data": "x" * 48}
    lat: list[float] = []
    errors = 0

    async def caller(until: float, record: bool) -> None:
        nonlocal errors
        while time.monotonic() < until:
            t0 = time.monotonic()
            try:
                r = await client.invoke(function_id, payload, timeout=10)
                ok = r.success
            except croupier.RpcError:
                ok = False
            if record:
                if ok:
                    lat.append(time.monotonic() - t0)
                else:
                    errors += 1

    await asyncio.gather(*(caller(time.monotonic() + 1.0, False) for _ in range(concurrency)))
    t0 = time.monotonic()
    await asyncio.gather(*(caller(t0 + duration, True) for _ in range(concurrency)))
    took = time.monotonic() - t0
    lat.sort()
    return {
        "function": function_id,
        "concurrency": concurrency,
        "calls": len(lat),
        "errors": errors,
        "calls_per_s": round(len(lat) / took, 1),
        "p50_ms": round(lat[len(lat) // 2] * 1000, 2) if lat else 0,
        "p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 2) if lat else 0,
    }


async def orchestrate(args: argparse.Namespace) -> None:
    bin_ = args.croupier
    procs: list[subprocess.Popen[Any]] = []
    with tempfile.TemporaryDirectory(prefix="croupier-pybench-") as tmp:
        certs = Path(tmp) / "certs"
        subprocess.run([bin_, "certs", "init", "--dir", str(certs), "--agent", "a1", "--agent",
                        "bench-1", "--client", "c1"], check=True, capture_output=True)
        try:
            server = subprocess.Popen(
                [bin_, "server", "--listen", "127.0.0.1:0", "--tls-dir", str(certs), "--data-dir",
                 str(Path(tmp) / "data")],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                env={**os.environ, "CROUPIER_AUDIT_LOG": "false"},
            )
            procs.append(server)
            assert server.stdout is not None
            url = ""
            for line in server.stdout:
                m = re.match(r"croupier server listening on (https://\S+)", line)
                if m:
                    url = m.group(1)
                    break
            procs.append(subprocess.Popen(
                [bin_, "agent", "--server", url, "--id", "a1", "--tls-dir", str(certs), "--packs", "none"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            procs.append(subprocess.Popen(
                [sys.executable, __file__, "provider", "--server", url, "--tls-dir", str(certs)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            tls = croupier.Tls.from_dir(certs, "client-c1")
            async with croupier.Client(url, tls=tls, pool_size=args.pool_size) as client:
                end = time.monotonic() + 30
                while True:
                    fs = {f.function_id: f for f in await client.functions()}
                    if all(fid in fs and fs[fid].online_agents for fid in ("agent.ping", "bench.echo")):
                        break
                    if time.monotonic() > end:
                        raise SystemExit("the agents did not come online")
                    await asyncio.sleep(0.2)
                results = [
                    await phase(client, "agent.ping", args.concurrency, args.duration),
                    await phase(client, "bench.echo", args.concurrency, args.duration),
                ]
        finally:
            for p in reversed(procs):
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
    names = {"agent.ping": "python client -> mesh -> rust agent",
             "bench.echo": "python client -> mesh -> python provider"}
    for r in results:
        print(f"{names[r['function']]:<42} {r['calls_per_s']:>9.1f} calls/s  p50 {r['p50_ms']:.2f} ms  "
              f"p99 {r['p99_ms']:.2f} ms  ({r['calls']} calls, {r['errors']} errors, concurrency {r['concurrency']})")
    if args.json:
        print(json.dumps(results))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode")
    prov = sub.add_parser("provider", help="(internal) serve bench.echo")
    prov.add_argument("--server", required=True)
    prov.add_argument("--tls-dir", required=True)
    p.add_argument("--croupier", default=os.environ.get("CROUPIER_BIN", str(ROOT / "target/debug/croupier")))
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--pool-size", type=int, default=10)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    asyncio.run(provider(args) if args.mode == "provider" else orchestrate(args))


if __name__ == "__main__":
    main()
