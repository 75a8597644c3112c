//! `croupier certs init`: a small certificate authority for a Croupier mesh. It writes a CA and
//! leaf certificates whose identity is a SAN URI `spiffe://croupier/<role>/<name>` (see
//! [`croupier_registry::identity`]). Running it again reuses the CA, so agents, clients and
//! admins can be added later; existing leaf files are kept unless `force` is set.
//!
//! Files in the output directory (created with mode 0700):
//! - `ca.pem`, `ca.key`: the CA (CN "Croupier CA", 10 years).
//! - `server.pem`, `server.key`: the server certificate (`spiffe://croupier/server/server`).
//! - `server-NAME.*`, `agent-ID.*`, `client-NAME.*`, `admin-NAME.*`: one pair per name.
//!
//! Keys are written with mode 0600 from the moment they exist; certificates with mode 0644.

use std::collections::BTreeSet;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use croupier_registry::identity::{Identity, Role};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use x509_parser::extensions::GeneralName;

/// File name of the CA certificate.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key.
pub const CA_KEY_FILE: &str = "ca.key";

/// How long the CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(3650 * 24 * 60 * 60);
/// How long leaf certificates are valid.
const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// How far in the past certificates start, so peers with slow clocks accept them.
const CLOCK_SKEW: Duration = Duration::from_secs(60 * 60);
/// Hosts every server certificate is valid for.
const DEFAULT_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// What `croupier certs init` should produce.
#[derive(Clone, Debug, Default)]
pub struct CertsInit {
    /// Output directory; created with mode 0700 when missing.
    pub dir: PathBuf,
    /// Agent ids; each gets `agent-ID.pem/.key` with identity `spiffe://croupier/agent/ID`.
    pub agents: Vec<String>,
    /// Client names; each gets `client-NAME.pem/.key`.
    pub clients: Vec<String>,
    /// Admin names; each gets `admin-NAME.pem/.key`.
    pub admins: Vec<String>,
    /// Named servers; each gets `server-NAME.pem/.key` with the server hosts and identity
    /// `spiffe://croupier/server/NAME`, for server-to-server forwarding.
    pub servers: Vec<String>,
    /// Extra host names or IP addresses for the server certificates, besides `localhost`,
    /// `127.0.0.1` and `::1`.
    pub hosts: Vec<String>,
    /// Make a new CA and rewrite every requested certificate even when the files exist.
    pub force: bool,
}

/// The certificate and key paths of a leaf: `dir/STEM.pem` and `dir/STEM.key`, where the
/// stem is `server`, `server-NAME`, `agent-ID`, `client-NAME` or `admin-NAME`.
pub fn leaf_files(dir: &Path, identity_file_stem: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{identity_file_stem}.pem")),
        dir.join(format!("{identity_file_stem}.key")),
    )
}

/// Creates (or completes) the certificate directory described by `opts` and returns the files
/// it wrote, in the order written.
///
/// An existing CA (`ca.pem` + `ca.key`) is reused unless `opts.force`; when a new CA is made,
/// every requested leaf is reissued under it. The server certificates are also reissued when
/// `opts.hosts` names a host they do not cover; they then keep the hosts they had.
pub fn init(opts: &CertsInit) -> anyhow::Result<Vec<PathBuf>> {
    let leaves = requested_leaves(opts)?;
    let hosts = parse_hosts(&opts.hosts)?;
    let dir = opts.dir.as_path();
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating certificate directory {}", dir.display()))?;

    let mut written = Vec::new();
    let (issuer, ca_is_new) = load_or_create_ca(dir, opts.force, &mut written)?;
    // Leaves signed by a CA that is gone would no longer verify: reissue them all.
    let reissue = opts.force || ca_is_new;

    for (identity, stem) in leaves {
        let (cert_path, key_path) = leaf_files(dir, &stem);
        let present = cert_path.exists() && key_path.exists();
        let sans = if identity.role == Role::Server {
            let mut sans = hosts.clone();
            if present && !reissue {
                let existing = existing_hosts(&cert_path)?;
                if hosts.is_subset(&existing) {
                    continue;
                }
                // Reissue with the new hosts, keeping the ones it was already valid for.
                sans.extend(existing);
            }
            sans
        } else {
            if present && !reissue {
                continue;
            }
            BTreeSet::new()
        };
        let (cert_pem, key_pem) = issue_leaf(&issuer, &identity, &sans)
            .with_context(|| format!("issuing the certificate for {identity}"))?;
        write_file(&key_path, key_pem.as_bytes(), 0o600)?;
        write_file(&cert_path, cert_pem.as_bytes(), 0o644)?;
        written.push(cert_path);
        written.push(key_path);
    }
    Ok(written)
}

