//! Dry-run preview: any manifest (YAML or JSON, multi-document, `List`) -> the Pods it makes ->
//! [`crate::inject::decide_view`], the same decision function as the webhook. No I/O here: the
//! CLI and `POST /preview` read and write.

mod argo;
mod kfp;
pub mod output;

use json_patch::{Patch, PatchOperation};
use jsonptr::PointerBuf;
use serde::Deserialize;
use serde_json::Value;

use crate::claims::Claims;
use crate::inject::pod::PodView;
use crate::inject::{Decision, Denial, Injector, Outcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

/// A document that cannot be previewed: names the document (1-based), the field and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("document {document}{}: {field}: {message}", item.map(|i| format!(" items[{i}]")).unwrap_or_default())]
pub struct PreviewError {
    pub document: usize,
    pub item: Option<usize>,
    pub field: String,
    pub message: String,
}

fn err(document: usize, item: Option<usize>, field: &str, message: impl Into<String>) -> PreviewError {
    PreviewError { document, item, field: field.into(), message: message.into() }
}

/// One parsed input document, 1-based.
#[derive(Debug, Clone)]
pub struct Document {
    pub index: usize,
    pub value: Value,
}

/// `{` or `[` first: JSON (one or more values); anything else: YAML (one or more documents).
pub fn detect(text: &str) -> Format {
    match text.trim_start().chars().next() {
        Some('{') | Some('[') => Format::Json,
        _ => Format::Yaml,
    }
}

pub fn parse(text: &str, format: Format) -> Result<Vec<Document>, PreviewError> {
    let mut docs = Vec::new();
    match format {
        Format::Json => {
            for (i, v) in serde_json::Deserializer::from_str(text).into_iter::<Value>().enumerate() {
                let value = v.map_err(|e| err(i + 1, None, "(body)", format!("invalid JSON: {e}")))?;
                docs.push(Document { index: i + 1, value });
            }
        }
        Format::Yaml => {
            for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
                let v = Value::deserialize(de).map_err(|e| err(i + 1, None, "(body)", format!("invalid YAML: {e}")))?;
                if !v.is_null() {
                    docs.push(Document { index: i + 1, value: v });
                }
            }
        }
    }
    Ok(docs)
}

/// A per-template report for Argo kinds.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateReport {
    pub template: String,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env_id: Option<String>,
    pub system_deps: Vec<String>,
    pub python_deps: Vec<String>,
    pub targets: Vec<String>,
    pub summary: String,
    /// The Pod Argo builds from the template, with nixuv's patch applied (when nixuv changes it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<Value>,
    /// nixuv's JSON patch against the Pod Argo builds (when it changes it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<Value>,
}

/// The preview of one object.
#[derive(Debug, Clone)]
pub struct ObjectPreview {
    pub document: usize,
    pub item: Option<usize>,
    pub kind: String,
    pub name: String,
    /// `None` when the object makes no Pod nixuv knows (passed through).
    pub decision: Option<Decision>,
    /// The patch against this object (paths under the pod template for workloads).
    pub patch: Option<Patch>,
    /// The object with the patch applied (unchanged when there is none).
    pub object: Value,
    pub warnings: Vec<String>,
    /// Notes (not warnings: `--strict` ignores them), such as an image whose PATH nixuv does not know.
    pub notes: Vec<String>,
    pub templates: Vec<TemplateReport>,
    /// The decision on each Argo template's Pod (in `templates`' order).
    pub template_decisions: Vec<Decision>,
}

/// Whether a normalised requirement pins one version (`==X.Y.Z` or `===X`, no wildcard, no other
/// specifier), markers aside.
fn pinned(requirement: &str) -> bool {
    let spec = requirement.split(';').next().unwrap_or("");
    spec.contains("==") && !spec.contains(',') && !spec.contains('*')
}

