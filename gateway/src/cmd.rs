//! `croupier gateway`: the command's arguments and what it does. `croupier gateway [FLAGS]`
//! runs a gateway; `croupier gateway token` makes a signed player token (for tests, examples
//! and backends written in shell).

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::{Map, Value, json};

use crate::auth::{Claims, now_unix, sign};
use crate::config::{GatewayConfig, RouteConfig};
use crate::error::GatewayError;
use crate::server::{Signals, bind, run as run_gateway};

/// `croupier gateway`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct GatewayArgs {
    /// `token`; without one, run the gateway.
    #[command(subcommand)]
    pub command: Option<GatewayCommand>,
    /// Flags of the gateway itself.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands of `croupier gateway`.
#[derive(Subcommand, Debug)]
pub enum GatewayCommand {
    /// Print a signed player token (HMAC-SHA256) for auth mode hmac.
    Token(TokenArgs),
}

/// `croupier gateway token`.
#[derive(Args, Debug)]
pub struct TokenArgs {
    /// The player id.
    #[arg(long)]
    pub player: String,
    /// The HMAC key (or CROUPIER_GATEWAY_AUTH__HMAC_KEY).
    #[arg(long, env = "CROUPIER_GATEWAY_AUTH__HMAC_KEY", hide_env_values = true)]
    pub key: String,
    /// How long the token is valid.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Attributes, KEY=VALUE (repeatable).
    #[arg(long = "attr", value_parser = parse_kv)]
    pub attrs: Vec<(String, String)>,
    /// JSON output: `{"token", "player", "expires_at"}` (Unix seconds).
    #[arg(long)]
    pub json: bool,
}

/// Flags of a running gateway; each overrides the same key of the file and the environment.
#[derive(Args, Debug, Default)]
pub struct RunArgs {
    /// TOML configuration file (see deploy/gateway.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Agent id on the mesh (certificate agent-<id>).
    #[arg(long)]
    pub id: Option<String>,
    /// Mesh servers, comma-separated, in failover order.
    #[arg(long, value_delimiter = ',')]
    pub server: Vec<String>,
    /// Directory with ca.pem and the gateway's certificate (default: the dev certificates).
    #[arg(long)]
    pub tls_dir: Option<PathBuf>,
    /// Certificate file stem (default agent-<id>).
    #[arg(long)]
    pub identity: Option<String>,
    /// Game.
    #[arg(long)]
    pub game_id: Option<String>,
    /// Environment.
    #[arg(long)]
    pub env: Option<String>,
    /// Client listener, host:port (port 0 picks one).
    #[arg(long)]
    pub listen: Option<String>,
    /// /metrics, /healthz, /readyz listener.
    #[arg(long)]
    pub http_listen: Option<String>,
    /// HTTP push endpoint listener (needs --push-token or CROUPIER_GATEWAY_PUSH_TOKEN).
    #[arg(long)]
    pub push_listen: Option<String>,
    /// Bearer token of the push endpoint.
    #[arg(long, env = "CROUPIER_GATEWAY_PUSH_TOKEN", hide_env_values = true)]
    pub push_token: Option<String>,
    /// HMAC key for signed tokens.
    #[arg(long, env = "CROUPIER_GATEWAY_AUTH__HMAC_KEY", hide_env_values = true)]
    pub hmac_key: Option<String>,
    /// Authentication: hmac or mesh.
    #[arg(long)]
    pub auth: Option<String>,
    /// The verification function in auth mode mesh.
    #[arg(long)]
    pub auth_function: Option<String>,
    /// A route MSG_ID=FUNCTION (hash routing on the player id; repeatable; added to the file's).
    #[arg(long = "route", value_parser = RouteConfig::parse_flag)]
    pub routes: Vec<RouteConfig>,
    /// A label of the registration, KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = parse_kv)]
    pub labels: Vec<(String, String)>,
    /// Idle timeout of a session without requests (e.g. 30m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Close a connection that sends nothing for this long.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub read_timeout: Option<Duration>,
    /// How long shutdown waits for calls in flight.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub shutdown_grace: Option<Duration>,
    /// Where shutdown writes the offline queues (read back at start).
    #[arg(long)]
    pub persist_path: Option<PathBuf>,
    /// Client TLS certificate (PEM); with --client-tls-key the listener speaks TLS.
    #[arg(long, requires = "client_tls_key")]
    pub client_tls_cert: Option<PathBuf>,
    /// Client TLS key (PEM).
    #[arg(long, requires = "client_tls_cert")]
    pub client_tls_key: Option<PathBuf>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))
}

