//! Gateway fixtures for end-to-end tests: `croupier gateway` processes on loopback ports, a
//! backend agent (in the test process) serving the functions the routes name, signed tokens,
//! and helpers that read frames with a deadline.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use croupier_gateway::auth::{Claims, now_unix, sign};
use croupier_gateway::client::Connection;
use croupier_proto::common::v1::FunctionDescriptor;
use croupier_proto::gateway::v1::{CloseReason, Frame, FrameType, LoginOk};
use croupier_sdk::{HandlerError, Provider, ProviderConfig, TlsFiles};
use tokio_util::sync::CancellationToken;

use super::{Mesh, Proc, bin};

/// The HMAC key every test gateway uses.
pub const KEY: &str = "test-key";
/// The bearer token of the push endpoint.
pub const PUSH_TOKEN: &str = "push-secret";
/// Route 1: `game.echo`; route 2: `game.slow`.
pub const ECHO: u32 = 1;
/// See [`ECHO`].
pub const SLOW: u32 = 2;

/// A signed token for `player`, valid for an hour.
pub fn token(player: &str) -> String {
    sign(
        KEY.as_bytes(),
        &Claims {
            sub: player.into(),
            exp: now_unix() + 3600,
            attrs: Default::default(),
        },
    )
}

/// A running `croupier gateway`.
pub struct Gateway {
    /// The process.
    pub proc: Proc,
    /// The client listener, host:port.
    pub addr: String,
    /// The metrics listener, host:port.
    pub http: String,
    /// The push listener, host:port.
    pub push: String,
    /// The agent id.
    pub id: String,
    log: std::path::PathBuf,
}

