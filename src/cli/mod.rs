//! Command-line interface: argument definitions and the client commands (`invoke`, `agents`,
//! `functions`, `watch`, `node state`).
//!
//! Layout:
//! - `serve` — the arguments of `server`, `agent` and `dev`.
//! - `invoke` — `croupier invoke`.
//! - `registry` — `agents`, `functions`, `watch`.
//! - `describe` — `croupier describe FUNCTION`.
//! - `stats` — `croupier stats [FUNCTION]`.
//! - `job` — `croupier job …`.
//! - `pipeline` — `croupier pipeline …`.
//! - `function` — `croupier function register|delete`.
//! - `node` — `croupier node state|resources`.
//! - `assign` — `croupier assign set|list|delete`: function assignments.
//! - `fleet` — `croupier events` and `croupier node resources`: node events and inventories.
//! - `policy`, `approval`, `audit` — governance: the admin policy, two-person approvals, the
//!   audit log.
//! - `store` — `croupier store …`.
//! - `user` — `croupier user …` and `croupier token …`: the console's users and API tokens.
//! - `certs` — the arguments of `certs init`.
//! - `exit` — the exit codes, one per class of outcome.
//! - `tests` — the contract on the argument tree (`--json` everywhere).

pub mod approval;
pub mod assign;
pub mod audit;
pub mod certs;
pub mod describe;
pub mod exit;
pub mod fleet;
pub mod function;
pub mod invoke;
pub mod job;
pub mod node;
pub mod pipeline;
pub mod policy;
pub mod registry;
pub mod serve;
pub mod stats;
pub mod store;
#[cfg(test)]
mod tests;
pub mod user;

pub use certs::CertsCommand;
pub use function::{FunctionCommand, function};
pub use invoke::{InvokeArgs, invoke};
pub use node::NodeCommand;
use registry::node_state_name;
pub use registry::{FunctionsArgs, ListArgs, WatchArgs, agents, functions, watch};
pub use serve::{AgentArgs, DevArgs, ServerArgs};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use croupier_sdk::{CallOptions, Client, TlsFiles};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The version `--version` prints: the package version and the commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("CROUPIER_COMMIT"),
    ")"
);

/// Croupier: a function registry and invocation mesh.
#[derive(Parser, Debug)]
#[command(name = "croupier", version = VERSION, about, long_about = None)]
pub struct Cli {
    /// Log filter (e.g. "info", "croupier=debug").
    #[arg(long, global = true, env = "CROUPIER_LOG", default_value = "info")]
    pub log: String,
    /// Log format: text (for people) or json (one object per line: timestamp, level, target,
    /// message and the event's fields, e.g. agent_id, function, job_id).
    #[arg(
        long,
        global = true,
        env = "CROUPIER_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// How logs are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Lines for people (colours on a terminal only).
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a control-plane server.
    Server(ServerArgs),
    /// Run an agent that dials a server and serves functions.
    Agent(AgentArgs),
    /// Run a server and an agent in one process with generated certificates (try Croupier).
    Dev(DevArgs),
    /// Invoke a function and print its result.
    Invoke(InvokeArgs),
    /// List agents.
    Agents(ListArgs),
    /// List functions and the agents providing them.
    Functions(FunctionsArgs),
    /// Show one function: descriptor, schemas, who may call it, its agents.
    Describe(describe::DescribeArgs),
    /// Per-function call statistics: calls, errors, success rate, latency, rate (this server's
    /// view).
    Stats(stats::StatsArgs),
    /// Watch registrations change.
    Watch(WatchArgs),
    /// Jobs: start, watch, cancel, get, list.
    #[command(subcommand)]
    Job(job::JobCommand),
    /// Pipeline templates: put, get, list, delete.
    #[command(subcommand)]
    Pipeline(pipeline::PipelineCommand),
    /// Function descriptors: delete (admin certificate).
    #[command(subcommand)]
    Function(FunctionCommand),
    /// Nodes: state, inventory.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Function assignments: enable, disable and configure a function per agent or label
    /// selector.
    #[command(subcommand)]
    Assign(assign::AssignCommand),
    /// Node events (container lifecycle, state changes, agents coming and going, inventory
    /// changes): replay recent ones, follow new ones.
    Events(fleet::EventsArgs),
    /// The admin policy: get, put, test.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Two-person approvals: list, show, approve, reject.
    #[command(subcommand)]
    Approval(approval::ApprovalCommand),
    /// The audit log: list a server's records, verify a log's hash chain.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Console users (argon2id passwords): add, passwd, remove, list (admin certificate).
    #[command(subcommand)]
    User(user::UserCommand),
    /// API tokens for scripts using the console's API: create, revoke, list (admin
    /// certificate).
    #[command(subcommand)]
    Token(user::TokenCommand),
    /// Certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// The embedded store of a data dir: check, repair, backup, restore.
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// Run a game gateway (player sessions in front of the mesh); `gateway token` signs a token.
    Gateway(Box<croupier_gateway::cmd::GatewayArgs>),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Print this CLI's version and ask the server for its own.
    Version(VersionArgs),
    /// Print a shell completion script: `croupier completions bash > /etc/bash_completion.d/croupier`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `croupier version`.
#[derive(Args, Debug)]
pub struct VersionArgs {
    /// JSON output: `{"client": {...}, "server": {...}}`.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub conn: Conn,
}

/// Runs `croupier version`: the CLI's version, then the server's (an unreachable server is an
/// error, after the CLI's own version is printed).
pub async fn version(args: VersionArgs) -> anyhow::Result<()> {
    let client_info = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"), "commit": env!("CROUPIER_COMMIT"),
    });
    if !args.json {
        println!("client  croupier {VERSION}");
    }
    let client = args.conn.client("client-dev").await?;
    let s = client.server_info().await.map_err(|s| status_error(&s))?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "client": client_info,
                "server": {
                    "url": args.conn.server, "version": s.version, "commit": s.commit,
                    "server_id": s.server_id, "store": s.store, "started_at": s.started_at,
                },
            })
        );
    } else {
        println!(
            "server  croupier {} ({}) at {}: server id {}, {} store, up since {}",
            crate::output::clean(&s.version),
            crate::output::clean(&s.commit),
            args.conn.server,
            crate::output::clean(&s.server_id),
            crate::output::clean(&s.store),
            crate::output::time(s.started_at)
        );
    }
    Ok(())
}

