//! pingora glue for the notify listener: route the path, read the body within its limit,
//! hand the bytes to [`Gateway::notify`], write the reply with an exact Content-Length.
//! Every decision lives in [`crate::flow`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::connections;
use crate::context::{Kind, RequestContext};
use crate::flow::Gateway;
use crate::metrics;
use crate::provider::Reply;

pub struct NotifyApp {
    gateway: Arc<Gateway>,
    /// Hands the notify runtime to the ledger once, for its connection's I/O task.
    runtime_adopted: std::sync::Once,
    body_limit: usize,
    /// A client has this long to send the whole body (slowloris bound).
    body_timeout: Duration,
}

impl NotifyApp {
    pub fn new(gateway: Arc<Gateway>, body_limit: usize, body_timeout: Duration) -> Self {
        NotifyApp { gateway, runtime_adopted: std::sync::Once::new(), body_limit, body_timeout }
    }
}

/// `/notify/{account}/{type}` → (account, type); `/notify/{account}` → (account, None): the
/// registered type decides, as vk-uni-pay reads it from the order row.
pub fn parse_notify_path(path: &str) -> Option<(&str, Option<&str>)> {
    let rest = path.strip_prefix("/notify/")?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (account, order_type) = match rest.split_once('/') {
        Some((account, order_type)) => (account, Some(order_type)),
        None => (rest, None),
    };
    if account.is_empty() || order_type.is_some_and(|t| t.is_empty() || t.contains('/')) {
        return None;
    }
    Some((account, order_type))
}

enum BodyError {
    TooLarge,
    Timeout,
    Io,
}

async fn read_body(session: &mut ServerSession, limit: usize, deadline: Duration) -> Result<Bytes, BodyError> {
    let declared = session
        .get_header(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge);
    }
    let expects_continue =
        session.get_header(http::header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let read = async {
        if expects_continue {
            session.write_continue_response().await.map_err(|_| BodyError::Io)?;
        }
        let mut buf = BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
        while let Some(chunk) = session.read_request_body().await.map_err(|_| BodyError::Io)? {
            if buf.len() + chunk.len() > limit {
                return Err(BodyError::TooLarge);
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    };
    tokio::time::timeout(deadline, read).await.unwrap_or(Err(BodyError::Timeout))
}

fn plain(status: u16, text: &'static str) -> Response<Vec<u8>> {
    respond(&Reply { status, content_type: Some("text/plain"), body: Bytes::from_static(text.as_bytes()) })
}

fn respond(reply: &Reply) -> Response<Vec<u8>> {
    let mut builder = Response::builder().status(reply.status);
    // A 204 (WeChat Pay v3's success) must not carry one (RFC 9110 §8.6): it has no body by
    // definition, and pingora frames it so.
    if reply.status != 204 {
        builder = builder.header(http::header::CONTENT_LENGTH, reply.body.len());
    }
    if let Some(ct) = reply.content_type {
        builder = builder.header(http::header::CONTENT_TYPE, ct);
    }
    builder.body(reply.body.to_vec()).expect("static status and headers are valid")
}

#[async_trait]
impl ServeHttp for NotifyApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        connections::handling(self.handle(session)).await
    }
}

impl NotifyApp {
    async fn handle(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        self.runtime_adopted.call_once(|| self.gateway.ledger().adopt_runtime(tokio::runtime::Handle::current()));
        let path = session.req_header().uri.path().to_string();
        // Refusals below leave the body unread; closing the connection spares draining it.
        let Some((account, order_type)) = parse_notify_path(&path) else {
            session.set_keepalive(None);
            return plain(404, "not found");
        };
        if session.req_header().method != http::Method::POST {
            session.set_keepalive(None);
            return plain(405, "method not allowed");
        }
        let routing = self.gateway.routing();
        if !routing.accounts.contains_key(account) || order_type.is_some_and(|t| !routing.routes.contains_key(t)) {
            metrics::NOTIFICATIONS.with_label_values(&["-", "-", "not_found"]).inc();
            tracing::warn!(path, "notification for an unknown account or type");
            session.set_keepalive(None);
            return plain(404, "not found");
        }
        let body = match read_body(session, self.body_limit, self.body_timeout).await {
            Ok(body) => body,
            Err(e) => {
                // An unread body must not be parsed as the next request on this connection.
                session.set_keepalive(None);
                let (status, text) = match e {
                    BodyError::TooLarge => (413, "payload too large"),
                    BodyError::Timeout => (408, "request timeout"),
                    BodyError::Io => (400, "bad request"),
                };
                tracing::warn!(account, r#type = order_type.unwrap_or("-"), status, "notification body not read");
                return plain(status, text);
            }
        };
        let headers = &session.req_header().headers;
        let context = RequestContext::from_headers(headers);
        match context.scope(Kind::Notification, self.gateway.notify(account, order_type, headers, &body)).await {
            Ok(decision) => respond(&decision.reply),
            Err(_) => plain(404, "not found"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_paths() {
        assert_eq!(parse_notify_path("/notify/wx-main/goods"), Some(("wx-main", Some("goods"))));
        assert_eq!(parse_notify_path("/notify/wx-main/goods/"), Some(("wx-main", Some("goods"))));
        assert_eq!(parse_notify_path("/notify/wx-main"), Some(("wx-main", None)));
        assert_eq!(parse_notify_path("/notify/wx-main/"), Some(("wx-main", None)));
        assert_eq!(parse_notify_path("/notify/"), None);
        assert_eq!(parse_notify_path("/notify//goods"), None);
        assert_eq!(parse_notify_path("/notify/a/b/c"), None);
        assert_eq!(parse_notify_path("/other/a/b"), None);
    }
}
