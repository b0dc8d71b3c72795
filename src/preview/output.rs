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
            env_id: p.decision.as_ref().and_then(|d| d.env_id()),
            templates: &p.templates,
        })
        .collect()
}
