//! The admin listener: `/metrics`, `/healthz`, `/readyz`, and the authenticated admin API:
//!
//! - `GET  /v1/orders/{account}/{out_trade_no}`: the ledger record (never keys or order data)
//! - `POST /v1/orders/{account}/{out_trade_no}/sync`: the active trigger, body `{"type":..,"await_notify_ms":..}`
//! - `POST /v1/orders/{account}/{out_trade_no}/replay`: re-push a done order to its backend
//!
//! Every admin action is written as one audit line (target `payhook::audit`): who, what, result.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde::Deserialize;
use serde_json::json;

use crate::active::{ActiveError, DEFAULT_AWAIT};
use crate::flow::Gateway;
use crate::ledger::OrderState;
use crate::metrics;

const MAX_ADMIN_BODY: usize = 4096;

pub struct AdminApp {
    gateway: Arc<Gateway>,
}

impl AdminApp {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        AdminApp { gateway }
    }

    /// The name of the token presented, if any of the tokens in force matches (a reload may have
    /// revoked one). Every token is compared, in constant time, so timing reveals neither a
    /// token nor which one matched.
    fn caller(&self, session: &ServerSession) -> Option<String> {
        let presented = session
            .get_header(http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or_default();
        let mut found = None;
        for (name, token) in &self.gateway.routing().admin_tokens {
            if token.matches(presented) && !presented.is_empty() {
                found = Some(name.clone());
            }
        }
        found
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

fn json_reply(status: u16, value: serde_json::Value) -> Response<Vec<u8>> {
    reply(status, "application/json", serde_json::to_vec(&value).expect("JSON value serialises"))
}

fn error_reply(e: &ActiveError) -> Response<Vec<u8>> {
    let status = match e {
        ActiveError::UnknownAccount | ActiveError::UnknownType => 404,
        ActiveError::QueryUnsupported | ActiveError::NotDone => 409,
        ActiveError::TypeMismatch { recorded } => return json_reply(409, json!({ "error": e.reason(), "type": recorded })),
        ActiveError::Query(_) => 502,
        ActiveError::Ledger(_) => 503,
    };
    json_reply(status, json!({ "error": e.reason() }))
}

/// `/v1/orders/{account}/{out_trade_no}[/{action}]`.
fn parse_order_path(path: &str) -> Option<(&str, String, Option<&str>)> {
    let mut parts = path.strip_prefix("/v1/orders/")?.split('/');
    let account = parts.next().filter(|s| !s.is_empty())?;
    let order = percent_encoding::percent_decode_str(parts.next().filter(|s| !s.is_empty())?).decode_utf8().ok()?.into_owned();
    let action = parts.next();
    if parts.next().is_some() {
        return None;
    }
    Some((account, order, action))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncBody {
    r#type: String,
    await_notify_ms: Option<u64>,
}

async fn read_small_body(session: &mut ServerSession) -> Option<Vec<u8>> {
    let mut buf = BytesMut::new();
    let read = async {
        while let Some(chunk) = session.read_request_body().await.ok()? {
            if buf.len() + chunk.len() > MAX_ADMIN_BODY {
                return None;
            }
            buf.extend_from_slice(&chunk);
        }
        Some(())
    };
    tokio::time::timeout(Duration::from_secs(5), read).await.ok()??;
    Some(buf.to_vec())
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let method = session.req_header().method.clone();
        let is_get = method == http::Method::GET;
        match path.as_str() {
            "/metrics" if is_get => return reply(200, "text/plain; version=0.0.4", metrics::render()),
            "/healthz" if is_get => return reply(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" if is_get => {
                return match self.gateway.ledger().ping().await {
                    Ok(()) => reply(200, "text/plain", b"ready\n".to_vec()),
                    Err(e) => {
                        tracing::warn!(error = %e, "readiness check: ledger unreachable");
                        reply(503, "text/plain", b"ledger unavailable\n".to_vec())
                    }
                }
            }
            _ => {}
        }
        let Some((account, out_trade_no, action)) = parse_order_path(&path) else {
            return reply(404, "text/plain", b"not found\n".to_vec());
        };
        let Some(who) = self.caller(session) else {
            tracing::warn!(target: "payhook::audit", path, "admin request without a valid token");
            session.set_keepalive(None);
            return Response::builder()
                .status(401)
                .header(http::header::WWW_AUTHENTICATE, "Bearer")
                .header(http::header::CONTENT_LENGTH, 0)
                .body(Vec::new())
                .expect("static response");
        };
        let (action_name, response) = match (method.as_str(), action) {
            ("GET", None) => ("get", self.get_record(account, &out_trade_no).await),
            ("POST", Some("sync")) => {
                let body = read_small_body(session).await;
                ("sync", self.sync(account, &out_trade_no, body).await)
            }
            ("POST", Some("replay")) => ("replay", self.replay(account, &out_trade_no).await),
            _ => return reply(405, "text/plain", b"method not allowed\n".to_vec()),
        };
        tracing::info!(target: "payhook::audit", who, action = action_name, account, out_trade_no, status = response.status().as_u16(), "admin action");
        response
    }
}

impl AdminApp {
    async fn get_record(&self, account: &str, out_trade_no: &str) -> Response<Vec<u8>> {
        let Some(key) = self.gateway.routing().accounts.get(account).map(|a| a.payment_id(out_trade_no)) else {
            return error_reply(&ActiveError::UnknownAccount);
        };
        match self.gateway.ledger().record(&key).await {
            Ok(record) => {
                let mut value = json!({ "account": account, "out_trade_no": out_trade_no, "state": OrderState::None });
                if let Some(mut record) = record {
                    // The order data holds the customer's payment: it stays in the ledger for re-push.
                    record.order_data = None;
                    let fields = serde_json::to_value(record).expect("record serialises");
                    value.as_object_mut().expect("object").extend(fields.as_object().expect("object").clone());
                }
                json_reply(200, value)
            }
            Err(e) => error_reply(&ActiveError::Ledger(e)),
        }
    }

    async fn sync(&self, account: &str, out_trade_no: &str, body: Option<Vec<u8>>) -> Response<Vec<u8>> {
        let Some(Ok(body)) = body.map(|b| serde_json::from_slice::<SyncBody>(&b)) else {
            return json_reply(400, json!({ "error": "body must be {\"type\":\"...\",\"await_notify_ms\":500}" }));
        };
        let await_notify = body.await_notify_ms.map(Duration::from_millis).unwrap_or(DEFAULT_AWAIT);
        let result = self.gateway.sync(account, out_trade_no, &body.r#type, await_notify).await;
        let label = match &result {
            Ok(report) => report.label(),
            Err(e) => e.reason(),
        };
        if self.gateway.routing().accounts.contains_key(account) {
            metrics::SYNC.with_label_values(&[account, label]).inc();
        }
        match result {
            Ok(report) => json_reply(200, serde_json::to_value(report).expect("report serialises")),
            Err(e) => error_reply(&e),
        }
    }

    async fn replay(&self, account: &str, out_trade_no: &str) -> Response<Vec<u8>> {
        match self.gateway.replay(account, out_trade_no).await {
            Ok(report) => json_reply(200, serde_json::to_value(report).expect("report serialises")),
            Err(e) => error_reply(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_paths() {
        assert_eq!(parse_order_path("/v1/orders/wx/o-1"), Some(("wx", "o-1".to_string(), None)));
        assert_eq!(parse_order_path("/v1/orders/wx/o%2F1/sync"), Some(("wx", "o/1".to_string(), Some("sync"))));
        assert_eq!(parse_order_path("/v1/orders/wx/"), None);
        assert_eq!(parse_order_path("/v1/orders/wx/o/sync/x"), None);
    }
}
