//! `croupier bench …`: what the mesh costs, measured with real processes or sockets over mTLS on
//! loopback, printing the figures the project tracks. The shared fixture (certificates, a server
//! and an agent in this process) is here.
//!
//! Layout:
//! - `invoke` — `bench invoke`: mesh against direct (in one process with `--in-process`).
//! - `deployed` — `bench invoke` in the deployed shape: processes, direct and NATS.
//! - `procs` — the processes that shape runs, and the hidden helper commands.
//! - `jobs` — `bench jobs`: job event throughput and latency.
//! - `agents` — `bench agents`: many agents against servers on etcd.
//! - `load_agent` — the lightweight agents `bench agents` runs.
//! - `gateway` — `bench gateway`: the game gateway under load.
//! - `console` — `bench console`: a server with its console holding many agents, for the
//!   browser's measurement of the fleet page.

pub mod agents;
pub mod console;
mod deployed;
pub mod gateway;
pub mod invoke;
pub mod jobs;
mod load_agent;
pub mod procs;

pub use agents::{AgentsBenchArgs, agents};
pub use invoke::{InvokeBenchArgs, invoke};
pub use jobs::{JobsBenchArgs, jobs};

use crate::certs::{CertsInit, init};
use crate::config::ServerConfig;
use anyhow::Context;
use croupier_sdk::{Client, Provider, ProviderConfig, TlsFiles};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A server and one in-process agent on loopback, with fresh certificates in a temp dir.
struct BenchMesh {
    dir: std::path::PathBuf,
    certs: std::path::PathBuf,
    url: String,
    stop: CancellationToken,
    agent_stop: CancellationToken,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    agent: tokio::task::JoinHandle<Result<(), croupier_sdk::provider::ProviderError>>,
}

impl BenchMesh {
    /// Starts the server (its config adjusted by `tune`) and an agent whose functions `add`
    /// registers.
    async fn start(
        tune: impl FnOnce(&mut ServerConfig),
        add: impl FnOnce(Provider) -> Provider,
    ) -> anyhow::Result<BenchMesh> {
        let dir = tempfile_dir()?;
        let certs = dir.join("certs");
        init(&CertsInit {
            dir: certs.clone(),
            agents: vec!["bench-agent".into()],
            clients: vec!["bench".into()],
            admins: vec![],
            servers: vec![],
            hosts: vec![],
            force: false,
            ..Default::default()
        })?;
        let stop = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("https://{}", listener.local_addr()?);
        let mut cfg = ServerConfig {
            listen: "127.0.0.1:0".into(),
            data_dir: dir.join("data"),
            tls_dir: certs.clone(),
            audit_log: false,
            announce: false,
            ..ServerConfig::default()
        };
        // Metrics recorded as in a deployment, on a port of its own.
        cfg.http.listen = Some("127.0.0.1:0".into());
        tune(&mut cfg);
        let s = stop.clone();
        let server = croupier_proto::task::spawn(
            "start",
            crate::server::serve(cfg, listener, async move { s.cancelled().await }),
        );
        let provider = add(Provider::new(ProviderConfig::new(
            vec![url.clone()],
            "bench-agent",
            TlsFiles::from_dir(&certs, "agent-bench-agent"),
        )));
        let mut state = provider.state();
        let agent_stop = CancellationToken::new();
        let agent = croupier_proto::task::spawn("start", provider.run(agent_stop.clone()));
        tokio::time::timeout(Duration::from_secs(20), state.wait_for(|s| s.connected))
            .await
            .context("the bench agent did not connect")??;
        Ok(BenchMesh {
            dir,
            certs,
            url,
            stop,
            agent_stop,
            server,
            agent,
        })
    }

    async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.url, &TlsFiles::from_dir(&self.certs, "client-bench")).await?)
    }

    async fn stop(self) -> anyhow::Result<()> {
        // The agent leaves first (goodbye), then the server drains.
        self.agent_stop.cancel();
        let _ = self.agent.await;
        self.stop.cancel();
        self.server.await??;
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("croupier-bench-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
