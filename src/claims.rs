//! Whether the configured PersistentVolumeClaims exist in a Pod's namespace. The core asks a
//! [`Claims`]; the server answers from a watch cache of PVC metadata (`server::claims`); preview
//! assumes they exist. Bottom layer: the trait only, no I/O.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClaimState {
    Present,
    Missing,
    /// There, but Pending when it should have bound (its class cannot provide it, a quota):
    /// Pods mounting it would stay Pending.
    Unbindable,
    /// The cache has not synced (API unreachable or still listing).
    Unknown,
}

/// What the cluster says that a decision reads: the store claims' states, and (image store)
/// which envs have a Ready image.
pub trait Claims: Send + Sync {
    fn state(&self, namespace: &str, name: &str) -> ClaimState;
    /// `<repository>@<digest>` of env `id`'s image when its `NixuvEnv` is Ready; `None` when it
    /// is not (or not known: offline, or the watch has not synced).
    fn env_image(&self, _id: &str) -> Option<std::sync::Arc<str>> {
        None
    }
}

/// For offline previews and when the check is off: every claim is taken to exist.
pub struct AssumePresent;

impl Claims for AssumePresent {
    fn state(&self, _: &str, _: &str) -> ClaimState {
        ClaimState::Present
    }
}
