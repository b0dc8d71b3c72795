//! Rendering previews: the mutated documents as YAML or JSON (same document structure as the
//! input, `List`s kept), the patches, or the endpoint's JSON results. Output is deterministic:
//! keys in sorted order, env ids stable.

use serde::Serialize;
use serde_json::{json, Value};

use super::{Document, ObjectPreview};
use crate::config::Config;
use crate::inject::Decision;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Yaml,
    Json,
    Patch,
    /// A Job per distinct env the input will need, building it ahead of the first Pod.
    WarmJob,
    /// Image store: the `NixuvEnv` objects the input will need, to `kubectl apply` before it.
    Env,
}

/// `-o env`: a `NixuvEnv` per distinct env the previewed objects will need (image store), so
/// that CI can have them built before a Workflow runs; `None` without an image store in `cfg`.
pub fn env_objects(previews: &[ObjectPreview], cfg: &Config) -> Option<String> {
    cfg.image_repository.as_ref()?;
    let mut seen = std::collections::BTreeSet::new();
    let mut out = String::new();
    for d in previews.iter().flat_map(|p| p.decision.iter().chain(&p.template_decisions)) {
        let (Some(id), Some(spec)) = (d.env_id(), d.env.as_ref().and_then(|e| e.request.as_ref())) else { continue };
        if !seen.insert(*id) {
            continue;
        }
        let env = crate::imagestore::NixuvEnv::requested(id, (**spec).clone());
        if !out.is_empty() {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml_ng::to_string(&env).expect("a NixuvEnv is valid YAML"));
    }
    Some(out)
}

/// `-o warm-job`: a Job per distinct env the previewed objects will need, so that a fan-out or a
/// rollout finds its envs built. Each is made from nixuv's own plan (the init container and
/// stores the webhook gives the env, under `cfg`), only for objects nixuv injects or finds
/// injected: nothing of the input's own containers or volumes is copied. Not labelled for
/// injection (the Job itself is nixuv's init container) and without a service account token.
pub fn warm_jobs(previews: &[ObjectPreview], namespace: Option<&str>, cfg: &Config) -> String {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = String::new();
    let mut decisions: Vec<(&ObjectPreview, &Decision)> = Vec::new();
    for p in previews {
        decisions.extend(p.decision.as_ref().map(|d| (p, d)));
        decisions.extend(p.template_decisions.iter().map(|d| (p, d)));
    }
    for (p, d) in decisions {
        let (Some(env), Some(parts)) = (d.env_id(), d.env.as_ref()) else { continue };
        let ns = namespace
            .or_else(|| p.object["metadata"]["namespace"].as_str())
            .filter(|n| !n.is_empty())
            .unwrap_or("default");
        if !seen.insert((ns.to_string(), env.to_string())) {
            continue;
        }
        let init: Value = serde_json::from_str(parts.init_container.get()).expect("nixuv's own init container");
        let volumes: Vec<Value> = crate::inject::patch::volumes(cfg, parts.stores)
            .into_iter()
            .map(|(_, v)| serde_json::to_value(v).expect("serialises"))
            .collect();
        let labels =
            json!({"app.kubernetes.io/name": "nixuv", "app.kubernetes.io/component": "warm", "nixuv.io/env": env});
        let job = json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": format!("nixuv-warm-{env}"), "namespace": ns, "labels": labels},
            "spec": {
                "backoffLimit": 2,
                "ttlSecondsAfterFinished": 3600,
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "restartPolicy": "Never",
                        "automountServiceAccountToken": false,
                        "containers": [init],
                        "volumes": volumes
                    }
                }
            }
        });
        if !out.is_empty() {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml_ng::to_string(&job).expect("a JSON value is valid YAML"));
    }
    out
}

/// The input documents with every previewed object replaced by its mutated form.
pub fn mutated_documents(docs: &[Document], previews: &[ObjectPreview]) -> Vec<Value> {
    docs.iter()
        .map(|d| {
            let mut v = d.value.clone();
            for p in previews.iter().filter(|p| p.document == d.index) {
                match p.item {
                    Some(i) => v["items"][i] = p.object.clone(),
                    None => v = p.object.clone(),
                }
            }
            v
        })
        .collect()
}

/// The Pods of an Argo object's templates that nixuv changes, as Argo builds them with nixuv's
/// patch applied: the Workflow itself is submitted unchanged, so these are what its steps run.
fn template_pods(p: &ObjectPreview) -> impl Iterator<Item = (&str, &Value)> {
    p.templates.iter().filter_map(|t| Some((t.template.as_str(), t.pod.as_ref()?)))
}

/// [`mutated_documents`] followed by the Pods of the Argo templates nixuv changes.
pub fn documents_with_template_pods(docs: &[Document], previews: &[ObjectPreview]) -> Vec<Value> {
    let mut out = mutated_documents(docs, previews);
    out.extend(previews.iter().flat_map(|p| template_pods(p).map(|(_, pod)| pod.clone())));
    out
}

