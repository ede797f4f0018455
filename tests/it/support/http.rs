//! A minimal HTTP/1.1 client and server for tests, so every byte on the wire is visible.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::Headers;

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request on a fresh connection (`Connection: close`) and reads the whole reply.
pub async fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    stream.set_nodelay(true)?;
    stream.write_all(&request).await?;
    let mut reader = BufReader::new(stream);
    let (status_line, headers) = read_head(&mut reader).await?;
    let status = word(&status_line, 1);
    let mut body = Vec::new();
    if let Some(len) = headers.get("content-length") {
        body.resize(len.parse().unwrap(), 0);
        reader.read_exact(&mut body).await?;
    } else if headers.get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await?;
            let n = usize::from_str_radix(line.trim(), 16).unwrap();
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk).await?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        reader.read_to_end(&mut body).await?;
    }
    Ok(Response { status: status.parse().unwrap(), headers, body })
}

pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    send(addr, "GET", path, headers, b"").await.expect("GET")
}

async fn read_head<R: AsyncBufReadExt + Unpin>(reader: &mut R) -> std::io::Result<(String, HashMap<String, String>)> {
    let mut first = String::new();
    if reader.read_line(&mut first).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Ok((first, headers))
}

/// The n-th space-separated word of a request or status line.
fn word(line: &str, n: usize) -> String {
    line.split_whitespace().nth(n).unwrap_or_default().to_string()
}

/// One request a test server received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// When the request's body was read.
    pub at: std::time::Instant,
}

/// What a test server answers: status, content type, body, and an optional delay first.
#[derive(Debug, Clone)]
pub struct Canned {
    pub status: u16,
    pub body: Vec<u8>,
    pub headers: Headers,
    pub delay: Duration,
}

impl Canned {
    pub fn json(status: u16, body: &str) -> Self {
        Canned { status, body: body.as_bytes().to_vec(), headers: vec![("Content-Type".into(), "application/json".into())], delay: Duration::ZERO }
    }
}

pub type Handler = Arc<dyn Fn(&Received) -> Canned + Send + Sync>;

/// A keep-alive HTTP/1.1 server recording every request (backends and fake provider APIs).
pub struct TestServer {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start(handler: Handler) -> TestServer {
        Self::start_on("127.0.0.1:0", handler).await
    }

    /// On a given address (another loopback address, a fixed port).
    pub async fn start_on(addr: &str, handler: Handler) -> TestServer {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (handler, log) = (handler.clone(), log.clone());
                tokio::spawn(async move {
                    let _ = serve_connection(stream, handler, log).await;
                });
            }
        });
        TestServer { addr, received, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_connection(stream: TcpStream, handler: Handler, log: Arc<Mutex<Vec<Received>>>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let (first, headers) = match read_head(&mut reader).await {
            Ok(head) => head,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        let (method, path) = (word(&first, 0), word(&first, 1));
        let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0; len];
        reader.read_exact(&mut body).await?;
        let req = Received { method, path, headers, body, at: std::time::Instant::now() };
        log.lock().unwrap().push(req.clone());
        let canned = handler(&req);
        if !canned.delay.is_zero() {
            tokio::time::sleep(canned.delay).await;
        }
        let mut head = format!("HTTP/1.1 {} X\r\nContent-Length: {}\r\n", canned.status, canned.body.len());
        for (k, v) in &canned.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut reply = head.into_bytes();
        reply.extend_from_slice(&canned.body);
        write.write_all(&reply).await?;
    }
}

/// A keep-alive connection, for load: many requests on one socket.
pub struct Conn {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    host: String,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (read, writer) = stream.into_split();
        Ok(Conn { reader: BufReader::new(read), writer, host: addr.to_string() })
    }

    pub async fn post(&mut self, path: &str, headers: &[(String, String)], body: &[u8]) -> std::io::Result<u16> {
        let mut head = format!("POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n", self.host, body.len());
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        self.writer.write_all(&request).await?;
        let (status_line, headers) = read_head(&mut self.reader).await?;
        let status = word(&status_line, 1);
        let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut buf = vec![0; len];
        self.reader.read_exact(&mut buf).await?;
        Ok(status.parse().unwrap_or(0))
    }
}
