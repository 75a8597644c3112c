//! The processes of the deployed-shape `bench invoke`: `croupier server`, `croupier agent`, the
//! direct echo server (`croupier bench direct-server`), `nats-server` and its responder
//! (`croupier bench nats-responder`); each killed when dropped. Also the two helper commands'
//! bodies.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use futures::StreamExt;

use super::invoke::Direct;
use croupier_proto::function::v1::function_service_server::FunctionServiceServer;

/// A child process of the bench, killed on drop.
pub(super) struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Starts `cmd` (its stderr to `log`), and waits until `ready` finds what it needs in the
    /// lines it prints on stdout (or, with `on_stderr`, on stderr).
    pub(super) fn start(
        name: &'static str,
        mut cmd: Command,
        log: &Path,
        on_stderr: bool,
        ready: impl FnMut(&str) -> bool,
    ) -> anyhow::Result<Proc> {
        let log_file = std::fs::File::create(log)?;
        if on_stderr {
            cmd.stdout(log_file).stderr(Stdio::piped());
        } else {
            cmd.stdout(Stdio::piped()).stderr(log_file);
        }
        let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let out: Box<dyn std::io::Read + Send> = if on_stderr {
            Box::new(child.stderr.take().context("stderr")?)
        } else {
            Box::new(child.stdout.take().context("stdout")?)
        };
        let proc = Proc { child };
        let lines: mpsc::Receiver<String> = crate::child::lines(out);
        crate::child::wait_ready(&lines, Duration::from_secs(30), ready)
            .with_context(|| format!("{name} did not start; see {}", log.display()))?;
        // Keep draining what it prints, so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(proc)
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// The `croupier` binary (this one).
pub(super) fn exe() -> anyhow::Result<Command> {
    Ok(Command::new(
        std::env::current_exe().context("finding the croupier binary")?,
    ))
}

/// `croupier server` with the audit log and metrics on, as deployed; returns it and its URL.
pub(super) fn server(dir: &Path, certs: &Path) -> anyhow::Result<(Proc, String)> {
    let mut cmd = exe()?;
    cmd.args(["--log", "warn", "server", "--listen", "127.0.0.1:0"])
        .args(["--http-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.join("server-data"))
        .arg("--tls-dir")
        .arg(certs);
    let mut url = None;
    let proc = Proc::start(
        "croupier server",
        cmd,
        &dir.join("server.log"),
        false,
        |l| {
            url = l
                .strip_prefix("croupier server listening on ")
                .map(str::to_string);
            url.is_some()
        },
    )?;
    Ok((proc, url.context("no URL")?))
}

/// `croupier agent --packs none` as `id`; ready once it is registered (the caller checks).
pub(super) fn agent(
    dir: &Path,
    certs: &Path,
    url: &str,
    id: &str,
    threads: Option<usize>,
) -> anyhow::Result<Proc> {
    let mut cmd = exe()?;
    if let Some(n) = threads {
        cmd.env("CROUPIER_AGENT_WORKER_THREADS", n.to_string());
    }
    cmd.args(["--log", "warn", "agent", "--server", url, "--id", id])
        .args(["--packs", "none", "--identity", &format!("agent-{id}")])
        .args(["--game-id", "default", "--env", "dev"])
        .arg("--tls-dir")
        .arg(certs)
        .stdout(Stdio::null());
    let log = std::fs::File::create(dir.join(format!("{id}.log")))?;
    let child = cmd.stderr(log).spawn().context("starting croupier agent")?;
    Ok(Proc { child })
}

/// `croupier bench direct-server`: the echo behind a plain tonic server with the same mTLS.
pub(super) fn direct(dir: &Path, certs: &Path) -> anyhow::Result<(Proc, String)> {
    let mut cmd = exe()?;
    cmd.args(["--log", "warn", "bench", "direct-server"])
        .arg("--tls-dir")
        .arg(certs);
    let mut url = None;
    let proc = Proc::start("direct server", cmd, &dir.join("direct.log"), false, |l| {
        url = l.strip_prefix("direct listening on ").map(str::to_string);
        url.is_some()
    })?;
    Ok((proc, url.context("no URL")?))
}

/// `nats-server` with TLS (the Croupier CA, client certificates required); returns it and its
/// `tls://` URL.
pub(super) fn nats_server(dir: &Path, certs: &Path) -> anyhow::Result<(Proc, String)> {
    let conf = dir.join("nats.conf");
    let path = |f: &str| certs.join(f).display().to_string();
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:-1\ntls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  \
             verify: true\n}}\n",
            path("server.pem"),
            path("server.key"),
            path("ca.pem")
        ),
    )?;
    let mut cmd = Command::new("nats-server");
    cmd.arg("-c").arg(&conf);
    let mut port = None;
    let proc = Proc::start("nats-server", cmd, &dir.join("nats.log"), true, |l| {
        port = l
            .split("Listening for client connections on ")
            .nth(1)
            .and_then(|a| a.trim().rsplit(':').next())
            .map(str::to_string);
        port.is_some()
    })
    .map_err(|e| {
        e.context(
            "nats-server is needed for the NATS comparison (Debian: apt-get install \
             nats-server); or pass --skip-nats",
        )
    })?;
    Ok((
        proc,
        format!("tls://127.0.0.1:{}", port.context("no port")?),
    ))
}

