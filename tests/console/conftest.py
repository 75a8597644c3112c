"""Test bed for the console's browser tests: real `croupier` server and agent processes with
certificates from `croupier certs init`, console users made with `croupier user add`, and
Debian's headless Chromium driven through Selenium.

The binary is $CROUPIER_BIN (scripts/console-test.sh sets it to the one cargo built);
screenshots go to $CONSOLE_SCREENSHOTS (default: a temporary directory).
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

BIN = os.environ.get("CROUPIER_BIN", "target/debug/croupier")
PASSWORD = "correct horse battery staple"

POLICY = """
[roles]
leads = ["admin/bob"]

[[rule]]
name = "clients' pings need a lead"
who = ["client"]
actions = ["invoke"]
functions = ["agent.ping"]
approval = { approvers = "leads", count = 1, ttl = "10m" }

[[rule]]
name = "leads approve"
who = ["leads"]
actions = ["approve"]

[[rule]]
name = "admins do everything"
who = ["admin"]
actions = ["*"]

[[rule]]
name = "clients call and run jobs"
who = ["client"]
actions = ["invoke", "job"]
"""


class Mesh:
    """A server (with its console) and one agent, in a temporary directory."""

    def __init__(self, root: Path, env: dict[str, str] | None = None, agent: bool = True) -> None:
        self.root = root
        self.certs = root / "certs"
        self.procs: list[subprocess.Popen[str]] = []
        subprocess.run(
            [BIN, "certs", "init", "--dir", str(self.certs), "--agent", "a1",
             "--admin", "admin", "--client", "dev"],
            check=True, capture_output=True, text=True,
        )
        server = self.spawn(
            "server",
            [BIN, "server", "--listen", "127.0.0.1:0", "--http-listen", "",
             "--console-listen", "127.0.0.1:0", "--data-dir", str(root / "data"),
             "--tls-dir", str(self.certs)],
            env,
        )
        lines = self.read_until(server, "croupier server listening on ")
        self.url = re.search(r"croupier server listening on (\S+)", lines).group(1)  # type: ignore[union-attr]
        self.console = re.search(r"croupier console on (https://\S+)/", lines).group(1)  # type: ignore[union-attr]
        if agent:
            self.spawn(
                "agent",
                [BIN, "agent", "--server", self.url, "--id", "a1", "--tls-dir",
                 str(self.certs), "--packs", "pipeline"],
                None,
            )
            self.wait_online("a1")

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None) -> subprocess.Popen[str]:
        full = dict(os.environ, RUST_LOG="warn")
        full.update(env or {})
        log = open(self.root / f"{name}.log", "w")
        p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True, env=full)
        self.procs.append(p)
        return p

    @staticmethod
    def read_until(p: subprocess.Popen[str], marker: str) -> str:
        out = ""
        deadline = time.time() + 60
        assert p.stdout is not None
        while time.time() < deadline:
            line = p.stdout.readline()
            if not line:
                raise RuntimeError(f"process ended before printing {marker!r}: {out}")
            out += line
            if marker in line:
                return out
        raise RuntimeError(f"no {marker!r} within 60 s: {out}")

    def cli(self, identity: str, *args: str, stdin: str | None = None) -> str:
        r = subprocess.run(
            [BIN, *args, "--server", self.url, "--tls-dir", str(self.certs), "--identity", identity],
            input=stdin, capture_output=True, text=True, timeout=60,
        )
        if r.returncode != 0:
            raise RuntimeError(f"croupier {' '.join(args)} failed: {r.stderr}")
        return r.stdout

    def wait_online(self, agent: str) -> None:
        deadline = time.time() + 60
        while time.time() < deadline:
            out = json.loads(self.cli("client-dev", "agents", "--json"))
            rows = out if isinstance(out, list) else out.get("agents", [])
            if any(a.get("agent_id") == agent and a.get("online") for a in rows):
                return
            time.sleep(0.3)
        raise RuntimeError(f"agent {agent} did not come online")

    def add_user(self, name: str, role: str) -> None:
        self.cli("admin-admin", "user", "add", name, "--role", role, "--password-stdin",
                 stdin=PASSWORD + "\n")

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


class Api:
    """The console's HTTP API as a script sees it: a cookie jar and the CSRF token."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.ctx = ssl.create_default_context()
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=self.ctx),
            urllib.request.HTTPCookieProcessor(self.jar),
        )
        self.csrf = ""

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with self.opener.open(req, timeout=30) as resp:
                return resp.status, dict(resp.headers), json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), json.loads(e.read() or b"null")

    def events(self, path: str, headers: dict[str, str] | None = None) -> list[tuple[str, Any]]:
        """Reads a Server-Sent Events stream to its end: (id, data) per event."""
        req = urllib.request.Request(self.base + path)
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        out: list[tuple[str, Any]] = []
        event_id, data = "", ""
        with self.opener.open(req, timeout=30) as resp:
            for raw in resp:
                line = raw.decode().rstrip("\n")
                if line.startswith("id:"):
                    event_id = line[3:].strip()
                elif line.startswith("data:"):
                    data += line[5:].strip()
                elif not line and data:
                    out.append((event_id, json.loads(data)))
                    event_id, data = "", ""
        return out

    def login(self, user: str, password: str = PASSWORD) -> tuple[int, dict[str, Any], Any]:
        status, headers, body = self.request("POST", "/api/login", {"user": user, "password": password})
        if status == 200:
            self.csrf = body["csrf"]
        return status, headers, body

    def rpc(self, method: str, body: Any, csrf: bool = True) -> tuple[int, Any]:
        headers = {"X-CSRF-Token": self.csrf} if csrf else {}
        status, _, out = self.request("POST", f"/api/rpc/{method}", body, headers)
        return status, out


