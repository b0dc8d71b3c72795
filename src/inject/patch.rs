//! EnvPlan + Pod -> RFC 6902 `add` operations, built directly (never by diffing the Pod).
//!
//! Rules (docs/annotations.md, "What an opted-in Pod gets"): a missing array or map is created whole before anything is added to it;
//! keys are escaped by `jsonptr` (`/` -> `~1`); nothing existing is removed or reordered, except
//! that `nixuv-init` is inserted into `initContainers` (first, or after the leading native
//! sidecars; the others keep their order), and an existing PATH value is replaced by the same value
//! with the env's directories in front.

use std::sync::Arc;

use serde::ser::{Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::pod::{ContainerView, PodView};
use super::vars::TargetVar;
use super::StoreVolumes;
use crate::config::Config;
use crate::envspec::EnvSpec;
use crate::keys::{ANN_ENV, ANN_STATUS, STATUS_INJECTED};
use crate::names::{ENV_ID, INIT_CONTAINER, INIT_NIX_DIR, NIX_MOUNT, UV_ROOT, VOL_NIX, VOL_TMP, VOL_UV, WORK_DIR};
use crate::plan::EnvPlan;
use crate::values::{InitPlacement, Quantity};

/// An RFC 6902 patch (`add` operations, and for a re-injection `replace` and `remove`), kept as
/// its JSON text: each operation is written into one buffer as it is made, its value serialised
/// straight from its type or copied from text serialised before (the init container, the same
/// for every Pod of an env). [`AddPatch::json`] is the wire form, byte for byte what serde_json
/// writes for the equivalent `json_patch::Patch`; [`AddPatch::to_patch`] gives that patch.
#[derive(Debug, Clone)]
pub struct AddPatch {
    json: Vec<u8>,
    len: usize,
    /// Where the init container's text begins in `json`, if the patch has it.
    init: Option<(usize, Arc<InitText>)>,
}

impl AddPatch {
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The operations' paths, in order.
    pub fn paths(&self) -> Vec<String> {
        self.to_patch().0.iter().map(|op| op.path().to_string()).collect()
    }

    /// The patch as JSON.
    pub fn json(&self) -> &[u8] {
        &self.json
    }

    pub fn to_patch(&self) -> json_patch::Patch {
        serde_json::from_slice(&self.json).expect("nixuv's own patch parses")
    }

    /// The patch in base64, as the AdmissionResponse carries it: the init container's share
    /// (~70 % of the bytes) taken from [`InitText`], which encoded it once for all the Pods of its
    /// env; only the Pod's own bytes around it are encoded here. Exactly `STANDARD.encode(json)`.
    pub fn base64(&self) -> String {
        use base64::Engine;
        let engine = &base64::engine::general_purpose::STANDARD;
        let Some((at, text)) = &self.init else { return engine.encode(&self.json) };
        // The text's first `skip` bytes complete the 3-byte group the Pod's bytes before it began.
        let skip = (3 - at % 3) % 3;
        let n = text.get().len();
        if n < skip + 3 {
            return engine.encode(&self.json);
        }
        let mut out = String::with_capacity(self.json.len().div_ceil(3) * 4);
        engine.encode_string(&self.json[..at + skip], &mut out);
        out.push_str(text.encoded(skip));
        engine.encode_string(&self.json[at + skip + (n - skip) / 3 * 3..], &mut out);
        out
    }
}

/// The `nixuv-init` container as JSON text, shared by the patches of all the Pods of an env, and
/// its base64 at each of the three phases it can begin at in a patch (each computed when first
/// needed). base64 encodes 3 bytes at a time, so a piece of a text can be encoded once for every
/// text it appears in at the same phase.
#[derive(Debug)]
pub struct InitText {
    raw: Box<RawValue>,
    encoded: [std::sync::OnceLock<Box<str>>; 3],
}

impl InitText {
    pub fn new(raw: Box<RawValue>) -> Self {
        InitText { raw, encoded: Default::default() }
    }

    pub fn get(&self) -> &str {
        self.raw.get()
    }

    /// Bytes held with all three encodings made, for the memo's byte bound.
    pub fn heap_bytes(&self) -> usize {
        self.get().len() * 5
    }

    /// The base64 of the text from byte `skip` on, cut to a multiple of 3 bytes (no padding).
    fn encoded(&self, skip: usize) -> &str {
        self.encoded[skip].get_or_init(|| {
            use base64::Engine;
            let bytes = &self.get().as_bytes()[skip..];
            base64::engine::general_purpose::STANDARD.encode(&bytes[..bytes.len() / 3 * 3]).into()
        })
    }
}

impl Serialize for AddPatch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_patch().serialize(s)
    }
}

