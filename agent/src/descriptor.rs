//! Function descriptors: [`descriptor`] builds the descriptor of every function the agent
//! registers (built-ins and packs), and [`typed`] one whose JSON Schemas are derived with
//! `schemars` from the Rust types its handler decodes and returns, so that the schemas the server
//! enforces cannot drift from the code. [`Typed`] carries those types along, so registering a
//! descriptor with a handler of other types does not compile.
//!
//! The schemas are derived as in [`croupier_sdk::typed`] (draft 2020-12, doc comments as
//! descriptions, `#[serde(deny_unknown_fields)]` as `additionalProperties: false`), with three
//! differences that keep them what the agent's hand-written schemas used to say:
//! - subschemas are inlined: no `$defs` and `$ref`, so each schema reads on its own;
//! - an optional parameter (an `Option` field) may be left out but not sent as `null`: the
//!   server refuses `{"tail": null}` as it always did;
//! - the root has no `title` or `description`: they would be the Rust type's name and doc
//!   comment, and the descriptor's own description says what the function does.

use std::marker::PhantomData;

use croupier_proto::common::v1::{FunctionDescriptor, Semantics};
use croupier_proto::json::json_to_struct;
use croupier_sdk::HandlerError;
use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde::Serialize;
use serde_json::Value;

/// The semantics of a function that is not a job (the provider marks jobs itself): its kind
/// (`query` or `command`), whether repeating a call is harmless, and its default timeout in
/// seconds (0: the server's).
pub(crate) fn semantics(kind: &str, idempotent: bool, timeout: i32) -> Semantics {
    Semantics {
        kind: kind.into(),
        idempotent,
        timeout,
        job: false,
    }
}

/// The descriptor of function `id` (also its name) in `category`, version 1.
pub(crate) fn descriptor(
    id: &str,
    category: &str,
    description: &str,
    semantics: Semantics,
    params: &Value,
    result: &Value,
) -> FunctionDescriptor {
    FunctionDescriptor {
        id: id.into(),
        name: id.into(),
        category: category.into(),
        description: description.into(),
        params_schema: Some(json_to_struct(params)),
        result_schema: Some(json_to_struct(result)),
        semantics: Some(semantics),
        version: "1".into(),
        ..Default::default()
    }
}

/// A descriptor whose schemas were derived from `P`, the parameters, and `R`, the result.
pub(crate) struct Typed<P, R> {
    /// The descriptor.
    pub(crate) descriptor: FunctionDescriptor,
    types: PhantomData<fn(P) -> R>,
}

/// [`descriptor`] with the schemas derived from `P` ([`params_schema`]) and `R`
/// ([`result_schema`]).
pub(crate) fn typed<P: JsonSchema, R: JsonSchema>(
    id: &str,
    category: &str,
    description: &str,
    semantics: Semantics,
) -> Typed<P, R> {
    Typed {
        descriptor: descriptor(
            id,
            category,
            description,
            semantics,
            &params_schema::<P>(),
            &result_schema::<R>(),
        ),
        types: PhantomData,
    }
}

/// The result `r` of function `id` as JSON, as its [`result_schema`] describes it.
pub(crate) fn encode<R: Serialize>(id: &str, r: &R) -> Result<Value, HandlerError> {
    serde_json::to_value(r)
        .map_err(|e| HandlerError::internal(format!("encoding the result of {id}: {e}")))
}

/// The JSON Schema of `T` as a payload (how `T` deserializes).
pub(crate) fn params_schema<T: JsonSchema>() -> Value {
    let mut schema = derive::<T>(SchemaSettings::draft2020_12().for_deserialize());
    refuse_null_for_optional(&mut schema);
    schema
}

/// The JSON Schema of `T` as a result (how `T` serializes).
pub(crate) fn result_schema<T: JsonSchema>() -> Value {
    derive::<T>(SchemaSettings::draft2020_12().for_serialize())
}

fn derive<T: JsonSchema>(mut settings: SchemaSettings) -> Value {
    settings.inline_subschemas = true;
    let mut schema = settings
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value();
    if let Some(root) = schema.as_object_mut() {
        root.remove("title");
        root.remove("description");
    }
    schema
}

/// Makes the properties that may be left out (not `required`) refuse `null`: schemars lets an
/// `Option` field be `null` too, which serde accepts as "left out", but the agent's functions
/// have always asked callers to leave such a field out.
fn refuse_null_for_optional(schema: &mut Value) {
    let Some(root) = schema.as_object_mut() else {
        return;
    };
    let required: Vec<Value> = root
        .get("required")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let Some(properties) = root.get_mut("properties").and_then(Value::as_object_mut) else {
        return;
    };
    for (name, property) in properties.iter_mut() {
        if required.contains(&Value::String(name.clone())) {
            continue;
        }
        let Some(p) = property.as_object_mut() else {
            continue;
        };
        // `{"type": ["integer", "null"], …}` → `{"type": "integer", …}`.
        if let Some(Value::Array(types)) = p.get_mut("type") {
            types.retain(|t| t != "null");
            if types.len() == 1 {
                let only = types.remove(0);
                p.insert("type".into(), only);
            }
        }
        // `{"anyOf": [S, {"type": "null"}], …}` → S with the other keywords.
        if let Some(Value::Array(branches)) = p.get("anyOf") {
            let rest: Vec<&Value> = branches
                .iter()
                .filter(|b| b.get("type").and_then(Value::as_str) != Some("null"))
                .collect();
            if let [only] = rest.as_slice()
                && let Some(only) = only.as_object().cloned()
            {
                p.remove("anyOf");
                for (k, v) in only {
                    p.entry(k).or_insert(v);
                }
            }
        }
    }
}

