//! The pure core: an admission request in, a decision out. No I/O, no async, no HTTP types; the
//! webhook (`/mutate`), the preview endpoint and the `nixuv preview` CLI all call
//! [`Injector::decide`] or [`Injector::decide_pod`], so they cannot disagree. A [`Decision`] is a
//! typed [`Verdict`] (a denial cannot carry a patch); [`Decision::to_response`] turns it into the
//! AdmissionResponse that [`crate::review`] only serialises.

pub mod nearmiss;
pub(crate) mod optin;
pub mod patch;
pub mod pod;
mod policy;
pub mod vars;

use std::sync::Arc;

use patch::AddPatch;

use crate::claims::{AssumePresent, ClaimState, Claims};
use crate::config::{Config, StorageMode};
use crate::envid::EnvId;
use crate::keys::KeyKind;
use crate::keys::*;
use crate::names::*;
use crate::plan::{deps, options, EnvPlan};
use crate::review::{AdmissionRequest, AdmissionResponse, Status};
use pod::PodView;
use vars::TargetVar;

/// A review's object as the core takes it: raw JSON (read here), or a [`PodView`] read in the same
/// pass as the review (`review::decode_as`).
pub trait PodSource {
    fn decide_in(&self, inj: &Injector, namespace: Option<&str>, claims: &dyn Claims) -> Decision;
}

impl PodSource for &serde_json::value::RawValue {
    fn decide_in(&self, inj: &Injector, namespace: Option<&str>, claims: &dyn Claims) -> Decision {
        inj.decide_pod_with(self.get(), namespace, claims)
    }
}

impl PodSource for PodView<'_> {
    fn decide_in(&self, inj: &Injector, namespace: Option<&str>, claims: &dyn Claims) -> Decision {
        inj.decide_view(self, namespace, claims)
    }
}

/// What happened, for logs and the `decision` metric label (a closed, low-cardinality set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not a Pod CREATE: not nixuv's business.
    Skipped,
    /// No `nixuv.io/inject: "true"` label.
    NotOptedIn,
    /// The namespace is excluded by config.
    Excluded,
    /// Opted in without declaring any dependency.
    NoDeps,
    Injected,
    /// Already carries nixuv's output for the same env: nothing (more) to add.
    AlreadyInjected,
    Denied,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Skipped => "skipped",
            Outcome::NotOptedIn => "not_opted_in",
            Outcome::Excluded => "excluded",
            Outcome::NoDeps => "no_deps",
            Outcome::Injected => "injected",
            Outcome::AlreadyInjected => "already_injected",
            Outcome::Denied => "denied",
        }
    }
}

/// Why a Pod is allowed unchanged without being nixuv's (the reasons that carry no env).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    Skipped,
    NotOptedIn,
    Excluded,
    NoDeps,
}

/// What kind of denial: the input is wrong, it collides with what nixuv adds, or the admin's
/// policy forbids it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyKind {
    Invalid,
    Conflict,
    Policy,
}

impl DenyKind {
    /// The `status.code` of the AdmissionResponse (and what `nixuv preview` prints): 400 for bad
    /// input and conflicts, 403 for policy. Chosen here, where a decision becomes a response.
    pub fn code(self) -> u16 {
        match self {
            DenyKind::Invalid | DenyKind::Conflict => 400,
            DenyKind::Policy => 403,
        }
    }
    fn reason(self) -> &'static str {
        match self {
            DenyKind::Invalid | DenyKind::Conflict => "BadRequest",
            DenyKind::Policy => "Forbidden",
        }
    }
}

/// A denial: its kind and a message naming the field and the item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub kind: DenyKind,
    pub message: String,
}

impl Denial {
    pub fn invalid(message: impl Into<String>) -> Self {
        Denial { kind: DenyKind::Invalid, message: message.into() }
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Denial { kind: DenyKind::Conflict, message: message.into() }
    }
    pub fn policy(message: impl Into<String>) -> Self {
        Denial { kind: DenyKind::Policy, message: message.into() }
    }
}

/// The verdict on one Pod: a denied decision cannot carry a patch, an injected one always does.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Allowed unchanged; not nixuv's.
    Pass(Pass),
    /// Allowed unchanged: it already carries nixuv's output for this env.
    Unchanged {
        env_id: EnvId,
    },
    /// Allowed with nixuv's patch for this env.
    Inject {
        env_id: EnvId,
        patch: AddPatch,
    },
    Deny(Denial),
}

