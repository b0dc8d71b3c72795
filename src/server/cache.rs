//! A bounded cache of `/mutate` answers for byte-identical reviews.
//!
//! The API server runs mutating admission before it generates a name, so every replica a
//! ReplicaSet, Job or StatefulSet controller creates from one template arrives as the same review
//! bytes but for the request uid. The key is the whole review without its uid (compared byte for
//! byte, never by hash alone, with where the uid stood) and the config generation; the answer is
//! kept serialised ([`Prepared`]) with the claim states it was decided under and what the log line
//! needs. A review is looked up before it is parsed: its `"uid":"…"` strings are tried as the
//! request uid ([`crate::review::uid_candidates`]), and an entry is only ever made from a review
//! whose uid the parser found at that place. A body equal to such a review except inside one
//! plain JSON string has the same structure, so its request uid is that string, and its answer is
//! the cached one: a replica costs a byte search, a hash and a compare, no JSON parsing.
//!
//! Bounded by bytes (keys + answers) with quick_cache's S3-FIFO eviction; reviews larger than
//! [`MAX_REVIEW`] are not kept. A reloaded config has a new generation, so old entries are never
//! hit again and age out.

use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::sync::Arc;

use quick_cache::{Equivalent, Weighter};

use crate::inject::Outcome;
use crate::inject::StoreClaims;
use crate::review::Prepared;

/// Reviews above this size are decided every time (the API server sends Pods of a few KB).
pub const MAX_REVIEW: usize = 64 * 1024;

/// What a cached decision answers and logs, and what it was decided under.
#[derive(Debug)]
pub struct Answer {
    pub prepared: Prepared,
    pub outcome: Outcome,
    pub env_id: Option<String>,
    pub message: Option<String>,
    /// The review's apiVersion (echoed), namespace and name, and whether it was a dry run.
    pub api_version: &'static str,
    pub namespace: Box<str>,
    pub name: Box<str>,
    pub dry_run: bool,
    /// The claim states the decision was made with: a hit is only used while they still hold.
    pub claims: StoreClaims,
    /// Image store: the `NixuvEnv` changes seen when it was decided (a hit is only used while
    /// none has happened since), and the env to request when its image is not Ready.
    pub envs_version: u64,
    pub request: Option<(crate::envid::EnvId, Arc<crate::imagestore::NixuvEnvSpec>)>,
}

/// Everything the decision depends on.
#[derive(Debug, PartialEq, Eq)]
pub struct Key {
    generation: u64,
    /// Where the uid stood (the review without it is `rest`).
    uid_at: usize,
    rest: Box<[u8]>,
}

/// A borrowed [`Key`]: a review and where its uid stands, for lookups without copying.
#[derive(Debug, Clone)]
pub struct KeyRef<'a> {
    pub generation: u64,
    pub review: &'a [u8],
    pub uid: Range<usize>,
}

impl KeyRef<'_> {
    fn before(&self) -> &[u8] {
        &self.review[..self.uid.start]
    }
    fn after(&self) -> &[u8] {
        &self.review[self.uid.end..]
    }
    fn to_owned(&self) -> Key {
        let mut rest = Vec::with_capacity(self.review.len() - self.uid.len());
        rest.extend_from_slice(self.before());
        rest.extend_from_slice(self.after());
        Key { generation: self.generation, uid_at: self.uid.start, rest: rest.into() }
    }
}

// `Key` and `KeyRef` must hash alike: the same fields, the bytes written in the same two pieces.
fn hash_parts<H: Hasher>(h: &mut H, generation: u64, before: &[u8], after: &[u8]) {
    generation.hash(h);
    before.len().hash(h);
    h.write(before);
    after.len().hash(h);
    h.write(after);
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, h: &mut H) {
        hash_parts(h, self.generation, &self.rest[..self.uid_at], &self.rest[self.uid_at..])
    }
}

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        hash_parts(h, self.generation, self.before(), self.after())
    }
}

impl Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, k: &Key) -> bool {
        self.generation == k.generation
            && self.uid.start == k.uid_at
            && k.rest.len() == self.review.len() - self.uid.len()
            && k.rest[..k.uid_at] == *self.before()
            && k.rest[k.uid_at..] == *self.after()
    }
}

#[derive(Clone)]
struct Bytes;

