//! Tests of identities, scopes and the resolver.

use super::*;

fn cert_with_sans(sans: Vec<rcgen::SanType>) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = sans;
    params.self_signed(&key).unwrap().der().to_vec()
}

fn uri(s: &str) -> rcgen::SanType {
    rcgen::SanType::URI(s.try_into().unwrap())
}

fn dns(s: &str) -> rcgen::SanType {
    rcgen::SanType::DnsName(s.try_into().unwrap())
}

#[test]
fn role_round_trips() {
    for role in Role::ALL {
        assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        assert_eq!(role.to_string(), role.as_str());
    }
    assert_eq!(
        "root".parse::<Role>().unwrap_err().to_string(),
        "unknown role \"root\"; expected one of agent, client, admin, server"
    );
}

#[test]
fn parse_uri_accepts_valid_identities() {
    let id = Identity::parse_uri("spiffe://croupier/agent/node-1.eu_west").unwrap();
    assert_eq!(id.role, Role::Agent);
    assert_eq!(id.name, "node-1.eu_west");
    assert_eq!(id.uri(), "spiffe://croupier/agent/node-1.eu_west");
    assert_eq!(id.to_string(), id.uri());
    for role in Role::ALL {
        let uri = format!("spiffe://croupier/{role}/x");
        assert_eq!(Identity::parse_uri(&uri).unwrap().role, role);
    }
    let long = format!("spiffe://croupier/client/{}", "a".repeat(128));
    assert!(Identity::parse_uri(&long).is_some());
}

#[test]
fn parse_uri_rejects_everything_else() {
    for bad in [
        "",
        "spiffe://croupier/",
        "spiffe://croupier/agent",
        "spiffe://croupier/agent/",
        "spiffe://croupier/agent/a/b",
        "spiffe://croupier/root/a",
        "spiffe://croupier/Agent/a",
        "spiffe://other/agent/a",
        "https://croupier/agent/a",
        "spiffe://croupier/agent/a b",
        "spiffe://croupier/agent/é",
        "spiffe://croupier/agent/a%2Fb",
    ] {
        assert_eq!(Identity::parse_uri(bad), None, "{bad:?}");
    }
    let long = format!("spiffe://croupier/client/{}", "a".repeat(129));
    assert_eq!(Identity::parse_uri(&long), None);
}

#[test]
fn from_cert_der_reads_the_first_croupier_uri() {
    let der = cert_with_sans(vec![
        dns("localhost"),
        uri("https://example.com/x"),
        uri("spiffe://croupier/admin/alice"),
        uri("spiffe://croupier/client/bob"),
    ]);
    assert_eq!(
        Identity::from_cert_der(&der).unwrap(),
        Identity::new(Role::Admin, "alice").unwrap()
    );
}

#[test]
fn from_cert_der_explains_what_is_missing() {
    let no_san = cert_with_sans(vec![]);
    let err = Identity::from_cert_der(&no_san).unwrap_err();
    assert_eq!(err, IdentityError::NoSan);
    assert!(err.to_string().contains("croupier certs init"), "{err}");

    let wrong = cert_with_sans(vec![dns("localhost"), uri("spiffe://other/agent/a")]);
    let err = Identity::from_cert_der(&wrong).unwrap_err();
    assert_eq!(
        err,
        IdentityError::NoCroupierUri {
            found: "spiffe://other/agent/a".into()
        }
    );
    assert!(
        err.to_string()
            .contains("no spiffe://croupier/<role>/<name> URI SAN")
    );

    let dns_only = cert_with_sans(vec![dns("localhost")]);
    assert_eq!(
        Identity::from_cert_der(&dns_only).unwrap_err(),
        IdentityError::NoCroupierUri {
            found: "none".into()
        }
    );

    assert!(matches!(
        Identity::from_cert_der(b"not a certificate").unwrap_err(),
        IdentityError::BadCertificate(_)
    ));
}

#[test]
fn resolver_caches_and_clones_share_the_cache() {
    let der = cert_with_sans(vec![uri("spiffe://croupier/agent/a1")]);
    let resolver = IdentityResolver::new();
    let first = resolver.resolve(&der).unwrap();
    let clone = resolver.clone();
    assert_eq!(clone.lock().certs.len(), 1);
    assert_eq!(clone.resolve(&der).unwrap(), first);
    assert_eq!(first.uri(), "spiffe://croupier/agent/a1");
    assert_eq!(resolver.lock().certs.len(), 1);

    // Failures are reported and not cached.
    let bad = cert_with_sans(vec![]);
    assert_eq!(resolver.resolve(&bad).unwrap_err(), IdentityError::NoSan);
    assert_eq!(resolver.lock().certs.len(), 1);
}

