//! The image store as the webhook sees it: a watch cache of the cluster's `NixuvEnv`s (a kube
//! reflector: one list and a watch, never an API call on the admission path), the
//! [`Claims`] that answers which envs have a Ready image, and the requests for envs that have
//! none yet (created in the background, once each, never for a dry run).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use kube::api::PostParams;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};

use crate::claims::{ClaimState, Claims};
use crate::envid::EnvId;
use crate::imagestore::{NixuvEnv, NixuvEnvSpec};

/// The most env ids remembered as requested; beyond it the set starts afresh (a request for an
/// env that exists is a 409, answered at no cost).
const MAX_REQUESTED: usize = 10_000;

/// The watch cache of `NixuvEnv`s.
pub struct EnvCache {
    store: Store<NixuvEnv>,
    synced: Arc<AtomicBool>,
    /// Bumped on every change seen: decisions cached under another value are made again.
    version: Arc<AtomicU64>,
    requested: Mutex<HashSet<EnvId>>,
    client: Client,
}

impl EnvCache {
    pub fn start(client: Client) -> Arc<Self> {
        let (store, writer) = reflector::store();
        let api: Api<NixuvEnv> = Api::all(client.clone());
        let version = Arc::new(AtomicU64::new(1));
        let bump = Arc::clone(&version);
        let stream = watcher(api, watcher::Config::default()).default_backoff().reflect(writer);
        tokio::spawn(async move {
            futures_util::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(_) => {
                        bump.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!(error = %e, "NixuvEnv watch failed; retrying"),
                }
            }
        });
        let synced = Arc::new(AtomicBool::new(false));
        let (s, flag) = (store.clone(), Arc::clone(&synced));
        tokio::spawn(async move {
            if s.wait_until_ready().await.is_ok() {
                flag.store(true, Ordering::Relaxed);
                tracing::info!(envs = s.len(), "NixuvEnv cache synced");
            }
        });
        Arc::new(EnvCache { store, synced, version, requested: Mutex::default(), client })
    }

    /// Changes seen so far (see [`EnvCache::version`]'s field).
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }

    /// The `<repository>@<digest>` of env `id` when its `NixuvEnv` is Ready.
    pub fn ready(&self, id: &str) -> Option<Arc<str>> {
        let env = self.store.get(&ObjectRef::new(id))?;
        env.ready_digest()?;
        env.status.as_ref()?.image.as_deref().map(Arc::from)
    }

    /// Every `NixuvEnv`, from the cache.
    pub fn all(&self) -> Vec<Arc<NixuvEnv>> {
        self.store.state()
    }

    /// Creates `NixuvEnv` `id` in the background unless it exists or was requested before.
    pub fn request(&self, id: EnvId, spec: &Arc<NixuvEnvSpec>) {
        if !self.synced.load(Ordering::Relaxed) || self.store.get(&ObjectRef::new(id.as_str())).is_some() {
            return;
        }
        {
            let mut seen = self.requested.lock().unwrap_or_else(|e| e.into_inner());
            if seen.len() >= MAX_REQUESTED {
                seen.clear();
            }
            if !seen.insert(id) {
                return;
            }
        }
        let api: Api<NixuvEnv> = Api::all(self.client.clone());
        let obj = NixuvEnv::requested(&id, (**spec).clone());
        tokio::spawn(async move {
            match api.create(&PostParams::default(), &obj).await {
                Ok(_) => tracing::info!(env = %id, "NixuvEnv requested: the builder will publish its image"),
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => tracing::warn!(env = %id, error = %e, "could not request the env's image (NixuvEnv)"),
            }
        });
    }
}

/// The claims' states from one cache, env images from the other.
pub struct WithEnvs {
    pub claims: Arc<dyn Claims>,
    pub envs: Arc<EnvCache>,
}

impl Claims for WithEnvs {
    fn state(&self, namespace: &str, name: &str) -> ClaimState {
        self.claims.state(namespace, name)
    }
    fn env_image(&self, id: &str) -> Option<Arc<str>> {
        self.envs.ready(id)
    }
}
