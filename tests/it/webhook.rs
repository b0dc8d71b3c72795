//! /mutate through a real TLS client, HTTP/1.1 and HTTP/2, on real AdmissionReview bodies.

use serde_json::{json, Value};

use crate::common::{self, as_pod, env_of, post_json, response_patch, with_object, Server};

const POSITIVE: &[&str] =
    &["bare-pod", "existing-volumes-env-init", "istio-sidecar", "argo-pod", "slash-annotation", "v1beta1"];

/// Sends the review, checks the response envelope, applies the patch, checks the result is a Pod
/// and that reinvocation on it yields no patch. Returns (patched object, response).
async fn mutate_roundtrip(client: &reqwest::Client, url: &str, name: &str) -> (Value, Value) {
    let review = common::fixture(&format!("reviews/{name}.json"));
    let (status, resp) = post_json(client, url, &review).await;
    assert_eq!(status, 200, "{name}: {resp}");
    assert_eq!(resp["apiVersion"], review["apiVersion"], "{name}: apiVersion echoed");
    assert_eq!(resp["kind"], "AdmissionReview");
    assert_eq!(resp["response"]["uid"], review["request"]["uid"], "{name}: uid echoed");
    assert_eq!(resp["response"]["allowed"], true, "{name}: {resp}");
    let patch = response_patch(&resp).unwrap_or_else(|| panic!("{name}: no patch in {resp}"));
    for op in &patch.0 {
        assert!(matches!(op, json_patch::PatchOperation::Add(_)), "{name}: only add ops, got {op:?}");
    }
    let object = &review["request"]["object"];
    let patched = common::apply(object, &patch);
    let pod = as_pod(&patched);
    // Reinvocation: the webhook on its own output changes nothing.
    let (status, again) = post_json(client, url, &with_object(&review, patched.clone())).await;
    assert_eq!(status, 200);
    assert_eq!(again["response"]["allowed"], true, "{name}: reinvocation: {again}");
    assert!(again["response"].get("patch").is_none(), "{name}: reinvocation patched again: {again}");
    // The init container passes PodSecurity restricted.
    let init = &pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0];
    assert_eq!(init.name, "nixuv-init", "{name}: nixuv-init first");
    let violations = common::pss::restricted_violations(&pod, init);
    assert!(violations.is_empty(), "{name}: restricted violations: {violations:?}");
    (patched, resp)
}

fn container<'a>(pod: &'a k8s_openapi::api::core::v1::Pod, name: &str) -> &'a k8s_openapi::api::core::v1::Container {
    pod.spec.as_ref().unwrap().containers.iter().find(|c| c.name == name).unwrap()
}