/// The leaves to issue, as identity and file stem, in a stable order without duplicates.
/// Fails on the first invalid name, naming it.
fn requested_leaves(opts: &CertsInit) -> anyhow::Result<Vec<(Identity, String)>> {
    let mut leaves = vec![(
        Identity {
            role: Role::Server,
            name: "server".into(),
        },
        "server".to_owned(),
    )];
    for (role, names) in [
        (Role::Server, &opts.servers),
        (Role::Agent, &opts.agents),
        (Role::Client, &opts.clients),
        (Role::Admin, &opts.admins),
    ] {
        for name in names {
            let Some(identity) = Identity::new(role, name.as_str()) else {
                bail!(
                    "invalid {role} name {name:?}: names must be 1-128 characters from \
                     [A-Za-z0-9._-]"
                );
            };
            let stem = format!("{role}-{name}");
            if !leaves.iter().any(|(_, s)| *s == stem) {
                leaves.push((identity, stem));
            }
        }
    }
    Ok(leaves)
}

/// A host name or IP address in a server certificate.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Host {
    Ip(IpAddr),
    Dns(String),
}

impl Host {
    fn parse(host: &str) -> anyhow::Result<Host> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Host::Ip(ip));
        }
        let valid = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'*'));
        if !valid {
            bail!(
                "invalid host {host:?}: give an IP address or a DNS name made of letters, \
                 digits, '.', '-' (and '*' for a wildcard)"
            );
        }
        Ok(Host::Dns(host.to_ascii_lowercase()))
    }

    fn san(&self) -> anyhow::Result<SanType> {
        Ok(match self {
            Host::Ip(ip) => SanType::IpAddress(*ip),
            Host::Dns(name) => SanType::DnsName(
                name.as_str()
                    .try_into()
                    .with_context(|| format!("DNS name {name:?}"))?,
            ),
        })
    }
}

/// The default hosts plus `extra`, validated.
fn parse_hosts(extra: &[String]) -> anyhow::Result<BTreeSet<Host>> {
    DEFAULT_HOSTS
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
        .map(Host::parse)
        .collect()
}

/// The DNS and IP SANs of an existing certificate file.
fn existing_hosts(cert_path: &Path) -> anyhow::Result<BTreeSet<Host>> {
    let context = || format!("reading {}", cert_path.display());
    let pem = fs::read(cert_path).with_context(context)?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem)
        .map_err(|e| anyhow::anyhow!("not a PEM certificate: {e}"))
        .with_context(context)?;
    let cert = pem
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))
        .with_context(context)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| anyhow::anyhow!("bad subject alternative names: {e}"))
        .with_context(context)?;
    let mut hosts = BTreeSet::new();
    for name in san.iter().flat_map(|san| san.value.general_names.iter()) {
        match name {
            GeneralName::DNSName(dns) => {
                hosts.insert(Host::Dns(dns.to_ascii_lowercase()));
            }
            GeneralName::IPAddress(bytes) => {
                if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                    hosts.insert(Host::Ip(IpAddr::from(v4)));
                } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                    hosts.insert(Host::Ip(IpAddr::from(v6)));
                }
            }
            _ => {}
        }
    }
    Ok(hosts)
}

