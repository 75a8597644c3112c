//! Command-line interface: argument definitions and the client commands (`invoke`, `agents`,
//! `functions`, `watch`, `node state`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use croupier_proto::common::v1::NodeState;
use croupier_proto::json::{opt_struct_to_json, struct_to_json};
use croupier_proto::registry::v1::{EventType, WatchRegistrationsRequest};
use croupier_sdk::{CallOptions, Client, TlsFiles};
use serde::Serialize;

use crate::output::{age, table};

/// Croupier: a function registry and invocation mesh.
#[derive(Parser, Debug)]
#[command(name = "croupier", version, about, long_about = None)]
pub struct Cli {
    /// Log filter (e.g. "info", "croupier=debug").
    #[arg(long, global = true, env = "CROUPIER_LOG", default_value = "info")]
    pub log: String,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
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
    Functions(ListArgs),
    /// Watch registrations change.
    Watch(WatchArgs),
    /// Jobs: start, watch, cancel, get, list.
    #[command(subcommand)]
    Job(crate::job::JobCommand),
    /// Pipeline templates: put, get, list, delete.
    #[command(subcommand)]
    Pipeline(crate::pipeline::PipelineCommand),
    /// Function descriptors: delete (admin certificate).
    #[command(subcommand)]
    Function(FunctionCommand),
    /// Node administration.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// The embedded store of a data dir: check, repair, backup, restore.
    #[command(subcommand)]
    Store(crate::store_cmd::StoreCommand),
    /// Run a game gateway (player sessions in front of the mesh); `gateway token` signs a token.
    Gateway(Box<croupier_gateway::cmd::GatewayArgs>),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// `croupier server`.
#[derive(Args, Debug, Serialize)]
pub struct ServerArgs {
    /// TOML configuration file (see deploy/croupier.toml).
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on (host:port; port 0 picks a free one).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Data directory (embedded store, audit log).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Directory with ca.pem, server.pem and server.key.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_dir: Option<PathBuf>,
    /// This server's id (unique per replica).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    /// URL other replicas use to reach this server (default: the bound address).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise_url: Option<String>,
    /// Agent heartbeat interval (e.g. "15s").
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval: Option<String>,
    /// Default call deadline (e.g. "30s").
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_timeout: Option<String>,
    /// Shutdown grace period (e.g. "10s").
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_grace: Option<String>,
    /// Store backend: embedded or etcd.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// etcd client URLs, comma-separated (with --store etcd).
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_endpoints: Option<Vec<String>>,
    /// Prefix of every key in etcd.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_namespace: Option<String>,
    /// CA certificate of etcd's TLS (enables TLS to etcd).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate for etcd.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_cert: Option<PathBuf>,
    /// Client key for etcd.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_key: Option<PathBuf>,
}

/// `croupier agent`.
#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Server URL(s), comma-separated; the agent fails over in order.
    #[arg(
        long,
        env = "CROUPIER_SERVER",
        value_delimiter = ',',
        default_value = "https://127.0.0.1:8443"
    )]
    pub server: Vec<String>,
    /// Agent id (must match the agent certificate).
    #[arg(long, env = "CROUPIER_AGENT_ID")]
    pub id: String,
    /// Game.
    #[arg(long, env = "CROUPIER_GAME_ID", default_value = "default")]
    pub game_id: String,
    /// Environment.
    #[arg(long, env = "CROUPIER_ENV", default_value = "dev")]
    pub env: String,
    /// Directory with ca.pem and agent-ID.pem/.key.
    #[arg(long, env = "CROUPIER_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Certificate file stem in the TLS directory (default agent-ID).
    #[arg(long)]
    pub identity: Option<String>,
    /// Label for selector routing (repeatable): --label region=eu.
    #[arg(long = "label", value_parser = parse_pair)]
    pub labels: Vec<(String, String)>,
    /// Function packs to serve besides the built-in agent.* functions, comma-separated:
    /// node, container, pipeline; "all" for every pack, "none" (or empty) for none.
    #[arg(long, env = "CROUPIER_PACKS", default_value = "all")]
    pub packs: croupier_agent::Packs,
}

