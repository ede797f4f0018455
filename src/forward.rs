//! Outbound HTTP: the POST to a backend (and queries to providers) over pingora's
//! `TransportConnector`, which pools keep-alive connections per peer and speaks TLS through
//! rustls; pingora's HTTP/1 client reads the reply and decides whether the connection is reused.
//!
//! A backend call succeeds only when the reply is 2xx and its JSON body has `"code": 0` as a
//! number; every other ending is a typed [`ForwardError`] whose `reason()` is a metric label.

use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;

use bytes::{Bytes, BytesMut};
use pingora::connectors::TransportConnector;
use pingora::protocols::http::v1::client::{http_req_header_to_wire, HttpSession};
use pingora::protocols::Stream;
use pingora::upstreams::peer::Peer;
use tokio::io::AsyncWriteExt;

use crate::context::RequestContext;
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

/// How long resolved addresses are used before the host is resolved again: a backend or
/// provider API behind DNS moves without a restart. The system resolver gives no TTL.
const RESOLVE_EVERY: Duration = Duration::from_secs(5);

/// An HTTP(S) endpoint. Its host is resolved when connections are made (at most every
/// [`RESOLVE_EVERY`]), every address is tried in turn, and pingora pools connections per
/// address (pingora's `HttpPeer::new` would instead resolve, blocking, on every request).
///
/// Credentials in the URL never reach a log: `user:password@` becomes a Basic `Authorization`
/// header, and [`Backend::url`] shows the URL with the credentials and query values masked.
#[derive(Clone)]
pub struct Backend {
    host: String,
    port: u16,
    tls: bool,
    /// The `Host` header.
    host_header: String,
    path: String,
    /// The URL with credentials and query values masked: the only form logged.
    url: String,
    authorization: Option<String>,
    peers: Arc<Mutex<Resolved>>,
}

struct Resolved {
    at: Option<Instant>,
    peers: Arc<Vec<HttpPeer>>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

/// `scheme://host[:port]/path` with userinfo as `***@` and every query value as `***`.
fn redact(uri: &http::Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("?");
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((_, host)) => ("***@", host),
        None => ("", authority),
    };
    let mut out = format!("{scheme}://{userinfo}{host}{}", uri.path());
    if let Some(query) = uri.query() {
        let masked: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) => format!("{name}=***"),
                None => pair.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&masked.join("&"));
    }
    out
}

impl Backend {
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
        let shown = redact(&uri);
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("{shown}: scheme must be http or https")),
        };
        let host = uri.host().ok_or_else(|| format!("{shown}: no host"))?.trim_matches(['[', ']']).to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let authorization = match uri.authority().and_then(|a| a.as_str().rsplit_once('@')) {
            Some((userinfo, _)) => {
                let decoded = percent_encoding::percent_decode_str(userinfo)
                    .decode_utf8()
                    .map_err(|_| format!("{shown}: credentials are not UTF-8"))?;
                Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(decoded.as_bytes())))
            }
            None => None,
        };
        let host_header = match uri.port_u16() {
            Some(p) => format!("{}:{p}", uri.host().unwrap_or_default()),
            None => uri.host().unwrap_or_default().to_string(),
        };
        let path = uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
        let backend = Backend {
            host,
            port,
            tls,
            host_header,
            path,
            url: shown,
            authorization,
            peers: Arc::new(Mutex::new(Resolved { at: None, peers: Arc::new(Vec::new()) })),
        };
        // Resolved now as well, so `check` and start-up name a host that does not resolve.
        let addrs: Vec<SocketAddr> = (backend.host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| format!("{}: cannot resolve {}: {e}", backend.url, backend.host))?
            .collect();
        if addrs.is_empty() {
            return Err(format!("{}: {} has no address", backend.url, backend.host));
        }
        backend.remember(addrs);
        Ok(backend)
    }

    /// The URL with credentials and query values masked.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL's path and query (`/` when the URL has none): provider APIs build on it.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn remember(&self, addrs: Vec<SocketAddr>) -> Arc<Vec<HttpPeer>> {
        let sni = if self.tls { self.host.clone() } else { String::new() };
        let peers: Vec<HttpPeer> = addrs
            .into_iter()
            .map(|addr| {
                let mut peer = HttpPeer::new(addr, self.tls, sni.clone());
                peer.options.connection_timeout = Some(Duration::from_secs(2));
                peer.options.total_connection_timeout = Some(Duration::from_secs(3));
                peer.options.idle_timeout = Some(IDLE_TIMEOUT);
                peer
            })
            .collect();
        let peers = Arc::new(peers);
        *self.peers.lock().expect("peer cache poisoned") = Resolved { at: Some(Instant::now()), peers: peers.clone() };
        peers
    }

    /// The peers to try, resolving the host again once the last answer is [`RESOLVE_EVERY`] old.
    /// A failed lookup keeps the last known addresses (logged): DNS trouble must not stop payments.
    async fn peers(&self) -> Result<Arc<Vec<HttpPeer>>, ForwardError> {
        {
            let cached = self.peers.lock().expect("peer cache poisoned");
            if cached.at.is_some_and(|at| at.elapsed() < RESOLVE_EVERY) {
                return Ok(cached.peers.clone());
            }
        }
        match tokio::net::lookup_host((self.host.as_str(), self.port)).await {
            Ok(addrs) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                if !addrs.is_empty() {
                    return Ok(self.remember(addrs));
                }
                tracing::warn!(backend = self.url, "host resolved to no address; using the last known ones");
            }
            Err(e) => tracing::warn!(backend = self.url, error = %e, "cannot resolve host; using the last known addresses"),
        }
        let mut cached = self.peers.lock().expect("peer cache poisoned");
        // Retry the lookup after another interval, not on every request.
        cached.at = Some(Instant::now());
        if cached.peers.is_empty() {
            return Err(ForwardError::Connect(format!("cannot resolve {}", self.host)));
        }
        Ok(cached.peers.clone())
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
    /// Backends: `upstream_ca_file`'s CAs when set (pingora then trusts them instead of the
    /// system's roots), else the system's.
    backends: TransportConnector,
    /// Provider APIs: always the system's roots, so a private CA for the backends cannot cut
    /// off the order queries that recover lost notifications.
    providers: TransportConnector,
}

