//! Test bed for end-to-end tests: real `croupier server` and `croupier agent` processes with
//! certificates from `croupier certs init`, on loopback ports picked by the OS.

#![allow(dead_code)]

pub mod gateway;
pub mod netns;
pub mod otlp;
pub mod testbed;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use croupier_sdk::{Client, TlsFiles};

pub mod raw_agent;

/// The `croupier` binary under test: the one cargo built, or `CROUPIER_TEST_BIN` (to run a
/// test against another build, e.g. to see it fail on a build without a fix).
pub fn bin() -> String {
    std::env::var("CROUPIER_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_croupier").into())
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    /// Sends a signal (libc::SIGTERM, SIGKILL…).
    pub fn signal(&self, sig: i32) {
        // SAFETY-free: `kill` via the command line keeps the tests free of unsafe code.
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status();
    }

    /// Waits for the process to exit, at most `timeout`; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server with its certificates and data in a temporary directory.
pub struct Mesh {
    pub dir: tempfile::TempDir,
    pub server: Option<Proc>,
    pub url: String,
    /// `host:port` of the main server's metrics port.
    pub metrics: Option<String>,
    pub heartbeat: Duration,
    /// Extra environment of the server process (e.g. `CROUPIER_JOBS__MAX_EVENTS`).
    pub server_env: Vec<(String, String)>,
    /// Extra arguments of the server process (e.g. `--store etcd`).
    pub server_args: Vec<String>,
    /// A command the main server runs under (e.g. `prlimit --nofile=256 --`); empty for none.
    pub server_wrap: Vec<String>,
}

/// Writes certificates into `dir` with the given agents, clients `c1`, and admin `ops`.
pub fn certs(dir: &Path, agents: &[&str]) {
    let mut args = vec!["--client", "c1", "--admin", "ops"];
    for a in agents {
        args.extend(["--agent", a]);
    }
    certs_cmd(dir, "init", &args);
}