/// Loads the CA from `dir`, or makes a new one when there is none or `force` is set.
/// Returns the issuer and whether it is new.
fn load_or_create_ca(
    dir: &Path,
    force: bool,
    written: &mut Vec<PathBuf>,
) -> anyhow::Result<(Issuer<'static, KeyPair>, bool)> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    if !force {
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => {
                let cert_pem = fs::read_to_string(&cert_path)
                    .with_context(|| format!("reading {}", cert_path.display()))?;
                let key_pem = fs::read_to_string(&key_path)
                    .with_context(|| format!("reading {}", key_path.display()))?;
                let key = KeyPair::from_pem(&key_pem)
                    .with_context(|| format!("parsing the CA key {}", key_path.display()))?;
                let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).with_context(|| {
                    format!("parsing the CA certificate {}", cert_path.display())
                })?;
                return Ok((issuer, false));
            }
            (false, false) => {}
            (true, false) | (false, true) => {
                let (have, missing) = if cert_path.exists() {
                    (&cert_path, &key_path)
                } else {
                    (&key_path, &cert_path)
                };
                bail!(
                    "{} exists but {} is missing; restore it, or pass --force to make a new CA \
                     (every certificate is then reissued and must be redistributed)",
                    have.display(),
                    missing.display()
                );
            }
        }
    }

    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "Croupier CA");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Croupier");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = (now - CLOCK_SKEW).into();
    params.not_after = (now + CA_VALIDITY).into();
    let key = KeyPair::generate().context("generating the CA key")?;
    let cert = params
        .self_signed(&key)
        .context("self-signing the CA certificate")?;
    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
    written.push(cert_path);
    written.push(key_path);
    Ok((Issuer::new(params, key), true))
}

