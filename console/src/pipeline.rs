//! Pipeline templates in their TOML form, the one `croupier pipeline put` reads:
//! `GET /api/pipeline-toml/{id}` shows a stored template as TOML, and `POST /api/pipeline-toml`
//! parses TOML and stores it through `PutPipeline` (which validates it and checks the policy).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use croupier_function::pipeline::file::{parse_template, template_toml};
use croupier_proto::function::v1::function_service_server::FunctionService;
use croupier_proto::function::v1::{GetPipelineRequest, PutPipelineRequest};
use serde_json::json;

use crate::Console;
use crate::auth::{Principal, error};
use crate::rpc::{ApiError, request};

/// `GET /api/pipeline-toml/{id}`: `{"toml"}` (empty when the template has no TOML form).
pub async fn get(
    State(console): State<Arc<Console>>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let resp = console
        .backend
        .function
        .get_pipeline(request(GetPipelineRequest { id }, &p.identity))
        .await?
        .into_inner();
    let toml = resp
        .template
        .as_ref()
        .and_then(template_toml)
        .unwrap_or_default();
    Ok(Json(json!({ "toml": toml })))
}

/// `POST /api/pipeline-toml` with the TOML as the body: `{"id", "revision"}`.
pub async fn put(
    State(console): State<Arc<Console>>,
    axum::Extension(p): axum::Extension<Principal>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let text = std::str::from_utf8(&body).map_err(|_| {
        ApiError::from(error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "the template is not UTF-8 text",
        ))
    })?;
    let template = parse_template(text, false).map_err(|e| {
        ApiError::from(error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            format!("the template is not valid TOML for a pipeline: {e}"),
        ))
    })?;
    let id = template.id.clone();
    let resp = console
        .backend
        .function
        .put_pipeline(request(
            PutPipelineRequest {
                template: Some(template),
            },
            &p.identity,
        ))
        .await?
        .into_inner();
    Ok(Json(json!({ "id": id, "revision": resp.revision })))
}
