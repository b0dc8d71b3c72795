//! EnvPlan + Pod -> RFC 6902 `add` operations, built directly (never by diffing the Pod).
//!
//! Rules (SPEC §3): a missing array or map is created whole before anything is added to it;
//! keys are escaped by `jsonptr` (`/` -> `~1`); nothing existing is removed or reordered, except
//! that `nixuv-init` is inserted at index 0 of `initContainers` (the others keep their order), and
//! an existing PATH value is replaced by the same value with the env's directories in front.

use json_patch::{AddOperation, Patch, PatchOperation};
use jsonptr::{PointerBuf, Token};
use serde_json::{json, Value};

use super::plan::{EnvPlan, INIT_NIX_DIR, NIX_MOUNT, UV_ROOT, WORK_DIR};
use super::pod::{ContainerView, PodView};
use super::{ANN_ENV, ANN_STATUS, INIT_CONTAINER, STATUS_INJECTED, VOL_NIX, VOL_TMP, VOL_UV};
use crate::config::Config;
use crate::envspec::EnvSpec;

#[derive(Default)]
struct Ops(Vec<PatchOperation>);

impl Ops {
    fn add<'t>(&mut self, tokens: impl IntoIterator<Item = Token<'t>>, value: Value) {
        self.0.push(PatchOperation::Add(AddOperation { path: PointerBuf::from_tokens(tokens), value }));
    }
}

fn t<'a>(s: &'a str) -> Token<'a> {
    Token::from(s)
}

fn i(n: usize) -> Token<'static> {
    Token::from(n)
}

/// The Pod's volumes for the stores: the claims where `use_pvc` says so (`[nix, uv]`), emptyDirs
/// otherwise, plus the init container's scratch emptyDir.
pub fn volumes(cfg: &Config, use_pvc: [bool; 2]) -> [(&'static str, Value); 3] {
    let store = |claim: &str, pvc: bool| match pvc {
        true => json!({ "persistentVolumeClaim": { "claimName": claim } }),
        false => json!({ "emptyDir": {} }),
    };
    let with_name = |name: &'static str, mut v: Value| {
        v["name"] = json!(name);
        (name, v)
    };
    [
        with_name(VOL_NIX, store(&cfg.file.storage.nix_claim, use_pvc[0])),
        with_name(VOL_UV, store(&cfg.file.storage.uv_claim, use_pvc[1])),
        with_name(VOL_TMP, json!({ "emptyDir": {} })),
    ]
}

/// The `nixuv-init` container: `nixuv materialize` with the plan in its env, no shell, and a
/// securityContext that passes the PodSecurity `restricted` profile. Built as JSON directly (it
/// is on the admission hot path); tests read it back as a typed k8s-openapi Container.
pub fn init_container(plan: &EnvPlan, cfg: &Config) -> Value {
    let spec_env = EnvSpec::for_plan(plan).to_env();
    let mut env = Vec::with_capacity(spec_env.len() + 2 + cfg.file.init_env.len());
    env.extend(spec_env.into_iter().map(|(name, value)| json!({ "name": name, "value": value })));
    env.push(json!({ "name": "HOME", "value": WORK_DIR }));
    env.push(json!({ "name": "TMPDIR", "value": WORK_DIR }));
    env.extend(cfg.file.init_env.iter().map(|e| json!({ "name": e.name, "value": e.value })));
    let uid = cfg.file.init_run_as_user;
    let mut c = json!({
        "name": INIT_CONTAINER,
        "image": cfg.file.init_image,
        "command": ["nixuv", "materialize"],
        "env": env,
        "resources": { "requests": cfg.file.init_resources.requests, "limits": cfg.file.init_resources.limits },
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "capabilities": { "drop": ["ALL"] },
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "runAsUser": uid,
            "runAsGroup": uid,
            "seccompProfile": { "type": "RuntimeDefault" }
        },
        "volumeMounts": [
            { "name": VOL_TMP, "mountPath": WORK_DIR },
            { "name": VOL_NIX, "mountPath": INIT_NIX_DIR },
            { "name": VOL_UV, "mountPath": UV_ROOT }
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError"
    });
    if let Some(policy) = &cfg.file.init_image_pull_policy {
        c["imagePullPolicy"] = json!(policy);
    }
    c
}

fn target_mounts() -> [Value; 2] {
    [
        json!({ "name": VOL_NIX, "mountPath": NIX_MOUNT, "readOnly": true }),
        json!({ "name": VOL_UV, "mountPath": UV_ROOT, "readOnly": true }),
    ]
}