/// A JSON-pointer token: a key (`-` for the end of an array) or an array index.
#[derive(Debug, Clone, Copy)]
enum Token<'a> {
    Key(&'a str),
    Index(usize),
}

/// A pointer token for a key.
fn key(s: &str) -> Token<'_> {
    Token::Key(s)
}

/// A pointer token for an array index.
fn index(n: usize) -> Token<'static> {
    Token::Index(n)
}

/// The operations of a patch being written. Pointers and operations are written here by hand
/// rather than built as `jsonptr` pointers and values and serialised afterwards: that cost an
/// allocation or two an operation and a second pass over every value (docs/performance.md).
#[derive(Default)]
struct Ops {
    json: Vec<u8>,
    len: usize,
    /// The pointer being written, reused from one operation to the next.
    pointer: String,
    init: Option<(usize, Arc<InitText>)>,
}

impl Ops {
    /// Room for the init container and the Pod's own operations, so the buffer is not grown.
    fn for_patch(init: &InitText, targets: &[Target]) -> Self {
        Ops { json: Vec::with_capacity(init.get().len() + 512 + 768 * targets.len()), ..Ops::default() }
    }
    fn op<'t>(&mut self, op: &str, tokens: impl IntoIterator<Item = Token<'t>>) {
        self.pointer.clear();
        for t in tokens {
            self.pointer.push('/');
            match t {
                // RFC 6901: `~` is written `~0` and `/` is written `~1`.
                Token::Key(k) if k.contains(['~', '/']) => {
                    self.pointer.push_str(&k.replace('~', "~0").replace('/', "~1"))
                }
                Token::Key(k) => self.pointer.push_str(k),
                Token::Index(n) => {
                    use std::fmt::Write;
                    let _ = write!(self.pointer, "{n}");
                }
            }
        }
        self.json.push(if self.len == 0 { b'[' } else { b',' });
        self.len += 1;
        self.json.extend_from_slice(br#"{"op":""#);
        self.json.extend_from_slice(op.as_bytes());
        self.json.extend_from_slice(br#"","path":"#);
        serde_json::to_writer(&mut self.json, self.pointer.as_str()).expect("a string serialises");
    }
    /// An operation with `value` serialised straight from its type (the per-Pod values are small
    /// structs in the key order `serde_json::Value` would give, never `Value`s built to be
    /// serialised).
    fn with_value<'t, T: Serialize + ?Sized>(
        &mut self,
        op: &str,
        tokens: impl IntoIterator<Item = Token<'t>>,
        value: &T,
    ) {
        self.op(op, tokens);
        self.json.extend_from_slice(br#","value":"#);
        serde_json::to_writer(&mut self.json, value).expect("a JSON value serialises");
        self.json.push(b'}');
    }
    /// An `add` whose value is JSON text serialised before (the store mounts).
    fn push<'t>(&mut self, tokens: impl IntoIterator<Item = Token<'t>>, text: &RawValue) {
        self.op("add", tokens);
        self.json.extend_from_slice(br#","value":"#);
        self.json.extend_from_slice(text.get().as_bytes());
        self.json.push(b'}');
    }
    fn add<'t, T: Serialize + ?Sized>(&mut self, tokens: impl IntoIterator<Item = Token<'t>>, value: &T) {
        self.with_value("add", tokens, value);
    }
    /// The init container, added or replacing nixuv's own (`op`), alone or as a one-element array.
    fn init<'t>(
        &mut self,
        op: &str,
        tokens: impl IntoIterator<Item = Token<'t>>,
        init: &Arc<InitText>,
        in_array: bool,
    ) {
        self.op(op, tokens);
        self.json.extend_from_slice(br#","value":"#);
        if in_array {
            self.json.push(b'[');
        }
        self.init = Some((self.json.len(), Arc::clone(init)));
        self.json.extend_from_slice(init.get().as_bytes());
        if in_array {
            self.json.push(b']');
        }
        self.json.push(b'}');
    }
    fn replace_value<'t, T: Serialize + ?Sized>(&mut self, tokens: impl IntoIterator<Item = Token<'t>>, value: &T) {
        self.with_value("replace", tokens, value);
    }
    /// Appends `items` to the array at `array`, or adds the array whole where `exists` is false
    /// (RFC 6902 cannot append to a missing array).
    fn append<'t, T: Serialize>(
        &mut self,
        array: impl IntoIterator<Item = Token<'t>> + Clone,
        exists: bool,
        items: &[T],
    ) {
        match (items.is_empty(), exists) {
            (true, _) => {}
            (false, false) => self.add(array, items),
            (false, true) => {
                for item in items {
                    self.add(array.clone().into_iter().chain([key("-")]), item);
                }
            }
        }
    }
    fn remove<'t>(&mut self, tokens: impl IntoIterator<Item = Token<'t>>) {
        self.op("remove", tokens);
        self.json.push(b'}');
    }
    fn finish(mut self) -> AddPatch {
        if self.len == 0 {
            self.json.push(b'[');
        }
        self.json.push(b']');
        AddPatch { json: self.json, len: self.len, init: self.init }
    }
}

