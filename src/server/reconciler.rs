//! `nixuv serve --manage-stores`: keeps the shared stores (the two claims and the gc CronJob of
//! [`crate::stores`]) in every namespace labelled `stores.namespaceLabel`, through the
//! Kubernetes API. Server-side apply with field manager `nixuv`, so fields an admin sets on those
//! objects survive; objects of the same name that nixuv does not manage are left alone and
//! reported; claims are never deleted. One replica at a time writes (the holder of the stores
//! Lease, [`super::leader`]); the webhook keeps answering on every replica regardless.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, PersistentVolumeClaim, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{watch, Notify};

use super::claim_watch::claim_state;
use super::metrics::{Metrics, StoreLabels};
use crate::claims::ClaimState;
use crate::config::Config;
use crate::managed::{self, StoreState, FIELD_MANAGER, GC_CRONJOB, MANAGED_BY};

/// A full pass runs this often; between them only the namespaces that changed are reconciled.
const RESYNC: Duration = Duration::from_secs(60);
/// Changed namespaces are reconciled in batches at most this often: a namespace edited 100 times
/// in 10 s is reconciled about 10 times, not 100.
const BATCH_EVERY: Duration = Duration::from_secs(1);

/// What [`Reconciler::apply`] came to.
enum Applied<K> {
    Done(K),
    /// Not applied: the object's state for the namespace (unmanaged, error).
    Not(StoreState),
    /// The lease was lost: nothing more is written.
    NotLeading,
}

impl<K> Applied<K> {
    /// The namespace's state after this object: `None` when this replica stopped leading.
    fn state(self) -> Option<StoreState> {
        match self {
            Applied::Done(_) => Some(StoreState::Ready),
            Applied::Not(s) => Some(s),
            Applied::NotLeading => None,
        }
    }
}

/// What a pass saw.
#[derive(Debug, Default)]
pub struct Summary {
    pub namespaces: BTreeMap<String, StoreState>,
    /// Namespaces whose gc CronJob was removed (they left the selector).
    pub removed: Vec<String>,
}

pub struct Reconciler {
    client: Client,
    recorder: Recorder,
    metrics: Option<Arc<Metrics>>,
    /// `None`: write unconditionally (`--manage-stores-once`).
    leading: Option<watch::Receiver<bool>>,
}

fn namespace_ref(ns: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Namespace".into()),
        name: Some(ns.into()),
        // So that the Event lands in that namespace (`kubectl -n NS get events`).
        namespace: Some(ns.into()),
        ..Default::default()
    }
}

impl Reconciler {
    pub fn new(
        client: Client,
        identity: &str,
        metrics: Option<Arc<Metrics>>,
        leading: Option<watch::Receiver<bool>>,
    ) -> Self {
        let reporter = Reporter { controller: "nixuv".into(), instance: Some(identity.into()) };
        Reconciler { recorder: Recorder::new(client.clone(), reporter), client, metrics, leading }
    }

    fn may_write(&self) -> bool {
        self.leading.as_ref().is_none_or(|l| *l.borrow())
    }

