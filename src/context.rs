//! The request id (and W3C `traceparent`) of one notification, sync or sweep check. Every log
//! line of the request carries `request_id` (a tracing span), and the backend receives it as
//! `X-Request-Id`, so one id follows a payment from the provider's request to the backend's log.
//! With OTLP export the request's span continues the caller's `traceparent` and the backend gets
//! payhook's own; without it the caller's goes to the backend unchanged.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// What a request is: its span's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Notification,
    Sync,
    Sweep,
    Admin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    pub request_id: String,
    pub traceparent: Option<String>,
}

tokio::task_local! {
    static CURRENT: RequestContext;
}

impl RequestContext {
    /// From the incoming headers: a sane `X-Request-Id` is kept (a load balancer's), else a new one.
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let request_id = header("x-request-id")
            .filter(|id| !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
            .map(str::to_string)
            .unwrap_or_else(new_request_id);
        let traceparent = header("traceparent").filter(|t| is_traceparent(t)).map(str::to_string);
        RequestContext { request_id, traceparent }
    }

    pub fn fresh() -> Self {
        RequestContext { request_id: new_request_id(), traceparent: None }
    }

    /// Runs `fut` with this context: its log lines carry `request_id`, its backend calls send
    /// it, and (with OTLP) it is one span named after `kind`.
    pub async fn scope<F: std::future::Future>(self, kind: Kind, fut: F) -> F::Output {
        let id = self.request_id.as_str();
        let span = match kind {
            Kind::Notification => tracing::info_span!("notification", request_id = %id),
            Kind::Sync => tracing::info_span!("sync", request_id = %id),
            Kind::Sweep => tracing::info_span!("sweep", request_id = %id),
            Kind::Admin => tracing::info_span!("admin", request_id = %id),
        };
        if let Some(traceparent) = &self.traceparent {
            let carrier = HashMap::from([("traceparent".to_string(), traceparent.clone())]);
            // Err only when no OTLP layer is installed: then there is no trace to continue.
            let _ = span.set_parent(TraceContextPropagator::new().extract(&carrier));
        }
        CURRENT.scope(self, fut.instrument(span)).await
    }

    /// The `traceparent` for a backend call made now: the current span's when OTLP export is on
    /// (so the backend's spans hang under payhook's), else the caller's as it came.
    pub fn outgoing_traceparent(&self) -> Option<String> {
        let cx = tracing::Span::current().context();
        if !cx.span().span_context().is_valid() {
            return self.traceparent.clone();
        }
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut carrier);
        carrier.remove("traceparent")
    }

    /// The context of the running request, if any.
    pub fn current() -> Option<RequestContext> {
        CURRENT.try_with(Clone::clone).ok()
    }
}

fn new_request_id() -> String {
    crate::keys::unique_hex(8)
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>` (W3C Trace Context, version 00).
fn is_traceparent(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    parts.len() == 4 && hex(parts[0], 2) && hex(parts[1], 32) && hex(parts[2], 16) && hex(parts[3], 2) && parts[1] != "0".repeat(32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_and_traceparents_are_kept_only_when_sane() {
        let mut h = http::HeaderMap::new();
        h.insert("x-request-id", "lb-123_abc".parse().unwrap());
        h.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
        let ctx = RequestContext::from_headers(&h);
        assert_eq!(ctx.request_id, "lb-123_abc");
        assert_eq!(ctx.traceparent.as_deref(), Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        h.insert("x-request-id", "bad id\\n".parse().unwrap_or(http::HeaderValue::from_static("bad id")));
        h.insert("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01".parse().unwrap());
        let ctx = RequestContext::from_headers(&h);
        assert_eq!(ctx.request_id.len(), 16);
        assert_eq!(ctx.traceparent, None);
    }
}