/// Connection flags of client commands.
#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// Server URL.
    #[arg(
        long,
        env = "CROUPIER_SERVER",
        default_value = "https://127.0.0.1:8443"
    )]
    pub server: String,
    /// Directory with ca.pem and the identity's certificate (default: the dev certificates).
    #[arg(long, env = "CROUPIER_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Certificate file stem, e.g. client-c1 for client-c1.pem/.key.
    #[arg(long, env = "CROUPIER_IDENTITY")]
    pub identity: Option<String>,
    /// Compress requests with gzip and ask for compressed answers: pays on slow links and for
    /// large payloads or log-heavy job streams.
    #[arg(long, env = "CROUPIER_GZIP")]
    pub gzip: bool,
}

/// Payload and options of a call or job.
#[derive(Args, Debug, Clone)]
pub struct CallArgs {
    /// JSON payload (an object), @FILE to read it from a file, or @- to read it from stdin.
    #[arg(long, default_value = "{}")]
    pub payload: String,
    /// Game.
    #[arg(long, env = "CROUPIER_GAME_ID", default_value = "default")]
    pub game_id: String,
    /// Environment.
    #[arg(long, env = "CROUPIER_ENV", default_value = "dev")]
    pub env: String,
    /// Routing: lb, round_robin, hash, targeted, broadcast.
    #[arg(long, default_value = "lb")]
    pub route: String,
    /// Key for hash routing.
    #[arg(long)]
    pub hash_key: Option<String>,
    /// Agent for targeted routing (implies --route targeted).
    #[arg(long)]
    pub target: Option<String>,
    /// Label selector (repeatable): --selector region=eu.
    #[arg(long = "selector", value_parser = parse_pair)]
    pub selector: Vec<(String, String)>,
    /// Function version to match.
    #[arg(long)]
    pub version: Option<String>,
    /// Idempotency key.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Deadline: 500ms, 2s, 1m (a bare number is seconds).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
}

/// A duration as the config file writes it (`500ms`, `2s`, `1m`); a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("{e}: write a duration such as 500ms, 2s or 1m"))
}

impl CallArgs {
    /// The payload: JSON text or @FILE, which must hold a JSON object.
    pub fn payload(&self) -> anyhow::Result<serde_json::Value> {
        let text = match self.payload.strip_prefix('@') {
            Some("-") => std::io::read_to_string(std::io::stdin()).context("reading stdin")?,
            Some(path) => {
                std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?
            }
            None => self.payload.clone(),
        };
        let payload: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            exit::usage(format!(
                "--payload is not valid JSON ({e}): {}",
                crate::output::clean(&text)
            ))
        })?;
        if !payload.is_object() {
            return Err(exit::usage(
                "--payload must be a JSON object, e.g. '{\"ms\": 100}'",
            ));
        }
        Ok(payload)
    }

    /// The call options.
    pub fn options(&self) -> CallOptions {
        let route = if self.target.is_some() && self.route == "lb" {
            "targeted".to_string()
        } else {
            self.route.clone()
        };
        CallOptions {
            game_id: self.game_id.clone(),
            env: self.env.clone(),
            routing: route,
            hash_key: self.hash_key.clone().unwrap_or_default(),
            target: self.target.clone().unwrap_or_default(),
            selector: self.selector.iter().cloned().collect::<HashMap<_, _>>(),
            version: self.version.clone().unwrap_or_default(),
            idempotency_key: self.idempotency_key.clone().unwrap_or_default(),
            timeout: self.timeout,
        }
    }
}

