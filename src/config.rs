//! Server configuration: typed, layered defaults → TOML file (`--config`) → `CROUPIER_*`
//! environment (`__` for nesting, e.g. `CROUPIER_LIMITS__MAX_LABELS`) → command-line flags,
//! then [`ServerConfig::validate`]. `deploy/croupier.toml` shows every field.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Settings of `croupier server`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the one mTLS port. Default `127.0.0.1:8443`.
    pub listen: String,
    /// Where the embedded store and the audit log live. Default `./croupier-data`.
    pub data_dir: PathBuf,
    /// Directory with `ca.pem`, `server.pem`, `server.key`. Default `./certs`.
    pub tls_dir: PathBuf,
    /// Revoked certificates: a file of serials (one hex serial per line) or a CRL, reloaded when
    /// it changes; peers whose certificate serial is on it are refused. Default
    /// `<tls_dir>/revoked.txt` (`croupier certs revoke` appends there); a missing file revokes
    /// nothing.
    pub revocation_list: Option<PathBuf>,
    /// This server's id in the mesh. Default `server`. Unique per replica.
    pub server_id: String,
    /// URL other replicas use to reach this server (forwarding), e.g. `https://10.0.0.5:8443`.
    /// Default: the bound address.
    pub advertise_url: String,
    /// How often agents heartbeat. Default `15s`.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Heartbeats an agent may miss before it is offline. Default 3.
    pub missed_heartbeats: u32,
    /// Deadline of a call when neither the call nor the descriptor sets one. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
    /// Longest deadline a call may ask for. Default `1h`.
    #[serde(with = "humantime_serde")]
    pub max_timeout: Duration,
    /// How long shutdown waits for in-flight calls. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// How long idempotent outcomes are kept. Default `24h`.
    #[serde(with = "humantime_serde")]
    pub idempotency_retention: Duration,
    /// How long after the deadline of a call with an idempotency key the server still waits
    /// for the agent's answer; the key stays claimed meanwhile. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub late_answer_grace: Duration,
    /// Write the audit log to `<data_dir>/audit.log`. Default true.
    pub audit_log: bool,
    /// What one audit record holds, and when the log is rotated.
    pub audit: Audit,
    /// The plain-HTTP port for machines (`/metrics`, `/healthz`, `/readyz`).
    pub http: Http,
    /// The operator console (HTTPS, for browsers).
    pub console: Console,
    /// Print the "croupier server listening on URL" lines on stdout (off for a server embedded
    /// in another command, such as `bench invoke --in-process --json`). Not a config key.
    #[serde(skip)]
    pub announce: bool,
    /// Span export over OTLP.
    pub otlp: Otlp,
    /// Where registrations, descriptors, node states, jobs and idempotency records live:
    /// `embedded` (default; in `<data_dir>/store`) or `etcd` (several servers can share it).
    pub store: StoreKind,
    /// With the embedded store: fdatasync every log record before the change is acknowledged,
    /// so acknowledged writes survive power loss too, not only a crash of the process. Default
    /// false (each write costs a disk flush when on).
    pub store_fsync: bool,
    /// etcd client URLs, for `store = "etcd"`.
    pub etcd_endpoints: Vec<String>,
    /// Prefix of every key in etcd (several meshes can share one cluster). Default empty.
    pub etcd_namespace: String,
    /// CA certificate (PEM) of etcd's TLS; enables TLS to etcd.
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd.
    pub etcd_cert: Option<PathBuf>,
    /// Client key (PEM) for etcd.
    pub etcd_key: Option<PathBuf>,
    /// Input limits.
    pub limits: Limits,
    /// Job retention and deadlines.
    pub jobs: Jobs,
    /// Node events and inventories.
    pub fleet: Fleet,
}

/// Node events and inventories.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Fleet {
    /// Node events kept in memory for `croupier events` (older ones are dropped; a reader
    /// asking for them is told). Default 10000.
    pub events_retained: usize,
    /// Node events older than this are dropped. Default `24h`.
    #[serde(with = "humantime_serde")]
    pub events_max_age: Duration,
    /// Inventory versions kept per node in the store. Default 20.
    pub inventory_versions: usize,
    /// Node metric samples are kept as they came for this long. Default `1h`.
    #[serde(with = "humantime_serde")]
    pub metrics_raw_for: Duration,
    /// Older samples are kept as per-step minimum, maximum and average. Default `5m`.
    #[serde(with = "humantime_serde")]
    pub metrics_step: Duration,
    /// No node metric older than this is kept. Default `24h`.
    #[serde(with = "humantime_serde")]
    pub metrics_keep: Duration,
}