/// A volume nixuv adds, serialised with its keys in the order `serde_json::Value` gives (sorted):
/// the patch is byte for byte what `json_patch` would write for it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(untagged)]
pub enum Volume<'a> {
    Claim {
        name: &'static str,
        #[serde(rename = "persistentVolumeClaim")]
        claim: ClaimName<'a>,
    },
    Empty {
        #[serde(rename = "emptyDir")]
        empty_dir: EmptyDir,
        name: &'static str,
    },
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ClaimName<'a> {
    #[serde(rename = "claimName")]
    claim_name: &'a str,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct EmptyDir {}

/// The Pod's volumes for the stores: the claims where `stores` says so, emptyDirs otherwise, plus
/// the init container's scratch emptyDir.
pub fn volumes(cfg: &Config, stores: StoreVolumes) -> [(&'static str, Volume<'_>); 3] {
    fn store<'a>(name: &'static str, claim: &'a str, pvc: bool) -> Volume<'a> {
        match pvc {
            true => Volume::Claim { name, claim: ClaimName { claim_name: claim } },
            false => Volume::Empty { empty_dir: EmptyDir {}, name },
        }
    }
    let storage = &cfg.file.storage;
    [
        (VOL_NIX, store(VOL_NIX, &storage.nix_claim, stores.nix_pvc)),
        (VOL_UV, store(VOL_UV, &storage.uv_claim, stores.uv_pvc)),
        (VOL_TMP, Volume::Empty { empty_dir: EmptyDir {}, name: VOL_TMP }),
    ]
}

/// The `nixuv-init` container, serialised: built once per env and config (see
/// [`super::EnvOutcome`]) and shared by the patches of all its Pods.
pub fn init_container_text(plan: &EnvPlan, cfg: &Config) -> Arc<InitText> {
    Arc::new(InitText::new(
        serde_json::value::to_raw_value(&init_container(plan, cfg)).expect("a JSON value serialises"),
    ))
}

