//! What an opted-in Pod may not already carry: names nixuv adds, mounts over its stores, the
//! store claims mounted by the Pod itself, variables nixuv owns ([`super::vars`]); and whether
//! nixuv's own earlier output is for another env (then the Pod is re-injected).

use crate::config::Config;
use crate::ecosystem::{is_nixuv_volume, Ecosystem};
use crate::keys::ANN_ENV;
use crate::names::{ENV_ID, INIT_CONTAINER};
use crate::plan::EnvPlan;

use super::decision::Denial;
use super::pod::{self, PodView};
use super::vars::TargetVar;

/// Whether nixuv's own earlier output in `pod` is for another env than `plan`: the env
/// annotation is missing or names another env, or nixuv-init or a container carries another
/// `NIXUV_ENV`. Such a Pod is re-injected (every part nixuv wrote is rewritten for `plan`): its
/// old parts would give the app an env that nothing builds.
pub fn injected_for_another_env(pod: &PodView, plan: &EnvPlan) -> bool {
    let other =
        |c: &pod::ContainerView| c.env_var(ENV_ID).is_some_and(|(_, e)| e.value.as_deref() != Some(plan.id.as_str()));
    pod.annotation(ANN_ENV) != Some(plan.id.as_str())
        || pod.init_containers().iter().any(|c| c.name == INIT_CONTAINER && (other(c) || c.env_var(ENV_ID).is_none()))
        || pod.containers().iter().any(other)
}

/// Names nixuv adds that a Pod not injected by nixuv must not already use.
pub fn conflicts(pod: &PodView) -> Result<(), Denial> {
    for v in pod.volumes() {
        if is_nixuv_volume(&v.name) {
            return Err(Denial::conflict(format!(
                "spec.volumes: a volume named {:?} already exists; nixuv adds its own and would conflict",
                v.name
            )));
        }
    }
    let named = |field: &str, mut names: Vec<&str>| -> Result<(), Denial> {
        match names.iter_mut().find(|n| **n == INIT_CONTAINER) {
            Some(n) => Err(Denial::conflict(format!(
                "spec.{field}: a container named {n:?} already exists; nixuv adds its own and would conflict"
            ))),
            None => Ok(()),
        }
    };
    named("initContainers", pod.init_containers().iter().map(|c| c.name.as_str()).collect())?;
    named("containers", pod.containers().iter().map(|c| c.name.as_str()).collect())?;
    named("ephemeralContainers", pod.ephemeral_containers().iter().map(|c| c.name.as_str()).collect())?;
    // NIXUV_ENV marks nixuv's own output: set on any container of a new Pod (a target or not), it
    // would make the next decision take the Pod for a stale injection and rewrite it.
    if let Some(c) = pod.containers().iter().find(|c| c.env_var(ENV_ID).is_some()) {
        return Err(Denial::conflict(TargetVar::EnvId.conflict(&c.name)));
    }
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
pub fn own_store_mounts(pod: &PodView, cfg: &Config, already: bool) -> Result<(), Denial> {
    let storage = &cfg.file.storage;
    for v in pod.volumes() {
        if already && Ecosystem::of_volume(&v.name).is_some() {
            continue;
        }
        if let Some(claim) = &v.persistent_volume_claim {
            if Ecosystem::ALL.iter().any(|e| claim.claim_name == storage.claim(*e)) {
                return Err(Denial::policy(format!(
                    "spec.volumes[{:?}]: PersistentVolumeClaim {:?} is one of nixuv's shared stores; a Pod may not mount it itself (nixuv mounts it read-only into the app and writes it only from {INIT_CONTAINER})",
                    v.name, claim.claim_name
                )));
            }
        }
    }
    if already {
        // nixuv's own store volumes are written only by nixuv-init: any other container (a sidecar
        // nixuv does not target included) mounting them must do so read-only.
        for c in pod.containers().iter().chain(pod.init_containers()).filter(|c| c.name != INIT_CONTAINER) {
            for m in c.volume_mounts.as_deref().unwrap_or(&[]) {
                if Ecosystem::of_volume(&m.name).is_some() && m.read_only != Some(true) {
                    return Err(Denial::policy(format!(
                        "spec.containers[{:?}].volumeMounts: volume {:?} is one of nixuv's shared stores and only {INIT_CONTAINER} may write it; mount it with readOnly: true",
                        c.name, m.name
                    )));
                }
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
pub fn container_conflicts(c: &pod::ContainerView, plan: &EnvPlan, reinject: bool) -> Result<(), Denial> {
    for m in c.volume_mounts.as_deref().unwrap_or(&[]) {
        if reinject && Ecosystem::of_volume(&m.name).is_some() {
            // nixuv's own mounts, replaced by the re-injection.
            continue;
        }
        for ours in Ecosystem::ALL.map(Ecosystem::target_mount) {
            if overlaps(&m.mount_path, ours) {
                return Err(Denial::conflict(format!(
                    "spec.containers[{:?}].volumeMounts: {:?} (volume {:?}) overlaps nixuv's mount at {ours:?}",
                    c.name, m.mount_path, m.name
                )));
            }
        }
        if is_nixuv_volume(&m.name) {
            return Err(Denial::conflict(format!(
                "spec.containers[{:?}].volumeMounts: volume {:?} is reserved for nixuv",
                c.name, m.name
            )));
        }
    }
    // NIXUV_ENV is checked by the caller: it also says whether the container is done.
    for v in TargetVar::ALL.into_iter().filter(|v| v.set_for(plan) && *v != TargetVar::EnvId) {
        let Some((_, e)) = c.env_var(v.name()) else { continue };
        let refused = match v.prepends() {
            // nixuv puts its entries in front of a value, which it cannot do to a reference.
            true => e.value_from.is_some(),
            // A value nixuv owns whole: only its own, on a re-injection, may be there.
            false => !(reinject && e.value.as_deref().is_some_and(|x| v.is_ours(x))),
        };
        if refused {
            return Err(Denial::conflict(v.conflict(&c.name)));
        }
    }
    Ok(())
}