impl Gateway {
    /// The gateway's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts gateway `id` (its certificate must exist in the mesh) with routes 1 → game.echo and
/// 2 → game.slow, metrics and push listeners, plus `extra` flags and `env`; waits until it is
/// registered on the mesh.
pub fn start_gateway(mesh: &Mesh, id: &str, extra: &[&str], env: &[(&str, &str)]) -> Gateway {
    let log = mesh.dir.path().join(format!("gateway-{id}.log"));
    let mut child = Command::new(bin())
        .args(["gateway", "--id", id, "--server", &mesh.url])
        .arg("--tls-dir")
        .arg(mesh.certs())
        .args(["--game-id", "g", "--env", "e"])
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(["--push-listen", "127.0.0.1:0", "--push-token", PUSH_TOKEN])
        .args(["--route", "1=game.echo", "--route", "2=game.slow"])
        .args(["--hmac-key", KEY])
        .args(extra)
        .env("CROUPIER_LOG", "info,croupier_gateway=debug")
        .env("CROUPIER_GATEWAY_PEERS__REFRESH", "200ms")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("starting croupier gateway");
    let stdout = child.stdout.take().unwrap();
    let (mut addr, mut http, mut push) = (String::new(), String::new(), String::new());
    croupier::child::wait_ready(
        &croupier::child::lines(stdout),
        Duration::from_secs(30),
        |line| {
            if let Some(a) = line.strip_prefix("croupier gateway listening on ") {
                addr = a.split("://").nth(1).unwrap_or(a).to_string();
            } else if let Some(a) = line.strip_prefix("croupier gateway http on http://") {
                http = a.to_string();
            } else if let Some(a) = line.strip_prefix("croupier gateway push on http://") {
                push = a.to_string();
            }
            line.ends_with("registered")
        },
    )
    .unwrap_or_else(|| {
        panic!(
            "gateway {id} did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    Gateway {
        proc: Proc {
            child,
            name: id.into(),
        },
        addr,
        http,
        push,
        id: id.into(),
        log,
    }
}

/// The backend agent `backend`, running in this process until the token is cancelled:
/// `game.echo` (answers `{"player_id", "session_id", "seq", "data"}` or, for opaque data,
/// `{"data_b64"}` as received), `game.slow` (`data.ms` milliseconds, then `{"slept": ms}`;
/// `started` counts calls begun) and `auth.verify` (token `good-<player>` is that player).
pub struct Backend {
    /// Stops it.
    pub stop: CancellationToken,
    /// `game.slow` calls begun.
    pub started: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    /// Starts it and waits until its tunnel is up.
    pub async fn start(mesh: &Mesh) -> Backend {
        let mut cfg = ProviderConfig::new(
            vec![mesh.url.clone()],
            "backend",
            TlsFiles::from_dir(&mesh.certs(), "agent-backend"),
        );
        cfg.game_id = "g".into();
        cfg.env = "e".into();
        let d = |id: &str| FunctionDescriptor {
            id: id.into(),
            ..Default::default()
        };
        let started = Arc::new(AtomicUsize::new(0));
        let s = started.clone();
        let provider = Provider::new(cfg)
            .function(d("game.echo"), |call| async move {
                let p = call.payload;
                if p.get("data_b64").is_some() {
                    return Ok::<_, HandlerError>(serde_json::json!({ "data_b64": p["data_b64"] }));
                }
                if p["data"]["fail"].as_bool() == Some(true) {
                    return Err(HandlerError::new("NO_SUCH_MOVE", "the move is not allowed"));
                }
                Ok(serde_json::json!({
                    "player_id": p["player_id"], "session_id": p["session_id"],
                    "seq": p["seq"], "gateway_id": p["gateway_id"], "data": p["data"],
                }))
            })
            .function(d("game.slow"), move |call| {
                let s = s.clone();
                async move {
                    s.fetch_add(1, Ordering::SeqCst);
                    let ms = call.payload["data"]["ms"].as_u64().unwrap_or(500);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok::<_, HandlerError>(serde_json::json!({ "slept": ms }))
                }
            })
            .function(d("auth.verify"), |call| async move {
                let token = call.payload["token"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                match token.strip_prefix("good-") {
                    Some(p) => Ok(serde_json::json!({ "player_id": p, "attrs": {"region": "eu"} })),
                    None => Err(HandlerError::new("BAD_TOKEN", "unknown token")),
                }
            });
        let mut state = provider.state();
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = croupier_proto::task::spawn("start", async move {
            let _ = provider.run(s).await;
        });
        tokio::time::timeout(Duration::from_secs(20), state.wait_for(|s| s.connected))
            .await
            .expect("the backend connects")
            .unwrap();
        Backend {
            stop,
            started,
            task,
        }
    }

    /// Says goodbye and waits for it.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Connects and logs in as `player` with a fresh session.
pub async fn login(addr: &str, player: &str) -> (Connection, LoginOk) {
    login_resume(addr, player, "", 0).await
}

/// Connects and logs in, resuming `session_id` after `ack_seq`.
pub async fn login_resume(
    addr: &str,
    player: &str,
    session_id: &str,
    ack_seq: u64,
) -> (Connection, LoginOk) {
    let mut c = Connection::connect(addr, None).await.expect("connects");
    let ok = tokio::time::timeout(
        Duration::from_secs(10),
        c.login(&token(player), session_id, ack_seq, "test"),
    )
    .await
    .expect("login answered in time")
    .expect("login accepted");
    (c, ok)
}

/// The next frame, within 10 s; `None` when the gateway closed the connection.
pub async fn next(c: &mut Connection) -> Option<Frame> {
    tokio::time::timeout(Duration::from_secs(10), c.recv())
        .await
        .expect("a frame within 10 s")
        .ok()
        .flatten()
}

/// Frames until the first of type `kind` (returned), within 10 s.
pub async fn until(c: &mut Connection, kind: FrameType) -> Frame {
    loop {
        let f = next(c)
            .await
            .unwrap_or_else(|| panic!("connection closed before {kind:?}"));
        if f.r#type == kind as i32 {
            return f;
        }
    }
}

/// Waits for the CLOSE frame and returns its reason and message.
pub async fn closed(c: &mut Connection) -> (CloseReason, String) {
    let f = until(c, FrameType::Close).await;
    let close = f.close.unwrap_or_default();
    (
        CloseReason::try_from(close.reason).unwrap_or_default(),
        close.message,
    )
}

/// Sends a JSON REQUEST.
pub async fn request(c: &mut Connection, msg_id: u32, seq: u64, body: serde_json::Value) {
    let f = croupier_gateway::frame::message(
        FrameType::Request,
        msg_id,
        seq,
        croupier_gateway::frame::FLAG_JSON,
        serde_json::to_vec(&body).unwrap().into(),
    );
    c.send(&f).await.expect("sends");
}

/// The JSON payload of a frame.
pub fn json_of(f: &Frame) -> serde_json::Value {
    serde_json::from_slice(&f.payload).unwrap_or_else(|e| panic!("not JSON ({e}): {f:?}"))
}

/// Invokes a gateway function as client c1 (game g, env e), with options; the result JSON.
pub async fn invoke(
    mesh: &Mesh,
    function: &str,
    payload: serde_json::Value,
    opts: croupier_sdk::CallOptions,
) -> serde_json::Value {
    let resp = mesh
        .client("client-c1")
        .await
        .invoke(function, payload, &opts)
        .await
        .unwrap_or_else(|s| panic!("{function}: {s:?}"));
    assert!(resp.success, "{function} failed: {resp:?}");
    croupier_proto::json::opt_struct_to_json(resp.result.as_ref())
}

/// Polls `f` until it is true, every 50 ms, at most `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A plain HTTP/1.1 request (blocking, `Connection: close`): (status, body).
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("http connects");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
