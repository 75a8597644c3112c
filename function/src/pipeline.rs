//! Pipeline templates (DESIGN §7): stored at `/croupier/pipelines/{id}` (protobuf), managed
//! with `PutPipeline`/`GetPipeline`/`ListPipelines`/`DeletePipeline`, and started with
//! `InvokeJob` of [`START`]: the server checks and fills the template's `args` (a missing
//! required one is `INVALID_ARGUMENT` naming it) and hands the agent the whole template with
//! the filled args and the caller's `envs`, unfilled. The agent's `pipeline` pack merges the
//! envs with its own environment, fills the placeholders and runs the steps.

pub mod file;

use std::collections::BTreeMap;
use std::sync::Arc;

use croupier_proto::function::v1::{PipelineTemplate, PutPipelineResponse};
use croupier_proto::json::opt_struct_to_json;
use croupier_registry::identity::Identity;
use croupier_registry::ids::check_id;
use croupier_registry::keys;
use croupier_registry::policy::{Action, Policy, Request as PolicyRequest};
use croupier_registry::store::Store;
use croupier_registry::view::RegistryView;
use prost::Message;
use serde_json::{Value, json};

use crate::error::FunctionError;
use croupier_control::audit::{AuditLog, AuditRecord};

/// The function that starts a pipeline (a job, provided by the agent's `pipeline` pack).
pub const START: &str = "pipeline.start";

/// Pipeline templates in the store.
pub struct Pipelines {
    store: Arc<dyn Store>,
    audit: AuditLog,
    view: Option<Arc<RegistryView>>,
}

impl Pipelines {
    /// Templates in `store`; changes are audited in `audit`. Who may change them is the
    /// built-in policy's answer (admins) until [`Pipelines::with_policy`].
    pub fn new(store: Arc<dyn Store>, audit: AuditLog) -> Self {
        Pipelines {
            store,
            audit,
            view: None,
        }
    }

    /// Decides who may store and delete templates by the policy `view` follows.
    pub fn with_policy(mut self, view: Arc<RegistryView>) -> Self {
        self.view = Some(view);
        self
    }

    /// The policy's `pipelines` action for `who`, and the audit log's readiness.
    fn may_manage(&self, who: &Identity, what: &str) -> Result<(), FunctionError> {
        let policy = self
            .view
            .as_ref()
            .map_or_else(|| Arc::new(Policy::builtin()), |v| v.policy());
        let d = policy.decide(
            who,
            PolicyRequest {
                action: Action::Pipelines,
                function: "",
                game: "",
                env: "",
            },
        );
        if !d.allowed {
            return Err(FunctionError::NotAllowed(format!(
                "identity {who} may not {what} pipelines: {}",
                d.explanation
            )));
        }
        self.audit.admit().map_err(FunctionError::AuditUnavailable)
    }

    async fn audited<T>(
        &self,
        who: &Identity,
        action: &'static str,
        id: &str,
        outcome: &Result<T, FunctionError>,
    ) {
        let result = match outcome {
            Ok(_) => "ok",
            Err(e) => e.code_name(),
        };
        self.audit
            .record(AuditRecord::new(who.uri(), action, id).outcome(result))
            .await;
    }

    /// Stores a template (admin only) after checking it.
    pub async fn put(
        &self,
        who: &Identity,
        t: PipelineTemplate,
    ) -> Result<PutPipelineResponse, FunctionError> {
        let id = t.id.clone();
        let outcome = self.put_inner(who, t).await;
        if outcome.is_ok() {
            metrics::counter!(crate::metrics::PIPELINES, "op" => "put").increment(1);
        }
        self.audited(who, "put_pipeline", &id, &outcome).await;
        outcome
    }

    async fn put_inner(
        &self,
        who: &Identity,
        t: PipelineTemplate,
    ) -> Result<PutPipelineResponse, FunctionError> {
        self.may_manage(who, "store")?;
        validate(&t)?;
        let revision = self
            .store
            .put(&keys::pipeline(&t.id), t.encode_to_vec(), None)
            .await
            .map_err(FunctionError::store("storing the pipeline"))?;
        Ok(PutPipelineResponse { revision })
    }

    /// One template.
    pub async fn get(&self, id: &str) -> Result<PipelineTemplate, FunctionError> {
        check_id("pipeline id", id).map_err(FunctionError::BadRequest)?;
        let kv = self
            .store
            .get(&keys::pipeline(id))
            .await
            .map_err(FunctionError::store("reading the pipeline"))?
            .ok_or_else(|| FunctionError::PipelineNotFound(id.to_string()))?;
        PipelineTemplate::decode(kv.value.as_slice())
            .map_err(|e| FunctionError::Corrupt(format!("pipeline {id}: {e}")))
    }

