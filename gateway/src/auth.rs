//! Player authentication: what the LOGIN token is checked against.
//!
//! **Signed tokens** (`auth.mode = "hmac"`): `v1.<claims>.<signature>`, where `<claims>` is the
//! base64url (no padding) of a JSON object `{"sub": player_id, "exp": unix_seconds, "attrs":
//! {k: v}}` and `<signature>` the base64url of HMAC-SHA256 under the configured key over
//! `v1.<claims>`. A token is good when the signature matches (compared in constant time), `exp`
//! is in the future and `sub` is a valid player id. `croupier gateway token` and [`sign`] make
//! them; any backend that knows the key can too.
//!
//! **A mesh function** (`auth.mode = "mesh"`, default `auth.verify`): invoked with
//! `{"token", "client", "gateway_id"}`; a success answers `{"player_id": …, "attrs": {…}}`, and
//! a handler failure (any `success=false`) refuses the login with its message.
//!
//! Player attributes (`attrs`) are kept with the session; `gateway.broadcast` filters on them.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::GatewayError;
use crate::mesh::Mesh;

/// Who a token says the player is.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PlayerIdentity {
    /// The player id.
    pub player_id: String,
    /// Attributes from the token or the verification function (region, guild…).
    pub attrs: HashMap<String, String>,
}

/// The claims of a signed token.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The player id.
    pub sub: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Attributes.
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub attrs: HashMap<String, String>,
}

const VERSION: &str = "v1";

/// True for a valid player id: `[A-Za-z0-9._:@-]`, 1–128 characters.
pub fn valid_player_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '-'))
}

/// Unix seconds now.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn mac(key: &[u8], signed: &str) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    m.update(signed.as_bytes());
    m
}

/// Makes a signed token for `claims` under `key`.
pub fn sign(key: &[u8], claims: &Claims) -> String {
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let signed = format!("{VERSION}.{body}");
    let sig = URL_SAFE_NO_PAD.encode(mac(key, &signed).finalize().into_bytes());
    format!("{signed}.{sig}")
}

/// Checks a signed token under `key` at time `now` (Unix seconds).
pub fn verify_signed(key: &[u8], token: &str, now: u64) -> Result<PlayerIdentity, GatewayError> {
    let refuse = |why: &str| Err(GatewayError::Unauthenticated(why.to_string()));
    let mut parts = token.splitn(3, '.');
    let (Some(version), Some(body), Some(sig)) = (parts.next(), parts.next(), parts.next()) else {
        return refuse("not a signed token (expected v1.<claims>.<signature>)");
    };
    if version != VERSION {
        return refuse("unknown token version");
    }
    let Ok(sig) = URL_SAFE_NO_PAD.decode(sig) else {
        return refuse("the signature is not base64url");
    };
    // `verify_slice` compares in constant time.
    if mac(key, &format!("{version}.{body}"))
        .verify_slice(&sig)
        .is_err()
    {
        return refuse("bad signature");
    }
    let Ok(raw) = URL_SAFE_NO_PAD.decode(body) else {
        return refuse("the claims are not base64url");
    };
    let claims: Claims = match serde_json::from_slice(&raw) {
        Ok(c) => c,
        Err(_) => return refuse("the claims are not {sub, exp, attrs}"),
    };
    if claims.exp <= now {
        return refuse("the token has expired");
    }
    if !valid_player_id(&claims.sub) {
        return refuse("the token's player id is not valid");
    }
    Ok(PlayerIdentity {
        player_id: claims.sub,
        attrs: claims.attrs,
    })
}

/// Checks LOGIN tokens, the configured way.
#[derive(Clone)]
pub enum Verifier {
    /// Signed tokens under this key.
    Hmac(Vec<u8>),
    /// A mesh function.
    Mesh {
        /// The mesh.
        mesh: Mesh,
        /// The function.
        function: String,
        /// Deadline of a call.
        timeout: std::time::Duration,
        /// Our agent id (sent along).
        gateway_id: String,
    },
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verifier::Hmac(_) => f.write_str("Verifier::Hmac(<key>)"),
            Verifier::Mesh { function, .. } => write!(f, "Verifier::Mesh({function})"),
        }
    }
}

impl Verifier {
    /// Checks `token` (from a client describing itself as `client`).
    pub async fn verify(&self, token: &str, client: &str) -> Result<PlayerIdentity, GatewayError> {
        match self {
            Verifier::Hmac(key) => verify_signed(key, token, now_unix()),
            Verifier::Mesh {
                mesh,
                function,
                timeout,
                gateway_id,
            } => {
                let payload = serde_json::json!({
                    "token": token, "client": client, "gateway_id": gateway_id,
                });
                let resp = mesh
                    .call_plain(function, payload, *timeout)
                    .await
                    .map_err(|s| {
                        GatewayError::Mesh(format!("{function}: {:?}: {}", s.code(), s.message()))
                    })?;
                if !resp.success {
                    return Err(GatewayError::Unauthenticated(format!(
                        "{}: {}",
                        resp.error_code, resp.error
                    )));
                }
                let v = croupier_proto::json::opt_struct_to_json(resp.result.as_ref());
                let player_id = v["player_id"].as_str().unwrap_or_default().to_string();
                if !valid_player_id(&player_id) {
                    return Err(GatewayError::Unauthenticated(format!(
                        "{function} answered no valid player_id"
                    )));
                }
                let attrs = v["attrs"]
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .map(|(k, v)| {
                                let v = v.as_str().map(str::to_string).unwrap_or(v.to_string());
                                (k.clone(), v)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(PlayerIdentity { player_id, attrs })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sub: &str, exp: u64) -> Claims {
        Claims {
            sub: sub.into(),
            exp,
            attrs: HashMap::from([("region".to_string(), "eu".to_string())]),
        }
    }

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let t = sign(b"key", &claims("p-1", 1000));
        let id = verify_signed(b"key", &t, 999).unwrap();
        assert_eq!(id.player_id, "p-1");
        assert_eq!(id.attrs["region"], "eu");
        let e = verify_signed(b"key", &t, 1000).unwrap_err();
        assert_eq!(e.to_string(), "token refused: the token has expired");
    }

    #[test]
    fn forged_or_mangled_tokens_are_refused() {
        let t = sign(b"key", &claims("p-1", 1000));
        let wrong_key = verify_signed(b"other", &t, 1).unwrap_err();
        assert!(
            wrong_key.to_string().contains("bad signature"),
            "{wrong_key}"
        );
        // Claims swapped for another player's, signature kept.
        let forged_claims = sign(b"attacker", &claims("p-2", 1000));
        let body = forged_claims.split('.').nth(1).unwrap();
        let sig = t.split('.').nth(2).unwrap();
        let e = verify_signed(b"key", &format!("v1.{body}.{sig}"), 1).unwrap_err();
        assert!(e.to_string().contains("bad signature"), "{e}");
        for bad in ["", "v1", "v1.a", "v2.a.b", "v1.a.!!!", "garbage"] {
            assert!(verify_signed(b"key", bad, 1).is_err(), "{bad:?}");
        }
        // A well-signed token with a bad player id.
        let t = sign(b"key", &claims("bad/id", 1000));
        let e = verify_signed(b"key", &t, 1).unwrap_err();
        assert!(e.to_string().contains("player id"), "{e}");
    }

    #[test]
    fn player_ids() {
        assert!(valid_player_id("player-42"));
        assert!(valid_player_id("u:1@eu.x_y"));
        assert!(!valid_player_id(""));
        assert!(!valid_player_id("a/b"));
        assert!(!valid_player_id(&"x".repeat(129)));
    }
}
