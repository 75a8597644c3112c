//! Who is calling the console.
//!
//! - **Sessions.** `POST /api/login` with a user's name and password (checked against the
//!   argon2id hash in the store) sets the cookie `__Host-croupier_session`
//!   (HttpOnly, Secure, SameSite=Strict) and answers a CSRF token. A session ends after
//!   `session_idle` without a request, `session_max` after sign-in, at sign-out, and as soon
//!   as its user is removed or their password changes (each request reads the user record).
//! - **CSRF.** Every request that changes something (every method but GET/HEAD) made with the
//!   session cookie must carry the session's token in `X-CSRF-Token`, and an `Origin`, when
//!   sent, must be this host.
//! - **Tokens.** `Authorization: Bearer crt_<id>_<secret>`: the token record's role and scopes,
//!   until it expires or is revoked. No cookie, so no CSRF token either.
//! - **Rate limit.** After `max_login_failures` failures for a name or from an address within
//!   `login_lockout`, sign-ins for it are refused (429, `Retry-After`) until the oldest failure
//!   is that old. Every attempt is audited (`login`, with the outcome).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use croupier_control::audit::AuditRecord;
use croupier_registry::identity::Identity;
use croupier_registry::users::{self, TokenRecord, UserRecord};
use parking_lot::Mutex;
use rand::RngCore;
use serde::Deserialize;
use serde_json::json;
use sha2::Digest;
use subtle::ConstantTimeEq;

use crate::Console;
use crate::serve::Peer;

/// The session cookie's name. `__Host-` makes browsers refuse it unless it is Secure, for
/// path `/` and without a Domain.
pub const COOKIE: &str = "__Host-croupier_session";
/// The header carrying the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The caller of one request, put into its extensions by [`authenticate`].
#[derive(Clone, Debug)]
pub struct Principal {
    /// The identity the rpc handlers see.
    pub identity: Identity,
    /// `password` or `token`.
    pub via: &'static str,
}

struct Session {
    user: String,
    identity: Identity,
    csrf: String,
    created: Instant,
    last_seen: Instant,
    /// The user's `password_set_at_ms` at sign-in: a newer one ends the session.
    password_set_at_ms: i64,
}

/// Sessions and recent login failures. In memory: a session belongs to the
/// server that signed it in.
pub struct AuthState {
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
    idle: Duration,
    max: Duration,
    max_failures: usize,
    lockout: Duration,
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

fn digest(text: &str) -> String {
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

impl AuthState {
    pub(crate) fn new(config: &crate::ConsoleConfig) -> AuthState {
        AuthState {
            sessions: Mutex::default(),
            failures: Mutex::default(),
            idle: config.session_idle,
            max: config.session_max,
            max_failures: config.max_login_failures.max(1) as usize,
            lockout: config.login_lockout,
        }
    }

    /// Seconds until `keys` may try again, when one of them is locked.
    fn locked_for(&self, keys: &[String]) -> Option<u64> {
        let now = Instant::now();
        let mut failures = self.failures.lock();
        let mut wait = None;
        for key in keys {
            if let Some(q) = failures.get_mut(key) {
                while q
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= self.lockout)
                {
                    q.pop_front();
                }
                if q.len() >= self.max_failures
                    && let Some(first) = q.front()
                {
                    let left = self.lockout.saturating_sub(now.duration_since(*first));
                    wait = Some(wait.unwrap_or(0).max(left.as_secs() + 1));
                }
            }
        }
        failures.retain(|_, q| !q.is_empty());
        wait
    }

    fn fail(&self, keys: &[String]) {
        let mut failures = self.failures.lock();
        for key in keys {
            failures
                .entry(key.clone())
                .or_default()
                .push_back(Instant::now());
        }
    }

    fn open(&self, user: &UserRecord, identity: Identity) -> (String, String) {
        let id = random_hex(32);
        let csrf = random_hex(32);
        let now = Instant::now();
        let mut sessions = self.sessions.lock();
        sessions.retain(|_, s| !self.expired(s, now));
        sessions.insert(
            digest(&id),
            Session {
                user: user.name.clone(),
                identity,
                csrf: csrf.clone(),
                created: now,
                last_seen: now,
                password_set_at_ms: user.password_set_at_ms,
            },
        );
        (id, csrf)
    }

    fn expired(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.last_seen) >= self.idle || now.duration_since(s.created) >= self.max
    }
}

/// An error answer: `{"code": ..., "message": ...}` with an HTTP status.
pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"code": code, "message": message.into()})),
    )
        .into_response()
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// The answer when users or tokens cannot be read.
fn store_unavailable(e: &croupier_registry::store::StoreError) -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "UNAVAILABLE",
        format!("the store cannot be read: {e}"),
    )
}

