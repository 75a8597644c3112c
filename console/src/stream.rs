//! `GET /api/stream/{Method}?request=JSON`: the streaming rpcs as Server-Sent Events.
//!
//! Each message of the rpc's stream is one event, its data the message in protobuf JSON and
//! its id the message's position (a job event's `seq`, a node event's `seq`, a registration
//! event's `revision`). A browser's `EventSource` sends the last id back as `Last-Event-ID`
//! when it reconnects, and the stream resumes right after it (`from_seq` / `start_revision`),
//! so a dropped connection loses nothing and repeats nothing. A failure of the rpc is sent as
//! an `error` event (`{"code", "message"}`) and ends the stream.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use croupier_proto::control::v1::control_service_server::ControlService;
use croupier_proto::function::v1::function_service_server::FunctionService;
use croupier_proto::registry::v1::registry_service_server::RegistryService;
use futures::{Stream, StreamExt};
use prost_reflect::{MessageDescriptor, MethodDescriptor};
use serde::Deserialize;
use serde_json::json;

use crate::Console;
use crate::auth::{Principal, error};
use crate::rpc::{ApiError, Transcoder, request};

/// The query string of a stream.
#[derive(Deserialize, Default)]
pub struct StreamQuery {
    /// The rpc's request as protobuf JSON; empty for the default request.
    #[serde(default)]
    pub request: String,
}

/// A stream of SSE events.
pub type Events = Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>>;

fn events<T, S>(desc: MessageDescriptor, stream: S, id: fn(&T) -> i64) -> Events
where
    T: prost::Message + 'static,
    S: Stream<Item = Result<T, tonic::Status>> + Send + 'static,
{
    Box::pin(stream.scan(false, move |failed, item| {
        if *failed {
            return futures::future::ready(None);
        }
        futures::future::ready(Some(Ok(match item {
            Ok(msg) => {
                let data = Transcoder::encode(desc.clone(), &msg).to_string();
                let event = Event::default().data(data);
                match id(&msg) {
                    0 => event,
                    n => event.id(n.to_string()),
                }
            }
            Err(status) => {
                *failed = true;
                Event::default().event("error").data(
                    json!({"code": crate::rpc::code_name(status.code()), "message": status.message()})
                        .to_string(),
                )
            }
        })))
    }))
}

/// `GET /api/stream/{Method}`.
pub async fn stream(
    State(console): State<Arc<Console>>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(name): Path<String>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(m) = console
        .rpc
        .method(&name)
        .filter(MethodDescriptor::is_server_streaming)
    else {
        return Err(ApiError::from(error(
            StatusCode::NOT_FOUND,
            "UNKNOWN_STREAM",
            format!(
                "{name:?} is not a stream the console serves: WatchRegistrations, \
                 StreamJobEvents, StreamNodeEvents"
            ),
        )));
    };
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    let body = q.request.as_bytes();
    let who = &p.identity;
    let b = &console.backend;
    let out = m.output();
    let events = match name.as_str() {
        "WatchRegistrations" => {
            let mut req: croupier_proto::registry::v1::WatchRegistrationsRequest =
                Transcoder::decode(m.input(), body)?;
            if let Some(rev) = resume {
                req.start_revision = rev + 1;
            }
            let s = b.registry.watch_registrations(request(req, who)).await?;
            events(out, s.into_inner(), |e| e.revision)
        }
        "StreamJobEvents" => {
            let mut req: croupier_proto::function::v1::StreamJobEventsRequest =
                Transcoder::decode(m.input(), body)?;
            if let Some(seq) = resume {
                req.from_seq = seq + 1;
            }
            let s = b.function.stream_job_events(request(req, who)).await?;
            events(out, s.into_inner(), |e| e.seq)
        }
        "StreamNodeEvents" => {
            let mut req: croupier_proto::control::v1::StreamNodeEventsRequest =
                Transcoder::decode(m.input(), body)?;
            if let Some(seq) = resume {
                req.from_seq = seq + 1;
            }
            let s = b.control.stream_node_events(request(req, who)).await?;
            events(out, s.into_inner(), |e| {
                e.event.as_ref().map_or(0, |ev| ev.seq)
            })
        }
        _ => {
            return Err(ApiError::from(error(
                StatusCode::NOT_FOUND,
                "UNKNOWN_STREAM",
                format!("{name} is listed but not served"),
            )));
        }
    };
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
