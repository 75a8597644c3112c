//! JSON Schema checks of payloads, with compiled validators cached per descriptor.
//!
//! A schema is data written by whoever registers a function, so it is bounded like any other
//! input ([`SchemaLimits`], checked when a descriptor is registered and again when a stored one
//! is compiled):
//! - its size and nesting depth;
//! - its **cost**: how many subschemas one validation may evaluate, with `$ref`s followed and
//!   recursion unrolled once per instance level (an instance nests at most
//!   [`MAX_PAYLOAD_DEPTH`] levels). A chain of `allOf`/`anyOf` whose branches refer to the next
//!   link doubles with every link, and is refused here instead of costing seconds of CPU and
//!   gigabytes per call. A `$ref` cycle that does not descend into the instance is refused too;
//!   only local references (`#…`) are followed, and others are refused;
//! - `pattern`s use the `regex` engine (linear time, no backtracking) with a size limit.
//!
//! Validation of a small payload against a cheap schema runs inline; anything bigger runs on
//! the blocking pool within a time budget ([`SchemaCache::check`]). A schema whose validation
//! overruns the budget is marked costly, and calls of its function fail fast until the
//! descriptor changes.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use croupier_proto::limits::MAX_PAYLOAD_DEPTH;
use serde_json::Value;

use crate::model::DescriptorRecord;
use crate::view::FnKey;

/// Most validation errors listed in one message.
const MAX_LISTED: usize = 5;

/// Most bytes of compiled regex per `pattern`.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Inline validation: at most this schema cost…
const INLINE_MAX_COST: u64 = 256;
/// …and this many JSON values in the payload.
const INLINE_MAX_VALUES: usize = 256;

/// Bounds on a schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchemaLimits {
    /// Most bytes of the schema as JSON. Default 64 KiB.
    pub max_bytes: usize,
    /// Most nesting levels of the schema document. Default 30 (under the payload limit of 32,
    /// so a descriptor fits in every envelope it travels in).
    pub max_depth: usize,
    /// Most subschema evaluations one validation may need (see the module docs). Default 10 000.
    pub max_cost: u64,
}

impl Default for SchemaLimits {
    fn default() -> Self {
        SchemaLimits {
            max_bytes: 64 * 1024,
            max_depth: 30,
            max_cost: 10_000,
        }
    }
}

/// Why a schema is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// Larger than [`SchemaLimits::max_bytes`].
    #[error("is {bytes} bytes; at most {limit} are allowed")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// Nested deeper than [`SchemaLimits::max_depth`].
    #[error("nests more than {limit} levels")]
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// Costs more than [`SchemaLimits::max_cost`] subschema evaluations.
    #[error(
        "may need more than {limit} subschema evaluations per validation (combinators and $refs \
         multiply: each allOf/anyOf/oneOf branch that refers to another costly subschema \
         doubles the cost); simplify it or define shared parts once"
    )]
    TooCostly {
        /// The limit.
        limit: u64,
    },
    /// A `$ref` the server does not follow.
    #[error("refers to {reference:?}: only local references (\"#/…\") are allowed")]
    RemoteRef {
        /// The reference.
        reference: String,
    },
    /// A `$ref` that points nowhere.
    #[error("refers to {reference:?}, which does not exist in the schema")]
    MissingRef {
        /// The reference.
        reference: String,
    },
    /// A `$ref` cycle that does not descend into the instance.
    #[error("refers to itself through {reference:?} without descending into the instance")]
    RefCycle {
        /// The reference that closes the cycle.
        reference: String,
    },
    /// Not a valid JSON Schema.
    #[error("is not a valid JSON Schema: {0}")]
    Invalid(String),
}

