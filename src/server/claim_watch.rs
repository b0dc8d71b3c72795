//! The server's [`Claims`]: watch caches of PVCs and StorageClasses (kube reflectors, one list
//! and a watch each for the whole cluster, never a GET per request), trimmed to the fields the
//! decision reads.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};

use crate::claims::{ClaimState, Claims};

/// The annotation the scheduler sets on a claim of a `WaitForFirstConsumer` class once a Pod
/// that uses it has a node: from then on the provisioner is expected to bind it.
const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

/// How long a claim may stay Pending while its volume is being provisioned before it is taken
/// to be one that cannot bind (a class without ReadWriteMany, a quota, a missing provisioner).
pub const BIND_GRACE: Duration = Duration::from_secs(60);

/// The state of a claim given its class's `volumeBindingMode` (`None`: class unknown). Pending is
/// normal for a `WaitForFirstConsumer` class until a Pod is scheduled with it, so only a claim
/// that should have bound by now and has not is `Unbindable`: Pending longer than
/// [`BIND_GRACE`] with an `Immediate` class (or no class: nothing will provision it), or after
/// the scheduler picked a node for it.
pub fn claim_state(pvc: &PersistentVolumeClaim, binding_mode: Option<&str>, now: Timestamp) -> ClaimState {
    let phase = pvc.status.as_ref().and_then(|s| s.phase.as_deref());
    if phase != Some("Pending") {
        return ClaimState::Present;
    }
    let created = pvc.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let overdue = created.is_some_and(|c| now.duration_since(c).as_secs() >= BIND_GRACE.as_secs() as i64);
    let selected = pvc.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(SELECTED_NODE));
    let should_have_bound = match binding_mode {
        Some("WaitForFirstConsumer") => selected,
        // Immediate, or no (known) class: nothing waits for a consumer.
        _ => true,
    };
    if overdue && should_have_bound {
        ClaimState::Unbindable
    } else {
        ClaimState::Present
    }
}

/// Keeps only what [`claim_state`] reads: thousands of claims stay a few hundred bytes each.
fn trim_claim(pvc: &mut PersistentVolumeClaim) {
    let meta = pvc.meta_mut();
    meta.managed_fields = None;
    meta.labels = None;
    meta.owner_references = None;
    meta.finalizers = None;
    meta.annotations = meta.annotations.take().and_then(|a| {
        let kept: BTreeMap<String, String> = a.into_iter().filter(|(k, _)| k == SELECTED_NODE).collect();
        (!kept.is_empty()).then_some(kept)
    });
    if let Some(spec) = pvc.spec.as_mut() {
        let class = spec.storage_class_name.take();
        *spec = Default::default();
        spec.storage_class_name = class;
    }
    if let Some(status) = pvc.status.as_mut() {
        let phase = status.phase.take();
        *status = Default::default();
        status.phase = phase;
    }
}

fn trim_class(sc: &mut StorageClass) {
    let meta = sc.meta_mut();
    meta.managed_fields = None;
    meta.annotations = None;
    meta.labels = None;
    sc.parameters = None;
    sc.mount_options = None;
}

/// Runs a reflector's stream, logging its errors (kube retries with backoff; the store keeps its
/// last contents meanwhile).
fn drive<S, T, E>(stream: S, what: &'static str)
where
    S: Stream<Item = Result<T, E>> + Send + 'static,
    E: std::fmt::Display,
{
    tokio::spawn(async move {
        futures_util::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            if let Err(e) = ev {
                tracing::warn!(error = %e, "{what} watch failed; retrying");
            }
        }
    });
}

/// Watch caches of the cluster's PVCs and StorageClasses.
pub struct ClaimCache {
    claims: Store<PersistentVolumeClaim>,
    classes: Store<StorageClass>,
    synced: Arc<AtomicBool>,
}

