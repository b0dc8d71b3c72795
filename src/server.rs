//! `nixuv serve`: axum on tokio with rustls (HTTP/1.1 and HTTP/2 by ALPN). This file is the
//! start-up (config, TLS, the API watches, the listeners, the accept loop and the drain); the
//! handlers are one file per route (`handle_*`), share [`AppState`], and return [`ApiError`] for
//! anything but the core's answer. Connection handling (limits, timeouts) is `conn`'s.

mod body;
mod budget;
mod builder;
mod cabundle;
mod cache;
mod claim_watch;
mod conn;
mod env_watch;
mod error;
mod handle_mutate;
mod handle_preview;
mod handle_probes;
mod leader;
pub mod metrics;
mod preview_pool;
mod reconciler;
mod state;
pub mod tls;

pub use error::ApiError;
pub use handle_mutate::ADMISSION_LOG;
pub use state::{AppState, HandlerLimits};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::inject::Injector;
use handle_probes::{healthz, metrics_text, not_found, readyz};
use metrics::{Metrics, ResultLabels};

/// Everything `nixuv serve` needs, from flags.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub config_path: Option<PathBuf>,
    pub overrides: crate::config::Overrides,
    pub metrics_addr: Option<SocketAddr>,
    pub body_limit: usize,
    pub request_bytes_budget: usize,
    pub reload_interval: Duration,
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    pub handshake_timeout: Duration,
    /// A connection that sends no request this long after its handshake is closed.
    pub first_request_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// Open connections of one client address at most.
    pub max_connections_per_client: usize,
    pub preview_concurrency: usize,
    pub preview_threads: usize,
    pub preview_body_limit: usize,
    /// Serve `/preview` on the metrics address only, not on the webhook's.
    pub preview_on_metrics_addr: bool,
    pub preview_max_output: usize,
    pub shutdown_delay: Duration,
    pub drain_timeout: Duration,
    /// Check that the configured PVCs exist (a watch cache through the Kubernetes API).
    pub check_claims: bool,
    pub manage_stores: bool,
    /// The stores reconciler alone: no webhook listener, no TLS.
    pub stores_only: bool,
    /// Bytes of `/mutate` answers kept for byte-identical Pods (replicas); 0 turns the cache off.
    pub decision_cache_bytes: u64,
    /// Keep this MutatingWebhookConfiguration's caBundle equal to `ca_bundle_file`.
    pub manage_ca_bundle: Option<String>,
    pub ca_bundle_file: Option<PathBuf>,
}

/// The main (TLS) router: `/mutate`, the probes, and `/metrics` and `/preview` unless they are
/// served on the admin address only.
pub fn router(state: Arc<AppState>, with_metrics: bool, with_preview: bool) -> Router {
    let mut r = Router::new()
        .route("/mutate", post(handle_mutate::mutate))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    if with_preview {
        r = r.route("/preview", post(handle_preview::preview));
    }
    if with_metrics {
        r = r.route("/metrics", get(metrics_text));
    }
    r.fallback(not_found)
        .layer(axum::middleware::map_response_with_state(Arc::clone(&state), error::count_errors))
        .with_state(state)
}

fn admin_router(state: Arc<AppState>, with_preview: bool) -> Router {
    let mut r = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    if with_preview {
        r = r.route("/preview", post(handle_preview::preview));
    }
    r.layer(axum::middleware::map_response_with_state(Arc::clone(&state), error::count_errors)).with_state(state)
}

fn http_builder(opts: &ServeOptions) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1().timer(TokioTimer::new()).header_read_timeout(opts.header_read_timeout).keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        // What a connection's unread streams can hold before the client must wait: a review is a
        // few KB, and a body is read (within the byte budget) as soon as its request starts.
        .initial_stream_window_size(256 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    b
}

/// Polls the config file; a changed file that fails validation keeps the old config.
fn spawn_config_reloader(state: Arc<AppState>, path: PathBuf, interval: Duration, overrides: crate::config::Overrides) {
    tokio::spawn(async move {
        let mut last = std::fs::read(&path).ok();
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Ok(bytes) = tokio::fs::read(&path).await else { continue };
            if last.as_deref() == Some(bytes.as_slice()) {
                continue;
            }
            last = Some(bytes.clone());
            match Config::from_yaml_with(&String::from_utf8_lossy(&bytes), &overrides) {
                Ok(cfg) => {
                    if let Some(w) = cfg.nixpkgs_warning() {
                        tracing::warn!(path = %path.display(), "{w}");
                    }
                    state.injector.store(Arc::new(Injector::new(cfg)));
                    state.metrics.config_reloads.get_or_create(&ResultLabels { result: "success" }).inc();
                    tracing::info!(path = %path.display(), "config reloaded");
                }
                Err(e) => {
                    state.metrics.config_reloads.get_or_create(&ResultLabels { result: "error" }).inc();
                    tracing::error!(path = %path.display(), error = %e, "config reload failed; keeping the current config");
                }
            }
        }
    });
}

