//! Envs as OCI images (config `imageStore`): the `NixuvEnv` custom resource that names an env and
//! carries its build's outcome, the repository envs are pushed to, and how a Pod mounts one.
//!
//! An env image holds two trees: `nix/` (the env's nix store closure and profile, mounted at
//! `/nix`) and `uv/` (its interpreter, venv and completion marker, mounted at `/nixuv/uv`), each
//! through a `subPath` of one `image` volume. Built by `nixuv publish` ([`crate::publish`]) in a
//! Job the leader runs ([`crate::imagebuild`]); never written by a tenant.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::envid::EnvId;
use crate::plan::EnvPlan;
use crate::values::PythonMode;

/// The image volume of a Pod whose env is Ready.
pub const VOL_ENV: &str = "nixuv-env";
/// The image's directory mounted at `/nix`.
pub const SUBPATH_NIX: &str = "nix";
/// The image's directory mounted at `/nixuv/uv`.
pub const SUBPATH_UV: &str = "uv";
/// Manifest annotations of an env image.
pub const ANN_IMAGE_ENV: &str = "io.nixuv.env";
pub const ANN_IMAGE_SBOM: &str = "io.nixuv.sbom";
/// Where the SBOM lies in the image (beside the marker, under the `uv/` tree).
pub const SBOM_FILE: &str = ".nixuv/envs/sbom.cdx.json";
/// The label the builder's Jobs carry, with the env id as value.
pub const LABEL_BUILD: &str = "nixuv.io/build";

/// A repository envs are pushed to: `<registry>/<path>`, no tag, no digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository {
    pub registry: String,
    pub path: String,
}

impl Repository {
    /// Parses `<registry>/<path>` (the registry named explicitly: a host with a dot or a port, or
    /// `localhost`), refusing a tag or digest.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (registry, path) =
            text.split_once('/').ok_or("must be <registry>/<path>, e.g. registry.example/nixuv/envs")?;
        if !(registry.contains('.') || registry.contains(':') || registry == "localhost") {
            return Err(format!("{registry:?} is not a registry host (a name with a dot or a port, or localhost)"));
        }
        if path.contains('@') || path.rsplit('/').next().is_some_and(|last| last.contains(':')) {
            return Err("no tag or digest: nixuv tags each env with its id".into());
        }
        let reference: oci_client::Reference =
            format!("{text}:x").parse().map_err(|e: oci_client::ParseError| format!("not a repository name ({e})"))?;
        if reference.registry() != registry || reference.repository() != path {
            return Err("not a repository name (lowercase letters, digits, separators)".into());
        }
        Ok(Repository { registry: registry.to_string(), path: path.to_string() })
    }

    /// The reference of env `id`'s tag.
    pub fn tagged(&self, id: &EnvId) -> String {
        format!("{}/{}:{}", self.registry, self.path, id.as_str())
    }

    /// The reference of an image by digest: what Pods mount.
    pub fn by_digest(&self, digest: &str) -> String {
        format!("{}/{}@{digest}", self.registry, self.path)
    }
}

/// The phase of an env's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    Pending,
    Building,
    Ready,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Building => "Building",
            Phase::Ready => "Ready",
            Phase::Failed => "Failed",
        }
    }
}

