//! Caller identities. Every Croupier certificate carries one SAN URI of the form
//! `spiffe://croupier/<role>/<name>`; this module parses it into an [`Identity`], caches the
//! result per certificate in an [`IdentityResolver`] so a request costs one hash lookup, and
//! provides the tonic interceptor that puts the caller's [`Identity`] into the request
//! extensions, where handlers read it back with [`caller`].

use parking_lot::Mutex;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Prefix shared by every Croupier identity URI.
pub const URI_PREFIX: &str = "spiffe://croupier/";

/// Longest name accepted in an identity.
pub const MAX_NAME_LEN: usize = crate::ids::MAX_ID_LEN;

/// How many certificates an [`IdentityResolver`] remembers before it starts over.
const CACHE_CAPACITY: usize = 4096;

/// What to tell a caller whose certificate carries no usable identity.
const FIX_HINT: &str = "issue it with `croupier certs init`";

/// The kind of party behind a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// An agent hosting functions; its name is the agent id.
    Agent,
    /// A client invoking functions.
    Client,
    /// An operator allowed to call admin rpcs.
    Admin,
    /// A Croupier server; used for server-to-server forwarding.
    Server,
}

impl Role {
    /// Every role, in a stable order.
    pub const ALL: [Role; 4] = [Role::Agent, Role::Client, Role::Admin, Role::Server];

    /// The role as it appears in an identity URI: `agent`, `client`, `admin` or `server`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Client => "client",
            Role::Admin => "admin",
            Role::Server => "server",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| IdentityError::UnknownRole(s.to_owned()))
    }
}

/// Why a certificate or URI does not yield an [`Identity`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The bytes are not a DER-encoded X.509 certificate.
    #[error("certificate is not valid X.509 DER: {0}")]
    BadCertificate(String),
    /// The certificate has no subject alternative name extension at all.
    #[error(
        "certificate has no subject alternative names, so it carries no \
         spiffe://croupier/<role>/<name> identity; {FIX_HINT}"
    )]
    NoSan,
    /// The certificate has SANs, but none is a valid Croupier identity URI.
    #[error(
        "certificate has no spiffe://croupier/<role>/<name> URI SAN (URIs found: {found}); \
         {FIX_HINT}"
    )]
    NoCroupierUri {
        /// The URI SANs that were present, comma separated, or `none`.
        found: String,
    },
    /// A role string is not one of `agent`, `client`, `admin`, `server`.
    #[error("unknown role {0:?}; expected one of agent, client, admin, server")]
    UnknownRole(String),
}

/// Who is calling: a role and a name, e.g. `agent/node-1`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The party's role.
    pub role: Role,
    /// The party's name; for agents this is the agent id. Matches `[A-Za-z0-9._-]{1,128}`.
    pub name: String,
}

/// True when `name` is 1–128 characters from `[A-Za-z0-9._-]`, the rule for identity names
/// (and every other Croupier id).
pub fn is_valid_name(name: &str) -> bool {
    crate::ids::check_id("name", name).is_ok()
}

impl Identity {
    /// Builds an identity; returns `None` when `name` breaks the `[A-Za-z0-9._-]{1,128}` rule.
    pub fn new(role: Role, name: impl Into<String>) -> Option<Identity> {
        let name = name.into();
        is_valid_name(&name).then_some(Identity { role, name })
    }

    /// The identity as a SAN URI: `spiffe://croupier/<role>/<name>`.
    pub fn uri(&self) -> String {
        self.to_string()
    }

    /// Parses `spiffe://croupier/<role>/<name>`; `None` for any other shape, an unknown role
    /// or a name outside `[A-Za-z0-9._-]{1,128}`.
    pub fn parse_uri(uri: &str) -> Option<Identity> {
        let rest = uri.strip_prefix(URI_PREFIX)?;
        let (role, name) = rest.split_once('/')?;
        Identity::new(role.parse().ok()?, name)
    }

    /// Reads the identity of a DER-encoded X.509 certificate: the first SAN URI that parses
    /// with [`Identity::parse_uri`].
    pub fn from_cert_der(der: &[u8]) -> Result<Identity, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::BadCertificate(format!("subject alternative name: {e}")))?
            .ok_or(IdentityError::NoSan)?;
        let uris: Vec<&str> = san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            })
            .collect();
        if let Some(identity) = uris.iter().find_map(|uri| Identity::parse_uri(uri)) {
            return Ok(identity);
        }
        Err(IdentityError::NoCroupierUri {
            found: if uris.is_empty() {
                "none".to_owned()
            } else {
                uris.join(", ")
            },
        })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{URI_PREFIX}{}/{}", self.role, self.name)
    }
}

