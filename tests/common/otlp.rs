//! An OTLP trace receiver for tests: the trace service of `opentelemetry-proto` on a free
//! port, keeping every span it is sent.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use parking_lot::Mutex;
use tonic::{Request, Response, Status};

/// A span as received: its service, name, ids (hex) and status.
#[derive(Clone, Debug)]
pub struct Got {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent: String,
    pub failed: bool,
    pub attributes: Vec<(String, String)>,
}

#[derive(Clone, Default)]
pub struct Receiver {
    pub spans: Arc<Mutex<Vec<Got>>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    match v.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(kv.value.as_ref()))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.push(Got {
                        service: service.clone(),
                        name: s.name.clone(),
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                        failed: s
                            .status
                            .as_ref()
                            .is_some_and(|st| st.code == StatusCode::Error as i32),
                        attributes: s
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
                            .collect(),
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Starts the receiver on a free port; returns it and its `http://` endpoint.
pub async fn receiver() -> (Receiver, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let r = Receiver::default();
    let service = TraceServiceServer::new(r.clone());
    croupier_proto::task::spawn("otlp receiver", async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (r, format!("http://{addr}"))
}

impl Receiver {
    /// The spans of trace `trace_id` received so far.
    pub fn spans_of(&self, trace_id: &str) -> Vec<Got> {
        let all = self.spans.lock();
        all.iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }

    /// Waits (up to 20 s) until the spans of trace `trace_id` include every name in `names`.
    pub async fn trace(&self, trace_id: &str, names: &[&str]) -> Vec<Got> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let spans = self.spans_of(trace_id);
            if names.iter().all(|n| spans.iter().any(|s| s.name == *n)) {
                return spans;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "trace {trace_id} lacks some of {names:?}: {spans:#?}\nall: {:#?}",
                self.spans.lock()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The chain of span names from `parent` (see [`chain`]) in trace `trace_id`, once it has
    /// `n` spans (or after 20 s, as far as it goes).
    pub async fn chain_of(&self, trace_id: &str, parent: &str, n: usize) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let spans = self.spans_of(trace_id);
            let names = chain(&spans, parent);
            if names.len() >= n || tokio::time::Instant::now() >= deadline {
                return names;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The trace id of the first server span for `function`.
    pub async fn trace_of(&self, function: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let found = self.spans.lock().iter().find_map(|s| {
                let f = s
                    .attributes
                    .iter()
                    .any(|(k, v)| k == "croupier.function" && v == function);
                (s.name == "InvokeFunction" && f).then(|| s.trace_id.clone())
            });
            if let Some(t) = found {
                return t;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no server span for {function}: {:#?}",
                self.spans.lock()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

pub fn one<'a>(spans: &'a [Got], name: &str) -> &'a Got {
    let found: Vec<&Got> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name} span expected: {spans:#?}");
    found[0]
}

/// The names along the chain of spans from the one whose parent is `parent`, each step the
/// (single) child of the previous one.
pub fn chain(spans: &[Got], parent: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut at = parent.to_string();
    while let Some(s) = spans.iter().find(|s| s.parent == at) {
        assert_eq!(
            spans.iter().filter(|c| c.parent == at).count(),
            1,
            "one child of {at} expected: {spans:#?}"
        );
        names.push(s.name.clone());
        at = s.span_id.clone();
    }
    names
}
