//! `croupier`: one binary for the server, the agent, dev mode and the CLI.

use std::process::ExitCode;

use clap::Parser;
use croupier::cli::{self, BenchCommand, Cli, Command};
use croupier::config::ServerConfig;
use croupier_sdk::{ProviderConfig, TlsFiles};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The NATS client of `bench invoke` reports every connection at info: quieter unless asked.
    let log = if cli.log.contains("async_nats") {
        cli.log.clone()
    } else {
        format!("{},async_nats=warn", cli.log)
    };
    let filter = EnvFilter::try_new(&log).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        cli::LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        // No colour codes in a log redirected to a file.
        cli::LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    // tonic and rustls both can use ring; installing it explicitly makes the process-wide
    // choice unambiguous should another provider be compiled in by a dependency.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Command::Agent(a) = &cli.command
        && let Some(n) = a.worker_threads
    {
        builder.worker_threads(n.max(1));
    }
    let runtime = match builder.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(cli::exit::of_error(&e) as u8)
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM; a second one exits at once.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    let token = CancellationToken::new();
    let t = token.clone();
    croupier_proto::task::spawn("shutdown_signal", async move {
        wait_signal().await;
        tracing::info!("signal received: shutting down (send another to exit now)");
        t.cancel();
        wait_signal().await;
        eprintln!("second signal: exiting now");
        std::process::exit(130);
    });
    async move { token.cancelled().await }
}

async fn wait_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Server(args) => {
            let mut cfg = ServerConfig::load(args.config.as_deref(), &args)?;
            if let Some(h) = &args.http_listen {
                cfg.http.listen = Some(h.clone());
            }
            if let Some(c) = &args.console_listen {
                cfg.console.listen = Some(c.clone());
            }
            if let Some(e) = &args.otlp_endpoint {
                cfg.otlp.endpoint = Some(e.clone());
            }
            let _spans = match cfg.otlp.endpoint.as_deref().filter(|e| !e.is_empty()) {
                Some(e) => Some(croupier::otel::install(e, "croupier-server")?),
                None => None,
            };
            let listener = tokio::net::TcpListener::bind(&cfg.listen)
                .await
                .map_err(|e| anyhow::anyhow!("binding {}: {e}", cfg.listen))?;
            // On a worker thread, not the main thread's `block_on`: the server's own loops then
            // share the workers with the tasks they wake instead of handing off to them.
            let serving = croupier::server::serve(cfg, listener, shutdown_signal());
            croupier_proto::task::spawn("server", serving).await??;
        }
        Command::Agent(args) => {
            let tls_dir = match &args.tls_dir {
                Some(d) => d.clone(),
                None => cli::dev_dir().join("certs"),
            };
            let stem = args
                .identity
                .clone()
                .unwrap_or_else(|| format!("agent-{}", args.id));
            let mut provider = ProviderConfig::new(
                args.server.clone(),
                &args.id,
                TlsFiles::from_dir(&tls_dir, &stem),
            );
            provider.game_id = args.game_id.clone();
            provider.env = args.env.clone();
            provider.labels = args.labels.iter().cloned().collect();
            let _spans = match args.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) {
                Some(e) => Some(croupier::otel::install(e, "croupier-agent")?),
                None => None,
            };
            let stop = CancellationToken::new();
            let s = stop.clone();
            let signal = shutdown_signal();
            croupier_proto::task::spawn("run", async move {
                signal.await;
                s.cancel();
            });
            tracing::info!(packs = %args.packs, "starting agent");
            let agent = croupier_agent::provider(croupier_agent::AgentConfig {
                provider,
                packs: args.packs.clone(),
                reports: croupier_agent::Reports {
                    inventory: croupier_agent::InventoryTimes {
                        check: args.inventory_interval,
                        resend: args.inventory_resend,
                    },
                    metrics: croupier_agent::MetricsTimes {
                        sample: args.metrics_interval,
                        batch: args.metrics_batch,
                        thresholds: args.thresholds.clone(),
                    },
                },
            });
            if let Some(listen) = args.http_listen.as_deref().filter(|l| !l.is_empty()) {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .map_err(|e| anyhow::anyhow!("binding the HTTP port {listen}: {e}"))?;
                let at = croupier::http::spawn_agent(listener, agent.state(), stop.child_token())?;
                tracing::info!(%at, "HTTP port: /metrics, /healthz, /readyz");
            }
            // The tunnel's read loop on a worker thread, beside the calls it starts: run from
            // the main thread's `block_on`, every frame would hop threads.
            croupier_proto::task::spawn("agent", agent.run(stop)).await??;
        }
        Command::Dev(args) => croupier::dev::run(args, shutdown_signal()).await?,
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "croupier", &mut std::io::stdout());
        }
        Command::Invoke(args) => return cli::invoke(args).await,
        Command::Version(args) => cli::version(args).await?,
        Command::Job(cmd) => return croupier::cli::job::run(cmd).await,
        Command::Store(cmd) => return croupier::cli::store::run(cmd),
        Command::Pipeline(cmd) => croupier::cli::pipeline::run(cmd).await?,
        Command::Agents(args) => cli::agents(args).await?,
        Command::Functions(args) => cli::functions(args).await?,
        Command::Describe(args) => return cli::describe::describe(args).await,
        Command::Stats(args) => cli::stats::stats(args).await?,
        Command::Watch(args) => {
            tokio::select! {
                r = cli::watch(args) => r?,
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Command::Function(cmd) => cli::function(cmd).await?,
        Command::Node(cmd) => cli::node::run(cmd).await?,
        Command::Events(args) => cli::fleet::events(args).await?,
        Command::Assign(cmd) => cli::assign::run(cmd).await?,
        Command::User(cmd) => cli::user::run_user(cmd).await?,
        Command::Token(cmd) => cli::user::run_token(cmd).await?,
        Command::Policy(cmd) => return cli::policy::run(cmd).await,
        Command::Approval(cmd) => cli::approval::run(cmd).await?,
        Command::Audit(cmd) => return cli::audit::run(cmd).await,
        Command::Certs(cmd) => cli::certs::run(cmd)?,
        Command::Bench(BenchCommand::Invoke(args)) => croupier::bench::invoke(args).await?,
        Command::Bench(BenchCommand::Jobs(args)) => croupier::bench::jobs(args).await?,
        Command::Bench(BenchCommand::Agents(args)) => croupier::bench::agents(args).await?,
        Command::Bench(BenchCommand::Console(args)) => {
            croupier::bench::console::console(args).await?;
        }
        Command::Gateway(args) => {
            return Ok(croupier_gateway::cmd::run(*args, shutdown_signal()).await?);
        }
        Command::Bench(BenchCommand::Gateway(args)) => croupier::bench::gateway::run(args).await?,
        Command::Bench(BenchCommand::DirectServer(args)) => {
            croupier::bench::procs::direct_server(args).await?;
        }
        Command::Bench(BenchCommand::NatsResponder(args)) => {
            croupier::bench::procs::nats_responder_run(args).await?;
        }
    }
    Ok(0)
}
