//! Typed functions: descriptors whose `params_schema` and `result_schema` are derived from Rust
//! types with [`schemars`], and handlers that take and return those types.
//!
//! ```no_run
//! # use croupier_sdk::{HandlerError, Provider, ProviderConfig, TlsFiles};
//! # use croupier_sdk::proto::common::v1::FunctionDescriptor;
//! use schemars::JsonSchema;
//! use serde::{Deserialize, Serialize};
//!
//! /// Kick a player from a table.
//! #[derive(Deserialize, JsonSchema)]
//! struct Kick {
//!     player_id: String,
//!     /// Shown to the player.
//!     reason: Option<String>,
//! }
//!
//! #[derive(Serialize, JsonSchema)]
//! struct Kicked {
//!     player_id: String,
//! }
//!
//! # fn demo(cfg: ProviderConfig) -> Provider {
//! let template = FunctionDescriptor {
//!     description: "Kicks a player.".into(),
//!     ..Default::default()
//! };
//! Provider::new(cfg).typed_function("player.kick", template, |kick: Kick, _call| async move {
//!     Ok::<_, HandlerError>(Kicked { player_id: kick.player_id })
//! })
//! # }
//! ```
//!
//! The server checks payloads against the derived `params_schema` before they reach the agent,
//! so a bad payload is the caller's `INVALID_ARGUMENT` naming the field. Should one get through
//! anyway (a hand-edited descriptor, a constraint JSON Schema cannot express), the handler is
//! not called and the caller gets a handler error `INVALID_ARGUMENT` with the path of the field
//! and what was wrong with it.

use std::future::Future;
use std::sync::Arc;

use croupier_proto::common::v1::FunctionDescriptor;
use croupier_proto::json::json_to_struct;
use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::job::JobContext;
use crate::provider::{HandlerError, Invocation, Provider};

/// The JSON Schema of `T` as a payload (how `T` deserializes), draft 2020-12.
pub fn params_schema<T: JsonSchema + ?Sized>() -> serde_json::Value {
    object_schema(
        SchemaSettings::draft2020_12()
            .for_deserialize()
            .into_generator()
            .into_root_schema_for::<T>()
            .to_value(),
    )
}

/// The JSON Schema of `T` as a result (how `T` serializes), draft 2020-12.
pub fn result_schema<T: JsonSchema + ?Sized>() -> serde_json::Value {
    object_schema(
        SchemaSettings::draft2020_12()
            .for_serialize()
            .into_generator()
            .into_root_schema_for::<T>()
            .to_value(),
    )
}

/// A descriptor carries schemas as `Struct`s, which are objects: `true` becomes `{}` and
/// `false` becomes `{"not": {}}`.
fn object_schema(schema: serde_json::Value) -> serde_json::Value {
    match schema {
        serde_json::Value::Bool(true) => serde_json::json!({}),
        serde_json::Value::Bool(false) => serde_json::json!({"not": {}}),
        other => other,
    }
}

/// `template` with the id (and the name, when empty) set to `id` and both schemas derived from
/// `P` and `R`.
pub fn typed_descriptor<P, R>(id: &str, mut template: FunctionDescriptor) -> FunctionDescriptor
where
    P: JsonSchema + ?Sized,
    R: JsonSchema + ?Sized,
{
    template.id = id.to_string();
    if template.name.is_empty() {
        template.name = id.to_string();
    }
    template.params_schema = Some(json_to_struct(&params_schema::<P>()));
    template.result_schema = Some(json_to_struct(&result_schema::<R>()));
    template
}

/// Deserializes `value` as `T`; the error names the offending field ("at stake: invalid type:
/// string \"lots\", expected u32").
pub(crate) fn from_json<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, String> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path.is_empty() {
            e.into_inner().to_string()
        } else {
            format!("at {path}: {}", e.into_inner())
        }
    })
}

/// A typed handler's payload, or `INVALID_ARGUMENT` saying what is wrong with it.
fn params<P: DeserializeOwned>(
    function: &str,
    payload: &serde_json::Value,
) -> Result<P, HandlerError> {
    from_json(payload).map_err(|why| {
        HandlerError::new(
            "INVALID_ARGUMENT",
            format!("the payload of {function} does not match its parameters: {why}"),
        )
    })
}

/// A typed handler's result as JSON.
fn result<R: Serialize>(function: &str, r: &R) -> Result<serde_json::Value, HandlerError> {
    serde_json::to_value(r)
        .map_err(|e| HandlerError::internal(format!("encoding the result of {function}: {e}")))
}

