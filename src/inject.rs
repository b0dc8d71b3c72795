//! The pure core: an admission request in, a decision out. No I/O, no async, no HTTP types; the
//! webhook (`/mutate`), the preview endpoint and the `nixuv preview` CLI all call
//! [`Injector::decide`] or [`Injector::decide_pod`], so they cannot disagree. The parts: the
//! decision type ([`decision`]), the memo of declarations ([`memo`]), the store a Pod gets
//! ([`store_choice`]), what a Pod may not carry ([`conflicts`]), the variables nixuv sets
//! ([`vars`]), the patch ([`patch`], written as text by [`patch_text`]) and its init container
//! ([`init_container`]), and hints that never change a verdict ([`nearmiss`], [`hints`]).

pub mod conflicts;
#[cfg(test)]
mod decide_tests;
pub mod decision;
pub mod hints;
pub mod image_patch;
pub mod init_container;
pub mod memo;
pub mod nearmiss;
pub(crate) mod optin;
pub mod patch;
pub mod patch_text;
pub mod pod;
pub(crate) mod policy;
pub mod store_choice;
pub mod vars;

use std::sync::Arc;

pub use decision::{Decision, Denial, DenyKind, EnvParts, Outcome, Pass, Verdict};
pub use memo::{EnvOutcome, MAX_DECLARATION_BYTES};
pub use patch_text::PodPatch;
pub use store_choice::{ClaimStates, StoreClaims, StoreVolumes};

use crate::claims::{AssumePresent, Claims};
use crate::config::Config;
use crate::ecosystem::{PerEcosystem, StoreKind};
use crate::keys::*;
use crate::names::*;
use crate::plan::options;
use crate::review::AdmissionRequest;
use memo::EnvMemo;
use pod::PodView;
use vars::TargetVar;

/// A review's object as the core takes it: raw JSON (read here), or a [`PodView`] read in the same
/// pass as the review (`review::decode_as`).
pub trait PodSource {
    fn decide_in(&self, inj: &Injector, namespace: Option<&str>, claims: ClaimStates<'_>) -> Decision;
}

impl PodSource for &serde_json::value::RawValue {
    fn decide_in(&self, inj: &Injector, namespace: Option<&str>, claims: ClaimStates<'_>) -> Decision {
        inj.decide_json(self.get(), namespace, claims)
    }
}

impl PodSource for PodView<'_> {
    fn decide_in(&self, inj: &Injector, namespace: Option<&str>, claims: ClaimStates<'_>) -> Decision {
        inj.decide_at(self, namespace, claims, "metadata")
    }
}

/// The core as owned by whoever serves: the validated config and what is memoised under it.
/// Swapped whole on reload, so the memo can never outlive or disagree with its config.
pub struct Injector {
    config: Config,
    memo: EnvMemo,
    generation: u64,
}

impl std::fmt::Debug for Injector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injector")
            .field("generation", &self.generation)
            .field("memo_bytes", &self.memo.weight())
            .finish()
    }
}

