//! A provider: serves a typed function `example.roll` and a typed job `example.shuffle` until
//! Ctrl-C, then says goodbye. Their parameter and result schemas are derived from the Rust types
//! below, so the server rejects bad payloads before they get here.
//!
//! The agent id must match a certificate `agent-<ID>` signed by the server's CA. With
//! `croupier dev` running, add one (a rerun of `certs init` reuses the CA):
//!
//! ```text
//! croupier certs init --dir ~/.croupier/dev/certs --agent gs-1
//! cargo run -p croupier-sdk --example provider -- --agent-id gs-1
//! croupier invoke example.roll --payload '{"dice": 3, "sides": 6}'
//! croupier job start example.shuffle --payload '{"decks": 4, "ms": 250}' --follow
//! ```
//!
//! Flags: `--server URL` (repeat for failover), `--tls-dir DIR`, `--agent-id ID` (alias
//! `--identity`), `--game ID`, `--env ID`.

use std::path::PathBuf;
use std::time::Duration;

use croupier_sdk::proto::common::v1::{FunctionDescriptor, Semantics};
use croupier_sdk::{HandlerError, Provider, ProviderConfig, TlsFiles};
use rand::Rng;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Roll some dice.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Roll {
    /// How many dice (1–100).
    #[schemars(range(min = 1, max = 100))]
    dice: u32,
    /// Faces per die (2–1000; default 6).
    #[serde(default = "six")]
    #[schemars(range(min = 2, max = 1000))]
    sides: u32,
}

fn six() -> u32 {
    6
}

/// The dice as they fell.
#[derive(Serialize, JsonSchema)]
struct Rolled {
    rolls: Vec<u32>,
    total: u64,
}

/// Shuffle decks, one step per deck.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Shuffle {
    /// Decks to shuffle (1–1000).
    #[schemars(range(min = 1, max = 1000))]
    decks: u32,
    /// Milliseconds per deck.
    #[serde(default)]
    ms: u64,
}

/// The shuffled decks' top cards.
#[derive(Serialize, JsonSchema)]
struct Shuffled {
    top_cards: Vec<u32>,
}

/// Command-line flags.
struct Args {
    servers: Vec<String>,
    tls_dir: PathBuf,
    agent_id: String,
    game: String,
    env: String,
}

fn args() -> Result<Args, String> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let mut a = Args {
        servers: Vec::new(),
        tls_dir: home.join(".croupier/dev/certs"),
        agent_id: "gs-1".into(),
        game: "default".into(),
        env: "dev".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--server" => a.servers.push(value()?),
            "--tls-dir" => a.tls_dir = value()?.into(),
            "--agent-id" | "--identity" => a.agent_id = value()?,
            "--game" => a.game = value()?,
            "--env" => a.env = value()?,
            other => {
                return Err(format!(
                    "unknown flag {other}; flags: --server URL --tls-dir DIR --agent-id ID \
                     --game ID --env ID"
                ));
            }
        }
    }
    if a.servers.is_empty() {
        a.servers.push("https://127.0.0.1:8443".into());
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let tls = TlsFiles::from_dir(&args.tls_dir, &format!("agent-{}", args.agent_id));
    let mut cfg = ProviderConfig::new(args.servers.clone(), &args.agent_id, tls);
    cfg.game_id = args.game.clone();
    cfg.env = args.env.clone();
    cfg.labels.insert("example".into(), "true".into());

    let roll = FunctionDescriptor {
        category: "example".into(),
        description: "Rolls dice and answers with each roll and the total.".into(),
        semantics: Some(Semantics {
            kind: "command".into(),
            ..Default::default()
        }),
        version: "1".into(),
        ..Default::default()
    };
    let shuffle = FunctionDescriptor {
        category: "example".into(),
        description: "A job: shuffles decks one by one, reporting progress.".into(),
        ..Default::default()
    };
    let provider = Provider::new(cfg)
        .typed_function("example.roll", roll, |roll: Roll, _call| async move {
            let mut rng = rand::rng();
            let rolls: Vec<u32> = (0..roll.dice)
                .map(|_| rng.random_range(1..=roll.sides))
                .collect();
            let total = rolls.iter().map(|&r| u64::from(r)).sum();
            Ok::<_, HandlerError>(Rolled { rolls, total })
        })
        .typed_job("example.shuffle", shuffle, |s: Shuffle, job| async move {
            let mut top_cards = Vec::new();
            for deck in 1..=s.decks {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(s.ms)) => {}
                    _ = job.cancel().cancelled() => {
                        return Err(HandlerError::new("CANCELLED", format!("stopped after {} decks", deck - 1)));
                    }
                }
                top_cards.push(rand::rng().random_range(1..=52));
                job.progress(f64::from(deck) / f64::from(s.decks), format!("deck {deck} shuffled"))
                    .await;
            }
            Ok(Shuffled { top_cards })
        });

    let mut state = provider.state();
    croupier_sdk::proto::task::spawn("main", async move {
        while state.changed().await.is_ok() {
            let s = state.borrow().clone();
            if s.connected {
                println!("connected to {} (session {})", s.server, s.session_id);
            } else {
                println!("disconnected; reconnecting…");
            }
        }
    });

    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    croupier_sdk::proto::task::spawn("main", async move {
        let _ = tokio::signal::ctrl_c().await;
        println!("shutting down (goodbye)…");
        stop.cancel();
    });
    println!(
        "serving example.roll and example.shuffle as {} in {}/{}; Ctrl-C to stop",
        args.agent_id, args.game, args.env
    );
    provider.run(shutdown).await?;
    Ok(())
}
