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
//! - `revoked.txt`: serials revoked with `croupier certs revoke` (the server's default
//!   revocation list).
//!
//! Keys are written with mode 0600 from the moment they exist; certificates with mode 0644.
//!
//! Agent, client and admin certificates may be bound to scopes (`--scope GAME/ENV`, or
//! `GAME/*`): each scope is one more URI SAN `urn:croupier:scope:GAME/ENV` beside the identity
//! URI (see [`croupier_registry::identity::Scope`]). Every leaf gets a random 128-bit serial, which
//! is what revocation names.

mod list;
pub use list::{CertInfo, list, revoke};

use std::collections::BTreeSet;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use croupier_registry::identity::{Identity, Role, Scope, Scopes};
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
/// File of revoked serials in a certificate directory, the server's default revocation list.
pub const REVOKED_FILE: &str = "revoked.txt";

/// How long leaf certificates are valid unless `--validity` says otherwise.
const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// How far in the past certificates start, so peers with slow clocks accept them.
const CLOCK_SKEW: Duration = Duration::from_secs(60 * 60);
/// Hosts every server certificate is valid for.
const DEFAULT_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// What `croupier certs init` should produce (also its arguments).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct CertsInit {
    /// Output directory; created with mode 0700 when missing.
    #[arg(long)]
    pub dir: PathBuf,
    /// Agent ids (repeatable); each gets `agent-ID.pem/.key` with identity
    /// `spiffe://croupier/agent/ID`.
    #[arg(long = "agent")]
    pub agents: Vec<String>,
    /// Client names (repeatable); each gets `client-NAME.pem/.key`.
    #[arg(long = "client")]
    pub clients: Vec<String>,
    /// Admin names (repeatable); each gets `admin-NAME.pem/.key`.
    #[arg(long = "admin")]
    pub admins: Vec<String>,
    /// Named servers (repeatable); each gets `server-NAME.pem/.key` with the server hosts and
    /// identity `spiffe://croupier/server/NAME`, for server-to-server forwarding.
    #[arg(long = "server")]
    pub servers: Vec<String>,
    /// Extra host names or IP addresses for the server certificates (repeatable), besides
    /// `localhost`, `127.0.0.1` and `::1`.
    #[arg(long = "host")]
    pub hosts: Vec<String>,
    /// Bind the agent, client and admin certificates of this run to a game and environment
    /// (repeatable): `GAME/ENV`, or `GAME/*` for every environment of the game. Without it
    /// they are unscoped (every game). An existing certificate with other scopes is reissued.
    #[arg(long = "scope", value_parser = parse_scope)]
    pub scopes: Vec<Scope>,
    /// How long the leaf certificates issued by this run are valid, e.g. `90d` or `12h`.
    /// Default 365 days.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub validity: Option<Duration>,
    /// Make a new CA and rewrite every requested certificate even when the files exist (a new
    /// CA invalidates every old certificate).
    #[arg(long)]
    pub force: bool,
}

fn parse_scope(text: &str) -> Result<Scope, String> {
    Scope::parse(text)
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
            if present
                && !reissue
                && (opts.scopes.is_empty() || same_scopes(&cert_path, &identity)?)
            {
                continue;
            }
            BTreeSet::new()
        };
        let validity = opts.validity.unwrap_or(LEAF_VALIDITY);
        let (cert_pem, key_pem) = issue_leaf(&issuer, &identity, &sans, validity)
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
        Identity::new(Role::Server, "server").context("server identity")?,
        "server".to_owned(),
    )];
    for (role, names) in [
        (Role::Server, &opts.servers),
        (Role::Agent, &opts.agents),
        (Role::Client, &opts.clients),
        (Role::Admin, &opts.admins),
    ] {
        for name in names {
            let Some(mut identity) = Identity::new(role, name.as_str()) else {
                bail!(
                    "invalid {role} name {name:?}: names must be 1-128 characters from \
                     [A-Za-z0-9._-]"
                );
            };
            if role != Role::Server {
                identity = identity.with_scopes(Scopes::new(opts.scopes.clone()));
            }
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

/// The DER of a PEM certificate file.
fn read_cert_der(cert_path: &Path) -> anyhow::Result<Vec<u8>> {
    let context = || format!("reading {}", cert_path.display());
    let pem = fs::read(cert_path).with_context(context)?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem)
        .map_err(|e| anyhow::anyhow!("not a PEM certificate: {e}"))
        .with_context(context)?;
    Ok(pem.contents)
}

/// True when the certificate at `cert_path` carries exactly the scopes of `identity`.
fn same_scopes(cert_path: &Path, identity: &Identity) -> anyhow::Result<bool> {
    let der = read_cert_der(cert_path)?;
    Ok(Identity::from_cert_der(&der).is_ok_and(|found| found.scopes == identity.scopes))
}

/// The DNS and IP SANs of an existing certificate file.
fn existing_hosts(cert_path: &Path) -> anyhow::Result<BTreeSet<Host>> {
    let context = || format!("reading {}", cert_path.display());
    let der = read_cert_der(cert_path)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
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
    validity: Duration,
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
    for scope in identity.scopes.list() {
        params.subject_alt_names.push(SanType::URI(
            scope.uri().try_into().context("scope URI is not ASCII")?,
        ));
    }
    // A random positive 128-bit serial: what a revocation list names.
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
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
    params.not_after = (now + validity).into();
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
mod tests;
