//! The admin listener: `/metrics`, `/healthz`, `/readyz`, and the authenticated admin API:
//!
//! - `GET  /v1/orders/{account}/{out_trade_no}[?fields=1]`: the ledger record (never keys or order data)
//! - `PUT  /v1/orders/{account}/{out_trade_no}`: register an order, body `{"type","total_fee","expires_in","fields"}`
//! - `GET  /v1/orders?state=quarantined|pending&account=NAME&limit=100&cursor=..`: operators' lists
//! - `POST /v1/orders/{account}/{out_trade_no}/sync`: the active trigger, body `{"type":..,"await_notify_ms":..}`
//! - `POST /v1/orders/{account}/{out_trade_no}/replay`: re-push a done order to its backend
//! - `POST /v1/orders/{account}/{out_trade_no}/resolve`: `{"action":"forward"|"dismiss"}` a quarantined order
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
use serde_json::{json, Value};

use crate::active::{ActiveError, DEFAULT_AWAIT};
use crate::config::ReconcileSettings;
use crate::connections;
use crate::context::{Kind, RequestContext};
use crate::flow::{Delivery, Gateway, ResolveError};
use crate::ledger::{Index, OrderRecord, OrderState, Registered};
use crate::reconcile::{OrderRegistration, MAX_EXPIRES_IN, MAX_FIELDS};
use crate::metrics;

/// A registration's `fields` may take 4 KiB; the rest of the body fits in the remainder.
const MAX_ADMIN_BODY: usize = 8192;

pub struct AdminApp {
    gateway: Arc<Gateway>,
    reconcile: ReconcileSettings,
}

impl AdminApp {
    pub fn new(gateway: Arc<Gateway>, reconcile: ReconcileSettings) -> Self {
        AdminApp { gateway, reconcile }
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
    r#type: Option<String>,
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
        connections::handling(self.handle(session)).await
    }
}

impl AdminApp {
    async fn handle(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
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
        let listing = path == "/v1/orders" || path == "/v1/orders/";
        let Some((account, out_trade_no, action)) = parse_order_path(&path).or(listing.then(|| ("", String::new(), None))) else {
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
        let query = session.req_header().uri.query().unwrap_or_default().to_string();
        if listing {
            if !is_get {
                return reply(405, "text/plain", b"method not allowed\n".to_vec());
            }
            return self.list(&query).await;
        }
        let (action_name, response) = match (method.as_str(), action) {
            ("GET", None) => ("get", self.get_record(account, &out_trade_no, query_param(&query, "fields") == Some("1")).await),
            ("PUT", None) => {
                let body = read_small_body(session).await;
                ("register", self.register(account, &out_trade_no, body).await)
            }
            ("POST", Some("resolve")) => {
                let body = read_small_body(session).await;
                ("resolve", RequestContext::fresh().scope(Kind::Admin, self.resolve(account, &out_trade_no, body)).await)
            }
            ("POST", Some("sync")) => {
                let body = read_small_body(session).await;
                ("sync", RequestContext::fresh().scope(Kind::Sync, self.sync(account, &out_trade_no, body)).await)
            }
            ("POST", Some("replay")) => ("replay", RequestContext::fresh().scope(Kind::Admin, self.replay(account, &out_trade_no)).await),
            _ => return reply(405, "text/plain", b"method not allowed\n".to_vec()),
        };
        tracing::info!(target: "payhook::audit", who, action = action_name, account, out_trade_no, status = response.status().as_u16(), "admin action");
        response
    }
}

impl AdminApp {
    async fn get_record(&self, account: &str, out_trade_no: &str, with_fields: bool) -> Response<Vec<u8>> {
        let Some(key) = self.gateway.routing().accounts.get(account).map(|a| a.payment_id(out_trade_no)) else {
            return error_reply(&ActiveError::UnknownAccount);
        };
        match self.gateway.ledger().record(&key).await {
            Ok(record) => json_reply(200, record_json(account, out_trade_no, record, with_fields)),
            Err(e) => error_reply(&ActiveError::Ledger(e)),
        }
    }

