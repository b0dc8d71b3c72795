//! `nixuv serve`: axum on tokio with rustls (HTTP/1.1 and HTTP/2 by ALPN). Handlers only read the
//! body, call the pure core and map the result to HTTP; connection handling (limits, timeouts,
//! graceful drain) is the accept loop's.

mod cabundle;
mod cache;
mod claim_watch;
mod conn;
mod handle_preview;
mod leader;
pub mod metrics;
mod reconciler;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::inject::{self, Injector, Outcome};
use crate::review;
use metrics::{CodeLabels, Endpoint, Metrics, ResultLabels};

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
    pub reload_interval: Duration,
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    pub handshake_timeout: Duration,
    /// A connection that sends no request this long after its handshake is closed.
    pub first_request_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub preview_concurrency: usize,
    pub preview_body_limit: usize,
    /// Serve `/preview` on the metrics address only, not on the webhook's.
    pub preview_on_metrics_addr: bool,
    pub preview_max_output: usize,
    pub shutdown_delay: Duration,
    pub drain_timeout: Duration,
    /// Check that the configured PVCs exist (a watch cache through the Kubernetes API).
    pub check_claims: bool,
    pub manage_stores: bool,
    /// Bytes of `/mutate` answers kept for byte-identical Pods (replicas); 0 turns the cache off.
    pub decision_cache_bytes: u64,
    /// Keep this MutatingWebhookConfiguration's caBundle equal to `ca_bundle_file`.
    pub manage_ca_bundle: Option<String>,
    pub ca_bundle_file: Option<PathBuf>,
}

pub struct AppState {
    /// The core with its config, swapped whole on reload.
    pub injector: ArcSwap<Injector>,
    /// Whether the configured claims exist, per namespace (a watch cache, or "assume present").
    pub claims: Arc<dyn crate::claims::Claims>,
    pub metrics: Arc<Metrics>,
    /// `/mutate` answers for byte-identical Pods.
    pub decisions: cache::DecisionCache,
    pub ready: AtomicBool,
    pub body_limit: usize,
    pub preview_body_limit: usize,
    pub request_timeout: Duration,
    /// `/preview` answers at once for at most this many requests; more get 429. A preview's
    /// answer is larger than its request (objects and patches), unlike `/mutate`'s.
    pub preview_slots: tokio::sync::Semaphore,
    /// The largest `/preview` answer, in bytes; a larger one is refused with 413.
    pub preview_max_output: usize,
}

/// What the handlers are bounded by (the flags of the same names).
#[derive(Debug, Clone)]
pub struct HandlerLimits {
    pub body_limit: usize,
    /// `/preview`'s own, smaller body limit: its answer and its parse outgrow the request.
    pub preview_body_limit: usize,
    pub request_timeout: Duration,
    pub decision_cache_bytes: u64,
    pub preview_concurrency: usize,
    pub preview_max_output: usize,
}

impl Default for HandlerLimits {
    fn default() -> Self {
        HandlerLimits {
            body_limit: 4 * 1024 * 1024,
            preview_body_limit: 1024 * 1024,
            request_timeout: Duration::from_secs(10),
            decision_cache_bytes: 8 * 1024 * 1024,
            preview_concurrency: 2,
            preview_max_output: 16 * 1024 * 1024,
        }
    }
}