impl Forwarder {
    pub fn new(ca_file: Option<String>) -> Self {
        let connector = |ca_file| {
            let mut options = ConnectorOptions::new(128);
            options.ca_file = ca_file;
            TransportConnector::new(Some(options))
        };
        Forwarder { backends: connector(ca_file), providers: connector(None) }
    }

    /// POSTs an order envelope; Ok only on 2xx with `{"code":0}`.
    /// The running request's id goes along as `X-Request-Id` (and a `traceparent`).
    pub async fn deliver(&self, backend: &Backend, body: Vec<u8>, timeout: Duration) -> Result<(), ForwardError> {
        let context = RequestContext::current();
        let traceparent = context.as_ref().and_then(RequestContext::outgoing_traceparent);
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(context) = &context {
            headers.push(("X-Request-Id", &context.request_id));
        }
        if let Some(traceparent) = &traceparent {
            headers.push(("traceparent", traceparent));
        }
        let reply = self.exchange(backend, "POST", &headers, Bytes::from(body), timeout).await?;
        if !(200..300).contains(&reply.status) {
            return Err(ForwardError::Status(reply.status));
        }
        backend_code(&reply.body)
    }

    /// One request/response to a backend's own path, bounded by `timeout` as a whole.
    pub async fn exchange(
        &self,
        backend: &Backend,
        method: &str,
        headers: &[(&str, &str)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<HttpReply, ForwardError> {
        Self::bounded(timeout, Self::exchange_unbounded(&self.backends, backend, method, &backend.path, headers, body)).await
    }

    /// One request/response to `path` on a provider's API (one path per order).
    pub async fn query(
        &self,
        api: &Backend,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<HttpReply, ForwardError> {
        Self::bounded(timeout, Self::exchange_unbounded(&self.providers, api, method, path, headers, body)).await
    }

    async fn bounded(timeout: Duration, exchange: impl Future<Output = Result<HttpReply, ForwardError>>) -> Result<HttpReply, ForwardError> {
        // Boxed: every future awaiting a forward would otherwise carry (and copy, as it is wrapped)
        // the exchange's state, up to the request future pingora boxes for each notification.
        tokio::time::timeout(timeout, Box::pin(exchange)).await.unwrap_or(Err(ForwardError::Timeout))
    }

    async fn exchange_unbounded(
        transport: &TransportConnector,
        backend: &Backend,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<HttpReply, ForwardError> {
        // No timer of its own: the caller's timeout bounds the whole exchange (one timer, not three).
        let io = |e: Box<pingora::Error>| ForwardError::Io(e.to_string());
        let mut req = RequestHeader::build(method, path.as_bytes(), None).map_err(io)?;
        req.insert_header("Host", &backend.host_header).map_err(io)?;
        req.insert_header("User-Agent", "payhook").map_err(io)?;
        if let Some(authorization) = &backend.authorization {
            req.insert_header("Authorization", authorization).map_err(io)?;
        }
        for (name, value) in headers {
            req.insert_header(name.to_string(), *value).map_err(io)?;
        }
        req.insert_header("Content-Length", body.len().to_string()).map_err(io)?;

        // The head and the body go out in one write (one segment for a small order): pingora's
        // HTTP client flushes the head on its own, which costs a second send and wakes the
        // backend twice per notification.
        let mut wire = http_req_header_to_wire(&req).ok_or_else(|| ForwardError::Io("request path has a forbidden byte".into()))?;
        wire.extend_from_slice(&body);

        let peers = backend.peers().await?;
        let (mut stream, peer) = Self::stream_to(transport, &peers).await?;
        let write_failed = |e: std::io::Error| ForwardError::Io(e.to_string());
        stream.write_all(&wire).await.map_err(write_failed)?;
        stream.flush().await.map_err(write_failed)?;
        let mut session = HttpSession::new_with_options(stream, peer);
        session.read_response().await.map_err(io)?;
        let head = session.resp_header().ok_or_else(|| ForwardError::Io("no response header".into()))?;
        let status = head.status.as_u16();
        let headers = head.headers.clone();
        let mut buf = BytesMut::new();
        while let Some(chunk) = session.read_body_ref().await.map_err(io)? {
            if buf.len() + chunk.len() > MAX_REPLY {
                return Err(ForwardError::BadReply);
            }
            buf.extend_from_slice(chunk);
        }
        session.respect_keepalive();
        if let Some(stream) = session.reuse().await {
            transport.release_stream(stream, peer.reuse_hash(), Some(IDLE_TIMEOUT));
        }
        Ok(HttpReply { status, headers, body: buf.freeze() })
    }

    /// A pooled connection to any of the addresses, else a new one to the first that accepts.
    /// The connect future (TCP and TLS handshakes, ~8 KiB) is made, boxed, only when no pooled
    /// connection is left, so the usual exchange's state is ~2 KiB rather than ~10 KiB.
    async fn stream_to<'p>(transport: &TransportConnector, peers: &'p [HttpPeer]) -> Result<(Stream, &'p HttpPeer), ForwardError> {
        for peer in peers {
            if let Some(stream) = transport.reused_stream(peer).await {
                return Ok((stream, peer));
            }
        }
        let mut last_error = String::new();
        for peer in peers {
            match Box::pin(transport.new_stream(peer)).await {
                Ok(stream) => return Ok((stream, peer)),
                Err(e) => last_error = e.to_string(),
            }
        }
        Err(ForwardError::Connect(last_error))
    }
}

/// `{"code":0}` (the number) is the only success; vk-uni-pay's method three uses this contract.
/// The number as JavaScript sees it (`res.data.code === 0`): `0.0` and `0e0` are 0 too, as a
/// backend that writes the code as a double sends it.
fn backend_code(body: &[u8]) -> Result<(), ForwardError> {
    #[derive(serde::Deserialize)]
    struct CodeOnly {
        code: serde_json::Value,
    }
    let reply: CodeOnly = serde_json::from_slice(body).map_err(|_| ForwardError::BadReply)?;
    match &reply.code {
        serde_json::Value::Number(n) if n.as_f64() == Some(0.0) => Ok(()),
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
        assert_eq!(backend_code(br#"{"code":1e-300}"#).unwrap_err().reason(), "rejected");
        for zero in [r#"{"code":0.0}"#, r#"{"code":0e0}"#, r#"{"code":-0}"#] {
            assert!(backend_code(zero.as_bytes()).is_ok(), "{zero}");
        }
        assert_eq!(backend_code(b"success").unwrap_err().reason(), "bad_reply");
        assert_eq!(backend_code(b"").unwrap_err().reason(), "bad_reply");
    }

    #[test]
    fn parses_backend_urls() {
        let b = Backend::parse("http://127.0.0.1:8081/pay/notify?x=1").unwrap();
        assert_eq!((b.host_header.as_str(), b.path.as_str()), ("127.0.0.1:8081", "/pay/notify?x=1"));
        assert!(Backend::parse("ftp://127.0.0.1/").is_err());
        assert!(Backend::parse("http://no-such-host.invalid/").is_err());
    }

    #[test]
    fn credentials_become_basic_auth_and_never_show() {
        let b = Backend::parse("http://ops:s%40cret@127.0.0.1:8081/pay?token=T0KEN&plain").unwrap();
        assert_eq!(b.url(), "http://***@127.0.0.1:8081/pay?token=***&plain");
        assert_eq!(b.authorization.as_deref(), Some("Basic b3BzOnNAY3JldA=="));
        assert_eq!((b.host_header.as_str(), b.path()), ("127.0.0.1:8081", "/pay?token=T0KEN&plain"));
        assert!(!format!("{b:?}").contains("cret") && !format!("{b:?}").contains("T0KEN"));
        let err = Backend::parse("ftp://ops:s3cret@127.0.0.1/?token=T0KEN").unwrap_err();
        assert!(!err.contains("s3cret") && !err.contains("T0KEN"), "{err}");
    }
}