#[derive(Debug, Clone)]
pub struct Decision {
    pub verdict: Verdict,
    /// Admission warnings (`kubectl` prints them), also on an allowed Pod.
    pub warnings: Vec<String>,
    /// Notes for `nixuv preview` only, too noisy for admission warnings (custom images).
    pub notes: Vec<String>,
}

impl From<Denial> for Decision {
    fn from(d: Denial) -> Self {
        Decision { verdict: Verdict::Deny(d), warnings: Vec::new(), notes: Vec::new() }
    }
}

impl Decision {
    pub fn pass(why: Pass) -> Self {
        Decision { verdict: Verdict::Pass(why), warnings: Vec::new(), notes: Vec::new() }
    }
    pub fn allowed(&self) -> bool {
        !matches!(self.verdict, Verdict::Deny(_))
    }
    pub fn outcome(&self) -> Outcome {
        match &self.verdict {
            Verdict::Pass(Pass::Skipped) => Outcome::Skipped,
            Verdict::Pass(Pass::NotOptedIn) => Outcome::NotOptedIn,
            Verdict::Pass(Pass::Excluded) => Outcome::Excluded,
            Verdict::Pass(Pass::NoDeps) => Outcome::NoDeps,
            Verdict::Unchanged { .. } => Outcome::AlreadyInjected,
            Verdict::Inject { .. } => Outcome::Injected,
            Verdict::Deny(_) => Outcome::Denied,
        }
    }
    pub fn env_id(&self) -> Option<&EnvId> {
        match &self.verdict {
            Verdict::Unchanged { env_id } | Verdict::Inject { env_id, .. } => Some(env_id),
            _ => None,
        }
    }
    pub fn patch(&self) -> Option<&AddPatch> {
        match &self.verdict {
            Verdict::Inject { patch, .. } => Some(patch),
            _ => None,
        }
    }
    pub fn denial(&self) -> Option<&Denial> {
        match &self.verdict {
            Verdict::Deny(d) => Some(d),
            _ => None,
        }
    }

    /// The AdmissionResponse for this decision, without its uid (the wire format fills it in).
    pub fn to_response(&self) -> AdmissionResponse {
        let status = self.denial().map(|d| Status {
            status: "Failure".into(),
            code: d.kind.code(),
            reason: d.kind.reason().into(),
            message: d.message.clone(),
        });
        let (patch, patch_type) = match self.patch() {
            // Written whole, then encoded in a few calls (streaming serde_json's many small writes
            // through base64's writer was measured at twice the cost), the init container's share
            // encoded once per env.
            Some(p) => (Some(p.base64()), Some("JSONPatch".to_string())),
            None => (None, None),
        };
        AdmissionResponse {
            uid: String::new(),
            allowed: self.allowed(),
            status,
            patch,
            patch_type,
            warnings: (!self.warnings.is_empty()).then(|| self.warnings.clone()),
        }
    }
}

/// The states of the two store claims in a namespace, as a decision reads them. Exported so that
/// whoever caches decisions keys them on exactly what the decision used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StoreClaims {
    pub nix: ClaimState,
    pub uv: ClaimState,
}