/// Maps certificates to identities, remembering up to ~4096 certificates (the cache is cleared
/// when full). Clones share the cache.
#[derive(Clone, Default)]
pub struct IdentityResolver {
    cache: Arc<Mutex<HashMap<Vec<u8>, Identity>>>,
}

impl fmt::Debug for IdentityResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityResolver")
            .field("cached", &self.lock().len())
            .finish()
    }
}

impl IdentityResolver {
    /// A resolver with an empty cache.
    pub fn new() -> IdentityResolver {
        IdentityResolver::default()
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, HashMap<Vec<u8>, Identity>> {
        // The map is always left consistent, so a panic elsewhere while holding the lock does
        // not make its contents wrong.
        self.cache.lock()
    }

    /// The identity of a DER-encoded certificate, from the cache when it was seen before.
    /// Failures are not cached.
    pub fn resolve(&self, cert_der: &[u8]) -> Result<Identity, IdentityError> {
        if let Some(identity) = self.lock().get(cert_der) {
            return Ok(identity.clone());
        }
        let identity = Identity::from_cert_der(cert_der)?;
        let mut cache = self.lock();
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(cert_der.to_vec(), identity.clone());
        Ok(identity)
    }

    /// A tonic interceptor: resolves the peer's leaf certificate and inserts its [`Identity`]
    /// into the request extensions. A request without a client certificate, or whose
    /// certificate has no Croupier identity, is rejected with `UNAUTHENTICATED`.
    ///
    /// Use it as `Service::with_interceptor(svc, move |r| resolver.intercept(r))`.
    #[allow(clippy::result_large_err)] // tonic's interceptor signature.
    pub fn intercept(&self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let certs = req.peer_certs();
        let leaf = certs
            .as_ref()
            .and_then(|c| c.first())
            .map(std::convert::AsRef::as_ref);
        self.attach(req, leaf)
    }

    /// Resolves `leaf` and attaches it to `req`; split from [`Self::intercept`] so it can be
    /// tested without a TLS connection.
    #[allow(clippy::result_large_err)]
    fn attach<T>(
        &self,
        mut req: tonic::Request<T>,
        leaf: Option<&[u8]>,
    ) -> Result<tonic::Request<T>, tonic::Status> {
        let Some(leaf) = leaf else {
            return Err(tonic::Status::unauthenticated(format!(
                "no client certificate: Croupier requires mutual TLS; connect with a certificate \
                 carrying a spiffe://croupier/<role>/<name> URI SAN ({FIX_HINT})"
            )));
        };
        let identity = self.resolve(leaf).map_err(|e| {
            tonic::Status::unauthenticated(format!("client certificate rejected: {e}"))
        })?;
        req.extensions_mut().insert(identity);
        Ok(req)
    }
}

/// The caller's [`Identity`], as put into the request extensions by
/// [`IdentityResolver::intercept`]; `UNAUTHENTICATED` when it is missing (the service was
/// mounted without the interceptor, or the request did not come over mutual TLS).
#[allow(clippy::result_large_err)] // tonic handlers return `Status`.
pub fn caller<T>(req: &tonic::Request<T>) -> Result<Identity, tonic::Status> {
    req.extensions().get::<Identity>().cloned().ok_or_else(|| {
        tonic::Status::unauthenticated(
            "caller identity unknown: the request did not come over mutual TLS with a \
             spiffe://croupier/<role>/<name> client certificate",
        )
    })
}

#[cfg(test)]
mod tests {
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
            Identity {
                role: Role::Admin,
                name: "alice".into()
            }
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
        assert_eq!(clone.lock().len(), 1);
        assert_eq!(clone.resolve(&der).unwrap(), first);
        assert_eq!(first.uri(), "spiffe://croupier/agent/a1");
        assert_eq!(resolver.lock().len(), 1);

        // Failures are reported and not cached.
        let bad = cert_with_sans(vec![]);
        assert_eq!(resolver.resolve(&bad).unwrap_err(), IdentityError::NoSan);
        assert_eq!(resolver.lock().len(), 1);
    }

    #[test]
    fn resolver_starts_over_when_full() {
        let resolver = IdentityResolver::new();
        let filler = Identity::new(Role::Client, "c").unwrap();
        {
            let mut cache = resolver.lock();
            for i in 0..CACHE_CAPACITY {
                cache.insert(i.to_le_bytes().to_vec(), filler.clone());
            }
        }
        let der = cert_with_sans(vec![uri("spiffe://croupier/server/s1")]);
        assert_eq!(resolver.resolve(&der).unwrap().name, "s1");
        assert_eq!(resolver.lock().len(), 1);
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
}
