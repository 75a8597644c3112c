//! [`GatewayConfig`]: typed, layered configuration of `croupier gateway`. Layers: the defaults
//! below → a TOML file (`--config`, see `deploy/gateway.toml`) → `CROUPIER_GATEWAY_*`
//! environment variables (`__` for nesting, e.g. `CROUPIER_GATEWAY_OFFLINE__MAX_MESSAGES=64`) →
//! command-line flags; then [`GatewayConfig::validate`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::error::GatewayError;
use crate::frame::DEFAULT_MAX_FRAME_BYTES;

/// The whole gateway configuration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// The gateway's agent id on the mesh (its certificate is `agent-<id>`). Default "gw-1".
    pub id: String,
    /// Mesh servers, in failover order. Default `["https://127.0.0.1:8443"]`.
    pub servers: Vec<String>,
    /// Directory with `ca.pem` and the gateway's certificate. Default: empty, which the command
    /// turns into the `croupier dev` certificates (`~/.croupier/dev/certs`).
    pub tls_dir: PathBuf,
    /// Certificate file stem in `tls_dir`. Default: empty, meaning `agent-<id>`.
    pub identity: String,
    /// Game of the gateway's registration and of its mesh calls. Default "default".
    pub game_id: String,
    /// Environment of the registration and the calls. Default "dev".
    pub env: String,
    /// Extra labels of the gateway's registration (it always has `role=gateway`). Default none.
    pub labels: HashMap<String, String>,
    /// The client listener (TCP, or TLS with `client_tls`). Default "127.0.0.1:7000".
    pub listen: String,
    /// TLS on the client listener. Default none (plain TCP).
    pub client_tls: Option<ClientTlsConfig>,
    /// Plain-HTTP listener for machines: `/metrics`, `/healthz`, `/readyz`; nothing that changes
    /// state. Default none (off).
    pub http_listen: Option<String>,
    /// Plain-HTTP listener of the push endpoint (`POST /v1/push`, `/v1/broadcast`, `/v1/kick`),
    /// for backends that are not on the mesh; needs `push_token`. Default none (off).
    pub push_listen: Option<String>,
    /// The bearer token the push endpoint requires (compared in constant time). Default empty.
    pub push_token: String,
    /// Largest frame accepted from a client, in bytes (also the most a gzip payload may inflate
    /// to). Default 1 MiB.
    pub max_frame_bytes: usize,
    /// How long a new connection has to send LOGIN. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub login_timeout: Duration,
    /// A connected session with no REQUEST for this long is closed (IDLE) and goes offline.
    /// Default 30 min.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A connection with no frame at all (not even a PING) for this long is closed (TIMEOUT);
    /// clients are told to send something every third of it. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// How often idle sessions, expired offline sessions and old queued pushes are swept.
    /// Default 1 s.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// Most connected sessions; past it, new logins are closed (RESOURCE_EXHAUSTED). Default
    /// 100 000.
    pub max_sessions: usize,
    /// Frames waiting to be written to one connection; a client that lets it fill is closed
    /// (SLOW_CONSUMER; its pushes stay queued for its next login). Default 1024.
    pub outbound_queue: usize,
    /// How long shutdown waits for calls in flight. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// How players are authenticated.
    pub auth: AuthConfig,
    /// Calls to the mesh: limits, deadlines, retries.
    pub calls: CallsConfig,
    /// Pushes kept for players who are offline or have not acknowledged them.
    pub offline: OfflineConfig,
    /// Other gateways: discovery and session hand-off.
    pub peers: PeersConfig,
    /// The routing table: message id → mesh function.
    pub routes: Vec<RouteConfig>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            id: "gw-1".into(),
            servers: vec!["https://127.0.0.1:8443".into()],
            tls_dir: PathBuf::new(),
            identity: String::new(),
            game_id: "default".into(),
            env: "dev".into(),
            labels: HashMap::new(),
            listen: "127.0.0.1:7000".into(),
            client_tls: None,
            http_listen: None,
            push_listen: None,
            push_token: String::new(),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            login_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30 * 60),
            read_timeout: Duration::from_secs(60),
            sweep_interval: Duration::from_secs(1),
            max_sessions: 100_000,
            outbound_queue: 1024,
            shutdown_grace: Duration::from_secs(10),
            auth: AuthConfig::default(),
            calls: CallsConfig::default(),
            offline: OfflineConfig::default(),
            peers: PeersConfig::default(),
            routes: Vec::new(),
        }
    }
}

/// TLS on the client listener.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// Certificate chain (PEM). Required.
    pub cert: PathBuf,
    /// Private key (PEM). Required.
    pub key: PathBuf,
}

/// How a LOGIN token is checked.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// A token signed with HMAC-SHA256 under `hmac_key` (see [`crate::auth`]).
    Hmac,
    /// A mesh function (`function`) answers `{player_id, attrs?}` or fails.
    Mesh,
}

