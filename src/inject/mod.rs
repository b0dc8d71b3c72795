//! The pure core: an admission request in, a decision out. No I/O, no async, no HTTP types; the
//! webhook (`/mutate`), the preview endpoint and the `nixuv preview` CLI all call [`decide`] or
//! [`decide_pod`], so they cannot disagree.

pub mod deps;
pub mod optin;
pub mod patch;
pub mod plan;
pub mod pod;
pub mod policy;

use std::sync::Arc;

use patch::AddPatch;

use crate::claims::{AssumePresent, ClaimState, Claims};
use crate::config::{Config, StorageMode};
use crate::review::AdmissionRequest;
use plan::{EnvPlan, NIX_MOUNT, UV_ROOT};
use pod::PodView;

pub const LABEL_INJECT: &str = "nixuv.io/inject";
pub const ANN_SYSTEM: &str = "nixuv.io/system-deps";
pub const ANN_PYTHON: &str = "nixuv.io/python-deps";
pub const ANN_PYTHON_VERSION: &str = "nixuv.io/python";
pub const ANN_CONTAINERS: &str = "nixuv.io/containers";
pub const ANN_STATUS: &str = "nixuv.io/status";
pub const ANN_ENV: &str = "nixuv.io/env";
pub const STATUS_INJECTED: &str = "injected";
pub const LABEL_SYSTEM_PREFIX: &str = "system.nixuv.io/";
pub const LABEL_PYTHON_PREFIX: &str = "python.nixuv.io/";
pub const INIT_CONTAINER: &str = "nixuv-init";
pub const VOL_NIX: &str = "nixuv-nix";
pub const VOL_UV: &str = "nixuv-uv";
pub const VOL_TMP: &str = "nixuv-tmp";

/// What happened, for logs and the `decision` metric label (a closed, low-cardinality set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not a Pod CREATE: not nixuv's business.
    Skipped,
    /// No `nixuv.io/inject: "true"` label.
    NotOptedIn,
    /// The namespace is excluded by config.
    Excluded,
    /// Opted in without declaring any dependency.
    NoDeps,
    Injected,
    /// Already carries nixuv's output for the same env: nothing (more) to add.
    AlreadyInjected,
    Denied,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Skipped => "skipped",
            Outcome::NotOptedIn => "not_opted_in",
            Outcome::Excluded => "excluded",
            Outcome::NoDeps => "no_deps",
            Outcome::Injected => "injected",
            Outcome::AlreadyInjected => "already_injected",
            Outcome::Denied => "denied",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Decision {
    pub allowed: bool,
    /// HTTP-style status for denials: 400 (bad input, conflicts) or 403 (policy).
    pub code: u16,
    pub message: Option<String>,
    pub warnings: Vec<String>,
    pub patch: Option<AddPatch>,
    pub outcome: Outcome,
    pub env_id: Option<String>,
}

impl Decision {
    pub fn allow() -> Self {
        Self::allow_as(Outcome::Skipped)
    }
    pub fn allow_as(outcome: Outcome) -> Self {
        Decision { allowed: true, code: 200, message: None, warnings: Vec::new(), patch: None, outcome, env_id: None }
    }
    pub fn deny(code: u16, message: impl Into<String>) -> Self {
        Decision {
            allowed: false,
            code,
            message: Some(message.into()),
            warnings: Vec::new(),
            patch: None,
            outcome: Outcome::Denied,
            env_id: None,
        }
    }
}

/// The webhook's decision for one admission request.
pub fn decide(req: &AdmissionRequest<'_>, cfg: &Config, claims: &dyn Claims) -> Decision {
    if !optin::is_pod_create(req) {
        return Decision::allow();
    }
    let Some(object) = req.object else { return Decision::allow() };
    decide_pod_with(object.get(), req.namespace.as_deref(), cfg, claims)
}

/// The decision for a Pod given as JSON text, in `namespace` (the request's; a Pod made by a
/// controller often has none in its metadata).
pub fn decide_pod(pod_json: &str, namespace: Option<&str>, cfg: &Config) -> Decision {
    decide_pod_with(pod_json, namespace, cfg, &AssumePresent)
}

