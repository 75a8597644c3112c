//! Caller identities. Every Croupier certificate carries one SAN URI of the form
//! `spiffe://croupier/<role>/<name>`, and may carry scope URIs `urn:croupier:scope:GAME/ENV`
//! (`GAME/*` for every environment of a game) that bind it to the games and environments it may
//! serve or see; a certificate without scope URIs is unscoped and sees everything. This module
//! parses them into an [`Identity`], caches the result per certificate in an
//! [`IdentityResolver`] so a request costs one hash lookup, refuses certificates whose serial is
//! on the resolver's revocation list, and provides the tonic interceptor that puts the caller's
//! [`Identity`] into the request extensions, where handlers read it back with [`caller`].

mod revocation;
pub use revocation::{parse_revocations, read_revocations, watch_revocations};

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Prefix shared by every Croupier identity URI.
pub const URI_PREFIX: &str = "spiffe://croupier/";

/// Prefix of a scope URI SAN: `urn:croupier:scope:GAME/ENV` or `urn:croupier:scope:GAME/*`.
pub const SCOPE_URI_PREFIX: &str = "urn:croupier:scope:";

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
    /// The certificate's serial is on the server's revocation list.
    #[error(
        "certificate of {identity} (serial {serial}) is revoked; ask an admin for a new \
         certificate"
    )]
    Revoked {
        /// The identity the certificate names.
        identity: String,
        /// Its serial, as normalized hex.
        serial: String,
    },
    /// A role string is not one of `agent`, `client`, `admin`, `server`.
    #[error("unknown role {0:?}; expected one of agent, client, admin, server")]
    UnknownRole(String),
}

/// Who is calling: a role and a name, e.g. `agent/node-1`, and the scopes its certificate
/// binds it to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The party's role.
    pub role: Role,
    /// The party's name; for agents this is the agent id. Matches `[A-Za-z0-9._-]{1,128}`.
    pub name: String,
    /// The games and environments the certificate is bound to; empty: unscoped.
    pub scopes: Scopes,
}

/// One game and environment, or every environment of a game (`env` is `None`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    /// The game id.
    pub game: String,
    /// The environment; `None` for every environment of the game.
    pub env: Option<String>,
}

impl Scope {
    /// Parses `GAME/ENV`, `GAME/*` or `GAME` (the same as `GAME/*`); ids follow the
    /// `[A-Za-z0-9._-]{1,128}` rule.
    pub fn parse(text: &str) -> Result<Scope, String> {
        let (game, env) = text.split_once('/').unwrap_or((text, "*"));
        crate::ids::check_id("scope game", game)?;
        let env = if env == "*" {
            None
        } else {
            crate::ids::check_id("scope env", env)?;
            Some(env.to_owned())
        };
        Ok(Scope {
            game: game.to_owned(),
            env,
        })
    }

    /// True when the scope covers `game`/`env`.
    pub fn covers(&self, game: &str, env: &str) -> bool {
        self.game == game && self.env.as_deref().is_none_or(|e| e == env)
    }

    /// The scope as a SAN URI: `urn:croupier:scope:GAME/ENV`.
    pub fn uri(&self) -> String {
        format!("{SCOPE_URI_PREFIX}{self}")
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.game, self.env.as_deref().unwrap_or("*"))
    }
}

/// The scopes of a certificate, sorted; empty means unscoped (every game and environment), so
/// certificates issued before scopes existed keep working. Shared, so cloning an [`Identity`]
/// per request does not copy them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Scopes(Arc<[Scope]>);

impl Scopes {
    /// Unscoped: every game and environment.
    pub fn all() -> Scopes {
        Scopes(Arc::new([]))
    }

    /// The given scopes, sorted and without duplicates.
    pub fn new(mut scopes: Vec<Scope>) -> Scopes {
        scopes.sort();
        scopes.dedup();
        Scopes(scopes.into())
    }

    /// True for an unscoped certificate.
    pub fn is_unscoped(&self) -> bool {
        self.0.is_empty()
    }