fn target_env(plan: &EnvPlan, path: String) -> Vec<Value> {
    let mut env = Vec::with_capacity(3);
    env.push(json!({ "name": "PATH", "value": path }));
    if plan.has_python() {
        env.push(json!({ "name": "VIRTUAL_ENV", "value": plan.venv_dir() }));
    }
    env.push(json!({ "name": "NIXUV_ENV", "value": plan.id }));
    env
}

fn patch_container(ops: &mut Ops, index: usize, c: &ContainerView, plan: &EnvPlan, cfg: &Config) {
    let base = [t("spec"), t("containers"), i(index)];
    match &c.volume_mounts {
        None => ops.add(base.iter().cloned().chain([t("volumeMounts")]), Value::Array(target_mounts().to_vec())),
        Some(_) => {
            for m in target_mounts() {
                ops.add(base.iter().cloned().chain([t("volumeMounts"), t("-")]), m);
            }
        }
    }
    let existing_path = c.env_var("PATH");
    let old = existing_path.and_then(|(_, e)| e.value.as_deref()).filter(|v| !v.is_empty());
    let path = format!("{}:{}", plan.path_prefix(), old.unwrap_or(&cfg.file.default_path));
    let mut env = target_env(plan, path);
    match (&c.env, existing_path) {
        (None, _) => ops.add(base.iter().cloned().chain([t("env")]), Value::Array(env)),
        (Some(_), found) => {
            if let Some((j, _)) = found {
                let path_var = env.remove(0);
                ops.add(base.iter().cloned().chain([t("env"), i(j), t("value")]), path_var["value"].clone());
            }
            for e in env {
                ops.add(base.iter().cloned().chain([t("env"), t("-")]), e);
            }
        }
    }
}

/// What an already-injected Pod (reinvocation, copies) still lacks; everything for a new one.
pub struct Missing {
    pub annotations: bool,
    pub volumes: [bool; 3],
    pub init_container: bool,
}

impl Missing {
    pub fn all() -> Self {
        Missing { annotations: true, volumes: [true; 3], init_container: true }
    }
    pub fn of(pod: &PodView) -> Self {
        let vols = pod.volumes();
        let has_vol = |n: &str| vols.iter().any(|v| v.name == n);
        Missing {
            annotations: pod.annotation(ANN_STATUS) != Some(STATUS_INJECTED) || pod.annotation(ANN_ENV).is_none(),
            volumes: [!has_vol(VOL_NIX), !has_vol(VOL_UV), !has_vol(VOL_TMP)],
            init_container: !pod.init_containers().iter().any(|c| c.name == INIT_CONTAINER),
        }
    }
}

/// The patch for `pod`: what `missing` says, plus env and mounts for each target container index.
pub fn build(
    pod: &PodView,
    plan: &EnvPlan,
    init: &Value,
    targets: &[usize],
    missing: &Missing,
    use_pvc: [bool; 2],
    cfg: &Config,
) -> Patch {
    let mut ops = Ops::default();
    if missing.annotations {
        let values = [(ANN_STATUS, STATUS_INJECTED), (ANN_ENV, plan.id.as_str())];
        match (&pod.metadata, pod.annotations()) {
            (None, _) => {
                ops.add([t("metadata")], json!({ "annotations": { ANN_STATUS: STATUS_INJECTED, ANN_ENV: plan.id } }))
            }
            (Some(_), None) => {
                ops.add([t("metadata"), t("annotations")], json!({ ANN_STATUS: STATUS_INJECTED, ANN_ENV: plan.id }))
            }
            (Some(_), Some(_)) => {
                for (k, v) in values {
                    ops.add([t("metadata"), t("annotations"), t(k)], json!(v));
                }
            }
        }
    }
    let vols: Vec<Value> =
        volumes(cfg, use_pvc).into_iter().zip(missing.volumes).filter_map(|((_, v), miss)| miss.then_some(v)).collect();
    let spec = pod.spec.as_ref();
    if !vols.is_empty() {
        if spec.and_then(|s| s.volumes.as_ref()).is_none() {
            ops.add([t("spec"), t("volumes")], Value::Array(vols));
        } else {
            for v in vols {
                ops.add([t("spec"), t("volumes"), t("-")], v);
            }
        }
    }
    if missing.init_container {
        if spec.and_then(|s| s.init_containers.as_ref()).is_none() {
            ops.add([t("spec"), t("initContainers")], json!([init]));
        } else {
            ops.add([t("spec"), t("initContainers"), i(0)], init.clone());
        }
    }
    let containers = pod.containers();
    for &idx in targets {
        patch_container(&mut ops, idx, &containers[idx], plan, cfg);
    }
    Patch(ops.0)
}