async fn check_all_fixtures(client: &reqwest::Client, url: &str) {
    for name in POSITIVE {
        let (patched, resp) = mutate_roundtrip(client, url, name).await;
        let pod = as_pod(&patched);
        let env_id = patched["metadata"]["annotations"]["nixuv.io/env"].as_str().unwrap().to_string();
        assert_eq!(env_id.len(), 16);
        assert_eq!(patched["metadata"]["annotations"]["nixuv.io/status"], "injected");
        let spec = pod.spec.as_ref().unwrap();
        let vol_names: Vec<_> = spec.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
        assert!(vol_names.ends_with(&["nixuv-nix", "nixuv-uv", "nixuv-tmp"]), "{name}: {vol_names:?}");
        let init_names: Vec<_> = spec.init_containers.iter().flatten().map(|c| c.name.as_str()).collect();
        match *name {
            "bare-pod" => {
                assert_eq!(init_names, ["nixuv-init"]);
                let app = container(&pod, "app");
                let path = env_of(app, "PATH").unwrap();
                assert_eq!(
                    path,
                    // The app's image is python: its own PATH (imagePaths), not defaultPath.
                    format!("/nixuv/uv/envs/{env_id}/bin:/nix/var/nix/profiles/nixuv/{env_id}/bin:/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
                );
                assert_eq!(env_of(app, "VIRTUAL_ENV").unwrap(), format!("/nixuv/uv/envs/{env_id}"));
                assert_eq!(env_of(app, "NIXUV_ENV").unwrap(), env_id);
                let mounts: Vec<_> = app
                    .volume_mounts
                    .iter()
                    .flatten()
                    .map(|m| (m.name.as_str(), m.mount_path.as_str(), m.read_only))
                    .collect();
                assert_eq!(mounts, [("nixuv-nix", "/nix", Some(true)), ("nixuv-uv", "/nixuv/uv", Some(true))]);
            }
            "existing-volumes-env-init" => {
                assert_eq!(init_names, ["nixuv-init", "fetch"], "existing init containers keep their order");
                assert_eq!(vol_names[..2], ["data", "kube-api-access-x7k2p"]);
                let app = container(&pod, "app");
                let names: Vec<_> = app.env.iter().flatten().map(|e| e.name.as_str()).collect();
                assert_eq!(names, ["MODE", "PATH", "POD_IP", "VIRTUAL_ENV", "NIXUV_ENV"]);
                assert_eq!(
                    env_of(app, "PATH").unwrap(),
                    format!("/nixuv/uv/envs/{env_id}/bin:/nix/var/nix/profiles/nixuv/{env_id}/bin:/opt/app/bin:/usr/local/bin:/usr/bin:/bin"),
                    "a PATH set by the container is prepended to"
                );
                let mounts: Vec<_> = app.volume_mounts.iter().flatten().map(|m| m.name.as_str()).collect();
                assert_eq!(mounts, ["kube-api-access-x7k2p", "data", "nixuv-nix", "nixuv-uv"]);
                let deps = env_of(&spec.init_containers.as_ref().unwrap()[0], "NIXUV_PYTHON_DEPS").unwrap();
                assert_eq!(deps, "pandas>=2,<3\nrequests[socks]");
            }
            "istio-sidecar" => {
                assert_eq!(init_names, ["nixuv-init", "istio-init"]);
                assert!(env_of(container(&pod, "web"), "NIXUV_ENV").is_some());
                assert!(env_of(container(&pod, "istio-proxy"), "NIXUV_ENV").is_none(), "sidecar untouched");
                assert_eq!(container(&pod, "istio-proxy").volume_mounts.as_ref().unwrap().len(), 1);
            }
            "argo-pod" => {
                assert!(env_of(container(&pod, "main"), "NIXUV_ENV").is_some());
                assert!(env_of(container(&pod, "wait"), "NIXUV_ENV").is_none(), "Argo's wait sidecar untouched");
            }
            "slash-annotation" => {
                let ann = &patched["metadata"]["annotations"];
                assert_eq!(ann["example.com/a~b"], "tilde");
                assert_eq!(ann["kubectl.kubernetes.io/last-applied-configuration"], "{\"apiVersion\":\"v1\"}\n");
                let app = container(&pod, "app");
                assert!(env_of(app, "VIRTUAL_ENV").is_none(), "no Python deps, no VIRTUAL_ENV");
                // A python image: its own PATH (imagePaths) behind the env's.
                assert_eq!(env_of(app, "PATH").unwrap(), format!("/nix/var/nix/profiles/nixuv/{env_id}/bin:/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"));
            }
            "v1beta1" => assert_eq!(resp["apiVersion"], "admission.k8s.io/v1beta1"),
            _ => unreachable!(),
        }
    }
}

#[tokio::test]
async fn fixtures_over_http1_and_http2() {
    let server = Server::start();
    let url = server.url("/mutate");
    let resp = server.h1().get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    let resp = server.h2().get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    check_all_fixtures(&server.h1(), &url).await;
    check_all_fixtures(&server.h2(), &url).await;
}

#[tokio::test]
async fn same_deps_same_env_id_across_servers() {
    // Two replicas (two processes) give the same env id for the same Pod.
    let (a, b) = (Server::start(), Server::start());
    let review = common::fixture("reviews/bare-pod.json");
    let (_, ra) = post_json(&a.h1(), &a.url("/mutate"), &review).await;
    let (_, rb) = post_json(&b.h2(), &b.url("/mutate"), &review).await;
    assert_eq!(ra["response"]["patch"], rb["response"]["patch"]);
}

#[tokio::test]
async fn not_for_nixuv_is_allowed_without_patch() {
    let server = Server::start();
    for name in ["not-opted-in", "update", "excluded-namespace", "deployment-kind"] {
        let review = common::fixture(&format!("reviews/{name}.json"));
        let (status, resp) = post_json(&server.h2(), &server.url("/mutate"), &review).await;
        assert_eq!(status, 200, "{name}");
        assert_eq!(resp["response"]["allowed"], true, "{name}: {resp}");
        assert!(resp["response"].get("patch").is_none(), "{name}: {resp}");
    }
}

#[tokio::test]
async fn denials_name_the_source_and_item() {
    let server = Server::builder().config("policy: {system: {deny: ['gcc*']}}\nmaxDeps: 3\n").start();
    let client = server.h1();
    let bare = common::fixture("reviews/bare-pod.json");
    let mut policy = bare.clone();
    policy["request"]["object"]["metadata"]["annotations"] = json!({"nixuv.io/system-deps": "gcc13"});
    let mut too_many = bare.clone();
    too_many["request"]["object"]["metadata"]["annotations"] = json!({"nixuv.io/python-deps": "a, b, c"});
    let mut bad_label = bare.clone();
    bad_label["request"]["object"]["metadata"]["labels"]["python.nixuv.io/numpy"] = json!("1..2");
    let mut unknown_target = bare.clone();
    unknown_target["request"]["object"]["metadata"]["annotations"] = json!({"nixuv.io/containers": "main"});
    let cases: Vec<(&str, Value, u16, &[&str])> = vec![
        (
            "bad python dep",
            common::fixture("reviews/deny-bad-python.json"),
            400,
            &["nixuv.io/python-deps", "evil @ https://example.com/evil.whl"],
        ),
        ("name conflict", common::fixture("reviews/deny-conflict.json"), 400, &["spec.volumes", "nixuv-uv"]),
        ("policy", policy, 403, &["nixuv.io/system-deps", "gcc13", "policy.system.deny"]),
        ("maxDeps", too_many, 403, &["maxDeps (3)", "5 dependencies"]),
        ("bad label", bad_label, 400, &["python.nixuv.io/numpy", "numpy==1..2"]),
        ("unknown target", unknown_target, 400, &["nixuv.io/containers", "\"main\""]),
    ];
    for (name, review, code, needles) in cases {
        let (status, resp) = post_json(&client, &server.url("/mutate"), &review).await;
        assert_eq!(status, 200, "{name}: a denial is a well-formed answer");
        let r = &resp["response"];
        assert_eq!(r["allowed"], false, "{name}: {resp}");
        assert_eq!(r["uid"], review["request"]["uid"]);
        assert_eq!(r["status"]["code"], code, "{name}: {resp}");
        let msg = r["status"]["message"].as_str().unwrap();
        for n in needles {
            assert!(msg.contains(n), "{name}: message {msg:?} lacks {n:?}");
        }
        assert!(r.get("patch").is_none());
    }
}

#[tokio::test]
async fn bad_bodies_get_json_errors() {
    let server = Server::builder().arg("--body-limit").arg("65536").start();
    let client = server.h2();
    let url = server.url("/mutate");
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("not json", b"hello".to_vec(), 400, "not JSON"),
        (
            "a pod, not a review",
            serde_json::to_vec(&common::fixture("reviews/bare-pod.json")["request"]["object"]).unwrap(),
            400,
            "not an AdmissionReview",
        ),
        ("no request", br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(), 400, "no request"),
        (
            "no uid",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"operation":"CREATE"}}"#
                .to_vec(),
            400,
            "no uid",
        ),
        ("over the limit", vec![b' '; 70_000], 413, "exceeds the limit"),
    ];
    for (name, body, code, needle) in cases {
        let resp = client.post(&url).header("content-type", "application/json").body(body).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), code, "{name}");
        assert_eq!(resp.headers()["content-type"], "application/json", "{name}");
        let v: Value = resp.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().contains(needle), "{name}: {v}");
        assert_eq!(v["code"], code);
    }
    // A chunked body over the limit (no Content-Length) is cut off too.
    let chunks = futures_chunks(80_000);
    let resp = client.post(&url).body(reqwest::Body::wrap_stream(chunks)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    let resp = client.get(server.url("/nope")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 404);
}