/// Checks the packs' unit tests make of descriptors and results.
#[cfg(test)]
pub(crate) mod check {
    use croupier_proto::common::v1::FunctionDescriptor;
    use croupier_proto::json::{json_to_struct, opt_struct_to_json, struct_to_json};
    use serde_json::Value;

    /// A descriptor's params schema, or with `result` its result schema.
    pub(crate) fn schema(d: &FunctionDescriptor, result: bool) -> Value {
        let s = if result {
            &d.result_schema
        } else {
            &d.params_schema
        };
        opt_struct_to_json(s.as_ref())
    }

    /// Asserts that `value` matches `schema`, listing every mismatch.
    pub(crate) fn assert_valid(schema: &Value, value: &Value) {
        let validator = jsonschema::validator_for(schema).expect("schema compiles");
        let errors: Vec<String> = validator
            .iter_errors(value)
            .map(|e| format!("at {}: {e}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{errors:?}\n{value:#}");
    }

    /// What the caller gets: a handler's JSON after the trip through `google.protobuf.Struct`.
    pub(crate) fn over_the_wire(v: &Value) -> Value {
        struct_to_json(&json_to_struct(v))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};
    use serde_json::json;

    use super::*;

    /// A thing to make.
    #[derive(Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Make {
        /// What to call it.
        #[schemars(length(min = 1))]
        name: String,
        /// How many.
        #[schemars(range(min = 1, max = 9))]
        count: Option<i64>,
        parts: Option<Inner>,
        #[serde(default)]
        tags: BTreeMap<String, String>,
    }

    #[derive(Deserialize, Serialize, JsonSchema)]
    #[allow(dead_code)]
    struct Inner {
        size: u32,
    }

    #[derive(Serialize, JsonSchema)]
    struct Made {
        /// Null when unknown.
        size: Option<u64>,
        inner: Inner,
    }

    #[test]
    fn optional_params_are_left_out_not_null_and_subschemas_are_inlined() {
        let p = params_schema::<Make>();
        assert_eq!(p["$schema"], "https://json-schema.org/draft/2020-12/schema");
        assert!(p.get("title").is_none(), "{p:#}");
        assert!(p.get("$defs").is_none(), "{p:#}");
        assert!(p.get("description").is_none(), "{p:#}");
        assert_eq!(p["additionalProperties"], false);
        assert_eq!(p["required"], json!(["name"]));
        assert_eq!(p["properties"]["name"]["minLength"], 1);
        assert_eq!(p["properties"]["name"]["description"], "What to call it.");
        let count = &p["properties"]["count"];
        assert_eq!(count["type"], "integer");
        assert_eq!(
            (&count["minimum"], &count["maximum"]),
            (&json!(1), &json!(9))
        );
        assert_eq!(p["properties"]["parts"]["type"], "object");
        assert!(p["properties"]["parts"].get("anyOf").is_none(), "{p:#}");
        let v = jsonschema::validator_for(&p).unwrap();
        assert!(v.is_valid(&json!({"name": "x", "count": 2, "parts": {"size": 1}})));
        for bad in [
            json!({"name": "x", "count": null}),
            json!({"name": "x", "parts": null}),
            json!({"name": "x", "count": 10}),
            json!({"name": ""}),
            json!({"name": "x", "extra": 1}),
            json!({}),
        ] {
            assert!(!v.is_valid(&bad), "{bad} accepted");
        }
    }

    #[test]
    fn results_keep_null_and_require_every_field() {
        let r = result_schema::<Made>();
        assert_eq!(r["required"], json!(["size", "inner"]));
        assert_eq!(r["properties"]["size"]["type"], json!(["integer", "null"]));
        assert_eq!(r["properties"]["size"]["description"], "Null when unknown.");
        assert_eq!(r["properties"]["inner"]["required"], json!(["size"]));
        let v = jsonschema::validator_for(&r).unwrap();
        assert!(v.is_valid(&json!({"size": null, "inner": {"size": 3}})));
        assert!(!v.is_valid(&json!({"inner": {"size": 3}})));
    }

    #[test]
    fn the_descriptor_carries_what_it_is_given() {
        let d = typed::<Make, Made>(
            "x.make",
            "x",
            "Makes a thing.",
            semantics("command", false, 5),
        )
        .descriptor;
        assert_eq!((d.id.as_str(), d.name.as_str()), ("x.make", "x.make"));
        assert_eq!((d.category.as_str(), d.version.as_str()), ("x", "1"));
        assert_eq!(d.description, "Makes a thing.");
        assert_eq!(d.semantics, Some(semantics("command", false, 5)));
        assert_eq!(
            croupier_proto::json::opt_struct_to_json(d.params_schema.as_ref()),
            croupier_proto::json::struct_to_json(&json_to_struct(&params_schema::<Make>()))
        );
    }
}
