//! Command-line interface (clap derive). Flags fixed by the product contract keep their names;
//! every flag has an environment twin for container use.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

pub use crate::logging::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "nixuv",
    version,
    about = "Kubernetes admission webhook that gives Pods nixpkgs and Python dependencies"
)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "NIXUV_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the webhook over HTTPS (HTTP/1.1 and HTTP/2).
    Serve(Box<ServeArgs>),
    /// Write a CA and an ECDSA P-256 serving certificate; print the base64 caBundle.
    Certs(CertsArgs),
    /// Show what nixuv would do to the Pods of a manifest, offline. Exit 0: all allowed;
    /// 1: some object denied; 2: unreadable input or bad flags.
    Preview(PreviewArgs),
    /// The init container: realise the env described by the NIXUV_* environment variables in the
    /// shared stores (nix-portable for system deps, uv for Python deps).
    #[command(after_help = "Inputs (environment; the webhook sets them on nixuv-init):
  NIXUV_ENV            the env id (16 hex); recomputed from the rest and refused on a mismatch
  NIXUV_SYSTEM_DEPS    nixpkgs attribute paths, one per line
  NIXUV_PYTHON_DEPS    PEP 508 requirements, one per line
  NIXUV_PYTHON         the Python version (3, 3.X or 3.X.Y)
  NIXUV_NIXPKGS        the flake reference system deps come from
  NIXUV_INDEX_URL      the index uv uses (must match UV_DEFAULT_INDEX / UV_INDEX_URL)
  NIXUV_TOOL_ENV       names of the initEnv variables bound into the id (others are stripped)
  NIXUV_SECRET_ENV     NAME=secret/key of the initEnv variables from Secrets (bound by reference)
  NIXUV_SOURCE_BUILDS  \"allowed\" when python.allowSourceBuilds is set
  NIXUV_EXCLUDE_NEWER  python.excludeNewer, when set
  NIXUV_PYTHON_MODE    \"overlay\" for a PYTHONPATH directory instead of a venv
  NIXUV_UV_ROOT        the uv volume (default mount /nixuv/uv)
  NIXUV_NIX_DIR        the nix volume as nix-portable sees it ($NP_LOCATION/.nix-portable/nix)
Tuning and tools:
  NIXUV_LEASE_TTL      lease lifetime (default 60s); NIXUV_WAIT_TIMEOUT  wait for another build (default 1h)
  NIXUV_UV, NIXUV_NIX_PORTABLE  the tools (default: uv and nix-portable on PATH)
  NIXUV_LOG            log filter (default info)")]
    Materialize,
    /// The image store's builder: build the env described by the NIXUV_* environment variables
    /// (as for materialize) into this container's own volumes and push it as an OCI image tagged
    /// with the env id. Prints the digest as the last line; the termination message carries it.
    Publish(PublishArgs),
    /// Remove envs not used for --max-age from the shared stores, then prune nix and uv.
    Gc(GcArgs),
    /// Why is (or isn't) this injected? Ask the cluster (kubeconfig or in-cluster config) about a
    /// Pod, a workload (deployment, statefulset, daemonset, replicaset, job, cronjob, workflow) or
    /// a namespace. Exit 0: nothing in the way; 1: something stops injection; 2: cannot ask.
    Check(CheckArgs),
    /// What a store holds: `envs list`, or `envs show ID` (run it where the store volumes are
    /// mounted, e.g. a one-off Pod with the init image; docs/materialize.md).
    Envs(EnvsArgs),
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// `<registry>/<path>` (the config's imageStore.repository).
    #[arg(long)]
    pub repository: String,
    /// The registry speaks plain HTTP.
    #[arg(long)]
    pub insecure: bool,
    /// A docker config file (`.dockerconfigjson`) with push credentials.
    #[arg(long, env = "NIXUV_REGISTRY_AUTH")]
    pub auth_file: Option<PathBuf>,
    /// Where the kubelet reads the termination message from.
    #[arg(long, env = "NIXUV_TERMINATION_LOG", default_value = "/dev/termination-log")]
    pub termination_log: PathBuf,
}

