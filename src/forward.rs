//! Outbound HTTP: the POST to a backend (and, later, queries to providers) over pingora's
//! `Connector`, which pools keep-alive connections per peer and speaks TLS through rustls.
//!
//! A backend call succeeds only when the reply is 2xx and its JSON body has `"code": 0` as a
//! number; every other ending is a typed [`ForwardError`] whose `reason()` is a metric label.

use std::net::ToSocketAddrs;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;

/// The most of a backend's reply payhook reads; `{"code":0}` needs a dozen bytes.
const MAX_REPLY: usize = 64 * 1024;
/// Pooled connections are dropped before a typical backend's own keep-alive ends.
const IDLE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("timed out")]
    Timeout,
    #[error("I/O error: {0}")]
    Io(String),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("reply is not JSON with a numeric code")]
    BadReply,
    #[error("backend answered code {0}")]
    Rejected(String),
}

impl ForwardError {
    pub fn reason(&self) -> &'static str {
        match self {
            ForwardError::Connect(_) => "connect",
            ForwardError::Timeout => "timeout",
            ForwardError::Io(_) => "io",
            ForwardError::Status(_) => "http_status",
            ForwardError::BadReply => "bad_reply",
            ForwardError::Rejected(_) => "rejected",
        }
    }
}

/// An HTTP(S) endpoint resolved once at start-up (pingora's `HttpPeer::new` would resolve,
/// blocking, on every request and panic on failure).
#[derive(Clone)]
pub struct Backend {
    peer: HttpPeer,
    host: String,
    path: String,
    url: String,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl Backend {
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("{url:?}: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("{url:?}: scheme must be http or https")),
        };
        let host = uri.host().ok_or_else(|| format!("{url:?}: no host"))?.to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let addr = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| format!("{url:?}: cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{url:?}: {host} has no address"))?;
        let mut peer = HttpPeer::new(addr, tls, if tls { host.clone() } else { String::new() });
        peer.options.connection_timeout = Some(Duration::from_secs(2));
        peer.options.total_connection_timeout = Some(Duration::from_secs(3));
        peer.options.idle_timeout = Some(IDLE_TIMEOUT);
        let host_header = match uri.port_u16() {
            Some(p) => format!("{host}:{p}"),
            None => host,
        };
        let path = uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
        Ok(Backend { peer, host: host_header, path, url: url.to_string() })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL's path and query (`/` when the URL has none): provider APIs build on it.
    pub fn path(&self) -> &str {
        &self.path
    }
}

/// A raw reply.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// The shared outbound client; one per process so connection pools are shared.
pub struct Forwarder {
    connector: Connector,
}

impl Forwarder {
    pub fn new(ca_file: Option<String>) -> Self {
        let mut options = ConnectorOptions::new(128);
        options.ca_file = ca_file;
        Forwarder { connector: Connector::new(Some(options)) }
    }

    /// POSTs an order envelope; Ok only on 2xx with `{"code":0}`.
    pub async fn deliver(&self, backend: &Backend, body: Vec<u8>, timeout: Duration) -> Result<(), ForwardError> {
        let reply = self.exchange(backend, "POST", &[("Content-Type", "application/json")], Bytes::from(body), timeout).await?;
        if !(200..300).contains(&reply.status) {
            return Err(ForwardError::Status(reply.status));
        }
        backend_code(&reply.body)
    }

    /// One request/response to the endpoint's own path, bounded by `timeout` as a whole.
    pub async fn exchange(
        &self,
        backend: &Backend,
        method: &str,
        headers: &[(&str, &str)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<HttpReply, ForwardError> {
        self.exchange_at(backend, method, &backend.path, headers, body, timeout).await
    }

    /// One request/response to `path` on the endpoint (provider APIs: one path per order).
    pub async fn exchange_at(
        &self,
        backend: &Backend,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<HttpReply, ForwardError> {
        tokio::time::timeout(timeout, self.exchange_unbounded(backend, method, path, headers, body, timeout))
            .await
            .unwrap_or(Err(ForwardError::Timeout))
    }

    async fn exchange_unbounded(
        &self,
        backend: &Backend,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<HttpReply, ForwardError> {
        let io = |e: Box<pingora::Error>| ForwardError::Io(e.to_string());
        let mut req = RequestHeader::build(method, path.as_bytes(), None).map_err(io)?;
        req.insert_header("Host", &backend.host).map_err(io)?;
        req.insert_header("User-Agent", "payhook").map_err(io)?;
        for (name, value) in headers {
            req.insert_header(name.to_string(), *value).map_err(io)?;
        }
        req.insert_header("Content-Length", body.len().to_string()).map_err(io)?;

        let (mut session, _reused) =
            self.connector.get_http_session(&backend.peer).await.map_err(|e| ForwardError::Connect(e.to_string()))?;
        session.set_read_timeout(Some(timeout));
        session.set_write_timeout(Some(timeout));
        session.write_request_header(Box::new(req)).await.map_err(io)?;
        if !body.is_empty() {
            session.write_request_body(body, true).await.map_err(io)?;
        }
        session.finish_request_body().await.map_err(io)?;
        session.read_response_header().await.map_err(io)?;
        let head = session.response_header().ok_or_else(|| ForwardError::Io("no response header".into()))?;
        let status = head.status.as_u16();
        let headers = head.headers.clone();
        let mut buf = BytesMut::new();
        while let Some(chunk) = session.read_response_body().await.map_err(io)? {
            if buf.len() + chunk.len() > MAX_REPLY {
                return Err(ForwardError::BadReply);
            }
            buf.extend_from_slice(&chunk);
        }
        self.connector.release_http_session(session, &backend.peer, Some(IDLE_TIMEOUT)).await;
        Ok(HttpReply { status, headers, body: buf.freeze() })
    }
}

/// `{"code":0}` (the number) is the only success; vk-uni-pay's method three uses this contract.
fn backend_code(body: &[u8]) -> Result<(), ForwardError> {
    #[derive(serde::Deserialize)]
    struct CodeOnly {
        code: serde_json::Value,
    }
    let reply: CodeOnly = serde_json::from_slice(body).map_err(|_| ForwardError::BadReply)?;
    match &reply.code {
        serde_json::Value::Number(n) if n.as_i64() == Some(0) || n.as_u64() == Some(0) => Ok(()),
        serde_json::Value::Number(n) => Err(ForwardError::Rejected(n.to_string())),
        _ => Err(ForwardError::BadReply),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_numeric_zero_is_success() {
        assert!(backend_code(br#"{"code":0}"#).is_ok());
        assert!(backend_code(br#"{"msg":"ok","code":0}"#).is_ok());
        assert_eq!(backend_code(br#"{"code":1}"#).unwrap_err().reason(), "rejected");
        assert_eq!(backend_code(br#"{"code":"0"}"#).unwrap_err().reason(), "bad_reply");
        assert_eq!(backend_code(br#"{"code":0.5}"#).unwrap_err().reason(), "rejected");
        assert_eq!(backend_code(b"success").unwrap_err().reason(), "bad_reply");
        assert_eq!(backend_code(b"").unwrap_err().reason(), "bad_reply");
    }

    #[test]
    fn parses_backend_urls() {
        let b = Backend::parse("http://127.0.0.1:8081/pay/notify?x=1").unwrap();
        assert_eq!((b.host.as_str(), b.path.as_str()), ("127.0.0.1:8081", "/pay/notify?x=1"));
        assert!(Backend::parse("ftp://127.0.0.1/").is_err());
        assert!(Backend::parse("http://no-such-host.invalid/").is_err());
    }
}