/// Whether each store volume is the configured claim (else an emptyDir).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreVolumes {
    pub nix_pvc: bool,
    pub uv_pvc: bool,
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
        match serde_json::from_str::<PodView>(pod_json) {
            Ok(pod) => self.decide_view(&pod, namespace, claims),
            Err(e) => Denial::invalid(format!("request.object is not a valid Pod: {e}")).into(),
        }
    }

    /// The claims' states a decision in `ns` reads: both present in `emptyDir` mode (no claim is
    /// used), else as `claims` says.
    pub fn store_claims(&self, ns: &str, claims: &dyn Claims) -> StoreClaims {
        let storage = &self.config.file.storage;
        if storage.mode == StorageMode::EmptyDir {
            return StoreClaims { nix: ClaimState::Present, uv: ClaimState::Present };
        }
        StoreClaims { nix: claims.state(ns, &storage.nix_claim), uv: claims.state(ns, &storage.uv_claim) }
    }

    /// [`Self::decide`] with the store claims' states given (as a cache key was built from them,
    /// with [`Self::store_claims`]), so that the decision and its key cannot disagree.
    pub fn decide_with_states<O: PodSource>(&self, req: &AdmissionRequest<'_, O>, states: StoreClaims) -> Decision {
        let storage = &self.config.file.storage;
        let known = Known {
            namespace: req.namespace.as_deref().unwrap_or(""),
            nix: &storage.nix_claim,
            uv: &storage.uv_claim,
            states,
        };
        self.decide(req, &known)
    }

    /// PVC or emptyDir for the two store volumes, with warnings for the fallbacks.
    fn storage(&self, ns: &str, claims: &dyn Claims, warnings: &mut Vec<String>) -> StoreVolumes {
        let storage = &self.config.file.storage;
        if storage.mode == StorageMode::EmptyDir {
            return StoreVolumes { nix_pvc: false, uv_pvc: false };
        }
        let states = self.store_claims(ns, claims);
        let mut use_pvc = |vol: &str, claim: &str, state: ClaimState| match state {
            ClaimState::Present => true,
            ClaimState::Missing => {
                warnings.push(format!(
                    "nixuv: PersistentVolumeClaim {claim:?} not found in namespace {ns:?}; volume {vol:?} is an emptyDir, so this Pod builds its env alone"
                ));
                false
            }
            ClaimState::Unbindable => {
                warnings.push(format!(
                    "nixuv: PersistentVolumeClaim {claim:?} in namespace {ns:?} is Pending when it should have bound (its storage class cannot provide it: ReadWriteMany? a quota?); volume {vol:?} is an emptyDir, so this Pod builds its env alone (docs/troubleshooting.md)"
                ));
                false
            }
            ClaimState::Unknown => {
                warnings.push(format!(
                    "nixuv: could not check PersistentVolumeClaim {claim:?} (the API has not answered yet); using it as configured"
                ));
                true
            }
        };
        StoreVolumes {
            nix_pvc: use_pvc(VOL_NIX, &storage.nix_claim, states.nix),
            uv_pvc: use_pvc(VOL_UV, &storage.uv_claim, states.uv),
        }
    }

    pub fn decide_view(&self, pod: &PodView, namespace: Option<&str>, claims: &dyn Claims) -> Decision {
        self.decide_view_at(pod, namespace, claims, "metadata")
    }

    /// [`Self::decide_view`] for a Pod whose metadata sits at `at` in the object the user wrote
    /// (a workload's `spec.template.metadata`), so that warnings name the field to change there.
    pub fn decide_view_at(&self, pod: &PodView, namespace: Option<&str>, claims: &dyn Claims, at: &str) -> Decision {
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

    fn verdict(&self, pod: &PodView, namespace: Option<&str>, claims: &dyn Claims) -> Result<Decision, Denial> {
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
        let key = declaration_key(pod);
        if key.len() > MAX_DECLARATION_BYTES {
            return Err(Denial::invalid(format!(
                "the dependency declaration ({}) is {} bytes, over the limit of {MAX_DECLARATION_BYTES}",
                crate::keys::declaration_list(false),
                key.len()
            )));
        }
        let env = self.memo.get_or_insert_with(&key, || Arc::new(env_for(pod, cfg)));
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
        let reinject = already && injected_for_another_env(pod, plan);
        if !already {
            conflicts(pod)?;
        }
        own_store_mounts(pod, cfg, already)?;
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
            container_conflicts(c, plan, reinject)?;
            todo.push(idx);
        }
        let missing = if already { patch::Missing::of(pod) } else { patch::Missing::all() };
        let mut warnings = declaration_warnings;
        let volumes = if reinject || missing.nix_volume || missing.uv_volume {
            self.storage(ns, claims, &mut warnings)
        } else {
            StoreVolumes { nix_pvc: true, uv_pvc: true }
        };
        let placement = options.init_placement.unwrap_or(cfg.file.init_placement);
        let mut notes = Vec::new();
        let mut targets = Vec::with_capacity(todo.len());
        for idx in todo {
            let c = &containers[idx];
            let (target, defaulted) = patch::Target::new(idx, options.image_path, c, cfg);
            targets.push(target);
            if let Some(image) = c.image.as_deref() {
                python_image_mismatch(image, &c.name, plan, &mut warnings, &mut notes);
            }
            if defaulted && c.env_var("PATH").is_none() {
                notes.push(format!(
                    "container {:?} (image {:?}) sets no PATH and its image is not in imagePaths: its PATH becomes the env's directories and defaultPath, so directories its image puts on PATH are lost; add the image to imagePaths or set annotation {ANN_IMAGE_PATH:?}",
                    c.name,
                    c.image.as_deref().unwrap_or("")
                ));
            }
        }
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
        Ok(Decision { verdict, warnings, notes })
    }
}