#[test]
fn resolver_starts_over_when_full() {
    let resolver = IdentityResolver::new();
    let filler = Identity::new(Role::Client, "c").unwrap();
    {
        let mut st = resolver.lock();
        for i in 0..CACHE_CAPACITY {
            st.certs.insert(i.to_le_bytes().to_vec(), filler.clone());
        }
    }
    let der = cert_with_sans(vec![uri("spiffe://croupier/server/s1")]);
    assert_eq!(resolver.resolve(&der).unwrap().name, "s1");
    assert_eq!(resolver.lock().certs.len(), 1);
}

#[test]
fn interceptor_attaches_the_identity() {
    let der = cert_with_sans(vec![uri("spiffe://croupier/client/bob")]);
    let resolver = IdentityResolver::new();
    let req = resolver
        .attach(tonic::Request::new(()), Some(der.as_slice()))
        .unwrap();
    assert_eq!(
        caller(&req).unwrap(),
        Identity::new(Role::Client, "bob").unwrap()
    );
}

#[test]
fn interceptor_rejects_missing_or_unusable_certificates() {
    let resolver = IdentityResolver::new();

    // A plain request has no TLS connect info at all.
    let status = resolver.intercept(tonic::Request::new(())).unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(status.message().contains("no client certificate"));
    assert!(status.message().contains("croupier certs init"));

    let der = cert_with_sans(vec![dns("localhost")]);
    let status = resolver
        .attach(tonic::Request::new(()), Some(der.as_slice()))
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(
        status
            .message()
            .contains("no spiffe://croupier/<role>/<name> URI SAN"),
        "{}",
        status.message()
    );
    assert!(status.message().contains("croupier certs init"));
}

#[test]
fn caller_without_interceptor_is_unauthenticated() {
    let status = caller(&tonic::Request::new(())).unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
}

#[test]
fn scopes_parse_cover_and_print() {
    let s = Scope::parse("tetris/prod").unwrap();
    assert!(s.covers("tetris", "prod"));
    assert!(!s.covers("tetris", "dev"));
    assert_eq!(s.uri(), "urn:croupier:scope:tetris/prod");
    let all_envs = Scope::parse("tetris").unwrap();
    assert_eq!(all_envs, Scope::parse("tetris/*").unwrap());
    assert!(all_envs.covers("tetris", "dev"));
    assert!(!all_envs.covers("chess", "dev"));
    for bad in ["", "/prod", "tetris/", "te tris/prod", "a/b/c"] {
        assert!(Scope::parse(bad).is_err(), "{bad:?}");
    }
    let scopes = Scopes::new(vec![all_envs.clone(), s.clone(), s.clone()]);
    assert_eq!(scopes.to_string(), "tetris/*, tetris/prod");
    assert!(scopes.allows("tetris", "qa") && !scopes.allows("chess", "qa"));
    assert!(Scopes::all().allows("chess", "qa"));
    assert_eq!(Scopes::all().to_string(), "unscoped");
}

#[test]
fn from_cert_der_reads_scopes_and_refuses_bad_ones() {
    let der = cert_with_sans(vec![
        uri("spiffe://croupier/agent/n1"),
        uri("urn:croupier:scope:g1/prod"),
        uri("urn:croupier:scope:g2/*"),
    ]);
    let id = Identity::from_cert_der(&der).unwrap();
    assert_eq!(id.scopes.to_string(), "g1/prod, g2/*");
    assert!(id.out_of_scope("register", "g1", "prod").is_none());
    let refusal = id.out_of_scope("register", "g1", "dev").unwrap();
    assert!(refusal.contains("scoped to g1/prod, g2/*"), "{refusal}");
    assert!(refusal.contains("--scope g1/dev"), "{refusal}");

    let bad = cert_with_sans(vec![
        uri("spiffe://croupier/agent/n1"),
        uri("urn:croupier:scope:g 1/prod"),
    ]);
    assert!(matches!(
        Identity::from_cert_der(&bad).unwrap_err(),
        IdentityError::BadCertificate(m) if m.contains("scope URI")
    ));
}

#[test]
fn serials_normalize() {
    assert_eq!(normalize_serial("0A:1b"), "a1b");
    assert_eq!(normalize_serial("00"), "0");
    assert_eq!(normalize_serial("  7F  "), "7f");
}

#[test]
fn the_resolver_refuses_revoked_serials() {
    let der = cert_with_sans(vec![uri("spiffe://croupier/client/bob")]);
    let (_, serial) = Identity::from_cert_der_with_serial(&der).unwrap();
    let resolver = IdentityResolver::new();
    assert!(resolver.resolve(&der).is_ok());
    resolver.set_revoked([serial.clone()].into_iter().collect());
    let err = resolver.resolve(&der).unwrap_err();
    assert_eq!(
        err,
        IdentityError::Revoked {
            identity: "spiffe://croupier/client/bob".into(),
            serial
        }
    );
    assert!(err.to_string().contains("is revoked"), "{err}");
    resolver.set_revoked(Default::default());
    assert!(resolver.resolve(&der).is_ok());
}
