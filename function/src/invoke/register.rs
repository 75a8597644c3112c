//! `RegisterFunction` and `DeleteFunction`: who may set a function's descriptor.

use super::*;
use crate::error::FunctionError;
use croupier_control::audit::AuditRecord;
use croupier_proto::common::v1::FunctionDescriptor;
use croupier_registry::identity::{Identity, Role};
use croupier_registry::ids::check_id;
use croupier_registry::keys;
use croupier_registry::model::{DescriptorRecord, DescriptorSource};
use croupier_registry::view::FnKey;
use std::time::Duration;

impl Invoker {
    /// Registers (or overrides) a descriptor. Admins may register anything (their descriptor
    /// wins over what agents declare); an agent may register functions in its own game and env
    /// unless an admin's descriptor exists or another live agent declared it differently.
    pub async fn register_function(
        &self,
        who: &Identity,
        game_id: &str,
        env: &str,
        d: &FunctionDescriptor,
    ) -> Result<i64, FunctionError> {
        check_id("game_id", game_id).map_err(FunctionError::BadRequest)?;
        check_id("env", env).map_err(FunctionError::BadRequest)?;
        check_id("descriptor.id", &d.id).map_err(FunctionError::BadRequest)?;
        if let Some(refusal) = who.out_of_scope("register functions", game_id, env) {
            return Err(FunctionError::NotAllowed(refusal));
        }
        croupier_control::plane::check_descriptor(
            d,
            self.cfg.max_descriptor_bytes,
            &self.cfg.schema_limits,
        )
        .map_err(FunctionError::BadRequest)?;
        let key = FnKey::new(game_id, env, &d.id);
        let current = self.view.descriptor(&key);
        let (source, declared_by) = match who.role {
            Role::Admin => (DescriptorSource::Admin, String::new()),
            Role::Agent => {
                let registered_here = self
                    .view
                    .agent(&who.name)
                    .is_some_and(|a| a.game_id == game_id && a.env == env);
                if !registered_here {
                    return Err(FunctionError::NotAllowed(format!(
                        "identity {who} may only register functions in the game and env it is \
                         registered in"
                    )));
                }
                if let Some(c) = &current {
                    if c.source == DescriptorSource::Admin {
                        return Err(FunctionError::NotAllowed(format!(
                            "identity {who} may not override {}: an admin registered its \
                             descriptor",
                            d.id
                        )));
                    }
                    let owner = &c.declared_by;
                    if !owner.is_empty()
                        && owner != &who.name
                        && self
                            .view
                            .candidates(&key)
                            .iter()
                            .any(|p| &p.agent.agent_id == owner)
                    {
                        return Err(FunctionError::DescriptorOwned(format!(
                            "function {} is declared by live agent {owner}; only it, or an \
                             admin, may change its descriptor",
                            d.id
                        )));
                    }
                }
                (DescriptorSource::Agent, who.name.clone())
            }
            _ => {
                return Err(FunctionError::NotAllowed(format!(
                    "identity {who} may not register functions: an admin or agent certificate is \
                     required"
                )));
            }
        };
        let mut record = DescriptorRecord::from_proto(game_id, env, d, source);
        record.declared_by = declared_by;
        if let Some(c) = current
            .as_ref()
            .filter(|_| record.source == DescriptorSource::Agent)
        {
            record.tighten_from(c);
        }
        let value = serde_json::to_vec(&record)
            .map_err(|e| FunctionError::Corrupt(format!("encoding descriptor: {e}")))?;
        let rev = self
            .store
            .put(&keys::function(game_id, env, &d.id), value, None)
            .await
            .map_err(FunctionError::store("storing the descriptor"))?;
        self.view.wait_for(rev, Duration::from_secs(5)).await;
        self.audit
            .record(
                AuditRecord::new(who.uri(), "register_function", d.id.as_str()).scope(game_id, env),
            )
            .await;
        Ok(rev)
    }

    /// Deletes a function's descriptor (admins only). Agents that still provide the function
    /// keep serving it; the next one to register declares its descriptor again.
    pub async fn delete_function(
        &self,
        who: &Identity,
        game_id: &str,
        env: &str,
        function_id: &str,
    ) -> Result<bool, FunctionError> {
        if who.role != Role::Admin {
            return Err(FunctionError::NotAllowed(format!(
                "identity {who} may not delete function descriptors: an admin certificate is \
                 required"
            )));
        }
        check_id("game_id", game_id).map_err(FunctionError::BadRequest)?;
        check_id("env", env).map_err(FunctionError::BadRequest)?;
        check_id("function_id", function_id).map_err(FunctionError::BadRequest)?;
        if let Some(refusal) = who.out_of_scope("delete functions", game_id, env) {
            return Err(FunctionError::NotAllowed(refusal));
        }
        let rev = self
            .store
            .delete(&keys::function(game_id, env, function_id))
            .await
            .map_err(FunctionError::store("deleting the descriptor"))?;
        if let Some(rev) = rev {
            self.view.wait_for(rev, Duration::from_secs(5)).await;
        }
        self.audit
            .record(
                AuditRecord::new(who.uri(), "delete_function", function_id)
                    .scope(game_id, env)
                    .outcome(if rev.is_some() { "ok" } else { "not found" }),
            )
            .await;
        Ok(rev.is_some())
    }
}