/// `croupier dev`.
#[derive(Args, Debug)]
pub struct DevArgs {
    /// Directory for certificates and data (default ~/.croupier/dev).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: String,
    /// Id of the built-in agent.
    #[arg(long, default_value = "dev-agent")]
    pub agent_id: String,
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
}

/// `croupier invoke`.
#[derive(Args, Debug)]
pub struct InvokeArgs {
    /// Function id, e.g. agent.ping.
    pub function: String,
    /// Payload, routing, deadline, idempotency.
    #[command(flatten)]
    pub call: CallArgs,
    /// Print the whole response as JSON.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub conn: Conn,
}

/// Payload and options of a call or job.
#[derive(Args, Debug, Clone)]
pub struct CallArgs {
    /// JSON payload (an object), or @FILE to read it from a file.
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
    /// Deadline in seconds.
    #[arg(long)]
    pub timeout: Option<u64>,
}

impl CallArgs {
    /// The payload: JSON text or @FILE, which must hold a JSON object.
    pub fn payload(&self) -> anyhow::Result<serde_json::Value> {
        let text = match self.payload.strip_prefix('@') {
            Some(path) => {
                std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?
            }
            None => self.payload.clone(),
        };
        let payload: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("--payload is not valid JSON: {text}"))?;
        if !payload.is_object() {
            bail!("--payload must be a JSON object, e.g. '{{\"ms\": 100}}'");
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
            timeout: self.timeout.map(Duration::from_secs),
        }
    }
}

/// `croupier agents` / `croupier functions`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only this game.
    #[arg(long, default_value = "")]
    pub game_id: String,
    /// Only this environment.
    #[arg(long, default_value = "")]
    pub env: String,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub conn: Conn,
}

/// `croupier watch`.
#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Only this function.
    #[arg(long, default_value = "")]
    pub function: String,
    /// Only this game.
    #[arg(long, default_value = "")]
    pub game_id: String,
    /// Only this environment.
    #[arg(long, default_value = "")]
    pub env: String,
    /// Resume from this revision instead of starting with the current state.
    #[arg(long, default_value_t = 0)]
    pub from_revision: i64,
    /// JSON lines output.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub conn: Conn,
}

/// `croupier function …`.
#[derive(Subcommand, Debug)]
pub enum FunctionCommand {
    /// Set a function's descriptor from a JSON or TOML file (id, description, params_schema,
    /// allowed_roles, sensitive_fields, timeout_secs, …). With an admin certificate the
    /// descriptor wins over whatever agents declare.
    Register {
        /// The descriptor file (.json or .toml).
        file: PathBuf,
        /// Game.
        #[arg(long, env = "CROUPIER_GAME_ID", default_value = "default")]
        game_id: String,
        /// Environment.
        #[arg(long, env = "CROUPIER_ENV", default_value = "dev")]
        env: String,
        /// Connection (identity defaults to the admin certificate).
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a function's descriptor (admin certificate). Agents that still provide the
    /// function keep serving it; the next one to register declares its descriptor again.
    Delete {
        /// Function id.
        function: String,
        /// Game.
        #[arg(long, env = "CROUPIER_GAME_ID", default_value = "default")]
        game_id: String,
        /// Environment.
        #[arg(long, env = "CROUPIER_ENV", default_value = "dev")]
        env: String,
        /// Connection (identity defaults to the admin certificate).
        #[command(flatten)]
        conn: Conn,
    },
}

/// Runs `croupier function …`.
pub async fn function(cmd: FunctionCommand) -> anyhow::Result<()> {
    match cmd {
        FunctionCommand::Register {
            file,
            game_id,
            env,
            conn,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let record: croupier_registry::model::DescriptorRecord =
                if file.extension().is_some_and(|e| e == "toml") {
                    toml::from_str(&text).with_context(|| format!("parsing {}", file.display()))?
                } else {
                    serde_json::from_str(&text)
                        .with_context(|| format!("parsing {}", file.display()))?
                };
            let client = conn.client("admin-admin").await?;
            let revision = client
                .register_function(&game_id, &env, record.to_proto())
                .await
                .map_err(|s| status_error(&s))?;
            println!(
                "registered the descriptor of {} in {game_id}/{env} (revision {revision})",
                record.id
            );
        }
        FunctionCommand::Delete {
            function,
            game_id,
            env,
            conn,
        } => {
            let client = conn.client("admin-admin").await?;
            let deleted = client
                .delete_function(&game_id, &env, &function)
                .await
                .map_err(|s| status_error(&s))?;
            if deleted {
                println!("deleted the descriptor of {function} in {game_id}/{env}");
            } else {
                println!("{function} in {game_id}/{env} had no descriptor");
            }
        }
    }
    Ok(())
}

/// `croupier node …`.
#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Set a node's state: normal, maintenance or disabled (admin certificate).
    State {
        /// Agent id.
        agent: String,
        /// normal, maintenance or disabled.
        state: String,
        /// Why (recorded with who did it).
        #[arg(long, default_value = "")]
        reason: String,
        /// Connection (identity defaults to the admin certificate).
        #[command(flatten)]
        conn: Conn,
    },
}