fn futures_chunks(total: usize) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut sent = 0;
        while sent < total {
            if tx.send(Ok(vec![b' '; 8192])).await.is_err() {
                break;
            }
            sent += 8192;
        }
    });
    tokio_stream_from(rx)
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn default_limit_accepts_the_apiservers_3mib_and_rejects_5mib() {
    let server = Server::start();
    let client = server.h1();
    let mut review = common::fixture("reviews/bare-pod.json");
    review["request"]["object"]["metadata"]["annotations"] = json!({"big": "x".repeat(3 * 1024 * 1024 - 4096)});
    let (status, resp) = post_json(&client, &server.url("/mutate"), &review).await;
    assert_eq!(status, 200);
    assert!(response_patch(&resp).is_some());
    // Over HTTP/2 the early 413 reaches the client; over HTTP/1.1 the server answers 413 and closes
    // the connection without reading the rest (checked in bad_bodies_get_json_errors with a body
    // the client finishes sending before it reads).
    review["request"]["object"]["metadata"]["annotations"] = json!({"big": "x".repeat(5 * 1024 * 1024)});
    let resp = server.h2().post(server.url("/mutate")).json(&review).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 413);
}

#[tokio::test]
async fn metrics_on_their_own_address() {
    let server = Server::builder().separate_metrics().start();
    let review = common::fixture("reviews/bare-pod.json");
    post_json(&server.h1(), &server.url("/mutate"), &review).await;
    post_json(&server.h1(), &server.url("/mutate"), &common::fixture("reviews/deny-conflict.json")).await;
    let _ = server.h1().post(server.url("/mutate")).body("junk").send().await.unwrap();
    // /metrics is not on the main address when --metrics-addr is given.
    assert_eq!(server.h1().get(server.url("/metrics")).send().await.unwrap().status().as_u16(), 404);
    let m = server.metrics_addr.unwrap();
    let text = reqwest::get(format!("http://{m}/metrics")).await.unwrap().text().await.unwrap();
    for needle in [
        "nixuv_admission_requests_total{endpoint=\"mutate\",decision=\"injected\"} 1",
        "nixuv_admission_requests_total{endpoint=\"mutate\",decision=\"denied\"} 1",
        "nixuv_admission_requests_total{endpoint=\"mutate\",decision=\"invalid\"} 1",
        "nixuv_admission_duration_seconds_count{endpoint=\"mutate\"} 2",
        "nixuv_http_errors_total{code=\"400\"} 1",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    assert_eq!(reqwest::get(format!("http://{m}/readyz")).await.unwrap().status().as_u16(), 200);
}

/// Replicas of one workload arrive as the same review bytes but for their uids. Each gets its own
/// uid back and the same answer as a server without the decision cache; the second and later are
/// cache hits (found before the review is parsed); a Pod that differs by one byte, the same Pod in
/// another namespace, or a uid with an escape in it (the API server's are UUIDs), is decided anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_are_answered_from_the_decision_cache() {
    let cached = Server::builder().separate_metrics().start();
    let uncached = Server::builder().arg("--decision-cache-mib").arg("0").separate_metrics().start();
    let review = common::fixture("reviews/bare-pod.json");
    let lookups = |s: &Server, result: &'static str| {
        let url = format!("http://{}/metrics", s.metrics_addr.unwrap());
        async move {
            let text = reqwest::get(url).await.unwrap().text().await.unwrap();
            let name = format!("nixuv_decision_cache_lookups_total{{result=\"{result}\"}}");
            text.lines().find(|l| l.starts_with(&name)).map_or(0.0, |l| common::metric(l, &name))
        }
    };
    let mut variants = Vec::new();
    for (i, ns) in ["team-a", "team-a", "team-a", "team-b"].into_iter().enumerate() {
        let mut r = review.clone();
        r["request"]["uid"] = json!(format!("2c8a7b1e-1111-2222-3333-44445555000{i}"));
        r["request"]["namespace"] = json!(ns);
        variants.push(r);
    }
    let mut other = variants[0].clone();
    other["request"]["object"]["metadata"]["labels"]["extra"] = json!("1");
    variants.push(other);
    let mut quoted = variants[0].clone();
    quoted["request"]["uid"] = json!("replica-\"quoted\"");
    variants.push(quoted);
    for r in &variants {
        let (_, a) = post_json(&cached.h2(), &cached.url("/mutate"), r).await;
        let (_, b) = post_json(&uncached.h1(), &uncached.url("/mutate"), r).await;
        assert_eq!(a["response"]["uid"], r["request"]["uid"]);
        assert_eq!(a, b, "cached and uncached answers differ");
        assert!(response_patch(&a).is_some());
    }
    assert_eq!(lookups(&cached, "hit").await, 2.0, "replicas 2 and 3 in team-a");
    assert_eq!(lookups(&cached, "miss").await, 4.0, "first replica, team-b, the changed Pod, the quoted uid");
    assert_eq!(lookups(&uncached, "hit").await + lookups(&uncached, "miss").await, 0.0);
    // Decided answers are logged at info; cached replicas only at debug. Lines keep their order,
    // so once the last decided one is written, the others are.
    cached.log_line("444455550003").await;
    let logs = cached.logs().join("\n");
    for (uid, logged) in
        [("444455550000", true), ("444455550001", false), ("444455550002", false), ("444455550003", true)]
    {
        assert_eq!(logs.contains(uid), logged, "{uid}: {logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_can_be_kept_off_the_webhook_address() {
    let server = Server::builder().separate_metrics().arg("--preview-on-metrics-addr").start();
    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","labels":{"nixuv.io/inject":"true"},"annotations":{"nixuv.io/system-deps":"gcc"}},"spec":{"containers":[{"name":"a","image":"x"}]}}"#;
    let r = server.h1().post(server.url("/preview")).body(pod).send().await.unwrap();
    assert_eq!(r.status(), 404, "not on the webhook's address");
    assert_eq!(
        server
            .h1()
            .post(server.url("/mutate"))
            .json(&common::fixture("reviews/bare-pod.json"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let admin = format!("http://{}/preview", server.metrics_addr.unwrap());
    let r = reqwest::Client::new().post(admin).body(pod).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["allowed"], true);
    // Without an admin address the flag is refused at start-up.
    let out = std::process::Command::new(common::bin())
        .args(["serve", "--addr", "127.0.0.1:0", "--tls-cert", "x", "--tls-key", "y", "--preview-on-metrics-addr"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--preview-on-metrics-addr needs --metrics-addr"));
}

fn mesh_pod(annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "labels": {"nixuv.io/inject": "true"}, "annotations": annotations},
        "spec": {
            "initContainers": [
                {"name": "istio-proxy", "image": "proxy", "restartPolicy": "Always"},
                {"name": "linkerd-proxy", "image": "proxy", "restartPolicy": "Always"},
                {"name": "setup", "image": "x"}
            ],
            "containers": [{"name": "app", "image": "x"}]}})
}

/// Under a mesh in native-sidecar mode the proxy is an init container with `restartPolicy:
/// Always`: nixuv-init goes after it (the default), so the proxy is up when it downloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_placement_after_native_sidecars_by_default() {
    let names = |pod: &Value| -> Vec<String> {
        pod["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    let decide = |server: &Server, pod: Value| {
        let review = with_object(&common::fixture("reviews/bare-pod.json"), pod);
        let (client, url) = (server.h1(), server.url("/mutate"));
        async move { post_json(&client, &url, &review).await.1 }
    };
    let server = Server::start();
    let pod = mesh_pod(json!({"nixuv.io/system-deps": "gcc"}));
    let v = decide(&server, pod.clone()).await;
    let out = common::apply(&pod, &response_patch(&v).unwrap());
    assert_eq!(names(&out), ["istio-proxy", "linkerd-proxy", "nixuv-init", "setup"]);
    // Reinvocation on the output changes nothing.
    let again = decide(&server, out.clone()).await;
    assert_eq!(again["response"]["allowed"], true);
    assert!(response_patch(&again).is_none());
    // Per Pod: first.
    let pod = mesh_pod(json!({"nixuv.io/system-deps": "gcc", "nixuv.io/init-placement": "first"}));
    let out = common::apply(&pod, &response_patch(&decide(&server, pod.clone()).await).unwrap());
    assert_eq!(names(&out), ["nixuv-init", "istio-proxy", "linkerd-proxy", "setup"]);
    // A bad value is denied naming the annotation.
    let pod = mesh_pod(json!({"nixuv.io/system-deps": "gcc", "nixuv.io/init-placement": "last"}));
    let v = decide(&server, pod).await;
    assert_eq!(v["response"]["allowed"], false);
    assert!(v["response"]["status"]["message"].as_str().unwrap().contains("nixuv.io/init-placement"));
    // Config: first for every Pod.
    let first = Server::builder().config("initPlacement: first\n").start();
    let pod = mesh_pod(json!({"nixuv.io/system-deps": "gcc"}));
    let out = common::apply(&pod, &response_patch(&decide(&first, pod.clone()).await).unwrap());
    assert_eq!(names(&out)[0], "nixuv-init");
    // A bad config value names the key.
    let bad = first.dir.path().join("bad.yaml");
    std::fs::write(&bad, "initPlacement: last\n").unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["preview", "-f", "/dev/null", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("initPlacement"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A container without PATH of its own gets its image's PATH behind the env's directories: from
/// imagePaths (official images shipped), else the Pod's nixuv.io/image-path, else defaultPath
/// with a preview note.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_paths_keep_the_images_own_path() {
    let server = Server::start();
    let pod = |ann: Value| {
        json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "labels": {"nixuv.io/inject": "true"}, "annotations": ann},
        "spec": {"containers": [
            {"name": "java", "image": "docker.io/library/eclipse-temurin:21-jre"},
            {"name": "conda", "image": "continuumio/miniconda3@sha256:0000000000000000000000000000000000000000000000000000000000000000"},
            {"name": "custom", "image": "registry.example.com/team/app:1"},
            {"name": "own", "image": "registry.example.com/team/app:1", "env": [{"name": "PATH", "value": "/opt/app/bin:/bin"}]}
        ]}})
    };
    let paths = |out: &Value| -> Vec<String> {
        out["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let env = c["env"].as_array().unwrap();
                let p = env.iter().rev().find(|e| e["name"] == "PATH").unwrap()["value"].as_str().unwrap();
                p.split(':').skip(1).collect::<Vec<_>>().join(":")
            })
            .collect()
    };
    let p = pod(json!({"nixuv.io/system-deps": "gcc"}));
    let review = with_object(&common::fixture("reviews/bare-pod.json"), p.clone());
    let (_, v) = post_json(&server.h1(), &server.url("/mutate"), &review).await;
    let out = common::apply(&p, &response_patch(&v).unwrap());
    assert_eq!(
        paths(&out),
        [
            "/opt/java/openjdk/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "/opt/conda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "/opt/app/bin:/bin",
        ]
    );
    // Not an admission warning (custom images are common); a preview note names the container.
    assert!(v["response"]["warnings"].is_null(), "{}", v["response"]);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("pod.json");
    std::fs::write(&f, p.to_string()).unwrap();
    let cli = std::process::Command::new(common::bin()).args(["preview", "--strict", "-f"]).arg(&f).output().unwrap();
    let stderr = String::from_utf8_lossy(&cli.stderr);
    assert_eq!(cli.status.code(), Some(0), "a note is not a warning: {stderr}");
    assert!(
        stderr.contains("note: container \"custom\" (image \"registry.example.com/team/app:1\") sets no PATH"),
        "{stderr}"
    );
    assert!(!stderr.contains("container \"java\"") && !stderr.contains("container \"own\""), "{stderr}");
    // The Pod's own annotation wins, and must be a list of absolute directories.
    let p = pod(json!({"nixuv.io/system-deps": "gcc", "nixuv.io/image-path": "/opt/tools/bin:/usr/bin:/bin"}));
    let review = with_object(&common::fixture("reviews/bare-pod.json"), p.clone());
    let (_, v) = post_json(&server.h1(), &server.url("/mutate"), &review).await;
    let out = common::apply(&p, &response_patch(&v).unwrap());
    assert_eq!(paths(&out)[2], "/opt/tools/bin:/usr/bin:/bin");
    let p = pod(json!({"nixuv.io/system-deps": "gcc", "nixuv.io/image-path": "bin"}));
    let (_, v) =
        post_json(&server.h1(), &server.url("/mutate"), &with_object(&common::fixture("reviews/bare-pod.json"), p))
            .await;
    assert_eq!(v["response"]["allowed"], false);
    assert!(v["response"]["status"]["message"].as_str().unwrap().contains("nixuv.io/image-path"));
}

