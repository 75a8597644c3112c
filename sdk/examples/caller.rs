//! A caller: connects, lists functions, invokes `agent.ping` with typed payload and result,
//! runs the job `agent.countdown` and prints its events, then watches registrations briefly.
//!
//! Against `croupier dev` (certificates in `~/.croupier/dev/certs`, client `client-dev`):
//!
//! ```text
//! cargo run -p croupier-sdk --example caller -- --server https://127.0.0.1:8443
//! ```
//!
//! Flags: `--server URL`, `--tls-dir DIR`, `--identity STEM` (the certificate `STEM.pem` /
//! `STEM.key`), `--game ID`, `--env ID`.

use std::path::PathBuf;
use std::time::Duration;

use croupier_sdk::proto::function::v1::EventType;
use croupier_sdk::proto::registry::v1::{RegistrationEvent, WatchRegistrationsRequest};
use croupier_sdk::{CallError, CallOptions, Client, TlsFiles};
use serde::{Deserialize, Serialize};

/// What we send to `agent.ping`.
#[derive(Debug, Serialize, Deserialize)]
struct Ping {
    hello: String,
    round: u32,
}

/// What `agent.ping` answers: the agent, our payload back, and how many pings it served.
#[derive(Debug, Deserialize)]
struct Pong {
    agent_id: String,
    payload: Ping,
    calls: u64,
}

/// The payload of `agent.countdown`.
#[derive(Serialize)]
struct Countdown {
    steps: u32,
    ms: u32,
}

/// The result of `agent.countdown`.
#[derive(Debug, Deserialize)]
struct Counted {
    agent_id: String,
    steps: u32,
}

/// Command-line flags.
struct Args {
    server: String,
    tls_dir: PathBuf,
    identity: String,
    game: String,
    env: String,
}

fn args() -> Result<Args, String> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let mut a = Args {
        server: "https://127.0.0.1:8443".into(),
        tls_dir: home.join(".croupier/dev/certs"),
        identity: "client-dev".into(),
        game: "default".into(),
        env: "dev".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--server" => a.server = value()?,
            "--tls-dir" => a.tls_dir = value()?.into(),
            "--identity" => a.identity = value()?,
            "--game" => a.game = value()?,
            "--env" => a.env = value()?,
            other => {
                return Err(format!(
                    "unknown flag {other}; flags: --server URL --tls-dir DIR --identity STEM \
                     --game ID --env ID"
                ));
            }
        }
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let tls = TlsFiles::from_dir(&args.tls_dir, &args.identity);
    let client = Client::connect(&args.server, &tls).await?;
    let opts = CallOptions::new()
        .game(&args.game)
        .env(&args.env)
        .timeout(Duration::from_secs(10));

    println!("functions in {}/{}:", args.game, args.env);
    for f in client.functions(&args.game, &args.env).await? {
        let mut traits = Vec::new();
        if f.is_job() {
            traits.push("job");
        }
        if f.safe_to_retry() {
            traits.push("retried");
        }
        println!(
            "  {:<20} {} online  [{}]  {}",
            f.id,
            f.online_agents().count(),
            traits.join(", "),
            f.description()
        );
    }

    let ping = Ping {
        hello: "world".into(),
        round: 1,
    };
    match client
        .invoke_typed::<_, Pong>("agent.ping", &ping, &opts)
        .await
    {
        Ok(pong) => println!(
            "agent.ping: {} answered {:?} (its call #{})",
            pong.agent_id, pong.payload, pong.calls
        ),
        Err(CallError::Handler { code, message, .. }) => {
            println!("agent.ping failed in the handler: {code}: {message}");
        }
        Err(e) => println!("agent.ping: {e}"),
    }

    let job = client
        .start_job_typed("agent.countdown", &Countdown { steps: 5, ms: 200 }, &opts)
        .await?;
    println!("job {} started", job.id());
    let mut events = job.events(0).await?;
    while let Some(ev) = events.message().await? {
        let kind = EventType::try_from(ev.r#type)
            .map(|t| t.as_str_name())
            .unwrap_or("?");
        println!(
            "  #{:<3} {:<9} {:>3.0}%  {}",
            ev.seq,
            kind,
            ev.progress * 100.0,
            ev.message
        );
    }
    let done: Counted = job.wait_typed().await?;
    println!("job done on {}: {} steps", done.agent_id, done.steps);

    println!("watching registrations for 3 s:");
    let mut watch = client
        .watch_registrations(WatchRegistrationsRequest {
            game_id: args.game.clone(),
            env: args.env.clone(),
            ..Default::default()
        })
        .await?;
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(Ok(Some(ev))) = tokio::time::timeout_at(until, watch.message()).await {
        print_event(&ev);
    }
    Ok(())
}

fn print_event(ev: &RegistrationEvent) {
    let kind = croupier_sdk::proto::registry::v1::EventType::try_from(ev.r#type)
        .map(|t| t.as_str_name())
        .unwrap_or("?");
    let function = ev
        .registration
        .as_ref()
        .map(|r| r.function_id.as_str())
        .unwrap_or("");
    println!(
        "  rev {:<5} {:<8} {function} {}",
        ev.revision, kind, ev.agent_id
    );
}