    /// A warning on the namespace: an Event, and a log line.
    async fn report(&self, ns: &str, reason: &str, note: String) {
        tracing::warn!(namespace = %ns, reason, "{note}");
        let ev = Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &namespace_ref(ns)).await {
            tracing::warn!(namespace = %ns, error = %e, "could not record an Event");
        }
    }

    fn set_metric(&self, ns: &str, state: Option<StoreState>) {
        let Some(m) = &self.metrics else { return };
        for s in StoreState::ALL {
            let labels = StoreLabels { namespace: ns.to_string(), state: s.as_str() };
            match state {
                Some(cur) => {
                    m.stores.get_or_create(&labels).set(i64::from(s == cur));
                }
                None => {
                    m.stores.remove(&labels);
                }
            }
        }
    }

    /// One pass over every selected namespace, then the CronJobs of namespaces that left.
    pub async fn pass(&self, cfg: &Config) -> Result<Summary, kube::Error> {
        let (k, v) = cfg.file.stores.label();
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let selected: BTreeSet<String> = namespaces
            .list(&ListParams::default().labels(&format!("{k}={v}")))
            .await?
            .items
            .into_iter()
            .filter(|n| n.metadata.deletion_timestamp.is_none())
            .map(|n| n.name_any())
            .collect();
        let mut summary = Summary::default();
        for ns in &selected {
            if !self.may_write() {
                return Ok(summary);
            }
            let state = self.namespace(ns, cfg).await;
            self.set_metric(ns, Some(state));
            summary.namespaces.insert(ns.clone(), state);
        }
        let cronjobs: Api<CronJob> = Api::all(self.client.clone());
        let managed = format!("{}={},app.kubernetes.io/component=gc", MANAGED_BY.0, MANAGED_BY.1);
        for cj in cronjobs.list(&ListParams::default().labels(&managed)).await?.items {
            let ns = cj.namespace().unwrap_or_default();
            if selected.contains(&ns) || cj.name_any() != GC_CRONJOB || !self.may_write() {
                continue;
            }
            // The namespace left the selector: its gc goes, its claims (built envs, maybe data) stay.
            let api: Api<CronJob> = Api::namespaced(self.client.clone(), &ns);
            match api.delete(GC_CRONJOB, &DeleteParams::default()).await {
                Ok(_) => {
                    tracing::info!(namespace = %ns, "namespace no longer asks for stores: gc CronJob removed, claims kept");
                    self.set_metric(&ns, None);
                    summary.removed.push(ns);
                }
                Err(e) => tracing::warn!(namespace = %ns, error = %e, "could not remove the gc CronJob"),
            }
        }
        Ok(summary)
    }

    /// Reconciles the namespaces in `changed` only: a selected one's stores are applied, one that
    /// left the selector loses its gc CronJob (if nixuv manages one there).
    pub async fn changed(&self, cfg: &Config, changed: BTreeMap<String, bool>) {
        for (ns, selected) in changed {
            if !self.may_write() {
                return;
            }
            if selected {
                let state = self.namespace(&ns, cfg).await;
                self.set_metric(&ns, Some(state));
                continue;
            }
            let api: Api<CronJob> = Api::namespaced(self.client.clone(), &ns);
            let ours = match api.get_opt(GC_CRONJOB).await {
                Ok(Some(cj)) => managed::is_managed(cj.metadata.labels.as_ref()),
                Ok(None) => false,
                Err(e) => {
                    tracing::warn!(namespace = %ns, error = %e, "could not read the gc CronJob");
                    false
                }
            };
            if ours {
                match api.delete(GC_CRONJOB, &DeleteParams::default()).await {
                    Ok(_) => {
                        tracing::info!(namespace = %ns, "namespace no longer asks for stores: gc CronJob removed, claims kept");
                        self.set_metric(&ns, None);
                    }
                    Err(e) => tracing::warn!(namespace = %ns, error = %e, "could not remove the gc CronJob"),
                }
            }
        }
    }

    /// Applies one namespace's claims and CronJob; returns the worst state seen.
    async fn namespace(&self, ns: &str, cfg: &Config) -> StoreState {
        let mut state = StoreState::Ready;
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
        for (name, body) in managed::claims(ns, cfg) {
            let s = match self.apply(&claims, ns, &name, &body, "StoreClaimNotManaged").await {
                Applied::Done(pvc) => self.claim_phase(ns, &name, &pvc).await,
                Applied::Not(s) => s,
                Applied::NotLeading => return state,
            };
            state = state.max(s);
        }
        // The gc's account first: the CronJob names it.
        let [sa, role, binding] = managed::gc_account(ns);
        let applied = [
            self.apply_gc::<ServiceAccount>(ns, &sa).await,
            self.apply_gc::<Role>(ns, &role).await,
            self.apply_gc::<RoleBinding>(ns, &binding).await,
        ];
        for s in applied {
            match s {
                None => return state,
                Some(s) => state = state.max(s),
            }
        }
        match self.apply_gc::<CronJob>(ns, &managed::gc_cronjob(ns, cfg)).await {
            None => state,
            Some(s) => state.max(s),
        }
    }

    /// Applies one of the gc's objects (named [`GC_CRONJOB`]) in `ns`: its state, `None` when this
    /// replica stopped leading.
    async fn apply_gc<K>(&self, ns: &str, body: &serde_json::Value) -> Option<StoreState>
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api = Api::<K>::namespaced(self.client.clone(), ns);
        self.apply(&api, ns, GC_CRONJOB, body, "StoreGcNotManaged").await.state()
    }

    /// Server-side applies `body` as `name`, unless an object of that name that nixuv does not
    /// manage is there (left alone, reported with `reason`) or this replica no longer leads.
    async fn apply<K>(&self, api: &Api<K>, ns: &str, name: &str, body: &serde_json::Value, reason: &str) -> Applied<K>
    where
        K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let kind = K::kind(&());
        match api.get_opt(name).await {
            Err(e) => return Applied::Not(self.failed(ns, &kind, name, &e).await),
            Ok(Some(existing)) if !managed::is_managed(existing.meta().labels.as_ref()) => {
                self.report(
                    ns,
                    reason,
                    format!(
                        "{kind} {name:?} exists and is not managed by nixuv (no {}={} label): left alone, not adopted",
                        MANAGED_BY.0, MANAGED_BY.1
                    ),
                )
                .await;
                return Applied::Not(StoreState::Unmanaged);
            }
            Ok(_) if !self.may_write() => return Applied::NotLeading,
            Ok(_) => {}
        }
        match api.patch(name, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(body)).await {
            Ok(obj) => Applied::Done(obj),
            Err(e) => Applied::Not(self.failed(ns, &kind, name, &e).await),
        }
    }

    async fn failed(&self, ns: &str, kind: &str, name: &str, e: &kube::Error) -> StoreState {
        let why = match e {
            kube::Error::Api(s) if s.code == 409 => {
                " (a field nixuv sets is owned by another field manager: server-side apply conflict)"
            }
            kube::Error::Api(s) if s.code == 403 => " (RBAC: see deploy/overlays/managed-stores)",
            _ => "",
        };
        self.report(ns, "StoreApplyFailed", format!("{kind} {name:?}: {e}{why}")).await;
        StoreState::Error
    }

    /// The state of an applied claim; a Pending one that should have bound is reported.
    async fn claim_phase(&self, ns: &str, name: &str, pvc: &PersistentVolumeClaim) -> StoreState {
        if pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound") {
            return StoreState::Ready;
        }
        let class = pvc.spec.as_ref().and_then(|s| s.storage_class_name.clone()).unwrap_or_default();
        let mode = match class.is_empty() {
            true => None,
            false => Api::<StorageClass>::all(self.client.clone())
                .get_opt(&class)
                .await
                .ok()
                .flatten()
                .and_then(|c| c.volume_binding_mode),
        };
        match claim_state(pvc, mode.as_deref(), Timestamp::now()) {
            ClaimState::Unbindable => {
                self.report(ns, "StoreClaimPending", format!(
                    "PersistentVolumeClaim {name:?} is still Pending (storage class {class:?}): it cannot bind (no ReadWriteMany support? a quota?); Pods here get emptyDir stores meanwhile and build their envs alone (kubectl describe pvc {name})"
                )).await;
                StoreState::Unbindable
            }
            _ => StoreState::Pending,
        }
    }
}