/// The `nixuv-init` container: `nixuv materialize` with the plan in its env, no shell, and a
/// securityContext that passes the PodSecurity `restricted` profile. Built as JSON directly; tests
/// read it back as a typed k8s-openapi Container.
pub fn init_container(plan: &EnvPlan, cfg: &Config) -> Value {
    let spec_env = EnvSpec::for_plan(plan).to_env();
    let mut env = Vec::with_capacity(spec_env.len() + 2 + cfg.file.init_env.len());
    env.extend(spec_env.into_iter().map(|(name, value)| json!({ "name": name, "value": value })));
    env.push(json!({ "name": "HOME", "value": WORK_DIR }));
    env.push(json!({ "name": "TMPDIR", "value": WORK_DIR }));
    env.extend(cfg.file.init_env.iter().map(|e| match &e.value_from {
        None => json!({ "name": e.name, "value": e.value }),
        Some(from) => {
            let r = &from.secret_key_ref;
            let mut key_ref = json!({ "name": r.name, "key": r.key });
            if let Some(o) = r.optional {
                key_ref["optional"] = json!(o);
            }
            json!({ "name": e.name, "valueFrom": { "secretKeyRef": key_ref } })
        }
    }));
    let uid = cfg.file.init_run_as_user;
    let mut c = json!({
        "name": INIT_CONTAINER,
        "image": cfg.file.init_image,
        "command": ["nixuv", "materialize"],
        "env": env,
        "resources": { "requests": quantities(&cfg.init_requests), "limits": quantities(&cfg.init_limits) },
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "capabilities": { "drop": ["ALL"] },
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "runAsUser": uid,
            "runAsGroup": uid,
            "seccompProfile": { "type": "RuntimeDefault" }
        },
        "volumeMounts": [
            { "name": VOL_TMP, "mountPath": WORK_DIR },
            { "name": VOL_NIX, "mountPath": INIT_NIX_DIR },
            { "name": VOL_UV, "mountPath": UV_ROOT }
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError"
    });
    if let Some(policy) = cfg.pull_policy {
        c["imagePullPolicy"] = json!(policy.as_str());
    }
    c
}

fn quantities(q: &[(String, Quantity)]) -> Value {
    Value::Object(q.iter().map(|(k, v)| (k.clone(), json!(v.as_str()))).collect())
}

/// A read-only store mount of a target container (keys sorted, as above).
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Mount {
    #[serde(rename = "mountPath")]
    mount_path: &'static str,
    name: &'static str,
    #[serde(rename = "readOnly")]
    read_only: bool,
}

const TARGET_MOUNTS: [Mount; 2] = [
    Mount { mount_path: NIX_MOUNT, name: VOL_NIX, read_only: true },
    Mount { mount_path: UV_ROOT, name: VOL_UV, read_only: true },
];

/// The target mounts serialised once: the same for every container of every Pod.
static MOUNT_TEXTS: std::sync::LazyLock<[Box<RawValue>; 3]> = std::sync::LazyLock::new(|| {
    fn raw<T: Serialize + ?Sized>(v: &T) -> Box<RawValue> {
        serde_json::value::to_raw_value(v).expect("a JSON value serialises")
    }
    [raw(&TARGET_MOUNTS[0]), raw(&TARGET_MOUNTS[1]), raw(&TARGET_MOUNTS[..])]
});

/// An env entry with a value (keys sorted, as above).
#[derive(Debug, serde::Serialize)]
struct Var<'a> {
    name: &'a str,
    value: &'a str,
}

/// The variables a target container gets, in [`TargetVar::ALL`]'s order; PATH keeps the value the
/// container sets (or its images' PATH), PYTHONPATH a non-empty one, after nixuv's part.
fn target_env(plan: &EnvPlan, c: &ContainerView, t: &Target) -> Vec<(&'static str, String)> {
    TargetVar::ALL
        .into_iter()
        .filter(|v| v.set_for(plan))
        .map(|v| {
            let rest = match v {
                TargetVar::Path => t.path_tail,
                TargetVar::PythonPath => c.env_var(v.name()).and_then(|(_, e)| e.value.as_deref()).unwrap_or(""),
                TargetVar::VirtualEnv | TargetVar::EnvId => "",
            };
            (v.name(), v.value(plan, rest))
        })
        .collect()
}

