//! The revocation list a server reads: a file of certificate serials, or a PEM/DER CRL, kept in
//! an [`IdentityResolver`] and reloaded when the file changes.
//!
//! The serials file has one serial per line in hex (`0a:1b:…` or `0a1b…`, case and colons
//! ignored); `#` starts a comment. `croupier certs revoke` appends to such a file. A CRL is
//! recognised by its `-----BEGIN X509 CRL-----` header (or parsed as DER); its revoked serials
//! are used as they are: the file is the operator's, so its signature is not checked.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use super::{IdentityResolver, normalize_serial};

/// How often the file is checked for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Reads the revoked serials of `path` (normalized with [`normalize_serial`]); a missing file
/// revokes nothing. Errors name the file and the line or the CRL problem.
pub fn read_revocations(path: &Path) -> Result<HashSet<String>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    parse_revocations(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses a serials file or a CRL (see the module documentation).
pub fn parse_revocations(bytes: &[u8]) -> Result<HashSet<String>, String> {
    let text = String::from_utf8_lossy(bytes);
    if text.contains("-----BEGIN X509 CRL-----") {
        let (_, pem) =
            x509_parser::pem::parse_x509_pem(bytes).map_err(|e| format!("not a PEM CRL: {e}"))?;
        return crl_serials(&pem.contents);
    }
    // DER starts with a SEQUENCE tag, 0x30, which is also the text "0": try it as a CRL first.
    if bytes.first() == Some(&0x30)
        && let Ok(serials) = crl_serials(bytes)
    {
        return Ok(serials);
    }
    let mut serials = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if !line.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return Err(format!(
                "line {}: {line:?} is not a hex serial (give one serial per line, e.g. \
                 `3a:f0:12` or `3af012`)",
                n + 1
            ));
        }
        serials.insert(normalize_serial(line));
    }
    Ok(serials)
}

fn crl_serials(der: &[u8]) -> Result<HashSet<String>, String> {
    let (_, crl) =
        CertificateRevocationList::from_der(der).map_err(|e| format!("not a valid CRL: {e}"))?;
    Ok(crl
        .iter_revoked_certificates()
        .map(|r| normalize_serial(&r.raw_serial_as_string()))
        .collect())
}

/// Loads `path` into `resolver` now (an unreadable or malformed file is an error, so a server
/// does not start with a broken list), then reloads it whenever its modification time or size
/// changes. A later bad edit keeps the previous list and logs why.
pub async fn watch_revocations(
    resolver: IdentityResolver,
    path: PathBuf,
) -> Result<tokio::task::JoinHandle<()>, String> {
    resolver.set_revoked(read_revocations(&path)?);
    tracing::info!(path = %path.display(), revoked = resolver.revoked_count(), "revocation list loaded");
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
    };
    let mut seen = stamp(&path);
    Ok(croupier_proto::task::spawn(
        "revocation reload",
        async move {
            loop {
                tokio::time::sleep(RELOAD_EVERY).await;
                let now = stamp(&path);
                if now == seen {
                    continue;
                }
                seen = now;
                match read_revocations(&path) {
                    Ok(serials) => {
                        resolver.set_revoked(serials);
                        tracing::info!(path = %path.display(), revoked = resolver.revoked_count(), "revocation list reloaded");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "revocation list not reloaded; the previous one stays");
                    }
                }
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_serials_file_parses_with_comments_and_colons() {
        let got = parse_revocations(b"# revoked\n0A:1B\n\n  ff01 # lost laptop\n").unwrap();
        assert_eq!(
            got,
            ["a1b".to_string(), "ff01".into()].into_iter().collect()
        );
        let err = parse_revocations(b"0a\nnode-1\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn a_missing_file_revokes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            read_revocations(&dir.path().join("none"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_crl_is_read() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::KeyCertSign,
        ];
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let crl = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2026, 1, 1),
            next_update: rcgen::date_time_ymd(2036, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from(vec![0x0a, 0xbc]),
                revocation_time: rcgen::date_time_ymd(2026, 2, 1),
                reason_code: None,
                invalidity_date: None,
            }],
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&issuer)
        .unwrap();
        let got = parse_revocations(crl.pem().unwrap().as_bytes()).unwrap();
        assert_eq!(got, ["abc".to_string()].into_iter().collect());
        let got = parse_revocations(crl.der()).unwrap();
        assert_eq!(got, ["abc".to_string()].into_iter().collect());
    }
}