async fn read_user(console: &Console, name: &str) -> Result<Option<UserRecord>, Response> {
    if croupier_registry::ids::check_id("user", name).is_err() {
        return Ok(None);
    }
    match console.backend.store.get(&users::user_key(name)).await {
        Ok(Some(kv)) => Ok(serde_json::from_slice(&kv.value).ok()),
        Ok(None) => Ok(None),
        Err(e) => Err(store_unavailable(&e)),
    }
}

async fn token_principal(console: &Console, bearer: &str) -> Result<Principal, Response> {
    let unauthorized = |why: &str| {
        error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            format!("{why}; create one with `croupier token create`"),
        )
    };
    let Some((id, secret)) = users::split_token(bearer) else {
        return Err(unauthorized("the bearer token is not a Croupier token"));
    };
    let record: TokenRecord = match console.backend.store.get(&users::token_key(id)).await {
        Ok(Some(kv)) => serde_json::from_slice(&kv.value)
            .map_err(|_| unauthorized("the token's record is unreadable"))?,
        Ok(None) => return Err(unauthorized("the token is unknown or revoked")),
        Err(e) => return Err(store_unavailable(&e)),
    };
    if !record.secret_matches(secret) {
        return Err(unauthorized("the token is unknown or revoked"));
    }
    if record.expires_at_ms <= croupier_registry::model::now_ms() {
        return Err(unauthorized("the token expired"));
    }
    let identity = users::identity_of(&record.role, &record.name, &record.scopes)
        .map_err(|e| unauthorized(&format!("the token's identity is invalid: {e}")))?;
    Ok(Principal {
        identity,
        via: "token",
    })
}

/// True unless the request names an `Origin` other than the host it was sent to (the
/// `Host` header in HTTP/1.1, the `:authority` in HTTP/2).
fn same_origin(headers: &HeaderMap, uri: &Uri) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    origin == format!("https://{host}")
}

/// Middleware for `/api/*` but sign-in: finds the [`Principal`] or answers 401; checks the
/// CSRF token and origin of cookie-authenticated requests that change something.
pub async fn authenticate(
    State(console): State<Arc<Console>>,
    mut req: Request,
    next: Next,
) -> Response {
    let headers = req.headers();
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        let bearer = auth
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .trim()
            .to_string();
        match token_principal(&console, &bearer).await {
            Ok(p) => {
                req.extensions_mut().insert(p);
                return next.run(req).await;
            }
            Err(r) => return r,
        }
    }
    let Some(sid) = cookie_value(headers) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "not signed in: sign in, or send an API token as `Authorization: Bearer ...`",
        );
    };
    let changes = !matches!(*req.method(), Method::GET | Method::HEAD);
    let key = digest(&sid);
    let (user, identity, csrf, set_at) = {
        let now = Instant::now();
        let mut sessions = console.auth.sessions.lock();
        let Some(s) = sessions.get_mut(&key) else {
            return error(
                StatusCode::UNAUTHORIZED,
                "SESSION_EXPIRED",
                "the session ended or is unknown: sign in again",
            );
        };
        if console.auth.expired(s, now) {
            sessions.remove(&key);
            return error(
                StatusCode::UNAUTHORIZED,
                "SESSION_EXPIRED",
                "the session expired: sign in again",
            );
        }
        s.last_seen = now;
        (
            s.user.clone(),
            s.identity.clone(),
            s.csrf.clone(),
            s.password_set_at_ms,
        )
    };
    if changes {
        let sent = headers
            .get(CSRF_HEADER)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        if !bool::from(sent.ct_eq(csrf.as_bytes())) || !same_origin(headers, req.uri()) {
            return error(
                StatusCode::FORBIDDEN,
                "CSRF",
                "missing or wrong X-CSRF-Token (or a foreign Origin): reload the console",
            );
        }
    }
    match read_user(&console, &user).await {
        Ok(Some(u)) if u.password_set_at_ms == set_at => {
            // The role or scopes may have changed since sign-in: the record decides.
            let identity = users::identity_of(&u.role, &u.name, &u.scopes).unwrap_or(identity);
            req.extensions_mut().insert(Principal {
                identity,
                via: "password",
            });
            next.run(req).await
        }
        Ok(_) => {
            console.auth.sessions.lock().remove(&key);
            error(
                StatusCode::UNAUTHORIZED,
                "SESSION_EXPIRED",
                "the user was removed or their password changed: sign in again",
            )
        }
        Err(r) => r,
    }
}

/// `POST /api/login` body.
#[derive(Deserialize)]
pub struct Login {
    /// The user name.
    #[serde(default)]
    pub user: String,
    /// The password.
    #[serde(default)]
    pub password: String,
}