/// `--strict`: the warning for a decision whose Python deps are not all pinned while neither
/// `python.excludeNewer` nor `nixuv.io/exclude-newer` fixes when they resolve: every build of the
/// env (and every Pod of another declaration) resolves them anew, so the steps of one workflow
/// can get different versions. Read from the decision's own init container (the plan as the
/// init container receives it).
/// The plan of a decision's env, read back from its own init container (the plan exactly as the
/// init container receives it).
pub fn plan_of(d: &Decision) -> Option<crate::plan::EnvPlan> {
    let parts = d.env.as_ref()?;
    let init: Value = serde_json::from_str(parts.init_container.get()).ok()?;
    let env: std::collections::BTreeMap<String, String> = init["env"]
        .as_array()?
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?.to_string(), e["value"].as_str()?.to_string())))
        .collect();
    crate::envspec::EnvSpec::from_env(|k| env.get(k).cloned()).ok().map(|s| s.plan)
}

pub fn unpinned_warning(d: &Decision) -> Option<String> {
    let plan = plan_of(d)?;
    if plan.exclude_newer.is_some() {
        return None;
    }
    let loose: Vec<&String> = plan.python.iter().filter(|r| !pinned(r)).collect();
    if loose.is_empty() {
        return None;
    }
    let list = loose.iter().map(|r| format!("{r:?}")).collect::<Vec<_>>().join(", ");
    Some(format!(
        "Python deps {list} are not pinned (==) and neither python.excludeNewer (config) nor {} (annotation) fixes when they resolve: each env resolves them when it is built, so Pods of one workflow can get different versions; pin them, or set {} on every Pod (docs/argo.md, \"One set of versions for a whole workflow\")",
        crate::keys::ANN_EXCLUDE_NEWER,
        crate::keys::ANN_EXCLUDE_NEWER
    ))
}

impl ObjectPreview {
    /// The plans of this object's Pod and of its templates' Pods, each env once.
    pub fn plans(&self) -> Vec<crate::plan::EnvPlan> {
        let mut out: Vec<crate::plan::EnvPlan> = Vec::new();
        for p in self.decision.iter().chain(&self.template_decisions).filter_map(plan_of) {
            if !out.iter().any(|o| o.id == p.id) {
                out.push(p);
            }
        }
        out
    }

    /// [`unpinned_warning`] of this object's Pod and of each of its templates' Pods.
    pub fn unpinned_warnings(&self) -> Vec<String> {
        let mut out: Vec<String> = self.decision.iter().filter_map(unpinned_warning).collect();
        // Each template's Pod, named (`templates` and `template_decisions` are in the same order).
        for (t, d) in self.templates.iter().zip(&self.template_decisions) {
            if let Some(w) = unpinned_warning(d) {
                out.push(format!("template {:?}: {w}", t.template));
            }
        }
        out
    }

    pub fn allowed(&self) -> bool {
        self.decision.as_ref().is_none_or(|d| d.allowed()) && self.templates.iter().all(|t| t.allowed)
    }
    pub fn denial(&self) -> Option<String> {
        if let Some(d) = self.decision.as_ref().filter(|d| !d.allowed()) {
            return Some(format!(
                "denied ({}): {}",
                d.denial().map(|x| x.kind.code()).unwrap_or(0),
                d.denial().map(|x| x.message.as_str()).unwrap_or("")
            ));
        }
        let t: Vec<String> = self
            .templates
            .iter()
            .filter(|t| !t.allowed)
            .map(|t| format!("template {:?} denied: {}", t.template, t.message.as_deref().unwrap_or("")))
            .collect();
        (!t.is_empty()).then(|| t.join("; "))
    }
    pub fn label(&self) -> String {
        let at = match self.item {
            Some(i) => format!("document {} items[{i}]", self.document),
            None => format!("document {}", self.document),
        };
        format!("{at} ({} {})", self.kind, self.name)
    }
}

