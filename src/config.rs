//! The YAML configuration file: every key optional, unknown keys rejected, validated once into
//! [`Config`], which the hot path reads without further parsing.

use std::collections::BTreeMap;
use std::path::Path;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;

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

/// An extra environment variable for the init container (a plain value only: the init container
/// must be self-contained and valueFrom would need RBAC on the Pod's namespace).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EnvVarFile {
    pub name: String,
    #[serde(default)]
    pub value: String,
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
    pub storage: StorageFile,
    pub namespace: Option<String>,
    pub exclude_namespaces: Vec<String>,
    pub sidecars: Vec<String>,
    pub max_deps: usize,
    /// Most containers (app and init) an opted-in Pod may have: the patch grows with them.
    pub max_containers: usize,
    pub policy: PolicyFile,
    pub init_env: Vec<EnvVarFile>,
    pub init_resources: ResourcesFile,
}

impl Default for ConfigFile {
    fn default() -> Self {
        Self {
            init_image: "ghcr.io/nixuv/nixuv-init:0.1.0".into(),
            init_image_pull_policy: None,
            init_run_as_user: 65532,
            nixpkgs: "github:NixOS/nixpkgs/nixos-25.05".into(),
            default_python: "3.12".into(),
            default_path: DEFAULT_PATH.into(),
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
            max_deps: 64,
            max_containers: 256,
            policy: PolicyFile::default(),
            init_env: Vec::new(),
            init_resources: ResourcesFile::default(),
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

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: ConfigFile,
    /// `excludeNamespaces` plus the namespace nixuv runs in.
    pub excluded_namespaces: Vec<String>,
    pub system_policy: GlobPolicy,
    pub python_policy: GlobPolicy,
    /// The Python package index the init container will use (from `initEnv`), part of the env id.
    pub index_url: String,
    /// The `initEnv` variables that reach nix or uv, sorted: part of every env id.
    pub tool_env: Vec<(String, String)>,
    /// Unique per validated config in this process: caches of decisions key on it, so a reloaded
    /// config never serves a decision made under the old one.
    pub generation: u64,
    /// Per-declaration results under this config (see [`crate::inject::EnvOutcome`]). A `Config`
    /// is not changed after validation (a reload builds a new one), which is what makes this sound.
    pub envs: EnvMemo,
}

/// A bounded memo of [`crate::inject::EnvOutcome`] by declaration, shared by clones of one config.
#[derive(Clone)]
pub struct EnvMemo(
    std::sync::Arc<quick_cache::sync::Cache<Vec<u8>, std::sync::Arc<crate::inject::EnvOutcome>, MemoBytes>>,
);

/// An entry's weight: its bytes (key, plan, init container, message), not one per entry, so that
/// a stream of huge distinct declarations cannot hold more than [`EnvMemo::BYTES`].
#[derive(Clone)]
pub struct MemoBytes;

impl quick_cache::Weighter<Vec<u8>, std::sync::Arc<crate::inject::EnvOutcome>> for MemoBytes {
    fn weight(&self, key: &Vec<u8>, v: &std::sync::Arc<crate::inject::EnvOutcome>) -> u64 {
        (key.len() + v.heap_bytes() + 128) as u64
    }
}

impl EnvMemo {
    /// Bytes of memoised declarations kept per config (a typical one is a few KB: the plan and
    /// the init container).
    const BYTES: u64 = 8 << 20;

    fn new() -> Self {
        EnvMemo(std::sync::Arc::new(quick_cache::sync::Cache::with_weighter(1024, Self::BYTES, MemoBytes)))
    }

    /// Bytes held, as weighed.
    pub fn weight(&self) -> u64 {
        self.0.weight()
    }

    pub fn get_or_insert_with(
        &self,
        key: &[u8],
        make: impl FnOnce() -> std::sync::Arc<crate::inject::EnvOutcome>,
    ) -> std::sync::Arc<crate::inject::EnvOutcome> {
        // quick_cache's own get-or-insert: concurrent first Pods of a declaration compute it once.
        let made: Result<_, std::convert::Infallible> = self.0.get_or_insert_with(key, || Ok(make()));
        made.unwrap_or_else(|never| match never {})
    }
}

impl std::fmt::Debug for EnvMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EnvMemo({} entries)", self.0.len())
    }
}