impl Default for Fleet {
    fn default() -> Self {
        let d = croupier_control::ControlConfig::default();
        Fleet {
            events_retained: d.events_retained,
            events_max_age: d.events_max_age,
            inventory_versions: d.inventory_versions,
            metrics_raw_for: d.metrics_history.raw_for,
            metrics_step: d.metrics_history.step,
            metrics_keep: d.metrics_history.keep,
        }
    }
}

/// Job retention and deadlines.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Jobs {
    /// Events kept per job (older ones are dropped; a subscriber asking for them is told).
    /// Default 10000.
    pub max_events: usize,
    /// Events older than this are dropped; a finished job's events go this long after it
    /// ended. Default `24h`.
    #[serde(with = "humantime_serde")]
    pub max_event_age: Duration,
    /// How long finished job records are kept. Default `7d`.
    #[serde(with = "humantime_serde")]
    pub record_retention: Duration,
    /// Deadline of a job that sets none, and the longest one allowed. Default `24h`.
    #[serde(with = "humantime_serde")]
    pub max_duration: Duration,
    /// How long a finished job stays in memory for fast replay. Default `60s`.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Most bytes of one event; a larger one keeps its type and seq, and its data is replaced
    /// by a note of its size. Default 1 MiB.
    pub max_event_bytes: usize,
    /// Bytes of events kept per job (older ones are dropped, as past `max_events`).
    /// Default 16 MiB.
    pub max_job_bytes: usize,
    /// Bytes of events kept for all the jobs of one agent. Default 64 MiB.
    pub max_agent_bytes: usize,
    /// Bytes of an agent's events not yet stored before the server stops reading its tunnel
    /// (backpressure). Default 16 MiB.
    pub max_agent_unstored_bytes: usize,
    /// Clients may read every job in their scopes, not only the ones they started (admins
    /// always may). Default false.
    pub clients_read_all: bool,
}

impl Default for Jobs {
    fn default() -> Self {
        let d = croupier_function::JobConfig::default();
        Jobs {
            max_events: d.max_events,
            max_event_age: d.max_event_age,
            record_retention: d.record_retention,
            max_duration: d.max_duration,
            linger: d.linger,
            max_event_bytes: d.max_event_bytes,
            max_job_bytes: d.max_job_bytes,
            max_agent_bytes: d.max_agent_bytes,
            max_agent_unstored_bytes: d.max_agent_unstored_bytes,
            clients_read_all: d.clients_read_all,
        }
    }
}

/// The plain-HTTP port for machines.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Address of `/metrics`, `/healthz` and `/readyz` (no client certificate; nothing that
    /// changes state). Unset: `127.0.0.1:9464`, or a free port of 127.0.0.1 when that one is
    /// taken. `""` turns the port off. Expose it beyond the host only to your scrapers and probes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

/// The operator console: the browser app on its own HTTPS port.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Console {
    /// Address of the console (HTTPS with the server's certificate; people sign in with
    /// `croupier user` accounts, scripts with `croupier token` tokens). Unset or `""`: off
    /// (`croupier dev` turns it on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// A session ends after this long without a request. Default `30m`.
    #[serde(with = "humantime_serde")]
    pub session_idle: Duration,
    /// A session ends this long after sign-in. Default `12h`.
    #[serde(with = "humantime_serde")]
    pub session_max: Duration,
    /// Failed sign-ins for one user name or from one address before sign-ins for it are
    /// refused for `login_lockout`. Default 5.
    pub max_login_failures: u32,
    /// How long failed sign-ins count, and how long a locked name or address waits. Default `5m`.
    #[serde(with = "humantime_serde")]
    pub login_lockout: Duration,
}

impl Default for Console {
    fn default() -> Self {
        let d = croupier_console::ConsoleConfig::default();
        Console {
            listen: None,
            session_idle: d.session_idle,
            session_max: d.session_max,
            max_login_failures: d.max_login_failures,
            login_lockout: d.login_lockout,
        }
    }
}

/// Span export over OTLP.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Otlp {
    /// The OTLP gRPC receiver spans go to, `http://HOST:PORT` (a collector, Jaeger, Tempo).
    /// Unset: no spans are exported (trace ids still travel and are logged and audited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// Bounds of the audit log.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Audit {
    /// Most bytes of a payload excerpt kept in one record (the record always holds the
    /// payload's SHA-256 and size). Default 4096.
    pub max_payload_bytes: usize,
    /// The log is rotated (to `audit.log.1`, `.2`, …) when it passes this size. Default 100 MiB.
    pub max_file_bytes: u64,
    /// Rotated files kept. Default 10.
    pub keep_files: usize,
    /// Refuse audited actions (calls, jobs, cancels, node states, pipelines, policy, approvals)
    /// with UNAVAILABLE while records cannot be written. Agent registrations are recorded but
    /// never refused. Default true.
    pub fail_closed: bool,
    /// Longest a request waits for room in the audit queue (backpressure) before its record
    /// counts as lost. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
}