/// The `X.Y` an official `python` image's tag names (`python:3.11-slim` gives `3.11`).
fn official_python_version(image: &str) -> Option<&str> {
    if crate::config::image_repository(image) != "python" {
        return None;
    }
    let tag = image.split('@').next()?.rsplit_once(':')?.1;
    let end = tag.find(|c: char| c != '.' && !c.is_ascii_digit()).unwrap_or(tag.len());
    let mut parts = tag[..end].split('.');
    let (major, minor) = (parts.next()?, parts.next()?);
    (!major.is_empty() && !minor.is_empty()).then(|| &tag[..major.len() + 1 + minor.len()])
}

/// An official `python:X.Y` image whose version is not the env's: in overlay mode the packages
/// were installed for another Python (a warning); in venv mode the venv's `python` replaces the
/// image's (a note for preview).
fn python_image_mismatch(
    image: &str,
    container: &str,
    plan: &EnvPlan,
    warnings: &mut Vec<String>,
    notes: &mut Vec<String>,
) {
    if !plan.has_python() {
        return;
    }
    let Some(theirs) = official_python_version(image) else { return };
    let ours = &plan.python_version;
    let same = ours.split('.').take(2).eq(theirs.split('.'));
    if same || !ours.contains('.') {
        return;
    }
    if plan.is_overlay() {
        warnings.push(format!(
            "nixuv: container {container:?} runs image {image:?} (Python {theirs}) but the env's Python deps are installed for Python {ours} ({ANN_PYTHON_VERSION} or defaultPython): in python mode overlay, packages with compiled code will not import; set {ANN_PYTHON_VERSION}: \"{theirs}\""
        ));
    } else {
        notes.push(format!(
            "container {container:?} runs image {image:?} (Python {theirs}) but the env's venv has Python {ours}: the venv comes first on PATH, so `python` there is {ours} and the image's packages are not seen; set {ANN_PYTHON_VERSION}: \"{theirs}\" or use {ANN_PYTHON_MODE}: overlay to keep the image's Python"
        ));
    }
}

/// Whether nixuv's own earlier output in `pod` is for another env than `plan`: the env
/// annotation is missing or names another env, or nixuv-init or a container carries another
/// `NIXUV_ENV`. Such a Pod is re-injected (every part nixuv wrote is rewritten for `plan`): its
/// old parts would give the app an env that nothing builds.
fn injected_for_another_env(pod: &PodView, plan: &EnvPlan) -> bool {
    let other =
        |c: &pod::ContainerView| c.env_var(ENV_ID).is_some_and(|(_, e)| e.value.as_deref() != Some(plan.id.as_str()));
    pod.annotation(ANN_ENV) != Some(plan.id.as_str())
        || pod.init_containers().iter().any(|c| c.name == INIT_CONTAINER && (other(c) || c.env_var(ENV_ID).is_none()))
        || pod.containers().iter().any(other)
}

/// Claims whose states in one namespace are already known.
struct Known<'a> {
    namespace: &'a str,
    nix: &'a str,
    uv: &'a str,
    states: StoreClaims,
}

impl Claims for Known<'_> {
    fn state(&self, namespace: &str, name: &str) -> ClaimState {
        match (namespace == self.namespace, name) {
            (true, n) if n == self.nix => self.states.nix,
            (true, n) if n == self.uv => self.states.uv,
            _ => ClaimState::Unknown,
        }
    }
}