    /// Every template, by id.
    pub async fn list(&self) -> Result<Vec<PipelineTemplate>, FunctionError> {
        let kvs = self
            .store
            .range(keys::PIPELINES)
            .await
            .map_err(FunctionError::store("listing pipelines"))?
            .kvs;
        Ok(kvs
            .iter()
            .filter_map(|kv| PipelineTemplate::decode(kv.value.as_slice()).ok())
            .collect())
    }

    /// Deletes a template (admin only); false when there was none.
    pub async fn delete(&self, who: &Identity, id: &str) -> Result<bool, FunctionError> {
        let outcome = self.delete_inner(who, id).await;
        if let Ok(true) = outcome {
            metrics::counter!(crate::metrics::PIPELINES, "op" => "delete").increment(1);
        }
        match &outcome {
            // Nothing was deleted: recorded as such, not as a change.
            Ok(false) => {
                self.audit
                    .record(AuditRecord::new(who.uri(), "delete_pipeline", id).outcome("NOT_FOUND"))
                    .await;
            }
            _ => self.audited(who, "delete_pipeline", id, &outcome).await,
        }
        outcome
    }

    async fn delete_inner(&self, who: &Identity, id: &str) -> Result<bool, FunctionError> {
        self.may_manage(who, "delete")?;
        check_id("pipeline id", id).map_err(FunctionError::BadRequest)?;
        Ok(self
            .store
            .delete(&keys::pipeline(id))
            .await
            .map_err(FunctionError::store("deleting the pipeline"))?
            .is_some())
    }

    /// Turns a `pipeline.start` payload `{template_id, args, envs}` into what the agent runs:
    /// `{template, args (filled), envs}`.
    pub async fn prepare_start(&self, payload: &Value) -> Result<Value, FunctionError> {
        let prepared = self.prepare(payload).await;
        let outcome = match &prepared {
            Ok(_) => "started",
            Err(e) => e.code_name(),
        };
        metrics::counter!(crate::metrics::PIPELINE_RUNS, "outcome" => outcome).increment(1);
        prepared
    }

    async fn prepare(&self, payload: &Value) -> Result<Value, FunctionError> {
        let id = payload["template_id"].as_str().ok_or_else(|| {
            FunctionError::BadRequest(
                "pipeline.start needs payload.template_id (a stored pipeline's id)".into(),
            )
        })?;
        let t = self.get(id).await?;
        let given = match &payload["args"] {
            Value::Null => serde_json::Map::new(),
            Value::Object(m) => m.clone(),
            _ => {
                return Err(FunctionError::BadRequest(
                    "payload.args must be an object of strings".into(),
                ));
            }
        };
        let args = fill_args(&t, &given)?;
        let envs = match &payload["envs"] {
            Value::Null => Value::Object(Default::default()),
            Value::Object(m) if m.values().all(Value::is_string) => Value::Object(m.clone()),
            _ => {
                return Err(FunctionError::BadRequest(
                    "payload.envs must be an object of strings".into(),
                ));
            }
        };
        Ok(json!({ "template": to_json(&t), "args": args, "envs": envs }))
    }
}

/// Checks ids, step functions and that every `${args.X}` names a declared arg and every
/// `${env.X}` a declared env.
pub fn validate(t: &PipelineTemplate) -> Result<(), FunctionError> {
    let bad = FunctionError::BadRequest;
    check_id("pipeline id", &t.id).map_err(bad)?;
    if t.steps.is_empty() {
        return Err(bad(format!("pipeline {} has no steps", t.id)));
    }
    for a in &t.args {
        check_id("arg name", &a.name).map_err(bad)?;
    }
    for e in &t.envs {
        check_id("env name", e).map_err(bad)?;
    }
    for (i, s) in t.steps.iter().enumerate() {
        if s.name.is_empty() {
            return Err(bad(format!(
                "step {} of pipeline {} has no name",
                i + 1,
                t.id
            )));
        }
        check_id("step function_id", &s.function_id).map_err(bad)?;
        if s.function_id == START {
            return Err(bad(format!(
                "step {:?} may not start another pipeline",
                s.name
            )));
        }
        let args = opt_struct_to_json(s.args.as_ref());
        let mut problem = None;
        visit_placeholders(&args, &mut |kind, name| {
            let known = match kind {
                "args" => t.args.iter().any(|a| a.name == name),
                "env" => t.envs.iter().any(|e| e == name),
                _ => false,
            };
            if !known && problem.is_none() {
                problem = Some(format!(
                    "step {:?} uses ${{{kind}.{name}}}, which pipeline {} does not declare",
                    s.name, t.id
                ));
            }
        });
        if let Some(p) = problem {
            return Err(bad(p));
        }
    }
    Ok(())
}