impl Weighter<Key, Arc<Answer>> for Bytes {
    fn weight(&self, k: &Key, v: &Arc<Answer>) -> u64 {
        (k.rest.len() + v.namespace.len() + v.name.len() + v.prepared.len() + 192) as u64
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

    pub fn get(&self, key: &KeyRef<'_>) -> Option<Arc<Answer>> {
        self.inner.as_ref()?.get(key)
    }

    pub fn insert(&self, key: &KeyRef<'_>, answer: Arc<Answer>) {
        if let Some(c) = &self.inner {
            if key.review.len() <= MAX_REVIEW {
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

    const PRESENT: StoreClaims = StoreClaims { system: ClaimState::Present, python: ClaimState::Present };

    fn answer(msg: &str) -> Arc<Answer> {
        Arc::new(Answer {
            envs_version: 0,
            request: None,
            prepared: Decision::from(Denial::invalid(msg)).prepared(),
            outcome: Outcome::Denied,
            env_id: None,
            message: Some(msg.into()),
            api_version: crate::review::API_V1,
            namespace: "a".into(),
            name: "".into(),
            dry_run: false,
            claims: PRESENT,
        })
    }

    fn key(generation: u64, review: &[u8]) -> KeyRef<'_> {
        let uid = crate::review::uid_candidates(review).next().unwrap();
        KeyRef { generation, review, uid }
    }

    #[test]
    fn everything_but_the_uid_counts() {
        let c = DecisionCache::new(1 << 20);
        c.insert(&key(1, br#"{"request":{"uid":"u1","namespace":"a"}}"#), answer("one"));
        let hit = |g, r: &[u8]| c.get(&key(g, r)).map(|a| a.message.clone().unwrap());
        assert_eq!(hit(1, br#"{"request":{"uid":"u2","namespace":"a"}}"#).as_deref(), Some("one"));
        assert_eq!(hit(1, br#"{"request":{"uid":"a-much-longer-uid","namespace":"a"}}"#).as_deref(), Some("one"));
        assert!(hit(2, br#"{"request":{"uid":"u2","namespace":"a"}}"#).is_none(), "config generation");
        assert!(hit(1, br#"{"request":{"uid":"u2","namespace":"b"}}"#).is_none(), "namespace");
        assert!(hit(1, br#"{"request":{"uid":"u2", "namespace":"a"}}"#).is_none(), "any other byte");
        // The same bytes around another span are another key.
        assert!(hit(1, br#"{"request":{"uid":"","uid":"u1","namespace":"a"}}"#).is_none());
    }

    #[test]
    fn bounded_and_switchable() {
        let off = DecisionCache::new(0);
        off.insert(&key(1, br#"{"uid":"x"}"#), answer("x"));
        assert!(!off.enabled() && off.get(&key(1, br#"{"uid":"x"}"#)).is_none());

        let c = DecisionCache::new(64 * 1024);
        let big = format!(r#"{{"uid":"x","pad":"{}"}}"#, " ".repeat(MAX_REVIEW));
        c.insert(&key(1, big.as_bytes()), answer("big"));
        assert_eq!(c.usage().0, 0, "reviews over MAX_REVIEW are not kept");
        for i in 0..1000u32 {
            let r = format!(r#"{{"uid":"x","i":{i}}}"#);
            c.insert(&key(1, r.as_bytes()), answer("x"));
        }
        let (n, bytes) = c.usage();
        assert!(n > 0 && bytes <= 64 * 1024, "{n} entries, {bytes} bytes");
    }

    #[test]
    fn uid_candidates_are_plain_strings_request_first() {
        let body = br#"{"a":{"uid":"own\"er"},"b":{"uid":"owner"},"request":{"uid":"req","x":1}}"#;
        let spans: Vec<&[u8]> = crate::review::uid_candidates(body).map(|r| &body[r]).collect();
        assert_eq!(spans, [b"req".as_slice(), b"owner"], "escaped strings are never candidates");
        // As pretty-printers and other clients write it, too.
        let body = b"{\n  \"request\": {\n    \"uid\" : \"req\",\n    \"name\": \"uid\"\n  }\n}";
        let spans: Vec<&[u8]> = crate::review::uid_candidates(body).map(|r| &body[r]).collect();
        assert_eq!(spans, [b"req".as_slice()], "a string \"uid\" that is not a key is not a candidate");
    }
}