impl Default for Audit {
    fn default() -> Self {
        let d = croupier_control::audit::AuditOptions::default();
        Audit {
            max_payload_bytes: d.max_payload_bytes,
            max_file_bytes: d.max_file_bytes,
            keep_files: d.keep_files,
            fail_closed: d.fail_closed,
            write_timeout: d.write_timeout,
        }
    }
}

/// The store backend.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In-process, persisted in the data dir.
    #[default]
    Embedded,
    /// etcd v3.
    Etcd,
}

/// Limits on what callers and agents may send.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest gRPC message accepted or sent, in bytes. Default 10 MiB.
    pub max_message_bytes: usize,
    /// Most labels per agent. Default 64.
    pub max_labels: usize,
    /// Most functions per agent. Default 1024.
    pub max_functions_per_agent: usize,
    /// Most calls one caller identity may have in flight. Default 1024.
    pub max_concurrent_calls_per_caller: usize,
    /// Most bytes of one function descriptor, encoded. Default 64 KiB.
    pub max_descriptor_bytes: usize,
    /// Most functions (registered or provided) in one game and environment. Default 10000.
    pub max_functions_per_scope: usize,
    /// Most entries in a heartbeat's status map. Default 64.
    pub max_status_entries: usize,
    /// Most bytes of a heartbeat's status map. Default 16 KiB.
    pub max_status_bytes: usize,
    /// Most characters of a free-text field (node-state reason, goodbye). Default 1024.
    pub max_text_chars: usize,
    /// Most bytes of a JSON Schema in a descriptor. Default 64 KiB.
    pub max_schema_bytes: usize,
    /// Most nesting levels of a JSON Schema. Default 30.
    pub max_schema_depth: usize,
    /// Most subschema evaluations one validation may need, `$ref`s followed. Default 10000.
    pub max_schema_cost: u64,
    /// Longest one payload's schema validation may take. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub schema_budget: Duration,
    /// Most connections at once (the rest are refused at accept). Default 20000.
    pub max_connections: usize,
    /// Most connections still in their TLS handshake; past it the oldest is closed to make
    /// room. Default 1024.
    pub max_handshakes: usize,
    /// Most connections in their TLS handshake from one source address. Default 256.
    pub max_handshakes_per_source: usize,
    /// How long a TLS handshake may take before the connection is closed. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        let control = croupier_control::ControlConfig::default();
        let schema = croupier_registry::schema::SchemaLimits::default();
        Limits {
            max_message_bytes: croupier_proto::limits::DEFAULT_MAX_MESSAGE_BYTES,
            max_labels: control.max_labels,
            max_functions_per_agent: control.max_functions,
            max_concurrent_calls_per_caller: 1024,
            max_descriptor_bytes: control.max_descriptor_bytes,
            max_functions_per_scope: control.max_functions_per_scope,
            max_status_entries: control.max_status_entries,
            max_status_bytes: control.max_status_bytes,
            max_text_chars: control.max_text_chars,
            max_schema_bytes: schema.max_bytes,
            max_schema_depth: schema.max_depth,
            max_schema_cost: schema.max_cost,
            schema_budget: Duration::from_secs(1),
            max_connections: 20_000,
            max_handshakes: 1024,
            max_handshakes_per_source: 256,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl Limits {
    /// The schema limits.
    pub fn schema(&self) -> croupier_registry::schema::SchemaLimits {
        croupier_registry::schema::SchemaLimits {
            max_bytes: self.max_schema_bytes,
            max_depth: self.max_schema_depth,
            max_cost: self.max_schema_cost,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8443".into(),
            data_dir: PathBuf::from("croupier-data"),
            tls_dir: PathBuf::from("certs"),
            revocation_list: None,
            server_id: "server".into(),
            advertise_url: String::new(),
            heartbeat_interval: Duration::from_secs(15),
            missed_heartbeats: 3,
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(3600),
            shutdown_grace: Duration::from_secs(10),
            idempotency_retention: Duration::from_secs(24 * 3600),
            late_answer_grace: Duration::from_secs(30),
            audit_log: true,
            audit: Audit::default(),
            http: Http::default(),
            console: Console::default(),
            announce: true,
            otlp: Otlp::default(),
            store: StoreKind::Embedded,
            store_fsync: false,
            etcd_endpoints: Vec::new(),
            etcd_namespace: String::new(),
            etcd_ca: None,
            etcd_cert: None,
            etcd_key: None,
            limits: Limits::default(),
            jobs: Jobs::default(),
            fleet: Fleet::default(),
        }
    }
}

/// Top-level keys the environment layer may set (other `CROUPIER_*` variables belong to other
/// commands and are ignored here).
const ENV_KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "tls_dir",
    "revocation_list",
    "server_id",
    "advertise_url",
    "heartbeat_interval",
    "missed_heartbeats",
    "default_timeout",
    "max_timeout",
    "shutdown_grace",
    "idempotency_retention",
    "late_answer_grace",
    "audit_log",
    "audit",
    "http",
    "console",
    "fleet",
    "store",
    "store_fsync",
    "etcd_endpoints",
    "etcd_namespace",
    "etcd_ca",
    "etcd_cert",
    "etcd_key",
    "limits",
    "jobs",
];