#[derive(Debug, Args)]
pub struct EnvsArgs {
    /// `list`, or `show`.
    pub action: String,
    /// The env id, for `show`.
    pub id: Option<String>,
    /// The uv volume (as mounted in app containers).
    #[arg(long, env = "NIXUV_UV_ROOT", default_value = "/nixuv/uv")]
    pub uv_root: PathBuf,
    /// The nix volume, mounted at $NP_LOCATION/.nix-portable/nix.
    #[arg(long, env = "NIXUV_NIX_DIR", default_value = "/nixuv/work/.nix-portable/nix")]
    pub nix_dir: PathBuf,
    /// Lease lifetime (as for materialize): a lease refreshed within it is a build in progress.
    #[arg(long, env = "NIXUV_LEASE_TTL", value_parser = duration, default_value = "60s")]
    pub lease_ttl: Duration,
    /// text or json.
    #[arg(short = 'o', long, default_value = "text")]
    pub output: String,
    /// The image store: read the cluster's NixuvEnvs (kubeconfig or in-cluster config) instead of
    /// a mounted store.
    #[arg(long)]
    pub cluster: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// pod, namespace, or a workload kind (deployment, statefulset, daemonset, replicaset, job,
    /// cronjob, workflow).
    pub kind: String,
    pub name: String,
    /// The object's namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// The MutatingWebhookConfiguration's name.
    #[arg(long, default_value = "nixuv")]
    pub webhook: String,
    /// nixuv's ConfigMap, in the webhook Service's namespace.
    #[arg(long, default_value = "nixuv-config")]
    pub config_map: String,
    /// nixuv's serving-certificate Secret, read when the Service cannot be reached from here.
    #[arg(long, default_value = "nixuv-tls")]
    pub tls_secret: String,
    /// HOST:PORT to reach the webhook instead of the Service's DNS name (a port-forward).
    #[arg(long)]
    pub connect: Option<String>,
    /// Also resolve the env's Python deps and evaluate its system deps from here, as
    /// `nixuv preview --resolve` does (uv and nix on PATH, or NIXUV_UV and NIXUV_NIX).
    #[arg(long)]
    pub resolve: bool,
    /// text or json.
    #[arg(short = 'o', long, default_value = "text")]
    pub output: String,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// The uv volume (as mounted in app containers).
    #[arg(long, env = "NIXUV_UV_ROOT", default_value = "/nixuv/uv")]
    pub uv_root: PathBuf,
    /// The nix volume, mounted at $NP_LOCATION/.nix-portable/nix.
    #[arg(long, env = "NIXUV_NIX_DIR", default_value = "/nixuv/work/.nix-portable/nix")]
    pub nix_dir: PathBuf,
    /// Remove envs whose last materialize is older than this.
    #[arg(long, value_parser = duration, default_value = "14d")]
    pub max_age: Duration,
    /// Lease lifetime (as for materialize): envs with a live build lease are never removed.
    #[arg(long, env = "NIXUV_LEASE_TTL", value_parser = duration, default_value = "60s")]
    pub lease_ttl: Duration,
    /// Only report what would be removed.
    #[arg(long)]
    pub dry_run: bool,
    /// Skip `nix store gc` and `uv cache prune`.
    #[arg(long)]
    pub no_prune: bool,
    /// Then keep the uv cache under this size (a quantity like 20Gi): unpacked wheels no env
    /// links any more go, least recently linked first.
    #[arg(long, value_parser = quantity)]
    pub uv_cache_max_size: Option<crate::values::Quantity>,
    /// Keep every env a Pod of this namespace that has not finished uses (its nixuv.io/env),
    /// whatever its age: asks the API (in-cluster config or kubeconfig) for the namespace's Pods
    /// first, and removes nothing when it cannot.
    #[arg(long, env = "NIXUV_GC_PODS_NAMESPACE")]
    pub pods_namespace: Option<String>,
    /// The image store instead of the volumes: remove the images and NixuvEnvs no unfinished Pod
    /// has used for --max-age (asks the cluster: kubeconfig or in-cluster config; the config's
    /// imageStore; credentials from NIXUV_REGISTRY_AUTH).
    #[arg(long)]
    pub registry: bool,
    /// YAML config file (for --registry: its imageStore).
    #[arg(long, env = "NIXUV_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PreviewArgs {
    /// Manifest to read (YAML or JSON, several documents or a List); `-` for stdin. Repeat it for
    /// several files; a directory reads its `.yaml`, `.yml` and `.json` files (with `-R`, those of
    /// its subdirectories too), as `kubectl apply -f` does.
    #[arg(short = 'f', long = "filename", required = true)]
    pub file: Vec<String>,
    /// With a directory for `-f`, read its subdirectories too.
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// The init image to inject, overriding the config's `initImage`.
    #[arg(long, env = "NIXUV_INIT_IMAGE")]
    pub init_image: Option<String>,
    /// Exit 3 when there is any warning (a near miss, a fallback, Python deps neither pinned nor
    /// resolved as of a fixed date), for CI checks of manifests.
    #[arg(long)]
    pub strict: bool,
    /// Also resolve each env's Python deps against the configured index with uv (the init
    /// container's flags) and evaluate each system dep in the pinned nixpkgs with nix: what would
    /// fail in the init container fails here (exit 1), with the fix. Uses `NIXUV_UV` and
    /// `NIXUV_NIX` (default: uv and nix on PATH); what cannot be checked from here is said.
    #[arg(long)]
    pub resolve: bool,
    /// YAML config file, as for `nixuv serve`.
    #[arg(long, env = "NIXUV_CONFIG")]
    pub config: Option<PathBuf>,
    /// Namespace the Pods are created in (default: each object's own, else `default`).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Output: the mutated objects (default: the input's format), the JSON patches,
    /// `warm-job`: a Job per distinct env the input needs, to build them ahead of its Pods, or
    /// `env` (image store): the NixuvEnv objects it needs, to apply before it runs.
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<crate::preview::output::Output>,
}