/// [`decide_pod`], with the claims' existence from `claims`.
pub fn decide_pod_with(pod_json: &str, namespace: Option<&str>, cfg: &Config, claims: &dyn Claims) -> Decision {
    let pod: PodView = match serde_json::from_str(pod_json) {
        Ok(p) => p,
        Err(e) => return Decision::deny(400, format!("request.object is not a valid Pod: {e}")),
    };
    decide_view(&pod, namespace, cfg, claims)
}

/// PVC or emptyDir for the two store volumes (`[nix, uv]`), with warnings for the fallbacks.
fn storage(ns: &str, cfg: &Config, claims: &dyn Claims, warnings: &mut Vec<String>) -> [bool; 2] {
    if cfg.file.storage.mode == StorageMode::EmptyDir {
        return [false, false];
    }
    let mut use_pvc = [true, true];
    let pairs = [(VOL_NIX, &cfg.file.storage.nix_claim), (VOL_UV, &cfg.file.storage.uv_claim)];
    for (i, (vol, claim)) in pairs.into_iter().enumerate() {
        match claims.state(ns, claim) {
            ClaimState::Present => {}
            ClaimState::Missing => {
                use_pvc[i] = false;
                warnings.push(format!(
                    "nixuv: PersistentVolumeClaim {claim:?} not found in namespace {ns:?}; volume {vol:?} is an emptyDir, so this Pod builds its env alone"
                ));
            }
            ClaimState::Unknown => warnings.push(format!(
                "nixuv: could not check PersistentVolumeClaim {claim:?} (the API has not answered yet); using it as configured"
            )),
        }
    }
    use_pvc
}