/// Player authentication.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `hmac` or `mesh`. Default `hmac`.
    pub mode: AuthMode,
    /// The HMAC key (a secret; prefer `hmac_key_file` or the environment). Default empty.
    pub hmac_key: String,
    /// A file holding the HMAC key (trailing whitespace ignored); wins over `hmac_key`.
    /// Default none.
    pub hmac_key_file: Option<PathBuf>,
    /// The verification function in `mesh` mode; it gets `{token, client, gateway_id}`.
    /// Default "auth.verify".
    pub function: String,
    /// Deadline of one verification call. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Hmac,
            hmac_key: String::new(),
            hmac_key_file: None,
            function: "auth.verify".into(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Calls from players to the mesh.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CallsConfig {
    /// Most calls in flight in the whole gateway. Default 10 000.
    pub max_in_flight: usize,
    /// Most calls in flight for one session; past it the gateway stops reading that
    /// connection until one finishes (TCP back-pressure). Default 16.
    pub max_in_flight_per_session: usize,
    /// How long a request waits for a free slot under `max_in_flight` before it is answered
    /// RESOURCE_EXHAUSTED. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub queue_timeout: Duration,
    /// Deadline of a route that sets none. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
    /// Attempts in all for a route marked `idempotent` that fails UNAVAILABLE. Default 3.
    pub retry_attempts: u32,
    /// gRPC channels to the mesh, used round robin. Default 2.
    pub channels: usize,
}

impl Default for CallsConfig {
    fn default() -> Self {
        CallsConfig {
            max_in_flight: 10_000,
            max_in_flight_per_session: 16,
            queue_timeout: Duration::from_secs(1),
            default_timeout: Duration::from_secs(5),
            retry_attempts: 3,
            channels: 2,
        }
    }
}

/// Pushes kept per player.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OfflineConfig {
    /// Most pushes kept per player (sent but unacknowledged, or queued while offline); the
    /// oldest are dropped first. Default 256.
    pub max_messages: usize,
    /// Pushes older than this are dropped. Default 10 min.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// How long an offline session (and its queue) is kept for a reconnect. Default 10 min.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Where shutdown writes the queues (and start reads them back). Default none.
    pub persist_path: Option<PathBuf>,
}

impl Default for OfflineConfig {
    fn default() -> Self {
        OfflineConfig {
            max_messages: 256,
            max_age: Duration::from_secs(600),
            retention: Duration::from_secs(600),
            persist_path: None,
        }
    }
}

/// Other gateways of the same game and environment.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PeersConfig {
    /// How often the list of gateways is read from the registry. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
    /// On login, ask the other gateways for the player's session (one session per player
    /// across gateways, queues follow the player). Default true.
    pub handoff: bool,
}

impl Default for PeersConfig {
    fn default() -> Self {
        PeersConfig {
            refresh: Duration::from_secs(5),
            handoff: true,
        }
    }
}

/// One route: a message id and the mesh function that answers it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The message id clients put in REQUEST frames.
    pub msg_id: u32,
    /// The mesh function.
    pub function: String,
    /// Deadline; default `calls.default_timeout`.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// `hash` (on the player id: a player's calls stick to one agent; the default), `lb`,
    /// `round_robin`.
    #[serde(default = "default_routing")]
    pub routing: String,
    /// True when the function may run twice for one request: UNAVAILABLE is then retried.
    /// Default false.
    #[serde(default)]
    pub idempotent: bool,
}

fn default_routing() -> String {
    "hash".into()
}

impl RouteConfig {
    /// A hash-routed, non-idempotent route with the default deadline.
    pub fn new(msg_id: u32, function: &str) -> Self {
        RouteConfig {
            msg_id,
            function: function.into(),
            timeout: None,
            routing: default_routing(),
            idempotent: false,
        }
    }

    /// Parses `MSG_ID=FUNCTION` (the `--route` flag).
    pub fn parse_flag(s: &str) -> Result<Self, String> {
        let (id, function) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected MSG_ID=FUNCTION"))?;
        let msg_id = id
            .trim()
            .parse()
            .map_err(|e| format!("{s:?}: message id: {e}"))?;
        Ok(RouteConfig::new(msg_id, function.trim()))
    }
}

