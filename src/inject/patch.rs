//! EnvPlan + Pod -> RFC 6902 operations, built directly (never by diffing the Pod).
//!
//! Rules (docs/annotations.md, "What an opted-in Pod gets"): a missing array or map is created
//! whole before anything is added to it; keys are escaped (`/` -> `~1`); nothing existing is
//! removed or reordered, except that `nixuv-init` is inserted into `initContainers` (first, or
//! after the leading native sidecars; the others keep their order), and an existing PATH value is
//! replaced by the same value with the env's directories in front. A re-injection ([`rebuild`])
//! replaces and removes what nixuv itself wrote before.

use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;

use super::init_container::InitText;
use super::patch_text::{index, key, Ops, PodPatch};
use super::pod::{ContainerView, PodView};
use super::vars::TargetVar;
use super::StoreVolumes;
use crate::config::Config;
use crate::ecosystem::{is_nixuv_volume, Ecosystem, PerEcosystem, StoreKind};
use crate::keys::{ANN_ENV, ANN_STATUS, STATUS_INJECTED};
use crate::names::{CA_FILE_NAME, ENV_ID, INIT_CONTAINER, VOL_CA, VOL_TMP};
use crate::plan::EnvPlan;
use crate::values::InitPlacement;

/// A volume nixuv adds, serialised with its keys in the order `serde_json::Value` gives (sorted):
/// the patch is byte for byte what `json_patch` would write for it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(untagged)]
pub enum Volume<'a> {
    Claim {
        name: &'static str,
        #[serde(rename = "persistentVolumeClaim")]
        claim: ClaimName<'a>,
    },
    Empty {
        #[serde(rename = "emptyDir")]
        empty_dir: EmptyDir,
        name: &'static str,
    },
    ConfigMap {
        #[serde(rename = "configMap")]
        config_map: ConfigMapSource<'a>,
        name: &'static str,
    },
}

/// The `caBundle` ConfigMap with its one key projected to [`CA_FILE_NAME`] (keys sorted).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConfigMapSource<'a> {
    items: [KeyToPath<'a>; 1],
    name: &'a str,
}

#[derive(Debug, Clone, serde::Serialize)]
struct KeyToPath<'a> {
    key: &'a str,
    path: &'static str,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ClaimName<'a> {
    #[serde(rename = "claimName")]
    claim_name: &'a str,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct EmptyDir {}

/// The Pod's volumes for the stores, one per ecosystem as `stores` says, plus the init container's
/// scratch emptyDir and, with `caBundle`, its ConfigMap, in the order a patch adds them.
pub fn volumes(cfg: &Config, stores: StoreVolumes) -> Vec<(&'static str, Volume<'_>)> {
    let storage = &cfg.file.storage;
    Ecosystem::ALL
        .into_iter()
        .map(|e| {
            let name = e.volume();
            let v = match stores[e] {
                StoreKind::Claim => Volume::Claim { name, claim: ClaimName { claim_name: storage.claim(e) } },
                StoreKind::EmptyDir => Volume::Empty { empty_dir: EmptyDir {}, name },
            };
            (name, v)
        })
        .chain([(VOL_TMP, Volume::Empty { empty_dir: EmptyDir {}, name: VOL_TMP })])
        .chain(ca_volume(cfg).map(|v| (VOL_CA, v)))
        .collect()
}

/// The `caBundle` ConfigMap as the init container's (and the builder's) `nixuv-ca` volume.
pub fn ca_volume(cfg: &Config) -> Option<Volume<'_>> {
    let ca = cfg.file.ca_bundle.as_ref()?;
    let source = ConfigMapSource { items: [KeyToPath { key: &ca.key, path: CA_FILE_NAME }], name: &ca.config_map };
    Some(Volume::ConfigMap { config_map: source, name: VOL_CA })
}

/// A read-only store mount of a target container (keys sorted, as above).
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Mount {
    #[serde(rename = "mountPath")]
    mount_path: &'static str,
    name: &'static str,
    #[serde(rename = "readOnly")]
    read_only: bool,
}