impl ClaimCache {
    /// Starts the reflectors. Until both first lists complete every lookup is `Unknown`.
    pub fn start(client: Client) -> Arc<Self> {
        let (claims, writer) = reflector::store();
        let api: Api<PersistentVolumeClaim> = Api::all(client.clone());
        let stream = watcher(api, watcher::Config::default()).default_backoff().modify(trim_claim).reflect(writer);
        drive(stream.applied_objects(), "PersistentVolumeClaim");
        let (classes, writer) = reflector::store();
        let api: Api<StorageClass> = Api::all(client);
        let stream = watcher(api, watcher::Config::default()).default_backoff().modify(trim_class).reflect(writer);
        drive(stream.applied_objects(), "StorageClass");
        let synced = Arc::new(AtomicBool::new(false));
        let (c, s, flag) = (claims.clone(), classes.clone(), Arc::clone(&synced));
        tokio::spawn(async move {
            if c.wait_until_ready().await.is_ok() && s.wait_until_ready().await.is_ok() {
                flag.store(true, Ordering::Relaxed);
                tracing::info!(claims = c.len(), classes = s.len(), "PersistentVolumeClaim cache synced");
            }
        });
        Arc::new(Self { claims, classes, synced })
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }
}

impl Claims for ClaimCache {
    fn state(&self, namespace: &str, name: &str) -> ClaimState {
        if !self.is_synced() {
            return ClaimState::Unknown;
        }
        let Some(pvc) = self.claims.get(&ObjectRef::new(name).within(namespace)) else {
            return ClaimState::Missing;
        };
        let class = pvc.spec.as_ref().and_then(|s| s.storage_class_name.clone()).unwrap_or_default();
        let mode = (!class.is_empty())
            .then(|| self.classes.get(&ObjectRef::new(&class)))
            .flatten()
            .and_then(|sc| sc.volume_binding_mode.clone());
        claim_state(&pvc, mode.as_deref(), Timestamp::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pvc(phase: &str, age_secs: i64, class: &str, selected: bool) -> PersistentVolumeClaim {
        let now = Timestamp::now();
        let mut v = serde_json::json!({
            "metadata": {"name": "c", "namespace": "n",
                         "creationTimestamp": (now - k8s_openapi::jiff::SignedDuration::from_secs(age_secs)).to_string()},
            "spec": {"storageClassName": class},
            "status": {"phase": phase}
        });
        if selected {
            v["metadata"]["annotations"] = serde_json::json!({SELECTED_NODE: "node-1"});
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn only_a_claim_that_should_have_bound_by_now_is_unbindable() {
        let now = Timestamp::now();
        let state = |p: &PersistentVolumeClaim, mode: Option<&str>| claim_state(p, mode, now);
        assert_eq!(state(&pvc("Bound", 3600, "nfs", false), Some("Immediate")), ClaimState::Present);
        // Provisioning takes a moment: not yet.
        assert_eq!(state(&pvc("Pending", 5, "nfs", false), Some("Immediate")), ClaimState::Present);
        assert_eq!(state(&pvc("Pending", 300, "nfs", false), Some("Immediate")), ClaimState::Unbindable);
        // An unknown class, or none: nothing will provision it.
        assert_eq!(state(&pvc("Pending", 300, "gone", false), None), ClaimState::Unbindable);
        assert_eq!(state(&pvc("Pending", 300, "", false), None), ClaimState::Unbindable);
        // WaitForFirstConsumer: Pending is normal until a Pod is scheduled with it...
        assert_eq!(state(&pvc("Pending", 300, "standard", false), Some("WaitForFirstConsumer")), ClaimState::Present);
        // ...and a failure once the scheduler chose a node and nothing bound it.
        assert_eq!(state(&pvc("Pending", 300, "standard", true), Some("WaitForFirstConsumer")), ClaimState::Unbindable);
        // Trimming keeps what the decision reads.
        let mut p = pvc("Pending", 300, "standard", true);
        p.metadata.labels = Some([("a".to_string(), "b".to_string())].into());
        trim_claim(&mut p);
        assert!(p.metadata.labels.is_none());
        assert_eq!(state(&p, Some("WaitForFirstConsumer")), ClaimState::Unbindable);
    }
}
