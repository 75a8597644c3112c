//! JSON Schema checks of payloads, with compiled validators cached per descriptor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::model::DescriptorRecord;
use crate::view::FnKey;

/// Most validation errors listed in one message.
const MAX_LISTED: usize = 5;

/// Compiles a schema, or says why it is not a valid JSON Schema.
pub fn compile(schema: &serde_json::Value) -> Result<jsonschema::Validator, String> {
    jsonschema::validator_for(schema).map_err(|e| e.to_string())
}

/// Checks `payload` against `validator`; the error names each failing field by its JSON
/// pointer ("at /ms: \"abc\" is not of type \"integer\"").
pub fn check(validator: &jsonschema::Validator, payload: &serde_json::Value) -> Result<(), String> {
    if validator.is_valid(payload) {
        return Ok(());
    }
    let errors: Vec<String> = validator
        .iter_errors(payload)
        .take(MAX_LISTED)
        .map(|e| {
            let path = e.instance_path().to_string();
            let at = if path.is_empty() {
                "/".to_string()
            } else {
                path
            };
            format!("at {at}: {e}")
        })
        .collect();
    Err(errors.join("; "))
}

/// A descriptor with its compiled params validator (None: no params schema).
type Compiled = (Arc<DescriptorRecord>, Option<Arc<jsonschema::Validator>>);

/// Caches compiled params validators per function, recompiling when the descriptor changes.
#[derive(Default)]
pub struct SchemaCache {
    entries: Mutex<HashMap<FnKey, Compiled>>,
}

impl SchemaCache {
    /// The params validator of `descriptor` (None when it has no params schema).
    pub fn validator(
        &self,
        key: &FnKey,
        descriptor: &Arc<DescriptorRecord>,
    ) -> Result<Option<Arc<jsonschema::Validator>>, String> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((d, v)) = entries.get(key)
            && Arc::ptr_eq(d, descriptor)
        {
            return Ok(v.clone());
        }
        let v = match &descriptor.params_schema {
            serde_json::Value::Null => None,
            schema => Some(Arc::new(compile(schema)?)),
        };
        if entries.len() > 10_000 {
            entries.clear();
        }
        entries.insert(key.clone(), (descriptor.clone(), v.clone()));
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_the_failing_field() {
        let v = compile(&json!({
            "type": "object",
            "properties": {"ms": {"type": "integer"}},
            "required": ["ms"]
        }))
        .unwrap();
        assert!(check(&v, &json!({"ms": 5})).is_ok());
        let err = check(&v, &json!({"ms": "abc"})).unwrap_err();
        assert!(err.contains("/ms"), "{err}");
        let err = check(&v, &json!({})).unwrap_err();
        assert!(err.contains("\"ms\""), "{err}");
    }

    #[test]
    fn rejects_invalid_schema() {
        assert!(compile(&json!({"type": "no-such-type"})).is_err());
    }
}
