//! Conversions between `google.protobuf.Struct`/`Value` and `serde_json::Value`.

use prost_types::{ListValue, Struct, Value, value::Kind};
use serde_json::{Map, Number};

/// Converts a protobuf `Struct` into a JSON object.
pub fn struct_to_json(s: &Struct) -> serde_json::Value {
    serde_json::Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect::<Map<_, _>>(),
    )
}

/// Converts an optional `Struct` into JSON; `None` becomes an empty object.
pub fn opt_struct_to_json(s: Option<&Struct>) -> serde_json::Value {
    s.map(struct_to_json)
        .unwrap_or_else(|| serde_json::Value::Object(Map::new()))
}

/// Converts a protobuf `Value` into JSON. Whole numbers that fit in an `i64` become integers.
pub fn value_to_json(v: &Value) -> serde_json::Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::NumberValue(n)) => number_to_json(*n),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.iter().map(value_to_json).collect())
        }
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

fn number_to_json(n: f64) -> serde_json::Value {
    // Struct carries every number as a double; give integers back as integers so schemas with
    // "type": "integer" accept them.
    if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
        serde_json::Value::Number(Number::from(n as i64))
    } else {
        Number::from_f64(n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null)
    }
}

/// Converts JSON into a protobuf `Value`.
pub fn json_to_value(v: &serde_json::Value) -> Value {
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(map_to_struct(o)),
    };
    Value { kind: Some(kind) }
}

fn map_to_struct(o: &Map<String, serde_json::Value>) -> Struct {
    Struct {
        fields: o
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect(),
    }
}

/// Converts JSON into a `Struct`. A JSON object maps field by field; any other value is wrapped
/// as `{"value": v}` because a `Struct` must be an object.
pub fn json_to_struct(v: &serde_json::Value) -> Struct {
    match v {
        serde_json::Value::Object(o) => map_to_struct(o),
        other => {
            let mut fields = std::collections::BTreeMap::new();
            fields.insert("value".to_string(), json_to_value(other));
            Struct {
                fields: fields.into_iter().collect(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_nested_json() {
        let v = json!({"a": 1, "b": [true, null, "x", 2.5], "c": {"d": -3}});
        assert_eq!(struct_to_json(&json_to_struct(&v)), v);
    }

    #[test]
    fn wraps_non_objects() {
        assert_eq!(
            struct_to_json(&json_to_struct(&json!(7))),
            json!({"value": 7})
        );
    }
}