impl RunArgs {
    /// The flags that were given, as a configuration layer.
    pub fn overrides(&self) -> Value {
        let mut o = Map::new();
        let mut set = |k: &str, v: Value| {
            o.insert(k.to_string(), v);
        };
        let s = |v: &Option<String>| v.as_ref().map(|x| json!(x));
        let d = |v: &Option<Duration>| v.map(|x| json!(humantime::format_duration(x).to_string()));
        for (k, v) in [
            ("id", s(&self.id)),
            ("identity", s(&self.identity)),
            ("game_id", s(&self.game_id)),
            ("env", s(&self.env)),
            ("listen", s(&self.listen)),
            ("http_listen", s(&self.http_listen)),
            ("push_listen", s(&self.push_listen)),
            ("push_token", s(&self.push_token)),
            ("idle_timeout", d(&self.idle_timeout)),
            ("read_timeout", d(&self.read_timeout)),
            ("shutdown_grace", d(&self.shutdown_grace)),
            ("tls_dir", self.tls_dir.as_ref().map(|p| json!(p))),
        ] {
            if let Some(v) = v {
                set(k, v);
            }
        }
        if !self.server.is_empty() {
            set("servers", json!(self.server));
        }
        if !self.labels.is_empty() {
            let m: Map<String, Value> = self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            set("labels", Value::Object(m));
        }
        let mut auth = Map::new();
        if let Some(k) = &self.hmac_key {
            auth.insert("hmac_key".into(), json!(k));
        }
        if let Some(m) = &self.auth {
            auth.insert("mode".into(), json!(m));
        }
        if let Some(f) = &self.auth_function {
            auth.insert("function".into(), json!(f));
        }
        if !auth.is_empty() {
            set("auth", Value::Object(auth));
        }
        if let Some(p) = &self.persist_path {
            set("offline", json!({ "persist_path": p }));
        }
        if let (Some(c), Some(k)) = (&self.client_tls_cert, &self.client_tls_key) {
            set("client_tls", json!({ "cert": c, "key": k }));
        }
        Value::Object(o)
    }

    /// The layered configuration, with the flags' routes added to the file's and the dev
    /// certificates when no directory is given.
    pub fn config(&self) -> Result<GatewayConfig, GatewayError> {
        let mut cfg = GatewayConfig::load(self.config.as_deref(), self.overrides())?;
        cfg.routes.extend(self.routes.iter().cloned());
        if cfg.tls_dir.as_os_str().is_empty() {
            cfg.tls_dir = croupier_home().join("dev").join("certs");
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// `$CROUPIER_HOME`, else `~/.croupier`.
pub fn croupier_home() -> PathBuf {
    if let Some(h) = std::env::var_os("CROUPIER_HOME") {
        return PathBuf::from(h);
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".croupier"))
        .unwrap_or_else(|| PathBuf::from(".croupier"))
}

/// Installs the Prometheus recorder (latency histograms get the buckets of
/// [`crate::metrics::LATENCY_BUCKETS`]) and keeps it tidy; `None` when a recorder is already
/// installed.
pub fn install_prometheus() -> Option<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            crate::metrics::LATENCY_BUCKETS,
        )
        .ok()?
        .install_recorder()
        .ok()?;
    crate::metrics::describe();
    let h = handle.clone();
    croupier_proto::task::spawn("install_prometheus", async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            h.run_upkeep();
        }
    });
    Some(handle)
}

/// Runs `croupier gateway` until `shutdown` resolves; returns the exit code.
pub async fn run(
    args: GatewayArgs,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<i32, GatewayError> {
    if let Some(GatewayCommand::Token(t)) = args.command {
        let claims = Claims {
            sub: t.player.clone(),
            exp: now_unix() + t.ttl.as_secs(),
            attrs: t.attrs.into_iter().collect(),
        };
        if !crate::auth::valid_player_id(&t.player) {
            return Err(GatewayError::InvalidRequest(format!(
                "player id {:?}: use [A-Za-z0-9._:@-], 1-128",
                t.player
            )));
        }
        let token = sign(t.key.as_bytes(), &claims);
        if t.json {
            println!(
                "{}",
                serde_json::json!({"token": token, "player": claims.sub, "expires_at": claims.exp})
            );
        } else {
            println!("{token}");
        }
        return Ok(0);
    }
    let cfg = args.run.config()?;
    let prometheus = install_prometheus();
    let (listeners, addrs) = bind(&cfg).await?;
    let scheme = if cfg.client_tls.is_some() {
        "tls"
    } else {
        "tcp"
    };
    println!(
        "croupier gateway listening on {scheme}://{}",
        addrs["clients"]
    );
    if let Some(a) = addrs.get("http") {
        println!("croupier gateway http on http://{a}");
    }
    if let Some(a) = addrs.get("push") {
        println!("croupier gateway push on http://{a}");
    }
    let signals = Signals::default();
    let registered = signals.registered.clone();
    let id = cfg.id.clone();
    croupier_proto::task::spawn("run", async move {
        registered.cancelled().await;
        println!("croupier gateway {id} registered");
    });
    tracing::info!(gateway_id = %cfg.id, routes = cfg.routes.len(), servers = ?cfg.servers, "starting the gateway");
    run_gateway(cfg, listeners, prometheus, signals, shutdown).await?;
    Ok(0)
}
