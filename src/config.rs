//! The YAML configuration file: every key optional, unknown keys rejected, validated once into
//! [`Config`], which the hot path reads without further parsing.

use std::collections::BTreeMap;
use std::path::Path;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;

use crate::ecosystem::Ecosystem;
use crate::names::RESERVED_INIT_ENV_PREFIX;
use crate::plan::PlanInputs;
use crate::toolenv::{effective_index, tool_scope, valid_index_url, FIXED_TOOL_ENV};
pub use crate::values::{is_dns1123_label, is_dns1123_subdomain, valid_path_list};
use crate::values::{InitPlacement, PullPolicy, PythonMode, PythonVersion, Quantity};

/// The default PATH given to a target container that does not set PATH itself. Images set PATH in
/// their own config, which Kubernetes does not show us; this is the usual Debian/OCI default.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config: {0}")]
    Parse(String),
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), message: message.into() }
}

/// Where the shared stores come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum StorageMode {
    /// ReadWriteMany PersistentVolumeClaims shared by every Pod of a namespace.
    #[serde(rename = "pvc")]
    Pvc,
    /// One emptyDir per Pod: nothing shared, every Pod builds its own env.
    #[serde(rename = "emptyDir")]
    EmptyDir,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct StorageFile {
    pub mode: StorageMode,
    pub nix_claim: String,
    pub uv_claim: String,
}

impl Default for StorageFile {
    fn default() -> Self {
        Self { mode: StorageMode::Pvc, nix_claim: "nixuv-nix-store".into(), uv_claim: "nixuv-uv-cache".into() }
    }
}

/// The `stores` section: the shared stores `nixuv serve --manage-stores` keeps in every namespace
/// labelled `namespaceLabel` (docs/install.md, "Managed stores").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct StoresFile {
    /// The claims' class (unset: the cluster's default class).
    pub storage_class_name: Option<String>,
    pub nix_size: String,
    pub uv_size: String,
    pub access_modes: Vec<String>,
    /// `key=value`: the label that asks for stores in a namespace.
    pub namespace_label: String,
    /// The gc CronJob's schedule and `--max-age`.
    pub gc_schedule: String,
    pub gc_max_age: String,
    /// Leader election: how long a lease is valid, and how long the leader keeps trying to renew
    /// it before it stops reconciling.
    pub lease_duration_seconds: u64,
    pub renew_deadline_seconds: u64,
}

impl Default for StoresFile {
    fn default() -> Self {
        Self {
            storage_class_name: None,
            nix_size: "50Gi".into(),
            uv_size: "50Gi".into(),
            access_modes: vec!["ReadWriteMany".into()],
            namespace_label: "nixuv.io/stores=enabled".into(),
            gc_schedule: "17 3 * * *".into(),
            gc_max_age: "14d".into(),
            lease_duration_seconds: 15,
            renew_deadline_seconds: 10,
        }
    }
}

impl StorageFile {
    /// The claim of `e`'s store.
    pub fn claim(&self, e: Ecosystem) -> &str {
        match e {
            Ecosystem::System => &self.nix_claim,
            Ecosystem::Python => &self.uv_claim,
        }
    }
}

impl StoresFile {
    /// The size of the claim of `e`'s store.
    pub fn size(&self, e: Ecosystem) -> &str {
        match e {
            Ecosystem::System => &self.nix_size,
            Ecosystem::Python => &self.uv_size,
        }
    }