/// `croupier certs …`.
#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Make a CA, a server certificate and leaf certificates.
    Init {
        /// Output directory.
        #[arg(long)]
        dir: PathBuf,
        /// Agent id (repeatable).
        #[arg(long = "agent")]
        agents: Vec<String>,
        /// Client name (repeatable).
        #[arg(long = "client")]
        clients: Vec<String>,
        /// Admin name (repeatable).
        #[arg(long = "admin")]
        admins: Vec<String>,
        /// Extra server certificate name for server-to-server calls (repeatable).
        #[arg(long = "server")]
        servers: Vec<String>,
        /// Extra host name or IP for the server certificate (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Replace existing files (a new CA invalidates every old certificate).
        #[arg(long)]
        force: bool,
    },
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
    Agents(crate::bench_scale::AgentsBenchArgs),
    /// Game gateway: N client sessions, request latency through gateway + mesh, memory per
    /// session, broadcast fan-out.
    Gateway(crate::bench_gateway::GatewayBenchArgs),
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
        Client::connect(&self.server, &tls)
            .await
            .with_context(|| format!("connecting to {} as {}", self.server, tls.cert.display()))
    }
}

fn pick_identity(dir: &Path, default_stem: &str) -> anyhow::Result<String> {
    if dir.join(format!("{default_stem}.pem")).exists() {
        return Ok(default_stem.to_string());
    }
    let role = default_stem.split('-').next().unwrap_or("client");
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
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
    anyhow::anyhow!("{:?}: {}", s.code(), crate::output::clean(s.message()))
}