    /// True when `game`/`env` is inside the scopes (always, when unscoped).
    pub fn allows(&self, game: &str, env: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|s| s.covers(game, env))
    }

    /// The scopes, sorted.
    pub fn list(&self) -> &[Scope] {
        &self.0
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("unscoped");
        }
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{s}")?;
        }
        Ok(())
    }
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
        is_valid_name(&name).then_some(Identity {
            role,
            name,
            scopes: Scopes::all(),
        })
    }

    /// The same identity bound to `scopes`.
    pub fn with_scopes(mut self, scopes: Scopes) -> Identity {
        self.scopes = scopes;
        self
    }

    /// PERMISSION_DENIED-style refusal text when `game`/`env` is outside the scopes, naming
    /// them; `None` when allowed.
    pub fn out_of_scope(&self, action: &str, game: &str, env: &str) -> Option<String> {
        (!self.scopes.allows(game, env)).then(|| {
            format!(
                "identity {self} is scoped to {} and may not {action} in game {game:?} env \
                 {env:?}; issue a certificate with that scope (`croupier certs init --scope \
                 {game}/{env}`)",
                self.scopes
            )
        })
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
    /// with [`Identity::parse_uri`], bound to the certificate's scope URIs.
    pub fn from_cert_der(der: &[u8]) -> Result<Identity, IdentityError> {
        Ok(Self::from_cert_der_with_serial(der)?.0)
    }

    /// [`Self::from_cert_der`] and the certificate's serial number as lowercase hex (no
    /// leading zeros, no colons: the form revocation lists are compared in).
    pub fn from_cert_der_with_serial(der: &[u8]) -> Result<(Identity, String), IdentityError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        let serial = normalize_serial(&cert.raw_serial_as_string());
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
            let mut scopes = Vec::new();
            for uri in &uris {
                if let Some(text) = uri.strip_prefix(SCOPE_URI_PREFIX) {
                    scopes.push(Scope::parse(text).map_err(|e| {
                        IdentityError::BadCertificate(format!("scope URI {uri:?}: {e}"))
                    })?);
                }
            }
            return Ok((identity.with_scopes(Scopes::new(scopes)), serial));
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

/// A certificate serial as revocation lists compare it: lowercase hex without separators or
/// leading zeros (`"0A:1b"` → `"a1b"`).
pub fn normalize_serial(text: &str) -> String {
    let hex: String = text
        .chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let trimmed = hex.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// What an [`IdentityResolver`] keeps under one lock, so a revocation and the cache never
/// disagree: certificates are only cached after the revocation check, and replacing the list
/// empties the cache.
#[derive(Default)]
struct ResolverState {
    /// Certificate DER → its identity; never holds a revoked certificate.
    certs: HashMap<Vec<u8>, Identity>,
    /// Revoked serials, normalized.
    revoked: HashSet<String>,
}

/// Maps certificates to identities, remembering up to ~4096 certificates (the cache is cleared
/// when full), and refuses certificates whose serial is revoked ([`Self::set_revoked`]).
/// Clones share the cache and the revocation list.
#[derive(Clone)]
pub struct IdentityResolver {
    state: Arc<Mutex<ResolverState>>,
    /// Counts revocation list loads, for streams that outlive the check of their first request.
    loads: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for IdentityResolver {
    fn default() -> Self {
        IdentityResolver {
            state: Arc::default(),
            loads: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }
}

impl fmt::Debug for IdentityResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        f.debug_struct("IdentityResolver")
            .field("cached", &st.certs.len())
            .field("revoked", &st.revoked.len())
            .finish()
    }
}

impl IdentityResolver {
    /// A resolver with an empty cache.
    pub fn new() -> IdentityResolver {
        IdentityResolver::default()
    }

    /// Replaces the revoked serials (normalized with [`normalize_serial`]) and empties the
    /// cache; takes effect on the next request.
    pub fn set_revoked(&self, serials: HashSet<String>) {
        {
            let mut st = self.lock();
            st.revoked = serials;
            st.certs.clear();
        }
        self.loads.send_modify(|n| *n += 1);
    }

    /// Resolves when a revocation list loaded from now on revokes `cert_der`: a long-lived
    /// stream (an agent's tunnel) opened before the revocation ends with it. Never resolves
    /// for a certificate that is not revoked.
    pub async fn revoked_later(&self, cert_der: &[u8]) -> IdentityError {
        let mut loads = self.loads.subscribe();
        loop {
            if loads.changed().await.is_err() {
                return std::future::pending().await;
            }
            if let Err(e @ IdentityError::Revoked { .. }) = self.resolve(cert_der) {
                return e;
            }
        }
    }

    /// How many serials are revoked.
    pub fn revoked_count(&self) -> usize {
        self.lock().revoked.len()
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, ResolverState> {
        // The state is always left consistent, so a panic elsewhere while holding the lock
        // does not make its contents wrong.
        self.state.lock()
    }

    /// The identity of a DER-encoded certificate, from the cache when it was seen before.
    /// Failures (revoked certificates included) are not cached.
    pub fn resolve(&self, cert_der: &[u8]) -> Result<Identity, IdentityError> {
        if let Some(identity) = self.lock().certs.get(cert_der) {
            return Ok(identity.clone());
        }
        let (identity, serial) = Identity::from_cert_der_with_serial(cert_der)?;
        let mut st = self.lock();
        if st.revoked.contains(&serial) {
            return Err(IdentityError::Revoked {
                identity: identity.to_string(),
                serial,
            });
        }
        if st.certs.len() >= CACHE_CAPACITY {
            st.certs.clear();
        }
        st.certs.insert(cert_der.to_vec(), identity.clone());
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
mod tests;
