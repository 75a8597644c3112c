//! Console users and API tokens: `PutUser`, `DeleteUser`, `ListUsers`, `CreateToken`,
//! `RevokeToken`, `ListTokens`. Admins only; every change is audited. Passwords are hashed
//! with argon2id on the blocking pool; tokens are stored as the SHA-256 of their secret.

use super::*;
use croupier_registry::store::{CasOutcome, Expect};
use croupier_registry::users::{self, TokenRecord, UserRecord};

impl ControlPlane {
    /// Records an audit entry for a user or token change with the outcome of `result`.
    async fn audit_account<T>(
        &self,
        who: &Identity,
        action: &'static str,
        target: &str,
        details: serde_json::Value,
        result: &Result<T, ControlError>,
    ) {
        self.audit
            .record(
                AuditRecord::new(who.uri(), action, target)
                    .outcome(match result {
                        Ok(_) => "ok".to_string(),
                        Err(e) => e.reason().to_string(),
                    })
                    .details(details),
            )
            .await;
    }

    /// Handles `PutUser`: creates a user or updates one's role, scopes or password.
    pub async fn put_user(
        &self,
        who: &Identity,
        req: pb::PutUserRequest,
    ) -> Result<pb::PutUserResponse, ControlError> {
        let details = serde_json::json!({
            "role": req.role,
            "scopes": req.scopes,
            "password_changed": !req.password.is_empty(),
        });
        let name = req.name.clone();
        let result = self.put_user_inner(who, req).await;
        self.audit_account(who, "put_user", &name, details, &result)
            .await;
        result
    }

    async fn put_user_inner(
        &self,
        who: &Identity,
        req: pb::PutUserRequest,
    ) -> Result<pb::PutUserResponse, ControlError> {
        super::governance::require_admin(who, "manage console users")?;
        self.audit.admit().map_err(ControlError::AuditUnavailable)?;
        check_id("user name", &req.name).map_err(ControlError::BadRequest)?;
        users::parse_role(&req.role).map_err(ControlError::BadRequest)?;
        let scopes = users::parse_scopes(&req.scopes).map_err(ControlError::BadRequest)?;
        let key = users::user_key(&req.name);
        let existing = self
            .store
            .get(&key)
            .await
            .map_err(ControlError::store("reading the user"))?;
        if existing.is_some() && req.create_only {
            return Err(ControlError::Conflict(format!(
                "user {:?} exists; change it with `croupier user passwd` or remove it first",
                req.name
            )));
        }
        let old: Option<UserRecord> = match &existing {
            Some(kv) => Some(serde_json::from_slice(&kv.value).map_err(|e| {
                ControlError::Internal(format!("stored user {:?} is unreadable: {e}", req.name))
            })?),
            None => None,
        };
        let now = now_ms();
        let (password_hash, password_set_at_ms) = if req.password.is_empty() {
            match &old {
                Some(u) => (u.password_hash.clone(), u.password_set_at_ms),
                None => {
                    return Err(ControlError::BadRequest(format!(
                        "user {:?} is new: give a password",
                        req.name
                    )));
                }
            }
        } else {
            users::check_password(&req.password).map_err(ControlError::BadRequest)?;
            let password = req.password.clone();
            let hash = tokio::task::spawn_blocking(move || users::hash_password(&password))
                .await
                .map_err(|e| ControlError::Internal(format!("hashing task: {e}")))?
                .map_err(ControlError::Internal)?;
            (hash, now)
        };
        let record = UserRecord {
            name: req.name.clone(),
            role: req.role.clone(),
            scopes,
            password_hash,
            created_at_ms: old.as_ref().map_or(now, |u| u.created_at_ms),
            password_set_at_ms,
            changed_by: who.uri(),
        };
        let value = serde_json::to_vec(&record)
            .map_err(|e| ControlError::Internal(format!("encoding the user: {e}")))?;
        let expect = existing
            .as_ref()
            .map_or(Expect::Absent, |kv| Expect::ModRevision(kv.mod_revision));
        match self
            .store
            .compare_and_put(&key, expect, value, None)
            .await
            .map_err(ControlError::store("storing the user"))?
        {
            CasOutcome::Done(_) => Ok(pb::PutUserResponse {
                user: Some(user_pb(&record)),
                created: existing.is_none(),
            }),
            CasOutcome::Conflict(_) => Err(ControlError::Conflict(format!(
                "user {:?} changed meanwhile; try again",
                req.name
            ))),
        }
    }

    /// Handles `DeleteUser`.
    pub async fn delete_user(
        &self,
        who: &Identity,
        req: pb::DeleteUserRequest,
    ) -> Result<pb::DeleteUserResponse, ControlError> {
        let result = async {
            super::governance::require_admin(who, "manage console users")?;
            self.audit.admit().map_err(ControlError::AuditUnavailable)?;
            check_id("user name", &req.name).map_err(ControlError::BadRequest)?;
            let deleted = self
                .store
                .delete(&users::user_key(&req.name))
                .await
                .map_err(ControlError::store("deleting the user"))?;
            Ok(pb::DeleteUserResponse {
                deleted: deleted.is_some(),
            })
        }
        .await;
        self.audit_account(
            who,
            "delete_user",
            &req.name,
            serde_json::json!({}),
            &result,
        )
        .await;
        result
    }