    /// The namespace label, split.
    pub fn label(&self) -> (&str, &str) {
        self.namespace_label.split_once('=').unwrap_or((&self.namespace_label, ""))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GlobListsFile {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyFile {
    pub system: GlobListsFile,
    pub python: GlobListsFile,
}

/// The `python` section: how Python deps are installed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct PythonFile {
    /// Install from source distributions when a package has no wheel for the platform. Off: a
    /// source build runs the package's own code in the init container, which can write every env
    /// of the store (docs/security.md).
    pub allow_source_builds: bool,
    /// Resolve as of this RFC 3339 date-time (uv's `--exclude-newer`): the same declaration then
    /// resolves to the same versions whenever and wherever it is built.
    pub exclude_newer: Option<String>,
    /// `venv` (an isolated venv, the default) or `overlay` (packages on PYTHONPATH, the image's
    /// own interpreter and packages kept); a Pod may choose with `nixuv.io/python-mode`.
    pub mode: PythonMode,
}

/// An extra environment variable for the init container: a plain value, or a key of a Secret in
/// the Pod's namespace (credentials: the kubelet resolves it, so the value is never in the Pod
/// spec, the env id or nixuv's logs).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvVarFile {
    pub name: String,
    #[serde(default)]
    pub value: String,
    #[serde(default)]
    pub value_from: Option<EnvVarSourceFile>,
}

/// `valueFrom` of an `initEnv` entry: a Secret's key only.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvVarSourceFile {
    pub secret_key_ref: SecretKeyRefFile,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecretKeyRefFile {
    pub name: String,
    pub key: String,
    #[serde(default)]
    pub optional: Option<bool>,
}

impl SecretKeyRefFile {
    /// `secret/key`: how the env id and the init container name the reference.
    pub fn reference(&self) -> String {
        format!("{}/{}", self.name, self.key)
    }
}

/// The variables whose value says where packages come from: part of the env id by value, so they
/// cannot come from a Secret (their credentials can, as `UV_INDEX_<NAME>_USERNAME` / `_PASSWORD`).
const SOURCE_VARS: &[&str] = &["UV_DEFAULT_INDEX", "UV_INDEX_URL", "UV_INDEX", "UV_EXTRA_INDEX_URL", "UV_FIND_LINKS"];

/// Whether `value` holds a URL with user-info (`scheme://user[:password]@host`). Checked by hand
/// because the values are lists and `name=url` forms, not single URLs.
fn has_url_credentials(value: &str) -> bool {
    value.match_indices("://").any(|(i, _)| {
        let rest = &value[i + 3..];
        let authority = rest.split(|c: char| c == '/' || c == ',' || c.is_whitespace()).next().unwrap_or("");
        authority.contains('@')
    })
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ResourcesFile {
    pub requests: BTreeMap<String, String>,
    pub limits: BTreeMap<String, String>,
}

impl Default for ResourcesFile {
    fn default() -> Self {
        let map = |cpu: &str, mem: &str| {
            BTreeMap::from([("cpu".to_string(), cpu.to_string()), ("memory".to_string(), mem.to_string())])
        };
        Self { requests: map("100m", "256Mi"), limits: map("2", "2Gi") }
    }
}

/// One entry of `imagePaths`: the PATH an image sets for itself (Kubernetes does not show nixuv
/// image configs), for containers that do not set PATH in their spec.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ImagePathFile {
    /// A glob over the image's repository (no tag or digest; `docker.io/library/` dropped).
    pub image: String,
    pub path: String,
}

/// The PATHs of common official images, from their Dockerfiles' `ENV PATH`.
pub fn default_image_paths() -> Vec<ImagePathFile> {
    let e = |image: &str, path: &str| ImagePathFile { image: image.into(), path: path.into() };
    vec![
        e("python", "/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        e("node", DEFAULT_PATH),
        e("golang", "/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        e("eclipse-temurin", "/opt/java/openjdk/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        e("rust", "/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        e("continuumio/miniconda3", "/opt/conda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        e("jupyter/*", "/opt/conda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        e("quay.io/jupyter/*", "/opt/conda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        e("quay.io/argoproj/*", DEFAULT_PATH),
        e("debian", DEFAULT_PATH),
        e("ubuntu", DEFAULT_PATH),
        e("alpine", DEFAULT_PATH),
        e("busybox", DEFAULT_PATH),
    ]
}

/// A container image's repository: no tag, no digest, and Docker Hub's implicit
/// `docker.io/library/` dropped, so `python`, `python:3.12` and `docker.io/library/python@sha256:…`
/// are all `python`.
pub fn image_repository(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    let repo = match no_digest.rfind(':') {
        Some(i) if !no_digest[i..].contains('/') => &no_digest[..i],
        _ => no_digest,
    };
    let repo = repo.strip_prefix("docker.io/").or_else(|| repo.strip_prefix("index.docker.io/")).unwrap_or(repo);
    repo.strip_prefix("library/").unwrap_or(repo)
}

/// Whether a flake reference names a fixed commit: a `github:`, `gitlab:` or `sourcehut:`
/// reference whose last path segment, or `rev=` parameter, is a full 40-hex commit; a `git+` URL
/// with `rev=`; a `path:` (a local tree, not moved by anyone upstream). Anything else is a branch
/// or a tag, which moves: the same env id would hold other packages next month.
pub fn pinned_flake_ref(r: &str) -> bool {
    let is_rev = |s: &str| s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let (base, query) = r.split_once('?').unwrap_or((r, ""));
    if query.split('&').any(|kv| kv.strip_prefix("rev=").is_some_and(is_rev)) {
        return true;
    }
    if r.starts_with("path:") || r.starts_with('/') {
        return true;
    }
    ["github:", "gitlab:", "sourcehut:"].iter().any(|p| base.starts_with(p))
        && base.split('/').count() >= 3
        && base.rsplit('/').next().is_some_and(is_rev)
}

impl Config {
    /// What an env plan takes from the config: the few values it needs, not the config itself.
    pub fn plan_inputs(&self) -> PlanInputs<'_> {
        PlanInputs {
            default_python: &self.default_python,
            nixpkgs: &self.file.nixpkgs,
            index_url: &self.index_url,
            tool_env: &self.tool_env,
            secret_env: &self.secret_env,
            allow_source_builds: self.file.python.allow_source_builds,
            exclude_newer: self.file.python.exclude_newer.as_deref(),
            default_python_mode: self.file.python.mode,
        }
    }

    /// A note for the log when Python resolution depends on the build time.
    pub fn exclude_newer_note(&self) -> Option<&'static str> {
        self.file.python.exclude_newer.is_none().then_some(
            "python.excludeNewer is not set: Python deps resolve to whatever the index serves when an env is built (docs/configuration.md)",
        )
    }

    /// A warning for the log and `nixuv preview` when `nixpkgs` is a moving reference.
    pub fn nixpkgs_warning(&self) -> Option<String> {
        (!pinned_flake_ref(&self.file.nixpkgs)).then(|| {
            format!(
                "nixpkgs {:?} is a branch or tag, not a commit: env ids are not reproducible with a moving reference (pin a 40-hex commit, docs/configuration.md)",
                self.file.nixpkgs
            )
        })
    }
}

/// A label key (an optional DNS-subdomain prefix and `/`, then a name of at most 63 characters)
/// and value, as Kubernetes accepts them.
fn valid_label(key: &str, value: &str) -> bool {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.len() <= 63
            && n.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && n.starts_with(|c: char| c.is_ascii_alphanumeric())
            && n.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    let (prefix, name) = key.rsplit_once('/').unwrap_or(("", key));
    (prefix.is_empty() || is_dns1123_subdomain(prefix)) && name_ok(name) && (value.is_empty() || name_ok(value))
}

fn validate_stores(s: &StoresFile) -> Result<(), ConfigError> {
    let invalid = |field: &str, why: String| ConfigError::Invalid { key: format!("stores.{field}"), message: why };
    for (field, size) in [("nixSize", &s.nix_size), ("uvSize", &s.uv_size)] {
        if Quantity::parse(size).is_none() {
            return Err(invalid(field, format!("{size:?} is not a quantity like 50Gi")));
        }
    }
    const MODES: &[&str] = &["ReadWriteMany", "ReadWriteOnce", "ReadOnlyMany", "ReadWriteOncePod"];
    if s.access_modes.is_empty() || s.access_modes.iter().any(|m| !MODES.contains(&m.as_str())) {
        return Err(invalid("accessModes", format!("{:?}: each must be one of {MODES:?}", s.access_modes)));
    }
    match s.namespace_label.split_once('=') {
        Some((k, v)) if valid_label(k, v) => {}
        _ => return Err(invalid("namespaceLabel", format!("{:?} is not a label key=value", s.namespace_label))),
    }
    if s.gc_schedule.split_whitespace().count() != 5 {
        return Err(invalid("gcSchedule", format!("{:?} is not a cron schedule of five fields", s.gc_schedule)));
    }
    if humantime::parse_duration(&s.gc_max_age).is_err() {
        return Err(invalid("gcMaxAge", format!("{:?} is not a duration like 14d", s.gc_max_age)));
    }
    if let Some(c) = s.storage_class_name.as_deref().filter(|c| !is_dns1123_subdomain(c)) {
        return Err(invalid("storageClassName", format!("{c:?} is not a storage class name")));
    }
    if s.lease_duration_seconds == 0
        || s.renew_deadline_seconds == 0
        || s.renew_deadline_seconds >= s.lease_duration_seconds
    {
        return Err(invalid(
            "renewDeadlineSeconds",
            format!(
                "{} must be at least 1 and less than leaseDurationSeconds ({})",
                s.renew_deadline_seconds, s.lease_duration_seconds
            ),
        ));
    }
    Ok(())
}

/// `imagePaths`, compiled.
#[derive(Debug, Clone)]
pub struct ImagePaths {
    globs: GlobSet,
    paths: Vec<String>,
}

impl ImagePaths {
    /// The PATH of the first entry whose glob matches the image's repository.
    pub fn for_image(&self, image: &str) -> Option<&str> {
        self.globs.matches(image_repository(image)).first().map(|i| self.paths[*i].as_str())
    }
}

/// The file as written by the admin. Every key is optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ConfigFile {
    pub init_image: String,
    pub init_image_pull_policy: Option<String>,
    pub init_run_as_user: i64,
    pub nixpkgs: String,
    pub default_python: String,
    pub default_path: String,
    /// The PATH of known images, for containers that do not set PATH themselves.
    pub image_paths: Vec<ImagePathFile>,
    pub storage: StorageFile,
    pub namespace: Option<String>,
    pub exclude_namespaces: Vec<String>,
    pub sidecars: Vec<String>,
    /// Where nixuv-init goes among the init containers (per Pod: `nixuv.io/init-placement`).
    pub init_placement: InitPlacement,
    pub max_deps: usize,
    /// Most containers (app and init) an opted-in Pod may have: the patch grows with them.
    pub max_containers: usize,
    pub policy: PolicyFile,
    pub python: PythonFile,
    pub init_env: Vec<EnvVarFile>,
    pub init_resources: ResourcesFile,
    pub stores: StoresFile,
}

impl Default for ConfigFile {
    fn default() -> Self {
        Self {
            init_image: "ghcr.io/nixuv/nixuv-init:0.1.0".into(),
            init_image_pull_policy: None,
            init_run_as_user: 65532,
            nixpkgs: "github:NixOS/nixpkgs/8fd9daa3db09ced9700431c5b7ad0e8ba199b575".into(),
            default_python: "3.12".into(),
            default_path: DEFAULT_PATH.into(),
            image_paths: default_image_paths(),
            storage: StorageFile::default(),
            namespace: None,
            exclude_namespaces: vec!["kube-system".into(), "kube-public".into()],
            sidecars: vec![
                "istio-proxy".into(),
                "linkerd-proxy".into(),
                "wait".into(),
                "vault-agent".into(),
                "cloud-sql-proxy".into(),
            ],
            init_placement: InitPlacement::AfterSidecars,
            max_deps: 64,
            max_containers: 256,
            policy: PolicyFile::default(),
            python: PythonFile::default(),
            init_env: Vec::new(),
            init_resources: ResourcesFile::default(),
            stores: StoresFile::default(),
        }
    }
}

/// Compiled allow/deny globs of one ecosystem.
#[derive(Debug, Clone)]
pub struct GlobPolicy {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    allow_set: Option<GlobSet>,
    deny_set: GlobSet,
}

/// What the policy says of one package name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Matched this deny glob.
    Denied(String),
    /// The allow list is set and nothing in it matched.
    NotAllowed,
}

impl GlobPolicy {
    /// Whether the admin set an allow or a deny list.
    pub fn is_set(&self) -> bool {
        !self.allow.is_empty() || !self.deny.is_empty()
    }
    fn compile(key: &str, lists: &GlobListsFile) -> Result<Self, ConfigError> {
        let build = |which: &str, globs: &[String]| -> Result<GlobSet, ConfigError> {
            let mut b = GlobSetBuilder::new();
            for (i, g) in globs.iter().enumerate() {
                let glob = Glob::new(g).map_err(|e| invalid(format!("{key}.{which}[{i}]"), format!("{g:?}: {e}")))?;
                b.add(glob);
            }
            b.build().map_err(|e| invalid(format!("{key}.{which}"), e.to_string()))
        };
        Ok(Self {
            allow: lists.allow.clone(),
            deny: lists.deny.clone(),
            allow_set: if lists.allow.is_empty() { None } else { Some(build("allow", &lists.allow)?) },
            deny_set: build("deny", &lists.deny)?,
        })
    }

    pub fn check(&self, name: &str) -> Verdict {
        if let Some(i) = self.deny_set.matches(name).first() {
            return Verdict::Denied(self.deny[*i].clone());
        }
        match &self.allow_set {
            Some(set) if !set.is_match(name) => Verdict::NotAllowed,
            _ => Verdict::Allowed,
        }
    }
}

/// The validated configuration: plain values, parsed once. It holds no state and is never
/// changed after validation; what the core memoises under it lives with the core's owner
/// ([`crate::inject::Injector`]), swapped whole on reload.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: ConfigFile,
    /// `excludeNamespaces` plus the namespace nixuv runs in.
    pub excluded_namespaces: Vec<String>,
    /// The namespace nixuv runs in (`namespace`, else the Pod's, else `nixuv-system`).
    pub own_namespace: String,
    pub system_policy: GlobPolicy,
    pub python_policy: GlobPolicy,
    /// `defaultPython`, parsed.
    pub default_python: PythonVersion,
    /// `initImagePullPolicy`, parsed.
    pub pull_policy: Option<PullPolicy>,
    /// `imagePaths`, compiled.
    pub image_paths: ImagePaths,
    /// `initResources`, parsed: (resource, quantity) for requests and limits.
    pub init_requests: Vec<(String, Quantity)>,
    pub init_limits: Vec<(String, Quantity)>,
    /// The Python package index the init container will use (from `initEnv`), part of the env id.
    pub index_url: String,
    /// The `initEnv` variables that reach nix or uv, sorted: part of every env id.
    pub tool_env: Vec<(String, String)>,
    /// The `initEnv` tool variables from a Secret, as (name, `secret/key`), sorted: the env id
    /// binds the reference, never the value.
    pub secret_env: Vec<(String, String)>,
}

/// Settings given outside the config file that take precedence over it: the init image from
/// `NIXUV_INIT_IMAGE` (the deployment sets it from a ConfigMap key that kustomize's `images:`
/// updates together with the webhook's own image), and the namespace nixuv runs in (from
/// `POD_NAMESPACE`, read by the binary, not here).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub init_image: Option<String>,
    pub own_namespace: Option<String>,
}

impl Config {
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        Self::from_yaml_with(text, &Overrides::default())
    }

    pub fn from_yaml_with(text: &str, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut file: ConfigFile = if text.trim().is_empty() {
            ConfigFile::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?
        };
        if let Some(image) = overrides.init_image.as_deref().filter(|i| !i.trim().is_empty()) {
            file.init_image = image.to_string();
        }
        Self::validate_in(file, overrides.own_namespace.as_deref())
    }

    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with(path, &Overrides::default())
    }

    pub fn load_with(path: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let text = match path {
            None => String::new(),
            Some(p) => std::fs::read_to_string(p)
                .map_err(|source| ConfigError::Read { path: p.display().to_string(), source })?,
        };
        Self::from_yaml_with(&text, overrides)
    }

    pub fn validate(file: ConfigFile) -> Result<Self, ConfigError> {
        Self::validate_in(file, None)
    }

    /// Validates `file` for a webhook running in `own_namespace` (always excluded; the config's
    /// `namespace`, else this, else `nixuv-system`).
    pub fn validate_in(file: ConfigFile, own_namespace: Option<&str>) -> Result<Self, ConfigError> {
        if file.init_image.trim().is_empty() {
            return Err(invalid("initImage", "must not be empty"));
        }
        let pull_policy = match &file.init_image_pull_policy {
            None => None,
            Some(p) => Some(PullPolicy::parse(p).ok_or_else(|| {
                invalid("initImagePullPolicy", format!("{p:?} is not one of Always, IfNotPresent, Never"))
            })?),
        };
        if file.init_run_as_user <= 0 {
            return Err(invalid("initRunAsUser", "must be a non-root uid (> 0) to pass PodSecurity restricted"));
        }
        if file.nixpkgs.trim().is_empty() || file.nixpkgs.chars().any(|c| c.is_whitespace()) {
            return Err(invalid("nixpkgs", format!("{:?} is not a flake reference", file.nixpkgs)));
        }
        let default_python = PythonVersion::parse(&file.default_python).ok_or_else(|| {
            invalid("defaultPython", format!("{:?} is not a Python version like 3.12", file.default_python))
        })?;
        if !valid_path_list(&file.default_path) {
            return Err(invalid(
                "defaultPath",
                format!("{:?} must be a colon-separated list of absolute directories", file.default_path),
            ));
        }
        for (key, claim) in [("storage.nixClaim", &file.storage.nix_claim), ("storage.uvClaim", &file.storage.uv_claim)]
        {
            if !is_dns1123_subdomain(claim) {
                return Err(invalid(key, format!("{claim:?} is not a valid PersistentVolumeClaim name")));
            }
        }
        for (i, ns) in file.exclude_namespaces.iter().enumerate() {
            if !is_dns1123_label(ns) {
                return Err(invalid(format!("excludeNamespaces[{i}]"), format!("{ns:?} is not a namespace name")));
            }
        }
        if let Some(ns) = &file.namespace {
            if !is_dns1123_label(ns) {
                return Err(invalid("namespace", format!("{ns:?} is not a namespace name")));
            }
        }
        if file.max_deps == 0 {
            return Err(invalid("maxDeps", "must be at least 1"));
        }
        if file.max_containers == 0 {
            return Err(invalid("maxContainers", "must be at least 1"));
        }
        for (i, e) in file.init_env.iter().enumerate() {
            if e.name.is_empty()
                || !e.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                || e.name.starts_with(|c: char| c.is_ascii_digit())
            {
                return Err(invalid(
                    format!("initEnv[{i}].name"),
                    format!("{:?} is not an environment variable name", e.name),
                ));
            }
            if file.init_env[..i].iter().any(|p| p.name == e.name) {
                return Err(invalid(format!("initEnv[{i}].name"), format!("{:?} is set twice", e.name)));
            }
            if e.name.starts_with(RESERVED_INIT_ENV_PREFIX) || FIXED_TOOL_ENV.contains(&e.name.as_str()) {
                return Err(invalid(format!("initEnv[{i}].name"), format!("{:?} is set by nixuv itself", e.name)));
            }
            if has_url_credentials(&e.value) {
                return Err(invalid(
                    format!("initEnv[{i}].value"),
                    format!("{}: a URL with credentials would be written into every Pod spec; give the URL without them and the credentials from a Secret (valueFrom.secretKeyRef), e.g. UV_INDEX_<NAME>_USERNAME and UV_INDEX_<NAME>_PASSWORD for an index named <name>=URL", e.name),
                ));
            }
            if let Some(from) = &e.value_from {
                let r = &from.secret_key_ref;
                if !e.value.is_empty() {
                    return Err(invalid(
                        format!("initEnv[{i}]"),
                        format!("{}: set value or valueFrom, not both", e.name),
                    ));
                }
                if SOURCE_VARS.contains(&e.name.as_str()) {
                    return Err(invalid(
                        format!("initEnv[{i}].valueFrom"),
                        format!("{}: where packages come from is part of the env id, so it is given as value; only credentials come from a Secret (UV_INDEX_<NAME>_USERNAME / _PASSWORD)", e.name),
                    ));
                }
                if !is_dns1123_subdomain(&r.name) {
                    return Err(invalid(
                        format!("initEnv[{i}].valueFrom.secretKeyRef.name"),
                        format!("{:?} is not a Secret name", r.name),
                    ));
                }
                if r.key.is_empty()
                    || r.key.len() > 253
                    || !r.key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                {
                    return Err(invalid(
                        format!("initEnv[{i}].valueFrom.secretKeyRef.key"),
                        format!("{:?} is not a Secret key", r.key),
                    ));
                }
            }
        }
        let quantities =
            |section: &str, map: &BTreeMap<String, String>| -> Result<Vec<(String, Quantity)>, ConfigError> {
                for res in ["cpu", "memory"] {
                    if !map.contains_key(res) {
                        return Err(invalid(
                            format!("initResources.{section}.{res}"),
                            "must be set (ResourceQuota rejects containers without requests and limits)",
                        ));
                    }
                }
                map.iter()
                    .map(|(res, v)| {
                        let q = Quantity::parse(v).ok_or_else(|| {
                            invalid(format!("initResources.{section}.{res}"), format!("{v:?} is not a quantity"))
                        })?;
                        Ok((res.clone(), q))
                    })
                    .collect()
            };
        let mut globs = GlobSetBuilder::new();
        for (i, e) in file.image_paths.iter().enumerate() {
            let glob = Glob::new(&e.image)
                .map_err(|err| invalid(format!("imagePaths[{i}].image"), format!("{:?}: {err}", e.image)))?;
            globs.add(glob);
            if !valid_path_list(&e.path) {
                return Err(invalid(
                    format!("imagePaths[{i}].path"),
                    format!("{:?} must be a colon-separated list of absolute directories", e.path),
                ));
            }
        }
        let image_paths = ImagePaths {
            globs: globs.build().map_err(|e| invalid("imagePaths", e.to_string()))?,
            paths: file.image_paths.iter().map(|e| e.path.clone()).collect(),
        };
        if let Some(t) = file.python.exclude_newer.as_deref().filter(|t| !crate::values::valid_rfc3339(t)) {
            return Err(invalid(
                "python.excludeNewer",
                format!("{t:?} is not an RFC 3339 date-time like 2025-06-01T00:00:00Z"),
            ));
        }
        validate_stores(&file.stores)?;
        let init_requests = quantities("requests", &file.init_resources.requests)?;
        let init_limits = quantities("limits", &file.init_resources.limits)?;
        let system_policy = GlobPolicy::compile("policy.system", &file.policy.system)?;
        let python_policy = GlobPolicy::compile("policy.python", &file.policy.python)?;

        let mut excluded_namespaces = file.exclude_namespaces.clone();
        let own =
            file.namespace.clone().or_else(|| own_namespace.map(String::from)).unwrap_or_else(|| "nixuv-system".into());
        if !excluded_namespaces.contains(&own) {
            excluded_namespaces.push(own.clone());
        }
        let mut tool_env: Vec<(String, String)> = file
            .init_env
            .iter()
            .filter(|e| tool_scope(&e.name).is_some() && e.value_from.is_none())
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect();
        tool_env.sort();
        let mut secret_env: Vec<(String, String)> = file
            .init_env
            .iter()
            .filter(|e| tool_scope(&e.name).is_some())
            .filter_map(|e| Some((e.name.clone(), e.value_from.as_ref()?.secret_key_ref.reference())))
            .collect();
        secret_env.sort();
        let index_url = effective_index(tool_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if let Some(i) = ["UV_DEFAULT_INDEX", "UV_INDEX_URL"]
            .iter()
            .find_map(|k| file.init_env.iter().position(|e| e.name == *k))
            .filter(|_| !valid_index_url(&index_url))
        {
            return Err(invalid(format!("initEnv[{i}].value"), format!("{index_url:?} is not an http(s) or file URL")));
        }
        Ok(Self {
            file,
            excluded_namespaces,
            own_namespace: own,
            system_policy,
            python_policy,
            default_python,
            pull_policy,
            image_paths,
            init_requests,
            init_limits,
            index_url,
            tool_env,
            secret_env,
        })
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::validate(ConfigFile::default()).expect("the built-in defaults are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_flake_refs_are_told_apart() {
        for pinned in [
            "github:NixOS/nixpkgs/8fd9daa3db09ced9700431c5b7ad0e8ba199b575",
            "github:NixOS/nixpkgs?rev=8fd9daa3db09ced9700431c5b7ad0e8ba199b575",
            "git+https://example.com/nixpkgs?ref=main&rev=8fd9daa3db09ced9700431c5b7ad0e8ba199b575",
            "path:/srv/nixpkgs",
        ] {
            assert!(pinned_flake_ref(pinned), "{pinned}");
        }
        for moving in
            ["github:NixOS/nixpkgs/nixos-25.05", "github:NixOS/nixpkgs", "github:NixOS/nixpkgs/ac62194", "nixpkgs"]
        {
            assert!(!pinned_flake_ref(moving), "{moving}");
        }
        assert!(Config::default().nixpkgs_warning().is_none(), "the default is pinned");
        let c = Config::from_yaml("nixpkgs: github:NixOS/nixpkgs/nixos-25.05\n").unwrap();
        assert!(c.nixpkgs_warning().unwrap().contains("not reproducible"));
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::from_yaml("").unwrap();
        assert_eq!(c.file.storage.mode, StorageMode::Pvc);
        assert_eq!(c.file.storage.nix_claim, "nixuv-nix-store");
        assert!(c.excluded_namespaces.contains(&"kube-system".to_string()));
        assert!(c.excluded_namespaces.contains(&"kube-public".to_string()));
        assert_eq!(c.index_url, "https://pypi.org/simple");
    }

    #[test]
    fn own_namespace_is_always_excluded() {
        let c = Config::from_yaml("namespace: platform\nexcludeNamespaces: [batch]\n").unwrap();
        assert_eq!(c.excluded_namespaces, vec!["batch".to_string(), "platform".to_string()]);
    }

    #[test]
    fn every_documented_key_parses() {
        let yaml = r#"
initImage: registry.example/nixuv-init:1
initImagePullPolicy: IfNotPresent
initRunAsUser: 1000
nixpkgs: github:NixOS/nixpkgs/nixos-24.11
defaultPython: "3.11"
defaultPath: /usr/bin:/bin
storage: {mode: emptyDir, nixClaim: a, uvClaim: b}
namespace: nixuv
excludeNamespaces: [kube-system]
sidecars: [istio-proxy]
maxDeps: 3
policy:
  system: {allow: ["ffmpeg*"], deny: ["gcc"]}
  python: {allow: [], deny: ["evil-*"]}
initEnv: [{name: UV_DEFAULT_INDEX, value: "https://mirror.example/simple"}]
initResources: {requests: {cpu: 50m, memory: 64Mi}, limits: {cpu: "1", memory: 1Gi}}
"#;
        let c = Config::from_yaml(yaml).unwrap();
        assert_eq!(c.file.storage.mode, StorageMode::EmptyDir);
        assert_eq!(c.index_url, "https://mirror.example/simple");
        assert_eq!(c.system_policy.check("gcc"), Verdict::Denied("gcc".into()));
        assert_eq!(c.system_policy.check("ffmpeg-headless"), Verdict::Allowed);
        assert_eq!(c.system_policy.check("curl"), Verdict::NotAllowed);
        assert_eq!(c.python_policy.check("evil-pkg"), Verdict::Denied("evil-*".into()));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("unknownKey: 1", "unknownKey"),
            ("storage: {mode: nfs}", "nfs"),
            ("storage: {nixClaimm: x}", "nixClaimm"),
            ("storage: {nixClaim: Bad_Name}", "storage.nixClaim"),
            ("maxDeps: 0", "maxDeps"),
            ("maxDeps: lots", "maxDeps"),
            ("defaultPython: two", "defaultPython"),
            ("defaultPath: usr/bin", "defaultPath"),
            ("initRunAsUser: 0", "initRunAsUser"),
            ("policy: {system: {deny: ['a[']}}", "policy.system.deny[0]"),
            ("initEnv: [{name: NIXUV_ENV, value: x}]", "initEnv[0].name"),
            ("initEnv: [{name: 'A B', value: x}]", "initEnv[0].name"),
            ("initResources: {requests: {cpu: 1}, limits: {cpu: 1, memory: 1Gi}}", "initResources.requests.memory"),
            (
                "initResources: {requests: {cpu: lots, memory: 1Gi}, limits: {cpu: 1, memory: 1Gi}}",
                "initResources.requests.cpu",
            ),
            ("excludeNamespaces: [Kube_System]", "excludeNamespaces[0]"),
            ("initImagePullPolicy: Sometimes", "initImagePullPolicy"),
        ];
        for (yaml, key) in cases {
            let err = Config::from_yaml(yaml).expect_err(yaml).to_string();
            assert!(err.contains(key), "{yaml:?}: error {err:?} does not name {key:?}");
        }
    }

    #[test]
    fn quantities() {
        for ok in ["100m", "2", "1.5Gi", "512Mi", "0.5"] {
            assert!(Quantity::parse(ok).is_some(), "{ok}");
        }
        for bad in ["", "m", "lots", "1 Gi", "1GB"] {
            assert!(Quantity::parse(bad).is_none(), "{bad}");
        }
    }
}