fn quantity(s: &str) -> Result<crate::values::Quantity, String> {
    crate::values::Quantity::parse(s).ok_or_else(|| format!("{s:?} is not a quantity like 20Gi"))
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (examples: 500ms, 10s, 2m)"))
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The init image to inject, overriding the config's `initImage` (the deployment sets it from
    /// the ConfigMap key that kustomize's `images:` updates).
    #[arg(long, env = "NIXUV_INIT_IMAGE")]
    pub init_image: Option<String>,
    /// Address to listen on (port 0: pick a free port; the chosen one is logged as `listening`).
    #[arg(long, env = "NIXUV_ADDR", default_value = "0.0.0.0:8443")]
    pub addr: SocketAddr,
    /// PEM certificate chain, re-read when it changes.
    #[arg(long, env = "NIXUV_TLS_CERT", required_unless_present_any = ["manage_stores_once", "stores_only"])]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key, re-read when it changes.
    #[arg(long, env = "NIXUV_TLS_KEY", required_unless_present_any = ["manage_stores_once", "stores_only"])]
    pub tls_key: Option<PathBuf>,
    /// YAML config file (defaults for every key if absent); re-read when it changes.
    #[arg(long, env = "NIXUV_CONFIG")]
    pub config: Option<PathBuf>,
    /// Serve /metrics (plain HTTP, with /healthz and /readyz) on this address instead of the main one.
    #[arg(long, env = "NIXUV_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Largest accepted request body, in bytes (the API server itself caps at 3 MiB).
    #[arg(long, env = "NIXUV_BODY_LIMIT", default_value_t = 4 * 1024 * 1024)]
    pub body_limit: usize,
    /// MiB of request bodies held in memory at once, over every connection and stream: a request
    /// takes its bytes before they are read and waits briefly, then gets 503, when they are spent.
    #[arg(long, env = "NIXUV_REQUEST_BYTES_BUDGET_MIB", default_value_t = 48)]
    pub request_bytes_budget_mib: usize,
    /// How often the certificate and config files are checked for changes.
    #[arg(long, env = "NIXUV_RELOAD_INTERVAL", value_parser = duration, default_value = "10s")]
    pub reload_interval: Duration,
    /// Time allowed for a client to send request headers (HTTP/1.1).
    #[arg(long, value_parser = duration, default_value = "5s")]
    pub header_read_timeout: Duration,
    /// Time allowed to receive a request body.
    #[arg(long, value_parser = duration, default_value = "10s")]
    pub request_timeout: Duration,
    /// Time allowed for a TLS handshake.
    #[arg(long, value_parser = duration, default_value = "5s")]
    pub handshake_timeout: Duration,
    /// MiB of `/mutate` answers kept for byte-identical Pods (every replica of a workload arrives as
    /// the same object); 0 turns the cache off.
    #[arg(long, env = "NIXUV_DECISION_CACHE_MIB", default_value_t = 8)]
    pub decision_cache_mib: u64,
    /// Serve `/preview` only on `--metrics-addr` (plain HTTP, reachable where you let it be),
    /// not on the webhook's address, which the API server and so the whole network can reach.
    #[arg(long)]
    pub preview_on_metrics_addr: bool,
    /// `/preview` requests admitted at once (reading, waiting or rendering); more get 429 (a
    /// preview's answer outgrows its request).
    #[arg(long, default_value_t = 2)]
    pub preview_concurrency: usize,
    /// Threads that render previews, apart from the runtime that serves `/mutate`.
    #[arg(long, default_value_t = 1)]
    pub preview_threads: usize,
    /// Largest `/preview` request body, in bytes (a preview's parse and answer outgrow its body,
    /// unlike `/mutate`'s); a larger one gets 413.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub preview_body_limit: usize,
    /// Largest `/preview` answer, in bytes; a larger one gets 413.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub preview_max_output: usize,
    /// A connection that sends no request this long after its TLS handshake is closed.
    #[arg(long, value_parser = duration, default_value = "10s")]
    pub first_request_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/1.1 keep-alive and
    /// HTTP/2 alike; PINGs do not count). Shorter than the API server's own idle timeout (90 s)
    /// would make it reconnect more often; longer lets idle clients hold the budget.
    #[arg(long, value_parser = duration, default_value = "60s")]
    pub idle_timeout: Duration,
    /// Open connections at most. At the limit, the longest-idle connection is closed to make room
    /// for a new one, else one whose request has made no progress for 2 s; only when every
    /// connection is busy and making progress is a new one refused.
    #[arg(long, env = "NIXUV_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Open connections of one client address at most (the API server keeps a few per replica).
    /// At the limit, that client's longest-idle (else longest-stalled) connection makes room.
    #[arg(long, env = "NIXUV_MAX_CONNECTIONS_PER_CLIENT", default_value_t = 256)]
    pub max_connections_per_client: usize,
    /// After SIGTERM, keep accepting for this long with /readyz failing (endpoint propagation).
    #[arg(long, env = "NIXUV_SHUTDOWN_DELAY", value_parser = duration, default_value = "0s")]
    pub shutdown_delay: Duration,
    /// After closing the listener, wait at most this long for in-flight requests.
    #[arg(long, value_parser = duration, default_value = "25s")]
    pub drain_timeout: Duration,
    /// Check through the Kubernetes API (in-cluster config or KUBECONFIG) that the configured
    /// PersistentVolumeClaims exist in a Pod's namespace; fall back to emptyDir with a warning if not.
    #[arg(long, env = "NIXUV_CHECK_CLAIMS")]
    pub check_claims: bool,
    /// Keep the caBundle of this MutatingWebhookConfiguration equal to --ca-bundle-file.
    #[arg(long, env = "NIXUV_MANAGE_CA_BUNDLE", value_name = "NAME", requires = "ca_bundle_file")]
    pub manage_ca_bundle: Option<String>,
    /// PEM CA certificate(s) for --manage-ca-bundle (e.g. the ca.crt of the serving Secret).
    #[arg(long, env = "NIXUV_CA_BUNDLE_FILE")]
    pub ca_bundle_file: Option<PathBuf>,
    /// Keep the shared stores (the two claims and the gc CronJob) in every namespace labelled
    /// `stores.namespaceLabel`, one replica at a time (a Lease in nixuv's namespace).
    #[arg(long, env = "NIXUV_MANAGE_STORES")]
    pub manage_stores: bool,
    /// With --manage-stores: the reconciler alone, no webhook (no TLS, no admission port), its
    /// probes and metrics on --metrics-addr. For a Deployment of its own, under a ServiceAccount
    /// of its own, so that the webhook's holds no write access (deploy/overlays/managed-stores).
    #[arg(long, requires_all = ["manage_stores", "metrics_addr"])]
    pub stores_only: bool,
    /// One reconcile pass of the managed stores over every selected namespace, then exit (no
    /// webhook, no leader election): prints `namespace state` per namespace.
    #[arg(long, conflicts_with = "manage_stores")]
    pub manage_stores_once: bool,
    /// Tokio worker threads (default: the number of CPUs).
    #[arg(long, env = "NIXUV_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
}

#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Directory for ca.crt, tls.crt and tls.key (created if missing).
    #[arg(long)]
    pub out_dir: PathBuf,
    /// DNS names of the serving certificate (e.g. nixuv.nixuv-system.svc).
    #[arg(long = "dns-name", required = true, num_args = 1..)]
    pub dns_names: Vec<String>,
    /// IP addresses of the serving certificate.
    #[arg(long = "ip", num_args = 1..)]
    pub ips: Vec<IpAddr>,
    /// Validity of the serving certificate in days (the CA: five times as long).
    #[arg(long, default_value_t = 365)]
    pub valid_days: i64,
}