/// Checks `schema` against `limits`; returns its cost.
pub fn check_limits(schema: &Value, limits: &SchemaLimits) -> Result<u64, SchemaError> {
    let bytes = serde_json::to_vec(schema).map(|b| b.len()).unwrap_or(0);
    if bytes > limits.max_bytes {
        return Err(SchemaError::TooLarge {
            bytes,
            limit: limits.max_bytes,
        });
    }
    if document_depth(schema, 0, limits.max_depth) > limits.max_depth {
        return Err(SchemaError::TooDeep {
            limit: limits.max_depth,
        });
    }
    let mut walk = CostWalk {
        root: schema,
        limit: limits.max_cost,
        memo: HashMap::new(),
        active: Vec::new(),
    };
    let cost = walk.cost(schema, 0)?;
    if cost > limits.max_cost {
        return Err(SchemaError::TooCostly {
            limit: limits.max_cost,
        });
    }
    Ok(cost)
}

fn document_depth(v: &Value, level: usize, max: usize) -> usize {
    if level > max {
        return level;
    }
    match v {
        Value::Object(m) => m
            .values()
            .map(|v| document_depth(v, level + 1, max))
            .max()
            .unwrap_or(level + 1),
        Value::Array(a) => a
            .iter()
            .map(|v| document_depth(v, level + 1, max))
            .max()
            .unwrap_or(level + 1),
        _ => level,
    }
}

/// Keywords whose subschemas apply to the same instance.
const SAME_INSTANCE: &[&str] = &["not", "if", "then", "else"];
/// Keywords holding an array of subschemas for the same instance.
const SAME_INSTANCE_LISTS: &[&str] = &["allOf", "anyOf", "oneOf"];
/// Keywords whose subschema applies to children of the instance.
const CHILD: &[&str] = &[
    "additionalProperties",
    "unevaluatedProperties",
    "propertyNames",
    "items",
    "additionalItems",
    "unevaluatedItems",
    "contains",
];
/// Keywords holding a map of subschemas for children of the instance.
const CHILD_MAPS: &[&str] = &["properties", "patternProperties"];
/// Keywords holding a map of subschemas for the same instance.
const SAME_INSTANCE_MAPS: &[&str] = &["dependentSchemas", "dependencies"];

struct CostWalk<'a> {
    root: &'a Value,
    limit: u64,
    /// Cost of (subschema, instance level).
    memo: HashMap<(*const Value, usize), u64>,
    /// Subschemas being costed at a level, to find cycles.
    active: Vec<(*const Value, usize)>,
}

impl<'a> CostWalk<'a> {
    fn cost(&mut self, node: &'a Value, level: usize) -> Result<u64, SchemaError> {
        // An instance never nests deeper than a payload may: nothing is evaluated past that.
        if level > MAX_PAYLOAD_DEPTH {
            return Ok(0);
        }
        let Value::Object(map) = node else {
            return Ok(1); // `true`, `false`
        };
        let key = (node as *const Value, level);
        if let Some(c) = self.memo.get(&key) {
            return Ok(*c);
        }
        self.active.push(key);
        let mut total: u64 = 1;
        let mut add = |walk: &mut Self, child: &'a Value, lvl: usize| -> Result<(), SchemaError> {
            total = total.saturating_add(walk.cost(child, lvl)?);
            if total > walk.limit {
                return Err(SchemaError::TooCostly { limit: walk.limit });
            }
            Ok(())
        };
        for (k, v) in map {
            let k = k.as_str();
            if SAME_INSTANCE.contains(&k) {
                add(self, v, level)?;
            } else if SAME_INSTANCE_LISTS.contains(&k) || k == "prefixItems" {
                let lvl = if k == "prefixItems" { level + 1 } else { level };
                for s in v.as_array().into_iter().flatten() {
                    add(self, s, lvl)?;
                }
            } else if CHILD.contains(&k) {
                match v {
                    Value::Array(items) => {
                        for s in items {
                            add(self, s, level + 1)?;
                        }
                    }
                    s => add(self, s, level + 1)?,
                }
            } else if CHILD_MAPS.contains(&k) || SAME_INSTANCE_MAPS.contains(&k) {
                let lvl = if CHILD_MAPS.contains(&k) {
                    level + 1
                } else {
                    level
                };
                for s in v.as_object().into_iter().flat_map(|m| m.values()) {
                    if s.is_object() || s.is_boolean() {
                        add(self, s, lvl)?;
                    }
                }
            } else if matches!(k, "$ref" | "$recursiveRef" | "$dynamicRef") {
                let reference = v.as_str().unwrap_or_default();
                let target = self.resolve(reference)?;
                let tkey = (target as *const Value, level);
                if self.active.contains(&tkey) {
                    return Err(SchemaError::RefCycle {
                        reference: reference.to_string(),
                    });
                }
                add(self, target, level)?;
            }
        }
        self.active.pop();
        self.memo.insert(key, total);
        Ok(total)
    }

    fn resolve(&self, reference: &str) -> Result<&'a Value, SchemaError> {
        let Some(pointer) = reference.strip_prefix('#') else {
            return Err(SchemaError::RemoteRef {
                reference: reference.to_string(),
            });
        };
        if pointer.is_empty() {
            return Ok(self.root);
        }
        if !pointer.starts_with('/') {
            // A plain-name fragment ("#foo", an $anchor): look for it.
            return find_anchor(self.root, pointer).ok_or_else(|| SchemaError::MissingRef {
                reference: reference.to_string(),
            });
        }
        let decoded = percent_decode(pointer);
        self.root
            .pointer(&decoded)
            .ok_or_else(|| SchemaError::MissingRef {
                reference: reference.to_string(),
            })
    }
}