    async fn sync(&self, account: &str, out_trade_no: &str, body: Option<Vec<u8>>) -> Response<Vec<u8>> {
        let Some(Ok(body)) = body.map(|b| serde_json::from_slice::<SyncBody>(&b)) else {
            return json_reply(400, json!({ "error": "body must be {\"type\":\"...\",\"await_notify_ms\":500}" }));
        };
        let await_notify = body.await_notify_ms.map(Duration::from_millis).unwrap_or(DEFAULT_AWAIT);
        let result = self.gateway.sync(account, out_trade_no, body.r#type.as_deref(), await_notify).await;
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

    async fn register(&self, account: &str, out_trade_no: &str, body: Option<Vec<u8>>) -> Response<Vec<u8>> {
        let routing = self.gateway.routing();
        let Some(acct) = routing.accounts.get(account) else { return error_reply(&ActiveError::UnknownAccount) };
        let order = match body.ok_or("body must be a JSON object of at most 4 KiB".to_string()).and_then(|b| parse_registration(&b)) {
            Ok(order) => order,
            Err(reason) => return json_reply(400, json!({ "error": reason })),
        };
        if !routing.routes.contains_key(&order.order_type) {
            return json_reply(400, json!({ "error": format!("type {:?} is not a configured route", order.order_type) }));
        }
        match self.gateway.register(acct, out_trade_no, order, &self.reconcile).await {
            Ok(Registered::Created) => json_reply(201, json!({ "registered": true })),
            Ok(Registered::Same) => json_reply(200, json!({ "registered": true })),
            Ok(Registered::Conflict) => json_reply(409, json!({ "error": "conflict" })),
            Err(e) => error_reply(&ActiveError::Ledger(e)),
        }
    }

    async fn resolve(&self, account: &str, out_trade_no: &str, body: Option<Vec<u8>>) -> Response<Vec<u8>> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct ResolveBody {
            action: String,
            r#type: Option<String>,
        }
        let routing = self.gateway.routing();
        let Some(acct) = routing.accounts.get(account) else { return error_reply(&ActiveError::UnknownAccount) };
        let Some(Ok(body)) = body.map(|b| serde_json::from_slice::<ResolveBody>(&b)) else {
            return json_reply(400, json!({ "error": "body must be {\"action\":\"forward\"} or {\"action\":\"dismiss\"}" }));
        };
        let result = match body.action.as_str() {
            "forward" => self.gateway.resolve_forward(acct, out_trade_no, body.r#type.as_deref()).await.map(|d| match d {
                Delivery::Forwarded => json!({ "action": "forward", "user_order_success": true }),
                Delivery::Duplicate => json!({ "action": "forward", "user_order_success": true, "reason": "already_done" }),
                Delivery::BackendFailed(reason) => json!({ "action": "forward", "user_order_success": false, "reason": reason }),
                other => json!({ "action": "forward", "user_order_success": false, "reason": format!("{other:?}") }),
            }),
            "dismiss" => self.gateway.resolve_dismiss(acct, out_trade_no).await.map(|()| json!({ "action": "dismiss", "state": "dismissed" })),
            _ => return json_reply(400, json!({ "error": "action must be forward or dismiss" })),
        };
        match result {
            Ok(value) => json_reply(200, value),
            Err(ResolveError::NotQuarantined) => json_reply(409, json!({ "error": "not_quarantined" })),
            Err(ResolveError::TypeNeeded) => json_reply(400, json!({ "error": "type_needed" })),
            Err(ResolveError::UnknownType) => error_reply(&ActiveError::UnknownType),
            Err(ResolveError::Busy(_)) => json_reply(409, json!({ "error": "busy" })),
            Err(ResolveError::Ledger(e)) => error_reply(&ActiveError::Ledger(e)),
        }
    }