/// The store mounts of a target container, one per ecosystem.
fn target_mounts() -> impl Iterator<Item = Mount> {
    Ecosystem::ALL.into_iter().map(|e| Mount { mount_path: e.target_mount(), name: e.volume(), read_only: true })
}

/// The target mounts serialised once (each, and all as one array): the same for every container
/// of every Pod.
static MOUNT_TEXTS: std::sync::LazyLock<(Vec<Box<RawValue>>, Box<RawValue>)> = std::sync::LazyLock::new(|| {
    fn raw<T: Serialize + ?Sized>(v: &T) -> Box<RawValue> {
        serde_json::value::to_raw_value(v).expect("a JSON value serialises")
    }
    let all: Vec<Mount> = target_mounts().collect();
    (all.iter().map(raw).collect(), raw(&all))
});

/// An env entry with a value (keys sorted, as above).
#[derive(Debug, serde::Serialize)]
struct Var<'a> {
    name: &'a str,
    value: &'a str,
}

/// The variables a target container gets, in [`TargetVar::ALL`]'s order; PATH keeps the value the
/// container sets (or its images' PATH), PYTHONPATH a non-empty one, after nixuv's part.
fn target_env(plan: &EnvPlan, c: &ContainerView, t: &Target) -> Vec<(&'static str, String)> {
    TargetVar::ALL
        .into_iter()
        .filter(|v| v.set_for(plan))
        .map(|v| {
            let rest = match v {
                TargetVar::Path => t.path_tail,
                TargetVar::PythonPath => c.env_var(v.name()).and_then(|(_, e)| e.value.as_deref()).unwrap_or(""),
                TargetVar::VirtualEnv | TargetVar::EnvId => "",
            };
            (v.name(), v.value(plan, rest))
        })
        .collect()
}

/// The PATH a container that sets none gets after the env's directories: the Pod's
/// `nixuv.io/image-path` (`pod_path`), else the `imagePaths` entry of its image, else
/// `defaultPath`. The flag says whether it came from `defaultPath` for want of anything better.
pub fn image_path<'a>(pod_path: Option<&'a str>, c: &ContainerView, cfg: &'a Config) -> (&'a str, bool) {
    if let Some(p) = pod_path {
        return (p, false);
    }
    match c.image.as_deref().and_then(|i| cfg.image_paths.for_image(i)) {
        Some(p) => (p, false),
        None => (&cfg.file.default_path, true),
    }
}

/// A container to patch and what its PATH keeps after the env's directories.
pub struct Target<'a> {
    pub index: usize,
    pub path_tail: &'a str,
    /// [`image_path`]'s PATH, for when the container's own is empty (a re-injection strips
    /// nixuv's directories off its PATH and may leave nothing).
    pub image_path: &'a str,
}

impl<'a> Target<'a> {
    /// The target for container `index`: its own non-empty PATH is kept, else [`image_path`]'s.
    /// The flag is [`image_path`]'s, false when the container's PATH is kept.
    pub fn new(index: usize, pod_path: Option<&'a str>, c: &'a ContainerView, cfg: &'a Config) -> (Self, bool) {
        let own = c.env_var("PATH").and_then(|(_, e)| e.value.as_deref()).filter(|v| !v.is_empty());
        let (image_path, defaulted) = image_path(pod_path, c, cfg);
        match own {
            Some(p) => (Target { index, path_tail: p, image_path }, false),
            None => (Target { index, path_tail: image_path, image_path }, defaulted),
        }
    }
}

fn patch_container(ops: &mut Ops, t: &Target, c: &ContainerView, plan: &EnvPlan) {
    let base = [key("spec"), key("containers"), index(t.index)];
    match &c.volume_mounts {
        None => ops.push(base.iter().cloned().chain([key("volumeMounts")]), &MOUNT_TEXTS.1),
        Some(_) => {
            for m in &MOUNT_TEXTS.0 {
                ops.push(base.iter().cloned().chain([key("volumeMounts"), key("-")]), m);
            }
        }
    }
    patch_env(ops, t, c, plan);
}

