//! `croupier dev`: certificates, an embedded-store server and an agent in one process, so a new
//! user has a working mesh with one command.

use std::path::Path;

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
    let cfg = ServerConfig {
        listen: args.listen.clone(),
        data_dir: dir.join("data"),
        tls_dir: certs.clone(),
        ..ServerConfig::default()
    };
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

    let stop = CancellationToken::new();
    let server_stop = stop.clone();
    let server = croupier_proto::task::spawn(
        "run",
        crate::server::serve(cfg, listener, async move { server_stop.cancelled().await }),
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
            croupier_agent::AgentConfig {
                provider,
                packs: croupier_agent::Packs::all(),
            },
            agent_stop.clone(),
        ),
    );

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
    println!(
        "\nCroupier dev mesh is up.\n\
         \x20 server:       {url} (embedded store in {data})\n\
         \x20 agent:        {agent} (agent.ping, agent.sleep, agent.countdown, node.metrics, node.resources)\n\
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
