//! Logs and traces: log lines to stderr (text or JSON), and, when `[telemetry] otlp_endpoint` is
//! set, OpenTelemetry spans over OTLP/HTTP (JSON): one span per notification (or sync, sweep
//! check, admin action) with child spans `verify`, `claim`, `forward` and `settle`.
//!
//! The child spans are at debug level and only the OTLP layer takes them, so without an
//! endpoint they cost nothing on the hot path.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// How long finished spans wait to be sent in one batch.
const EXPORT_DELAY: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
#[error("cannot set up OTLP export: {0}")]
pub struct TelemetryError(String);

/// Installs the global subscriber. Keep the returned provider alive: dropping it stops export.
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> Result<Option<SdkTracerProvider>, TelemetryError> {
    // The level comes from PAYHOOK_LOG, else RUST_LOG, else info.
    let filter = EnvFilter::try_from_env("PAYHOOK_LOG").or_else(|_| EnvFilter::try_from_env("RUST_LOG")).unwrap_or_else(|_| "info".into());
    let logs = match format {
        // One object per line; the request's span (request_id) is in `span`.
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_current_span(true).with_span_list(false).with_writer(std::io::stderr).boxed(),
        // Plain text, never colour codes: built with the `ansi` feature, tracing-subscriber styles
        // every part of every line even with colours off (~0.9 % of a notification's
        // instructions). Control characters in values are still escaped (ansi_sanitization).
        LogFormat::Text => tracing_subscriber::fmt::layer().with_ansi(false).with_writer(std::io::stderr).boxed(),
    };
    let registry = tracing_subscriber::registry().with(logs.with_filter(filter));
    let Some(endpoint) = otlp_endpoint else {
        registry.init();
        return Ok(None);
    };
    let traces = if endpoint.ends_with("/v1/traces") { endpoint.to_string() } else { format!("{}/v1/traces", endpoint.trim_end_matches('/')) };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(traces)
        .build()
        .map_err(|e| TelemetryError(e.to_string()))?;
    let batch = BatchSpanProcessor::builder(exporter).with_batch_config(BatchConfigBuilder::default().with_scheduled_delay(EXPORT_DELAY).build()).build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(batch)
        .with_resource(opentelemetry_sdk::Resource::builder().with_service_name("payhook").build())
        .build();
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("payhook"))
        .with_filter(filter_fn(|meta| meta.is_span() && meta.target().starts_with("payhook")));
    registry.with(spans).init();
    Ok(Some(provider))
}