/// The variables of target container `t`: set where the container has them, added where not.
pub(super) fn patch_env(ops: &mut Ops, t: &Target, c: &ContainerView, plan: &EnvPlan) {
    let base = [key("spec"), key("containers"), index(t.index)];
    let env = target_env(plan, c, t);
    match &c.env {
        None => {
            let vars: Vec<Var> = env.iter().map(|(name, value)| Var { name, value }).collect();
            ops.add(base.iter().cloned().chain([key("env")]), &vars)
        }
        Some(_) => {
            for (name, value) in &env {
                match c.env_var(name) {
                    // Only PATH and PYTHONPATH can be there (the others are refused before).
                    Some((j, _)) => ops.add(base.iter().cloned().chain([key("env"), index(j), key("value")]), value),
                    None => ops.add(base.iter().cloned().chain([key("env"), key("-")]), &Var { name, value }),
                }
            }
        }
    }
}

/// What an already-injected Pod (reinvocation, copies) still lacks; everything for a new one.
pub struct Missing {
    pub annotations: bool,
    /// Each ecosystem's store volume.
    pub stores: PerEcosystem<bool>,
    pub tmp_volume: bool,
    pub ca_volume: bool,
    pub init_container: bool,
}

impl Missing {
    /// Whether the volume `name` (one of [`volumes`]) is missing.
    pub fn volume(&self, name: &str) -> bool {
        match Ecosystem::of_volume(name) {
            Some(e) => self.stores[e],
            None if name == VOL_CA => self.ca_volume,
            None => self.tmp_volume,
        }
    }
    /// Whether any store volume is missing.
    pub fn any_store(&self) -> bool {
        self.stores.iter().any(|(_, m)| *m)
    }
    pub fn all() -> Self {
        Missing {
            annotations: true,
            stores: PerEcosystem::from_fn(|_| true),
            tmp_volume: true,
            ca_volume: true,
            init_container: true,
        }
    }
    pub fn of(pod: &PodView) -> Self {
        let vols = pod.volumes();
        let has_vol = |n: &str| vols.iter().any(|v| v.name == n);
        Missing {
            annotations: pod.annotation(ANN_STATUS) != Some(STATUS_INJECTED) || pod.annotation(ANN_ENV).is_none(),
            stores: PerEcosystem::from_fn(|e| !has_vol(e.volume())),
            tmp_volume: !has_vol(VOL_TMP),
            ca_volume: !has_vol(VOL_CA),
            init_container: !pod.init_containers().iter().any(|c| c.name == INIT_CONTAINER),
        }
    }
}

/// Where nixuv's parts go: the store volumes' sources and nixuv-init's index among the init
/// containers.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    pub stores: StoreVolumes,
    pub init_index: usize,
}

/// Where nixuv-init goes for `placement`: index 0, or after the leading native sidecars.
pub fn init_index(pod: &PodView, placement: InitPlacement) -> usize {
    match placement {
        InitPlacement::First => 0,
        InitPlacement::AfterSidecars => {
            pod.init_containers().iter().take_while(|c| c.restart_policy.as_deref() == Some("Always")).count()
        }
    }
}

/// Adds nixuv's two annotations (status and env id), creating what is missing of the map.
pub(super) fn annotate(ops: &mut Ops, pod: &PodView, plan: &EnvPlan) {
    // Sorted keys, as above.
    #[derive(serde::Serialize)]
    struct Annotations<'a> {
        #[serde(rename = "nixuv.io/env")]
        env: &'a str,
        #[serde(rename = "nixuv.io/status")]
        status: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Metadata<'a> {
        annotations: Annotations<'a>,
    }
    let annotations = Annotations { env: &plan.id, status: STATUS_INJECTED };
    match (&pod.metadata, pod.annotations()) {
        (None, _) => ops.add([key("metadata")], &Metadata { annotations }),
        (Some(_), None) => ops.add([key("metadata"), key("annotations")], &annotations),
        (Some(_), Some(_)) => {
            for (k, v) in [(ANN_STATUS, STATUS_INJECTED), (ANN_ENV, plan.id.as_str())] {
                ops.add([key("metadata"), key("annotations"), key(k)], v);
            }
        }
    }
}