/// The environment variables that nixuv itself sets on the init container.
pub const RESERVED_INIT_ENV_PREFIX: &str = "NIXUV_";

/// Settings given outside the config file that take precedence over it: the init image from
/// `NIXUV_INIT_IMAGE` (the deployment sets it from a ConfigMap key that kustomize's `images:`
/// updates together with the webhook's own image).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub init_image: Option<String>,
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
        Self::validate(file)
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
        if file.init_image.trim().is_empty() {
            return Err(invalid("initImage", "must not be empty"));
        }
        if let Some(p) = &file.init_image_pull_policy {
            if !matches!(p.as_str(), "Always" | "IfNotPresent" | "Never") {
                return Err(invalid("initImagePullPolicy", format!("{p:?} is not one of Always, IfNotPresent, Never")));
            }
        }
        if file.init_run_as_user <= 0 {
            return Err(invalid("initRunAsUser", "must be a non-root uid (> 0) to pass PodSecurity restricted"));
        }
        if file.nixpkgs.trim().is_empty() || file.nixpkgs.chars().any(|c| c.is_whitespace()) {
            return Err(invalid("nixpkgs", format!("{:?} is not a flake reference", file.nixpkgs)));
        }
        if !crate::inject::deps::valid_python_version(&file.default_python) {
            return Err(invalid(
                "defaultPython",
                format!("{:?} is not a Python version like 3.12", file.default_python),
            ));
        }
        if file.default_path.is_empty() || file.default_path.split(':').any(|p| !p.starts_with('/')) {
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
            if e.name.starts_with(RESERVED_INIT_ENV_PREFIX) || crate::envspec::FIXED_TOOL_ENV.contains(&e.name.as_str())
            {
                return Err(invalid(format!("initEnv[{i}].name"), format!("{:?} is set by nixuv itself", e.name)));
            }
        }
        for (section, map) in [("requests", &file.init_resources.requests), ("limits", &file.init_resources.limits)] {
            for res in ["cpu", "memory"] {
                match map.get(res) {
                    Some(v) if is_quantity(v) => {}
                    Some(v) => {
                        return Err(invalid(
                            format!("initResources.{section}.{res}"),
                            format!("{v:?} is not a quantity"),
                        ))
                    }
                    None => {
                        return Err(invalid(
                            format!("initResources.{section}.{res}"),
                            "must be set (ResourceQuota rejects containers without requests and limits)",
                        ))
                    }
                }
            }
        }
        let system_policy = GlobPolicy::compile("policy.system", &file.policy.system)?;
        let python_policy = GlobPolicy::compile("policy.python", &file.policy.python)?;

        let mut excluded_namespaces = file.exclude_namespaces.clone();
        let own = file
            .namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "nixuv-system".into());
        if !excluded_namespaces.contains(&own) {
            excluded_namespaces.push(own);
        }
        let mut tool_env: Vec<(String, String)> = file
            .init_env
            .iter()
            .filter(|e| crate::inject::plan::tool_scope(&e.name).is_some())
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect();
        tool_env.sort();
        let index_url = crate::inject::plan::effective_index(tool_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if let Some(i) = ["UV_DEFAULT_INDEX", "UV_INDEX_URL"]
            .iter()
            .find_map(|k| file.init_env.iter().position(|e| e.name == *k))
            .filter(|_| !crate::inject::plan::valid_index_url(&index_url))
        {
            return Err(invalid(format!("initEnv[{i}].value"), format!("{index_url:?} is not an http(s) or file URL")));
        }
        static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let generation = GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Self {
            file,
            excluded_namespaces,
            system_policy,
            python_policy,
            index_url,
            tool_env,
            generation,
            envs: EnvMemo::new(),
        })
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::validate(ConfigFile::default()).expect("the built-in defaults are valid")
    }
}

pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// A Kubernetes resource quantity such as `100m`, `2`, `1.5Gi`, `512Mi`, `1e3`.
fn is_quantity(s: &str) -> bool {
    let digits_end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, suffix) = s.split_at(digits_end);
    !num.is_empty()
        && num.parse::<f64>().is_ok()
        && matches!(suffix, "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei")
}

#[cfg(test)]
mod tests {
    use super::*;

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
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "m", "lots", "1 Gi", "1GB"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }
}
