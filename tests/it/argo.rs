//! Argo Workflows written with Hera (PyPI `hera`), as nixuv's users write them: the Workflow is
//! built by real Hera (tests/support/hera_workflow.py), rendered to YAML and previewed. Every
//! template that asked for dependencies is injected with the env id a plain Pod of the same
//! declaration gets; the declaration on the wrong level and the one without opt-in are warned
//! about. Skipped, with a message, only where `make tools` could not install Hera (no package
//! index reachable: it leaves `.tools/hera.unavailable`); a missing Hera is otherwise a failure.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::common::{self, Server};

/// The env id nixuv gives a plain Pod with these labels and annotations.
fn env_id_of(labels: Value, annotations: Value) -> String {
    let dir = tempfile::tempdir().unwrap();
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": labels, "annotations": annotations},
        "spec": {"containers": [{"name": "main", "image": "x"}]}});
    let f = dir.path().join("pod.json");
    std::fs::write(&f, pod.to_string()).unwrap();
    let out = Command::new(common::bin()).args(["preview", "-o", "json", "-f"]).arg(&f).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["metadata"]["annotations"]["nixuv.io/env"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hera_workflow_previews_template_by_template() {
    let Some(py) = common::optional_python("hera", "hera") else { return };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/hera_workflow.py");
    let out = Command::new(&py).arg(&script).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(yaml.contains("kind: Workflow"), "{yaml}");
    // One resolution date for the whole workflow: --strict has no unpinned deps to name.
    let strict = Command::new(common::bin())
        .args(["preview", "--strict", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(yaml.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    let said = String::from_utf8_lossy(&strict.stderr);
    assert!(said.contains("template \"forgot-to-opt-in\"") && !said.contains("not pinned"), "{said}");
    let server = Server::start();
    let resp = server.post("/preview", "application/yaml", yaml).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["allowed"], true, "{v}");
    let templates = v["templates"].as_array().unwrap();
    let by_name = |n: &str| {
        templates.iter().find(|t| t["template"] == n).unwrap_or_else(|| panic!("no template {n}: {templates:?}"))
    };
    let analyse = by_name("analyse");
    assert_eq!(
        analyse["envId"].as_str(),
        Some(
            env_id_of(
                json!({"nixuv.io/inject": "true"}),
                json!({"nixuv.io/python-deps": "numpy==1.26.4, pandas>=2,<3", "nixuv.io/exclude-newer": "2025-06-01T00:00:00Z"})
            )
            .as_str()
        ),
        "{analyse}"
    );
    let transcode = by_name("transcode");
    assert_eq!(
        transcode["envId"].as_str(),
        Some(env_id_of(json!({"nixuv.io/inject": "true", "system.nixuv.io/ffmpeg-headless": ""}), json!({})).as_str()),
        "{transcode}"
    );
    for t in ["forgot-to-opt-in", "plain"] {
        let t = by_name(t);
        assert!(t["envId"].is_null(), "{t}");
    }
    let warnings: Vec<&str> = v["warnings"].as_array().unwrap().iter().map(|w| w.as_str().unwrap()).collect();
    assert!(
        warnings.iter().any(|w| w.contains("metadata.labels[\"nixuv.io/inject\"] is on the Workflow itself")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("template \"forgot-to-opt-in\"") && w.contains("not labelled nixuv.io/inject=true")),
        "{warnings:?}"
    );
}

/// docs/argo.md's `TRANSIENT_ERROR_PATTERN` (as written there) matches the API server's message
/// for every failure to call the webhook named in deploy/base, and never its denial.
#[test]
fn the_documented_transient_error_pattern_matches_webhook_outages_only() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/argo.md")).unwrap();
    let line = doc.lines().skip_while(|l| !l.contains("name: TRANSIENT_ERROR_PATTERN")).nth(1).unwrap();
    let value = line.trim().strip_prefix("value: '").and_then(|v| v.strip_suffix('\'')).unwrap();
    let pattern = regex::Regex::new(value).unwrap();
    let mwc: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root.join("deploy/base/mutatingwebhookconfiguration.yaml")).unwrap(),
    )
    .unwrap();
    let name = mwc["webhooks"][0]["name"].as_str().unwrap();
    let svc = "https://nixuv.nixuv-system.svc:443/mutate?timeout=5s";
    for cause in [
        "dial tcp 10.96.0.12:443: connect: connection refused",
        "context deadline exceeded",
        "no endpoints available for service \"nixuv\"",
        "tls: failed to verify certificate: x509: certificate signed by unknown authority",
    ] {
        let msg = format!(
            "Internal error occurred: failed calling webhook \"{name}\": failed to call webhook: Post \"{svc}\": {cause}"
        );
        assert!(pattern.is_match(&msg), "{value} misses {msg}");
    }
    let denial = format!("admission webhook \"{name}\" denied the request: nixuv.io/python-deps: \"pandass\"");
    assert!(!pattern.is_match(&denial), "{value} would retry a denial");
    let other = "Internal error occurred: failed calling webhook \"validate.kyverno.svc\": failed to call webhook";
    assert!(!pattern.is_match(other), "{value} would retry another webhook's outage");
}

/// Each step's Pod, in every output: `-o json` lists it after the Workflow (a valid Pod: the init
/// container restricted, the env on the step container's PATH), `/preview` reports the same Pod and patch per
/// template, and the webhook, sent that Pod, finds it complete (already injected, nothing added).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_step_pod_is_shown_and_is_what_the_webhook_makes() {
    let file = common::fixture_path("preview/workflow.yaml");
    let out = Command::new(common::bin()).args(["preview", "-o", "json", "-f"]).arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let items = list["items"].as_array().expect("the Workflow and its steps' Pods, as a List");
    assert_eq!(items[0]["kind"], "Workflow");
    let pods = &items[1..];
    assert!(pods.len() >= 2, "{items:?}");
    let server = Server::start();
    let text = std::fs::read_to_string(&file).unwrap();
    let resp = server.post("/preview", "application/yaml", text).await;
    let v: Value = resp.json().await.unwrap();
    let reported: Vec<&Value> = v["templates"].as_array().unwrap().iter().filter(|t| t.get("pod").is_some()).collect();
    assert_eq!(reported.len(), pods.len());
    for (pod, t) in pods.iter().zip(reported) {
        assert_eq!(&t["pod"], pod, "/preview and the CLI show the same Pod");
        let typed: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod.clone()).unwrap();
        let spec = typed.spec.clone().unwrap();
        let init = spec.init_containers.as_ref().unwrap().iter().find(|c| c.name == "nixuv-init").unwrap();
        assert_eq!(common::pss::restricted_violations(&typed, init), Vec::<String>::new());
        let env_id = t["envId"].as_str().unwrap();
        // `main`, or a containerSet's first container: the step's target.
        let target = spec.containers.iter().find(|c| c.name != "wait").unwrap();
        let path = target.env.as_ref().unwrap().iter().find(|e| e.name == "PATH").unwrap().value.clone().unwrap();
        assert!(path.contains(env_id), "{path}");
        let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "resource": {"group": "", "version": "v1", "resource": "pods"},
                        "namespace": "team-a", "operation": "CREATE", "userInfo": {"username": "argo"}, "object": pod}});
        let (status, m) = common::post_json(&server.h1(), &server.url("/mutate"), &review).await;
        assert_eq!(status, 200);
        assert_eq!(m["response"]["allowed"], true, "{m}");
        assert!(m["response"]["patch"].is_null(), "the step's Pod is complete: {m}");
    }
}