impl Injector {
    pub fn new(config: Config) -> Self {
        static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let generation = GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Injector { config, memo: EnvMemo::new(), generation }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Unique per injector in this process: caches of decisions key on it, so a reloaded config
    /// never serves a decision made under the old one.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Bytes held by the per-declaration memo, as weighed.
    pub fn memo_bytes(&self) -> u64 {
        self.memo.weight()
    }

    /// The webhook's decision for one admission request, its object as raw JSON or already read.
    pub fn decide<O: PodSource>(&self, req: &AdmissionRequest<'_, O>, claims: &dyn Claims) -> Decision {
        self.decide_in(req, ClaimStates::Ask(claims))
    }

    fn decide_in<O: PodSource>(&self, req: &AdmissionRequest<'_, O>, claims: ClaimStates<'_>) -> Decision {
        if !optin::is_pod_create(req) {
            return Decision::pass(Pass::Skipped);
        }
        let Some(object) = &req.object else { return Decision::pass(Pass::Skipped) };
        object.decide_in(self, req.namespace.as_deref(), claims)
    }

    /// The decision for a Pod given as JSON text, in `namespace` (the request's; a Pod made by a
    /// controller often has none in its metadata), with the store claims assumed present.
    pub fn decide_pod(&self, pod_json: &str, namespace: Option<&str>) -> Decision {
        self.decide_pod_with(pod_json, namespace, &AssumePresent)
    }

    /// [`Self::decide_pod`], with the claims' states from `claims`.
    pub fn decide_pod_with(&self, pod_json: &str, namespace: Option<&str>, claims: &dyn Claims) -> Decision {
        self.decide_json(pod_json, namespace, ClaimStates::Ask(claims))
    }

    fn decide_json(&self, pod_json: &str, namespace: Option<&str>, claims: ClaimStates<'_>) -> Decision {
        match serde_json::from_str::<PodView>(pod_json) {
            Ok(pod) => self.decide_at(&pod, namespace, claims, "metadata"),
            Err(e) => Denial::invalid(format!("request.object is not a valid Pod: {e}")).into(),
        }
    }

    /// The claims' states a decision in `ns` reads (a decision cache keys on them).
    pub fn store_claims(&self, ns: &str, claims: &dyn Claims) -> StoreClaims {
        store_choice::store_claims(&self.config, ns, claims)
    }

    /// [`Self::decide`] with the store claims' states given (as a cache key was built from them,
    /// with [`Self::store_claims`]), so that the decision and its key cannot disagree.
    pub fn decide_with_states<O: PodSource>(
        &self,
        req: &AdmissionRequest<'_, O>,
        states: StoreClaims,
        claims: &dyn Claims,
    ) -> Decision {
        self.decide_in(req, ClaimStates::Known(states, claims))
    }

    pub fn decide_view(&self, pod: &PodView, namespace: Option<&str>, claims: &dyn Claims) -> Decision {
        self.decide_at(pod, namespace, ClaimStates::Ask(claims), "metadata")
    }

    /// [`Self::decide_view`] for a Pod whose metadata sits at `at` in the object the user wrote
    /// (a workload's `spec.template.metadata`), so that warnings name the field to change there.
    pub fn decide_view_at(&self, pod: &PodView, namespace: Option<&str>, claims: &dyn Claims, at: &str) -> Decision {
        self.decide_at(pod, namespace, ClaimStates::Ask(claims), at)
    }

    fn decide_at(&self, pod: &PodView, namespace: Option<&str>, claims: ClaimStates<'_>, at: &str) -> Decision {
        let mut d = match self.verdict(pod, namespace, claims) {
            Ok(d) => d,
            Err(denial) => denial.into(),
        };
        // Near misses never change the verdict; they say what to change (docs/troubleshooting.md).
        if nearmiss::mentions_nixuv(pod.labels(), pod.annotations()) {
            let mut near = nearmiss::metadata_warnings(at, pod.labels(), pod.annotations());
            near.append(&mut d.warnings);
            d.warnings = near;
        }
        d
    }

    fn verdict(&self, pod: &PodView, namespace: Option<&str>, claims: ClaimStates<'_>) -> Result<Decision, Denial> {
        let cfg = &self.config;
        if !optin::opted_in(pod) {
            return Ok(Decision::pass(Pass::NotOptedIn));
        }
        let ns =
            namespace.filter(|n| !n.is_empty()).or_else(|| pod.metadata.as_ref()?.namespace.as_deref()).unwrap_or("");
        if cfg.excluded_namespaces.iter().any(|n| n == ns) {
            let mut d = Decision::pass(Pass::Excluded);
            d.warnings.push(format!(
                "nixuv: namespace {ns:?} is excluded by nixuv's config (excludeNamespaces, or nixuv's own namespace); nothing injected"
            ));
            return Ok(d);
        }
        let count = pod.containers().len() + pod.init_containers().len();
        if count > cfg.file.max_containers {
            return Err(Denial::invalid(format!(
                "spec.containers and spec.initContainers: {count} containers, more than maxContainers ({})",
                cfg.file.max_containers
            )));
        }
        let key = memo::declaration_key(pod);
        if key.len() > MAX_DECLARATION_BYTES {
            return Err(Denial::invalid(format!(
                "the dependency declaration ({}) is {} bytes, over the limit of {MAX_DECLARATION_BYTES}",
                crate::keys::declaration_list(false),
                key.len()
            )));
        }
        let env = self.memo.get_or_insert_with(&key, || Arc::new(memo::env_for(pod, cfg)));
        let declaration_warnings = match &*env {
            EnvOutcome::Env { warnings, .. } => warnings.clone(),
            _ => Vec::new(),
        };
        let (plan, init) = match &*env {
            EnvOutcome::Env { plan, init_container, .. } => (plan, init_container),
            EnvOutcome::Deny(denial) => return Err(denial.clone()),
            EnvOutcome::NoDeps => {
                let mut d = Decision::pass(Pass::NoDeps);
                d.warnings.push(format!(
                    "nixuv: Pod is labelled {LABEL_INJECT}=true but declares no dependencies ({}); nothing injected",
                    crate::keys::declaration_list(true)
                ));
                return Ok(d);
            }
        };
        let options = options::parse(pod.annotations()).map_err(|e| Denial::invalid(e.to_string()))?;
        let targets = optin::targets(pod, options.containers.as_deref(), cfg)?;
        let already = pod.annotation(ANN_STATUS) == Some(STATUS_INJECTED);
        // nixuv's own earlier output for another env (made from `nixuv preview`, copied, or
        // its dependencies edited since): rewritten for this env rather than trusted.
        let reinject = already && conflicts::injected_for_another_env(pod, plan);
        if !already {
            conflicts::conflicts(pod)?;
        }
        conflicts::own_store_mounts(pod, cfg, already)?;
        let containers = pod.containers();
        let mut todo = Vec::with_capacity(targets.len());
        for idx in targets {
            let c = &containers[idx];
            match c.env_var(ENV_ID) {
                Some((_, e)) if already && !reinject && e.value.as_deref() == Some(plan.id.as_str()) => continue,
                Some(_) if reinject => {}
                Some(_) => return Err(Denial::conflict(TargetVar::EnvId.conflict(&c.name))),
                None => {}
            }
            conflicts::container_conflicts(c, plan, reinject)?;
            todo.push(idx);
        }
        let mut warnings = declaration_warnings;
        let has_image_volume = already && pod.volumes().iter().any(|v| v.name == crate::imagestore::VOL_ENV);
        if has_image_volume {
            // The image injection is whole or nothing: there is nothing to add to it, and a Pod
            // whose dependencies moved on from its image is not rewritten.
            if reinject {
                return Err(Denial::conflict(format!(
                    "the Pod carries nixuv's image-store injection for env {:?}, but its dependencies now give env {:?}: create it from its original manifest (without volume {:?}, its mounts and the {ANN_STATUS:?} annotation)",
                    pod.annotation(ANN_ENV).unwrap_or(""),
                    plan.id,
                    crate::imagestore::VOL_ENV
                )));
            }
            let env = Some(EnvParts {
                init_container: Arc::clone(init),
                stores: PerEcosystem::from_fn(|_| StoreKind::Claim),
                image: None,
                request: None,
            });
            return Ok(Decision { verdict: Verdict::Unchanged { env_id: plan.id }, env, warnings, notes: Vec::new() });
        }
        let mut notes = Vec::new();
        let mut request = None;
        let image = match &cfg.image_repository {
            Some(repo) if !already => match claims.env_image(plan.id.as_str()) {
                Some(reference) => {
                    notes.push(format!(
                        "env {:?} is a Ready image ({reference}): mounted read-only from volume {:?}, no init container",
                        plan.id,
                        crate::imagestore::VOL_ENV
                    ));
                    Some(reference)
                }
                None => {
                    notes.push(format!(
                        "env {:?} is not a Ready image in {}/{} (an offline preview cannot know it is): this Pod gets nixuv-init and the stores, and the image is requested (NixuvEnv {:?})",
                        plan.id, repo.registry, repo.path, plan.id
                    ));
                    request = Some(Arc::new(crate::imagestore::NixuvEnvSpec::of_plan(plan)));
                    None
                }
            },
            _ => None,
        };
        let mut targets = Vec::with_capacity(todo.len());
        for idx in todo {
            let c = &containers[idx];
            let (target, defaulted) = patch::Target::new(idx, options.image_path, c, cfg);
            targets.push(target);
            if let Some(image) = c.image.as_deref() {
                hints::python_image_mismatch(image, &c.name, plan, &mut warnings, &mut notes);
            }
            if defaulted && c.env_var("PATH").is_none() {
                notes.push(format!(
                    "container {:?} (image {:?}) sets no PATH and its image is not in imagePaths: its PATH becomes the env's directories and defaultPath, so directories its image puts on PATH are lost; add the image to imagePaths or set annotation {ANN_IMAGE_PATH:?}",
                    c.name,
                    c.image.as_deref().unwrap_or("")
                ));
            }
        }
        if let (None, Some(ca)) = (&image, &cfg.file.ca_bundle) {
            notes.push(format!(
                "nixuv-init mounts key {:?} of ConfigMap {:?} (caBundle): the ConfigMap must exist in the Pod's namespace, or the Pod stays in ContainerCreating",
                ca.key, ca.config_map
            ));
        }
        if let Some(reference) = image {
            let pull_secret = cfg.file.image_store.as_ref().and_then(|s| s.pull_secret.as_deref());
            let patch = image_patch::build(pod, plan, &reference, pull_secret, &targets);
            let env = Some(EnvParts {
                init_container: Arc::clone(init),
                stores: PerEcosystem::from_fn(|_| StoreKind::Claim),
                image: Some(reference),
                request: None,
            });
            let env_id = plan.id;
            return Ok(Decision { verdict: Verdict::Inject { env_id, patch }, env, warnings, notes });
        }
        let missing = if already { patch::Missing::of(pod) } else { patch::Missing::all() };
        // Volumes nixuv added before keep their source (only missing ones are added).
        let volumes = if reinject || missing.any_store() {
            store_choice::choose(cfg, ns, claims, &mut warnings)
        } else {
            PerEcosystem::from_fn(|_| StoreKind::Claim)
        };
        let placement = options.init_placement.unwrap_or(cfg.file.init_placement);
        let at = patch::Placement { stores: volumes, init_index: patch::init_index(pod, placement) };
        let patch = if reinject {
            let was = match pod.annotation(ANN_ENV) {
                Some(old) => format!("env {old:?}"),
                None => "an env it does not name".to_string(),
            };
            warnings.push(format!(
                "nixuv: the Pod carries nixuv's injection for {was}, but its dependencies now give env {:?}: re-injected for it",
                plan.id
            ));
            patch::rebuild(pod, plan, init, &targets, at, cfg)
        } else {
            patch::build(pod, plan, init, &targets, &missing, at, cfg)
        };
        let env_id = plan.id;
        let verdict = if patch.is_empty() { Verdict::Unchanged { env_id } } else { Verdict::Inject { env_id, patch } };
        let env = Some(EnvParts { init_container: Arc::clone(init), stores: volumes, image: None, request });
        Ok(Decision { verdict, env, warnings, notes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_decisions_serialise_to_the_same_bytes_spliced() {
        let pod = r#"{"metadata":{"labels":{"nixuv.io/inject":"true"},"annotations":{"nixuv.io/python-deps":"rich"}},"spec":{"containers":[{"name":"a"}]}}"#;
        let inj = Injector::new(Config::default());
        let mut warned = Decision::pass(Pass::Skipped);
        warned.warnings = vec!["w \"1\"".into(), "w2".into()];
        let injected = inj.decide_pod(pod, Some("ns"));
        assert!(injected.patch().is_some());
        let mut patched_and_warned = injected.clone();
        patched_and_warned.warnings = vec!["nixuv: \"claim\" missing".into()];
        let decisions = [
            Decision::pass(Pass::Skipped),
            Denial::policy("policy: \"x\" is not allowed").into(),
            warned,
            injected,
            patched_and_warned,
        ];
        for d in &decisions {
            crate::review::assert_same_bytes(&d.to_response());
        }
    }
}
