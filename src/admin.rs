//! The admin listener: `/metrics`, `/healthz`, `/readyz`, and the authenticated admin API.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::flow::Gateway;
use crate::metrics;

pub struct AdminApp {
    gateway: Arc<Gateway>,
}

impl AdminApp {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        AdminApp { gateway }
    }
}

pub(crate) fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .expect("static status and headers are valid")
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let is_get = session.req_header().method == http::Method::GET;
        match path.as_str() {
            "/metrics" if is_get => reply(200, "text/plain; version=0.0.4", metrics::render()),
            "/healthz" if is_get => reply(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" if is_get => match self.gateway.ledger().ping().await {
                Ok(()) => reply(200, "text/plain", b"ready\n".to_vec()),
                Err(e) => {
                    tracing::warn!(error = %e, "readiness check: ledger unreachable");
                    reply(503, "text/plain", b"ledger unavailable\n".to_vec())
                }
            },
            _ => reply(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}
