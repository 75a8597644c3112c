//! `croupier bench gateway`: the game gateway under load, on loopback.
//!
//! In one run it starts a mesh server and a backend agent (serving `bench.echo`) in this
//! process and a `croupier gateway` child process (so its memory is its own), then:
//! 1. opens `--sessions` client sessions (TCP, signed tokens) and reports the gateway's
//!    resident memory before and after, per session;
//! 2. sends requests at `--rate` per second in all, spread over the sessions, for
//!    `--duration`, each answered by `bench.echo` through gateway + mesh, and reports p50, p99
//!    and max latency as the client sees it;
//! 3. pushes one `gateway.broadcast` to all sessions and reports how long until every session
//!    had it;
//! 4. calls `gateway.push` for single players and reports its latency.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use croupier_gateway::auth::{Claims, now_unix, sign};
use croupier_gateway::client::Connection;
use croupier_gateway::frame;
use croupier_proto::common::v1::FunctionDescriptor;
use croupier_proto::gateway::v1::FrameType;
use croupier_sdk::{CallOptions, Client, HandlerError, Provider, ProviderConfig, TlsFiles};
use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::certs::{CertsInit, init};
use crate::config::ServerConfig;

/// Arguments of `croupier bench gateway`.
#[derive(Args, Debug, Clone)]
pub struct GatewayBenchArgs {
    /// Client sessions held at once.
    #[arg(long, default_value_t = 10_000)]
    pub sessions: usize,
    /// Requests per second, all sessions together.
    #[arg(long, default_value_t = 5_000)]
    pub rate: u64,
    /// How long the request phase runs.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Single-player pushes measured.
    #[arg(long, default_value_t = 500)]
    pub pushes: usize,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

const KEY: &[u8] = b"bench-key";
const MSG_ECHO: u32 = 1;

struct GatewayProc {
    child: Child,
    addr: String,
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl GatewayProc {
    fn rss_mib(&self) -> anyhow::Result<f64> {
        crate::child::rss_mib(self.child.id()).context("reading the gateway's memory")
    }
}

/// What every client session shares with the bench.
struct Tally {
    latency: Mutex<Histogram<u64>>,
    answered: AtomicU64,
    errors: AtomicU64,
    pushes: AtomicU64,
    epoch: Instant,
}

/// One session: a writer task and a reader task; returns the writer's queue.
async fn session(addr: &str, i: usize, tally: Arc<Tally>) -> anyhow::Result<mpsc::Sender<u64>> {
    let token = sign(
        KEY,
        &Claims {
            sub: format!("p-{i}"),
            exp: now_unix() + 3600,
            attrs: Default::default(),
        },
    );
    let mut conn = Connection::connect(addr, None).await?;
    conn.login(&token, "", 0, "bench").await?;
    let (mut rd, mut wr) = conn.into_split();
    let (tx, mut rx) = mpsc::channel::<u64>(64);
    let acks = tx.clone();
    // Writer: a value above 0 is a push seq to acknowledge; 0 asks for a request.
    croupier_proto::task::spawn("session", async move {
        let mut seq = 0;
        while let Some(v) = rx.recv().await {
            let f = if v > 0 {
                frame::bare(FrameType::Ack, v)
            } else {
                seq += 1;
                let sent = (Instant::now() - tally_epoch()).as_nanos() as u64;
                let payload = Bytes::copy_from_slice(&sent.to_be_bytes());
                frame::message(FrameType::Request, MSG_ECHO, seq, 0, payload)
            };
            if wr.send(&f).await.is_err() {
                return;
            }
        }
    });
    croupier_proto::task::spawn("session", async move {
        while let Ok(Some(f)) = rd.recv().await {
            match frame::kind(&f) {
                FrameType::Response if f.payload.len() == 8 => {
                    let sent = u64::from_be_bytes(f.payload[..8].try_into().unwrap_or_default());
                    let now = (Instant::now() - tally.epoch).as_nanos() as u64;
                    let micros = now.saturating_sub(sent) / 1000;
                    let _ = tally
                        .latency
                        .lock()
                        .expect("latency lock")
                        .record(micros.max(1));
                    tally.answered.fetch_add(1, Ordering::Relaxed);
                }
                FrameType::Error => {
                    let first = tally.errors.fetch_add(1, Ordering::Relaxed) == 0;
                    let e = f.error.unwrap_or_default();
                    if first {
                        eprintln!("first request error: {}: {}", e.code, e.message);
                    }
                }
                FrameType::Push => {
                    tally.pushes.fetch_add(1, Ordering::Relaxed);
                    let _ = acks.try_send(f.seq);
                }
                _ => {}
            }
        }
    });
    Ok(tx)
}

/// The bench's time origin (shared by writers and readers).
fn tally_epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn echo_backend(url: &str, certs: &std::path::Path) -> Provider {
    let d = FunctionDescriptor {
        id: "bench.echo".into(),
        description: "Echoes the request's data.".into(),
        ..Default::default()
    };
    Provider::new(ProviderConfig::new(
        vec![url.into()],
        "backend",
        TlsFiles::from_dir(certs, "agent-backend"),
    ))
    .function(d, |call| async move {
        Ok::<_, HandlerError>(serde_json::json!({ "data_b64": call.payload["data_b64"] }))
    })
}

fn start_gateway(dir: &std::path::Path, url: &str) -> anyhow::Result<GatewayProc> {
    let exe = std::env::current_exe().context("finding the croupier binary")?;
    let log = std::fs::File::create(dir.join("gateway.log"))?;
    let mut child = Command::new(exe)
        .args(["--log", "warn", "gateway", "--id", "gw-1", "--server", url])
        .arg("--tls-dir")
        .arg(dir.join("certs"))
        .args(["--listen", "127.0.0.1:0", "--route", "1=bench.echo"])
        .env("CROUPIER_GATEWAY_AUTH__HMAC_KEY", "bench-key")
        .env("CROUPIER_GATEWAY_CALLS__MAX_IN_FLIGHT", "20000")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .context("starting croupier gateway")?;
    let stdout = child.stdout.take().context("gateway stdout")?;
    let mut addr = String::new();
    crate::child::wait_ready(
        &crate::child::lines(stdout),
        Duration::from_secs(30),
        |line| {
            if let Some(a) = line.strip_prefix("croupier gateway listening on tcp://") {
                addr = a.to_string();
            }
            line.ends_with("registered") && !addr.is_empty()
        },
    )
    .with_context(|| format!("the gateway did not start; see {}", dir.display()))?;
    Ok(GatewayProc { child, addr })
}

fn percentile(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Runs `croupier bench gateway`.
pub async fn run(args: GatewayBenchArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("croupier-bench-gateway-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let certs = dir.join("certs");
    init(&CertsInit {
        dir: certs.clone(),
        agents: vec!["gw-1".into(), "backend".into()],
        clients: vec!["bench".into()],
        admins: vec![],
        servers: vec![],
        hosts: vec![],
        force: false,
        ..Default::default()
    })?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("https://{}", listener.local_addr()?);
    let mut cfg = ServerConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.join("data"),
        tls_dir: certs.clone(),
        audit_log: false,
        ..ServerConfig::default()
    };
    // Every player's call reaches the server as the gateway's identity.
    cfg.limits.max_concurrent_calls_per_caller = 20_000;
    let stop = CancellationToken::new();
    let s = stop.clone();
    let server = croupier_proto::task::spawn(
        "run",
        crate::server::serve(cfg, listener, async move { s.cancelled().await }),
    );
    let backend = echo_backend(&url, &certs);
    let mut state = backend.state();
    let backend_task = croupier_proto::task::spawn("run", backend.run(stop.clone()));
    tokio::time::timeout(Duration::from_secs(20), state.wait_for(|s| s.connected))
        .await
        .context("the backend did not connect")??;
    let gw = start_gateway(&dir, &url)?;
    let client = Client::connect(&url, &TlsFiles::from_dir(&certs, "client-bench")).await?;
    let rss_before = gw.rss_mib()?;

    // 1. Sessions.
    let tally = Arc::new(Tally {
        latency: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        answered: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        pushes: AtomicU64::new(0),
        epoch: tally_epoch(),
    });
    let started = Instant::now();
    let mut writers = Vec::with_capacity(args.sessions);
    for chunk in (0..args.sessions).collect::<Vec<_>>().chunks(256) {
        let opened =
            futures::future::join_all(chunk.iter().map(|&i| session(&gw.addr, i, tally.clone())))
                .await;
        for w in opened {
            writers.push(w.context("opening a session")?);
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let held = sessions_online(&client).await?;
    let rss_held = gw.rss_mib()?;
    let per_session_kib = (rss_held - rss_before) * 1024.0 / args.sessions.max(1) as f64;

    // 2. Requests at a rate, round robin over the sessions.
    let total = (args.rate as f64 * args.duration.as_secs_f64()) as u64;
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let phase = Instant::now();
    for n in 0..total {
        let due = phase + interval * n as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        let _ = writers[(n as usize) % writers.len()].try_send(0);
    }
    let wait_until = Instant::now() + Duration::from_secs(10);
    while tally.answered.load(Ordering::Relaxed) + tally.errors.load(Ordering::Relaxed) < total
        && Instant::now() < wait_until
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let achieved = tally.answered.load(Ordering::Relaxed) as f64 / phase.elapsed().as_secs_f64();
    let lat = tally.latency.lock().expect("latency lock").clone();

    // 3. Broadcast to all.
    let before = tally.pushes.load(Ordering::Relaxed);
    let b0 = Instant::now();
    let resp = client
        .invoke(
            "gateway.broadcast",
            serde_json::json!({"msg_id": 9, "data": {"news": "bench"}}),
            &CallOptions::new(),
        )
        .await?;
    let want = before + args.sessions as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while tally.pushes.load(Ordering::Relaxed) < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let fanout_ms = b0.elapsed().as_secs_f64() * 1000.0;
    let delivered = tally.pushes.load(Ordering::Relaxed) - before;
    let gw_result = croupier_proto::json::opt_struct_to_json(resp.result.as_ref());

    // 4. Single-player pushes through the mesh.
    let mut push_lat = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for i in 0..args.pushes {
        let p = format!("p-{}", (i * 7919) % args.sessions.max(1));
        let t = Instant::now();
        client
            .invoke(
                "gateway.push",
                serde_json::json!({"player_id": p, "msg_id": 10, "data": {"i": i}}),
                &CallOptions::new(),
            )
            .await?;
        push_lat.record((t.elapsed().as_micros() as u64).max(1))?;
    }

    let figures = serde_json::json!({
        "sessions": args.sessions,
        "sessions_held": held,
        "connect_seconds": connect_secs,
        "gateway_rss_mib_idle": rss_before,
        "gateway_rss_mib_with_sessions": rss_held,
        "memory_per_session_kib": per_session_kib,
        "requests": total,
        "requests_answered": tally.answered.load(Ordering::Relaxed),
        "request_errors": tally.errors.load(Ordering::Relaxed),
        "target_rate": args.rate,
        "achieved_rate": achieved,
        "request_p50_ms": percentile(&lat, 0.5),
        "request_p99_ms": percentile(&lat, 0.99),
        "request_max_ms": lat.max() as f64 / 1000.0,
        "broadcast_delivered": delivered,
        "broadcast_all_delivered_ms": fanout_ms,
        "broadcast_gateway_ms": gw_result["elapsed_ms"],
        "push_p50_ms": percentile(&push_lat, 0.5),
        "push_p99_ms": percentile(&push_lat, 0.99),
    });
    if args.json {
        println!("{figures}");
    } else {
        println!(
            "sessions held            {held} of {} (opened in {connect_secs:.1} s)",
            args.sessions
        );
        println!(
            "gateway memory           {rss_before:.1} MiB idle, {rss_held:.1} MiB with sessions ({per_session_kib:.1} KiB per session)"
        );
        println!(
            "requests                 {} at {:.0}/s (target {}/s), {} errors; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            tally.answered.load(Ordering::Relaxed),
            achieved,
            args.rate,
            tally.errors.load(Ordering::Relaxed),
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat.max() as f64 / 1000.0
        );
        println!(
            "broadcast                {delivered} of {} sessions in {fanout_ms:.1} ms (gateway side {} ms)",
            args.sessions, gw_result["elapsed_ms"]
        );
        println!(
            "gateway.push             p50 {:.2} ms, p99 {:.2} ms over {} calls",
            percentile(&push_lat, 0.5),
            percentile(&push_lat, 0.99),
            args.pushes
        );
    }
    drop(writers);
    drop(gw);
    stop.cancel();
    let _ = backend_task.await;
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn sessions_online(client: &Client) -> anyhow::Result<u64> {
    let r = client
        .invoke(
            "gateway.sessions",
            serde_json::json!({}),
            &CallOptions::new(),
        )
        .await?;
    let v = croupier_proto::json::opt_struct_to_json(r.result.as_ref());
    Ok(v["online"].as_u64().unwrap_or(0))
}
