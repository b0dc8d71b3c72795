//! Every connection ends. One task per accepted connection: TLS handshake within a deadline, the
//! protocol taken from ALPN (no read to detect it, so a client that sends half a preface cannot
//! hold the task), then HTTP/1.1 or HTTP/2 until one of:
//!
//! - the client closes it;
//! - no request arrived within `first_request_timeout` of the handshake (a client that connects
//!   and says nothing);
//! - no request was in flight for `idle_timeout` (an idle keep-alive connection, or an HTTP/2
//!   connection that only answers PINGs: only requests count as activity);
//! - the budget of connections is full and this one is the longest idle: a fresh connection (the
//!   API server's, after a restart or a scale-up) takes its place instead of being refused;
//! - the server drains (SIGTERM).
//!
//! Closing is graceful (HTTP/1.1 closes after the response in flight, HTTP/2 sends GOAWAY), and a
//! connection that still has not ended `CLOSE_GRACE` later is dropped.
//!
//! Written here rather than with hyper-util's `GracefulShutdown`, whose connection trait is sealed:
//! the idle and eviction triggers need to call `graceful_shutdown` themselves.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::metrics::Metrics;

/// How long a connection asked to close may take to do so before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The deadlines of a connection's life.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub handshake: Duration,
    pub first_request: Duration,
    pub idle: Duration,
}

/// One connection's activity, shared between its task, its requests and the registry.
struct Track {
    started: Instant,
    /// Milliseconds after `started` of the last request's start or end.
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    close: Notify,
    /// Asked to close (to make room): not picked again while it goes.
    evicted: std::sync::atomic::AtomicBool,
}