/// `croupier bench …`.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Invocations through the mesh vs. the same handler called directly over mTLS.
    Invoke(crate::bench::InvokeBenchArgs),
    /// Job events per second from one job to one subscriber, and time to the first event.
    Jobs(crate::bench::JobsBenchArgs),
    /// Many lightweight agents (real sessions, no handlers) against two servers on etcd:
    /// registration time, server CPU and memory while they heartbeat, watch latency, invoke via
    /// the owner vs another replica.
    Agents(crate::bench::AgentsBenchArgs),
    /// A server with its console on, holding N lightweight agents and a console user; prints
    /// the sign-in as JSON and holds the fleet for a browser to measure the console.
    Console(crate::bench::console::ConsoleBenchArgs),
    /// Game gateway: N client sessions, request latency through gateway + mesh, memory per
    /// session, broadcast fan-out.
    Gateway(crate::bench::gateway::GatewayBenchArgs),
    /// The direct echo server `bench invoke` compares the mesh with (started by it).
    #[command(hide = true)]
    DirectServer(crate::bench::procs::DirectServerArgs),
    /// The NATS responder `bench invoke` compares the mesh with (started by it).
    #[command(hide = true)]
    NatsResponder(crate::bench::procs::NatsResponderArgs),
}

/// Parses "k=v".
pub fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not key=value")),
    }
}

/// `$CROUPIER_HOME` or `~/.croupier`.
pub fn croupier_home() -> PathBuf {
    if let Some(h) = std::env::var_os("CROUPIER_HOME") {
        return PathBuf::from(h);
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".croupier"))
        .unwrap_or_else(|| PathBuf::from(".croupier"))
}

/// Where `croupier dev` keeps its files by default.
pub fn dev_dir() -> PathBuf {
    croupier_home().join("dev")
}

impl Conn {
    /// The TLS files for this connection: `--tls-dir` (or the dev certificates) and
    /// `--identity` (or `default_stem`, or the only `<role>-*.pem` in the directory).
    pub fn tls(&self, default_stem: &str) -> anyhow::Result<TlsFiles> {
        let dir = match &self.tls_dir {
            Some(d) => d.clone(),
            None => {
                let d = dev_dir().join("certs");
                if !d.join("ca.pem").exists() {
                    bail!(
                        "no --tls-dir given and no dev certificates in {}; start `croupier dev` \
                         or pass --tls-dir and --identity",
                        d.display()
                    );
                }
                d
            }
        };
        let stem = match &self.identity {
            Some(s) => s.clone(),
            None => pick_identity(&dir, default_stem)?,
        };
        let files = TlsFiles::from_dir(&dir, &stem);
        if !files.cert.exists() {
            bail!(
                "{} does not exist; choose an identity with --identity (a NAME with NAME.pem and \
                 NAME.key in {})",
                files.cert.display(),
                dir.display()
            );
        }
        Ok(files)
    }

    /// Connects with the identity `default_stem` unless told otherwise.
    pub async fn client(&self, default_stem: &str) -> anyhow::Result<Client> {
        let tls = self.tls(default_stem)?;
        if self.server.starts_with("http://") {
            return Err(exit::usage(format!(
                "--server {} is plaintext: Croupier speaks mutual TLS only; use https://",
                self.server
            )));
        }
        let gzip = self.gzip;
        Client::connect(&self.server, &tls)
            .await
            .map(|c| if gzip { c.with_gzip() } else { c })
            .map_err(|e| match e {
                croupier_sdk::tls::TlsError::Connect(url, detail) => exit::Failure {
                    code: exit::UNREACHABLE,
                    message: format!(
                        "cannot reach {url} as {}: {detail}. Is a Croupier server running there \
                     (`croupier dev`, `croupier server`)? Pass its address with --server or \
                     CROUPIER_SERVER",
                        tls.cert.display()
                    ),
                }
                .into(),
                e => anyhow::Error::from(e).context(format!(
                    "connecting to {} as {}",
                    self.server,
                    tls.cert.display()
                )),
            })
    }
}

fn pick_identity(dir: &Path, default_stem: &str) -> anyhow::Result<String> {
    if dir.join(format!("{default_stem}.pem")).exists() {
        return Ok(default_stem.to_string());
    }
    let role = default_stem.split('-').next().unwrap_or("client");
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(std::result::Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&format!("{role}-")) && n.ends_with(".pem"))
        .map(|n| n.trim_end_matches(".pem").to_string())
        .collect();
    found.sort();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no {role}-*.pem in {}; pass --identity", dir.display()),
        many => bail!(
            "several {role} certificates in {} ({}); pass --identity",
            dir.display(),
            many.join(", ")
        ),
    }
}

/// A gRPC status as an error: its code and message.
pub fn status_error(s: &tonic::Status) -> anyhow::Error {
    let code = exit::of_status(s);
    let mut message = format!("{:?}: {}", s.code(), crate::output::clean(s.message()));
    if code == exit::UNREACHABLE && s.message().contains("received fatal alert") {
        message.push_str(
            " (the server refused this client certificate: is it signed by the CA the server \
             trusts, unexpired and not revoked? `croupier certs init` makes a matching set)",
        );
    } else if code == exit::UNREACHABLE {
        message.push_str(
            " (the connection failed: is a Croupier server running at that address, and do this \
             certificate and the server's share a CA that has not expired? `croupier certs init` \
             makes a matching set)",
        );
    }
    exit::Failure { code, message }.into()
}
