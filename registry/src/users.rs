//! Console users and API tokens as stored. A user signs in to the console with a password,
//! kept only as an argon2id hash (PHC string); a token is a bearer secret for scripts, kept only
//! as its SHA-256 (it is 256 random bits, so a slow hash adds nothing). Both stand for the
//! identity `spiffe://croupier/<role>/<name>` with their scopes, so the policy, scope checks and
//! the audit treat them exactly like a certificate with the same role, name and scopes.
//!
//! They live outside the registry watch's prefix (`/croupier-users/`, `/croupier-tokens/`), so
//! no server's view carries password hashes; the console reads them when someone signs in.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use subtle::ConstantTimeEq;

use crate::identity::{Identity, Role, Scope, Scopes};

/// Prefix of the user records.
pub const USERS: &str = "/croupier-users/";
/// Prefix of the API token records.
pub const TOKENS: &str = "/croupier-tokens/";

/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest password accepted (argon2 hashes any length; this bounds the work per attempt).
pub const MAX_PASSWORD_CHARS: usize = 1024;
/// Prefix of every API token, so a leaked one is recognisable in logs and scanners.
pub const TOKEN_PREFIX: &str = "crt_";
/// Shortest token lifetime, in seconds.
pub const MIN_TOKEN_TTL_S: i64 = 60;
/// Longest token lifetime, in seconds (a year).
pub const MAX_TOKEN_TTL_S: i64 = 365 * 24 * 3600;

/// The store key of user `name`.
pub fn user_key(name: &str) -> String {
    format!("{USERS}{name}")
}

/// The store key of token `id`.
pub fn token_key(id: &str) -> String {
    format!("{TOKENS}{id}")
}

/// A console user as stored at `/croupier-users/{name}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserRecord {
    /// The user's name; the identity's name.
    pub name: String,
    /// `client` or `admin`.
    pub role: String,
    /// Scopes as `GAME/ENV` or `GAME/*`; empty: unscoped.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The argon2id hash of the password, as a PHC string.
    pub password_hash: String,
    /// Creation time, unix ms.
    pub created_at_ms: i64,
    /// When the password was last set, unix ms.
    pub password_set_at_ms: i64,
    /// Who last changed the record (identity URI).
    #[serde(default)]
    pub changed_by: String,
}

/// An API token as stored at `/croupier-tokens/{id}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    /// The public part of the token.
    pub id: String,
    /// A label; the identity's name.
    pub name: String,
    /// `client` or `admin`.
    pub role: String,
    /// Scopes as `GAME/ENV` or `GAME/*`; empty: unscoped.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// SHA-256 of the secret part, hex.
    pub secret_sha256: String,
    /// Creation time, unix ms.
    pub created_at_ms: i64,
    /// Expiry, unix ms.
    pub expires_at_ms: i64,
    /// Who created it (identity URI).
    pub created_by: String,
}

/// Parses a role a user or token may have: `client` or `admin` (agents and servers prove
/// themselves with certificates only).
pub fn parse_role(role: &str) -> Result<Role, String> {
    match role {
        "client" => Ok(Role::Client),
        "admin" => Ok(Role::Admin),
        other => Err(format!(
            "role {other:?} cannot be given to a user or token; use client or admin"
        )),
    }
}

/// Parses and normalises scopes (`GAME/ENV`, `GAME/*` or `GAME`).
pub fn parse_scopes(scopes: &[String]) -> Result<Vec<String>, String> {
    let mut parsed = scopes
        .iter()
        .map(|s| Scope::parse(s).map_err(|e| format!("scope {s:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    parsed.sort();
    parsed.dedup();
    Ok(parsed.iter().map(ToString::to_string).collect())
}

/// The identity a stored role, name and scopes stand for.
pub fn identity_of(role: &str, name: &str, scopes: &[String]) -> Result<Identity, String> {
    let role = parse_role(role)?;
    let identity = Identity::new(role, name).ok_or_else(|| format!("bad name {name:?}"))?;
    let scopes = scopes
        .iter()
        .map(|s| Scope::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(identity.with_scopes(Scopes::new(scopes)))
}

/// Checks a new password's length.
pub fn check_password(password: &str) -> Result<(), String> {
    let n = password.chars().count();
    if n < MIN_PASSWORD_CHARS {
        return Err(format!(
            "the password has {n} characters; use at least {MIN_PASSWORD_CHARS}"
        ));
    }
    if n > MAX_PASSWORD_CHARS {
        return Err(format!(
            "the password has {n} characters; at most {MAX_PASSWORD_CHARS} are accepted"
        ));
    }
    Ok(())
}

/// Hashes a password with argon2id (the crate's default parameters: 19 MiB, 2 passes) and a
/// random salt. Takes tens of milliseconds: call it off the async threads.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing the password: {e}"))
}

/// True when `password` matches the PHC `hash`. Takes tens of milliseconds.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// A new token: its id and the whole bearer string `crt_<id>_<secret>`.
pub fn new_token() -> (String, String) {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut id);
    rand::rng().fill_bytes(&mut secret);
    let id = hex::encode(id);
    let bearer = format!("{TOKEN_PREFIX}{id}_{}", hex::encode(secret));
    (id, bearer)
}

/// SHA-256 (hex) of a token's secret part.
pub fn secret_digest(secret: &str) -> String {
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// Splits a bearer token into its id and secret; `None` when it is not shaped like one.
pub fn split_token(bearer: &str) -> Option<(&str, &str)> {
    let rest = bearer.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 16 && secret.len() == 64).then_some((id, secret))
}

impl TokenRecord {
    /// True when `secret` is this token's, compared in constant time.
    pub fn secret_matches(&self, secret: &str) -> bool {
        let digest = secret_digest(secret);
        digest
            .as_bytes()
            .ct_eq(self.secret_sha256.as_bytes())
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("correct horse batterY", &hash));
        assert!(!verify_password("x", "not a hash"));
        assert!(check_password("short").unwrap_err().contains("at least 12"));
    }

    #[test]
    fn tokens_split_and_match() {
        let (id, bearer) = new_token();
        let (got_id, secret) = split_token(&bearer).unwrap();
        assert_eq!(got_id, id);
        let record = TokenRecord {
            id: id.clone(),
            name: "ci".into(),
            role: "client".into(),
            scopes: vec![],
            secret_sha256: secret_digest(secret),
            created_at_ms: 0,
            expires_at_ms: 1,
            created_by: String::new(),
        };
        assert!(record.secret_matches(secret));
        assert!(!record.secret_matches(&secret.replace('a', "b").replace('0', "1")));
        assert!(split_token("crt_short_x").is_none());
        assert!(split_token("Bearer xyz").is_none());
    }

    #[test]
    fn roles_and_scopes_are_checked() {
        assert!(parse_role("agent").unwrap_err().contains("client or admin"));
        assert_eq!(
            parse_scopes(&["g/prod".into(), "g".into(), "g/prod".into()]).unwrap(),
            vec!["g/*", "g/prod"]
        );
        let id = identity_of("admin", "alice", &["g/prod".into()]).unwrap();
        assert_eq!(id.uri(), "spiffe://croupier/admin/alice");
        assert!(id.scopes.allows("g", "prod") && !id.scopes.allows("g", "dev"));
    }
}
