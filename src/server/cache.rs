//! A bounded cache of `/mutate` answers for byte-identical Pods.
//!
//! The API server runs mutating admission before it generates a name, so every replica a
//! ReplicaSet, Job or StatefulSet controller creates from one template arrives as the same object
//! bytes; only the request uid differs. The decision is a pure function of the object, the
//! request namespace, the config and the existence of the two claims, so those are the key (the
//! object compared byte for byte, never by hash alone) and the answer is kept serialised
//! ([`Prepared`]) with what the log line needs.
//!
//! Bounded by bytes (keys + answers) with quick_cache's S3-FIFO eviction; objects larger than
//! [`MAX_OBJECT`] are not kept. A reloaded config has a new generation, so old entries are never
//! hit again and age out.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use quick_cache::{Equivalent, Weighter};

use crate::inject::Outcome;
use crate::inject::StoreClaims;
use crate::review::Prepared;

/// Objects above this size are decided every time (the API server sends Pods of a few KB).
pub const MAX_OBJECT: usize = 64 * 1024;

/// What a cached decision answers and logs.
#[derive(Debug)]
pub struct Answer {
    pub prepared: Prepared,
    pub outcome: Outcome,
    pub env_id: Option<String>,
    pub message: Option<String>,
}

/// Everything the decision depends on.
#[derive(Debug, PartialEq, Eq)]
pub struct Key {
    generation: u64,
    claims: StoreClaims,
    namespace: Box<str>,
    object: Box<[u8]>,
}

/// A borrowed [`Key`], for lookups without copying the object.
#[derive(Debug, Clone, Copy)]
pub struct KeyRef<'a> {
    pub generation: u64,
    pub claims: StoreClaims,
    pub namespace: &'a str,
    pub object: &'a [u8],
}

impl KeyRef<'_> {
    fn to_owned(self) -> Key {
        Key {
            generation: self.generation,
            claims: self.claims,
            namespace: self.namespace.into(),
            object: self.object.into(),
        }
    }
}

// `Key` and `KeyRef` must hash alike: both hash the same fields in the same order.
fn hash_parts<H: Hasher>(h: &mut H, generation: u64, claims: &StoreClaims, namespace: &str, object: &[u8]) {
    generation.hash(h);
    claims.hash(h);
    namespace.hash(h);
    object.hash(h);
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, h: &mut H) {
        hash_parts(h, self.generation, &self.claims, &self.namespace, &self.object)
    }
}

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        hash_parts(h, self.generation, &self.claims, self.namespace, self.object)
    }
}

impl Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, k: &Key) -> bool {
        self.generation == k.generation
            && self.claims == k.claims
            && self.namespace == &*k.namespace
            && self.object == &*k.object
    }
}

#[derive(Clone)]
struct Bytes;

impl Weighter<Key, Arc<Answer>> for Bytes {
    fn weight(&self, k: &Key, v: &Arc<Answer>) -> u64 {
        (k.object.len() + k.namespace.len() + v.prepared.len() + 128) as u64
    }
}

pub struct DecisionCache {
    inner: Option<quick_cache::sync::Cache<Key, Arc<Answer>, Bytes>>,
}

impl DecisionCache {
    /// A cache holding about `max_bytes` of keys and answers; 0 disables it.
    pub fn new(max_bytes: u64) -> Self {
        let inner = (max_bytes > 0).then(|| {
            // ~8 KB per entry for a typical controller-made Pod and its patch.
            let items = (max_bytes / 8192).max(16) as usize;
            quick_cache::sync::Cache::with_weighter(items, max_bytes, Bytes)
        });
        DecisionCache { inner }
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    pub fn get(&self, key: KeyRef<'_>) -> Option<Arc<Answer>> {
        self.inner.as_ref()?.get(&key)
    }

    pub fn insert(&self, key: KeyRef<'_>, answer: Arc<Answer>) {
        if let Some(c) = &self.inner {
            if key.object.len() <= MAX_OBJECT {
                c.insert(key.to_owned(), answer);
            }
        }
    }

    /// Entries and their weight in bytes.
    pub fn usage(&self) -> (usize, u64) {
        self.inner.as_ref().map_or((0, 0), |c| (c.len(), c.weight()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::ClaimState;
    use crate::inject::{Decision, Denial};

    const PRESENT: StoreClaims = StoreClaims { nix: ClaimState::Present, uv: ClaimState::Present };

    fn answer(msg: &str) -> Arc<Answer> {
        Arc::new(Answer {
            prepared: Prepared::new(Decision::from(Denial::invalid(msg)).to_response()),
            outcome: Outcome::Denied,
            env_id: None,
            message: Some(msg.into()),
        })
    }

    fn key<'a>(generation: u64, claims: StoreClaims, ns: &'a str, obj: &'a [u8]) -> KeyRef<'a> {
        KeyRef { generation, claims, namespace: ns, object: obj }
    }

    #[test]
    fn every_part_of_the_key_counts() {
        let c = DecisionCache::new(1 << 20);
        let p = PRESENT;
        c.insert(key(1, p, "a", b"{}"), answer("one"));
        assert_eq!(c.get(key(1, p, "a", b"{}")).unwrap().message.as_deref(), Some("one"));
        assert!(c.get(key(2, p, "a", b"{}")).is_none(), "config generation");
        assert!(
            c.get(key(1, StoreClaims { nix: ClaimState::Present, uv: ClaimState::Missing }, "a", b"{}")).is_none(),
            "claims"
        );
        assert!(c.get(key(1, p, "b", b"{}")).is_none(), "namespace");
        assert!(c.get(key(1, p, "a", b"{ }")).is_none(), "object bytes");
        assert!(c.get(key(1, p, "", b"a{}")).is_none(), "no ambiguity between namespace and object");
    }

    #[test]
    fn bounded_and_switchable() {
        let off = DecisionCache::new(0);
        off.insert(key(1, PRESENT, "a", b"{}"), answer("x"));
        assert!(!off.enabled() && off.get(key(1, PRESENT, "a", b"{}")).is_none());

        let c = DecisionCache::new(64 * 1024);
        let big = vec![b' '; MAX_OBJECT + 1];
        c.insert(key(1, PRESENT, "a", &big), answer("big"));
        assert_eq!(c.usage().0, 0, "objects over MAX_OBJECT are not kept");
        for i in 0..1000u32 {
            let obj = format!("{{\"i\":{i}}}");
            c.insert(key(1, PRESENT, "a", obj.as_bytes()), answer("x"));
        }
        let (n, bytes) = c.usage();
        assert!(n > 0 && bytes <= 64 * 1024, "{n} entries, {bytes} bytes");
    }
}
