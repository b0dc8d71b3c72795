//! Kubeflow Pipelines: a pipeline as the KFP SDK compiles it (`kfp.compiler.Compiler`, the YAML a
//! user uploads), previewed as the Pods KFP's Argo backend makes of it. Each executor of
//! `deploymentSpec.executors` runs in a Pod whose labels and annotations are the executor's
//! `podMetadata` in the second document, the Kubernetes platform config that
//! `kfp.kubernetes.add_pod_label` / `add_pod_annotation` write; its `main` container runs the
//! executor's image, command and args (the backend's driver sets them through the template's
//! `podSpecPatch`, behind KFP's launcher), beside Argo's `wait` sidecar, after the
//! `kfp-launcher` init container. The launcher's own arguments are left out: they change nothing
//! nixuv does.

use serde_json::{json, Map, Value};

use super::ObjectPreview;
use crate::inject::Injector;

/// Whether `doc` is a pipeline compiled by the KFP SDK (its IR, a `PipelineSpec`).
pub fn is_pipeline(doc: &Value) -> bool {
    doc.get("kind").is_none() && doc.get("pipelineInfo").is_some() && doc.get("deploymentSpec").is_some()
}

/// Whether `doc` is the platform config the SDK writes after a pipeline (`platforms:`).
pub fn is_platform_config(doc: &Value) -> bool {
    doc.get("kind").is_none() && doc.get("platforms").is_some_and(Value::is_object)
}

/// The Pod KFP's backend makes for executor `exec` of image `container`, with `meta` (its
/// `podMetadata`).
fn executor_pod(container: &Map<String, Value>, meta: Option<&Value>) -> Value {
    let mut main = Map::new();
    main.insert("name".into(), json!("main"));
    for key in ["image", "command", "args", "env", "resources"] {
        if let Some(v) = container.get(key) {
            main.insert(key.into(), v.clone());
        }
    }
    let launcher = json!({"name": "kfp-launcher", "mountPath": "/kfp-launcher"});
    main.insert("volumeMounts".into(), json!([launcher]));
    let mut labels = meta.and_then(|m| m.get("labels")).and_then(Value::as_object).cloned().unwrap_or_default();
    labels.insert("pipelines.kubeflow.org/v2_component".into(), json!("true"));
    let annotations = meta.and_then(|m| m.get("annotations")).and_then(Value::as_object).cloned().unwrap_or_default();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"labels": labels, "annotations": annotations},
        "spec": {
            "initContainers": [{"name": "kfp-launcher", "image": "ghcr.io/kubeflow/kfp-launcher",
                                "command": ["launcher-v2", "--copy", "/kfp-launcher/launch"],
                                "volumeMounts": [launcher]}],
            "containers": [Value::Object(main), {"name": "wait", "image": "quay.io/argoproj/argoexec"}],
            "volumes": [{"name": "kfp-launcher", "emptyDir": {}}],
        }
    })
}

/// Whether an executor is a lightweight Python component: its command installs `kfp` with pip
/// when it starts and runs `kfp.dsl.executor_main`.
fn installs_kfp_at_start(container: &Map<String, Value>) -> bool {
    let text: String = ["command", "args"]
        .iter()
        .filter_map(|k| container.get(*k).and_then(Value::as_array))
        .flatten()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join(" ");
    text.contains("kfp.dsl.executor_main") && text.contains("pip install")
}

/// Previews `pipeline` (with the `platform` config that follows it, if any): one template report
/// per executor, named after it.
pub fn preview(
    out: &mut ObjectPreview,
    pipeline: &Value,
    platform: Option<&Value>,
    namespace: &str,
    inj: &Injector,
    claims: &dyn crate::claims::Claims,
) -> Result<(), (String, String)> {
    let executors = pipeline
        .get("deploymentSpec")
        .and_then(|d| d.get("executors"))
        .and_then(Value::as_object)
        .ok_or_else(|| ("deploymentSpec.executors".to_string(), "missing or not a map".to_string()))?;
    let config =
        platform.and_then(|p| p.pointer("/platforms/kubernetes/deploymentSpec/executors")).and_then(Value::as_object);
    for (exec, spec) in executors {
        // Importers and other system executors run no container of the user's.
        let Some(container) = spec.get("container").and_then(Value::as_object) else { continue };
        let meta = config.and_then(|c| c.get(exec)).and_then(|e| e.get("podMetadata"));
        let pod = executor_pod(container, meta);
        let field = format!("platforms.kubernetes.deploymentSpec.executors.{exec}.podMetadata");
        super::argo::preview_template(out, exec.clone(), &pod, &field, namespace, inj, claims);
        let report = out.templates.last().expect("one report per previewed executor");
        let venv = report.pod.as_ref().is_some_and(|p| {
            p["spec"]["containers"][0]["env"]
                .as_array()
                .is_some_and(|env| env.iter().any(|e| e["name"] == "VIRTUAL_ENV"))
        });
        if venv && installs_kfp_at_start(container) {
            out.warnings.push(format!(
                "template {exec:?}: a lightweight Python component runs `python3 -m pip install kfp` when it starts, and the env's venv (read-only, without pip) comes first on PATH: the step would fail; set nixuv.io/python-mode: overlay (the image's Python, the env's packages on PYTHONPATH), or use a container component (docs/argo.md, \"Kubeflow Pipelines\")"
            ));
        }
    }
    Ok(())
}