impl ServerConfig {
    /// Loads defaults, then `file` (if any), then `CROUPIER_*` variables, then `overrides`
    /// (command-line flags, serialised; absent flags are skipped), and validates.
    pub fn load(file: Option<&Path>, overrides: impl Serialize) -> anyhow::Result<ServerConfig> {
        let mut fig = Figment::from(Serialized::defaults(ServerConfig::default()));
        if let Some(f) = file {
            if !f.exists() {
                bail!("config file {} does not exist", f.display());
            }
            fig = fig.merge(Toml::file(f));
        }
        fig = fig
            .merge(Env::prefixed("CROUPIER_").split("__").filter(|k| {
                // Keys arrive as written (upper case, `__` for nesting).
                let k = k.as_str().to_ascii_lowercase();
                let top = k.split("__").next().unwrap_or("");
                ENV_KEYS.contains(&top.split('.').next().unwrap_or(""))
            }))
            .merge(Serialized::defaults(overrides));
        let cfg: ServerConfig = fig.extract().context("reading the server configuration")?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.heartbeat_interval < Duration::from_millis(100) {
            bail!("heartbeat_interval must be at least 100ms");
        }
        if self.missed_heartbeats == 0 {
            bail!("missed_heartbeats must be at least 1");
        }
        if self.store == StoreKind::Etcd && self.etcd_endpoints.is_empty() {
            bail!("store = \"etcd\" needs etcd_endpoints (--etcd-endpoints URL,...)");
        }
        if self.etcd_cert.is_some() != self.etcd_key.is_some() {
            bail!("give both etcd_cert and etcd_key, or neither");
        }
        if self.jobs.max_events == 0 {
            bail!("jobs.max_events must be at least 1");
        }
        if self.fleet.events_retained == 0 || self.fleet.inventory_versions == 0 {
            bail!("fleet.events_retained and fleet.inventory_versions must be at least 1");
        }
        if self.fleet.metrics_step.as_secs() == 0
            || self.fleet.metrics_keep < self.fleet.metrics_step
        {
            bail!(
                "fleet.metrics_step must be at least 1s, and fleet.metrics_keep at least one step"
            );
        }
        if self.jobs.max_duration.is_zero() {
            bail!("jobs.max_duration must be > 0");
        }
        if self.console.session_idle.is_zero()
            || self.console.session_max < self.console.session_idle
            || self.console.max_login_failures == 0
        {
            bail!(
                "console.session_idle must be > 0 and at most console.session_max, and \
                 console.max_login_failures at least 1"
            );
        }
        if self.default_timeout.is_zero() || self.default_timeout > self.max_timeout {
            bail!("default_timeout must be > 0 and at most max_timeout");
        }
        if self.limits.max_message_bytes < 4096 {
            bail!("limits.max_message_bytes must be at least 4096");
        }
        if self.limits.max_connections == 0 || self.limits.max_handshakes == 0 {
            bail!("limits.max_connections and limits.max_handshakes must be at least 1");
        }
        if self.limits.handshake_timeout.is_zero() || self.limits.schema_budget.is_zero() {
            bail!("limits.handshake_timeout and limits.schema_budget must be > 0");
        }
        if self.audit.max_file_bytes < 4096 {
            bail!("audit.max_file_bytes must be at least 4096");
        }
        if self.limits.max_concurrent_calls_per_caller == 0 {
            bail!("limits.max_concurrent_calls_per_caller must be at least 1");
        }
        croupier_registry::ids::check_id("server_id", &self.server_id)
            .map_err(|e| anyhow::anyhow!(e))?;
        Ok(())
    }
}