/// `croupier bench nats-responder`: answers `bench.echo` requests on `url`.
pub(super) fn nats_responder(dir: &Path, certs: &Path, url: &str) -> anyhow::Result<Proc> {
    let mut cmd = exe()?;
    cmd.args(["--log", "warn", "bench", "nats-responder", "--url", url])
        .arg("--tls-dir")
        .arg(certs);
    Proc::start(
        "nats responder",
        cmd,
        &dir.join("responder.log"),
        false,
        |l| l == "nats responder ready",
    )
}

/// A NATS connection with the client certificate `stem` of `certs`.
pub(super) async fn nats_connect(
    url: &str,
    certs: &Path,
    stem: &str,
) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(certs.join("ca.pem"))
        .add_client_certificate(
            certs.join(format!("{stem}.pem")),
            certs.join(format!("{stem}.key")),
        )
        .connect(url)
        .await
        .with_context(|| format!("connecting to NATS at {url}"))
}

/// Arguments of the hidden `croupier bench direct-server`.
#[derive(Args, Debug, Clone)]
pub struct DirectServerArgs {
    /// Directory with ca.pem, server.pem and server.key.
    #[arg(long)]
    pub tls_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
}

/// Serves the echo `FunctionService` over mTLS until killed; prints `direct listening on URL`.
pub async fn direct_server(args: DirectServerArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    println!("direct listening on https://{}", listener.local_addr()?);
    tonic::transport::Server::builder()
        .tls_config(crate::server::server_tls(&args.tls_dir)?)?
        .tcp_nodelay(true)
        .add_service(FunctionServiceServer::new(Direct))
        .serve_with_incoming(crate::server::nodelay(listener))
        .await?;
    Ok(())
}

/// Arguments of the hidden `croupier bench nats-responder`.
#[derive(Args, Debug, Clone)]
pub struct NatsResponderArgs {
    /// The NATS server, `tls://host:port`.
    #[arg(long)]
    pub url: String,
    /// Directory with ca.pem and the agent certificate agent-bench-agent.pem/.key.
    #[arg(long)]
    pub tls_dir: PathBuf,
}

/// Answers each `bench.echo` request with its payload until killed; prints
/// `nats responder ready` once subscribed.
pub async fn nats_responder_run(args: NatsResponderArgs) -> anyhow::Result<()> {
    let client = nats_connect(&args.url, &args.tls_dir, "agent-bench-agent").await?;
    let mut sub = client.subscribe("bench.echo").await?;
    client.flush().await?;
    println!("nats responder ready");
    while let Some(msg) = sub.next().await {
        let Some(reply) = msg.reply else { continue };
        if let Err(e) = client.publish(reply, msg.payload).await {
            bail!("replying: {e}");
        }
    }
    Ok(())
}
