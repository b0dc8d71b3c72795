//! `nixuv preview` (the binary) and `POST /preview` (the running server): golden outputs for every
//! accepted kind, agreement with `/mutate`, patch/object consistency, bad input.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::common::{self, post_json, response_patch, Server};

/// (input file, exit code of the preview).
const INPUTS: &[(&str, i32)] = &[
    ("pod.yaml", 0),
    ("pod.json", 0),
    ("deployment.yaml", 0),
    ("workloads.yaml", 0),
    ("workflow.yaml", 0),
    ("cronworkflow.yaml", 1),
    ("list.yaml", 0),
    ("review.json", 0),
    ("denied.yaml", 1),
];

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn preview(args: &[&str], stdin: Option<&str>) -> Run {
    let mut child = Command::new(common::bin())
        .arg("preview")
        .args(args)
        .current_dir(common::fixture_path("preview"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn golden_path(name: &str) -> PathBuf {
    common::fixture_path("preview/golden").join(name)
}

/// Compares with the checked-in golden file; `NIXUV_BLESS=1` rewrites it instead.
fn golden(name: &str, actual: &str) {
    let path = golden_path(name);
    if std::env::var_os("NIXUV_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with NIXUV_BLESS=1 to create)", path.display()));
    assert_eq!(actual, want, "output differs from {}", path.display());
}

fn yaml_docs(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn golden_outputs_for_every_kind() {
    for (input, code) in INPUTS {
        for out in ["yaml", "json", "patch"] {
            let r = preview(&["-f", input, "-o", out], None);
            assert_eq!(r.code, *code, "{input} -o {out}: {}", r.stderr);
            golden(&format!("{input}.{out}"), &r.stdout);
        }
        // Default output: the input's format.
        let r = preview(&["-f", input], None);
        let default = if input.ends_with(".json") { "json" } else { "yaml" };
        assert_eq!(
            r.stdout,
            std::fs::read_to_string(golden_path(&format!("{input}.{default}"))).unwrap_or_default(),
            "{input}"
        );
        golden(&format!("{input}.stderr"), &r.stderr);
    }
}

#[test]
fn stdin_and_determinism() {
    let text = std::fs::read_to_string(common::fixture_path("preview/workloads.yaml")).unwrap();
    let a = preview(&["-f", "-"], Some(&text));
    let b = preview(&["-f", "workloads.yaml"], None);
    assert_eq!(a.code, 0, "{}", a.stderr);
    assert_eq!(a.stdout, b.stdout);
    assert_eq!(a.stdout, preview(&["-f", "-"], Some(&text)).stdout, "deterministic");
}

#[test]
fn applying_the_patch_output_gives_the_object_output() {
    for (input, _) in INPUTS {
        let text = std::fs::read_to_string(common::fixture_path(&format!("preview/{input}"))).unwrap();
        let docs = yaml_docs(&text); // YAML reads JSON too
        let patches: Value = serde_json::from_str(&preview(&["-f", input, "-o", "patch"], None).stdout).unwrap();
        let mut objects = yaml_docs(&preview(&["-f", input, "-o", "yaml"], None).stdout);
        // After the input's documents: the Pods of the Argo templates nixuv changes, one per
        // template entry of the patch output.
        let template_pods = objects.split_off(docs.len());
        let template_entries: Vec<Value> =
            patches.as_array().into_iter().flatten().filter(|e| e.get("template").is_some()).cloned().collect();
        assert_eq!(template_pods.len(), template_entries.len(), "{input}");
        for (pod, e) in template_pods.iter().zip(&template_entries) {
            let t = e["template"].as_str().unwrap();
            assert!(pod["metadata"]["generateName"].as_str().unwrap().ends_with(&format!("-{t}-")), "{input}: {pod}");
            assert!(!e["patch"].as_array().unwrap().is_empty());
        }
        assert_eq!(docs.len(), objects.len(), "{input}");
        // One object: a bare patch; several (or an Argo object): entries naming document and item.
        let entries: Vec<(usize, Option<usize>, Value)> = if !patches.is_array()
            || patches.as_array().unwrap().first().is_some_and(|e| e.get("op").is_some())
            || patches.as_array().unwrap().is_empty()
        {
            vec![(1, None, patches)]
        } else {
            patches
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e.get("template").is_none())
                .map(|e| {
                    (
                        e["document"].as_u64().unwrap() as usize,
                        e["item"].as_u64().map(|i| i as usize),
                        e["patch"].clone(),
                    )
                })
                .collect()
        };
        let mut expected = docs.clone();
        for (doc, item, patch) in entries {
            let patch: json_patch::Patch = serde_json::from_value(patch).unwrap();
            let target = match item {
                Some(i) => &mut expected[doc - 1]["items"][i],
                None => &mut expected[doc - 1],
            };
            if target["kind"] == "AdmissionReview" {
                *target = target["request"]["object"].clone();
            }
            json_patch::patch(target, &patch.0).unwrap_or_else(|e| panic!("{input}: {e}"));
        }
        assert_eq!(expected, objects, "{input}");
    }
}

/// The Pod a workload's controller would create from its template.
fn pod_from_template(obj: &Value) -> Option<(Value, &'static str)> {
    let (tpl, prefix) = match obj["kind"].as_str()? {
        "Pod" => return Some((obj.clone(), "")),
        "CronJob" => (&obj["spec"]["jobTemplate"]["spec"]["template"], "/spec/jobTemplate/spec/template"),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            (&obj["spec"]["template"], "/spec/template")
        }
        _ => return None,
    };
    Some((json!({"apiVersion": "v1", "kind": "Pod", "metadata": tpl["metadata"], "spec": tpl["spec"]}), prefix))
}

#[tokio::test]
async fn preview_cli_endpoint_and_mutate_agree() {
    let server = Server::start();
    let client = server.h2();
    let base_review = common::fixture("reviews/bare-pod.json");
    let mut compared = 0;
    for (input, _) in INPUTS {
        let text = std::fs::read_to_string(common::fixture_path(&format!("preview/{input}"))).unwrap();
        let cli = preview(&["-f", input, "-o", "patch", "-n", "team-a"], None);
        let cli_patches: Value = serde_json::from_str(&cli.stdout).unwrap();
        // The endpoint, same input.
        let ctype = if input.ends_with(".json") { "application/json" } else { "application/yaml" };
        let resp = client
            .post(server.url("/preview?namespace=team-a"))
            .header("content-type", ctype)
            .body(text.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{input}");
        let results: Value = resp.json().await.unwrap();
        let results = if results.is_array() { results.as_array().unwrap().clone() } else { vec![results] };
        let entries_form = cli_patches.as_array().is_some_and(|a| a.first().is_some_and(|e| e.get("kind").is_some()));
        let cli_list: Vec<Value> = if !entries_form {
            vec![cli_patches.clone()]
        } else {
            let entries = cli_patches.as_array().unwrap();
            // The Argo templates' entries: the same patches /preview reports per template.
            let per_template: Vec<&Value> = entries.iter().filter(|e| e.get("template").is_some()).collect();
            let reported: Vec<Value> = results
                .iter()
                .flat_map(|r| r["templates"].as_array().cloned().unwrap_or_default())
                .filter(|t| t.get("patch").is_some())
                .collect();
            assert_eq!(per_template.len(), reported.len(), "{input}");
            for (e, t) in per_template.iter().zip(&reported) {
                assert_eq!(e["template"], t["template"], "{input}");
                assert_eq!(e["patch"], t["patch"], "{input}: /preview and the CLI differ for a template");
            }
            entries.iter().filter(|e| e.get("template").is_none()).map(|e| e["patch"].clone()).collect()
        };
        assert_eq!(results.len(), cli_list.len(), "{input}");
        for (r, cli_patch) in results.iter().zip(&cli_list) {
            let endpoint_patch = if r["patch"].is_null() { json!([]) } else { r["patch"].clone() };
            assert_eq!(&endpoint_patch, cli_patch, "{input}: /preview and the CLI differ");
            // /mutate on the Pod the object makes.
            let Some((_, prefix)) = pod_from_template(&r["object"]) else { continue };
            // /mutate sees the Pod as the controller sends it: built from the input, unpatched.
            let mut review = base_review.clone();
            review["request"]["object"] = unpatched_pod(&yaml_docs(&text), r);
            let (status, m) = post_json(&client, &server.url("/mutate"), &review).await;
            assert_eq!(status, 200);
            assert_eq!(m["response"]["allowed"], r["allowed"], "{input}");
            let mutate_patch = response_patch(&m).map(|p| serde_json::to_value(p).unwrap()).unwrap_or(json!([]));
            let stripped: Vec<Value> = cli_patch
                .as_array()
                .unwrap()
                .iter()
                .map(|op| {
                    let mut op = op.clone();
                    op["path"] = json!(op["path"].as_str().unwrap().strip_prefix(prefix).unwrap());
                    op
                })
                .collect();
            assert_eq!(mutate_patch, Value::Array(stripped), "{input}: /mutate and preview differ");
            compared += 1;
        }
    }
    assert!(compared >= 10, "only {compared} objects compared");
}

/// Finds the input object whose preview is `r` (by kind and name) and returns its Pod.
fn unpatched_pod(docs: &[Value], r: &Value) -> Value {
    let objects: Vec<&Value> = docs
        .iter()
        .flat_map(
            |d| if d["kind"] == "List" { d["items"].as_array().unwrap().iter().collect::<Vec<_>>() } else { vec![d] },
        )
        .collect();
    let name = |v: &Value| v["metadata"]["name"].clone();
    let found = objects
        .iter()
        .find(|o| o["kind"] == r["object"]["kind"] && name(o) == name(&r["object"]))
        .or_else(|| objects.iter().find(|o| o["kind"] == "AdmissionReview"))
        .unwrap();
    if found["kind"] == "AdmissionReview" {
        return found["request"]["object"].clone();
    }
    pod_from_template(found).unwrap().0
}

#[test]
fn bad_input_is_named_and_exits_2() {
    let cases: &[(&str, &str, &[&str])] = &[
        ("invalid yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: [\n", &["document 1", "invalid YAML"]),
        ("second document invalid", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\nkind: : :\n", &["document 2"]),
        ("no kind", "apiVersion: v1\nmetadata: {name: a}\n", &["document 1", "kind", "missing"]),
        ("no apiVersion", "kind: Pod\nmetadata: {name: a}\n", &["document 1", "apiVersion"]),
        ("workload without template", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {replicas: 1}\n", &["document 1", "spec.template", "Deployment"]),
        ("cronjob without template", "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: c}\nspec: {schedule: x}\n", &["spec.jobTemplate.spec.template"]),
        ("list item without kind", "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Pod, metadata: {name: a}, spec: {containers: []}}\n- {metadata: {name: b}}\n", &["document 1 items[1]", "kind"]),
        ("invalid json", "{\"apiVersion\": \"v1\",", &["document 1", "invalid JSON"]),
        ("scalar document", "just text\n", &["document 1", "not an object"]),
        ("empty", "", &["no documents"]),
        ("workflow without templates", "apiVersion: argoproj.io/v1alpha1\nkind: Workflow\nmetadata: {name: w}\nspec: {entrypoint: x}\n", &["spec.templates"]),
    ];
    for (name, input, needles) in cases {
        let r = preview(&["-f", "-"], Some(input));
        assert_eq!(r.code, 2, "{name}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "{name}: nothing on stdout");
        for n in *needles {
            assert!(r.stderr.contains(n), "{name}: stderr {:?} lacks {n:?}", r.stderr);
        }
    }
    let r = preview(&["-f", "no-such-file.yaml"], None);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no-such-file.yaml"));
    let r = preview(&["-f", "pod.yaml", "-o", "xml"], None);
    assert_eq!(r.code, 2, "bad flag");
    let r = preview(&["-f", "pod.yaml", "--config", "/nonexistent/config.yaml"], None);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("/nonexistent/config.yaml"));
}

#[tokio::test]
async fn preview_endpoint_yaml_errors_and_limits() {
    let server = Server::builder().arg("--body-limit").arg("65536").start();
    let client = server.h1();
    let text = std::fs::read_to_string(common::fixture_path("preview/deployment.yaml")).unwrap();
    let resp = client
        .post(server.url("/preview"))
        .header("content-type", "application/yaml")
        .header("accept", "application/yaml")
        .body(text)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/yaml");
    assert_eq!(resp.text().await.unwrap(), std::fs::read_to_string(golden_path("deployment.yaml.yaml")).unwrap());
    for (body, needle) in [
        ("kind: : :", "invalid YAML"),
        ("apiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\nspec: {}\n", "spec.template"),
    ] {
        let resp = client.post(server.url("/preview")).body(body).send().await.unwrap();
        assert_eq!(resp.status(), 400);
        let v: Value = resp.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().contains(needle), "{v}");
    }
    // Refused on its declared length before it is read: over HTTP/2 the answer arrives whatever
    // the client was still sending (over HTTP/1.1 it may see the closed connection first).
    let resp = server.h2().post(server.url("/preview")).body(vec![b'#'; 70_000]).send().await.unwrap();
    assert_eq!(resp.status(), 413);
    // A denial is a 200 with allowed: false and the webhook's message.
    let denied = std::fs::read_to_string(common::fixture_path("preview/denied.yaml")).unwrap();
    let v: Value = client.post(server.url("/preview")).body(denied).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["allowed"], false);
    assert!(v["message"].as_str().unwrap().contains("pip options are not allowed"));
}

const NEAR_MISSES: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: marker-on-deployment, labels: {nixuv.io/inject: "true"}, annotations: {nixuv.io/system-deps: gcc}}
spec:
  selector: {matchLabels: {app: a}}
  template:
    metadata: {labels: {app: a}}
    spec: {containers: [{name: app, image: python:3.12}]}
---
apiVersion: v1
kind: Pod
metadata: {name: annotation-not-label, annotations: {nixuv.io/inject: "true", nixuv.io/system-deps: gcc}}
spec: {containers: [{name: app, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: capital-true, labels: {nixuv.io/inject: "True"}, annotations: {nixuv.io/system-deps: gcc}}
spec: {containers: [{name: app, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: deps-without-opt-in, labels: {python.nixuv.io/numpy: ""}}
spec: {containers: [{name: app, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: typo, labels: {nixuv.io/inject: "true"}, annotations: {nixuv.io/python-dep: six, nixuv.io/system-deps: gcc}}
spec: {containers: [{name: app, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: excluded, namespace: kube-system, labels: {nixuv.io/inject: "true"}, annotations: {nixuv.io/system-deps: gcc}}
spec: {containers: [{name: app, image: x}]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: yes-job}
spec:
  template:
    metadata: {labels: {nixuv.io/inject: "yes"}, annotations: {nixuv.io/system-deps: gcc}}
    spec: {restartPolicy: Never, containers: [{name: app, image: x}]}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_misses_are_warned_naming_the_field_and_strict_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("near.yaml");
    std::fs::write(&file, NEAR_MISSES).unwrap();
    let run =
        |args: &[&str]| Command::new(common::bin()).arg("preview").args(args).arg("-f").arg(&file).output().unwrap();
    let out = run(&["-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "warnings alone do not fail: {}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The JSON report: POST /preview with the same manifest.
    let server = Server::start();
    let resp = server.post("/preview", "application/yaml", NEAR_MISSES).await;
    assert_eq!(resp.status(), 200);
    let results: Vec<Value> = resp.json().await.unwrap();
    let expect = [
        (0, "metadata.labels[\"nixuv.io/inject\"] is on the Deployment itself; nixuv reads the Pod template: move it to spec.template.metadata.labels"),
        (0, "metadata.annotations[\"nixuv.io/system-deps\"] is on the Deployment itself"),
        (1, "nixuv.io/inject is an annotation (metadata.annotations, \"true\"); it must be a label"),
        (2, "metadata.labels[\"nixuv.io/inject\"] is \"True\"; only \"true\" opts in"),
        (3, "metadata declares dependencies but is not labelled nixuv.io/inject=true"),
        (4, "metadata.annotations[\"nixuv.io/python-dep\"] is not a key nixuv knows; did you mean \"nixuv.io/python-deps\"?"),
        (5, "namespace \"kube-system\" is excluded by nixuv's config"),
        (6, "spec.template.metadata.labels[\"nixuv.io/inject\"] is \"yes\""),
    ];
    for (i, needle) in expect {
        let warnings = results[i]["warnings"].as_array().unwrap();
        assert!(
            warnings.iter().any(|w| w.as_str().unwrap().contains(needle)),
            "document {}: {needle:?} not in {warnings:?}",
            i + 1
        );
        assert!(stderr.contains(needle), "stderr lacks {needle:?}");
    }
    // The typo'd Pod is still injected (a near miss never denies), without the misspelt deps.
    assert_eq!(results[4]["allowed"], true);
    assert!(results[4]["patch"].is_array());
    // --strict: any warning fails the check.
    assert_eq!(run(&["--strict", "-o", "json"]).status.code(), Some(3));
    let clean = dir.path().join("clean.yaml");
    std::fs::write(&clean, "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {nixuv.io/inject: \"true\"}, annotations: {nixuv.io/system-deps: gcc}}\nspec: {containers: [{name: app, image: x}]}\n").unwrap();
    let out = Command::new(common::bin()).args(["preview", "--strict", "-f"]).arg(&clean).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_misses_on_an_admitted_pod_are_admission_warnings() {
    let server = Server::start();
    let review = common::with_object(
        &common::fixture("reviews/bare-pod.json"),
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "p", "labels": {"nixuv.io/inject": "true"},
                            "annotations": {"nixuv.io/system-deps": "gcc", "nixuv.io/sytem-deps": "ffmpeg"}},
               "spec": {"containers": [{"name": "app", "image": "x"}]}}),
    );
    let (status, v) = post_json(&server.h2(), &server.url("/mutate"), &review).await;
    assert_eq!(status, 200);
    assert_eq!(v["response"]["allowed"], true);
    assert!(v["response"]["patch"].is_string(), "still injected");
    let warnings = v["response"]["warnings"].as_array().unwrap();
    assert!(
        warnings.iter().any(|w| w.as_str().unwrap().contains("did you mean \"nixuv.io/system-deps\"")),
        "{warnings:?}"
    );
}

#[test]
fn a_moving_nixpkgs_reference_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, "nixpkgs: github:NixOS/nixpkgs/nixos-25.05\n").unwrap();
    let pod = dir.path().join("pod.yaml");
    std::fs::write(&pod, "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {nixuv.io/inject: \"true\"}, annotations: {nixuv.io/system-deps: gcc}}\nspec: {containers: [{name: app, image: x}]}\n").unwrap();
    let run = |extra: &[&str]| {
        Command::new(common::bin())
            .arg("preview")
            .args(extra)
            .arg("--config")
            .arg(&cfg)
            .arg("-f")
            .arg(&pod)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("env ids are not reproducible with a moving reference"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(run(&["--strict"]).status.code(), Some(3));
    // The server says so at start-up.
    let server = Server::builder().config("nixpkgs: github:NixOS/nixpkgs/nixos-25.05\n").start();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !server.logs().iter().any(|l| l.contains("not reproducible with a moving reference")) {
        assert!(std::time::Instant::now() < deadline, "{:?}", server.logs());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_nix_python_package_as_a_system_dep_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let pod = dir.path().join("pod.yaml");
    std::fs::write(&pod, "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {nixuv.io/inject: \"true\"}, annotations: {nixuv.io/system-deps: \"gcc python312Packages.numpy\"}}\nspec: {containers: [{name: app, image: python:3.12}]}\n").unwrap();
    let out = Command::new(common::bin()).args(["preview", "-f"]).arg(&pod).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("system dep \"python312Packages.numpy\" is a nix Python package")
            && stderr.contains("nixuv.io/python-deps: \"numpy\""),
        "{stderr}"
    );
    assert!(!stderr.contains("\"gcc\" is a nix"), "{stderr}");
}

#[test]
fn unquoted_yaml_numbers_are_named_and_materialize_help_lists_its_inputs() {
    let out = Command::new(common::bin())
        .args(["preview", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(b"apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {nixuv.io/inject: \"true\"}, annotations: {nixuv.io/python-deps: six, nixuv.io/python: 3.10}}\nspec: {containers: [{name: a, image: x}]}\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("metadata.annotations[\"nixuv.io/python\"]: 3.1 is a number, not a string: quote it"),
        "{stderr}"
    );
    let help = Command::new(common::bin()).args(["materialize", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for var in [
        nixuv::names::ENV_ID,
        nixuv::names::ENV_SYSTEM_DEPS,
        nixuv::names::ENV_PYTHON_DEPS,
        nixuv::names::ENV_PYTHON,
        nixuv::names::ENV_NIXPKGS,
        nixuv::names::ENV_INDEX_URL,
        nixuv::names::ENV_TOOL_ENV,
        nixuv::names::ENV_SOURCE_BUILDS,
        nixuv::names::ENV_EXCLUDE_NEWER,
        nixuv::names::ENV_PYTHON_MODE,
        nixuv::names::ENV_SECRET_ENV,
        nixuv::names::ENV_UV_ROOT,
        nixuv::names::ENV_NIX_DIR,
        "NIXUV_LEASE_TTL",
        "NIXUV_WAIT_TIMEOUT",
        "NIXUV_UV",
        "NIXUV_NIX_PORTABLE",
    ] {
        assert!(help.contains(var), "materialize --help lacks {var}");
    }
}

#[test]
fn several_files_and_directories_like_kubectl() {
    let dir = tempfile::tempdir().unwrap();
    let pod = |name: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{nixuv.io/inject: \"true\"}}, annotations: {{nixuv.io/system-deps: gcc}}}}\nspec: {{containers: [{{name: app, image: x}}]}}\n")
    };
    std::fs::create_dir_all(dir.path().join("manifests/sub")).unwrap();
    std::fs::write(dir.path().join("manifests/a.yaml"), pod("a")).unwrap();
    std::fs::write(dir.path().join("manifests/notes.txt"), "not a manifest").unwrap();
    std::fs::write(
        dir.path().join("manifests/sub/b.json"),
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"b","labels":{"nixuv.io/inject":"yes"}},"spec":{"containers":[{"name":"app","image":"x"}]}}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("c.yaml"), pod("c")).unwrap();
    let run =
        |args: &[&str]| Command::new(common::bin()).arg("preview").args(args).current_dir(dir.path()).output().unwrap();
    let names = |out: &std::process::Output| -> Vec<String> {
        let v: Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stdout)));
        let items = if v["kind"] == "List" { v["items"].as_array().unwrap().clone() } else { vec![v] };
        items.iter().map(|i| i["metadata"]["name"].as_str().unwrap().to_string()).collect()
    };
    // A directory: its manifests, not its subdirectories, unless -R.
    let out = run(&["-o", "json", "-f", "manifests"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(names(&out), ["a"]);
    let out = run(&["-o", "json", "-R", "-f", "manifests", "-f", "c.yaml"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(names(&out), ["a", "b", "c"]);
    // Each warning names its file.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("manifests/sub/b.json: document 1 (Pod b): warning:"), "{stderr}");
    // YAML output keeps one document per object; an empty directory is an error.
    let out = run(&["-f", "manifests", "-f", "c.yaml"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).matches("nixuv.io/status: injected").count(), 2);
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    let out = run(&["-f", "empty"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no .yaml, .yml or .json files"));
}

#[test]
fn overlay_mode_keeps_the_image_python_and_names_a_mismatched_image() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let pod = |mode: &str, image: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p, labels: {{nixuv.io/inject: \"true\"}}, annotations: {{nixuv.io/python-deps: six, nixuv.io/python: \"3.12\"{mode}}}}}\n\
             spec: {{containers: [{{name: app, image: \"{image}\", env: [{{name: PYTHONPATH, value: /app/lib}}]}}]}}\n"
        )
    };
    let run = |file: &std::path::Path, config: Option<&std::path::Path>| {
        let mut cmd = Command::new(common::bin());
        cmd.args(["preview", "-o", "json", "-f"]).arg(file);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            serde_json::from_slice::<Value>(&out.stdout).ok(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let env_of = |pod: &Value, name: &str| {
        pod["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].clone())
    };
    // Venv mode (the default): VIRTUAL_ENV, the Pod's PYTHONPATH untouched; an image of another
    // Python is noted.
    let (code, venv, stderr) = run(&write("venv.yaml", &pod("", "python:3.11-slim")), None);
    assert_eq!(code, Some(0), "{stderr}");
    let venv = venv.unwrap();
    assert!(env_of(&venv, "VIRTUAL_ENV").is_some());
    assert_eq!(env_of(&venv, "PYTHONPATH").unwrap(), "/app/lib");
    assert!(stderr.contains("(Python 3.11) but the env's venv has Python 3.12"), "{stderr}");
    // Overlay by annotation: PYTHONPATH gets the env's directory in front, no VIRTUAL_ENV, the
    // init container is told, and the env is another one.
    let (code, overlay, stderr) =
        run(&write("overlay.yaml", &pod(", nixuv.io/python-mode: overlay", "python:3.12")), None);
    assert_eq!(code, Some(0), "{stderr}");
    let overlay = overlay.unwrap();
    let id = overlay["metadata"]["annotations"]["nixuv.io/env"].as_str().unwrap().to_string();
    assert_ne!(id, venv["metadata"]["annotations"]["nixuv.io/env"].as_str().unwrap());
    assert_eq!(env_of(&overlay, "PYTHONPATH").unwrap(), format!("/nixuv/uv/envs/{id}:/app/lib"));
    assert!(env_of(&overlay, "VIRTUAL_ENV").is_none());
    assert!(env_of(&overlay, "PATH").unwrap().as_str().unwrap().starts_with(&format!("/nixuv/uv/envs/{id}/bin:")));
    let init = &overlay["spec"]["initContainers"][0]["env"];
    assert!(init.as_array().unwrap().iter().any(|e| e["name"] == "NIXUV_PYTHON_MODE" && e["value"] == "overlay"));
    assert!(!stderr.contains("Python 3.11"), "{stderr}");
    assert!(!stderr.contains("not a key nixuv knows"), "nixuv.io/python-mode is a known key: {stderr}");
    // The same by config default; a mismatched official image is a warning in overlay mode.
    let cfg = write("config.yaml", "python: {mode: overlay}\n");
    let (code, by_config, stderr) =
        run(&write("o2.yaml", &pod("", "docker.io/library/python:3.11.9-bookworm")), Some(&cfg));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(by_config.unwrap()["metadata"]["annotations"]["nixuv.io/env"], id.as_str());
    assert!(stderr.contains("installed for Python 3.12") && stderr.contains("nixuv.io/python: \"3.11\""), "{stderr}");
    // A Pod may go back to venv under an overlay default; a bad mode is named.
    let (_, back, _) = run(&write("v2.yaml", &pod(", nixuv.io/python-mode: venv", "python:3.12")), Some(&cfg));
    assert_eq!(
        back.unwrap()["metadata"]["annotations"]["nixuv.io/env"],
        venv["metadata"]["annotations"]["nixuv.io/env"]
    );
    let (code, _, stderr) = run(&write("bad.yaml", &pod(", nixuv.io/python-mode: system", "python:3.12")), None);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("nixuv.io/python-mode") && stderr.contains("\"system\"") && stderr.contains("\"overlay\""),
        "{stderr}"
    );
}

#[test]
fn nixuvs_own_earlier_injection_is_re_injected_for_the_current_deps() {
    let dir = tempfile::tempdir().unwrap();
    let run = |pod: &Value, output: &str| {
        let path = dir.path().join("pod.json");
        std::fs::write(&path, serde_json::to_vec(pod).unwrap()).unwrap();
        let out = Command::new(common::bin()).args(["preview", "-o", output, "-f"]).arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        (out.stdout, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let object = |pod: &Value| serde_json::from_slice::<Value>(&run(pod, "json").0).unwrap();
    let env = |pod: &Value, c: usize| -> Vec<(String, String)> {
        pod["spec"]["containers"][c]["env"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| (e["name"].as_str().unwrap().into(), e["value"].as_str().unwrap_or("").into()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let id = |pod: &Value| pod["metadata"]["annotations"]["nixuv.io/env"].as_str().unwrap().to_string();
    let first = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "labels": {"nixuv.io/inject": "true"},
                     "annotations": {"nixuv.io/python-deps": "six", "nixuv.io/system-deps": "jq", "nixuv.io/containers": "app, worker"}},
        "spec": {"containers": [
            {"name": "app", "image": "python:3.12", "env": [{"name": "PATH", "value": "/opt/app/bin:/usr/bin:/bin"}, {"name": "PYTHONPATH", "value": "/app/lib"}]},
            {"name": "worker", "image": "debian:bookworm-slim"},
            {"name": "sidecar", "image": "envoy"}]}});
    // The manifest as `nixuv preview` wrote it, applied; then the deps are edited.
    let injected = object(&first);
    let old = id(&injected);
    let mut edited = injected.clone();
    edited["metadata"]["annotations"]["nixuv.io/python-deps"] = json!("six, idna");
    edited["metadata"]["annotations"]["nixuv.io/python-mode"] = json!("overlay");
    edited["metadata"]["annotations"]["nixuv.io/containers"] = json!("app");
    let (_, stderr) = run(&edited, "json");
    assert!(stderr.contains("re-injected for"), "{stderr}");
    let again = object(&edited);
    let new = id(&again);
    assert_ne!(old, new);
    // Exactly what a fresh injection of the edited Pod gives, from the Pod without nixuv's parts.
    let mut fresh_input = first.clone();
    fresh_input["metadata"]["annotations"] = edited["metadata"]["annotations"].clone();
    for k in ["nixuv.io/status", "nixuv.io/env"] {
        fresh_input["metadata"]["annotations"].as_object_mut().unwrap().remove(k);
    }
    let fresh = object(&fresh_input);
    assert_eq!(again["spec"]["initContainers"], fresh["spec"]["initContainers"]);
    assert_eq!(again["spec"]["volumes"], fresh["spec"]["volumes"]);
    assert_eq!(env(&again, 0), env(&fresh, 0), "the app's own PATH and PYTHONPATH tails are kept");
    assert_eq!(again["spec"]["containers"][0]["volumeMounts"], fresh["spec"]["containers"][0]["volumeMounts"]);
    // The worker is no longer a target: nixuv's variables are gone from it (its mounts stay, read-only).
    let worker = env(&again, 1);
    assert!(!worker.iter().any(|(k, _)| k == "NIXUV_ENV" || k == "VIRTUAL_ENV"), "{worker:?}");
    let path = &worker.iter().find(|(k, _)| k == "PATH").unwrap().1;
    assert!(!path.contains("/nixuv/") && !path.contains("/nix/var"), "{path}");
    assert_eq!(again["spec"]["containers"][2], first["spec"]["containers"][2], "the sidecar is untouched");
    // The patch output gives the same object, and the result is stable: nothing more to do.
    let (patch, _) = run(&edited, "patch");
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    assert_eq!(common::apply(&edited, &patch), again);
    let (patch, stderr) = run(&again, "patch");
    assert_eq!(serde_json::from_slice::<Value>(&patch).unwrap(), json!([]), "{stderr}");
    assert!(!stderr.contains("re-injected"), "{stderr}");
}

/// A workload whose pod template carries an earlier injection (preview output, edited and
/// previewed again) is re-injected inside its template: the `replace` and `remove` operations of
/// a re-injection land under the template as the `add`s do, and the result is the injection a
/// fresh template with the new deps gets.
#[test]
fn workloads_with_a_stale_injection_are_reinjected_in_their_template() {
    let workloads = std::fs::read_to_string(common::fixture_path("preview/deployment.yaml")).unwrap()
        + "---\n"
        + &std::fs::read_to_string(common::fixture_path("preview/workloads.yaml")).unwrap();
    let first = preview(&["-f", "-", "-o", "json"], Some(&workloads));
    assert_eq!(first.code, 0, "{}", first.stderr);
    let first: Value = serde_json::from_str(&first.stdout).unwrap();
    let items = first["items"].as_array().unwrap_or_else(|| panic!("a List: {first}")).clone();
    let mut checked = Vec::new();
    for obj in items {
        let kind = obj["kind"].as_str().unwrap().to_string();
        let tpl_path: &[&str] = match kind.as_str() {
            "CronJob" => &["spec", "jobTemplate", "spec", "template"],
            "Deployment" | "Job" | "StatefulSet" | "DaemonSet" | "ReplicaSet" => &["spec", "template"],
            _ => continue,
        };
        let tpl = tpl_path.iter().fold(&obj, |v, k| &v[*k]);
        if tpl["metadata"]["annotations"]["nixuv.io/status"] != "injected" {
            continue;
        }
        // Edit the deps of the injected template: its env changes.
        let mut stale = obj.clone();
        let ann = tpl_path.iter().fold(&mut stale, |v, k| &mut v[*k]);
        ann["metadata"]["annotations"]["nixuv.io/system-deps"] = json!("hello");
        let again = preview(&["-f", "-", "-o", "json"], Some(&stale.to_string()));
        assert_eq!(again.code, 0, "{kind}: {}", again.stderr);
        let out: Value = serde_json::from_str(&again.stdout).unwrap();
        let patch = preview(&["-f", "-", "-o", "patch"], Some(&stale.to_string()));
        assert_eq!(patch.code, 0, "{kind}: {}", patch.stderr);
        let ops: Value = serde_json::from_str(&patch.stdout).unwrap();
        let prefix = format!("/{}/", tpl_path.join("/"));
        let ops = ops.as_array().unwrap();
        assert!(ops.iter().any(|o| o["op"] == "replace"), "{kind}: a re-injection replaces: {ops:?}");
        for o in ops {
            assert!(o["path"].as_str().unwrap().starts_with(&prefix), "{kind}: {o}");
        }
        // The same template, never injected, with the new deps: the same env, the same Pod.
        let out_tpl = tpl_path.iter().fold(&out, |v, k| &v[*k]);
        let mut fresh = obj.clone();
        let fresh_tpl = tpl_path.iter().fold(&mut fresh, |v, k| &mut v[*k]);
        let orig = tpl_path
            .iter()
            .fold(&yaml_docs(&workloads).into_iter().find(|d| d["kind"] == kind.as_str()).unwrap(), |v, k| &v[*k])
            .clone();
        *fresh_tpl = orig;
        fresh_tpl["metadata"]["annotations"]["nixuv.io/system-deps"] = json!("hello");
        let fresh_out = preview(&["-f", "-", "-o", "json"], Some(&fresh.to_string()));
        let fresh_out: Value = serde_json::from_str(&fresh_out.stdout).unwrap();
        let fresh_tpl = tpl_path.iter().fold(&fresh_out, |v, k| &v[*k]);
        assert_eq!(
            out_tpl["metadata"]["annotations"]["nixuv.io/env"], fresh_tpl["metadata"]["annotations"]["nixuv.io/env"],
            "{kind}"
        );
        assert_eq!(out_tpl["spec"]["initContainers"], fresh_tpl["spec"]["initContainers"], "{kind}");
        assert_eq!(out_tpl["spec"]["containers"], fresh_tpl["spec"]["containers"], "{kind}");
        checked.push(kind);
    }
    for k in ["Deployment", "Job", "CronJob"] {
        assert!(checked.iter().any(|c| c == k), "{k} checked: {checked:?}");
    }
}

/// `-o warm-job` builds its Jobs from nixuv's own plan: a Pod that is not opted in but carries a
/// hand-written privileged `nixuv-init` and a `nixuv-nix` volume on the host's root gives no Job;
/// an opted-in Pod carrying the same gives nixuv's init container and volumes only (no token);
/// an Argo Workflow gives one Job per distinct env of its templates.
#[test]
fn warm_jobs_come_from_nixuvs_plan_never_from_the_input() {
    let hostile_spec = json!({
        "initContainers": [{"name": "nixuv-init", "image": "evil", "securityContext": {"privileged": true},
            "env": [{"name": "NIXUV_ENV", "value": "0123456789abcdef"}]}],
        "containers": [{"name": "app", "image": "debian"}],
        "volumes": [{"name": "nixuv-nix", "hostPath": {"path": "/"}}]
    });
    let not_opted_in = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": hostile_spec});
    let r = preview(&["-f", "-", "-o", "warm-job"], Some(&not_opted_in.to_string()));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), "", "no Job for a Pod nixuv does not inject");
    let mut opted_in = not_opted_in.clone();
    opted_in["metadata"]["labels"] = json!({"nixuv.io/inject": "true"});
    opted_in["metadata"]["annotations"] = json!({"nixuv.io/python-deps": "rich"});
    let r = preview(&["-f", "-", "-o", "warm-job"], Some(&opted_in.to_string()));
    // Denied (a volume of nixuv's name): no Job either.
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), "");
    let mut clean = opted_in.clone();
    clean["spec"] = json!({"containers": [{"name": "app", "image": "debian"}]});
    let r = preview(&["-f", "-", "-o", "warm-job"], Some(&clean.to_string()));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let jobs = yaml_docs(&r.stdout);
    assert_eq!(jobs.len(), 1);
    let spec = &jobs[0]["spec"]["template"]["spec"];
    assert_eq!(spec["automountServiceAccountToken"], false);
    let c = &spec["containers"][0];
    assert_eq!(c["name"], "nixuv-init");
    assert_eq!(c["securityContext"]["privileged"], false);
    assert_eq!(c["securityContext"]["runAsNonRoot"], true);
    for v in spec["volumes"].as_array().unwrap() {
        assert!(v.get("hostPath").is_none(), "{v}");
        assert!(v.get("persistentVolumeClaim").is_some() || v.get("emptyDir").is_some(), "{v}");
    }
    // An Argo Workflow: one Job per distinct env of its templates.
    let wf = std::fs::read_to_string(common::fixture_path("preview/workflow.yaml")).unwrap();
    let r = preview(&["-f", "-", "-o", "warm-job"], Some(&wf));
    let jobs = yaml_docs(&r.stdout);
    assert!(!jobs.is_empty(), "a Workflow's envs get Jobs: {}{}", r.stdout, r.stderr);
    let envs: std::collections::BTreeSet<String> =
        jobs.iter().map(|j| j["metadata"]["labels"]["nixuv.io/env"].as_str().unwrap().to_string()).collect();
    assert_eq!(envs.len(), jobs.len(), "one Job per distinct env");
}

/// `-o patch` over several files is one JSON document: a list of every object's patch, each
/// naming its file, and each applies to its object.
#[test]
fn patch_output_over_several_files_is_one_json_document() {
    let r = preview(&["-f", "pod.yaml", "-f", "deployment.yaml", "-o", "patch"], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).expect("one JSON document");
    let entries = v.as_array().unwrap();
    assert_eq!(entries.len(), 2);
    for (e, file) in entries.iter().zip(["pod.yaml", "deployment.yaml"]) {
        assert_eq!(e["file"], file);
        let obj = yaml_docs(&std::fs::read_to_string(common::fixture_path("preview").join(file)).unwrap()).remove(0);
        let patch: json_patch::Patch = serde_json::from_value(e["patch"].clone()).unwrap();
        let mut doc = obj.clone();
        json_patch::patch(&mut doc, &patch).unwrap_or_else(|err| panic!("{file}: {err}"));
        assert_ne!(doc, obj, "{file}: the patch changes it");
    }
}

/// `-o env` (image store): one `NixuvEnv` per distinct env of a manifest, Argo templates
/// included, named by the env ids the webhook gives (the same as `-o warm-job`'s), each a valid
/// object of the CRD's type; without an image store it says what to use instead.
#[test]
fn env_output_lists_the_nixuvenvs_a_manifest_needs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, "imageStore: {repository: registry.example/nixuv/envs}\n").unwrap();
    let workflow = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples/workflow.yaml");
    let (cfg, workflow) = (cfg.to_str().unwrap(), workflow.to_str().unwrap());
    let envs = preview(&["-o", "env", "--config", cfg, "-f", workflow, "-f", workflow], None);
    assert_eq!(envs.code, 0, "{}", envs.stderr);
    let objs: Vec<nixuv::imagestore::NixuvEnv> =
        yaml_docs(&envs.stdout).into_iter().map(|d| serde_json::from_value(d).unwrap()).collect();
    let jobs = preview(&["-o", "warm-job", "--config", cfg, "-f", workflow], None);
    let want: std::collections::BTreeSet<String> = yaml_docs(&jobs.stdout)
        .iter()
        .map(|j| j["metadata"]["labels"]["nixuv.io/env"].as_str().unwrap().into())
        .collect();
    let got: std::collections::BTreeSet<String> = objs.iter().map(|o| o.metadata.name.clone().unwrap()).collect();
    assert_eq!(got, want);
    assert_eq!(objs.len(), want.len(), "each env once, across files");
    let cfg_parsed = nixuv::config::Config::from_yaml("imageStore: {repository: registry.example/nixuv/envs}").unwrap();
    for o in &objs {
        assert_eq!(
            nixuv::imagebuild::plan_of(&o.spec, &cfg_parsed).unwrap().id.as_str(),
            o.metadata.name.as_deref().unwrap()
        );
    }
    let plain = preview(&["-o", "env", "-f", workflow], None);
    assert_eq!(plain.code, 2);
    assert!(plain.stderr.contains("imageStore") && plain.stderr.contains("warm-job"), "{}", plain.stderr);
}

/// `--strict` warns about Python deps that are neither pinned nor resolved as of a fixed date,
/// naming them; pins, the per-Pod date or the config's date each silence it.
#[test]
fn strict_warns_about_unpinned_deps_without_a_resolution_date() {
    let pod = |ann: Value| {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "p", "labels": {"nixuv.io/inject": "true"}, "annotations": ann},
               "spec": {"containers": [{"name": "app", "image": "python:3.12"}]}})
        .to_string()
    };
    let loose = preview(
        &["--strict", "-f", "-"],
        Some(&pod(json!({"nixuv.io/python-deps": "pandas>=2, numpy==1.26.4, rich"}))),
    );
    assert_eq!(loose.code, 3, "{}", loose.stderr);
    assert!(loose.stderr.contains(r#"Python deps "pandas>=2", "rich" are not pinned"#), "{}", loose.stderr);
    for quiet in [
        json!({"nixuv.io/python-deps": "numpy==1.26.4, six===1.16.0; python_version > '3'"}),
        json!({"nixuv.io/python-deps": "pandas>=2", "nixuv.io/exclude-newer": "2025-06-01T00:00:00Z"}),
    ] {
        let r = preview(&["--strict", "-f", "-"], Some(&pod(quiet.clone())));
        assert_eq!(r.code, 0, "{quiet}: {}", r.stderr);
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, "python: {excludeNewer: '2025-06-01T00:00:00Z'}\n").unwrap();
    let r = preview(
        &["--strict", "--config", cfg.to_str().unwrap(), "-f", "-"],
        Some(&pod(json!({"nixuv.io/python-deps": "pandas>=2"}))),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Without --strict, nothing is said.
    let r = preview(&["-f", "-"], Some(&pod(json!({"nixuv.io/python-deps": "pandas>=2"}))));
    assert_eq!(r.code, 0);
    assert!(!r.stderr.contains("not pinned"), "{}", r.stderr);
}
