//! The memo of what a declaration comes to under one config ([`EnvOutcome`]): parsing, policy, the
//! env id and the init container, paid once per distinct declaration rather than once per Pod,
//! bounded by bytes. Keyed on exactly the registry's declaration keys ([`crate::keys`]).

use std::sync::Arc;

use crate::config::Config;
use crate::keys::{KeyKind, ANN_PYTHON};
use crate::plan::{deps, EnvPlan};

use super::decision::Denial;
use super::pod::PodView;
use super::{init_container, policy};

/// A bounded memo of [`EnvOutcome`] by declaration.
pub(crate) struct EnvMemo(quick_cache::sync::Cache<Vec<u8>, Arc<EnvOutcome>, MemoBytes>);

/// An entry's weight: its bytes (key, plan, init container, message), not one per entry, so that
/// a stream of huge distinct declarations cannot hold more than [`EnvMemo::BYTES`].
#[derive(Clone)]
struct MemoBytes;

impl quick_cache::Weighter<Vec<u8>, Arc<EnvOutcome>> for MemoBytes {
    fn weight(&self, key: &Vec<u8>, v: &Arc<EnvOutcome>) -> u64 {
        (key.len() + v.heap_bytes() + 128) as u64
    }
}

impl EnvMemo {
    /// Bytes of memoised declarations kept per injector (a typical one is a few KB: the plan and
    /// the init container).
    const BYTES: u64 = 8 << 20;

    pub(crate) fn new() -> Self {
        EnvMemo(quick_cache::sync::Cache::with_weighter(1024, Self::BYTES, MemoBytes))
    }

    pub(crate) fn weight(&self) -> u64 {
        self.0.weight()
    }

    pub(crate) fn get_or_insert_with(&self, key: &[u8], make: impl FnOnce() -> Arc<EnvOutcome>) -> Arc<EnvOutcome> {
        // quick_cache's own get-or-insert: concurrent first Pods of a declaration compute it once.
        let made: Result<_, std::convert::Infallible> = self.0.get_or_insert_with(key, || Ok(make()));
        made.unwrap_or_else(|never| match never {})
    }
}

/// What a Pod's declarations come to under one config. It depends only on the declarations (see
/// [`declaration_key`]) and the config, so each [`Injector`] memoises it:
/// parsing PEP 508 requirements, the policy, the env id and the init container are then paid once
/// per distinct declaration rather than once per Pod.
#[derive(Debug)]
pub enum EnvOutcome {
    NoDeps,
    Deny(Denial),
    Env {
        plan: Box<EnvPlan>,
        init_container: Arc<init_container::InitText>,
        /// Warnings about the declaration itself (e.g. a nix Python package as a system dep).
        warnings: Vec<String>,
    },
}

impl EnvOutcome {
    /// Heap bytes held (about), for the memo's byte bound.
    pub fn heap_bytes(&self) -> usize {
        match self {
            EnvOutcome::NoDeps => 0,
            EnvOutcome::Deny(d) => d.message.len(),
            EnvOutcome::Env { plan, init_container, warnings } => {
                let warned = warnings.iter().map(|w| w.len() + 24).sum::<usize>();
                let strings = plan.system.iter().chain(&plan.python).map(|s| s.len() + 24).sum::<usize>();
                let tool =
                    plan.tool_env.iter().chain(&plan.secret_env).map(|(k, v)| k.len() + v.len() + 48).sum::<usize>();
                strings + tool + warned + plan.nixpkgs.len() + plan.index_url.len() + init_container.heap_bytes() + 128
            }
        }
    }
}

/// The longest dependency declaration (the dependency annotations and labels together) decided:
/// `maxDeps` items of the longest allowed length fit many times over; anything larger is refused
/// before it is parsed or memoised.
pub const MAX_DECLARATION_BYTES: usize = 64 * 1024;

pub fn env_for(pod: &PodView, cfg: &Config) -> EnvOutcome {
    let declared = match deps::declared(pod.labels(), pod.annotations()) {
        Ok(d) => d,
        Err(e) => return EnvOutcome::Deny(Denial::invalid(e.to_string())),
    };
    if declared.is_empty() {
        return EnvOutcome::NoDeps;
    }
    if let Err(e) = policy::check(&declared, cfg) {
        return EnvOutcome::Deny(Denial::policy(e.to_string()));
    }
    let plan = EnvPlan::new(&declared, cfg.plan_inputs());
    let init_container = init_container::init_container_text(&plan, cfg);
    let warnings = declared
        .system
        .iter()
        .filter_map(|d| {
            let (set, pkg) = d.attr.split_once('.')?;
            (set.starts_with("python") && set.ends_with("Packages")).then(|| {
                format!(
                    "nixuv: system dep {:?} is a nix Python package: it goes on PATH, but the app's Python does not see it; declare it as a Python dep instead ({ANN_PYTHON}: {pkg:?})",
                    d.attr
                )
            })
        })
        .collect();
    EnvOutcome::Env { plan: Box::new(plan), init_container, warnings }
}

