//! What clients can hold on a listener: at most `max_connections` open (a connection past it is
//! closed at once and counted), and a request head must arrive within `header_timeout` of the
//! connection opening or of the previous response (slow-header clients and idle keep-alive
//! connections are closed then). Each listener has its own budget, so a flood of the notify port
//! leaves `/metrics`, `/readyz` and the admin API reachable.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use prometheus::{IntCounterVec, IntGauge};

/// Where a connection is: waiting for a request head (since when), or handling a request (a
/// body has its own deadline).
#[derive(Clone, Copy)]
enum Phase {
    AwaitingHead(Instant),
    Handling,
}

tokio::task_local! {
    static CONNECTION: Arc<Mutex<Phase>>;
}

fn set_phase(phase: Phase) {
    let _ = CONNECTION.try_with(|current| *current.lock().expect("phase lock poisoned") = phase);
}

/// Runs one request's handling: the head deadline does not run meanwhile, and starts again,
/// for the connection's next request, once the response is ready.
pub async fn handling<T>(request: impl Future<Output = T>) -> T {
    set_phase(Phase::Handling);
    let response = request.await;
    set_phase(Phase::AwaitingHead(Instant::now()));
    response
}

/// The metrics a listener's bounds report to: open connections, and those payhook closed by
/// `reason` = max_connections | header_timeout.
pub struct ConnectionMetrics {
    pub open: &'static IntGauge,
    pub closed: &'static IntCounterVec,
}

/// Wraps a listener's app (whose requests run inside [`handling`]) with the bounds.
pub struct ConnectionLimits<A> {
    inner: Arc<A>,
    open: AtomicUsize,
    max_connections: usize,
    header_timeout: Duration,
    metrics: ConnectionMetrics,
}

impl<A> ConnectionLimits<A> {
    pub fn new(inner: A, max_connections: usize, header_timeout: Duration, metrics: ConnectionMetrics) -> Self {
        ConnectionLimits { inner: Arc::new(inner), open: AtomicUsize::new(0), max_connections, header_timeout, metrics }
    }
}

struct OpenConnection<'a>(&'a AtomicUsize, &'static IntGauge);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        self.1.dec();
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for ConnectionLimits<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.max_connections {
            self.open.fetch_sub(1, Ordering::Relaxed);
            self.metrics.closed.with_label_values(&["max_connections"]).inc();
            return None; // dropping the stream closes it
        }
        self.metrics.open.inc();
        let _open = OpenConnection(&self.open, self.metrics.open);
        let phase = Arc::new(Mutex::new(Phase::AwaitingHead(Instant::now())));
        let watchdog = async {
            loop {
                let current = *phase.lock().expect("phase lock poisoned");
                match current {
                    Phase::AwaitingHead(since) if since.elapsed() >= self.header_timeout => return,
                    Phase::AwaitingHead(since) => tokio::time::sleep(self.header_timeout - since.elapsed()).await,
                    Phase::Handling => tokio::time::sleep(self.header_timeout).await,
                }
            }
        };
        tokio::select! {
            reused = CONNECTION.scope(phase.clone(), self.inner.process_new(stream, shutdown)) => reused,
            () = watchdog => {
                self.metrics.closed.with_label_values(&["header_timeout"]).inc();
                None
            }
        }
    }
}
