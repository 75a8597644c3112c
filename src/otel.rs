//! Span export over OTLP (`--otlp-endpoint`, off by default): installs an OpenTelemetry tracer
//! provider that batches the spans of [`croupier_proto::trace::Span`] and sends them to an OTLP
//! gRPC receiver (an OpenTelemetry Collector, Jaeger, Tempo…).
//!
//! The spans of one call: the server's `InvokeFunction`/`InvokeJob` (a child of the caller's
//! `traceparent`, or the root of a new trace), its `route` to an agent, a `forward` to the
//! replica holding the agent (whose own server span is the forward's child), and the agent's
//! `handler`, child of the span that sent it the call.

use std::time::Duration;

use anyhow::Context as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{BatchConfigBuilder, SdkTracerProvider};

/// How long finished spans wait before they are sent, at most.
const EXPORT_DELAY: Duration = Duration::from_secs(1);

/// The installed exporter; dropping it sends what is left (waits up to a few seconds).
pub struct Exporter {
    provider: SdkTracerProvider,
}

/// Installs span export to the OTLP gRPC endpoint `endpoint` (e.g. `http://collector:4317`) as
/// `service` (`croupier-server`, `croupier-agent`). Call inside the tokio runtime.
pub fn install(endpoint: &str, service: &str) -> anyhow::Result<Exporter> {
    let uri: tonic::codegen::http::Uri = endpoint
        .parse()
        .with_context(|| format!("--otlp-endpoint {endpoint:?} is not a URL"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        anyhow::bail!(
            "--otlp-endpoint {endpoint:?}: give the OTLP gRPC receiver as http://HOST:PORT \
             (usually port 4317; run a collector next to the server for TLS)"
        );
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()
        .with_context(|| format!("building the OTLP exporter for {endpoint}"))?;
    let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(EXPORT_DELAY)
                .build(),
        )
        .build();
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.to_string())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    croupier_proto::trace::enable();
    tracing::info!(endpoint, service, "exporting spans over OTLP");
    Ok(Exporter { provider })
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "sending the last spans failed");
        }
    }
}