/// The PATH a container that sets none gets after the env's directories: the Pod's
/// `nixuv.io/image-path` (`pod_path`), else the `imagePaths` entry of its image, else
/// `defaultPath`. The flag says whether it came from `defaultPath` for want of anything better.
pub fn image_path<'a>(pod_path: Option<&'a str>, c: &ContainerView, cfg: &'a Config) -> (&'a str, bool) {
    if let Some(p) = pod_path {
        return (p, false);
    }
    match c.image.as_deref().and_then(|i| cfg.image_paths.for_image(i)) {
        Some(p) => (p, false),
        None => (&cfg.file.default_path, true),
    }
}

/// A container to patch and what its PATH keeps after the env's directories.
pub struct Target<'a> {
    pub index: usize,
    pub path_tail: &'a str,
    /// [`image_path`]'s PATH, for when the container's own is empty (a re-injection strips
    /// nixuv's directories off its PATH and may leave nothing).
    pub image_path: &'a str,
}

impl<'a> Target<'a> {
    /// The target for container `index`: its own non-empty PATH is kept, else [`image_path`]'s.
    /// The flag is [`image_path`]'s, false when the container's PATH is kept.
    pub fn new(index: usize, pod_path: Option<&'a str>, c: &'a ContainerView, cfg: &'a Config) -> (Self, bool) {
        let own = c.env_var("PATH").and_then(|(_, e)| e.value.as_deref()).filter(|v| !v.is_empty());
        let (image_path, defaulted) = image_path(pod_path, c, cfg);
        match own {
            Some(p) => (Target { index, path_tail: p, image_path }, false),
            None => (Target { index, path_tail: image_path, image_path }, defaulted),
        }
    }
}

fn patch_container(ops: &mut Ops, t: &Target, c: &ContainerView, plan: &EnvPlan) {
    let base = [key("spec"), key("containers"), index(t.index)];
    match &c.volume_mounts {
        None => ops.push(base.iter().cloned().chain([key("volumeMounts")]), &MOUNT_TEXTS[2]),
        Some(_) => {
            for m in &MOUNT_TEXTS[..2] {
                ops.push(base.iter().cloned().chain([key("volumeMounts"), key("-")]), m);
            }
        }
    }
    let env = target_env(plan, c, t);
    match &c.env {
        None => {
            let vars: Vec<Var> = env.iter().map(|(name, value)| Var { name, value }).collect();
            ops.add(base.iter().cloned().chain([key("env")]), &vars)
        }
        Some(_) => {
            for (name, value) in &env {
                match c.env_var(name) {
                    // Only PATH and PYTHONPATH can be there (the others are refused before).
                    Some((j, _)) => ops.add(base.iter().cloned().chain([key("env"), index(j), key("value")]), value),
                    None => ops.add(base.iter().cloned().chain([key("env"), key("-")]), &Var { name, value }),
                }
            }
        }
    }
}

/// What an already-injected Pod (reinvocation, copies) still lacks; everything for a new one.
pub struct Missing {
    pub annotations: bool,
    pub nix_volume: bool,
    pub uv_volume: bool,
    pub tmp_volume: bool,
    pub init_container: bool,
}

impl Missing {
    pub fn all() -> Self {
        Missing { annotations: true, nix_volume: true, uv_volume: true, tmp_volume: true, init_container: true }
    }
    pub fn of(pod: &PodView) -> Self {
        let vols = pod.volumes();
        let has_vol = |n: &str| vols.iter().any(|v| v.name == n);
        Missing {
            annotations: pod.annotation(ANN_STATUS) != Some(STATUS_INJECTED) || pod.annotation(ANN_ENV).is_none(),
            nix_volume: !has_vol(VOL_NIX),
            uv_volume: !has_vol(VOL_UV),
            tmp_volume: !has_vol(VOL_TMP),
            init_container: !pod.init_containers().iter().any(|c| c.name == INIT_CONTAINER),
        }
    }
}