impl AppState {
    /// The handlers' state; `ready` starts false (the server sets it once it listens).
    pub fn new(
        injector: Injector,
        claims: Arc<dyn crate::claims::Claims>,
        metrics: Arc<Metrics>,
        limits: &HandlerLimits,
    ) -> Self {
        AppState {
            injector: ArcSwap::from_pointee(injector),
            claims,
            metrics,
            decisions: cache::DecisionCache::new(limits.decision_cache_bytes),
            ready: AtomicBool::new(false),
            body_limit: limits.body_limit,
            // Never more than the server's own limit.
            preview_body_limit: limits.preview_body_limit.min(limits.body_limit),
            request_timeout: limits.request_timeout,
            preview_slots: tokio::sync::Semaphore::new(limits.preview_concurrency.max(1)),
            preview_max_output: limits.preview_max_output,
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    code: u16,
}

pub fn json_error(state: &AppState, code: StatusCode, message: &str) -> Response {
    state.metrics.http_errors.get_or_create(&CodeLabels { code: code.as_u16() }).inc();
    let body = serde_json::to_vec(&ErrorBody { error: message, code: code.as_u16() }).expect("serialises");
    (code, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

/// Reads the whole body within the size limit and the request timeout; the error is the response.
pub async fn read_body(state: &AppState, body: Body, limit: usize) -> Result<Bytes, Response> {
    let limited = http_body_util::Limited::new(body, limit);
    let collected = tokio::time::timeout(state.request_timeout, http_body_util::BodyExt::collect(limited)).await;
    match collected {
        Err(_) => Err(json_error(state, StatusCode::REQUEST_TIMEOUT, "timed out reading the request body")),
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(json_error(
            state,
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body exceeds the limit of {limit} bytes"),
        )),
        Ok(Err(e)) => Err(json_error(state, StatusCode::BAD_REQUEST, &format!("reading the request body: {e}"))),
    }
}

fn too_large_by_header(state: &AppState, req: &Request) -> Option<Response> {
    let len = req.headers().get(header::CONTENT_LENGTH)?.to_str().ok()?.parse::<u64>().ok()?;
    (len > state.body_limit as u64).then(|| {
        json_error(
            state,
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body exceeds the limit of {} bytes", state.body_limit),
        )
    })
}

/// The target of the per-request admission lines, so that `NIXUV_LOG` can select them on their
/// own (e.g. `info,nixuv::admission=warn` keeps every other info line).
pub const ADMISSION_LOG: &str = "nixuv::admission";

async fn mutate(State(state): State<Arc<AppState>>, req: Request) -> Response {
    if let Some(resp) = too_large_by_header(&state, &req) {
        return resp;
    }
    let bytes = match read_body(&state, req.into_body(), state.body_limit).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let start = Instant::now();
    // Where the request uid may stand, looked for once: for the lookup, and for the entry made if
    // the review is new.
    let uids: Vec<std::ops::Range<usize>> = match state.decisions.enabled() && bytes.len() <= cache::MAX_REVIEW {
        true => review::uid_candidates(&bytes).collect(),
        false => Vec::new(),
    };
    // A replica of a review seen before is answered without parsing it (see `cache`).
    let (answer, uid, cached) = match cached(&state, &bytes, &uids) {
        Some((hit, uid)) => (hit, std::borrow::Cow::Borrowed(uid), true),
        None => match decide_new(&state, &bytes, &uids) {
            Ok((answer, uid)) => (answer, uid, false),
            Err(e) => {
                state.metrics.count(Endpoint::mutate, "invalid");
                return json_error(&state, StatusCode::BAD_REQUEST, &e.to_string());
            }
        },
    };
    let body = answer.prepared.body(answer.api_version, &uid);
    let elapsed = start.elapsed();
    state.metrics.count(Endpoint::mutate, answer.outcome.as_str());
    state.metrics.observe(Endpoint::mutate, elapsed);
    log_admission(&uid, &answer, cached, elapsed);
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

/// One info line per decision made; the replicas answered from the cache repeat it word for word
/// but for the uid, so they are debug lines (counted in the metrics either way). At saturation a
/// line per request cost ~15 % of the server's CPU (docs/performance.md).
fn log_admission(uid: &str, a: &cache::Answer, cached: bool, elapsed: Duration) {
    let noteworthy = !cached && matches!(a.outcome, Outcome::Injected | Outcome::Denied | Outcome::AlreadyInjected);
    // `tracing::event!` takes its level as a constant.
    macro_rules! line {
        ($level:expr) => {
            tracing::event!(
                target: ADMISSION_LOG,
                $level,
                uid,
                namespace = &*a.namespace,
                name = &*a.name,
                decision = a.outcome.as_str(),
                env = a.env_id.as_deref().unwrap_or(""),
                denial = a.message.as_deref().unwrap_or(""),
                dry_run = a.dry_run,
                cached,
                elapsed_us = elapsed.as_micros() as u64,
                "admission"
            )
        };
    }
    if noteworthy {
        line!(tracing::Level::INFO);
    } else {
        line!(tracing::Level::DEBUG);
    }
}

/// A review not answered from the cache: its envelope and its Pod's fields read in one pass; only
/// an object that is not a Pod nixuv can read (a denial, with the parser's message) is read again
/// as raw JSON. The answer, and the request uid.
fn decide_new<'b>(
    state: &AppState,
    body: &'b [u8],
    uids: &[std::ops::Range<usize>],
) -> Result<(Arc<cache::Answer>, std::borrow::Cow<'b, str>), review::ReviewError> {
    match review::decode_as::<inject::pod::PodView>(body) {
        Ok(r) => Ok((answer(state, &r, body, uids), r.request.uid.0)),
        Err(_) => {
            let r = review::decode(body)?;
            Ok((answer(state, &r, body, uids), r.request.uid.0))
        }
    }
}

/// The cached answer for a review byte-identical, but for its uid (at one of `uids`), to one
/// decided before under this config and the claim states that still hold; with the uid.
fn cached<'b>(
    state: &AppState,
    body: &'b [u8],
    uids: &[std::ops::Range<usize>],
) -> Option<(Arc<cache::Answer>, &'b str)> {
    let injector = state.injector.load();
    for uid in uids {
        let key = cache::KeyRef { generation: injector.generation(), review: body, uid: uid.clone() };
        let Some(hit) = state.decisions.get(&key) else { continue };
        // Claims created, deleted or bound since: decided again (and the entry replaced).
        if injector.store_claims(&hit.namespace, &*state.claims) != hit.claims {
            return None;
        }
        state.metrics.decision_cache.get_or_create(&ResultLabels { result: "hit" }).inc();
        return Some((hit, std::str::from_utf8(&body[uid.clone()]).ok()?));
    }
    None
}

/// The answer to one review, decided now; a Pod CREATE whose uid the parser found at one of
/// `uids` is kept for its replicas (see [`cached`]).
fn answer<O: inject::PodSource>(
    state: &AppState,
    review: &review::AdmissionReview<'_, O>,
    body: &[u8],
    uids: &[std::ops::Range<usize>],
) -> Arc<cache::Answer> {
    let req = &review.request;
    let injector = state.injector.load();
    let ns = req.namespace.as_deref().unwrap_or("");
    let cacheable =
        state.decisions.enabled() && !ns.is_empty() && req.object.is_some() && inject::optin::is_pod_create(req);
    // The claims' states are read once, by the core's own function, and the decision is made
    // with exactly those: entry and answer cannot disagree.
    let states = injector.store_claims(ns, &*state.claims);
    let d = if cacheable { injector.decide_with_states(req, states) } else { injector.decide(req, &*state.claims) };
    let answer = Arc::new(cache::Answer {
        prepared: review::Prepared::new(d.to_response()),
        outcome: d.outcome(),
        env_id: d.env_id().map(ToString::to_string),
        message: d.denial().map(|x| x.message.clone()),
        api_version: review.api_version,
        namespace: ns.into(),
        name: req.name.as_deref().unwrap_or("").into(),
        dry_run: req.dry_run.unwrap_or(false),
        claims: states,
    });
    if cacheable {
        state.metrics.decision_cache.get_or_create(&ResultLabels { result: "miss" }).inc();
        // Only where a later lookup will try it: the parser's uid among the byte search's.
        if let Some(uid) = review::uid_span_of(body, &req.uid).filter(|u| uids.contains(u)) {
            let key = cache::KeyRef { generation: injector.generation(), review: body, uid };
            state.decisions.insert(&key, Arc::clone(&answer));
        }
    }
    answer
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    }
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn not_found(State(state): State<Arc<AppState>>) -> Response {
    json_error(
        &state,
        StatusCode::NOT_FOUND,
        "no such endpoint: use POST /mutate, POST /preview, GET /healthz, /readyz, /metrics",
    )
}

/// The main (TLS) router: `/mutate`, the probes, and `/metrics` and `/preview` unless they are
/// served on the admin address only.
pub fn router(state: Arc<AppState>, with_metrics: bool, with_preview: bool) -> Router {
    let mut r =
        Router::new().route("/mutate", post(mutate)).route("/healthz", get(healthz)).route("/readyz", get(readyz));
    if with_preview {
        r = r.route("/preview", post(handle_preview::preview));
    }
    if with_metrics {
        r = r.route("/metrics", get(metrics_text));
    }
    r.fallback(not_found).with_state(state)
}

fn admin_router(state: Arc<AppState>, with_preview: bool) -> Router {
    let mut r = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    if with_preview {
        r = r.route("/preview", post(handle_preview::preview));
    }
    r.with_state(state)
}

fn http_builder(opts: &ServeOptions) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1().timer(TokioTimer::new()).header_read_timeout(opts.header_read_timeout).keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
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
    let certs = tls::CertStore::load_with_ca(&opts.tls_cert, &opts.tls_key, opts.ca_bundle_file.as_deref())?;
    let metrics = Arc::new(Metrics::new());
    let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(Arc::clone(&certs))?));
    certs.spawn_reloader(opts.reload_interval, Arc::clone(&metrics));

    let kube_client = if opts.check_claims || opts.manage_stores || opts.manage_ca_bundle.is_some() {
        Some(
            kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?,
        )
    } else {
        None
    };
    let claims: Arc<dyn crate::claims::Claims> = match (&kube_client, opts.check_claims) {
        (Some(c), true) => claim_watch::ClaimCache::start(c.clone()),
        _ => Arc::new(crate::claims::AssumePresent),
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
        preview_max_output: opts.preview_max_output,
    };
    let own_namespace = config.own_namespace.clone();
    let state = Arc::new(AppState::new(Injector::new(config), claims, Arc::clone(&metrics), &limits));
    if let (Some(c), true) = (&kube_client, opts.manage_stores) {
        let s = Arc::clone(&state);
        reconciler::spawn(
            c.clone(),
            move || Arc::new(s.injector.load().config().clone()),
            &own_namespace,
            identity(),
            Arc::clone(&metrics),
        );
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

    let conns = conn::Spawner {
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
        shutdown: drain_rx,
    };
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
        let Some(permit) = conns.permit().await else {
            metrics.rejected_connections.inc();
            drop(tcp);
            continue;
        };
        conns.spawn(tcp, peer, permit);
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