/// A log line's keys in order, duplicates kept, and values.
fn log_entries(line: &str) -> Vec<(String, Value)> {
    struct Entries;
    impl<'de> serde::de::Visitor<'de> for Entries {
        type Value = Vec<(String, Value)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(e) = m.next_entry()? {
                out.push(e);
            }
            Ok(out)
        }
    }
    serde::Deserializer::deserialize_map(&mut serde_json::Deserializer::from_str(line), Entries)
        .unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[tokio::test]
async fn admission_lines_have_the_documented_fields_once_each() {
    let server = Server::builder().config("policy: {system: {deny: ['gcc*']}}\n").start();
    let mut injected = common::fixture("reviews/bare-pod.json");
    injected["request"]["uid"] = json!("7f3e0000-0000-4000-8000-00000000inje");
    let mut denied = injected.clone();
    denied["request"]["uid"] = json!("7f3e0000-0000-4000-8000-00000000deny");
    denied["request"]["object"]["metadata"]["annotations"] = json!({"nixuv.io/system-deps": "gcc13, \"jq\"\n"});
    for r in [&injected, &denied] {
        post_json(&server.h2(), &server.url("/mutate"), r).await;
    }
    let keys = [
        "timestamp",
        "level",
        "message",
        "uid",
        "namespace",
        "name",
        "decision",
        "env",
        "denial",
        "dry_run",
        "cached",
        "elapsed_us",
        "target",
    ];
    for (uid, decision) in [("00000000inje", "injected"), ("00000000deny", "denied")] {
        let line = log_entries(&server.log_line(uid).await);
        assert_eq!(line.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), keys, "{line:?}");
        let v: serde_json::Map<String, Value> = line.into_iter().collect();
        assert!(humantime::parse_rfc3339(v["timestamp"].as_str().unwrap()).is_ok(), "{v:?}");
        assert_eq!((v["level"].as_str(), v["message"].as_str()), (Some("INFO"), Some("admission")));
        assert_eq!(v["target"], "nixuv::admission");
        assert_eq!(v["decision"], decision);
        assert_eq!(v["namespace"], injected["request"]["namespace"]);
        assert_eq!((v["dry_run"].as_bool(), v["cached"].as_bool()), (Some(false), Some(false)));
        assert!(v["elapsed_us"].is_u64(), "{v:?}");
        if decision == "injected" {
            assert_eq!(v["env"].as_str().unwrap().len(), 16, "{v:?}");
            assert_eq!(v["denial"], "");
        } else {
            // The denial's message, its quotes and all, as one JSON string.
            let denial = v["denial"].as_str().unwrap();
            assert!(denial.contains("nixuv.io/system-deps") && denial.contains("\"\\\"jq\\\"\""), "{denial}");
        }
    }
}