    /// Handles `ListUsers`.
    pub async fn list_users(&self, who: &Identity) -> Result<pb::ListUsersResponse, ControlError> {
        super::governance::require_admin(who, "list console users")?;
        let range = self
            .store
            .range(users::USERS)
            .await
            .map_err(ControlError::store("reading users"))?;
        let users = range
            .kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice::<UserRecord>(&kv.value).ok())
            .map(|u| user_pb(&u))
            .collect();
        Ok(pb::ListUsersResponse { users })
    }

    /// Handles `CreateToken`: returns the bearer secret once.
    pub async fn create_token(
        &self,
        who: &Identity,
        req: pb::CreateTokenRequest,
    ) -> Result<pb::CreateTokenResponse, ControlError> {
        let details = serde_json::json!({
            "name": req.name,
            "role": req.role,
            "scopes": req.scopes,
            "ttl_seconds": req.ttl_seconds,
        });
        let result = self.create_token_inner(who, &req).await;
        let target = result
            .as_ref()
            .ok()
            .and_then(|r| r.token.as_ref())
            .map_or_else(|| req.name.clone(), |t| t.id.clone());
        self.audit_account(who, "create_token", &target, details, &result)
            .await;
        result
    }

    async fn create_token_inner(
        &self,
        who: &Identity,
        req: &pb::CreateTokenRequest,
    ) -> Result<pb::CreateTokenResponse, ControlError> {
        super::governance::require_admin(who, "create API tokens")?;
        self.audit.admit().map_err(ControlError::AuditUnavailable)?;
        check_id("token name", &req.name).map_err(ControlError::BadRequest)?;
        users::parse_role(&req.role).map_err(ControlError::BadRequest)?;
        let scopes = users::parse_scopes(&req.scopes).map_err(ControlError::BadRequest)?;
        if !(users::MIN_TOKEN_TTL_S..=users::MAX_TOKEN_TTL_S).contains(&req.ttl_seconds) {
            return Err(ControlError::BadRequest(format!(
                "ttl of {} s is out of range; give {} s to {} s (365 days)",
                req.ttl_seconds,
                users::MIN_TOKEN_TTL_S,
                users::MAX_TOKEN_TTL_S
            )));
        }
        let (id, bearer) = users::new_token();
        let secret = users::split_token(&bearer)
            .map(|(_, s)| s.to_string())
            .ok_or_else(|| ControlError::Internal("made a malformed token".into()))?;
        let now = now_ms();
        let record = TokenRecord {
            id: id.clone(),
            name: req.name.clone(),
            role: req.role.clone(),
            scopes,
            secret_sha256: users::secret_digest(&secret),
            created_at_ms: now,
            expires_at_ms: now + req.ttl_seconds * 1000,
            created_by: who.uri(),
        };
        let value = serde_json::to_vec(&record)
            .map_err(|e| ControlError::Internal(format!("encoding the token: {e}")))?;
        self.store
            .compare_and_put(&users::token_key(&id), Expect::Absent, value, None)
            .await
            .map_err(ControlError::store("storing the token"))?;
        Ok(pb::CreateTokenResponse {
            token: Some(token_pb(&record)),
            secret: bearer,
        })
    }

    /// Handles `RevokeToken`.
    pub async fn revoke_token(
        &self,
        who: &Identity,
        req: pb::RevokeTokenRequest,
    ) -> Result<pb::RevokeTokenResponse, ControlError> {
        let result = async {
            super::governance::require_admin(who, "revoke API tokens")?;
            self.audit.admit().map_err(ControlError::AuditUnavailable)?;
            check_id("token id", &req.id).map_err(ControlError::BadRequest)?;
            let deleted = self
                .store
                .delete(&users::token_key(&req.id))
                .await
                .map_err(ControlError::store("deleting the token"))?;
            Ok(pb::RevokeTokenResponse {
                revoked: deleted.is_some(),
            })
        }
        .await;
        self.audit_account(who, "revoke_token", &req.id, serde_json::json!({}), &result)
            .await;
        result
    }

    /// Handles `ListTokens`.
    pub async fn list_tokens(
        &self,
        who: &Identity,
    ) -> Result<pb::ListTokensResponse, ControlError> {
        super::governance::require_admin(who, "list API tokens")?;
        let range = self
            .store
            .range(users::TOKENS)
            .await
            .map_err(ControlError::store("reading tokens"))?;
        let mut tokens: Vec<pb::ApiToken> = range
            .kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice::<TokenRecord>(&kv.value).ok())
            .map(|t| token_pb(&t))
            .collect();
        tokens.sort_by_key(|t| t.created_at_ms);
        Ok(pb::ListTokensResponse { tokens })
    }
}

fn user_pb(u: &UserRecord) -> pb::User {
    pb::User {
        name: u.name.clone(),
        role: u.role.clone(),
        scopes: u.scopes.clone(),
        created_at_ms: u.created_at_ms,
        password_set_at_ms: u.password_set_at_ms,
        changed_by: u.changed_by.clone(),
    }
}

fn token_pb(t: &TokenRecord) -> pb::ApiToken {
    pb::ApiToken {
        id: t.id.clone(),
        name: t.name.clone(),
        role: t.role.clone(),
        scopes: t.scopes.clone(),
        created_at_ms: t.created_at_ms,
        expires_at_ms: t.expires_at_ms,
        created_by: t.created_by.clone(),
    }
}