/// Where nixuv's parts go: the store volumes' sources and nixuv-init's index among the init
/// containers.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    pub stores: StoreVolumes,
    pub init_index: usize,
}

/// Where nixuv-init goes for `placement`: index 0, or after the leading native sidecars.
pub fn init_index(pod: &PodView, placement: InitPlacement) -> usize {
    match placement {
        InitPlacement::First => 0,
        InitPlacement::AfterSidecars => {
            pod.init_containers().iter().take_while(|c| c.restart_policy.as_deref() == Some("Always")).count()
        }
    }
}

/// The patch for `pod`: what `missing` says, plus env and mounts for each target container.
pub fn build(
    pod: &PodView,
    plan: &EnvPlan,
    init: &Arc<InitText>,
    targets: &[Target],
    missing: &Missing,
    at: Placement,
    cfg: &Config,
) -> AddPatch {
    let stores = at.stores;
    let mut ops = Ops::for_patch(init, targets);
    if missing.annotations {
        // Sorted keys, as above.
        #[derive(serde::Serialize)]
        struct Annotations<'a> {
            #[serde(rename = "nixuv.io/env")]
            env: &'a str,
            #[serde(rename = "nixuv.io/status")]
            status: &'a str,
        }
        #[derive(serde::Serialize)]
        struct Metadata<'a> {
            annotations: Annotations<'a>,
        }
        let annotations = Annotations { env: &plan.id, status: STATUS_INJECTED };
        match (&pod.metadata, pod.annotations()) {
            (None, _) => ops.add([key("metadata")], &Metadata { annotations }),
            (Some(_), None) => ops.add([key("metadata"), key("annotations")], &annotations),
            (Some(_), Some(_)) => {
                for (k, v) in [(ANN_STATUS, STATUS_INJECTED), (ANN_ENV, plan.id.as_str())] {
                    ops.add([key("metadata"), key("annotations"), key(k)], v);
                }
            }
        }
    }
    let vols: Vec<Volume> = volumes(cfg, stores)
        .into_iter()
        .zip([missing.nix_volume, missing.uv_volume, missing.tmp_volume])
        .filter_map(|((_, v), miss)| miss.then_some(v))
        .collect();
    let spec = pod.spec.as_ref();
    ops.append([key("spec"), key("volumes")], spec.and_then(|s| s.volumes.as_ref()).is_some(), &vols);
    if missing.init_container {
        if spec.and_then(|s| s.init_containers.as_ref()).is_none() {
            ops.init("add", [key("spec"), key("initContainers")], init, true);
        } else {
            ops.init("add", [key("spec"), key("initContainers"), index(at.init_index)], init, false);
        }
    }
    let containers = pod.containers();
    for t in targets {
        patch_container(&mut ops, t, &containers[t.index], plan);
    }
    ops.finish()
}

