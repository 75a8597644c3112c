//! The arguments of the long-running commands: `croupier server`, `agent` and `dev`.

use super::*;
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;

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
    /// Plain-HTTP port for /metrics, /healthz and /readyz (config `[http] listen`; default
    /// 127.0.0.1:9464, a free port when that is taken; "" turns it off).
    #[arg(long)]
    #[serde(skip)]
    pub http_listen: Option<String>,
    /// HTTPS address of the operator console (config `[console] listen`; off unless given).
    /// People sign in with `croupier user add` accounts, scripts with `croupier token create`.
    #[arg(long)]
    #[serde(skip)]
    pub console_listen: Option<String>,
    /// OTLP gRPC receiver to export spans to, http://HOST:PORT (config `[otlp] endpoint`;
    /// off unless given).
    #[arg(long, env = "CROUPIER_OTLP_ENDPOINT")]
    #[serde(skip)]
    pub otlp_endpoint: Option<String>,
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
    /// Plain-HTTP port for /metrics, /healthz and /readyz (ready while the tunnel is open); off
    /// unless given. The agent needs no inbound port for anything else.
    #[arg(long, env = "CROUPIER_AGENT_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// Threads that run the agent's tunnel and handlers (default: one per core). An agent on a
    /// busy game node may want 1: fewer threads also means fewer hand-offs per call.
    #[arg(long, env = "CROUPIER_AGENT_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// OTLP gRPC receiver to export the handlers' spans to, http://HOST:PORT (off unless given).
    #[arg(long, env = "CROUPIER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// How often the node pack collects the inventory again; a changed one is sent at once.
    #[arg(long, env = "CROUPIER_INVENTORY_INTERVAL", default_value = "10m", value_parser = super::parse_duration)]
    pub inventory_interval: std::time::Duration,
    /// The inventory is sent at least this often, changed or not.
    #[arg(long, env = "CROUPIER_INVENTORY_RESEND", default_value = "24h", value_parser = super::parse_duration)]
    pub inventory_resend: std::time::Duration,
    /// How often the node pack samples the node's metrics.
    #[arg(long, env = "CROUPIER_METRICS_INTERVAL", default_value = "15s", value_parser = super::parse_duration)]
    pub metrics_interval: std::time::Duration,
    /// How often the samples are sent to the server (at once when a threshold is crossed).
    #[arg(long, env = "CROUPIER_METRICS_BATCH", default_value = "1m", value_parser = super::parse_duration)]
    pub metrics_batch: std::time::Duration,
    /// Usage percentages whose crossing is a node event and sends the samples at once:
    /// cpu=90,memory=90,disk=90 (names left out keep these defaults; 0 turns one off).
    #[arg(
        long,
        env = "CROUPIER_THRESHOLDS",
        default_value = "cpu=90,memory=90,disk=90"
    )]
    pub thresholds: croupier_agent::Thresholds,
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
    /// Plain-HTTP port for /metrics, /healthz and /readyz (default 127.0.0.1:9464, a free port
    /// when that is taken; "" turns it off).
    #[arg(long)]
    pub http_listen: Option<String>,
    /// HTTPS address of the operator console (default 127.0.0.1:8445, a free port when that
    /// is taken; "" turns it off).
    #[arg(long)]
    pub console_listen: Option<String>,
}