/// `POST /api/login`.
pub async fn login(
    State(console): State<Arc<Console>>,
    axum::Extension(peer): axum::Extension<Peer>,
    uri: Uri,
    headers: HeaderMap,
    Json(body): Json<Login>,
) -> Response {
    if !same_origin(&headers, &uri) {
        return error(
            StatusCode::FORBIDDEN,
            "CSRF",
            "sign-in from a foreign origin",
        );
    }
    let name = body.user.clone();
    let keys = [
        format!("user:{name}"),
        format!("ip:{}", ip_key(peer.0.ip())),
    ];
    let outcome = if let Some(wait) = console.auth.locked_for(&keys) {
        Err((
            error(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMITED",
                format!("too many failed sign-ins; try again in {wait} s"),
            ),
            "rate_limited",
            Some(wait),
        ))
    } else {
        check_login(&console, &body).await
    };
    let audit_outcome = match &outcome {
        Ok(_) => "ok",
        Err((_, why, _)) => why,
    };
    console
        .backend
        .audit
        .record(
            AuditRecord::new(format!("console:{name}"), "login", name.clone())
                .details(json!({
                    "from": peer.0.ip().to_string(),
                        "outcome": audit_outcome,
                }))
                .outcome(audit_outcome),
        )
        .await;
    match outcome {
        Ok((user, identity)) => {
            let (sid, csrf) = console.auth.open(&user, identity.clone());
            let cookie = format!("{COOKIE}={sid}; Path=/; HttpOnly; Secure; SameSite=Strict");
            let mut resp = Json(me_json(&identity, "password", &csrf)).into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            resp
        }
        Err((mut resp, why, wait)) => {
            if why == "bad_credentials" {
                console.auth.fail(&keys);
            }
            if let Some(wait) = wait
                && let Ok(v) = HeaderValue::from_str(&wait.to_string())
            {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            resp
        }
    }
}

type LoginFailure = (Response, &'static str, Option<u64>);

async fn check_login(
    console: &Console,
    body: &Login,
) -> Result<(UserRecord, Identity), LoginFailure> {
    let bad = || {
        (
            error(
                StatusCode::UNAUTHORIZED,
                "BAD_CREDENTIALS",
                "wrong user name or password",
            ),
            "bad_credentials",
            None,
        )
    };
    let user = read_user(console, &body.user)
        .await
        .map_err(|r| (r, "unavailable", None))?;
    {
        // The hash is checked even for an unknown user, so timing does not tell names apart.
        let hash = user.as_ref().map(|u| u.password_hash.clone());
        let password = body.password.clone();
        let ok = tokio::task::spawn_blocking(move || {
            static UNKNOWN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
            let hash = hash.unwrap_or_else(|| {
                UNKNOWN
                    .get_or_init(|| users::hash_password("no user has this").unwrap_or_default())
                    .clone()
            });
            users::verify_password(&password, &hash)
        })
        .await
        .unwrap_or(false);
        if !ok {
            return Err(bad());
        }
    }
    let user = user.ok_or_else(bad)?;
    let identity = users::identity_of(&user.role, &user.name, &user.scopes).map_err(|e| {
        (
            error(StatusCode::FORBIDDEN, "BAD_USER", e),
            "bad_user",
            None,
        )
    })?;
    Ok((user, identity))
}

/// An IPv6 source is limited by its /64, as one host usually holds the whole prefix.
fn ip_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

fn me_json(identity: &Identity, via: &str, csrf: &str) -> serde_json::Value {
    json!({
        "name": identity.name,
        "role": identity.role.as_str(),
        "identity": identity.uri(),
        "scopes": identity.scopes.list().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "via": via,
        "csrf": csrf,
    })
}

/// `GET /api/me`: who is signed in, with the session's CSRF token.
pub async fn me(
    State(console): State<Arc<Console>>,
    axum::Extension(p): axum::Extension<Principal>,
    headers: HeaderMap,
) -> Response {
    let csrf = cookie_value(&headers)
        .and_then(|sid| {
            console
                .auth
                .sessions
                .lock()
                .get(&digest(&sid))
                .map(|s| s.csrf.clone())
        })
        .unwrap_or_default();
    Json(me_json(&p.identity, p.via, &csrf)).into_response()
}

/// `POST /api/logout`: ends the session.
pub async fn logout(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if let Some(sid) = cookie_value(&headers) {
        console.auth.sessions.lock().remove(&digest(&sid));
    }
    let mut resp = Json(json!({"ok": true})).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "__Host-croupier_session=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0",
        ),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_lock_a_name_until_the_oldest_is_old_enough() {
        let state = AuthState::new(&crate::ConsoleConfig {
            max_login_failures: 2,
            login_lockout: Duration::from_millis(200),
            ..crate::ConsoleConfig::default()
        });
        let keys = ["user:a".to_string()];
        assert_eq!(state.locked_for(&keys), None);
        state.fail(&keys);
        assert_eq!(state.locked_for(&keys), None);
        state.fail(&keys);
        assert!(state.locked_for(&keys).is_some());
        assert_eq!(state.locked_for(&["user:b".to_string()]), None);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(state.locked_for(&keys), None);
    }

    #[test]
    fn ipv6_sources_share_their_prefix() {
        let a: IpAddr = "2001:db8:1:2::5".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_eq!(ip_key("10.0.0.1".parse().unwrap()), "10.0.0.1");
    }
}
