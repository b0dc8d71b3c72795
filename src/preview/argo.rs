//! Argo Workflows: each template that makes a Pod (container, script, containerSet) is previewed
//! as the Pod Argo builds from it: labels and annotations from `spec.podMetadata` merged with the
//! template's `metadata` (the template wins), the app container named `main` (containerSet: its
//! own names), Argo's `wait` sidecar beside it (a sidecar in nixuv's default config, so not a
//! target), and the template's `sidecars`.

use serde_json::{json, Map, Value};

use super::{decide_pod_value, ObjectPreview, TemplateReport};
use crate::inject::pod::PodView;
use crate::inject::Injector;
use crate::plan::deps;

fn merged(a: Option<&Value>, b: Option<&Value>) -> Map<String, Value> {
    let mut out = a.and_then(Value::as_object).cloned().unwrap_or_default();
    if let Some(b) = b.and_then(Value::as_object) {
        out.extend(b.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    out
}

/// The Pod Argo would build for `tpl`: `Ok(None)` for templates that make no Pod (steps, dag,
/// suspend, resource, http, plugin), `Err(field)` when the template's container is not an object.
fn pod_for(spec: &Value, tpl: &Value, wf_name: &str) -> Result<Option<Value>, &'static str> {
    let mut containers = Vec::new();
    if let Some(c) = tpl.get("container") {
        let mut c = c.as_object().ok_or("container")?.clone();
        c.insert("name".into(), json!("main"));
        containers.push(Value::Object(c));
    } else if let Some(s) = tpl.get("script") {
        let mut c = s.as_object().ok_or("script")?.clone();
        c.remove("source");
        c.insert("name".into(), json!("main"));
        containers.push(Value::Object(c));
    } else if let Some(set) = tpl.get("containerSet") {
        let list = set.get("containers").and_then(Value::as_array).ok_or("containerSet.containers")?;
        containers.extend(list.iter().cloned());
    } else {
        return Ok(None);
    }
    containers.push(json!({ "name": "wait", "image": "quay.io/argoproj/argoexec" }));
    containers.extend(tpl.get("sidecars").and_then(Value::as_array).into_iter().flatten().cloned());
    let pod_meta = spec.get("podMetadata");
    let meta = tpl.get("metadata");
    let mut labels = merged(pod_meta.and_then(|m| m.get("labels")), meta.and_then(|m| m.get("labels")));
    labels.insert("workflows.argoproj.io/workflow".into(), json!(wf_name));
    let annotations = merged(pod_meta.and_then(|m| m.get("annotations")), meta.and_then(|m| m.get("annotations")));
    let mut volumes: Vec<Value> = spec.get("volumes").and_then(Value::as_array).cloned().unwrap_or_default();
    volumes.extend(tpl.get("volumes").and_then(Value::as_array).into_iter().flatten().cloned());
    Ok(Some(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "labels": labels, "annotations": annotations },
        "spec": {
            "containers": containers,
            "initContainers": tpl.get("initContainers").cloned().unwrap_or_else(|| json!([])),
            "volumes": volumes,
        }
    })))
}

pub fn preview(
    out: &mut ObjectPreview,
    obj: &Value,
    namespace: &str,
    inj: &Injector,
    claims: &dyn crate::claims::Claims,
) -> Result<(), (String, String)> {
    let (spec_field, spec) = if out.kind == "CronWorkflow" {
        ("spec.workflowSpec", obj.get("spec").and_then(|s| s.get("workflowSpec")))
    } else {
        ("spec", obj.get("spec"))
    };
    let spec = spec.ok_or_else(|| (spec_field.to_string(), format!("a {} needs {spec_field}", out.kind)))?;
    let templates = spec
        .get("templates")
        .and_then(Value::as_array)
        .ok_or_else(|| (format!("{spec_field}.templates"), "missing or not a list".to_string()))?;
    // Lint: Argo does not copy the Workflow's own labels and annotations to its Pods.
    for section in ["labels", "annotations"] {
        let keys = obj.get("metadata").and_then(|m| m.get(section)).and_then(Value::as_object);
        for key in keys.into_iter().flat_map(|m| m.keys()).filter(|k| crate::keys::is_nixuv_key(k)) {
            out.warnings.push(format!(
                "metadata.{section}[{key:?}] is on the {} itself, which Argo does not copy to its Pods; put it under {spec_field}.podMetadata.{section} or a template's metadata.{section}",
                out.kind
            ));
        }
    }
    let wf_name = out.name.clone();
    for (i, tpl) in templates.iter().enumerate() {
        let name = tpl.get("name").and_then(Value::as_str).map(String::from).unwrap_or_else(|| format!("#{i}"));
        let pod = match pod_for(spec, tpl, &wf_name) {
            Ok(Some(pod)) => pod,
            Ok(None) => continue,
            Err(field) => return Err((format!("{spec_field}.templates[{i}].{field}"), "must be an object".into())),
        };
        let field = format!("{spec_field}.templates[{i}].metadata");
        preview_template(out, name, &pod, &field, namespace, inj, claims);
    }
    Ok(())
}

