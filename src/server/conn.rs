//! Every connection ends. One task per accepted connection: TLS handshake within a deadline, the
//! protocol taken from ALPN (no read to detect it, so a client that sends half a preface cannot
//! hold the task), then HTTP/1.1 or HTTP/2 until one of:
//!
//! - the client closes it;
//! - no request arrived within `first_request_timeout` of the handshake (a client that connects
//!   and says nothing);
//! - no request was in flight for `idle_timeout` (an idle keep-alive connection, or an HTTP/2
//!   connection that only answers PINGs: only requests count as activity);
//! - the budget of connections (or of its client address) is full and this one is the longest
//!   idle, or else has had a request in flight with no request begun or ended for [`STALLED`] (a
//!   body that never ends, a stream that never completes): a fresh connection (the API server's,
//!   after a restart or a scale-up) takes its place instead of being refused. An idle one closes
//!   gracefully; a stalled one is dropped at once;
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
use std::net::{IpAddr, SocketAddr};
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
/// A connection with a request in flight and no request begun or ended for this long is stalled:
/// it may be dropped to make room (a review's body arrives in milliseconds).
pub const STALLED: Duration = Duration::from_secs(2);
/// How long a new connection waits for the one evicted for it to go.
const EVICT_WAIT: Duration = Duration::from_millis(250);

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
    /// Evicted while stalled: dropped rather than closed gracefully.
    drop_now: std::sync::atomic::AtomicBool,
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
    fn stalled(&self, now: Instant) -> bool {
        !self.idle() && now.saturating_duration_since(self.last()) >= STALLED
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

/// The open connections, for eviction when a budget is full, and the count per client address.
#[derive(Default)]
pub struct Registry {
    next: AtomicU64,
    conns: Mutex<HashMap<u64, (IpAddr, Arc<Track>)>>,
    per_client: Mutex<HashMap<IpAddr, usize>>,
}

/// A client address's slot; given back when dropped.
struct ClientSlot {
    registry: Arc<Registry>,
    ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut m = self.registry.per_client.lock().expect("registry lock");
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl Registry {
    fn add(&self, ip: IpAddr, track: Arc<Track>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.conns.lock().expect("registry lock").insert(id, (ip, track));
        id
    }
    fn remove(&self, id: u64) {
        self.conns.lock().expect("registry lock").remove(&id);
    }
    /// One more connection of `ip`, if it has fewer than `cap`.
    fn try_client_slot(self: &Arc<Self>, ip: IpAddr, cap: usize) -> Option<ClientSlot> {
        let mut m = self.per_client.lock().expect("registry lock");
        let n = m.entry(ip).or_default();
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(ClientSlot { registry: Arc::clone(self), ip })
    }
    /// One more connection of `ip`, whatever its count (one of its connections is going).
    fn client_slot(self: &Arc<Self>, ip: IpAddr) -> ClientSlot {
        *self.per_client.lock().expect("registry lock").entry(ip).or_default() += 1;
        ClientSlot { registry: Arc::clone(self), ip }
    }
    /// Asks a connection (of `client`, if given) to close to make room: the one idle longest,
    /// else the one stalled longest. False if every one is busy and making progress.
    pub fn evict(&self, client: Option<IpAddr>) -> bool {
        let conns = self.conns.lock().expect("registry lock");
        let now = Instant::now();
        let candidates = || {
            conns
                .values()
                .filter(|(ip, t)| client.is_none_or(|c| c == *ip) && !t.evicted.load(Ordering::Relaxed))
                .map(|(_, t)| t)
        };
        let idle = candidates().filter(|t| t.idle()).min_by_key(|t| t.last());
        let victim = idle.or_else(|| candidates().filter(|t| t.stalled(now)).min_by_key(|t| t.last()));
        match victim {
            Some(t) => {
                t.evicted.store(true, Ordering::Relaxed);
                t.drop_now.store(!t.idle(), Ordering::Relaxed);
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
    /// Connections of one client address at most.
    pub per_client: usize,
    /// Accepted connections still waiting for room: the accept loop never waits, and those
    /// beyond this are refused at once.
    pub pending: Arc<Semaphore>,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Spawner {
    /// Room for a new connection of `ip`: a slot of its client address and a permit of the
    /// budget, each at once if there is room, else after evicting a connection (see
    /// [`Registry::evict`]) and waiting [`EVICT_WAIT`] for it to go. Called in the connection's
    /// own task, never in the accept loop.
    async fn room(&self, ip: IpAddr) -> Option<(ClientSlot, OwnedSemaphorePermit)> {
        let slot = match self.registry.try_client_slot(ip, self.per_client) {
            Some(s) => s,
            None => {
                if !self.registry.evict(Some(ip)) {
                    tracing::debug!(%ip, "refused: the client's connections are all busy");
                    return None;
                }
                self.metrics.evicted_connections.inc();
                // The evicted connection's slot is this one's: taken now (the count is over the
                // cap until it has gone), so that a connection arriving meanwhile cannot take it.
                self.registry.client_slot(ip)
            }
        };
        if let Ok(p) = Arc::clone(&self.budget).try_acquire_owned() {
            return Some((slot, p));
        }
        if !self.registry.evict(None) {
            tracing::debug!(%ip, "refused: every connection is busy");
            return None;
        }
        self.metrics.evicted_connections.inc();
        let permit = tokio::time::timeout(EVICT_WAIT, Arc::clone(&self.budget).acquire_owned()).await.ok()?.ok()?;
        Some((slot, permit))
    }

    /// Serves an accepted connection in a task of its own, once there is room for it; refused at
    /// once when too many are already waiting.
    pub fn accept(self: &Arc<Self>, tcp: tokio::net::TcpStream, peer: SocketAddr) {
        let Ok(pending) = Arc::clone(&self.pending).try_acquire_owned() else {
            self.metrics.rejected_connections.inc();
            return;
        };
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let room = this.room(peer.ip()).await;
            drop(pending);
            match room {
                Some((slot, permit)) => this.serve(tcp, peer, slot, permit).await,
                None => {
                    this.metrics.rejected_connections.inc();
                }
            }
        });
    }

    async fn serve(
        &self,
        tcp: tokio::net::TcpStream,
        peer: SocketAddr,
        slot: ClientSlot,
        permit: OwnedSemaphorePermit,
    ) {
        let _ = tcp.set_nodelay(true);
        let (acceptor, builder, app) = (self.acceptor.clone(), self.builder.clone(), self.app.clone());
        let (metrics, limits, registry) = (Arc::clone(&self.metrics), self.limits, Arc::clone(&self.registry));
        let mut shutdown = self.shutdown.clone();
        {
            let _permit = permit;
            let _slot = slot;
            let track = Arc::new(Track {
                started: Instant::now(),
                last_ms: AtomicU64::new(0),
                in_flight: AtomicUsize::new(0),
                requests: AtomicU64::new(0),
                close: Notify::new(),
                evicted: std::sync::atomic::AtomicBool::new(false),
                drop_now: std::sync::atomic::AtomicBool::new(false),
            });
            let id = registry.add(peer.ip(), Arc::clone(&track));
            let tls = tokio::select! {
                r = tokio::time::timeout(limits.handshake, acceptor.accept(tcp)) => r,
                _ = track.close.notified() => {
                    tracing::debug!(%peer, "closed during its handshake to make room for a new connection");
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
                        if track.drop_now.load(Ordering::Relaxed) {
                            tracing::debug!(%peer, "dropping a stalled connection to make room for a new one");
                            break;
                        }
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
        }
    }
}
