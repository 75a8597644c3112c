//! W3C trace context (`traceparent: 00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`) carried
//! through the mesh: the server keeps the caller's (or starts one), returns it in the response
//! metadata, writes its trace id in audit records and passes it to the agent in the `Invoke`
//! frame and to other replicas when it forwards; a handler runs inside its call's context, so the
//! calls it makes carry the same trace.
//!
//! The context of the running request is a task-local ([`scope`], [`current`]). It names the
//! span of the work in hand (a [`Span`]): every hop starts its own span as a child of the
//! context it received and passes its span's context on, so the spans of one call form one
//! tree. Spans are exported when the process installed an OpenTelemetry tracer provider and
//! called [`enable`] (`--otlp-endpoint`); otherwise a span is only a fresh span id.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _,
};
use opentelemetry::{Context, global};

/// The kinds of span and their attributes, as OpenTelemetry names them.
pub use opentelemetry::KeyValue;
pub use opentelemetry::trace::SpanKind;

/// The gRPC metadata key.
pub const HEADER: &str = "traceparent";

tokio::task_local! {
    static CURRENT: String;
}

/// The trace id of a valid `traceparent`, None otherwise (wrong shape, all-zero ids, version
/// `ff`).
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = parts.next().is_none()
        && hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && hex(span, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && span.bytes().any(|b| b != b'0');
    valid.then_some(trace)
}

/// A random non-zero id of `N` bytes as lowercase hex, from the thread-local generator (no
/// system call per id).
fn random_hex<const N: usize>() -> String {
    loop {
        let bytes: [u8; N] = rand::random();
        if bytes.iter().any(|b| *b != 0) {
            let mut out = String::with_capacity(N * 2);
            for b in bytes {
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 15)]));
            }
            return out;
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A new sampled trace: new trace id, new span id.
pub fn new_traceparent() -> String {
    format!("00-{}-{}-01", random_hex::<16>(), random_hex::<8>())
}

/// The context of the next hop: the same trace, a new span id; a new trace when `parent` is not
/// valid.
pub fn child(parent: &str) -> String {
    match trace_id(parent) {
        Some(trace) => {
            let flags = parent.rsplit('-').next().unwrap_or("01");
            format!("00-{trace}-{}-{flags}", random_hex::<8>())
        }
        None => new_traceparent(),
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Makes [`Span`]s recorded through the global OpenTelemetry tracer provider (call after
/// installing one).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// The remote parent a valid `traceparent` names.
fn span_context(traceparent: &str) -> Option<SpanContext> {
    let trace = trace_id(traceparent)?;
    let mut parts = traceparent.rsplit('-');
    let flags = u8::from_str_radix(parts.next()?, 16).ok()?;
    let span = parts.next()?;
    Some(SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(flags),
        true,
        TraceState::NONE,
    ))
}

/// A span of Croupier's own work (the server's handling of a call, its routing to an agent, a
/// forward to another replica, an agent's handler), child of the context it was started in.
/// It ends when dropped.
pub struct Span {
    otel: Option<global::BoxedSpan>,
    traceparent: String,
}

impl Span {
    /// Starts `name` as a child of `parent` (a `traceparent`; a new trace when it is None or not
    /// valid).
    pub fn start(
        name: &'static str,
        kind: SpanKind,
        parent: Option<&str>,
        attributes: Vec<KeyValue>,
    ) -> Span {
        let parent = parent.filter(|tp| trace_id(tp).is_some());
        let fresh = || parent.map(child).unwrap_or_else(new_traceparent);
        if !ENABLED.load(Ordering::Relaxed) {
            return Span {
                otel: None,
                traceparent: fresh(),
            };
        }
        let cx = match parent.and_then(span_context) {
            Some(sc) => Context::new().with_remote_span_context(sc),
            None => Context::new(),
        };
        let tracer = global::tracer("croupier");
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(&tracer, &cx);
        let sc = span.span_context();
        let traceparent = if sc.is_valid() {
            format!(
                "00-{:032x}-{:016x}-{:02x}",
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags().to_u8()
            )
        } else {
            fresh()
        };
        Span {
            otel: Some(span),
            traceparent,
        }
    }

    /// Starts `name` as a child of the current context (see [`current`]).
    pub fn in_current(name: &'static str, kind: SpanKind, attributes: Vec<KeyValue>) -> Span {
        Span::start(name, kind, current().as_deref(), attributes)
    }

    /// The context this span's children continue (this span's id).
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// Adds an attribute.
    pub fn set_attribute(&mut self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let Some(s) = &mut self.otel {
            s.set_attribute(KeyValue::new(key, value));
        }
    }

    /// Marks the span failed, with what went wrong.
    pub fn set_error(&mut self, message: impl Into<String>) {
        if let Some(s) = &mut self.otel {
            s.set_status(Status::error(message.into()));
        }
    }

    /// Runs `fut` with this span as the current context, then ends the span.
    pub async fn run<F: Future>(self, fut: F) -> F::Output {
        let out = scope(self.traceparent.clone(), fut).await;
        drop(self);
        out
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(s) = &mut self.otel {
            s.end();
        }
    }
}

/// Runs `fut` with `traceparent` as the current context.
pub async fn scope<F: Future>(traceparent: String, fut: F) -> F::Output {
    CURRENT.scope(traceparent, fut).await
}

/// The current context, when the task runs inside [`scope`].
pub fn current() -> Option<String> {
    CURRENT.try_with(Clone::clone).ok()
}

/// The trace id of the current context ("" outside one).
pub fn current_trace_id() -> String {
    current()
        .and_then(|tp| trace_id(&tp).map(str::to_string))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_generates_and_continues_traces() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(tp), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert_eq!(trace_id(bad), None, "{bad}");
        }
        let fresh = new_traceparent();
        assert!(trace_id(&fresh).is_some(), "{fresh}");
        let next = child(tp);
        assert_eq!(trace_id(&next), trace_id(tp));
        assert_ne!(next, tp);
    }

    #[tokio::test]
    async fn the_context_is_task_local() {
        assert_eq!(current(), None);
        let tp = new_traceparent();
        let seen = scope(tp.clone(), async { current() }).await;
        assert_eq!(seen, Some(tp));
        assert_eq!(current_trace_id(), "");
    }
}