/// One Pod a workflow makes (an Argo template's, a KFP executor's), named `name`: decided as the
/// webhook would, with nixuv's patch applied, reported in `out.templates`. `field` is where its
/// metadata comes from, for errors.
pub(super) fn preview_template(
    out: &mut ObjectPreview,
    name: String,
    pod: &Value,
    field: &str,
    namespace: &str,
    inj: &Injector,
    claims: &dyn crate::claims::Claims,
) {
    let wf_name = out.name.clone();
    let d = decide_pod_value(pod, namespace, inj, claims, field);
    let view: Option<PodView> = serde::Deserialize::deserialize(pod).ok();
    let declared = view.as_ref().and_then(|v| deps::declared(v.labels(), v.annotations()).ok()).unwrap_or_default();
    let targets: Vec<String> = d
        .patch()
        .map(|p| {
            let mut names = Vec::new();
            for path in p.paths() {
                if let Some(rest) = path.strip_prefix("/spec/containers/") {
                    if let Some(idx) = rest.split('/').next().and_then(|s| s.parse::<usize>().ok()) {
                        let n = pod["spec"]["containers"][idx]["name"].as_str().unwrap_or("").to_string();
                        if !names.contains(&n) {
                            names.push(n);
                        }
                    }
                }
            }
            names
        })
        .unwrap_or_default();
    // The Pod as Argo would create it, with nixuv's patch applied: what the step runs.
    let (patched, patch) = match d.patch().filter(|_| d.allowed()) {
        Some(p) => {
            let ops = p.to_patch();
            let mut after = pod.clone();
            json_patch::patch(&mut after, &ops.0).expect("nixuv's patch applies to the Pod it was made for");
            let base = wf_name.trim_end_matches('-');
            after["metadata"]["generateName"] = json!(format!("{base}-{name}-"));
            (Some(after), Some(serde_json::to_value(&ops).expect("serialises")))
        }
        None => (None, None),
    };
    let summary = match (&patched, d.allowed()) {
        (_, false) => "denied".to_string(),
        (Some(after), true) => {
            let before: Vec<&Value> =
                pod["spec"]["volumes"].as_array().into_iter().flatten().map(|v| &v["name"]).collect();
            let added: Vec<String> = after["spec"]["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|v| !before.contains(&&v["name"]))
                .map(|v| v["name"].as_str().unwrap_or("").to_string())
                .collect();
            let init = after["spec"]["initContainers"]
                .as_array()
                .is_some_and(|a| a.iter().any(|c| c["name"] == crate::names::INIT_CONTAINER));
            format!(
                "{} patch operations: volumes {}; {}; env and mounts in {}",
                d.patch().map_or(0, |p| p.len()),
                added.join(", "),
                if init { "init container nixuv-init" } else { "no init container (the env's image)" },
                targets.iter().map(|t| format!("{t:?}")).collect::<Vec<_>>().join(", ")
            )
        }
        (None, true) => format!("not injected ({})", d.outcome().as_str()),
    };
    out.warnings.extend(d.warnings.iter().map(|w| format!("template {name:?}: {w}")));
    out.notes.extend(d.notes.iter().map(|n| format!("template {name:?}: {n}")));
    out.templates.push(TemplateReport {
        template: name,
        allowed: d.allowed(),
        message: d.denial().map(|x| x.message.clone()),
        env_id: d.env_id().map(ToString::to_string),
        system_deps: declared.system.iter().map(|s| s.attr.clone()).collect(),
        python_deps: declared.python.iter().map(|p| p.requirement.clone()).collect(),
        targets,
        summary,
        pod: patched,
        patch,
    });
    out.template_decisions.push(d);
}
