//! The configuration file as written: serde types, every key optional (`default`), unknown keys
//! rejected (`deny_unknown_fields`). [`super::Config`] is what they validate into.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::values::{InitPlacement, PythonMode};

use super::DEFAULT_PATH;
use crate::ecosystem::Ecosystem;

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
    /// The gc CronJob's `--uv-cache-max-size`: the uv cache is kept under it.
    pub uv_cache_max_size: String,
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
            uv_cache_max_size: "20Gi".into(),
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

/// The `imageStore` section: envs as OCI images in a registry, built by nixuv's builder and
/// mounted read-only through image volumes (docs/install.md, "Image store"). Unset: the claims or
/// emptyDirs of `storage` are the only store.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ImageStoreFile {
    /// `<registry>/<path>`, no tag or digest: each env is pushed there, tagged with its id.
    pub repository: String,
    /// A `kubernetes.io/dockerconfigjson` Secret that Pods need to pull from the repository: added
    /// to an opted-in Pod's `imagePullSecrets` (it must exist in the Pod's namespace).
    #[serde(default)]
    pub pull_secret: Option<String>,
    /// The registry speaks plain HTTP (a registry inside the cluster, a test).
    #[serde(default)]
    pub insecure: bool,
    /// A `kubernetes.io/dockerconfigjson` Secret in nixuv's namespace with the credentials the
    /// builder pushes with (unset: anonymous pushes).
    #[serde(default)]
    pub push_secret: Option<String>,
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

/// `caBundle`: a key of a ConfigMap holding PEM certificates. The ConfigMap must exist in every
/// namespace whose Pods are injected (trust-manager or the admin distributes it), and in nixuv's
/// own for the image builder.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CaBundleFile {
    pub config_map: String,
    pub key: String,
}

impl CaBundleFile {
    /// `configmap/key`: how the env id and the init container name the bundle.
    pub fn reference(&self) -> String {
        format!("{}/{}", self.config_map, self.key)
    }
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
    pub image_store: Option<ImageStoreFile>,
    /// Extra certificate authorities uv and nix trust (a private mirror, a TLS-intercepting proxy).
    pub ca_bundle: Option<CaBundleFile>,
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
            image_store: None,
            ca_bundle: None,
        }
    }
}