@pytest.fixture(scope="session")
def shots() -> Path:
    d = Path(os.environ.get("CONSOLE_SCREENSHOTS") or tempfile.mkdtemp(prefix="console-shots-"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def mesh() -> Iterator[Mesh]:
    root = Path(tempfile.mkdtemp(prefix="croupier-console-"))
    m = Mesh(root)
    try:
        m.add_user("alice", "admin")
        m.add_user("bob", "admin")
        m.add_user("carol", "client")
        policy = root / "policy.toml"
        policy.write_text(POLICY)
        m.cli("admin-admin", "policy", "put", str(policy))
        yield m
    finally:
        m.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def strict_mesh() -> Iterator[Mesh]:
    """A server whose sessions end after 2 s idle and which locks a name after 3 failures."""
    root = Path(tempfile.mkdtemp(prefix="croupier-console-strict-"))
    m = Mesh(root, env={
        "CROUPIER_CONSOLE__SESSION_IDLE": "2s",
        "CROUPIER_CONSOLE__MAX_LOGIN_FAILURES": "3",
        "CROUPIER_CONSOLE__LOGIN_LOCKOUT": "30s",
    }, agent=False)
    try:
        m.add_user("dave", "admin")
        yield m
    finally:
        m.stop()
        shutil.rmtree(root, ignore_errors=True)


def new_browser() -> webdriver.Chrome:
    opts = webdriver.ChromeOptions()
    opts.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--ignore-certificate-errors", "--window-size=1366,900"]:
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(options=opts, service=service)
    driver.set_page_load_timeout(30)
    return driver


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    if rep.when == "call":
        item.failed_call = rep.failed


def keep_evidence(d: webdriver.Chrome, request: Any, shots: Path, name: str) -> None:
    """After a failed test: the page's screenshot, its HTML and the browser's log."""
    if not getattr(request.node, "failed_call", False):
        return
    stem = shots / f"failed-{request.node.name}-{name}"
    try:
        d.save_screenshot(f"{stem}.png")
        Path(f"{stem}.html").write_text(d.page_source)
        Path(f"{stem}.log").write_text("\n".join(json.dumps(e) for e in d.get_log("browser")))
        print(f"evidence of the failure: {stem}.png/.html/.log")
    except Exception as e:  # the browser may be what failed
        print(f"no evidence from the browser: {e}")


@pytest.fixture()
def browser(request: Any, shots: Path) -> Iterator[webdriver.Chrome]:
    d = new_browser()
    try:
        yield d
    finally:
        keep_evidence(d, request, shots, "browser")
        d.quit()


@pytest.fixture()
def browser2(request: Any, shots: Path) -> Iterator[webdriver.Chrome]:
    d = new_browser()
    try:
        yield d
    finally:
        keep_evidence(d, request, shots, "browser2")
        d.quit()
