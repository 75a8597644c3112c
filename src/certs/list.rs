//! `croupier certs list` and `croupier certs revoke`: what a certificate directory holds, and
//! adding a certificate's serial to its revocation list.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use croupier_registry::identity::{Identity, normalize_serial, read_revocations};
use serde::Serialize;

use super::{CA_CERT_FILE, REVOKED_FILE, read_cert_der, write_file};

/// One certificate of a directory, as `certs list` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct CertInfo {
    /// The file, relative to the directory.
    pub file: String,
    /// The identity URI, or empty when the certificate carries none (the CA).
    pub identity: String,
    /// Its scopes (`GAME/ENV`, `GAME/*`); empty: unscoped.
    pub scopes: Vec<String>,
    /// The serial, as lowercase hex.
    pub serial: String,
    /// Start of validity, Unix ms.
    pub not_before: i64,
    /// End of validity, Unix ms.
    pub not_after: i64,
    /// Past its end of validity.
    pub expired: bool,
    /// On the directory's revocation list (`revoked.txt`).
    pub revoked: bool,
}

/// The certificates (`*.pem`) of `dir`, sorted by file name, the CA first.
pub fn list(dir: &Path) -> anyhow::Result<Vec<CertInfo>> {
    let revoked = read_revocations(&dir.join(REVOKED_FILE)).map_err(anyhow::Error::msg)?;
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading certificate directory {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pem"))
        .collect();
    files.sort_by_key(|p| (!p.ends_with(CA_CERT_FILE), p.clone()));
    let now = croupier_registry::model::now_ms();
    let mut out = Vec::new();
    for path in files {
        let der = read_cert_der(&path)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| anyhow::anyhow!("{}: not an X.509 certificate: {e}", path.display()))?;
        let serial = normalize_serial(&cert.raw_serial_as_string());
        let identity = Identity::from_cert_der(&der).ok();
        let not_after = cert.validity().not_after.timestamp() * 1000;
        out.push(CertInfo {
            file: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            identity: identity.as_ref().map(Identity::uri).unwrap_or_default(),
            scopes: identity
                .map(|i| i.scopes.list().iter().map(ToString::to_string).collect())
                .unwrap_or_default(),
            revoked: revoked.contains(&serial),
            serial,
            not_before: cert.validity().not_before.timestamp() * 1000,
            not_after,
            expired: not_after < now,
        });
    }
    Ok(out)
}

/// Adds the serials of `certs` to `dir/revoked.txt` (with a comment naming each certificate)
/// and returns them. Each entry is a file stem (`agent-node-1`), a path to a PEM certificate,
/// or a hex serial. A running server reloads the list within seconds.
pub fn revoke(dir: &Path, certs: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    if certs.is_empty() {
        bail!(
            "name the certificates to revoke: a file stem (agent-node-1), a .pem path or a serial"
        );
    }
    let list_path = dir.join(REVOKED_FILE);
    let mut text = match fs::read_to_string(&list_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", list_path.display())),
    };
    let mut added = Vec::new();
    for name in certs {
        let stem_file = dir.join(format!("{name}.pem"));
        let path = [PathBuf::from(name), stem_file]
            .into_iter()
            .find(|p| p.is_file());
        let (serial, what) = match path {
            Some(path) => {
                let der = read_cert_der(&path)?;
                let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| {
                    anyhow::anyhow!("{}: not an X.509 certificate: {e}", path.display())
                })?;
                let who = Identity::from_cert_der(&der)
                    .map(|i| i.uri())
                    .unwrap_or_else(|_| "no identity".into());
                (
                    normalize_serial(&cert.raw_serial_as_string()),
                    format!("{} {who}", path.display()),
                )
            }
            None if !name.is_empty() && name.chars().all(|c| c.is_ascii_hexdigit() || c == ':') => {
                (normalize_serial(name), "by serial".to_owned())
            }
            None => bail!(
                "{name:?} is neither a certificate in {} (file stem or path) nor a hex serial",
                dir.display()
            ),
        };
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        text.push_str(&format!("{serial}  # {what}, revoked {at}\n"));
        added.push((name.clone(), serial));
    }
    write_file(&list_path, text.as_bytes(), 0o644)?;
    Ok(added)
}