/// Issues a leaf for `identity`, valid for `hosts` (server certificates only); returns the
/// certificate and key PEM.
fn issue_leaf(
    issuer: &Issuer<'_, KeyPair>,
    identity: &Identity,
    hosts: &BTreeSet<Host>,
) -> anyhow::Result<(String, String)> {
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, identity.name.as_str());
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Croupier");
    params.subject_alt_names = hosts.iter().map(Host::san).collect::<Result<_, _>>()?;
    params.subject_alt_names.push(SanType::URI(
        identity
            .uri()
            .try_into()
            .context("identity URI is not ASCII")?,
    ));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = if identity.role == Role::Server {
        // Servers also dial each other when forwarding, so they authenticate as clients too.
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    params.use_authority_key_identifier_extension = true;
    params.not_before = (now - CLOCK_SKEW).into();
    params.not_after = (now + LEAF_VALIDITY).into();
    let key = KeyPair::generate().context("generating a key")?;
    let cert = params.signed_by(&key, issuer).context("signing")?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Replaces `path` with `contents`, with permissions `mode` from the moment the file exists.
/// Writes a temporary file beside it and renames it into place, so a reader never sees a
/// half-written file and an existing file's looser permissions are not inherited.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let file_name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp", file_name.to_string_lossy()));
    let result = (|| -> io::Result<()> {
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // Exactly `mode`, whatever the umask (which can only have narrowed it).
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::certificate::X509Certificate;
    use x509_parser::extensions::ParsedExtension;
    use x509_parser::pem::Pem;

    fn opts(dir: &Path) -> CertsInit {
        CertsInit {
            dir: dir.to_path_buf(),
            agents: vec!["node-1".into()],
            clients: vec!["bob".into()],
            admins: vec!["alice".into()],
            servers: vec!["s1".into()],
            hosts: vec!["croupier.example.com".into(), "10.0.0.7".into()],
            force: false,
        }
    }

    fn read_pem(path: &Path) -> Pem {
        let bytes = fs::read(path).unwrap();
        x509_parser::pem::parse_x509_pem(&bytes).unwrap().1
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn general_names(cert: &X509Certificate<'_>) -> Vec<String> {
        cert.subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::IPAddress(b) if b.len() == 4 => {
                    IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()).to_string()
                }
                GeneralName::IPAddress(b) => {
                    IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()).to_string()
                }
                GeneralName::DNSName(s) | GeneralName::URI(s) => (*s).to_owned(),
                other => format!("{other}"),
            })
            .collect()
    }

    fn eku(cert: &X509Certificate<'_>) -> (bool, bool) {
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        (eku.server_auth, eku.client_auth)
    }

    fn file_names(paths: &[PathBuf]) -> Vec<String> {
        paths
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn init_writes_every_file_with_the_right_permissions() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        let written = init(&opts(&dir)).unwrap();
        assert_eq!(
            file_names(&written),
            [
                "ca.pem",
                "ca.key",
                "server.pem",
                "server.key",
                "server-s1.pem",
                "server-s1.key",
                "agent-node-1.pem",
                "agent-node-1.key",
                "client-bob.pem",
                "client-bob.key",
                "admin-alice.pem",
                "admin-alice.key",
            ]
        );
        assert_eq!(mode(&dir), 0o700);
        for path in &written {
            assert!(path.starts_with(&dir), "{}", path.display());
            let want = if path.extension().unwrap() == "key" {
                0o600
            } else {
                0o644
            };
            assert_eq!(mode(path), want, "{}", path.display());
        }
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), written.len());
        // Keys load back.
        KeyPair::from_pem(&fs::read_to_string(dir.join("agent-node-1.key")).unwrap()).unwrap();
    }

    #[test]
    fn leaf_certs_carry_their_identity_and_verify_against_the_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        init(&opts(dir)).unwrap();

        let ca_pem = read_pem(&dir.join("ca.pem"));
        let ca = ca_pem.parse_x509().unwrap();
        assert!(ca.is_ca());
        assert_eq!(
            ca.subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            "Croupier CA"
        );
        let ten_years = ca.validity().time_to_expiration().unwrap();
        assert!(ten_years.whole_days() >= 3649, "{ten_years}");

        for (stem, uri, server) in [
            ("server", "spiffe://croupier/server/server", true),
            ("server-s1", "spiffe://croupier/server/s1", true),
            ("agent-node-1", "spiffe://croupier/agent/node-1", false),
            ("client-bob", "spiffe://croupier/client/bob", false),
            ("admin-alice", "spiffe://croupier/admin/alice", false),
        ] {
            let (cert_path, _) = leaf_files(dir, stem);
            let pem = read_pem(&cert_path);
            let cert = pem.parse_x509().unwrap();
            let names = general_names(&cert);
            assert!(names.contains(&uri.to_owned()), "{stem}: {names:?}");
            assert_eq!(
                Identity::from_cert_der(&pem.contents).unwrap().uri(),
                uri,
                "{stem}"
            );
            assert!(!cert.is_ca(), "{stem}");
            assert_eq!(cert.issuer(), ca.subject(), "{stem}");
            cert.verify_signature(Some(ca.public_key()))
                .unwrap_or_else(|e| panic!("{stem}: {e}"));
            assert!(cert.validity().is_valid(), "{stem}");
            let left = cert.validity().time_to_expiration().unwrap().whole_days();
            assert!((364..=365).contains(&left), "{stem}: {left}");
            if server {
                assert_eq!(eku(&cert), (true, true), "{stem}");
                for host in [
                    "localhost",
                    "127.0.0.1",
                    "::1",
                    "croupier.example.com",
                    "10.0.0.7",
                ] {
                    assert!(names.contains(&host.to_owned()), "{stem}: {names:?}");
                }
                assert_eq!(names.len(), 6, "{stem}: {names:?}");
            } else {
                assert_eq!(eku(&cert), (false, true), "{stem}");
                assert_eq!(names, [uri], "{stem}");
                let cn = cert.subject().iter_common_name().next().unwrap();
                assert_eq!(cn.as_str().unwrap(), uri.rsplit('/').next().unwrap());
            }
            // Authority key id points at the CA's subject key id.
            let aki = cert
                .extensions()
                .iter()
                .find_map(|e| match e.parsed_extension() {
                    ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.clone(),
                    _ => None,
                })
                .unwrap();
            let ski = ca
                .extensions()
                .iter()
                .find_map(|e| match e.parsed_extension() {
                    ParsedExtension::SubjectKeyIdentifier(ski) => Some(ski.clone()),
                    _ => None,
                })
                .unwrap();
            assert_eq!(aki.0, ski.0, "{stem}");
        }
    }

    #[test]
    fn rerun_reuses_the_ca_and_keeps_existing_leaves() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut o = opts(dir);
        init(&o).unwrap();
        let ca_before = fs::read(dir.join("ca.pem")).unwrap();
        let ca_key_before = fs::read(dir.join("ca.key")).unwrap();
        let bob_before = fs::read(dir.join("client-bob.pem")).unwrap();
        let server_before = fs::read(dir.join("server.pem")).unwrap();

        o.agents.push("node-2".into());
        let written = init(&o).unwrap();
        assert_eq!(
            file_names(&written),
            ["agent-node-2.pem", "agent-node-2.key"]
        );
        assert_eq!(fs::read(dir.join("ca.pem")).unwrap(), ca_before);
        assert_eq!(fs::read(dir.join("ca.key")).unwrap(), ca_key_before);
        assert_eq!(fs::read(dir.join("client-bob.pem")).unwrap(), bob_before);
        assert_eq!(fs::read(dir.join("server.pem")).unwrap(), server_before);

        let ca_pem = read_pem(&dir.join("ca.pem"));
        let ca = ca_pem.parse_x509().unwrap();
        let agent_pem = read_pem(&dir.join("agent-node-2.pem"));
        let agent = agent_pem.parse_x509().unwrap();
        assert_eq!(agent.issuer(), ca.subject());
        agent.verify_signature(Some(ca.public_key())).unwrap();
        assert_eq!(
            Identity::from_cert_der(&agent_pem.contents).unwrap().uri(),
            "spiffe://croupier/agent/node-2"
        );

        // Nothing new asked for: nothing written.
        assert!(init(&o).unwrap().is_empty());
    }

    #[test]
    fn new_hosts_reissue_the_server_certs_and_keep_old_hosts() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut o = opts(dir);
        init(&o).unwrap();
        o.hosts = vec!["other.example.com".into()];
        let written = init(&o).unwrap();
        assert_eq!(
            file_names(&written),
            ["server.pem", "server.key", "server-s1.pem", "server-s1.key"]
        );
        let pem = read_pem(&dir.join("server.pem"));
        let names = general_names(&pem.parse_x509().unwrap());
        for host in [
            "croupier.example.com",
            "10.0.0.7",
            "other.example.com",
            "::1",
        ] {
            assert!(names.contains(&host.to_owned()), "{names:?}");
        }
        // Hosts already covered (case-insensitively): nothing written.
        o.hosts = vec!["Other.Example.com".into(), "10.0.0.7".into()];
        assert!(init(&o).unwrap().is_empty());
    }

    #[test]
    fn force_makes_a_new_ca_and_reissues_everything() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut o = opts(dir);
        let first = init(&o).unwrap();
        let ca_before = fs::read(dir.join("ca.pem")).unwrap();
        // A loose key file is replaced by a 0600 one, not inherited.
        fs::set_permissions(
            dir.join("client-bob.key"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        o.force = true;
        let second = init(&o).unwrap();
        assert_eq!(file_names(&first), file_names(&second));
        assert_ne!(fs::read(dir.join("ca.pem")).unwrap(), ca_before);
        assert_eq!(mode(&dir.join("client-bob.key")), 0o600);
        let ca_pem = read_pem(&dir.join("ca.pem"));
        let ca = ca_pem.parse_x509().unwrap();
        let bob_pem = read_pem(&dir.join("client-bob.pem"));
        let bob = bob_pem.parse_x509().unwrap();
        bob.verify_signature(Some(ca.public_key())).unwrap();
        // ... and not against the CA it replaced.
        let (_, old_ca) = x509_parser::pem::parse_x509_pem(&ca_before).unwrap();
        let old_ca = old_ca.parse_x509().unwrap();
        assert!(bob.verify_signature(Some(old_ca.public_key())).is_err());
    }

    #[test]
    fn rustls_accepts_the_certificates_for_their_roles() {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        use std::sync::Arc;

        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        init(&opts(dir)).unwrap();
        let der = |stem: &str| CertificateDer::from(read_pem(&leaf_files(dir, stem).0).contents);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der("ca")).unwrap();
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .unwrap();
        let servers = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .unwrap();
        let now = UnixTime::now();

        for stem in [
            "server",
            "server-s1",
            "agent-node-1",
            "client-bob",
            "admin-alice",
        ] {
            clients
                .verify_client_cert(&der(stem), &[], now)
                .unwrap_or_else(|e| panic!("{stem} as a client: {e}"));
        }
        for stem in ["server", "server-s1"] {
            for host in [
                "localhost",
                "127.0.0.1",
                "::1",
                "croupier.example.com",
                "10.0.0.7",
            ] {
                let name = ServerName::try_from(host).unwrap();
                servers
                    .verify_server_cert(&der(stem), &[], &name, &[], now)
                    .unwrap_or_else(|e| panic!("{stem} as server {host}: {e}"));
            }
            let elsewhere = ServerName::try_from("elsewhere.example.com").unwrap();
            assert!(
                servers
                    .verify_server_cert(&der(stem), &[], &elsewhere, &[], now)
                    .is_err()
            );
        }
        // A client certificate cannot pose as a server.
        let localhost = ServerName::try_from("localhost").unwrap();
        assert!(
            servers
                .verify_server_cert(&der("client-bob"), &[], &localhost, &[], now)
                .is_err()
        );
    }

    #[test]
    fn a_half_present_ca_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        init(&opts(dir)).unwrap();
        fs::remove_file(dir.join("ca.key")).unwrap();
        let err = format!("{:#}", init(&opts(dir)).unwrap_err());
        assert!(err.contains("ca.key is missing"), "{err}");
        assert!(err.contains("--force"), "{err}");
    }

    #[test]
    fn bad_names_and_hosts_are_rejected_before_anything_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        for (field, bad) in [
            ("agent", "a/b"),
            ("client", ""),
            ("admin", "x y"),
            ("server", "../etc"),
        ] {
            let mut o = opts(&dir);
            match field {
                "agent" => o.agents.push(bad.into()),
                "client" => o.clients.push(bad.into()),
                "admin" => o.admins.push(bad.into()),
                _ => o.servers.push(bad.into()),
            }
            let err = init(&o).unwrap_err().to_string();
            assert!(
                err.contains(&format!("invalid {field} name {bad:?}")),
                "{err}"
            );
        }
        let mut o = opts(&dir);
        o.agents.push("a".repeat(129));
        assert!(init(&o).unwrap_err().to_string().contains("invalid agent"));

        let mut o = opts(&dir);
        o.hosts.push("bad host".into());
        let err = init(&o).unwrap_err().to_string();
        assert!(err.contains("invalid host \"bad host\""), "{err}");

        assert!(!dir.exists());
    }

    #[test]
    fn duplicate_names_are_issued_once() {
        let tmp = tempfile::tempdir().unwrap();
        let o = CertsInit {
            dir: tmp.path().to_path_buf(),
            agents: vec!["a".into(), "a".into()],
            ..CertsInit::default()
        };
        let written = init(&o).unwrap();
        assert_eq!(
            file_names(&written),
            [
                "ca.pem",
                "ca.key",
                "server.pem",
                "server.key",
                "agent-a.pem",
                "agent-a.key"
            ]
        );
    }

    #[test]
    fn leaf_files_names_pem_and_key() {
        assert_eq!(
            leaf_files(Path::new("/c"), "agent-n1"),
            (
                PathBuf::from("/c/agent-n1.pem"),
                PathBuf::from("/c/agent-n1.key")
            )
        );
    }
}
