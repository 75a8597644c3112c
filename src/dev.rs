//! `croupier dev`: certificates, an embedded-store server and an agent in one process, so a new
//! user has a working mesh with one command.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use croupier_sdk::{ProviderConfig, TlsFiles};
use tokio_util::sync::CancellationToken;

use crate::certs::{CertsInit, init};
use crate::cli::{DevArgs, dev_dir};
use crate::config::ServerConfig;

/// Makes the dev certificates in `dir/certs` unless they exist: a CA, the server, one agent,
/// client `dev` and admin `admin`.
pub fn ensure_certs(dir: &Path, agent_id: &str) -> anyhow::Result<()> {
    init(&CertsInit {
        dir: dir.join("certs"),
        agents: vec![agent_id.to_string()],
        clients: vec!["dev".into()],
        admins: vec!["admin".into()],
        servers: vec![],
        hosts: vec![],
        force: false,
        ..Default::default()
    })
    .context("making dev certificates")?;
    Ok(())
}

/// Runs the dev mesh until `shutdown` resolves.
pub async fn run(
    args: DevArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let dir = args.dir.clone().unwrap_or_else(dev_dir);
    ensure_certs(&dir, &args.agent_id)?;
    let certs = dir.join("certs");
    let mut cfg = ServerConfig {
        listen: args.listen.clone(),
        data_dir: dir.join("data"),
        tls_dir: certs.clone(),
        ..ServerConfig::default()
    };
    // The store first: a second `croupier dev` on the same home fails here, before it prints
    // anything or starts an agent.
    let store = crate::server::open_store(&cfg).await.map_err(|e| {
        if format!("{e:#}").contains("is locked") {
            e.context(format!(
                "another croupier dev (or server) uses {}; stop it, or give this one its own \
                 home (CROUPIER_HOME=DIR or --dir DIR) and port (--listen 127.0.0.1:8444)",
                dir.display()
            ))
        } else {
            e
        }
    })?;
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| {
            format!(
                "binding {} (is another croupier running? try --listen)",
                cfg.listen
            )
        })?;
    let addr = listener.local_addr()?;
    let url = format!("https://{addr}");
    // The metrics port is picked here, so the banner can say where it is.
    let metrics_at = match crate::http::bind(args.http_listen.as_deref()).await? {
        Some(l) => Some(l.local_addr()?.to_string()),
        None => None,
    };
    cfg.http.listen = Some(metrics_at.clone().unwrap_or_default());
    // Bound here to learn the port (also of ":0"), so the banner can say where it is.
    let console_at = match args.console_listen.as_deref() {
        Some("") => None,
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the console's address {addr}"))?
                .local_addr()?
                .to_string(),
        ),
        None => Some(
            match tokio::net::TcpListener::bind("127.0.0.1:8445").await {
                Ok(l) => l.local_addr()?,
                Err(_) => tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await?
                    .local_addr()?,
            }
            .to_string(),
        ),
    };
    cfg.console.listen = console_at.clone();
    let console_password = crate::console::ensure_dev_user(&dir, &store).await?;

    let stop = CancellationToken::new();
    let server_stop = stop.clone();
    let server = croupier_proto::task::spawn(
        "run",
        crate::server::serve_store(cfg, store, listener, async move {
            server_stop.cancelled().await;
        }),
    );

    let mut provider = ProviderConfig::new(
        vec![url.clone()],
        &args.agent_id,
        TlsFiles::from_dir(&certs, &format!("agent-{}", args.agent_id)),
    );
    provider.labels.insert("mode".into(), "dev".into());
    let agent_stop = CancellationToken::new();
    let agent = croupier_proto::task::spawn(
        "run",
        croupier_agent::run(
            croupier_agent::AgentConfig::new(provider, croupier_agent::Packs::all()),
            agent_stop.clone(),
        ),
    );

    // "Up" means the agent is online: the banner lists what it really serves.
    let served = served_functions(&url, &certs, &args.agent_id).await?;

    let default_dir = args.dir.is_none();
    let flags = if default_dir {
        String::new()
    } else {
        format!(" --tls-dir {}", certs.display())
    };
    let server_flag = if url == "https://127.0.0.1:8443" {
        String::new()
    } else {
        format!(" --server {url}")
    };
    let metrics = metrics_at.map_or_else(
        || "off".to_string(),
        |a| format!("http://{a}/metrics (also /healthz, /readyz)"),
    );
    let console = console_at.map_or_else(
        || "off".to_string(),
        |a| {
            format!(
                "https://{a}/ (sign in as admin, password {console_password}; the browser \
                 trusts it once you accept or import {}/ca.pem)",
                certs.display()
            )
        },
    );
    println!(
        "\nCroupier dev mesh is up.\n\
         \x20 server:       {url} (embedded store in {data})\n\
         \x20 metrics:      {metrics}\n\
         \x20 console:      {console}\n\
         \x20 agent:        {agent}, serving {count} functions: {served}\n\
         \x20 certificates: {certs} (client-dev, admin-admin, agent-{agent})\n\n\
         Try, in another terminal:\n\
         \x20 croupier agents{server_flag}{flags}\n\
         \x20 croupier functions{server_flag}{flags}\n\
         \x20 croupier invoke agent.ping --payload '{{\"hello\":\"world\"}}'{server_flag}{flags}\n\
         \x20 croupier invoke agent.sleep --payload '{{\"ms\":250}}' --timeout 5{server_flag}{flags}\n\
         \x20 croupier invoke node.metrics{server_flag}{flags}\n\
         \x20 croupier job start agent.countdown --payload '{{\"steps\":10,\"ms\":300}}' --follow{server_flag}{flags}\n\
         \x20 croupier watch{server_flag}{flags}\n\
         \x20 croupier node state {agent} maintenance --reason 'trying it'{server_flag}{flags}\n\n\
         Press Ctrl-C to stop.",
        data = dir.join("data").display(),
        count = served.len(),
        served = served.join(", "),
        agent = args.agent_id,
        certs = certs.display(),
    );

    shutdown.await;
    // The agent leaves first (goodbye), then the server drains.
    agent_stop.cancel();
    let _ = agent.await;
    stop.cancel();
    server.await.context("server task")??;
    Ok(())
}

/// Waits (up to 30 s) for the dev agent to be online and returns the functions it serves.
async fn served_functions(url: &str, certs: &Path, agent_id: &str) -> anyhow::Result<Vec<String>> {
    let client = croupier_sdk::Client::connect(url, &TlsFiles::from_dir(certs, "client-dev"))
        .await
        .context("connecting to the dev server")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let functions = client
            .functions("default", "dev")
            .await
            .ok()
            .unwrap_or_default();
        let mut served: Vec<String> = functions
            .into_iter()
            .filter(|f| f.agents.iter().any(|a| a.agent_id == agent_id && a.online))
            .map(|f| f.id)
            .collect();
        if !served.is_empty() {
            served.sort();
            return Ok(served);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the dev agent {agent_id} did not come online within 30 s; see the log above"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