async fn shutdown_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "shutting down"),
    }
}

async fn serve_plain(listener: TcpListener, app: Router, shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut rx = shutdown;
    let res = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = rx.wait_for(|v| *v).await;
        })
        .await;
    if let Err(e) = res {
        tracing::error!(error = %e, "metrics listener failed");
    }
}

/// Accepted connections waiting for room at once (each at most a quarter of a second); beyond
/// them a new connection is refused without waiting.
const PENDING_CONNECTIONS: usize = 256;

/// This replica's name for leader election and Events: the Pod's name (`POD_NAME`, from the
/// downward API), else the host name and process id.
pub fn identity() -> String {
    if let Some(p) = std::env::var("POD_NAME").ok().filter(|p| !p.is_empty()) {
        return p;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    format!("{}-{}", if host.is_empty() { "nixuv" } else { &host }, std::process::id())
}

pub use reconciler::{once as manage_stores_once, Summary as StoresSummary};

/// The managed-stores reconciler, reading the config the state holds now (reloads included).
fn spawn_reconciler(state: &Arc<AppState>, client: kube::Client, own_namespace: &str) {
    let s = Arc::clone(state);
    reconciler::spawn(
        client,
        move || Arc::new(s.injector.load().config().clone()),
        own_namespace,
        identity(),
        Arc::clone(&state.metrics),
    );
}

/// `--manage-stores --stores-only`: the reconciler, its probes and metrics, until SIGTERM.
async fn serve_stores_only(opts: ServeOptions, config: Config) -> anyhow::Result<()> {
    use anyhow::Context;
    let maddr = opts.metrics_addr.context("--stores-only needs --metrics-addr")?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let metrics = Arc::new(Metrics::new());
    let own_namespace = config.own_namespace.clone();
    let claims: Arc<dyn crate::claims::Claims> = Arc::new(crate::claims::AssumePresent);
    let limits = HandlerLimits::default();
    let state = Arc::new(AppState::new(Injector::new(config), claims, Arc::clone(&metrics), &limits));
    spawn_reconciler(&state, client, &own_namespace);
    if let Some(path) = &opts.config_path {
        spawn_config_reloader(Arc::clone(&state), path.clone(), opts.reload_interval, opts.overrides.clone());
    }
    let ml = TcpListener::bind(maddr).await.with_context(|| format!("binding --metrics-addr {maddr}"))?;
    tracing::info!(addr = %ml.local_addr()?, "metrics listening (plain HTTP)");
    state.ready.store(true, Ordering::Relaxed);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let admin = tokio::spawn(serve_plain(ml, admin_router(Arc::clone(&state), false), stop_rx));
    tracing::info!("reconciling the managed stores (no webhook)");
    shutdown_signal().await;
    state.ready.store(false, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), admin).await;
    Ok(())
}

