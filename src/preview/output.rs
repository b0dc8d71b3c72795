//! Rendering previews: the mutated documents as YAML or JSON (same document structure as the
//! input, `List`s kept), the patches, or the endpoint's JSON results. Output is deterministic:
//! keys in sorted order, env ids stable.

use serde::Serialize;
use serde_json::{json, Value};

use super::{Document, ObjectPreview};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Yaml,
    Json,
    Patch,
    /// A Job per distinct env the input will need, building it ahead of the first Pod.
    WarmJob,
}

/// Every `(namespace, init container, its volumes)` of nixuv's init containers in `v`.
fn init_containers<'a>(v: &'a Value, out: &mut Vec<(&'a Value, &'a Value)>) {
    match v {
        Value::Object(m) => {
            if let Some(inits) = m.get("initContainers").and_then(Value::as_array) {
                if let Some(init) = inits.iter().find(|c| c["name"] == crate::names::INIT_CONTAINER) {
                    out.push((init, m.get("volumes").unwrap_or(&Value::Null)));
                }
            }
            for child in m.values() {
                init_containers(child, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|c| init_containers(c, out)),
        _ => {}
    }
}

/// `-o warm-job`: a Job per distinct env the previewed objects will need (the same init container,
/// stores and config as the webhook gives them), so that a fan-out or a rollout finds its envs
/// built. Not labelled for injection: the Job itself is nixuv's init container.
pub fn warm_jobs(previews: &[ObjectPreview], namespace: Option<&str>) -> String {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = String::new();
    for p in previews {
        let mut found = Vec::new();
        init_containers(&p.object, &mut found);
        let ns = namespace
            .or_else(|| p.object["metadata"]["namespace"].as_str())
            .filter(|n| !n.is_empty())
            .unwrap_or("default");
        for (init, volumes) in found {
            let env = init["env"]
                .as_array()
                .and_then(|e| e.iter().find(|v| v["name"] == crate::names::ENV_ID))
                .and_then(|v| v["value"].as_str())
                .unwrap_or("");
            if env.is_empty() || !seen.insert((ns.to_string(), env.to_string())) {
                continue;
            }
            let ours: Vec<Value> = volumes
                .as_array()
                .into_iter()
                .flatten()
                .filter(|v| crate::ecosystem::is_nixuv_volume(v["name"].as_str().unwrap_or("")))
                .cloned()
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
                        "spec": {"restartPolicy": "Never", "containers": [init], "volumes": ours}
                    }
                }
            });
            if !out.is_empty() {
                out.push_str("---\n");
            }
            out.push_str(&serde_yaml_ng::to_string(&job).expect("a JSON value is valid YAML"));
        }
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
    out
}

pub fn json(docs: &[Document], previews: &[ObjectPreview]) -> String {
    let mut docs = mutated_documents(docs, previews);
    let v = if docs.len() == 1 { docs.remove(0) } else { json!({ "apiVersion": "v1", "kind": "List", "items": docs }) };
    let mut s = serde_json::to_string_pretty(&v).expect("serialises");
    s.push('\n');
    s
}

#[derive(Serialize)]
struct PatchEntry<'a> {
    document: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    item: Option<usize>,
    kind: &'a str,
    name: &'a str,
    patch: &'a Value,
}

/// One object: its patch (`[]` when nothing changes), ready for `kubectl patch --type json`.
/// Several: a list of `{document, item, kind, name, patch}`.
pub fn patches(previews: &[ObjectPreview]) -> String {
    let patch_value = |p: &ObjectPreview| {
        p.patch.as_ref().map(|p| serde_json::to_value(p).expect("serialises")).unwrap_or_else(|| json!([]))
    };
    let v = if previews.len() == 1 {
        patch_value(&previews[0])
    } else {
        let values: Vec<Value> = previews.iter().map(patch_value).collect();
        let entries: Vec<PatchEntry<'_>> = previews
            .iter()
            .zip(&values)
            .map(|(p, patch)| PatchEntry { document: p.document, item: p.item, kind: &p.kind, name: &p.name, patch })
            .collect();
        serde_json::to_value(entries).expect("serialises")
    };
    let mut s = serde_json::to_string_pretty(&v).expect("serialises");
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
