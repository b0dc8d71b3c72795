//! The server's [`Claims`]: a watch cache of PVC metadata (a kube reflector, one list and a
//! watch for the whole cluster, never a GET per request).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};

use crate::claims::{ClaimState, Claims};

/// A watch cache of PVC metadata across the cluster.
pub struct ClaimCache {
    store: Store<PartialObjectMeta<PersistentVolumeClaim>>,
    synced: Arc<AtomicBool>,
}

impl ClaimCache {
    /// Starts the reflector. Until its first list completes every lookup is `Unknown`; watch
    /// errors are retried with backoff (the cache keeps its last contents meanwhile).
    pub fn start(client: Client) -> Arc<Self> {
        // Metadata only: names are all nixuv needs.
        let api: Api<PartialObjectMeta<PersistentVolumeClaim>> = Api::all(client);
        let (store, writer) = reflector::store();
        let synced = Arc::new(AtomicBool::new(false));
        let stream = watcher(api, watcher::Config::default()).default_backoff().reflect(writer).applied_objects();
        tokio::spawn(async move {
            futures_util::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                if let Err(e) = ev {
                    tracing::warn!(error = %e, "PersistentVolumeClaim watch failed; retrying");
                }
            }
        });
        let (s, flag) = (store.clone(), Arc::clone(&synced));
        tokio::spawn(async move {
            if s.wait_until_ready().await.is_ok() {
                flag.store(true, Ordering::Relaxed);
                tracing::info!(claims = s.len(), "PersistentVolumeClaim cache synced");
            }
        });
        Arc::new(Self { store, synced })
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
        match self.store.get(&ObjectRef::new(name).within(namespace)) {
            Some(_) => ClaimState::Present,
            None => ClaimState::Missing,
        }
    }
}
