//! The YAML configuration file: every key optional, unknown keys rejected, validated once into
//! [`Config`], which the hot path reads without further parsing. The file's types are in [`file`],
//! their validation in [`validate`], the policy globs in [`globs`].

mod file;
mod globs;
mod validate;

pub use file::*;
pub use globs::{GlobMatch, GlobPolicy};
pub use validate::{image_repository, pinned_flake_ref};

use globset::GlobSet;

use crate::plan::PlanInputs;
pub use crate::values::{is_dns1123_label, is_dns1123_subdomain, valid_path_list};
use crate::values::{PullPolicy, PythonVersion, Quantity};

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
            ca_bundle: self.ca_bundle.as_deref(),
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
    /// `caBundle` as `configmap/key`: part of every env id when set.
    pub ca_bundle: Option<String>,
    /// `imageStore.repository`, parsed: set exactly when the image store is on.
    pub image_repository: Option<crate::imagestore::Repository>,
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
        assert_eq!(c.system_policy.check("gcc"), GlobMatch::Denied("gcc".into()));
        assert_eq!(c.system_policy.check("ffmpeg-headless"), GlobMatch::Allowed);
        assert_eq!(c.system_policy.check("curl"), GlobMatch::NotAllowed);
        assert_eq!(c.python_policy.check("evil-pkg"), GlobMatch::Denied("evil-*".into()));
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