/// A bounded memo of [`EnvOutcome`] by declaration.
struct EnvMemo(quick_cache::sync::Cache<Vec<u8>, Arc<EnvOutcome>, MemoBytes>);

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

    fn new() -> Self {
        EnvMemo(quick_cache::sync::Cache::with_weighter(1024, Self::BYTES, MemoBytes))
    }

    fn weight(&self) -> u64 {
        self.0.weight()
    }

    fn get_or_insert_with(&self, key: &[u8], make: impl FnOnce() -> Arc<EnvOutcome>) -> Arc<EnvOutcome> {
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
        init_container: Arc<patch::InitText>,
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

fn env_for(pod: &PodView, cfg: &Config) -> EnvOutcome {
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
    let init_container = patch::init_container_text(&plan, cfg);
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
fn declaration_key(pod: &PodView) -> Vec<u8> {
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

/// Names nixuv adds that a Pod not injected by nixuv must not already use.
fn conflicts(pod: &PodView) -> Result<(), Denial> {
    for v in pod.volumes() {
        if [VOL_NIX, VOL_UV, VOL_TMP].contains(&v.name.as_str()) {
            return Err(Denial::conflict(format!(
                "spec.volumes: a volume named {:?} already exists; nixuv adds its own and would conflict",
                v.name
            )));
        }
    }
    let named = |field: &str, mut names: Vec<&str>| -> Result<(), Denial> {
        match names.iter_mut().find(|n| **n == INIT_CONTAINER) {
            Some(n) => Err(Denial::conflict(format!(
                "spec.{field}: a container named {n:?} already exists; nixuv adds its own and would conflict"
            ))),
            None => Ok(()),
        }
    };
    named("initContainers", pod.init_containers().iter().map(|c| c.name.as_str()).collect())?;
    named("containers", pod.containers().iter().map(|c| c.name.as_str()).collect())?;
    named("ephemeralContainers", pod.ephemeral_containers().iter().map(|c| c.name.as_str()).collect())?;
    Ok(())
}

/// A mount path as the kubelet will use it: `//nix`, `/nix/`, `/nixuv/./uv` and `/x/../nix` are
/// all `/nix`-like paths, so they are compared as component lists after `.` and `..` are resolved.
fn normalised(path: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    out
}

/// An opted-in Pod may not mount the store claims itself: a container of its own with write
/// access could plant an env that every other Pod of the namespace trusts. nixuv's own volumes
/// (on a Pod it injected before) are the exception.
fn own_store_mounts(pod: &PodView, cfg: &Config, already: bool) -> Result<(), Denial> {
    let storage = &cfg.file.storage;
    for v in pod.volumes() {
        if already && (v.name == VOL_NIX || v.name == VOL_UV) {
            continue;
        }
        if let Some(claim) = &v.persistent_volume_claim {
            if claim.claim_name == storage.nix_claim || claim.claim_name == storage.uv_claim {
                return Err(Denial::policy(format!(
                    "spec.volumes[{:?}]: PersistentVolumeClaim {:?} is one of nixuv's shared stores; a Pod may not mount it itself (nixuv mounts it read-only into the app and writes it only from {INIT_CONTAINER})",
                    v.name, claim.claim_name
                )));
            }
        }
    }
    if already {
        // nixuv's own store volumes are written only by nixuv-init: any other container (a sidecar
        // nixuv does not target included) mounting them must do so read-only.
        for c in pod.containers().iter().chain(pod.init_containers()).filter(|c| c.name != INIT_CONTAINER) {
            for m in c.volume_mounts.as_deref().unwrap_or(&[]) {
                if (m.name == VOL_NIX || m.name == VOL_UV) && m.read_only != Some(true) {
                    return Err(Denial::policy(format!(
                        "spec.containers[{:?}].volumeMounts: volume {:?} is one of nixuv's shared stores and only {INIT_CONTAINER} may write it; mount it with readOnly: true",
                        c.name, m.name
                    )));
                }
            }
        }
    }
    Ok(())
}

fn overlaps(a: &str, b: &str) -> bool {
    let (a, b) = (normalised(a), normalised(b));
    a.starts_with(&b) || b.starts_with(&a)
}

/// A target container must not already mount over the stores or set the variables nixuv owns.
fn container_conflicts(c: &pod::ContainerView, plan: &EnvPlan, reinject: bool) -> Result<(), Denial> {
    for m in c.volume_mounts.as_deref().unwrap_or(&[]) {
        if reinject && (m.name == VOL_NIX || m.name == VOL_UV) {
            // nixuv's own mounts, replaced by the re-injection.
            continue;
        }
        for ours in [NIX_MOUNT, UV_ROOT] {
            if overlaps(&m.mount_path, ours) {
                return Err(Denial::conflict(format!(
                    "spec.containers[{:?}].volumeMounts: {:?} (volume {:?}) overlaps nixuv's mount at {ours:?}",
                    c.name, m.mount_path, m.name
                )));
            }
        }
        if [VOL_NIX, VOL_UV, VOL_TMP].contains(&m.name.as_str()) {
            return Err(Denial::conflict(format!(
                "spec.containers[{:?}].volumeMounts: volume {:?} is reserved for nixuv",
                c.name, m.name
            )));
        }
    }
    // NIXUV_ENV is checked by the caller: it also says whether the container is done.
    for v in TargetVar::ALL.into_iter().filter(|v| v.set_for(plan) && *v != TargetVar::EnvId) {
        let Some((_, e)) = c.env_var(v.name()) else { continue };
        let refused = match v.prepends() {
            // nixuv puts its entries in front of a value, which it cannot do to a reference.
            true => e.value_from.is_some(),
            // A value nixuv owns whole: only its own, on a re-injection, may be there.
            false => !(reinject && e.value.as_deref().is_some_and(|x| v.is_ours(x))),
        };
        if refused {
            return Err(Denial::conflict(v.conflict(&c.name)));
        }
    }
    Ok(())
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