fn find_anchor<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    match v {
        Value::Object(m) => {
            if m.get("$anchor").and_then(Value::as_str) == Some(name) {
                return Some(v);
            }
            m.values().find_map(|c| find_anchor(c, name))
        }
        Value::Array(a) => a.iter().find_map(|c| find_anchor(c, name)),
        _ => None,
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Compiles a schema (after checking it against `limits`), or says why it is refused.
pub fn compile_checked(
    schema: &Value,
    limits: &SchemaLimits,
) -> Result<(jsonschema::Validator, u64), SchemaError> {
    let cost = check_limits(schema, limits)?;
    let validator = jsonschema::options()
        .with_pattern_options(
            jsonschema::PatternOptions::regex()
                .size_limit(REGEX_SIZE_LIMIT)
                .dfa_size_limit(REGEX_SIZE_LIMIT),
        )
        .build(schema)
        .map_err(|e| SchemaError::Invalid(e.to_string()))?;
    Ok((validator, cost))
}

/// Compiles a schema with the default limits, or says why it is refused.
pub fn compile(schema: &Value) -> Result<jsonschema::Validator, String> {
    compile_checked(schema, &SchemaLimits::default())
        .map(|(v, _)| v)
        .map_err(|e| e.to_string())
}

/// Checks `payload` against `validator`; the error names each failing field by its JSON
/// pointer ("at /ms: \"abc\" is not of type \"integer\"").
pub fn check(validator: &jsonschema::Validator, payload: &Value) -> Result<(), String> {
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
            format!(
                "at {at}: {}",
                croupier_proto::limits::excerpt(&e.to_string(), 200)
            )
        })
        .collect();
    Err(errors.join("; "))
}

/// Why a payload was not accepted by [`SchemaCache::check`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PayloadCheckError {
    /// The payload fails the schema (the message names the fields).
    #[error("{0}")]
    Mismatch(String),
    /// The descriptor's schema is refused (limits, or not a JSON Schema).
    #[error("{0}")]
    BadSchema(SchemaError),
    /// Validation overran its time budget; the schema is marked costly.
    #[error("validation took longer than {0:?}")]
    Overran(Duration),
}

/// A compiled params validator, or why there is none.
struct Entry {
    descriptor: Arc<DescriptorRecord>,
    compiled: Result<Option<Arc<Compiled>>, SchemaError>,
}

/// A compiled validator with what routing of its checks needs.
pub struct Compiled {
    validator: jsonschema::Validator,
    cost: u64,
    /// Set when a validation overran the budget: later checks fail at once.
    costly: AtomicBool,
}

/// Caches compiled params validators per function, recompiling when the descriptor changes.
pub struct SchemaCache {
    limits: SchemaLimits,
    budget: Duration,
    entries: Mutex<HashMap<FnKey, Entry>>,
}