impl Track {
    fn touch(&self) {
        self.last_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn last(&self) -> Instant {
        self.started + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
    fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
    }
    /// When this connection is to be closed if nothing happens meanwhile.
    fn deadline(&self, limits: &Limits) -> Instant {
        if self.requests.load(Ordering::Relaxed) == 0 {
            self.started + limits.first_request
        } else {
            self.last() + limits.idle
        }
    }
}

/// Ends a request's in-flight count when dropped (also when the handler's future is dropped).
struct InFlight(Arc<Track>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The client's address, in every request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// The axum app as a hyper service that counts this connection's requests.
#[derive(Clone)]
struct Tracked {
    app: Router,
    track: Arc<Track>,
    peer: SocketAddr,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Tracked {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        self.track.in_flight.fetch_add(1, Ordering::Relaxed);
        self.track.requests.fetch_add(1, Ordering::Relaxed);
        self.track.touch();
        let guard = InFlight(Arc::clone(&self.track));
        let mut req = req.map(axum::body::Body::new);
        req.extensions_mut().insert(PeerAddr(self.peer));
        let fut = tower::ServiceExt::oneshot(self.app.clone(), req);
        Box::pin(async move {
            let res = fut.await;
            drop(guard);
            res
        })
    }
}

/// The open connections, for eviction when the budget is full.
#[derive(Default)]
pub struct Registry {
    next: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Track>>>,
}

impl Registry {
    fn add(&self, track: Arc<Track>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.conns.lock().expect("registry lock").insert(id, track);
        id
    }
    fn remove(&self, id: u64) {
        self.conns.lock().expect("registry lock").remove(&id);
    }
    /// Asks the connection that has been idle longest (no request in flight) to close. False if
    /// every connection is busy.
    pub fn evict_idlest(&self) -> bool {
        let conns = self.conns.lock().expect("registry lock");
        let victim = conns.values().filter(|t| t.idle() && !t.evicted.load(Ordering::Relaxed)).min_by_key(|t| t.last());
        match victim {
            Some(t) => {
                t.evicted.store(true, Ordering::Relaxed);
                t.close.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Serves connections: shared by the accept loop.
pub struct Spawner {
    pub acceptor: TlsAcceptor,
    pub builder: auto::Builder<TokioExecutor>,
    pub app: Router,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub registry: Arc<Registry>,
    pub budget: Arc<Semaphore>,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Spawner {
    /// A permit for a new connection: at once if the budget allows, else after evicting the
    /// longest-idle connection (if there is one) and waiting briefly for it to go.
    pub async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = Arc::clone(&self.budget).try_acquire_owned() {
            return Some(p);
        }
        if !self.registry.evict_idlest() {
            return None;
        }
        self.metrics.evicted_connections.inc();
        tokio::time::timeout(Duration::from_millis(250), Arc::clone(&self.budget).acquire_owned()).await.ok()?.ok()
    }

    pub fn spawn(&self, tcp: tokio::net::TcpStream, peer: SocketAddr, permit: OwnedSemaphorePermit) {
        let _ = tcp.set_nodelay(true);
        let (acceptor, builder, app) = (self.acceptor.clone(), self.builder.clone(), self.app.clone());
        let (metrics, limits, registry) = (Arc::clone(&self.metrics), self.limits, Arc::clone(&self.registry));
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let track = Arc::new(Track {
                started: Instant::now(),
                last_ms: AtomicU64::new(0),
                in_flight: AtomicUsize::new(0),
                requests: AtomicU64::new(0),
                close: Notify::new(),
                evicted: std::sync::atomic::AtomicBool::new(false),
            });
            let id = registry.add(Arc::clone(&track));
            let tls = tokio::select! {
                r = tokio::time::timeout(limits.handshake, acceptor.accept(tcp)) => r,
                _ = track.close.notified() => {
                    registry.remove(id);
                    return;
                }
            };
            let tls = match tls {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    registry.remove(id);
                    metrics.tls_handshake_failures.inc();
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    registry.remove(id);
                    metrics.tls_handshake_failures.inc();
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            // The protocol the handshake agreed on; no ALPN means HTTP/1.1.
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let builder = if h2 { builder.http2_only() } else { builder.http1_only() };
            metrics.connections.inc();
            track.touch();
            let svc = Tracked { app, track: Arc::clone(&track), peer };
            let conn = builder.serve_connection(TokioIo::new(tls), svc);
            tokio::pin!(conn);
            let mut closing: Option<Instant> = None;
            // While a request is in flight past the deadline, look again a second later.
            let mut snooze = Instant::now();
            loop {
                let wake = closing.map(|c| c + CLOSE_GRACE).unwrap_or_else(|| track.deadline(&limits).max(snooze));
                tokio::select! {
                    res = conn.as_mut() => {
                        if let Err(e) = res {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    _ = shutdown.wait_for(|v| *v), if closing.is_none() => {
                        conn.as_mut().graceful_shutdown();
                        closing = Some(Instant::now());
                    }
                    _ = track.close.notified(), if closing.is_none() => {
                        if track.idle() {
                            tracing::debug!(%peer, "closing an idle connection to make room for a new one");
                            conn.as_mut().graceful_shutdown();
                            closing = Some(Instant::now());
                        } else {
                            // Busy after all (a request arrived meanwhile): it may be picked again.
                            track.evicted.store(false, Ordering::Relaxed);
                        }
                    }
                    _ = tokio::time::sleep_until(wake.into()) => {
                        if closing.is_some() {
                            tracing::debug!(%peer, "connection did not close in time; dropping it");
                            break;
                        }
                        if track.idle() && Instant::now() >= track.deadline(&limits) {
                            track.evicted.store(true, Ordering::Relaxed);
                            metrics.idle_closed_connections.inc();
                            tracing::debug!(%peer, requests = track.requests.load(Ordering::Relaxed), "closing an idle connection");
                            conn.as_mut().graceful_shutdown();
                            closing = Some(Instant::now());
                        } else {
                            snooze = Instant::now() + Duration::from_secs(1);
                        }
                    }
                }
            }
            registry.remove(id);
            metrics.connections.dec();
        });
    }
}