/// Runs `croupier certs SUB --dir DIR ARGS…`, which must succeed; returns its stdout.
pub fn certs_cmd(dir: &Path, sub: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(bin())
        .args(["certs", sub, "--dir"])
        .arg(dir)
        .args(args)
        .output()
        .expect("running croupier certs");
    assert!(
        out.status.success(),
        "certs {sub} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

impl Mesh {
    /// Starts a server with heartbeat interval `heartbeat`; certificates for `agents`.
    pub fn start(agents: &[&str], heartbeat: Duration) -> Mesh {
        Mesh::start_with_env(agents, heartbeat, &[])
    }

    /// Like [`Mesh::start`], with extra environment for the server.
    pub fn start_with_env(agents: &[&str], heartbeat: Duration, env: &[(&str, &str)]) -> Mesh {
        Mesh::start_with(agents, heartbeat, env, &[])
    }

    /// Like [`Mesh::start`], with extra environment and arguments for the server.
    pub fn start_with(
        agents: &[&str],
        heartbeat: Duration,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Mesh {
        Mesh::start_wrapped(agents, heartbeat, env, args, &[])
    }

    /// Like [`Mesh::start_with`], the server running under `wrap` (e.g. `prlimit …`).
    pub fn start_wrapped(
        agents: &[&str],
        heartbeat: Duration,
        env: &[(&str, &str)],
        args: &[&str],
        wrap: &[&str],
    ) -> Mesh {
        let dir = tempfile::tempdir().unwrap();
        certs(&dir.path().join("certs"), agents);
        let mut mesh = Mesh {
            dir,
            server: None,
            url: String::new(),
            metrics: None,
            heartbeat,
            server_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            server_args: args.iter().map(std::string::ToString::to_string).collect(),
            server_wrap: wrap.iter().map(std::string::ToString::to_string).collect(),
        };
        mesh.start_server("127.0.0.1:0");
        mesh
    }

    /// Path of the certificate directory.
    pub fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// (Re)starts the server on `listen`, waiting for its "listening" line.
    pub fn start_server(&mut self, listen: &str) {
        let (proc, url, metrics) = self.spawn_server_with_metrics(listen, "server", &[]);
        self.url = url;
        self.metrics = metrics;
        self.server = Some(proc);
    }

    /// Starts a server process on the same certificates (with its own data dir and log, both
    /// named `name`); the main one ("server") gets `server_args`, others only `extra`. Returns it
    /// and its URL.
    pub fn spawn_server(&self, listen: &str, name: &str, extra: &[&str]) -> (Proc, String) {
        let (proc, url, _) = self.spawn_server_with_metrics(listen, name, extra);
        (proc, url)
    }

    /// Like [`Mesh::spawn_server`], with the address of the server's metrics port.
    pub fn spawn_server_with_metrics(
        &self,
        listen: &str,
        name: &str,
        extra: &[&str],
    ) -> (Proc, String, Option<String>) {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        let data = if name == "server" {
            "data".to_string()
        } else {
            format!("data-{name}")
        };
        let wrap = if name == "server" {
            &self.server_wrap[..]
        } else {
            &[]
        };
        let mut cmd = match wrap.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        let mut child = cmd
            .args([
                "server",
                "--listen",
                listen,
                "--http-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(self.dir.path().join(data))
            .arg("--tls-dir")
            .arg(self.certs())
            .args([
                "--heartbeat-interval",
                &format!("{}ms", self.heartbeat.as_millis()),
                "--shutdown-grace",
                "5s",
            ])
            .args(if name == "server" {
                &self.server_args[..]
            } else {
                &[]
            })
            .args(extra)
            .env("CROUPIER_LOG", "info")
            .envs(
                self.server_env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("starting croupier server");
        let stdout = child.stdout.take().unwrap();
        let (url, metrics) =
            croupier::child::server_urls(&croupier::child::lines(stdout), Duration::from_secs(30))
                .unwrap_or_else(|| {
                    panic!(
                        "server {name} did not start: {}",
                        std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
                            .unwrap_or_default()
                    )
                });
        (
            Proc {
                child,
                name: name.into(),
            },
            url,
            metrics,
        )
    }

    /// The server process's resident memory, in MiB (from /proc).
    pub fn server_rss_mib(&self) -> u64 {
        let pid = self.server.as_ref().expect("server running").child.id();
        croupier::child::rss_mib(pid).map_or(0, |m| m as u64)
    }

    /// Runs the CLI with this mesh's server and `identity`: (exit code, stdout, stderr).
    pub fn cli(&self, identity: &str, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(bin())
            .args(args)
            .arg("--server")
            .arg(&self.url)
            .arg("--tls-dir")
            .arg(self.certs())
            .arg("--identity")
            .arg(identity)
            .env_remove("CROUPIER_GAME_ID")
            .env_remove("CROUPIER_ENV")
            .output()
            .expect("running the croupier CLI");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The server's log so far.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Starts an agent process (game "g", env "e") with labels.
    pub fn agent(&self, id: &str, labels: &[&str]) -> Proc {
        self.agent_with(id, labels, &[])
    }

    /// Starts an agent process with extra arguments.
    pub fn agent_with(&self, id: &str, labels: &[&str], extra: &[&str]) -> Proc {
        self.agent_on(&self.url, id, labels, extra)
    }

    /// Starts an agent process dialing `servers` (comma-separated URLs, in failover order).
    pub fn agent_on(&self, servers: &str, id: &str, labels: &[&str], extra: &[&str]) -> Proc {
        self.agent_full(servers, id, labels, extra, &[])
    }

    /// Starts an agent process with extra environment variables.
    pub fn agent_env(&self, id: &str, env: &[(&str, &str)]) -> Proc {
        self.agent_full(&self.url, id, &[], &[], env)
    }

    fn agent_full(
        &self,
        servers: &str,
        id: &str,
        labels: &[&str],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Proc {
        let log = std::fs::File::create(self.dir.path().join(format!("agent-{id}.log"))).unwrap();
        let mut cmd = Command::new(bin());
        cmd.args([
            "agent",
            "--server",
            servers,
            "--id",
            id,
            "--game-id",
            "g",
            "--env",
            "e",
        ])
        .arg("--tls-dir")
        .arg(self.certs());
        for l in labels {
            cmd.args(["--label", l]);
        }
        cmd.args(extra);
        cmd.envs(env.iter().copied());
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting croupier agent");
        Proc {
            child,
            name: id.to_string(),
        }
    }

    /// An agent's log so far.
    pub fn agent_log(&self, id: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("agent-{id}.log"))).unwrap_or_default()
    }

    /// A client with certificate `stem` (client-c1, admin-ops, agent-a1…).
    pub async fn client(&self, stem: &str) -> Client {
        Client::connect(&self.url, &TlsFiles::from_dir(&self.certs(), stem))
            .await
            .expect("client connects")
    }

    /// Waits until the named agents are registered and online.
    pub async fn wait_online(&self, ids: &[&str]) {
        let client = self.client("client-c1").await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let agents = client.agents("", "").await.unwrap();
            if ids
                .iter()
                .all(|id| agents.iter().any(|a| a.agent_id == *id && a.online))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agents {ids:?} did not come online; have {:?}\n{}",
                agents
                    .iter()
                    .map(|a| (&a.agent_id, a.online))
                    .collect::<Vec<_>>(),
                self.server_log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `agent` has at least `n` calls in flight (as the server sees them).
    pub async fn wait_in_flight(&self, agent: &str, n: i64) {
        let client = self.client("client-c1").await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !client
            .agents("", "")
            .await
            .unwrap()
            .iter()
            .any(|a| a.agent_id == agent && a.in_flight >= n)
        {
            assert!(
                Instant::now() < deadline,
                "{agent} never had {n} calls in flight"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `id` is no longer registered.
    pub async fn wait_gone(&self, id: &str, timeout: Duration) {
        let client = self.client("client-c1").await;
        let deadline = Instant::now() + timeout;
        while client
            .agents("", "")
            .await
            .unwrap()
            .iter()
            .any(|a| a.agent_id == id)
        {
            assert!(Instant::now() < deadline, "agent {id} still registered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Waits (at most 10 s) until `addr` can be bound again after its server exited.
pub fn wait_port_free(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpListener::bind(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} is still in use");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Call options for game "g", env "e".
pub fn opts() -> croupier_sdk::CallOptions {
    croupier_sdk::CallOptions {
        game_id: "g".into(),
        env: "e".into(),
        ..Default::default()
    }
}

/// The local test image (scripts/test.sh builds it from Debian's busybox-static).
pub const IMAGE: &str = "croupier-test/busybox:latest";

/// Runs the docker CLI: (success, stdout, stderr).
pub fn docker(args: &[&str]) -> (bool, String, String) {
    match Command::new("docker").args(args).output() {
        Ok(o) => (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).trim().to_string(),
            String::from_utf8_lossy(&o.stderr).trim().to_string(),
        ),
        Err(e) => (false, String::new(), format!("running docker: {e}")),
    }
}

/// True when dockerd answers and the test image is there. Without dockerd: panics when
/// `CROUPIER_REQUIRE_DOCKER=1`, else prints why and returns false (the test is skipped).
/// Without the image: panics, saying how to build it.
pub fn docker_ready() -> bool {
    let (ok, _, err) = docker(&["info", "--format", "{{.ServerVersion}}"]);
    if !ok {
        if std::env::var("CROUPIER_REQUIRE_DOCKER").as_deref() == Ok("1") {
            panic!(
                "Docker is required (CROUPIER_REQUIRE_DOCKER=1) but `docker info` failed: {err}"
            );
        }
        eprintln!(
            "skipping: Docker is not reachable (`docker info`: {err}); set \
             CROUPIER_REQUIRE_DOCKER=1 to fail instead"
        );
        return false;
    }
    let (ok, _, err) = docker(&["image", "inspect", IMAGE]);
    assert!(
        ok,
        "the test image {IMAGE} is missing ({err}); run scripts/test.sh, which builds it from \
         Debian's busybox-static (images cannot be pulled here)"
    );
    true
}

/// Containers (any state) carrying `label` (`key=value`), per the docker CLI.
pub fn containers_labelled(label: &str) -> Vec<String> {
    let filter = format!("label={label}");
    let (ok, out, err) = docker(&["ps", "-a", "-q", "--no-trunc", "--filter", &filter]);
    assert!(ok, "docker ps: {err}");
    out.lines().map(str::to_string).collect()
}

/// Starts `croupier dev` from `cmd` (its arguments and environment already set; stdout is
/// taken here) and reads its banner until "Press Ctrl-C": the process, the server URL and the
/// banner. Panics when dev does not come up within `timeout`.
pub fn start_dev(mut cmd: Command, timeout: Duration) -> (Proc, String, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting croupier dev");
    let lines = croupier::child::lines(child.stdout.take().unwrap());
    let dev = Proc {
        child,
        name: "dev".into(),
    };
    let (mut url, mut banner) = (String::new(), String::new());
    croupier::child::wait_ready(&lines, timeout, |line| {
        if let Some(rest) = line.trim_start().strip_prefix("server:") {
            url = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
        }
        banner.push_str(line);
        banner.push('\n');
        line.contains("Press Ctrl-C")
    })
    .unwrap_or_else(|| panic!("croupier dev did not come up: {banner}"));
    (dev, url, banner)
}

/// The value of the sample `series` (name and labels as exposed, e.g.
/// `croupier_pipelines_total{op="put"}`) in a Prometheus text exposition.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// GETs `/metrics` from the metrics port `addr`.
pub fn scrape(addr: &str) -> String {
    let (status, text) = gateway::http(addr, "GET", "/metrics", None, "");
    assert_eq!(status, 200, "{text}");
    text
}
