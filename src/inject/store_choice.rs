//! Which kind of store each ecosystem's volume is for one Pod ([`StoreKind`]): emptyDir when the
//! config says so, else the namespace's claim when it is there (an emptyDir, with a warning that
//! says why, when it is missing or cannot bind).

use crate::claims::{ClaimState, Claims};
use crate::config::{Config, StorageMode};
use crate::ecosystem::{PerEcosystem, StoreKind};

/// The states of the store claims in a namespace, as a decision reads them. Exported so that
/// whoever caches decisions keys them on exactly what the decision used.
pub type StoreClaims = PerEcosystem<ClaimState>;

/// The kind of each ecosystem's store volume for one Pod.
pub type StoreVolumes = PerEcosystem<StoreKind>;

/// Where a decision gets the claims' states: asked of a [`Claims`] (a watch cache; preview assumes
/// them present), or known already (a cache key was built from them) and carried by value.
#[derive(Clone, Copy)]
pub enum ClaimStates<'a> {
    Ask(&'a dyn Claims),
    /// The claims' states known; env images still asked of the [`Claims`].
    Known(StoreClaims, &'a dyn Claims),
}

impl ClaimStates<'_> {
    /// [`Claims::env_image`] of whichever [`Claims`] this holds.
    pub fn env_image(&self, id: &str) -> Option<std::sync::Arc<str>> {
        match self {
            ClaimStates::Ask(c) | ClaimStates::Known(_, c) => c.env_image(id),
        }
    }
}

/// The claims' states a decision in `ns` reads: all present in `emptyDir` mode (no claim is used),
/// else as `claims` says.
pub fn store_claims(cfg: &Config, ns: &str, claims: &dyn Claims) -> StoreClaims {
    let storage = &cfg.file.storage;
    if storage.mode == StorageMode::EmptyDir {
        return PerEcosystem::from_fn(|_| ClaimState::Present);
    }
    PerEcosystem::from_fn(|e| claims.state(ns, storage.claim(e)))
}

/// The kind of each store volume, with warnings for the fallbacks.
pub fn choose(cfg: &Config, ns: &str, claims: ClaimStates<'_>, warnings: &mut Vec<String>) -> StoreVolumes {
    let storage = &cfg.file.storage;
    if storage.mode == StorageMode::EmptyDir {
        return PerEcosystem::from_fn(|_| StoreKind::EmptyDir);
    }
    let states = match claims {
        ClaimStates::Ask(c) => store_claims(cfg, ns, c),
        ClaimStates::Known(s, _) => s,
    };
    PerEcosystem::from_fn(|e| {
        let (vol, claim) = (e.volume(), storage.claim(e));
        match states[e] {
            ClaimState::Present => StoreKind::Claim,
            ClaimState::Missing => {
                warnings.push(format!(
                    "nixuv: PersistentVolumeClaim {claim:?} not found in namespace {ns:?}; volume {vol:?} is an emptyDir, so this Pod builds its env alone"
                ));
                StoreKind::EmptyDir
            }
            ClaimState::Unbindable => {
                warnings.push(format!(
                    "nixuv: PersistentVolumeClaim {claim:?} in namespace {ns:?} is Pending when it should have bound (its storage class cannot provide it: ReadWriteMany? a quota?); volume {vol:?} is an emptyDir, so this Pod builds its env alone (docs/troubleshooting.md)"
                ));
                StoreKind::EmptyDir
            }
            ClaimState::Unknown => {
                warnings.push(format!(
                    "nixuv: could not check PersistentVolumeClaim {claim:?} (the API has not answered yet); using it as configured"
                ));
                StoreKind::Claim
            }
        }
    })
}
