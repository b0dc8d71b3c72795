//! What the handlers share: the core (swapped whole on reload), the claims' states, metrics, the
//! decision cache, readiness and the handlers' limits.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::budget::ByteBudget;
use super::cache;
use super::metrics::Metrics;
use super::preview_pool::PreviewPool;
use crate::inject::Injector;

pub struct AppState {
    /// The core with its config, swapped whole on reload.
    pub injector: ArcSwap<Injector>,
    /// Whether the configured claims exist, per namespace (a watch cache, or "assume present").
    pub claims: Arc<dyn crate::claims::Claims>,
    /// Image store: the `NixuvEnv` cache (also behind `claims`), for requests and invalidation.
    pub envs: Option<Arc<super::env_watch::EnvCache>>,
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
    /// The threads previews are rendered on.
    pub preview_pool: PreviewPool,
    /// Request bytes held in memory across every connection and stream.
    pub budget: ByteBudget,
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
    /// Threads that render previews.
    pub preview_threads: usize,
    pub preview_max_output: usize,
    /// Bytes of request bodies held in memory at once, over every connection and stream.
    pub request_bytes_budget: usize,
}

impl Default for HandlerLimits {
    fn default() -> Self {
        HandlerLimits {
            body_limit: 4 * 1024 * 1024,
            preview_body_limit: 1024 * 1024,
            request_timeout: Duration::from_secs(10),
            decision_cache_bytes: 8 * 1024 * 1024,
            preview_concurrency: 2,
            preview_threads: 1,
            preview_max_output: 16 * 1024 * 1024,
            request_bytes_budget: 48 * 1024 * 1024,
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
        // Never less than one request of the largest size.
        let bytes = limits.request_bytes_budget.max(limits.body_limit);
        metrics.request_bytes_budget.set(bytes as i64);
        let budget = ByteBudget::new(bytes, limits.body_limit, metrics.request_bytes_buffered.clone());
        AppState {
            injector: ArcSwap::from_pointee(injector),
            claims,
            envs: None,
            metrics,
            decisions: cache::DecisionCache::new(limits.decision_cache_bytes),
            ready: AtomicBool::new(false),
            body_limit: limits.body_limit,
            // Never more than the server's own limit.
            preview_body_limit: limits.preview_body_limit.min(limits.body_limit),
            request_timeout: limits.request_timeout,
            preview_slots: tokio::sync::Semaphore::new(limits.preview_concurrency.max(1)),
            preview_max_output: limits.preview_max_output,
            // As many waiting as may be admitted at once (`preview_slots`): none is refused by
            // the queue that the slots let in.
            preview_pool: PreviewPool::new(limits.preview_threads, limits.preview_concurrency.max(1))
                .expect("start the preview threads"),
            budget,
        }
    }
}