impl Default for SchemaCache {
    fn default() -> Self {
        SchemaCache::new(SchemaLimits::default(), Duration::from_secs(1))
    }
}

impl SchemaCache {
    /// A cache refusing schemas past `limits`; a validation may take up to `budget`.
    pub fn new(limits: SchemaLimits, budget: Duration) -> Self {
        SchemaCache {
            limits,
            budget,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The limits schemas are checked against.
    pub fn limits(&self) -> &SchemaLimits {
        &self.limits
    }

    /// The params validator of `descriptor` (None when it has no params schema).
    pub fn validator(
        &self,
        key: &FnKey,
        descriptor: &Arc<DescriptorRecord>,
    ) -> Result<Option<Arc<Compiled>>, SchemaError> {
        let mut entries = self.entries.lock();
        if let Some(e) = entries.get(key)
            && Arc::ptr_eq(&e.descriptor, descriptor)
        {
            return e.compiled.clone();
        }
        let compiled = match &descriptor.params_schema {
            Value::Null => Ok(None),
            schema => compile_checked(schema, &self.limits).map(|(validator, cost)| {
                Some(Arc::new(Compiled {
                    validator,
                    cost,
                    costly: AtomicBool::new(false),
                }))
            }),
        };
        if entries.len() > 10_000 {
            entries.clear();
        }
        entries.insert(
            key.clone(),
            Entry {
                descriptor: descriptor.clone(),
                compiled: compiled.clone(),
            },
        );
        compiled
    }

    /// Checks `payload` against the params schema of `descriptor`, inline when both are small,
    /// otherwise on the blocking pool within the budget (and `deadline`, if sooner).
    pub async fn check(
        &self,
        key: &FnKey,
        descriptor: &Arc<DescriptorRecord>,
        payload: Arc<Value>,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<(), PayloadCheckError> {
        let Some(compiled) = self
            .validator(key, descriptor)
            .map_err(PayloadCheckError::BadSchema)?
        else {
            return Ok(());
        };
        if compiled.costly.load(Ordering::Relaxed) {
            return Err(PayloadCheckError::Overran(self.budget));
        }
        if compiled.cost <= INLINE_MAX_COST && count_values(&payload, INLINE_MAX_VALUES) {
            return check(&compiled.validator, &payload).map_err(PayloadCheckError::Mismatch);
        }
        let budget = match deadline {
            Some(d) => self
                .budget
                .min(d.saturating_duration_since(tokio::time::Instant::now())),
            None => self.budget,
        };
        let task = {
            let compiled = compiled.clone();
            tokio::task::spawn_blocking(move || check(&compiled.validator, &payload))
        };
        match tokio::time::timeout(budget, task).await {
            Ok(Ok(r)) => r.map_err(PayloadCheckError::Mismatch),
            Ok(Err(e)) => Err(PayloadCheckError::Mismatch(format!(
                "validation failed: {e}"
            ))),
            Err(_) => {
                if budget >= self.budget {
                    compiled.costly.store(true, Ordering::Relaxed);
                }
                Err(PayloadCheckError::Overran(budget))
            }
        }
    }
}

/// True when `v` holds at most `max` JSON values.
fn count_values(v: &Value, max: usize) -> bool {
    fn walk(v: &Value, left: &mut usize) -> bool {
        if *left == 0 {
            return false;
        }
        *left -= 1;
        match v {
            Value::Object(m) => m.values().all(|c| walk(c, left)),
            Value::Array(a) => a.iter().all(|c| walk(c, left)),
            _ => true,
        }
    }
    let mut left = max;
    walk(v, &mut left)
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

    /// `d0 = allOf[$ref d1, $ref d1]`, `d1 = allOf[$ref d2, $ref d2]`…: a few hundred bytes
    /// whose validation doubles with every link.
    fn doubling_chain(links: usize, combinator: &str) -> Value {
        let mut defs = serde_json::Map::new();
        for i in 0..links {
            let next = format!("#/$defs/d{}", i + 1);
            defs.insert(
                format!("d{i}"),
                json!({ combinator: [{"$ref": next}, {"$ref": next, "type": "object"}] }),
            );
        }
        defs.insert(format!("d{links}"), json!({"type": "object"}));
        json!({"$defs": defs, "$ref": "#/$defs/d0"})
    }

    #[test]
    fn refuses_combinator_chains_that_double_the_cost() {
        for combinator in ["allOf", "anyOf", "oneOf"] {
            let err = check_limits(&doubling_chain(30, combinator), &SchemaLimits::default())
                .unwrap_err();
            assert!(matches!(err, SchemaError::TooCostly { .. }), "{err}");
            assert!(err.to_string().contains("10000"), "{err}");
        }
        // A short chain is fine.
        let cost = check_limits(&doubling_chain(5, "anyOf"), &SchemaLimits::default()).unwrap();
        assert!(cost < 200, "{cost}");
    }

    #[test]
    fn refuses_size_depth_remote_refs_and_cycles() {
        let limits = SchemaLimits::default();
        let big = json!({"description": "x".repeat(70 * 1024)});
        assert!(matches!(
            check_limits(&big, &limits),
            Err(SchemaError::TooLarge { .. })
        ));
        let mut deep = json!({"type": "object"});
        for _ in 0..40 {
            deep = json!({"properties": {"a": deep}});
        }
        assert!(matches!(
            check_limits(&deep, &limits),
            Err(SchemaError::TooDeep { .. })
        ));
        assert!(matches!(
            check_limits(&json!({"$ref": "https://example.com/s.json"}), &limits),
            Err(SchemaError::RemoteRef { .. })
        ));
        assert!(matches!(
            check_limits(&json!({"$ref": "#/$defs/none"}), &limits),
            Err(SchemaError::MissingRef { .. })
        ));
        let cycle =
            json!({"$defs": {"a": {"allOf": [{"$ref": "#/$defs/a"}]}}, "$ref": "#/$defs/a"});
        assert!(matches!(
            check_limits(&cycle, &limits),
            Err(SchemaError::RefCycle { .. })
        ));
    }

    #[test]
    fn accepts_recursive_schemas_that_descend() {
        let tree = json!({
            "$defs": {"node": {
                "type": "object",
                "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}
            }},
            "$ref": "#/$defs/node"
        });
        let cost = check_limits(&tree, &SchemaLimits::default()).unwrap();
        assert!(cost > 32 && cost < 1000, "{cost}");
        compile(&tree).unwrap();
    }

    #[test]
    fn patterns_use_a_linear_time_engine() {
        // A backreference needs a backtracking engine: the linear one refuses it.
        assert!(compile(&json!({"pattern": "(a)\\1"})).is_err());
        let v = compile(&json!({"type": "string", "pattern": "^(a+)+$"})).unwrap();
        let evil = format!("{}b", "a".repeat(5000));
        let started = std::time::Instant::now();
        assert!(check(&v, &json!(evil)).is_err());
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn checks_payloads_inline_and_off_the_workers() {
        let cache = SchemaCache::default();
        let key = FnKey::new("g", "e", "f");
        let d = Arc::new(DescriptorRecord {
            id: "f".into(),
            params_schema: json!({"type": "object", "properties": {"n": {"type": "integer"}}}),
            ..Default::default()
        });
        cache
            .check(&key, &d, Arc::new(json!({"n": 1})), None)
            .await
            .unwrap();
        let err = cache
            .check(&key, &d, Arc::new(json!({"n": "x"})), None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("/n"), "{err}");
        // A large payload is checked on the blocking pool, with the same answer.
        let many: serde_json::Map<String, Value> =
            (0..1000).map(|i| (format!("k{i}"), json!(i))).collect();
        let mut big = Value::Object(many);
        big["n"] = json!("x");
        let err = cache
            .check(&key, &d, Arc::new(big), None)
            .await
            .unwrap_err();
        assert!(matches!(err, PayloadCheckError::Mismatch(_)), "{err}");
    }
}