impl GatewayConfig {
    /// Loads the layers (defaults, `file`, environment, `overrides`) and validates the result.
    pub fn load(file: Option<&Path>, overrides: impl Serialize) -> Result<Self, GatewayError> {
        let mut fig = Figment::from(Serialized::defaults(GatewayConfig::default()));
        if let Some(f) = file {
            if !f.exists() {
                return Err(GatewayError::Config(format!(
                    "config file {} does not exist",
                    f.display()
                )));
            }
            fig = fig.merge(Toml::file(f));
        }
        fig = fig
            .merge(Env::prefixed("CROUPIER_GATEWAY_").split("__"))
            .merge(Serialized::defaults(overrides));
        let cfg: GatewayConfig = fig
            .extract()
            .map_err(|e| GatewayError::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that serde cannot.
    pub fn validate(&self) -> Result<(), GatewayError> {
        let bad = |m: String| Err(GatewayError::Config(m));
        if self.servers.is_empty() {
            return bad("servers: at least one mesh server is needed".into());
        }
        if self.id.is_empty()
            || self.id.len() > 128
            || !self
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return bad(format!("id {:?}: use [A-Za-z0-9._-], 1-128", self.id));
        }
        if self.auth.mode == AuthMode::Hmac
            && self.auth.hmac_key.is_empty()
            && self.auth.hmac_key_file.is_none()
        {
            return bad(
                "auth: mode hmac needs hmac_key or hmac_key_file (or set mode = \"mesh\")".into(),
            );
        }
        if self.auth.mode == AuthMode::Mesh && self.auth.function.is_empty() {
            return bad("auth.function: empty".into());
        }
        if self.push_listen.is_some() && self.push_token.is_empty() {
            return bad("push_listen needs push_token (the endpoint is authenticated)".into());
        }
        if self.max_frame_bytes < 1024 || self.max_frame_bytes > 64 * 1024 * 1024 {
            return bad("max_frame_bytes: between 1 KiB and 64 MiB".into());
        }
        if self.calls.max_in_flight == 0
            || self.calls.max_in_flight_per_session == 0
            || self.calls.channels == 0
            || self.outbound_queue == 0
            || self.max_sessions == 0
        {
            return bad(
                "calls.max_in_flight, calls.max_in_flight_per_session, calls.channels, \
                 outbound_queue and max_sessions must be at least 1"
                    .into(),
            );
        }
        if self.sweep_interval.is_zero() || self.read_timeout < Duration::from_millis(100) {
            return bad("sweep_interval must be positive and read_timeout at least 100ms".into());
        }
        let mut seen = std::collections::HashSet::new();
        for r in &self.routes {
            if !seen.insert(r.msg_id) {
                return bad(format!("routes: message id {} appears twice", r.msg_id));
            }
            if r.function.is_empty() {
                return bad(format!("routes: message id {} has no function", r.msg_id));
            }
            if !matches!(r.routing.as_str(), "hash" | "lb" | "" | "round_robin") {
                return bad(format!(
                    "routes: message id {}: routing {:?} (use hash, lb or round_robin)",
                    r.msg_id, r.routing
                ));
            }
        }
        Ok(())
    }

    /// The HMAC key: from `hmac_key_file` when set, else `hmac_key`.
    pub fn hmac_key(&self) -> Result<Vec<u8>, GatewayError> {
        match &self.auth.hmac_key_file {
            Some(p) => std::fs::read_to_string(p)
                .map(|s| s.trim_end().as_bytes().to_vec())
                .map_err(|source| GatewayError::File {
                    what: "reading the HMAC key",
                    path: p.clone(),
                    source,
                }),
            None => Ok(self.auth.hmac_key.as_bytes().to_vec()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_key() -> GatewayConfig {
        let mut c = GatewayConfig::default();
        c.auth.hmac_key = "k".into();
        c
    }

    #[test]
    fn defaults_need_a_key_and_then_validate() {
        assert!(GatewayConfig::default().validate().is_err());
        with_key().validate().unwrap();
        assert_eq!(with_key().idle_timeout, Duration::from_secs(1800));
    }

    #[test]
    fn routes_parse_and_duplicates_are_refused() {
        let r = RouteConfig::parse_flag("1001=game.echo").unwrap();
        assert_eq!((r.msg_id, r.function.as_str()), (1001, "game.echo"));
        assert_eq!(r.routing, "hash");
        assert!(RouteConfig::parse_flag("x=game.echo").is_err());
        assert!(RouteConfig::parse_flag("game.echo").is_err());
        let mut c = with_key();
        c.routes = vec![r.clone(), r];
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("appears twice"), "{e}");
    }

    #[test]
    fn the_example_config_in_deploy_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/gateway.toml");
        let overrides = serde_json::json!({"auth": {"hmac_key": "k"}, "push_token": "t"});
        let c = GatewayConfig::load(Some(&path), overrides).unwrap();
        // The example sets what deploy needs and leaves the rest at the defaults.
        let mut defaults = GatewayConfig {
            listen: c.listen.clone(),
            http_listen: c.http_listen.clone(),
            push_listen: c.push_listen.clone(),
            push_token: "t".into(),
            tls_dir: c.tls_dir.clone(),
            routes: c.routes.clone(),
            ..GatewayConfig::default()
        };
        defaults.auth.hmac_key = "k".into();
        assert_eq!(c, defaults);
        assert_eq!(c.routes[0].function, "game.echo");
    }

    #[test]
    fn toml_routes_and_unknown_keys() {
        let toml = r#"
            id = "gw-7"
            [auth]
            hmac_key = "secret"
            [[routes]]
            msg_id = 1
            function = "game.echo"
            timeout = "250ms"
            idempotent = true
        "#;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("gw.toml");
        std::fs::write(&f, toml).unwrap();
        let c = GatewayConfig::load(Some(&f), serde_json::json!({})).unwrap();
        assert_eq!(c.id, "gw-7");
        assert_eq!(c.routes[0].timeout, Some(Duration::from_millis(250)));
        assert!(c.routes[0].idempotent);
        std::fs::write(&f, "bogus = 1\n[auth]\nhmac_key = \"k\"\n").unwrap();
        let e = GatewayConfig::load(Some(&f), serde_json::json!({})).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }
}
