//! Prometheus metrics (prometheus-client), with low-cardinality labels only.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Endpoint {
    mutate,
    preview,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: Endpoint,
    /// One of [`crate::inject::Outcome::as_str`], or `invalid` for unreadable bodies.
    pub decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: Endpoint,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `serving` or `ca`.
    pub certificate: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    pub namespace: String,
    /// One of [`crate::managed::StoreState::as_str`].
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// One of [`crate::imagestore::Phase::as_str`].
    pub phase: &'static str,
}

pub struct Metrics {
    registry: Registry,
    /// Image store: `NixuvEnv`s by phase, as the builder's last pass saw them.
    pub image_envs: Family<PhaseLabels, Gauge>,
    /// Image store: finished builds by result (`ready`, `failed`).
    pub image_builds: Family<ResultLabels, Counter>,
    /// 1 while this replica holds the builder's lease.
    pub image_builder_leader: Gauge,
    /// Managed stores per namespace: 1 for the state the last reconcile saw, 0 for the others.
    pub stores: Family<StoreLabels, Gauge>,
    /// 1 while this replica holds the stores lease and reconciles.
    pub stores_leader: Gauge,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<EndpointLabels, Histogram>,
    pub tls_reloads: Family<ResultLabels, Counter>,
    /// `notAfter` of the serving certificate and of the CA, in seconds since the epoch.
    pub certificate_expiry: Family<KindLabels, Gauge>,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub ca_bundle_syncs: Family<ResultLabels, Counter>,
    pub http_errors: Family<CodeLabels, Counter>,
    pub decision_cache: Family<ResultLabels, Counter>,
    pub connections: Gauge,
    pub rejected_connections: Counter,
    /// Idle connections closed to make room for a new one when the limit was reached.
    pub evicted_connections: Counter,
    /// Connections closed for sending no request within the first-request or idle timeout.
    pub idle_closed_connections: Counter,
    pub tls_handshake_failures: Counter,
    /// Bytes of request bodies held in memory now, and the budget they are held under.
    pub request_bytes_buffered: Gauge,
    pub request_bytes_budget: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("nixuv");
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because stderr did not take them fast enough (logging never blocks a request)",
            crate::logging::burst::DROPPED.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("admission_requests", "Admission and preview requests by decision", requests.clone());
        let duration = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1])
        });
        registry.register(
            "admission_duration_seconds",
            "Time from a complete request body to a response",
            duration.clone(),
        );
        let tls_reloads = Family::<ResultLabels, Counter>::default();
        registry.register("tls_reloads", "Serving certificate reloads by result", tls_reloads.clone());
        let certificate_expiry = Family::<KindLabels, Gauge>::default();
        registry.register(
            "certificate_expiry_seconds",
            "notAfter of the serving certificate and of the CA (where readable), seconds since the epoch; updated on every reload check",
            certificate_expiry.clone(),
        );
        let config_reloads = Family::<ResultLabels, Counter>::default();
        registry.register("config_reloads", "Configuration reloads by result", config_reloads.clone());
        let ca_bundle_syncs = Family::<ResultLabels, Counter>::default();
        registry.register(
            "ca_bundle_syncs",
            "caBundle updates of the webhook configuration by result",
            ca_bundle_syncs.clone(),
        );
        let http_errors = Family::<CodeLabels, Counter>::default();
        registry.register("http_errors", "Requests answered with an HTTP error status", http_errors.clone());
        let decision_cache = Family::<ResultLabels, Counter>::default();
        registry.register(
            "decision_cache_lookups",
            "/mutate lookups of the decision cache for byte-identical Pods, by result (hit or miss)",
            decision_cache.clone(),
        );
        let connections = Gauge::default();
        registry.register("connections_open", "Open client connections", connections.clone());
        let rejected_connections = Counter::default();
        registry.register(
            "connections_rejected",
            "Connections closed at once because the connection limit was reached",
            rejected_connections.clone(),
        );
        let evicted_connections = Counter::default();
        registry.register(
            "connections_evicted",
            "Idle connections closed to make room for a new connection at the connection limit",
            evicted_connections.clone(),
        );
        let idle_closed_connections = Counter::default();
        registry.register(
            "connections_idle_closed",
            "Connections closed after no request within the first-request or idle timeout",
            idle_closed_connections.clone(),
        );
        let tls_handshake_failures = Counter::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            tls_handshake_failures.clone(),
        );
        let request_bytes_buffered = Gauge::default();
        registry.register(
            "request_bytes_buffered",
            "Bytes of request bodies held in memory now (taken from the budget before they are read)",
            request_bytes_buffered.clone(),
        );
        let request_bytes_budget = Gauge::default();
        registry.register(
            "request_bytes_budget",
            "Bytes of request bodies the server holds in memory at most (--request-bytes-budget)",
            request_bytes_budget.clone(),
        );
        let stores = Family::<StoreLabels, Gauge>::default();
        registry.register(
            "stores",
            "Managed stores by namespace: 1 for the state the last reconcile saw (ready, pending, unbindable, unmanaged, error)",
            stores.clone(),
        );
        let stores_leader = Gauge::default();
        registry.register(
            "stores_leader",
            "1 while this replica holds the stores lease and reconciles",
            stores_leader.clone(),
        );
        let image_envs = Family::<PhaseLabels, Gauge>::default();
        registry.register(
            "image_envs",
            "Image store: NixuvEnvs by phase (Pending, Building, Ready, Failed), as the builder's last pass saw them",
            image_envs.clone(),
        );
        let image_builds = Family::<ResultLabels, Counter>::default();
        registry.register(
            "image_builds",
            "Image store: finished builds by result (ready, failed)",
            image_builds.clone(),
        );
        let image_builder_leader = Gauge::default();
        registry.register(
            "image_builder_leader",
            "1 while this replica holds the image builder's lease and builds",
            image_builder_leader.clone(),
        );
        Self {
            registry,
            image_envs,
            image_builds,
            image_builder_leader,
            stores,
            stores_leader,
            requests,
            duration,
            tls_reloads,
            certificate_expiry,
            config_reloads,
            ca_bundle_syncs,
            http_errors,
            decision_cache,
            connections,
            rejected_connections,
            evicted_connections,
            idle_closed_connections,
            tls_handshake_failures,
            request_bytes_buffered,
            request_bytes_budget,
        }
    }

    /// Counts one request of `endpoint` with `decision`.
    pub fn count(&self, endpoint: Endpoint, decision: &'static str) {
        self.requests.get_or_create(&RequestLabels { endpoint, decision }).inc();
    }

    /// Records how long `endpoint` took, from a complete body to a response.
    pub fn observe(&self, endpoint: Endpoint, elapsed: std::time::Duration) {
        self.duration.get_or_create(&EndpointLabels { endpoint }).observe(elapsed.as_secs_f64());
    }

    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
