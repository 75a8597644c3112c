//! Unit tests of `certs init`: the files, their modes, reuse and the hosts of a server certificate.

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
        ..Default::default()
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

#[test]
fn scopes_and_validity_go_into_the_certificates_and_list_shows_them() {
    let tmp = tempfile::tempdir().unwrap();
    let mut o = CertsInit {
        dir: tmp.path().to_path_buf(),
        agents: vec!["n1".into()],
        scopes: vec![
            Scope::parse("tetris/prod").unwrap(),
            Scope::parse("chess").unwrap(),
        ],
        validity: Some(Duration::from_secs(2 * 86_400)),
        ..CertsInit::default()
    };
    init(&o).unwrap();
    let certs = list(tmp.path()).unwrap();
    assert_eq!(certs[0].file, "ca.pem");
    let agent = certs.iter().find(|c| c.file == "agent-n1.pem").unwrap();
    assert_eq!(agent.identity, "spiffe://croupier/agent/n1");
    assert_eq!(agent.scopes, ["chess/*", "tetris/prod"]);
    assert!(!agent.expired && !agent.revoked);
    let days = (agent.not_after - croupier_registry::model::now_ms()) / 86_400_000;
    assert_eq!(
        days, 1,
        "two days of validity, less the clock-skew margin of issue"
    );
    let server = certs.iter().find(|c| c.file == "server.pem").unwrap();
    assert!(server.scopes.is_empty(), "servers are never scoped");

    // Same scopes: kept. Other scopes: reissued with a new serial.
    assert!(init(&o).unwrap().is_empty());
    o.scopes = vec![Scope::parse("tetris/qa").unwrap()];
    let written = init(&o).unwrap();
    assert_eq!(file_names(&written), ["agent-n1.pem", "agent-n1.key"]);
    let again = list(tmp.path()).unwrap();
    let reissued = again.iter().find(|c| c.file == "agent-n1.pem").unwrap();
    assert_eq!(reissued.scopes, ["tetris/qa"]);
    assert_ne!(reissued.serial, agent.serial);
    // Without --scope an existing certificate is never loosened.
    o.scopes.clear();
    assert!(init(&o).unwrap().is_empty());
}

#[test]
fn revoke_adds_serials_that_list_and_the_server_read() {
    let tmp = tempfile::tempdir().unwrap();
    init(&opts(tmp.path())).unwrap();
    let before = list(tmp.path()).unwrap();
    let bob = before.iter().find(|c| c.file == "client-bob.pem").unwrap();
    let added = revoke(tmp.path(), &["client-bob".into(), "0a:ff".into()]).unwrap();
    assert_eq!(added[0].1, bob.serial);
    assert_eq!(added[1].1, "aff");
    let after = list(tmp.path()).unwrap();
    assert!(
        after
            .iter()
            .find(|c| c.file == "client-bob.pem")
            .unwrap()
            .revoked
    );
    assert!(
        !after
            .iter()
            .find(|c| c.file == "admin-alice.pem")
            .unwrap()
            .revoked
    );
    let serials =
        croupier_registry::identity::read_revocations(&tmp.path().join(REVOKED_FILE)).unwrap();
    assert!(serials.contains(&bob.serial) && serials.contains("aff"));
    let err = revoke(tmp.path(), &["nobody".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("neither a certificate"), "{err}");
}