/// Everything [`deps::declared`] reads, length-prefixed and tagged so that distinct declarations
/// never share a key: the three annotations (absent differs from empty) and the dependency labels.
pub fn declaration_key(pod: &PodView) -> Vec<u8> {
    let mut key = Vec::with_capacity(256);
    let mut put = |tag: u8, s: &str| {
        key.push(tag);
        key.extend_from_slice(&(s.len() as u64).to_le_bytes());
        key.extend_from_slice(s.as_bytes());
    };
    // Tagged by the key's place in the registry: a value under one key never reads as another's.
    for (tag, k) in crate::keys::KEYS.iter().enumerate().filter(|(_, k)| k.changes_env) {
        let tag = tag as u8;
        match k.kind {
            KeyKind::Annotation => {
                if let Some(v) = pod.annotations().and_then(|a| a.get(k.name)) {
                    put(tag, v);
                }
            }
            KeyKind::Label => {
                if let Some(v) = pod.labels().and_then(|l| l.get(k.name)) {
                    put(tag, v);
                }
            }
            KeyKind::LabelPrefix => {
                for (name, v) in pod.labels().into_iter().flatten().filter(|(name, _)| k.matches(name)) {
                    put(tag, name);
                    put(tag | 0x80, v);
                }
            }
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::Injector;

    #[test]
    fn the_declaration_memo_is_bounded_by_bytes() {
        let inj = Injector::new(Config::default());
        // One valid item, then one too long: denied at once, but the declaration is ~60 KB.
        let many = "x".repeat(60_000);
        for i in 0..400 {
            let pod = serde_json::json!({"metadata": {"labels": {"nixuv.io/inject": "true"},
                "annotations": {"nixuv.io/system-deps": format!("a{i} {many}")}},
                "spec": {"containers": [{"name": "app"}]}});
            let d = inj.decide_pod(&pod.to_string(), Some("ns"));
            assert!(!d.allowed());
        }
        // 400 declarations of ~60 KB each would be 24 MB.
        assert!(inj.memo_bytes() <= 8 << 20, "{}", inj.memo_bytes());
        assert!(inj.memo_bytes() > 4 << 20, "the memo is used: {}", inj.memo_bytes());
    }

    fn pod(ann: &str, labels: &str) -> String {
        format!(
            r#"{{"metadata":{{"labels":{{"nixuv.io/inject":"true"{labels}}},"annotations":{{{ann}}}}},"spec":{{"containers":[{{"name":"a"}}]}}}}"#
        )
    }

    /// A memoised env gives the same decision as a fresh config, and declarations that differ in any
    /// way (absent vs empty, annotation vs label) never share an entry.
    #[test]
    fn memo_agrees_with_a_fresh_config() {
        let shared = Injector::new(Config::default());
        let pods = [
            pod(r#""nixuv.io/python-deps":"rich""#, ""),
            pod(r#""nixuv.io/python-deps":"rich","nixuv.io/python":"3.11""#, ""),
            pod(r#""nixuv.io/python-deps":"""#, ""),
            pod("", ""),
            pod("", r#","python.nixuv.io/rich":"""#),
            pod(r#""nixuv.io/system-deps":"rich""#, ""),
            pod(r#""nixuv.io/system-deps":"r!ch""#, ""),
            pod(r#""nixuv.io/python-deps":"rich""#, ""),
        ];
        let mut ids = Vec::new();
        for p in &pods {
            let memo = shared.decide_pod(p, Some("ns"));
            let fresh = Injector::new(Config::default()).decide_pod(p, Some("ns"));
            assert_eq!(format!("{memo:?}"), format!("{fresh:?}"), "{p}");
            ids.push(memo.env_id().map(ToString::to_string));
        }
        assert_eq!(ids[0], ids[7]);
        assert_ne!(ids[0], ids[1]);
        assert_eq!(ids[0], ids[4], "label and annotation declare the same env");
        assert_ne!(ids[0], ids[5]);
        assert!(ids[2].is_none() && ids[3].is_none() && ids[6].is_none());
        let k = |p: &str| declaration_key(&serde_json::from_str(p).unwrap());
        assert_ne!(k(&pods[2]), k(&pods[3]), "empty differs from absent");
        assert_ne!(k(&pods[0]), k(&pods[4]));
    }
}