/// Runs `croupier invoke`; returns the process exit code: 0 on success, 1 when the handler
/// failed, 2 on a gRPC error.
pub async fn invoke(args: InvokeArgs) -> anyhow::Result<i32> {
    let payload = args.call.payload()?;
    let client = args.conn.client("client-dev").await?;
    let opts = args.call.options();
    let resp = match client.invoke(&args.function, payload, &opts).await {
        Ok(r) => r,
        Err(s) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"grpc_code": format!("{:?}", s.code()), "message": s.message()})
                );
            } else {
                eprintln!("error: {}", status_error(&s));
            }
            return Ok(2);
        }
    };
    let results: Vec<serde_json::Value> = resp
        .results
        .iter()
        .map(|r| {
            serde_json::json!({
                "agent_id": r.agent_id,
                "success": r.success,
                "result": opt_struct_to_json(r.result.as_ref()),
                "error": r.error,
                "error_code": r.error_code,
            })
        })
        .collect();
    if args.json {
        let out = serde_json::json!({
            "success": resp.success,
            "agent_id": resp.agent_id,
            "request_id": resp.request_id,
            "result": resp.result.as_ref().map(struct_to_json),
            "error": resp.error,
            "error_code": resp.error_code,
            "results": results,
        });
        println!("{out}");
    } else if !resp.results.is_empty() {
        let rows: Vec<Vec<String>> = resp
            .results
            .iter()
            .map(|r| {
                let out = if r.success {
                    opt_struct_to_json(r.result.as_ref()).to_string()
                } else {
                    format!("{}: {}", r.error_code, r.error)
                };
                vec![
                    r.agent_id.clone(),
                    if r.success { "ok" } else { "failed" }.into(),
                    out,
                ]
            })
            .collect();
        print!("{}", table(&["AGENT", "STATUS", "RESULT"], &rows));
    } else if resp.success {
        println!(
            "{}",
            serde_json::to_string_pretty(&opt_struct_to_json(resp.result.as_ref()))?
        );
        eprintln!("(served by {})", resp.agent_id);
    } else {
        eprintln!(
            "{} failed on {}: {}: {}",
            args.function, resp.agent_id, resp.error_code, resp.error
        );
    }
    Ok(if resp.success { 0 } else { 1 })
}

/// One figure of an agent's heartbeat summary for the table, `-` when it sent none.
fn summary(status: &std::collections::HashMap<String, String>, key: &str, unit: &str) -> String {
    status
        .get(key)
        .map_or_else(|| "-".to_string(), |v| format!("{v}{unit}"))
}