pub fn decide_view(pod: &PodView, namespace: Option<&str>, cfg: &Config, claims: &dyn Claims) -> Decision {
    if !optin::opted_in(pod) {
        return Decision::allow_as(Outcome::NotOptedIn);
    }
    let ns = namespace.filter(|n| !n.is_empty()).or_else(|| pod.metadata.as_ref()?.namespace.as_deref()).unwrap_or("");
    if cfg.excluded_namespaces.iter().any(|n| n == ns) {
        return Decision::allow_as(Outcome::Excluded);
    }
    let count = pod.containers().len() + pod.init_containers().len();
    if count > cfg.file.max_containers {
        return Decision::deny(
            400,
            format!(
                "spec.containers and spec.initContainers: {count} containers, more than maxContainers ({})",
                cfg.file.max_containers
            ),
        );
    }
    let key = declaration_key(pod);
    if key.len() > MAX_DECLARATION_BYTES {
        return Decision::deny(
            400,
            format!(
                "the dependency declaration ({ANN_SYSTEM}, {ANN_PYTHON}, {ANN_PYTHON_VERSION}, {LABEL_SYSTEM_PREFIX}*, {LABEL_PYTHON_PREFIX}*) is {} bytes, over the limit of {MAX_DECLARATION_BYTES}",
                key.len()
            ),
        );
    }
    let env = cfg.envs.get_or_insert_with(&key, || Arc::new(env_for(pod, cfg)));
    let (plan, init) = match &*env {
        EnvOutcome::Env { plan, init_container } => (plan, init_container),
        EnvOutcome::Deny(code, msg) => return Decision::deny(*code, msg.clone()),
        EnvOutcome::NoDeps => {
            let mut d = Decision::allow_as(Outcome::NoDeps);
            d.warnings.push(format!(
                "nixuv: Pod is labelled {LABEL_INJECT}=true but declares no dependencies ({ANN_SYSTEM}, {ANN_PYTHON}, {LABEL_SYSTEM_PREFIX}*, {LABEL_PYTHON_PREFIX}*); nothing injected"
            ));
            return d;
        }
    };
    let targets = match optin::targets(pod, cfg) {
        Ok(t) => t,
        Err(msg) => return Decision::deny(400, msg),
    };
    let already = pod.annotation(ANN_STATUS) == Some(STATUS_INJECTED);
    if already {
        // nixuv's own earlier output: trusted only when every part of it is for this env. A
        // marker without the env, or an init container built for another env, would give the app
        // an env that nothing builds.
        const REDO: &str = "create the Pod from a manifest without nixuv's annotations, volumes and init container";
        match pod.annotation(ANN_ENV) {
            None => {
                return Decision::deny(
                    400,
                    format!(
                    "annotation {ANN_STATUS:?} says {STATUS_INJECTED:?} but annotation {ANN_ENV:?} is missing; {REDO}"
                ),
                )
            }
            Some(env) if env != plan.id => {
                return Decision::deny(
                    400,
                    format!("annotation {ANN_ENV:?}: the Pod was injected for env {env:?} but its dependencies now give env {:?}; {REDO}", plan.id),
                );
            }
            Some(_) => {}
        }
        if let Some(init) = pod.init_containers().iter().find(|c| c.name == INIT_CONTAINER) {
            let built = init.env_var(crate::envspec::ENV_ID).and_then(|(_, e)| e.value.as_deref());
            if built != Some(plan.id.as_str()) {
                return Decision::deny(
                    400,
                    format!("spec.initContainers[{INIT_CONTAINER:?}].env: NIXUV_ENV is {built:?}, not this Pod's env {:?}; {REDO}", plan.id),
                );
            }
        }
    } else if let Err(msg) = conflicts(pod) {
        return Decision::deny(400, msg);
    }
    if let Err(msg) = own_store_mounts(pod, cfg, already) {
        return Decision::deny(403, msg);
    }
    let containers = pod.containers();
    let mut todo = Vec::with_capacity(targets.len());
    for idx in targets {
        let c = &containers[idx];
        match c.env_var("NIXUV_ENV") {
            Some((_, e)) if already && e.value.as_deref() == Some(plan.id.as_str()) => continue,
            Some(_) => {
                return Decision::deny(
                    400,
                    format!("spec.containers[{:?}].env: NIXUV_ENV is already set; it is reserved for nixuv", c.name),
                )
            }
            None => {}
        }
        if let Err(msg) = container_conflicts(c, plan) {
            return Decision::deny(400, msg);
        }
        todo.push(idx);
    }
    let missing = if already { patch::Missing::of(pod) } else { patch::Missing::all() };
    let mut warnings = Vec::new();
    let use_pvc =
        if missing.volumes[..2].iter().any(|m| *m) { storage(ns, cfg, claims, &mut warnings) } else { [true, true] };
    let patch = patch::build(pod, plan, init, &todo, &missing, use_pvc, cfg);
    let mut d = Decision::allow_as(if patch.is_empty() { Outcome::AlreadyInjected } else { Outcome::Injected });
    d.warnings = warnings;
    d.env_id = Some(plan.id.clone());
    d.patch = (!patch.is_empty()).then_some(patch);
    d
}

/// What a Pod's declarations come to under one config. It depends only on the declarations (see
/// [`declaration_key`]) and the config, so each config memoises it ([`crate::config::EnvMemo`]):
/// parsing PEP 508 requirements, the policy, the env id and the init container are then paid once
/// per distinct declaration rather than once per Pod.
#[derive(Debug)]
pub enum EnvOutcome {
    NoDeps,
    Deny(u16, String),
    Env { plan: EnvPlan, init_container: Arc<serde_json::value::RawValue> },
}

impl EnvOutcome {
    /// Heap bytes held (about), for the memo's byte bound.
    pub fn heap_bytes(&self) -> usize {
        match self {
            EnvOutcome::NoDeps => 0,
            EnvOutcome::Deny(_, m) => m.len(),
            EnvOutcome::Env { plan, init_container } => {
                let strings = plan.system.iter().chain(&plan.python).map(|s| s.len() + 24).sum::<usize>();
                let tool = plan.tool_env.iter().map(|(k, v)| k.len() + v.len() + 48).sum::<usize>();
                strings + tool + plan.nixpkgs.len() + plan.index_url.len() + init_container.get().len() + 128
            }
        }
    }
}

/// The longest dependency declaration (the dependency annotations and labels together) decided:
/// `maxDeps` items of the longest allowed length fit many times over; anything larger is refused
/// before it is parsed or memoised.
pub const MAX_DECLARATION_BYTES: usize = 64 * 1024;