/// Where the pod template sits in a workload, by kind.
fn template_path(api_version: &str, kind: &str) -> Option<&'static [&'static str]> {
    let group = api_version.split_once('/').map(|(g, _)| g).unwrap_or("");
    match (group, kind) {
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet")
        | ("batch", "Job")
        | ("", "ReplicationController") => Some(&["spec", "template"]),
        ("batch", "CronJob") => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

/// The patch of a Pod moved under `prefix` (a workload's pod template): every operation's path,
/// and the `from` of a move or copy, so that a re-injection's `replace` and `remove` land in the
/// template as its `add`s do.
fn prefixed(patch: Patch, prefix: &[&str]) -> Patch {
    let under = |p: &jsonptr::Pointer| {
        let mut path = PointerBuf::from_tokens(prefix.iter().copied());
        path.append(p);
        path
    };
    Patch(
        patch
            .0
            .into_iter()
            .map(|op| match op {
                PatchOperation::Add(mut o) => {
                    o.path = under(&o.path);
                    PatchOperation::Add(o)
                }
                PatchOperation::Remove(mut o) => {
                    o.path = under(&o.path);
                    PatchOperation::Remove(o)
                }
                PatchOperation::Replace(mut o) => {
                    o.path = under(&o.path);
                    PatchOperation::Replace(o)
                }
                PatchOperation::Test(mut o) => {
                    o.path = under(&o.path);
                    PatchOperation::Test(o)
                }
                PatchOperation::Move(mut o) => {
                    o.path = under(&o.path);
                    o.from = under(&o.from);
                    PatchOperation::Move(o)
                }
                PatchOperation::Copy(mut o) => {
                    o.path = under(&o.path);
                    o.from = under(&o.from);
                    PatchOperation::Copy(o)
                }
            })
            .collect(),
    )
}

fn namespace_of<'a>(obj: &'a Value, flag: Option<&'a str>) -> &'a str {
    flag.filter(|n| !n.is_empty())
        .or_else(|| obj.get("metadata")?.get("namespace")?.as_str().filter(|n| !n.is_empty()))
        .unwrap_or("default")
}

/// The webhook's decision for a Pod given as a JSON value.
/// `at`: where the Pod's metadata sits in the object the user wrote (for the warnings).
pub fn decide_pod_value(pod: &Value, namespace: &str, inj: &Injector, claims: &dyn Claims, at: &str) -> Decision {
    // YAML reads an unquoted `3.10` as the number 3.1: name the key and say to quote it, rather
    // than a type error about the whole Pod.
    for section in ["labels", "annotations"] {
        let map = pod.get("metadata").and_then(|m| m.get(section)).and_then(Value::as_object);
        for (k, v) in map.into_iter().flatten() {
            if v.is_number() || v.is_boolean() {
                return Denial::invalid(format!(
                    "{at}.{section}[{k:?}]: {v} is a {}, not a string: quote it in YAML (an unquoted 3.10 is read as the number 3.1, true as a boolean)",
                    if v.is_number() { "number" } else { "boolean" }
                ))
                .into();
            }
        }
    }
    match PodView::deserialize(pod) {
        Ok(view) => inj.decide_view_at(&view, Some(namespace), claims, at),
        Err(e) => Denial::invalid(format!("request.object is not a valid Pod: {e}")).into(),
    }
}

fn apply(obj: &Value, patch: &Patch) -> Result<Value, String> {
    let mut out = obj.clone();
    json_patch::patch(&mut out, &patch.0).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Previews one object (not a List).
pub fn preview_object(
    obj: &Value,
    document: usize,
    item: Option<usize>,
    namespace: Option<&str>,
    inj: &Injector,
    claims: &dyn Claims,
) -> Result<ObjectPreview, PreviewError> {
    let field_str = |f: &str| obj.get(f).and_then(Value::as_str);
    let Some(kind) = field_str("kind").filter(|k| !k.is_empty()) else {
        return Err(err(document, item, "kind", "missing: every document needs apiVersion and kind"));
    };
    let Some(api_version) = field_str("apiVersion").filter(|k| !k.is_empty()) else {
        return Err(err(document, item, "apiVersion", "missing: every document needs apiVersion and kind"));
    };
    let name = get(obj, &["metadata", "name"])
        .and_then(Value::as_str)
        .or_else(|| get(obj, &["metadata", "generateName"]).and_then(Value::as_str))
        .unwrap_or("")
        .to_string();
    let mut out = ObjectPreview {
        document,
        item,
        kind: kind.to_string(),
        name,
        decision: None,
        patch: None,
        object: obj.clone(),
        warnings: Vec::new(),
        notes: Vec::new(),
        templates: Vec::new(),
        template_decisions: Vec::new(),
    };
    let finish = |mut out: ObjectPreview,
                  base: &Value,
                  decision: Decision,
                  prefix: &[&str]|
     -> Result<ObjectPreview, PreviewError> {
        out.object = base.clone();
        if let Some(p) = decision.patch().map(|p| p.to_patch()) {
            let p = prefixed(p, prefix);
            out.object = apply(base, &p)
                .map_err(|e| err(document, item, "(patch)", format!("the patch does not apply: {e}")))?;
            out.patch = Some(p);
        }
        out.warnings.extend(decision.warnings.iter().cloned());
        out.notes.extend(decision.notes.iter().cloned());
        out.decision = Some(decision);
        Ok(out)
    };
    match (api_version, kind) {
        ("v1", "Pod") => {
            let d = decide_pod_value(obj, namespace_of(obj, namespace), inj, claims, "metadata");
            finish(out, obj, d, &[])
        }
        (av, "AdmissionReview") if av.starts_with("admission.k8s.io/") => {
            let text = serde_json::to_string(obj).expect("a Value serialises");
            let review =
                crate::review::decode(text.as_bytes()).map_err(|e| err(document, item, "request", e.to_string()))?;
            let d = inj.decide(&review.request, claims);
            let object = get(obj, &["request", "object"]).cloned().unwrap_or(Value::Null);
            finish(out, &object, d, &[])
        }
        (av, k) if template_path(av, k).is_some() => {
            let path = template_path(av, k).expect("checked");
            let field = path.join(".");
            let template =
                get(obj, path).ok_or_else(|| err(document, item, &field, format!("a {k} needs a pod template")))?;
            if !template.is_object() || template.get("spec").is_none() {
                return Err(err(
                    document,
                    item,
                    &format!("{field}.spec"),
                    format!("a {k}'s pod template needs a spec"),
                ));
            }
            let pod = serde_json::json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": template.get("metadata").cloned().unwrap_or_else(|| serde_json::json!({})),
                "spec": template["spec"],
            });
            // nixuv reads the Pod template, never the workload's own metadata: a marker there is
            // a near miss (the most common reason a workload's Pods are not injected).
            let tpl_meta = template.get("metadata");
            for section in ["labels", "annotations"] {
                let own = get(obj, &["metadata", section]).and_then(Value::as_object);
                for key in own.into_iter().flat_map(|m| m.keys()).filter(|k| crate::keys::is_nixuv_key(k)) {
                    if tpl_meta.and_then(|m| m.get(section)).and_then(|m| m.get(key)).is_none() {
                        out.warnings.push(format!(
                            "nixuv: metadata.{section}[{key:?}] is on the {k} itself; nixuv reads the Pod template: move it to {field}.metadata.{section}"
                        ));
                    }
                }
            }
            // A template without metadata has no opt-in label, so it is never patched.
            let d = decide_pod_value(&pod, namespace_of(obj, namespace), inj, claims, &format!("{field}.metadata"));
            finish(out, obj, d, path)
        }
        ("argoproj.io/v1alpha1", "Workflow" | "WorkflowTemplate" | "ClusterWorkflowTemplate" | "CronWorkflow") => {
            argo::preview(&mut out, obj, namespace_of(obj, namespace), inj, claims)
                .map_err(|(field, message)| err(document, item, &field, message))?;
            Ok(out)
        }
        _ => {
            out.warnings.push(format!("{kind} ({api_version}) makes no Pod nixuv knows; passed through unchanged"));
            Ok(out)
        }
    }
}

/// Previews every object of every document; `List`s are previewed item by item.
/// The most objects (documents and `List` items) one input may hold: far above any manifest,
/// far below what would make the answer (the mutated objects and their patches) outgrow memory.
pub const MAX_OBJECTS: usize = 1000;

pub fn preview_documents(
    docs: &[Document],
    namespace: Option<&str>,
    inj: &Injector,
    claims: &dyn Claims,
) -> Result<Vec<ObjectPreview>, PreviewError> {
    let mut out = Vec::new();
    let too_many = |index: usize, field: &str| {
        err(index, None, field, format!("more than {MAX_OBJECTS} objects in one input; split it"))
    };
    for (n, d) in docs.iter().enumerate() {
        if !d.value.is_object() {
            return Err(err(d.index, None, "(document)", "is not an object"));
        }
        let list = d.value.get("kind").and_then(Value::as_str) == Some("List");
        if !list && out.len() >= MAX_OBJECTS {
            return Err(too_many(d.index, "(document)"));
        }
        if kfp::is_pipeline(&d.value) || kfp::is_platform_config(&d.value) {
            // A KFP pipeline's platform config is the document after it.
            let platform = docs.get(n + 1).map(|p| &p.value).filter(|p| kfp::is_platform_config(p));
            out.push(preview_pipeline(d, platform, namespace, inj, claims)?);
        } else if list {
            let items = d
                .value
                .get("items")
                .and_then(Value::as_array)
                .ok_or_else(|| err(d.index, None, "items", "a List needs an items array"))?;
            if out.len() + items.len() > MAX_OBJECTS {
                return Err(too_many(d.index, "items"));
            }
            for (i, item) in items.iter().enumerate() {
                out.push(preview_object(item, d.index, Some(i), namespace, inj, claims)?);
            }
        } else {
            out.push(preview_object(&d.value, d.index, None, namespace, inj, claims)?);
        }
    }
    Ok(out)
}

/// A KFP pipeline (its executors' Pods, with `platform`, the config after it) or that config
/// itself (read with the pipeline before it; passed through).
fn preview_pipeline(
    d: &Document,
    platform: Option<&Value>,
    namespace: Option<&str>,
    inj: &Injector,
    claims: &dyn Claims,
) -> Result<ObjectPreview, PreviewError> {
    let pipeline = kfp::is_pipeline(&d.value);
    let name = get(&d.value, &["pipelineInfo", "name"]).and_then(Value::as_str).unwrap_or("");
    let mut out = ObjectPreview {
        document: d.index,
        item: None,
        kind: if pipeline { "PipelineSpec" } else { "PlatformSpec" }.to_string(),
        name: name.to_string(),
        decision: None,
        patch: None,
        object: d.value.clone(),
        warnings: Vec::new(),
        notes: Vec::new(),
        templates: Vec::new(),
        template_decisions: Vec::new(),
    };
    if pipeline {
        kfp::preview(&mut out, &d.value, platform, namespace_of(&d.value, namespace), inj, claims)
            .map_err(|(field, message)| err(d.index, None, &field, message))?;
    }
    Ok(out)
}

/// Reads `text` (format detected) and previews it.
pub fn preview_text(
    text: &str,
    namespace: Option<&str>,
    inj: &Injector,
    claims: &dyn Claims,
) -> Result<(Format, Vec<Document>, Vec<ObjectPreview>), PreviewError> {
    let format = detect(text);
    let docs = parse(text, format)?;
    if docs.is_empty() {
        return Err(err(1, None, "(body)", "no documents in the input"));
    }
    let previews = preview_documents(&docs, namespace, inj, claims)?;
    Ok((format, docs, previews))
}

/// The outcome label for metrics.
pub fn outcome(p: &ObjectPreview) -> Outcome {
    match &p.decision {
        Some(d) => d.outcome(),
        None if p.templates.iter().any(|t| !t.allowed) => Outcome::Denied,
        None if !p.templates.is_empty() => Outcome::Injected,
        None => Outcome::Skipped,
    }
}