/// Runs the server until SIGTERM/SIGINT, then drains in-flight requests and returns.
pub async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    use anyhow::Context;
    if opts.preview_on_metrics_addr && opts.metrics_addr.is_none() {
        anyhow::bail!("--preview-on-metrics-addr needs --metrics-addr");
    }
    let config = Config::load_with(opts.config_path.as_deref(), &opts.overrides)?;
    if let Some(w) = config.nixpkgs_warning() {
        tracing::warn!("{w}");
    }
    if let Some(n) = config.exclude_newer_note() {
        tracing::info!("{n}");
    }
    if opts.stores_only {
        return serve_stores_only(opts, config).await;
    }
    let certs = tls::CertStore::load_with_ca(&opts.tls_cert, &opts.tls_key, opts.ca_bundle_file.as_deref())?;
    let metrics = Arc::new(Metrics::new());
    let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(Arc::clone(&certs))?));
    certs.spawn_reloader(opts.reload_interval, Arc::clone(&metrics));

    let image_store = config.image_repository.is_some();
    let kube_client = if opts.check_claims || opts.manage_stores || opts.manage_ca_bundle.is_some() || image_store {
        Some(
            kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?,
        )
    } else {
        None
    };
    let mut claims: Arc<dyn crate::claims::Claims> = match (&kube_client, opts.check_claims) {
        (Some(c), true) => claim_watch::ClaimCache::start(c.clone()),
        _ => Arc::new(crate::claims::AssumePresent),
    };
    let envs = match (&kube_client, image_store) {
        (Some(c), true) => {
            let envs = env_watch::EnvCache::start(c.clone());
            claims = Arc::new(env_watch::WithEnvs { claims, envs: Arc::clone(&envs) });
            Some(envs)
        }
        _ => None,
    };
    if let (Some(c), Some(name)) = (&kube_client, &opts.manage_ca_bundle) {
        let file = opts.ca_bundle_file.clone().context("--manage-ca-bundle needs --ca-bundle-file")?;
        cabundle::spawn(c.clone(), name.clone(), file, opts.reload_interval, Arc::clone(&metrics));
    }
    let limits = HandlerLimits {
        body_limit: opts.body_limit,
        preview_body_limit: opts.preview_body_limit,
        request_timeout: opts.request_timeout,
        decision_cache_bytes: opts.decision_cache_bytes,
        preview_concurrency: opts.preview_concurrency,
        preview_threads: opts.preview_threads,
        preview_max_output: opts.preview_max_output,
        request_bytes_budget: opts.request_bytes_budget,
    };
    let own_namespace = config.own_namespace.clone();
    let mut app_state = AppState::new(Injector::new(config), claims, Arc::clone(&metrics), &limits);
    app_state.envs = envs;
    let state = Arc::new(app_state);
    if let (Some(c), true) = (&kube_client, image_store) {
        builder::spawn(&state, c.clone(), &own_namespace, identity());
    }
    if let (Some(c), true) = (&kube_client, opts.manage_stores) {
        spawn_reconciler(&state, c.clone(), &own_namespace);
    }
    if let Some(path) = &opts.config_path {
        spawn_config_reloader(Arc::clone(&state), path.clone(), opts.reload_interval, opts.overrides.clone());
    }
    let listener = TcpListener::bind(opts.addr).await.with_context(|| format!("binding --addr {}", opts.addr))?;
    let local = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut admin_task = None;
    if let Some(maddr) = opts.metrics_addr {
        let ml = TcpListener::bind(maddr).await.with_context(|| format!("binding --metrics-addr {maddr}"))?;
        tracing::info!(addr = %ml.local_addr()?, "metrics listening (plain HTTP)");
        admin_task = Some(tokio::spawn(serve_plain(
            ml,
            admin_router(Arc::clone(&state), opts.preview_on_metrics_addr),
            stop_rx.clone(),
        )));
    }
    let app = router(Arc::clone(&state), opts.metrics_addr.is_none(), !opts.preview_on_metrics_addr);
    let builder = http_builder(&opts);
    let budget = Arc::new(tokio::sync::Semaphore::new(opts.max_connections));
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    state.ready.store(true, Ordering::Relaxed);
    tracing::info!(addr = %local, "listening");

    let conns = Arc::new(conn::Spawner {
        acceptor,
        builder,
        app,
        metrics: Arc::clone(&metrics),
        limits: conn::Limits {
            handshake: opts.handshake_timeout,
            first_request: opts.first_request_timeout,
            idle: opts.idle_timeout,
        },
        registry: Arc::new(conn::Registry::default()),
        budget: Arc::clone(&budget),
        per_client: opts.max_connections_per_client.max(1),
        pending: Arc::new(tokio::sync::Semaphore::new(PENDING_CONNECTIONS)),
        shutdown: drain_rx,
    });
    let signal = shutdown_signal();
    tokio::pin!(signal);
    // After the signal: readiness fails at once, and the listener keeps accepting for the shutdown
    // delay (while endpoints are updated), then closes.
    let mut closing: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        let accepted = tokio::select! {
            _ = &mut signal, if closing.is_none() => {
                state.ready.store(false, Ordering::Relaxed);
                if opts.shutdown_delay.is_zero() {
                    break;
                }
                tracing::info!(delay = ?opts.shutdown_delay, "readiness failed; closing the listener after the delay");
                closing = Some(Box::pin(tokio::time::sleep(opts.shutdown_delay)));
                continue;
            }
            _ = async { closing.as_mut().expect("guarded").await }, if closing.is_some() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off briefly rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Never waits here: room for it is made in its own task.
        conns.accept(tcp, peer);
    }

    // Drain: stop accepting, let in-flight requests finish; idle keep-alive connections are
    // closed (HTTP/1.1) or sent GOAWAY (HTTP/2).
    state.ready.store(false, Ordering::Relaxed);
    drop(listener);
    let open = opts.max_connections - budget.available_permits();
    tracing::info!(connections = open, "draining");
    let _ = drain_tx.send(true);
    let all_closed = budget.acquire_many(opts.max_connections as u32);
    match tokio::time::timeout(opts.drain_timeout, all_closed).await {
        Ok(_) => tracing::info!("drained; exiting"),
        Err(_) => tracing::warn!(timeout = ?opts.drain_timeout, "drain timed out; exiting with connections open"),
    }
    let _ = stop_tx.send(true);
    if let Some(t) = admin_task {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    Ok(())
}