#[allow(clippy::duplicated_attributes)] // one `type_` per printer column, as kube-derive takes them
/// An env of the cluster, as an OCI image: the declaration it is built from (the admin's config
/// supplies the rest, as for the init container; the name is the env id it must give).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[kube(
    group = "nixuv.io",
    version = "v1alpha1",
    kind = "NixuvEnv",
    plural = "nixuvenvs",
    shortname = "nxe",
    status = "NixuvEnvStatus",
    doc = "An env nixuv builds into an OCI image: its name is the env id.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Size", type_ = "string", json_path = ".status.size"),
    printcolumn(name = "System", type_ = "string", json_path = ".spec.system", priority = "1"),
    printcolumn(name = "Python", type_ = "string", json_path = ".spec.python", priority = "1"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct NixuvEnvSpec {
    /// nixpkgs attribute paths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub system: Vec<String>,
    /// PEP 508 requirements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub python: Vec<String>,
    /// The Python version (with Python deps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python_version: Option<String>,
    /// `overlay` for a PYTHONPATH directory; absent: a venv.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python_mode: Option<String>,
    /// Resolve as of this RFC 3339 date-time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_newer: Option<String>,
}

/// What the builder made of a `NixuvEnv`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct NixuvEnvStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The image's manifest digest (`sha256:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// `<repository>@<digest>`: what Pods mount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The image's compressed size, human-readable (e.g. `41.2 MiB`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// The versions installed (the completion marker's lock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form")]
    pub lock: Option<serde_json::Value>,
    /// RFC 3339, when the image was pushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub built_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_seconds: Option<f64>,
    /// Why the last build failed (uv's or nix's message), or what the builder waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// RFC 3339, when `nixuv gc --registry` last saw a Pod that had not finished use the env.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<String>,
    /// The builder Job of the current or last build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

fn free_form(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

impl NixuvEnvSpec {
    /// The declaration of `plan` (what a `NixuvEnv` carries; the config supplies the rest).
    pub fn of_plan(plan: &EnvPlan) -> Self {
        let python = !plan.python.is_empty();
        NixuvEnvSpec {
            system: plan.system.clone(),
            python: plan.python.clone(),
            python_version: python.then(|| plan.python_version.clone()),
            python_mode: (python && plan.python_mode == PythonMode::Overlay).then(|| "overlay".to_string()),
            exclude_newer: if python { plan.exclude_newer.clone() } else { None },
        }
    }
}

impl NixuvEnv {
    /// The object that requests env `id` with `spec`: named by the id, labelled nixuv's, with no
    /// status (Pending for the builder).
    pub fn requested(id: &EnvId, spec: NixuvEnvSpec) -> Self {
        let mut env = NixuvEnv::new(id.as_str(), spec);
        env.metadata.labels = Some(BTreeMap::from([("app.kubernetes.io/managed-by".to_string(), "nixuv".to_string())]));
        env
    }

    pub fn phase(&self) -> Phase {
        self.status.as_ref().and_then(|s| s.phase).unwrap_or(Phase::Pending)
    }

    /// The digest Pods mount, when Ready.
    pub fn ready_digest(&self) -> Option<&str> {
        let s = self.status.as_ref()?;
        (s.phase == Some(Phase::Ready)).then_some(s.digest.as_deref()?)
    }
}

/// Human-readable bytes (binary units), for `status.size` and `envs list`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn repositories_parse_or_say_why() {
        let r = Repository::parse("registry.example:5000/nixuv/envs").unwrap();
        assert_eq!(r.registry, "registry.example:5000");
        assert_eq!(r.by_digest("sha256:ab"), "registry.example:5000/nixuv/envs@sha256:ab");
        assert!(Repository::parse("localhost/envs").is_ok());
        for (bad, why) in [
            ("nixuv/envs", "registry host"),
            ("envs", "<registry>/<path>"),
            ("r.example/envs:1.0", "no tag"),
            ("r.example/envs@sha256:00", "no tag"),
            ("r.example/Envs", "repository"),
        ] {
            let e = Repository::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn the_crd_manifest_in_deploy_is_the_types_own() {
        let crd = NixuvEnv::crd();
        let want = serde_yaml_ng::to_string(&crd).unwrap();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/components/image-store/crd-nixuvenv.yaml");
        let header =
            "# Generated from src/imagestore.rs (NixuvEnv): `NIXUV_BLESS=1 cargo test the_crd_manifest` rewrites it.\n";
        if std::env::var_os("NIXUV_BLESS").is_some() {
            std::fs::write(path, format!("{header}{want}")).unwrap();
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert_eq!(have.strip_prefix(header).unwrap_or(&have), want, "{path} is stale: NIXUV_BLESS=1 cargo test");
        assert_eq!(crd.spec.scope, "Cluster");
        let cols = crd.spec.versions[0].additional_printer_columns.as_ref().unwrap();
        assert!(["Phase", "Size", "Age"].iter().all(|c| cols.iter().any(|x| x.name == *c)));
    }

    /// The builder rebuilds each env's plan from its `NixuvEnv` and the config: the same id as
    /// the webhook's, and a declaration a Pod could not make is refused just the same.
    #[test]
    fn a_spec_gives_back_the_plan_it_was_made_from() {
        use crate::config::Config;
        use crate::inject::Injector;
        let cfg = Config::from_yaml("python: {excludeNewer: '2025-01-01T00:00:00Z'}\npolicy: {system: {deny: [curl]}}")
            .unwrap();
        let inj = Injector::new(cfg.clone());
        for ann in [
            serde_json::json!({"nixuv.io/system-deps": "jq ffmpeg-headless", "nixuv.io/python-deps": "pandas>=2,<3\nrich[jupyter]"}),
            serde_json::json!({"nixuv.io/python-deps": "rich", "nixuv.io/python": "3.11", "nixuv.io/python-mode": "overlay"}),
            serde_json::json!({"nixuv.io/python-deps": "rich", "nixuv.io/exclude-newer": "2024-06-01T00:00:00Z"}),
            serde_json::json!({"nixuv.io/system-deps": "jq"}),
        ] {
            let pod = serde_json::json!({"metadata": {"labels": {"nixuv.io/inject": "true"}, "annotations": ann},
                                         "spec": {"containers": [{"name": "a"}]}});
            let d = inj.decide_pod(&pod.to_string(), Some("t"));
            let spec = d.env.as_ref().unwrap().request.clone();
            assert!(spec.is_none(), "no image store, no request");
            let id = *d.env_id().unwrap();
            let plan = crate::plan::EnvPlan::new(
                &crate::plan::deps::declared(
                    None,
                    pod["metadata"]["annotations"]
                        .as_object()
                        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).collect())
                        .as_ref(),
                )
                .unwrap(),
                cfg.plan_inputs(),
            );
            assert_eq!(plan.id, id);
            assert_eq!(crate::imagebuild::plan_of(&NixuvEnvSpec::of_plan(&plan), &cfg).unwrap().id, id, "{ann}");
        }
        let denied =
            crate::imagebuild::plan_of(&NixuvEnvSpec { system: vec!["curl".into()], ..Default::default() }, &cfg)
                .unwrap_err();
        assert!(denied.contains("curl"), "{denied}");
        let bad = crate::imagebuild::plan_of(
            &NixuvEnvSpec { python: vec!["rich; os_name ==".into()], ..Default::default() },
            &cfg,
        )
        .unwrap_err();
        assert!(bad.contains("rich"), "{bad}");
        assert!(crate::imagebuild::plan_of(&NixuvEnvSpec::default(), &cfg).is_err());
    }

    #[test]
    fn sizes_read_like_kubectl() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(43_200_000), "41.2 MiB");
    }
}