/// The template's args filled from `given` and defaults.
fn fill_args(
    t: &PipelineTemplate,
    given: &serde_json::Map<String, Value>,
) -> Result<Value, FunctionError> {
    if let Some(unknown) = given.keys().find(|k| !t.args.iter().any(|a| &a.name == *k)) {
        return Err(FunctionError::BadRequest(format!(
            "pipeline {} has no arg {unknown:?} (it declares: {})",
            t.id,
            t.args
                .iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut out = BTreeMap::new();
    for a in &t.args {
        let v = match given.get(&a.name) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::Bool(b)) => b.to_string(),
            Some(_) => {
                return Err(FunctionError::BadRequest(format!(
                    "arg {:?} of pipeline {} must be a string",
                    a.name, t.id
                )));
            }
            None if a.required => {
                return Err(FunctionError::BadRequest(format!(
                    "pipeline {} needs arg {:?}{}",
                    t.id,
                    a.name,
                    if a.description.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", a.description)
                    }
                )));
            }
            None => a.default_value.clone(),
        };
        out.insert(a.name.clone(), Value::String(v));
    }
    Ok(json!(out))
}

/// The template as JSON, as the agent's pipeline pack reads it.
pub fn to_json(t: &PipelineTemplate) -> Value {
    json!({
        "id": t.id,
        "description": t.description,
        "envs": t.envs,
        "steps": t.steps.iter().map(|s| json!({
            "name": s.name,
            "function_id": s.function_id,
            "args": opt_struct_to_json(s.args.as_ref()),
            "timeout": s.timeout,
            "continue_on_failure": s.continue_on_failure,
        })).collect::<Vec<_>>(),
    })
}

/// Calls `f(kind, name)` for every `${kind.name}` in the strings of `v`.
fn visit_placeholders(v: &Value, f: &mut impl FnMut(&str, &str)) {
    match v {
        Value::String(s) => {
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                let after = &rest[start + 2..];
                let Some(end) = after.find('}') else { break };
                if let Some((kind, name)) = after[..end].split_once('.') {
                    f(kind, name);
                }
                rest = &after[end + 1..];
            }
        }
        Value::Array(a) => a.iter().for_each(|x| visit_placeholders(x, f)),
        Value::Object(m) => m.values().for_each(|x| visit_placeholders(x, f)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use croupier_proto::function::v1::{PipelineArg, PipelineStep};
    use croupier_proto::json::json_to_struct;

    fn template() -> PipelineTemplate {
        PipelineTemplate {
            id: "deploy".into(),
            args: vec![
                PipelineArg {
                    name: "version".into(),
                    required: true,
                    ..Default::default()
                },
                PipelineArg {
                    name: "greeting".into(),
                    default_value: "hello".into(),
                    ..Default::default()
                },
            ],
            envs: vec!["REGION".into()],
            steps: vec![PipelineStep {
                name: "say".into(),
                function_id: "container.run".into(),
                args: Some(json_to_struct(&json!({
                    "cmd": ["echo", "${args.greeting} ${args.version} ${env.REGION}"]
                }))),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn placeholders_must_be_declared() {
        assert!(validate(&template()).is_ok());
        let mut t = template();
        t.steps[0].args = Some(json_to_struct(&json!({"x": "${args.nope}"})));
        let err = validate(&t).unwrap_err().to_string();
        assert!(err.contains("${args.nope}"), "{err}");
    }

    #[test]
    fn args_are_checked_and_filled() {
        let t = template();
        let filled = fill_args(&t, json!({"version": "1.2"}).as_object().unwrap()).unwrap();
        assert_eq!(filled, json!({"version": "1.2", "greeting": "hello"}));
        let err = fill_args(&t, &Default::default()).unwrap_err().to_string();
        assert!(err.contains("\"version\""), "{err}");
        let err = fill_args(&t, json!({"version": "1", "x": "y"}).as_object().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no arg \"x\""), "{err}");
    }
}