    /// `GET /v1/orders?state=quarantined|pending&account=NAME&limit=100&cursor=…`, newest first.
    async fn list(&self, query: &str) -> Response<Vec<u8>> {
        let index = match query_param(query, "state") {
            Some("quarantined") => Index::Quarantined,
            Some("pending") => Index::Pending,
            _ => return json_reply(400, json!({ "error": "state must be quarantined or pending" })),
        };
        let limit = match query_param(query, "limit").map(str::parse::<usize>) {
            None => 100,
            Some(Ok(n)) if (1..=1000).contains(&n) => n,
            Some(_) => return json_reply(400, json!({ "error": "limit must be 1 to 1000" })),
        };
        let routing = self.gateway.routing();
        let mut accounts: Vec<&str> = match query_param(query, "account") {
            Some(name) if routing.accounts.contains_key(name) => vec![name],
            Some(_) => return error_reply(&ActiveError::UnknownAccount),
            None => routing.accounts.keys().map(String::as_str).collect(),
        };
        accounts.sort_unstable();
        let cursor = match query_param(query, "cursor").map(decode_cursor) {
            None => None,
            Some(Some(cursor)) => Some(cursor),
            Some(None) => return json_reply(400, json!({ "error": "bad cursor" })),
        };
        // Merge the accounts' pages by score, newest first; one page of each is enough.
        let mut entries = Vec::new();
        for account in &accounts {
            match self.gateway.ledger().index_page(index, account, cursor.clone(), limit + 1).await {
                Ok(page) => entries.extend(page.into_iter().map(|(score, key)| (score, key, *account))),
                Err(e) => return error_reply(&ActiveError::Ledger(e)),
            }
        }
        entries.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.as_str().cmp(a.1.as_str())));
        let more = entries.len() > limit;
        entries.truncate(limit);
        let mut orders = Vec::new();
        for (_, key, account) in &entries {
            match self.gateway.ledger().record(key).await {
                Ok(record) => orders.push(record_json(account, key.out_trade_no(), record, false)),
                Err(e) => return error_reply(&ActiveError::Ledger(e)),
            }
        }
        let next = entries.last().filter(|_| more).map(|(score, key, _)| encode_cursor(*score, key.as_str()));
        json_reply(200, json!({ "orders": orders, "next_cursor": next }))
    }

    async fn replay(&self, account: &str, out_trade_no: &str) -> Response<Vec<u8>> {
        match self.gateway.replay(account, out_trade_no).await {
            Ok(report) => json_reply(200, serde_json::to_value(report).expect("report serialises")),
            Err(e) => error_reply(&e),
        }
    }
}

/// The JSON an operator sees of a record: never order data; `fields` only when asked.
fn record_json(account: &str, out_trade_no: &str, record: Option<OrderRecord>, with_fields: bool) -> Value {
    let mut value = json!({ "account": account, "out_trade_no": out_trade_no, "state": OrderState::None, "registered": false });
    if let Some(mut record) = record {
        // The order data holds the customer's payment: it stays in the ledger for re-push.
        record.order_data = None;
        if let Some(q) = record.quarantine.as_mut() {
            q.order_data.clear();
        }
        let fields = record.fields.take().filter(|_| with_fields);
        let expires_at = record.expires_at_ms;
        let map = value.as_object_mut().expect("object");
        map.extend(serde_json::to_value(record).expect("record serialises").as_object().expect("object").clone());
        if let Some(at) = expires_at {
            map.insert("expires_at".into(), at.into());
        }
        if let Some(fields) = fields {
            map.insert("fields".into(), serde_json::from_str(&fields).unwrap_or(Value::Null));
        }
    }
    value
}

/// Validates a registration body: what is wrong is said in the 400's `error`.
fn parse_registration(body: &[u8]) -> Result<OrderRegistration, String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        r#type: String,
        total_fee: Value,
        expires_in: Option<String>,
        fields: Option<Value>,
    }
    let body: Body = serde_json::from_slice(body).map_err(|e| format!("body is not a registration: {e}"))?;
    let total_fee = body.total_fee.as_u64().filter(|fee| *fee > 0).ok_or("total_fee must be an integer number of fen above 0")?;
    let expires_in = match body.expires_in {
        Some(text) => match humantime::parse_duration(&text) {
            Err(_) => return Err(format!("expires_in {text:?} is not a duration such as \"2h\"")),
            Ok(d) if d.is_zero() => return Err("expires_in must be above 0".into()),
            Ok(d) if d > MAX_EXPIRES_IN => return Err("expires_in must be at most 400d".into()),
            Ok(d) => Some(d),
        },
        None => None,
    };
    let fields = match body.fields {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => {
            let text = serde_json::to_string(&map).expect("a JSON map serialises");
            if text.len() > MAX_FIELDS {
                return Err(format!("fields must be at most {MAX_FIELDS} bytes"));
            }
            Some(text)
        }
        Some(_) => return Err("fields must be a JSON object".into()),
    };
    Ok(OrderRegistration { order_type: body.r#type, total_fee, expires_in, fields })
}

fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| pair.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v))
}

/// A list cursor: the last entry's score and key, opaque to clients.
fn encode_cursor(score: i64, key: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{score}:{key}"))
}

fn decode_cursor(text: &str) -> Option<(i64, String)> {
    use base64::Engine;
    let raw = String::from_utf8(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).ok()?).ok()?;
    let (score, key) = raw.split_once(':')?;
    Some((score.parse().ok()?, key.to_string()))
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