#[cfg(test)]
// figment::Jail's closures return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[derive(Serialize, Default)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        listen: Option<String>,
    }

    #[test]
    fn environment_overrides_file_and_flags_override_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "heartbeat_interval = \"2s\"\n")?;
            jail.set_env("CROUPIER_HEARTBEAT_INTERVAL", "3s");
            jail.set_env("CROUPIER_JOBS__MAX_EVENTS", "5");
            jail.set_env("CROUPIER_LIMITS__MAX_LABELS", "7");
            jail.set_env("CROUPIER_SERVER", "https://elsewhere:1"); // another command's
            let cfg = ServerConfig::load(Some(Path::new("c.toml")), Flags::default())
                .map_err(|e| e.to_string())?;
            assert_eq!(cfg.heartbeat_interval, Duration::from_secs(3));
            assert_eq!(cfg.jobs.max_events, 5);
            assert_eq!(cfg.limits.max_labels, 7);
            let cfg = ServerConfig::load(
                None,
                Flags {
                    listen: Some("127.0.0.1:2".into()),
                },
            )
            .map_err(|e| e.to_string())?;
            assert_eq!(cfg.listen, "127.0.0.1:2");
            jail.set_env("CROUPIER_JOBS__MAX_EVENTS", "0");
            let err = ServerConfig::load(None, Flags::default()).unwrap_err();
            assert!(err.to_string().contains("max_events"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn layers_file_then_flags() {
        // In a jail: no CROUPIER_* variable of the process or another test leaks in.
        figment::Jail::expect_with(|_| {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("c.toml");
            std::fs::write(
                &file,
                "listen = \"0.0.0.0:9000\"\nheartbeat_interval = \"2s\"\n[limits]\nmax_labels = 8\n",
            )
            .unwrap();
            let cfg = ServerConfig::load(Some(&file), Flags::default()).unwrap();
            assert_eq!(cfg.listen, "0.0.0.0:9000");
            assert_eq!(cfg.heartbeat_interval, Duration::from_secs(2));
            assert_eq!(cfg.limits.max_labels, 8);
            assert_eq!(cfg.missed_heartbeats, 3);
            let cfg = ServerConfig::load(
                Some(&file),
                Flags {
                    listen: Some("127.0.0.1:1".into()),
                },
            )
            .unwrap();
            assert_eq!(cfg.listen, "127.0.0.1:1");
            Ok(())
        });
    }

    #[test]
    fn rejects_unknown_fields_and_bad_values() {
        // In a jail: no CROUPIER_* variable of the process or another test leaks in.
        figment::Jail::expect_with(|_| {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("c.toml");
            std::fs::write(&file, "lisen = \"x\"\n").unwrap();
            let err = format!(
                "{:#}",
                ServerConfig::load(Some(&file), Flags::default()).unwrap_err()
            );
            assert!(err.contains("lisen"), "{err}");
            std::fs::write(&file, "missed_heartbeats = 0\n").unwrap();
            assert!(ServerConfig::load(Some(&file), Flags::default()).is_err());
            std::fs::write(&file, "[fleet]\nmetrics_step = \"0s\"\n").unwrap();
            let err = format!(
                "{:#}",
                ServerConfig::load(Some(&file), Flags::default()).unwrap_err()
            );
            assert!(err.contains("fleet.metrics_step"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn example_config_in_deploy_lists_every_field() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/croupier.toml");
        let text = std::fs::read_to_string(file).unwrap();
        let example: toml::Table = toml::from_str(&text).unwrap();
        let defaults = toml::Table::try_from(ServerConfig::default()).unwrap();
        fn missing(want: &toml::Table, have: &toml::Table, at: &str, out: &mut Vec<String>) {
            for (k, v) in want {
                match (v, have.get(k)) {
                    (toml::Value::Table(w), Some(toml::Value::Table(h))) => {
                        missing(w, h, &format!("{at}{k}."), out);
                    }
                    (_, Some(_)) => {}
                    (_, None) => out.push(format!("{at}{k}")),
                }
            }
        }
        let mut out = Vec::new();
        missing(&defaults, &example, "", &mut out);
        assert!(out.is_empty(), "deploy/croupier.toml lacks {out:?}");
    }

    #[test]
    fn example_config_in_deploy_is_valid() {
        // In a jail: no CROUPIER_* variable of the process or another test leaks in.
        figment::Jail::expect_with(|_| {
            let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/croupier.toml");
            let cfg = ServerConfig::load(Some(&file), Flags::default()).unwrap();
            assert_eq!(cfg.listen, "0.0.0.0:8443");
            Ok(())
        });
    }
}