impl Provider {
    /// Registers a typed function: `P` is its payload and `R` its result. The descriptor is
    /// `template` with `id` and with `params_schema`/`result_schema` derived from `P` and `R`,
    /// so the schemas the server enforces never drift from the code. The handler gets the
    /// decoded payload and the [`Invocation`] (cancellation, deadline, caller); a payload that
    /// does not decode never reaches it (see the [module docs](crate::typed)).
    pub fn typed_function<P, R, F, Fut>(
        self,
        id: &str,
        template: FunctionDescriptor,
        handler: F,
    ) -> Self
    where
        P: DeserializeOwned + JsonSchema + Send + 'static,
        R: Serialize + JsonSchema + 'static,
        F: Fn(P, Invocation) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
    {
        let descriptor = typed_descriptor::<P, R>(id, template);
        let handler = Arc::new(handler);
        let function: Arc<str> = id.into();
        self.function(descriptor, move |call| {
            let handler = handler.clone();
            let function = function.clone();
            async move {
                let p = params::<P>(&function, &call.payload)?;
                let r = handler(p, call).await?;
                result(&function, &r)
            }
        })
    }

    /// Registers a typed job: like [`Provider::typed_function`], with a handler that gets a
    /// [`JobContext`] to report progress, logs and data (see [`Provider::job`]).
    pub fn typed_job<P, R, F, Fut>(self, id: &str, template: FunctionDescriptor, handler: F) -> Self
    where
        P: DeserializeOwned + JsonSchema + Send + 'static,
        R: Serialize + JsonSchema + 'static,
        F: Fn(P, JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
    {
        let descriptor = typed_descriptor::<P, R>(id, template);
        let handler = Arc::new(handler);
        let function: Arc<str> = id.into();
        self.job(descriptor, move |ctx| {
            let handler = handler.clone();
            let function = function.clone();
            async move {
                let p = params::<P>(&function, ctx.payload())?;
                let r = handler(p, ctx).await?;
                result(&function, &r)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use croupier_proto::common::v1::Semantics;
    use croupier_proto::json::struct_to_json;
    use serde::Deserialize;
    use serde_json::json;

    /// A bet.
    #[derive(Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Bet {
        player: String,
        /// Chips.
        stake: u32,
        color: Color,
        note: Option<String>,
    }

    #[derive(Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
    #[serde(rename_all = "lowercase")]
    enum Color {
        Red,
        Black,
    }

    #[derive(Serialize, JsonSchema)]
    struct Payout {
        won: bool,
        chips: u64,
    }

    #[test]
    fn schemas_come_from_the_types() {
        let p = params_schema::<Bet>();
        assert_eq!(p["$schema"], "https://json-schema.org/draft/2020-12/schema");
        assert_eq!(p["type"], "object");
        assert_eq!(p["properties"]["stake"]["type"], "integer");
        assert_eq!(p["properties"]["stake"]["minimum"], 0);
        assert_eq!(p["properties"]["stake"]["description"], "Chips.");
        assert_eq!(p["additionalProperties"], false);
        let required: Vec<&str> = p["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(required, ["player", "stake", "color"]);
        let r = result_schema::<Payout>();
        assert_eq!(r["properties"]["won"]["type"], "boolean");
        assert_eq!(object_schema(json!(true)), json!({}));
    }

    #[test]
    fn the_descriptor_keeps_the_template_and_takes_the_schemas() {
        let template = FunctionDescriptor {
            description: "Places a bet.".into(),
            semantics: Some(Semantics {
                kind: "command".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let d = typed_descriptor::<Bet, Payout>("casino.bet", template);
        assert_eq!(
            (d.id.as_str(), d.name.as_str()),
            ("casino.bet", "casino.bet")
        );
        assert_eq!(d.description, "Places a bet.");
        assert_eq!(d.semantics.unwrap().kind, "command");
        assert_eq!(
            struct_to_json(d.params_schema.as_ref().unwrap()),
            struct_to_json(&json_to_struct(&params_schema::<Bet>()))
        );
        assert_eq!(
            struct_to_json(d.result_schema.as_ref().unwrap()),
            struct_to_json(&json_to_struct(&result_schema::<Payout>()))
        );
    }

    #[test]
    fn a_payload_that_does_not_decode_is_invalid_argument_naming_the_field() {
        let ok: Bet = params(
            "casino.bet",
            &json!({"player": "p1", "stake": 5, "color": "red"}),
        )
        .unwrap();
        assert_eq!(ok.color, Color::Red);
        let e = params::<Bet>(
            "casino.bet",
            &json!({"player": "p1", "stake": "lots", "color": "red"}),
        )
        .unwrap_err();
        assert_eq!(e.code, "INVALID_ARGUMENT");
        assert!(
            e.message
                .starts_with("the payload of casino.bet does not match its parameters: at stake:"),
            "{}",
            e.message
        );
        let e = params::<Bet>("casino.bet", &json!({"player": "p1", "stake": 1})).unwrap_err();
        assert!(e.message.contains("missing field `color`"), "{}", e.message);
        let e = params::<Bet>(
            "casino.bet",
            &json!({"player": "p1", "stake": 1, "color": "green"}),
        )
        .unwrap_err();
        assert!(e.message.contains("at color:"), "{}", e.message);
    }
}
