//! Starts the operator console (`croupier_console`) beside the mTLS port when `[console]
//! listen` is set, and makes `croupier dev`'s console user.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use croupier_registry::store::Store;
use croupier_registry::users::{self, UserRecord};
use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;

/// The console's rustls configuration: the server's certificate, no client certificate.
pub fn tls(dir: &Path) -> anyhow::Result<rustls::ServerConfig> {
    let (certs, key, _) = crate::server::server_cert(dir)?;
    rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("loading the server certificate for the console")
}

/// Binds `[console] listen` and serves the console there until `stop`; returns its address,
/// or `None` when the console is off. Prints `croupier console on https://ADDR/` when the
/// server announces itself.
pub async fn start(
    cfg: &ServerConfig,
    backend: croupier_console::Backend,
    stop: CancellationToken,
) -> anyhow::Result<Option<SocketAddr>> {
    let Some(listen) = cfg.console.listen.as_deref().filter(|l| !l.is_empty()) else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the console's address {listen} ([console] listen)"))?;
    let at = listener.local_addr()?;
    let console = croupier_console::Console::new(
        backend,
        croupier_console::ConsoleConfig {
            session_idle: cfg.console.session_idle,
            session_max: cfg.console.session_max,
            max_login_failures: cfg.console.max_login_failures,
            login_lockout: cfg.console.login_lockout,
        },
    )?;
    let tls = tls(&cfg.tls_dir)?;
    croupier_proto::task::spawn(
        "console",
        croupier_console::serve::serve(listener, tls, console, stop),
    );
    tracing::info!(%at, "console listening");
    if cfg.announce {
        println!("croupier console on https://{at}/");
    }
    Ok(Some(at))
}

/// Makes sure `croupier dev`'s console user `admin` exists with the password kept in
/// `dir/console-password` (made on first use, mode 0600), and returns the password.
pub async fn ensure_dev_user(dir: &Path, store: &Arc<dyn Store>) -> anyhow::Result<String> {
    let file = dir.join("console-password");
    let password = match std::fs::read_to_string(&file) {
        Ok(p) if !p.trim().is_empty() => p.trim().to_string(),
        _ => {
            let (_, token) = users::new_token();
            let password = token[token.len() - 20..].to_string();
            write_private(&file, &password)?;
            password
        }
    };
    let key = users::user_key("admin");
    let current: Option<UserRecord> = store
        .get(&key)
        .await?
        .and_then(|kv| serde_json::from_slice(&kv.value).ok());
    let fits = current
        .as_ref()
        .is_some_and(|u| u.role == "admin" && users::verify_password(&password, &u.password_hash));
    if !fits {
        let hash = {
            let password = password.clone();
            tokio::task::spawn_blocking(move || users::hash_password(&password))
                .await?
                .map_err(anyhow::Error::msg)?
        };
        let now = croupier_registry::model::now_ms();
        let record = UserRecord {
            name: "admin".into(),
            role: "admin".into(),
            scopes: vec![],
            password_hash: hash,
            created_at_ms: current.as_ref().map_or(now, |u| u.created_at_ms),
            password_set_at_ms: now,
            changed_by: "croupier dev".into(),
        };
        store.put(&key, serde_json::to_vec(&record)?, None).await?;
    }
    Ok(password)
}

fn write_private(file: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("writing {}", file.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
