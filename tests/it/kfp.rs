//! Kubeflow Pipelines: a pipeline written and compiled by the real KFP SDK with kfp-kubernetes
//! (tests/support/kfp_pipeline.py), previewed executor by executor as the Pods KFP's Argo backend
//! makes of it. Skipped, with a message, only where `make tools` could not install the SDK (no
//! package index: `.tools/kfp.unavailable`). What KFP's backend and driver do on a cluster is not
//! run here (docs/argo.md says what was and was not tested).

use std::process::Command;

use serde_json::Value;

use crate::common;

fn env_names(pod: &Value) -> Vec<String> {
    pod["spec"]["containers"][0]["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_kfp_pipeline_previews_executor_by_executor() {
    let Some(py) = common::optional_python("kfp", "kfp.kubernetes") else { return };
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/kfp_pipeline.py");
    let out = Command::new(&py).arg(&script).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(&file, &out.stdout).unwrap();
    let preview = |args: &[&str]| {
        let out = Command::new(common::bin()).arg("preview").args(args).arg("-f").arg(&file).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, json, err) = preview(&["-o", "json"]);
    assert_eq!(code, Some(0), "{err}");
    let list: Value = serde_json::from_str(&json).unwrap();
    let items = list["items"].as_array().unwrap();
    // The pipeline and its platform config pass through unchanged, then one Pod per executor
    // that nixuv injects (`report` has no label).
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_slice(&out.stdout)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    assert_eq!(items[..2], docs[..]);
    let pod = |exec: &str| {
        items
            .iter()
            .find(|i| i["metadata"]["generateName"] == format!("nixuv-kfp-demo-{exec}-"))
            .unwrap_or_else(|| panic!("no Pod for {exec} in {json}"))
    };
    assert_eq!(items.len(), 5, "{json}");
    for exec in ["exec-train", "exec-score", "exec-transcode"] {
        let p = pod(exec);
        assert_eq!(p["metadata"]["labels"]["pipelines.kubeflow.org/v2_component"], "true");
        let typed = common::as_pod(p);
        let spec = typed.spec.as_ref().unwrap();
        let inits: Vec<&str> = spec.init_containers.as_ref().unwrap().iter().map(|c| c.name.as_str()).collect();
        assert_eq!(inits, ["nixuv-init", "kfp-launcher"], "{exec}");
        let init = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(common::pss::restricted_violations(&typed, init), Vec::<String>::new(), "{exec}");
        // The app is `main`; Argo's `wait` is a sidecar, not a target.
        assert!(env_names(p).contains(&"NIXUV_ENV".to_string()), "{exec}");
        assert!(p["spec"]["containers"][1]["env"].is_null(), "{exec}: wait untouched");
    }
    // Overlay: the image's Python, the env's packages on PYTHONPATH; venv: VIRTUAL_ENV.
    assert!(env_names(pod("exec-train")).contains(&"PYTHONPATH".to_string()));
    assert!(!env_names(pod("exec-train")).contains(&"VIRTUAL_ENV".to_string()));
    assert!(env_names(pod("exec-score")).contains(&"VIRTUAL_ENV".to_string()));
    assert_eq!(pod("exec-train")["metadata"]["annotations"]["nixuv.io/python-deps"], "pandas==2.2.3");
    let path = pod("exec-transcode")["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "PATH")
        .unwrap()["value"]
        .clone();
    assert!(path.as_str().unwrap().starts_with("/nix/var/nix/profiles/nixuv/"), "{path}");
    // The venv-mode lightweight component is warned about, by name, and only it.
    assert!(err.contains("template \"exec-score\": a lightweight Python component"), "{err}");
    assert!(!err.contains("template \"exec-train\": a lightweight"), "{err}");
    let (code, _, _) = preview(&["--strict"]);
    assert_eq!(code, Some(3), "the warning fails --strict");

    // One warm Job per distinct env, as for an Argo Workflow.
    let (code, jobs, err) = preview(&["-o", "warm-job"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(jobs.matches("\nkind: Job").count() + usize::from(jobs.starts_with("kind: Job")), 3, "{jobs}");

    // The same over HTTP: POST /preview answers one result per executor.
    let server = common::Server::start();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (status, body) = rt.block_on(async {
        let r = server.post("/preview", "application/yaml", out.stdout.clone()).await;
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    });
    assert_eq!(status, 200, "{body}");
    let templates: Vec<&str> = body[0]["templates"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|t| t["template"].as_str().unwrap())
        .collect();
    assert_eq!(templates, ["exec-report", "exec-score", "exec-train", "exec-transcode"], "{body}");
}

/// Why preview warns: in venv mode the app's `python3` is the env's venv, which has no pip (and
/// is read-only), so a lightweight component's `python3 -m pip install kfp` fails. Real uv, real
/// venv, the app container's view.
#[test]
fn a_venv_has_no_pip_for_a_lightweight_component_to_run() {
    use crate::materialize::{init_ok, run_app, text, Fixture, Volumes};
    let fx = Fixture::new();
    let vols = Volumes::new();
    let pod = fx.mutate(&fx.pod("", "nixuvdep"));
    init_ok(&pod, &vols);
    let out = run_app(&pod, &vols, "python3 -m pip install --no-deps kfp", false);
    assert!(!out.status.success());
    assert!(text(&out).contains("No module named pip"), "{}", text(&out));
}