fn env_for(pod: &PodView, cfg: &Config) -> EnvOutcome {
    let declared = match deps::declared(pod.labels(), pod.annotations()) {
        Ok(d) => d,
        Err(e) => return EnvOutcome::Deny(400, e.to_string()),
    };
    if declared.is_empty() {
        return EnvOutcome::NoDeps;
    }
    if let Err(e) = policy::check(&declared, cfg) {
        return EnvOutcome::Deny(403, e.to_string());
    }
    let plan = EnvPlan::new(&declared, cfg);
    let init_container = patch::init_container_text(&plan, cfg);
    EnvOutcome::Env { plan, init_container }
}

/// Everything [`deps::declared`] reads, length-prefixed and tagged so that distinct declarations
/// never share a key: the three annotations (absent differs from empty) and the dependency labels.
fn declaration_key(pod: &PodView) -> Vec<u8> {
    let mut key = Vec::with_capacity(256);
    let mut put = |tag: u8, s: &str| {
        key.push(tag);
        key.extend_from_slice(&(s.len() as u64).to_le_bytes());
        key.extend_from_slice(s.as_bytes());
    };
    if let Some(ann) = pod.annotations() {
        for (tag, k) in [(1, ANN_SYSTEM), (2, ANN_PYTHON), (3, ANN_PYTHON_VERSION)] {
            if let Some(v) = ann.get(k) {
                put(tag, v);
            }
        }
    }
    for (k, v) in pod.labels().into_iter().flatten() {
        if k.starts_with(LABEL_SYSTEM_PREFIX) || k.starts_with(LABEL_PYTHON_PREFIX) {
            put(4, k);
            put(5, v);
        }
    }
    key
}

/// Names nixuv adds that a Pod not injected by nixuv must not already use.
fn conflicts(pod: &PodView) -> Result<(), String> {
    for v in pod.volumes() {
        if [VOL_NIX, VOL_UV, VOL_TMP].contains(&v.name.as_str()) {
            return Err(format!(
                "spec.volumes: a volume named {:?} already exists; nixuv adds its own and would conflict",
                v.name
            ));
        }
    }
    let named = |field: &str, mut names: Vec<&str>| -> Result<(), String> {
        match names.iter_mut().find(|n| **n == INIT_CONTAINER) {
            Some(n) => Err(format!(
                "spec.{field}: a container named {n:?} already exists; nixuv adds its own and would conflict"
            )),
            None => Ok(()),
        }
    };
    named("initContainers", pod.init_containers().iter().map(|c| c.name.as_str()).collect())?;
    named("containers", pod.containers().iter().map(|c| c.name.as_str()).collect())?;
    named("ephemeralContainers", pod.ephemeral_containers().iter().map(|c| c.name.as_str()).collect())?;
    Ok(())
}

/// A mount path as the kubelet will use it: `//nix`, `/nix/`, `/nixuv/./uv` and `/x/../nix` are
/// all `/nix`-like paths, so they are compared as component lists after `.` and `..` are resolved.
fn normalised(path: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    out
}

/// An opted-in Pod may not mount the store claims itself: a container of its own with write
/// access could plant an env that every other Pod of the namespace trusts. nixuv's own volumes
/// (on a Pod it injected before) are the exception.
fn own_store_mounts(pod: &PodView, cfg: &Config, already: bool) -> Result<(), String> {
    let storage = &cfg.file.storage;
    for v in pod.volumes() {
        if already && (v.name == VOL_NIX || v.name == VOL_UV) {
            continue;
        }
        if let Some(claim) = &v.persistent_volume_claim {
            if claim.claim_name == storage.nix_claim || claim.claim_name == storage.uv_claim {
                return Err(format!(
                    "spec.volumes[{:?}]: PersistentVolumeClaim {:?} is one of nixuv's shared stores; a Pod may not mount it itself (nixuv mounts it read-only into the app and writes it only from {INIT_CONTAINER})",
                    v.name, claim.claim_name
                ));
            }
        }
    }
    Ok(())
}

fn overlaps(a: &str, b: &str) -> bool {
    let (a, b) = (normalised(a), normalised(b));
    a.starts_with(&b) || b.starts_with(&a)
}