/// `--manage-stores-once`: one pass, printed as `namespace state` lines.
pub async fn once(client: Client, cfg: &Config, identity: &str) -> anyhow::Result<Summary> {
    let r = Reconciler::new(client, identity, None, None);
    Ok(r.pass(cfg).await?)
}

/// `--manage-stores`: elect, then reconcile on every Namespace change and every [`RESYNC`] while
/// leading.
pub fn spawn(
    client: Client,
    config: impl Fn() -> Arc<Config> + Send + Sync + 'static,
    own_namespace: &str,
    identity: String,
    metrics: Arc<Metrics>,
) {
    let cfg = config();
    let election = super::leader::Election {
        name: managed::LEASE_NAME.into(),
        identity: identity.clone(),
        lease_duration: Duration::from_secs(cfg.file.stores.lease_duration_seconds),
        renew_deadline: Duration::from_secs(cfg.file.stores.renew_deadline_seconds),
    };
    let (tx, mut leading) = watch::channel(false);
    let m = Arc::clone(&metrics);
    super::leader::spawn(Api::namespaced(client.clone(), own_namespace), election, tx, move |l| {
        m.stores_leader.set(i64::from(l));
    });
    // The namespaces changed since the last batch, with whether each is selected now. An event
    // for a namespace that neither is nor was selected (a tenant editing its own namespace) is
    // not nixuv's business and changes nothing here.
    let dirty: Arc<std::sync::Mutex<BTreeMap<String, bool>>> = Arc::default();
    let changed = Arc::new(Notify::new());
    let notify = Arc::clone(&changed);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let (dirt, selector) = (Arc::clone(&dirty), cfg.file.stores.label());
    let (key, value) = (selector.0.to_string(), selector.1.to_string());
    tokio::spawn(async move {
        let mut was_selected: BTreeMap<String, bool> = BTreeMap::new();
        let stream = watcher(namespaces, watcher::Config::default()).default_backoff().touched_objects();
        futures_util::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ns) => {
                    let name = ns.name_any();
                    let selected =
                        ns.metadata.deletion_timestamp.is_none() && ns.labels().get(&key).is_some_and(|v| *v == value);
                    let before = was_selected.insert(name.clone(), selected).unwrap_or(false);
                    if selected || before {
                        dirt.lock().unwrap_or_else(|e| e.into_inner()).insert(name, selected);
                        notify.notify_one();
                    }
                }
                Err(e) => tracing::warn!(error = %e, "Namespace watch failed; retrying"),
            }
        }
    });
    let reconciler = Reconciler::new(client, &identity, Some(metrics), Some(leading.clone()));
    tokio::spawn(async move {
        loop {
            while !*leading.borrow_and_update() {
                if leading.changed().await.is_err() {
                    return;
                }
            }
            // A full pass on taking the lead and every RESYNC; in between, only what changed.
            match reconciler.pass(&config()).await {
                Ok(s) => {
                    tracing::debug!(namespaces = s.namespaces.len(), removed = s.removed.len(), "stores reconciled")
                }
                Err(e) => tracing::warn!(error = %e, "stores reconcile pass failed; retrying"),
            }
            dirty.lock().unwrap_or_else(|e| e.into_inner()).clear();
            let resync = tokio::time::Instant::now() + RESYNC;
            loop {
                tokio::select! {
                    _ = changed.notified() => {}
                    _ = tokio::time::sleep_until(resync) => break,
                    r = leading.changed() => if r.is_err() { return } else { break },
                }
                // Let a burst of events gather, then take them as one batch.
                tokio::time::sleep(BATCH_EVERY).await;
                let batch = std::mem::take(&mut *dirty.lock().unwrap_or_else(|e| e.into_inner()));
                tracing::debug!(namespaces = batch.len(), "reconciling changed namespaces");
                reconciler.changed(&config(), batch).await;
            }
        }
    });
}
