"""Fixtures: a real ``croupier server`` (certificates from ``croupier certs init``, a port picked
by the OS, a 1 s heartbeat interval), agent identities, and a TCP proxy that can kill
connections."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import croupier

ROOT = Path(__file__).resolve().parents[3]
AGENT_IDS = [f"t{i:02d}" for i in range(1, 41)]
_ids = itertools.count()


def croupier_bin() -> str:
    """The binary under test: $CROUPIER_BIN, else target/debug/croupier. Missing is a failure."""
    path = os.environ.get("CROUPIER_BIN") or str(ROOT / "target" / "debug" / "croupier")
    if not os.access(path, os.X_OK):
        pytest.fail(f"no croupier binary at {path} (cargo build --bin croupier, or set CROUPIER_BIN)")
    return path


class Mesh:
    """A croupier server process with its certificates and data in a temp dir."""

    def __init__(self, heartbeat: str = "1s") -> None:
        self.bin = croupier_bin()
        self._tmp = tempfile.TemporaryDirectory(prefix="croupier-py-")
        self.dir = Path(self._tmp.name)
        self.certs = self.dir / "certs"
        self.heartbeat = heartbeat
        args = [self.bin, "certs", "init", "--dir", str(self.certs), "--client", "c1", "--admin", "ops"]
        for a in AGENT_IDS + ["logic-1", "bench-1"]:
            args += ["--agent", a]
        subprocess.run(args, check=True, capture_output=True, timeout=60)
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.start("127.0.0.1:0")

    def start(self, listen: str) -> None:
        """(Re)starts the server on ``listen`` and waits for its "listening" line."""
        log = open(self.dir / "server.log", "a")
        self.proc = subprocess.Popen(
            [
                self.bin, "server", "--listen", listen, "--data-dir", str(self.dir / "data"),
                "--tls-dir", str(self.certs), "--heartbeat-interval", self.heartbeat,
                "--shutdown-grace", "2s",
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, "CROUPIER_LOG": "info"},
        )
        found: list[str] = []
        ready = threading.Event()
        proc = self.proc

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                m = re.match(r"croupier server listening on (https://\S+)", line)
                if m and not found:
                    found.append(m.group(1))
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(30):
            raise RuntimeError(f"the server did not start: {self.log()[-2000:]}")
        self.url = found[0]

    @property
    def addr(self) -> str:
        return self.url.removeprefix("https://")

    @property
    def port(self) -> int:
        return int(self.addr.rsplit(":", 1)[1])

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stops the server (SIGKILL by default: no drain, no goodbye)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        """Kills the server and starts it again on the same address and data."""
        addr = self.addr
        self.kill()
        time.sleep(0.3)
        self.start(addr)

    def log(self) -> str:
        return (self.dir / "server.log").read_text(errors="replace")

    def tls(self, identity: str = "client-c1") -> croupier.Tls:
        return croupier.Tls.from_dir(self.certs, identity)

    def client(self, **kw: object) -> croupier.Client:
        kw.setdefault("pool_size", 2)
        return croupier.Client(self.url, tls=self.tls(), **kw)  # type: ignore[arg-type]

    def admin(self) -> croupier.Client:
        return croupier.Client(self.url, tls=self.tls("admin-ops"), pool_size=1)

    def close(self) -> None:
        self.kill(signal.SIGTERM)
        self._tmp.cleanup()


@pytest.fixture(scope="session")
def mesh() -> Iterator[Mesh]:
    """One server for the session; tests isolate themselves by env and agent id."""
    m = Mesh()
    yield m
    m.close()


@pytest.fixture
def fresh_mesh() -> Iterator[Mesh]:
    """A server of the test's own (for tests that restart or kill it)."""
    m = Mesh()
    yield m
    m.close()


@pytest.fixture
def env(request: pytest.FixtureRequest) -> str:
    """An environment name of the test's own."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", request.node.name)[:100]


@pytest.fixture
def agent_id() -> str:
    """An agent id (with a certificate) no other test uses."""
    return AGENT_IDS[next(_ids)]


def new_agent_id() -> str:
    """Another unused agent id."""
    return AGENT_IDS[next(_ids)]


async def wait_until(pred, timeout: float = 15.0, interval: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    """Polls ``pred`` (sync or async) until it is true."""
    end = time.monotonic() + timeout
    while True:
        r = pred()
        if asyncio.iscoroutine(r):
            r = await r
        if r:
            return
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def online(client: croupier.Client, agent: str, function_id: str, env: str) -> bool:
    fs = await client.functions("default", env, function_id)
    return any(a.agent_id == agent and a.online for f in fs for a in f.agents)


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of a server, that can kill its connections and stop
    accepting (a network failure the client cannot tell from a dead server)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        return len(self._conns)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            w.close()
            return
        pair = (w, uw)
        self._conns.add(pair)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        try:
            await asyncio.gather(pump(r, uw), pump(ur, w))
        except asyncio.CancelledError:
            pass
        finally:
            self._conns.discard(pair)

    def kill_one(self) -> None:
        """Kills one connection (both sides)."""
        w, uw = next(iter(self._conns))
        self._conns.discard((w, uw))
        w.transport.abort()
        uw.transport.abort()

    def kill_all(self) -> None:
        for w, uw in list(self._conns):
            w.transport.abort()
            uw.transport.abort()
        self._conns.clear()

    async def stop(self) -> None:
        """Stops accepting and kills every connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        self.kill_all()

    async def resume(self) -> None:
        """Accepts again on the same port."""
        await self.start()


@pytest.fixture
async def proxy(mesh: Mesh) -> AsyncIterator[Proxy]:
    p = Proxy(mesh.port)
    await p.start()
    yield p
    await p.stop()