/// Runs `croupier agents`.
pub async fn agents(args: ListArgs) -> anyhow::Result<()> {
    let client = args.conn.client("client-dev").await?;
    let agents = client
        .agents(&args.game_id, &args.env)
        .await
        .map_err(|s| status_error(&s))?;
    if args.json {
        let list: Vec<serde_json::Value> = agents
            .iter()
            .map(|a| {
                let node = a.node_state.clone().unwrap_or_default();
                serde_json::json!({
                    "agent_id": a.agent_id, "game_id": a.game_id, "env": a.env,
                    "version": a.version, "functions": a.functions, "labels": a.labels,
                    "node_state": node_state_name(node.state), "node_reason": node.reason,
                    "node_actor": node.actor, "online": a.online,
                    "last_heartbeat": a.last_heartbeat, "owner": a.owner, "addr": a.addr,
                    "in_flight": a.in_flight, "status": a.status,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            let mut labels: Vec<String> =
                a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            vec![
                a.agent_id.clone(),
                format!("{}/{}", a.game_id, a.env),
                node_state_name(a.node_state.as_ref().map(|n| n.state).unwrap_or(0)).into(),
                if a.online { "online" } else { "offline" }.into(),
                age(a.last_heartbeat),
                a.functions.len().to_string(),
                a.in_flight.to_string(),
                summary(&a.status, "running_jobs", ""),
                summary(&a.status, "cpu_percent", "%"),
                summary(&a.status, "memory_percent", "%"),
                labels.join(","),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "AGENT",
                "GAME/ENV",
                "STATE",
                "TUNNEL",
                "HEARTBEAT",
                "FUNCTIONS",
                "IN-FLIGHT",
                "JOBS",
                "CPU",
                "MEM",
                "LABELS"
            ],
            &rows
        )
    );
    Ok(())
}

fn node_state_name(s: i32) -> &'static str {
    match NodeState::try_from(s).unwrap_or_default() {
        NodeState::Normal => "normal",
        NodeState::Maintenance => "maintenance",
        NodeState::Disabled => "disabled",
    }
}

/// Runs `croupier functions`.
pub async fn functions(args: ListArgs) -> anyhow::Result<()> {
    let client = args.conn.client("client-dev").await?;
    let regs = client
        .registrations(&args.game_id, &args.env, "")
        .await
        .map_err(|s| status_error(&s))?;
    if args.json {
        let list: Vec<serde_json::Value> =
            regs.registrations.iter().map(registration_json).collect();
        println!(
            "{}",
            serde_json::json!({"revision": regs.revision, "registrations": list})
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = regs
        .registrations
        .iter()
        .map(|r| {
            let d = r.function_descriptor.clone().unwrap_or_default();
            let kind = d
                .semantics
                .map(|s| s.kind)
                .filter(|k| !k.is_empty())
                .unwrap_or("command".into());
            let agents: Vec<String> = r.agents.iter().map(|a| a.agent_id.clone()).collect();
            vec![
                r.function_id.clone(),
                format!("{}/{}", r.game_id, r.env),
                kind,
                if agents.is_empty() {
                    "-".into()
                } else {
                    agents.join(",")
                },
                d.description,
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["FUNCTION", "GAME/ENV", "KIND", "AGENTS", "DESCRIPTION"],
            &rows
        )
    );
    Ok(())
}

fn registration_json(r: &croupier_proto::registry::v1::FunctionRegistration) -> serde_json::Value {
    let d = r.function_descriptor.clone().unwrap_or_default();
    serde_json::json!({
        "function_id": r.function_id,
        "game_id": r.game_id,
        "env": r.env,
        "description": d.description,
        "params_schema": d.params_schema.as_ref().map(struct_to_json),
        "agents": r.agents.iter().map(|a| serde_json::json!({
            "agent_id": a.agent_id, "online": a.online, "labels": a.labels,
            "node_state": node_state_name(a.node_state), "version": a.version,
        })).collect::<Vec<_>>(),
    })
}

/// Runs `croupier watch` until interrupted or the server ends the stream.
pub async fn watch(args: WatchArgs) -> anyhow::Result<()> {
    let client = args.conn.client("client-dev").await?;
    let mut stream = client
        .watch(WatchRegistrationsRequest {
            game_id: args.game_id.clone(),
            env: args.env.clone(),
            function_id: args.function.clone(),
            start_revision: args.from_revision,
        })
        .await
        .map_err(|s| status_error(&s))?;
    loop {
        let ev = match stream.message().await {
            Ok(Some(ev)) => ev,
            Ok(None) => return Ok(()),
            Err(s) => return Err(status_error(&s)),
        };
        let kind = EventType::try_from(ev.r#type)
            .unwrap_or(EventType::Updated)
            .as_str_name();
        if args.json {
            let mut out =
                serde_json::json!({"type": kind, "revision": ev.revision, "agent_id": ev.agent_id});
            if let Some(r) = &ev.registration {
                out["registration"] = registration_json(r);
            }
            println!("{out}");
        } else if let Some(r) = &ev.registration {
            let agents: Vec<&str> = r.agents.iter().map(|a| a.agent_id.as_str()).collect();
            println!(
                "{:>6} {:<8} {:<24} {}/{} agent={} agents=[{}]",
                ev.revision,
                kind,
                crate::output::clean(&r.function_id),
                crate::output::clean(&r.game_id),
                crate::output::clean(&r.env),
                if ev.agent_id.is_empty() {
                    "-".to_string()
                } else {
                    crate::output::clean(&ev.agent_id)
                },
                crate::output::clean(&agents.join(","))
            );
        } else {
            println!("{:>6} {kind}", ev.revision);
        }
    }
}

/// Runs `croupier node state`.
pub async fn node_state(agent: &str, state: &str, reason: &str, conn: &Conn) -> anyhow::Result<()> {
    let state = match state {
        "normal" => NodeState::Normal,
        "maintenance" => NodeState::Maintenance,
        "disabled" => NodeState::Disabled,
        other => bail!("state {other:?} is not normal, maintenance or disabled"),
    };
    let client = conn.client("admin-admin").await?;
    let resp = client
        .set_node_state(agent, state, reason)
        .await
        .map_err(|s| status_error(&s))?;
    let rec = resp.record.unwrap_or_default();
    println!(
        "{} is now {} (by {}: {:?})",
        rec.agent_id,
        node_state_name(rec.state),
        rec.actor,
        rec.reason
    );
    Ok(())
}