fn comment_lines(p: &ObjectPreview) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(d) = p.decision.as_ref().filter(|d| !d.allowed()) {
        lines.push(format!(
            "# nixuv: {}: denied ({}): {}",
            p.label(),
            d.denial().map(|x| x.kind.code()).unwrap_or(0),
            d.denial().map(|x| x.message.as_str()).unwrap_or("")
        ));
    }
    for t in &p.templates {
        let mut line = format!("# nixuv: {} template {:?}: ", p.label(), t.template);
        if !t.allowed {
            line.push_str(&format!("denied: {}", t.message.as_deref().unwrap_or("")));
        } else {
            if let Some(env) = &t.env_id {
                line.push_str(&format!("env {env}; "));
            }
            if !t.system_deps.is_empty() {
                line.push_str(&format!("system: {}; ", t.system_deps.join(", ")));
            }
            if !t.python_deps.is_empty() {
                line.push_str(&format!("python: {}; ", t.python_deps.join(", ")));
            }
            line.push_str(&t.summary);
        }
        lines.push(line.replace('\n', " "));
    }
    lines
}

pub fn yaml(docs: &[Document], previews: &[ObjectPreview]) -> String {
    let mut out = String::new();
    for (i, (d, v)) in docs.iter().zip(mutated_documents(docs, previews)).enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml_ng::to_string(&v).expect("a JSON value is valid YAML"));
        for p in previews.iter().filter(|p| p.document == d.index) {
            for line in comment_lines(p) {
                out.push_str(&line);
                out.push('\n');
            }
        }
    }
    for p in previews {
        for (template, pod) in template_pods(p) {
            out.push_str(&format!(
                "---\n# nixuv: the Pod of {} template {template:?}, as Argo builds it, with nixuv's patch\n",
                p.label()
            ));
            out.push_str(&serde_yaml_ng::to_string(pod).expect("a JSON value is valid YAML"));
        }
    }
    out
}

pub fn json(docs: &[Document], previews: &[ObjectPreview]) -> String {
    let mut docs = documents_with_template_pods(docs, previews);
    let v = if docs.len() == 1 { docs.remove(0) } else { json!({ "apiVersion": "v1", "kind": "List", "items": docs }) };
    let mut s = serde_json::to_string_pretty(&v).expect("serialises");
    s.push('\n');
    s
}

#[derive(Serialize)]
struct PatchEntry<'a> {
    /// The file the object came from, when there are several.
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<&'a str>,
    document: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    item: Option<usize>,
    kind: &'a str,
    name: &'a str,
    /// The Argo template whose Pod the patch is for.
    #[serde(skip_serializing_if = "Option::is_none")]
    template: Option<&'a str>,
    patch: &'a Value,
}

fn patch_value(p: &ObjectPreview) -> Value {
    p.patch.as_ref().map(|p| serde_json::to_value(p).expect("serialises")).unwrap_or_else(|| json!([]))
}

/// One object: its patch (`[]` when nothing changes), ready for `kubectl patch --type json`.
/// Several: a list of `{document, item, kind, name, patch}`.
pub fn patches(previews: &[ObjectPreview]) -> String {
    if previews.len() == 1 && previews[0].templates.iter().all(|t| t.patch.is_none()) {
        let mut s = serde_json::to_string_pretty(&patch_value(&previews[0])).expect("serialises");
        s.push('\n');
        return s;
    }
    patch_entries(&[(None, previews)])
}

/// `-o patch` over several files: one JSON list of `{file, document, item, kind, name, patch}`
/// for every object of every file, in order.
pub fn patches_of_files(files: &[(&str, &[ObjectPreview])]) -> String {
    let files: Vec<(Option<&str>, &[ObjectPreview])> = files.iter().map(|(f, ps)| (Some(*f), *ps)).collect();
    patch_entries(&files)
}

/// One JSON list of the entries of every object of `files` (named when given), an Argo object's
/// followed by one per template nixuv changes (its patch against the Pod Argo builds).
fn patch_entries(files: &[(Option<&str>, &[ObjectPreview])]) -> String {
    let values: Vec<Vec<Value>> = files.iter().map(|(_, ps)| ps.iter().map(patch_value).collect()).collect();
    let entries: Vec<PatchEntry<'_>> = files
        .iter()
        .zip(&values)
        .flat_map(|((file, ps), vs)| {
            ps.iter().zip(vs).flat_map(move |(p, patch)| {
                let entry = |template, patch| PatchEntry {
                    file: *file,
                    document: p.document,
                    item: p.item,
                    kind: &p.kind,
                    name: &p.name,
                    template,
                    patch,
                };
                let templates =
                    p.templates.iter().filter_map(move |t| Some(entry(Some(t.template.as_str()), t.patch.as_ref()?)));
                std::iter::once(entry(None, patch)).chain(templates)
            })
        })
        .collect();
    let mut s = serde_json::to_string_pretty(&entries).expect("serialises");
    s.push('\n');
    s
}

/// The `/preview` result of one object.
#[derive(Debug, Serialize)]
pub struct PreviewResult<'a> {
    pub allowed: bool,
    pub message: Option<String>,
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub notes: &'a [String],
    pub patch: Option<&'a json_patch::Patch>,
    pub object: &'a Value,
    #[serde(rename = "envId", skip_serializing_if = "Option::is_none")]
    pub env_id: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub templates: &'a [super::TemplateReport],
}

pub fn results(previews: &[ObjectPreview]) -> Vec<PreviewResult<'_>> {
    previews
        .iter()
        .map(|p| PreviewResult {
            allowed: p.allowed(),
            message: p.denial(),
            warnings: p.warnings.clone(),
            notes: &p.notes,
            patch: p.patch.as_ref(),
            object: &p.object,
            env_id: p.decision.as_ref().and_then(|d| d.env_id()).map(crate::envid::EnvId::as_str),
            templates: &p.templates,
        })
        .collect()
}