/// The patch for `pod`: what `missing` says, plus env and mounts for each target container.
pub fn build(
    pod: &PodView,
    plan: &EnvPlan,
    init: &Arc<InitText>,
    targets: &[Target],
    missing: &Missing,
    at: Placement,
    cfg: &Config,
) -> PodPatch {
    let stores = at.stores;
    let mut ops = Ops::for_patch(init, targets.len());
    if missing.annotations {
        annotate(&mut ops, pod, plan);
    }
    let vols: Vec<Volume> =
        volumes(cfg, stores).into_iter().filter(|(name, _)| missing.volume(name)).map(|(_, v)| v).collect();
    let spec = pod.spec.as_ref();
    ops.append([key("spec"), key("volumes")], spec.and_then(|s| s.volumes.as_ref()).is_some(), &vols);
    if missing.init_container {
        if spec.and_then(|s| s.init_containers.as_ref()).is_none() {
            ops.init("add", [key("spec"), key("initContainers")], init, true);
        } else {
            ops.init("add", [key("spec"), key("initContainers"), index(at.init_index)], init, false);
        }
    }
    let containers = pod.containers();
    for t in targets {
        patch_container(&mut ops, t, &containers[t.index], plan);
    }
    ops.finish()
}

/// The patch that turns nixuv's own earlier injection (for another env: the Pod was made from
/// `nixuv preview` output, or copied, and its dependencies changed since) into the injection for
/// `plan`: the annotations, nixuv's three volumes and its init container are replaced whole;
/// in each container, the variables nixuv set are rewritten (its directories taken off the front
/// of PATH and PYTHONPATH first) and its mounts replaced; containers that are no longer targets
/// lose nixuv's variables. Everything else is left as it is.
pub fn rebuild(
    pod: &PodView,
    plan: &EnvPlan,
    init: &Arc<InitText>,
    targets: &[Target],
    at: Placement,
    cfg: &Config,
) -> PodPatch {
    let mut ops = Ops::for_patch(init, targets.len());
    for (k, v) in [(ANN_STATUS, STATUS_INJECTED), (ANN_ENV, plan.id.as_str())] {
        // The status annotation is there, so the map is; `add` sets or replaces a member.
        ops.add([key("metadata"), key("annotations"), key(k)], v);
    }
    let spec = pod.spec.as_ref();
    let existing = pod.volumes();
    let mut appended = Vec::new();
    let wanted = volumes(cfg, at.stores);
    for (name, v) in &wanted {
        match existing.iter().position(|e| e.name == *name) {
            Some(j) => ops.replace_value([key("spec"), key("volumes"), index(j)], v),
            None => appended.push(v),
        }
    }
    // nixuv's volumes the new injection has no use for (a `caBundle` since removed), highest
    // index first, so that each index still names the volume it was computed for.
    let stale = existing.iter().enumerate().rev();
    for (j, _) in stale.filter(|(_, e)| is_nixuv_volume(&e.name) && !wanted.iter().any(|(n, _)| e.name == *n)) {
        ops.remove([key("spec"), key("volumes"), index(j)]);
    }
    ops.append([key("spec"), key("volumes")], spec.and_then(|s| s.volumes.as_ref()).is_some(), &appended);
    match pod.init_containers().iter().position(|c| c.name == INIT_CONTAINER) {
        Some(j) => ops.init("replace", [key("spec"), key("initContainers"), index(j)], init, false),
        None if spec.and_then(|s| s.init_containers.as_ref()).is_none() => {
            ops.init("add", [key("spec"), key("initContainers")], init, true)
        }
        None => ops.init("add", [key("spec"), key("initContainers"), index(at.init_index)], init, false),
    }
    for (k, c) in pod.containers().iter().enumerate() {
        let target = targets.iter().find(|t| t.index == k);
        let had = c.env_var(ENV_ID).is_some();
        match (target, had) {
            (None, false) => continue,
            (Some(t), false) => {
                patch_container(&mut ops, t, c, plan);
                continue;
            }
            _ => {}
        }
        let base = [key("spec"), key("containers"), index(k)];
        let mut removes = Vec::new();
        for v in TargetVar::ALL {
            let own = c.env_var(v.name());
            let own_value = own.and_then(|(_, e)| e.value.as_deref());
            let rest = v.strip_ours(own_value.unwrap_or(""));
            // What the variable becomes: set, removed (nixuv set it and the container no longer
            // gets it), or left as it is (None).
            let want = match target.filter(|_| v.set_for(plan)) {
                Some(t) => {
                    let rest = if rest.is_empty() && v == TargetVar::Path { t.image_path } else { rest };
                    Some(Some(v.value(plan, rest)))
                }
                None => match own_value {
                    None => None,
                    // PATH stays a variable, with whatever is left of it.
                    Some(_) if v == TargetVar::Path => Some(Some(rest.to_string())),
                    Some(_) if rest.is_empty() => Some(None),
                    Some(val) if rest.len() == val.len() => None,
                    Some(_) => Some(Some(rest.to_string())),
                },
            };
            match (own, want) {
                (_, None) => {}
                (Some((j, e)), Some(Some(value))) if e.value.as_deref() != Some(value.as_str()) => {
                    ops.add(base.iter().cloned().chain([key("env"), index(j), key("value")]), &value)
                }
                (Some(_), Some(Some(_))) => {}
                (Some((j, _)), Some(None)) => removes.push(j),
                (None, Some(Some(value))) if !value.is_empty() => {
                    ops.add(base.iter().cloned().chain([key("env"), key("-")]), &Var { name: v.name(), value: &value })
                }
                (None, _) => {}
            }
        }
        // Highest index first, so that each index still names the entry it was computed for.
        removes.sort_unstable_by(|a, b| b.cmp(a));
        for j in removes {
            ops.remove(base.iter().cloned().chain([key("env"), index(j)]));
        }
        if target.is_some() {
            let mounts = c.volume_mounts.as_deref().unwrap_or(&[]);
            let mut appended = Vec::new();
            for m in target_mounts() {
                match mounts.iter().position(|x| x.name == m.name) {
                    Some(j) => ops.replace_value(base.iter().cloned().chain([key("volumeMounts"), index(j)]), &m),
                    None => appended.push(m),
                }
            }
            ops.append(base.iter().cloned().chain([key("volumeMounts")]), c.volume_mounts.is_some(), &appended);
        }
    }
    ops.finish()
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::inject::Injector;

    /// The hand-written wire form is byte for byte what serde_json gives for the same
    /// `json_patch::Patch`, escaped keys included.
    #[test]
    fn wire_form_matches_json_patch() {
        let inj = Injector::new(Config::default());
        let mut escaped = false;
        for pod in [
            r#"{"metadata":{"labels":{"nixuv.io/inject":"true"},"annotations":{"nixuv.io/python-deps":"rich","a/b":"c"}},"spec":{"containers":[{"name":"a","env":[{"name":"PATH","value":"/bin"}]}]}}"#,
            r#"{"metadata":{"labels":{"nixuv.io/inject":"true","system.nixuv.io/jq":""}},"spec":{"initContainers":[{"name":"i"}],"volumes":[],"containers":[{"name":"a"},{"name":"b","volumeMounts":[]}]}}"#,
        ] {
            let d = inj.decide_pod(pod, Some("ns"));
            let p = d.patch().expect("a patch");
            let typed = p.to_patch();
            assert_eq!(p.json(), serde_json::to_vec(&typed).unwrap());
            assert_eq!(p.len(), typed.0.len());
            escaped |= p.paths().iter().any(|ptr| ptr.contains("~1"));
        }
        assert!(escaped, "a key with '/' was escaped");
    }
}