/// A target container must not already mount over the stores or set the variables nixuv owns.
fn container_conflicts(c: &pod::ContainerView, plan: &EnvPlan) -> Result<(), String> {
    for m in c.volume_mounts.as_deref().unwrap_or(&[]) {
        for ours in [NIX_MOUNT, UV_ROOT] {
            if overlaps(&m.mount_path, ours) {
                return Err(format!(
                    "spec.containers[{:?}].volumeMounts: {:?} (volume {:?}) overlaps nixuv's mount at {ours:?}",
                    c.name, m.mount_path, m.name
                ));
            }
        }
        if [VOL_NIX, VOL_UV, VOL_TMP].contains(&m.name.as_str()) {
            return Err(format!(
                "spec.containers[{:?}].volumeMounts: volume {:?} is reserved for nixuv",
                c.name, m.name
            ));
        }
    }
    if let Some((_, e)) = c.env_var("PATH") {
        if e.value_from.is_some() {
            return Err(format!(
                "spec.containers[{:?}].env: PATH is set with valueFrom, so nixuv cannot put the env's directories in front of it; set PATH as a value or leave it unset",
                c.name
            ));
        }
    }
    if plan.has_python() && c.env_var("VIRTUAL_ENV").is_some() {
        return Err(format!(
            "spec.containers[{:?}].env: VIRTUAL_ENV is already set; nixuv sets it to the env's venv",
            c.name
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_declaration_memo_is_bounded_by_bytes() {
        let cfg = Config::default();
        // One valid item, then one too long: denied at once, but the declaration is ~60 KB.
        let many = "x".repeat(60_000);
        for i in 0..400 {
            let pod = serde_json::json!({"metadata": {"labels": {"nixuv.io/inject": "true"},
                "annotations": {"nixuv.io/system-deps": format!("a{i} {many}")}},
                "spec": {"containers": [{"name": "app"}]}});
            let d = decide_pod(&pod.to_string(), Some("ns"), &cfg);
            assert!(!d.allowed);
        }
        // 400 declarations of ~60 KB each would be 24 MB.
        assert!(cfg.envs.weight() <= 8 << 20, "{}", cfg.envs.weight());
        assert!(cfg.envs.weight() > 4 << 20, "the memo is used: {}", cfg.envs.weight());
    }

    fn pod(ann: &str, labels: &str) -> String {
        format!(
            r#"{{"metadata":{{"labels":{{"nixuv.io/inject":"true"{labels}}},"annotations":{{{ann}}}}},"spec":{{"containers":[{{"name":"a"}}]}}}}"#
        )
    }

    /// A memoised env gives the same decision as a fresh config, and declarations that differ in any
    /// way (absent vs empty, annotation vs label) never share an entry.
    #[test]
    fn memo_agrees_with_a_fresh_config() {
        let shared = Config::default();
        let pods = [
            pod(r#""nixuv.io/python-deps":"rich""#, ""),
            pod(r#""nixuv.io/python-deps":"rich","nixuv.io/python":"3.11""#, ""),
            pod(r#""nixuv.io/python-deps":"""#, ""),
            pod("", ""),
            pod("", r#","python.nixuv.io/rich":"""#),
            pod(r#""nixuv.io/system-deps":"rich""#, ""),
            pod(r#""nixuv.io/system-deps":"r!ch""#, ""),
            pod(r#""nixuv.io/python-deps":"rich""#, ""),
        ];
        let mut ids = Vec::new();
        for p in &pods {
            let memo = decide_pod(p, Some("ns"), &shared);
            let fresh = decide_pod(p, Some("ns"), &Config::default());
            assert_eq!(format!("{memo:?}"), format!("{fresh:?}"), "{p}");
            ids.push(memo.env_id.clone());
        }
        assert_eq!(ids[0], ids[7]);
        assert_ne!(ids[0], ids[1]);
        assert_eq!(ids[0], ids[4], "label and annotation declare the same env");
        assert_ne!(ids[0], ids[5]);
        assert!(ids[2].is_none() && ids[3].is_none() && ids[6].is_none());
        let k = |p: &str| declaration_key(&serde_json::from_str(p).unwrap());
        assert_ne!(k(&pods[2]), k(&pods[3]), "empty differs from absent");
        assert_ne!(k(&pods[0]), k(&pods[4]));
    }
}