/// The patch that turns nixuv's own earlier injection (for another env: the Pod was made from
/// `nixuv preview` output, or copied, and its dependencies changed since) into the injection for
/// `plan`: the annotations, nixuv's three volumes and its init container are replaced whole;
/// in each container, the variables nixuv set are rewritten (its directories taken off the front
/// of PATH and PYTHONPATH first) and its mounts replaced; containers that are no longer targets
/// lose nixuv's variables. Everything else is left as it is.
pub fn rebuild(
    pod: &PodView,
    plan: &EnvPlan,
    init: &Arc<InitText>,
    targets: &[Target],
    at: Placement,
    cfg: &Config,
) -> AddPatch {
    let mut ops = Ops::for_patch(init, targets);
    for (k, v) in [(ANN_STATUS, STATUS_INJECTED), (ANN_ENV, plan.id.as_str())] {
        // The status annotation is there, so the map is; `add` sets or replaces a member.
        ops.add([key("metadata"), key("annotations"), key(k)], v);
    }
    let spec = pod.spec.as_ref();
    let existing = pod.volumes();
    let mut appended = Vec::new();
    for (name, v) in volumes(cfg, at.stores) {
        match existing.iter().position(|e| e.name == name) {
            Some(j) => ops.replace_value([key("spec"), key("volumes"), index(j)], &v),
            None => appended.push(v),
        }
    }
    ops.append([key("spec"), key("volumes")], spec.and_then(|s| s.volumes.as_ref()).is_some(), &appended);
    match pod.init_containers().iter().position(|c| c.name == INIT_CONTAINER) {
        Some(j) => ops.init("replace", [key("spec"), key("initContainers"), index(j)], init, false),
        None if spec.and_then(|s| s.init_containers.as_ref()).is_none() => {
            ops.init("add", [key("spec"), key("initContainers")], init, true)
        }
        None => ops.init("add", [key("spec"), key("initContainers"), index(at.init_index)], init, false),
    }
    for (k, c) in pod.containers().iter().enumerate() {
        let target = targets.iter().find(|t| t.index == k);
        let had = c.env_var(ENV_ID).is_some();
        match (target, had) {
            (None, false) => continue,
            (Some(t), false) => {
                patch_container(&mut ops, t, c, plan);
                continue;
            }
            _ => {}
        }
        let base = [key("spec"), key("containers"), index(k)];
        let mut removes = Vec::new();
        for v in TargetVar::ALL {
            let own = c.env_var(v.name());
            let own_value = own.and_then(|(_, e)| e.value.as_deref());
            let rest = v.strip_ours(own_value.unwrap_or(""));
            // What the variable becomes: set, removed (nixuv set it and the container no longer
            // gets it), or left as it is (None).
            let want = match target.filter(|_| v.set_for(plan)) {
                Some(t) => {
                    let rest = if rest.is_empty() && v == TargetVar::Path { t.image_path } else { rest };
                    Some(Some(v.value(plan, rest)))
                }
                None => match own_value {
                    None => None,
                    // PATH stays a variable, with whatever is left of it.
                    Some(_) if v == TargetVar::Path => Some(Some(rest.to_string())),
                    Some(_) if rest.is_empty() => Some(None),
                    Some(val) if rest.len() == val.len() => None,
                    Some(_) => Some(Some(rest.to_string())),
                },
            };
            match (own, want) {
                (_, None) => {}
                (Some((j, e)), Some(Some(value))) if e.value.as_deref() != Some(value.as_str()) => {
                    ops.add(base.iter().cloned().chain([key("env"), index(j), key("value")]), &value)
                }
                (Some(_), Some(Some(_))) => {}
                (Some((j, _)), Some(None)) => removes.push(j),
                (None, Some(Some(value))) if !value.is_empty() => {
                    ops.add(base.iter().cloned().chain([key("env"), key("-")]), &Var { name: v.name(), value: &value })
                }
                (None, _) => {}
            }
        }
        // Highest index first, so that each index still names the entry it was computed for.
        removes.sort_unstable_by(|a, b| b.cmp(a));
        for j in removes {
            ops.remove(base.iter().cloned().chain([key("env"), index(j)]));
        }
        if target.is_some() {
            let mounts = c.volume_mounts.as_deref().unwrap_or(&[]);
            let mut appended = Vec::new();
            for m in TARGET_MOUNTS {
                match mounts.iter().position(|x| x.name == m.name) {
                    Some(j) => ops.replace_value(base.iter().cloned().chain([key("volumeMounts"), index(j)]), &m),
                    None => appended.push(m),
                }
            }
            ops.append(base.iter().cloned().chain([key("volumeMounts")]), c.volume_mounts.is_some(), &appended);
        }
    }
    ops.finish()
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::inject::Injector;

    /// The hand-written wire form is byte for byte what serde_json gives for the same
    /// `json_patch::Patch`, and the `Serialize` impl agrees with both (escaped keys included).
    #[test]
    fn wire_form_matches_json_patch() {
        let inj = Injector::new(Config::default());
        let mut escaped = false;
        for pod in [
            r#"{"metadata":{"labels":{"nixuv.io/inject":"true"},"annotations":{"nixuv.io/python-deps":"rich","a/b":"c"}},"spec":{"containers":[{"name":"a","env":[{"name":"PATH","value":"/bin"}]}]}}"#,
            r#"{"metadata":{"labels":{"nixuv.io/inject":"true","system.nixuv.io/jq":""}},"spec":{"initContainers":[{"name":"i"}],"volumes":[],"containers":[{"name":"a"},{"name":"b","volumeMounts":[]}]}}"#,
        ] {
            let d = inj.decide_pod(pod, Some("ns"));
            let p = d.patch().expect("a patch");
            let typed = p.to_patch();
            assert_eq!(p.json(), serde_json::to_vec(&typed).unwrap());
            assert_eq!(serde_json::to_value(p).unwrap(), serde_json::to_value(&typed).unwrap());
            assert_eq!(p.len(), typed.0.len());
            escaped |= p.paths().iter().any(|ptr| ptr.contains("~1"));
        }
        assert!(escaped, "a key with '/' was escaped");
    }

    /// The patch's base64 with the init container's share encoded once is exactly the encoding
    /// of the whole, whatever the phase the text begins at, its length, and the bytes after it.
    #[test]
    fn base64_with_the_shared_share_is_the_plain_encoding() {
        use base64::Engine;
        use std::sync::Arc;
        for len in [0, 1, 2, 3, 4, 5, 6, 7, 100, 2501] {
            let text =
                Arc::new(super::InitText::new(serde_json::value::to_raw_value(&"i".repeat(len.max(1) - 1)).unwrap()));
            for key_len in 0..6 {
                for in_array in [false, true] {
                    for after in 0..4 {
                        let mut ops = super::Ops::default();
                        ops.add([super::key(&"k".repeat(key_len))], "v");
                        ops.init("add", [super::key("spec"), super::key("initContainers")], &text, in_array);
                        for _ in 0..after {
                            ops.add([super::key("x")], &"y".repeat(after));
                        }
                        let p = ops.finish();
                        let want = base64::engine::general_purpose::STANDARD.encode(p.json());
                        assert_eq!(p.base64(), want, "{len} {key_len} {in_array} {after}");
                        assert_eq!(p.base64(), want, "encoded again from the stored share");
                    }
                }
            }
        }
    }

    /// Pointers written by hand: `~` and `/` escaped per RFC 6901, then the pointer escaped as a
    /// JSON string; the patch applies where the keys say.
    #[test]
    fn pointers_escape_tilde_and_slash() {
        let mut ops = super::Ops::default();
        ops.add([super::key("metadata"), super::key("annotations"), super::key("a~b/c\"d~1")], "v");
        ops.remove([super::key("spec"), super::index(3)]);
        let p = ops.finish();
        let typed = p.to_patch();
        assert_eq!(p.json(), serde_json::to_vec(&typed).unwrap());
        assert_eq!(p.paths(), ["/metadata/annotations/a~0b~1c\"d~01", "/spec/3"]);
        let mut doc = serde_json::json!({"metadata": {"annotations": {}}, "spec": [0, 1, 2, 3]});
        json_patch::patch(&mut doc, &typed).unwrap();
        assert_eq!(doc, serde_json::json!({"metadata": {"annotations": {"a~b/c\"d~1": "v"}}, "spec": [0, 1, 2]}));
        let empty = super::Ops::default().finish();
        assert_eq!(empty.base64(), "W10=");
        assert!(empty.is_empty() && empty.to_patch().0.is_empty());
    }
}
