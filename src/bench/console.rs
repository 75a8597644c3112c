//! `croupier bench console`: a server with its console on, holding `--agents` lightweight
//! agents (real sessions: certificate, registration, tunnel, heartbeats), and a console user.
//! It prints one JSON line — `{"console", "user", "password", "agents", "register_s"}` — and
//! holds the fleet for `--hold`, so a browser can measure the console at fleet size
//! (`tests/console/bench_fleet.py` does: the fleet page's time to render every agent).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use croupier_proto::control::v1::PutUserRequest;
use croupier_sdk::{Client, TlsFiles};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::load_agent::{LoadAgent, LoadStats, source};
use super::procs::{Proc, exe};
use crate::certs::{CertsInit, init};

/// `croupier bench console`.
#[derive(clap::Args, Debug)]
pub struct ConsoleBenchArgs {
    /// Agents to hold.
    #[arg(long, default_value_t = 10_000)]
    pub agents: usize,
    /// How long to hold them after printing the sign-in (the measuring happens meanwhile).
    #[arg(long, default_value = "10m", value_parser = crate::cli::parse_duration)]
    pub hold: Duration,
    /// Registrations in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
}

/// Runs the fleet until `--hold` passes or the process is interrupted.
pub async fn console(args: ConsoleBenchArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("croupier-bench-console-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let certs = dir.join("certs");
    let ids: Vec<String> = (0..args.agents).map(|i| format!("sim-{i}")).collect();
    init(&CertsInit {
        dir: certs.clone(),
        agents: ids.clone(),
        admins: vec!["bench".into()],
        ..Default::default()
    })?;
    let mut cmd = exe()?;
    cmd.args(["--log", "warn", "server", "--listen", "127.0.0.1:0"])
        .args(["--http-listen", "", "--console-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--tls-dir")
        .arg(&certs);
    let (mut url, mut console) = (None, None);
    let server = Proc::start(
        "croupier server",
        cmd,
        &dir.join("server.log"),
        false,
        |l| {
            if let Some(c) = l.strip_prefix("croupier console on ") {
                console = Some(c.trim_end_matches('/').to_string());
            }
            url = l
                .strip_prefix("croupier server listening on ")
                .map(str::to_string);
            url.is_some()
        },
    )?;
    let url = url.context("no server URL")?;
    let console = console.context("the server printed no console address")?;

    let stop = CancellationToken::new();
    let stats = Arc::new(LoadStats::default());
    let limit = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let started = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        let permit = limit.clone().acquire_owned().await?;
        let agent = LoadAgent {
            url: url.clone(),
            pem: TlsFiles::from_dir(&certs, &format!("agent-{id}")).load()?,
            id: id.clone(),
            source: source(i),
            stop: stop.clone(),
            stats: stats.clone(),
        };
        croupier_proto::task::spawn("sim agent", agent.run(Some(permit)));
    }
    super::agents::wait_registered(&stats, args.agents as u64, Duration::from_secs(600)).await?;
    let register_s = started.elapsed().as_secs_f64();

    let token = croupier_registry::users::new_token().1;
    let password = token[token.len() - 24..].to_string();
    let admin = Client::connect(&url, &TlsFiles::from_dir(&certs, "admin-bench")).await?;
    admin
        .control_service()
        .put_user(PutUserRequest {
            name: "bench".into(),
            role: "admin".into(),
            password: password.clone(),
            ..Default::default()
        })
        .await
        .context("adding the console user")?;
    println!(
        "{}",
        serde_json::json!({
            "console": console, "user": "bench", "password": password,
            "agents": args.agents, "register_s": register_s,
        })
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        () = tokio::time::sleep(args.hold) => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    stop.cancel();
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
