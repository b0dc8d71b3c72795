//! The Kubernetes API side of `nixuv serve` (`--check-claims`, `--manage-ca-bundle`), against a
//! local HTTP server that answers with Kubernetes API JSON in the shape of real responses — list
//! and watch of PersistentVolumeClaims and StorageClasses, get and JSON-patch of a
//! MutatingWebhookConfiguration — because
//! no API server can run on the test machines. The claims of a real cluster are documented, not
//! tested, here.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine;
use serde_json::{json, Value};

use crate::common::{self, post_json, Server};

#[derive(Default)]
struct Api {
    claims: Vec<(String, String)>,
    /// Claims with a phase, class and age other than Bound / nfs / old: (namespace, name, phase,
    /// class, age in seconds).
    pending: Vec<(String, String, String, String, i64)>,
    classes: Vec<(String, String)>,
    rv: u64,
    mwc: Value,
    patches: Vec<(String, Value)>,
    watchers: Vec<tokio::sync::mpsc::UnboundedSender<String>>,
}

type Shared = Arc<Mutex<Api>>;

fn pvc_full(ns: &str, name: &str, phase: &str, class: &str, age_secs: i64, rv: u64) -> Value {
    let created = std::time::SystemTime::now() - Duration::from_secs(age_secs as u64);
    let created = humantime::format_rfc3339_seconds(created).to_string();
    json!({"kind": "PersistentVolumeClaim", "apiVersion": "v1",
           "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"), "resourceVersion": rv.to_string(),
                        "creationTimestamp": created, "labels": {"app.kubernetes.io/part-of": "nixuv"},
                        "managedFields": [{"manager": "kubectl", "operation": "Apply", "apiVersion": "v1"}]},
           "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "50Gi"}},
                    "storageClassName": class, "volumeMode": "Filesystem"},
           "status": {"phase": phase}})
}

fn pvc_meta(ns: &str, name: &str, rv: u64) -> Value {
    pvc_full(ns, name, "Bound", "nfs", 86400, rv)
}

fn storage_class(name: &str, mode: &str) -> Value {
    json!({"kind": "StorageClass", "apiVersion": "storage.k8s.io/v1",
           "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": "5", "creationTimestamp": "2026-01-01T00:00:00Z"},
           "provisioner": "example.com/provisioner", "reclaimPolicy": "Delete", "volumeBindingMode": mode})
}

async fn classes(State(api): State<Shared>, Query(q): Query<std::collections::HashMap<String, String>>) -> Response {
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        // Nothing changes: a watch that stays open.
        let stream = futures_util::stream::pending::<Result<String, std::io::Error>>();
        return ([("content-type", "application/json")], Body::from_stream(stream)).into_response();
    }
    let a = api.lock().unwrap();
    let items: Vec<Value> = a.classes.iter().map(|(n, m)| storage_class(n, m)).collect();
    let list = json!({"kind": "StorageClassList", "apiVersion": "storage.k8s.io/v1",
                      "metadata": {"resourceVersion": a.rv.to_string()}, "items": items});
    ([("content-type", "application/json")], list.to_string()).into_response()
}

async fn pvcs(State(api): State<Shared>, Query(q): Query<std::collections::HashMap<String, String>>) -> Response {
    if q.get("watch").map(String::as_str) == Some("true") || q.get("watch").map(String::as_str) == Some("1") {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        api.lock().unwrap().watchers.push(tx);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|s| (Ok::<_, std::io::Error>(s), rx))
        });
        return ([("content-type", "application/json")], Body::from_stream(stream)).into_response();
    }
    let a = api.lock().unwrap();
    let mut items: Vec<Value> = a.claims.iter().map(|(ns, n)| pvc_meta(ns, n, a.rv)).collect();
    items.extend(a.pending.iter().map(|(ns, n, phase, class, age)| pvc_full(ns, n, phase, class, *age, a.rv)));
    let list = json!({"kind": "PersistentVolumeClaimList", "apiVersion": "v1",
                      "metadata": {"resourceVersion": a.rv.to_string()}, "items": items});
    ([("content-type", "application/json")], list.to_string()).into_response()
}

async fn mwc_get(State(api): State<Shared>) -> Response {
    ([("content-type", "application/json")], api.lock().unwrap().mwc.to_string()).into_response()
}

async fn mwc_patch(State(api): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let ctype = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let patch: json_patch::Patch = match serde_json::from_str(&body) {
        Ok(p) => p,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let mut a = api.lock().unwrap();
    let mut doc = a.mwc.clone();
    if let Err(e) = json_patch::patch(&mut doc, &patch.0) {
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": e.to_string(), "reason": "Invalid", "code": 422});
        return (StatusCode::UNPROCESSABLE_ENTITY, [("content-type", "application/json")], status.to_string())
            .into_response();
    }
    a.rv += 1;
    doc["metadata"]["resourceVersion"] = json!(a.rv.to_string());
    a.mwc = doc.clone();
    a.patches.push((ctype, serde_json::from_str(&body).unwrap()));
    ([("content-type", "application/json")], doc.to_string()).into_response()
}

fn mwc() -> Value {
    let hook = |name: &str| {
        json!({
            "name": name, "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail",
            "clientConfig": {"service": {"namespace": "nixuv-system", "name": "nixuv", "path": "/mutate", "port": 443}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}],
            "objectSelector": {"matchLabels": {"nixuv.io/inject": "true"}}
        })
    };
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
           "metadata": {"name": "nixuv", "resourceVersion": "1", "uid": "mwc-uid", "creationTimestamp": "2026-11-25T10:00:00Z"},
           "webhooks": [hook("pods.nixuv.io"), hook("pods-reinvoked.nixuv.io")]})
}

async fn start_api(api: Shared) -> std::net::SocketAddr {
    let app = Router::new()
        .route("/api/v1/persistentvolumeclaims", get(pvcs))
        .route("/apis/storage.k8s.io/v1/storageclasses", get(classes))
        .route(
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/nixuv",
            get(mwc_get).patch(mwc_patch),
        )
        .with_state(api);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn kubeconfig(dir: &std::path::Path, addr: std::net::SocketAddr) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster: {{server: 'http://{addr}'}}\nusers:\n- name: u\n  user: {{token: test}}\ncontexts:\n- name: c\n  context: {{cluster: local, user: u, namespace: nixuv-system}}\ncurrent-context: c\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

async fn mutate_in(server: &Server, ns: &str) -> Value {
    let mut review = common::fixture("reviews/bare-pod.json");
    review["request"]["namespace"] = json!(ns);
    let (status, resp) = post_json(&server.h1(), &server.url("/mutate"), &review).await;
    assert_eq!(status, 200);
    let patch = common::response_patch(&resp).unwrap();
    let pod = common::apply(&review["request"]["object"], &patch);
    json!({"volumes": pod["spec"]["volumes"], "warnings": resp["response"]["warnings"]})
}

async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `nixuv serve --check-claims` against the local API server of `api`.
async fn claim_checking_server(api: Shared) -> (Server, tempfile::TempDir) {
    let addr = start_api(api).await;
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(dir.path(), addr);
    (Server::builder().env("KUBECONFIG", kc.to_str().unwrap()).arg("--check-claims").start(), dir)
}

fn claim_of(v: &Value, vol: &str) -> Option<String> {
    v["volumes"].as_array()?.iter().find(|x| x["name"] == vol)?["persistentVolumeClaim"]["claimName"]
        .as_str()
        .map(String::from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_cache_falls_back_to_emptydir_and_follows_the_watch() {
    let api: Shared = Arc::new(Mutex::new(Api {
        claims: vec![
            ("team-a".into(), "nixuv-nix-store".into()),
            ("team-a".into(), "nixuv-uv-cache".into()),
            ("team-b".into(), "nixuv-nix-store".into()),
        ],
        rv: 10,
        mwc: mwc(),
        ..Default::default()
    }));
    let (server, _dir) = claim_checking_server(api.clone()).await;
    // Synced: team-a has both claims, no warning.
    eventually("the claim cache to sync", async || mutate_in(&server, "team-a").await["warnings"].is_null()).await;
    let a = mutate_in(&server, "team-a").await;
    assert_eq!(claim_of(&a, "nixuv-nix").as_deref(), Some("nixuv-nix-store"));
    assert_eq!(claim_of(&a, "nixuv-uv").as_deref(), Some("nixuv-uv-cache"));
    // team-b lacks the uv claim: that volume is an emptyDir, and the warning says why.
    let b = mutate_in(&server, "team-b").await;
    assert_eq!(claim_of(&b, "nixuv-nix").as_deref(), Some("nixuv-nix-store"));
    assert_eq!(claim_of(&b, "nixuv-uv"), None);
    let vols = b["volumes"].as_array().unwrap();
    assert!(vols.iter().any(|v| v["name"] == "nixuv-uv" && v["emptyDir"].is_object()), "{b}");
    let w = b["warnings"][0].as_str().unwrap();
    assert!(w.contains("\"nixuv-uv-cache\"") && w.contains("\"team-b\"") && w.contains("emptyDir"), "{w}");
    // /preview on the server agrees with /mutate.
    let pod = common::fixture("reviews/bare-pod.json")["request"]["object"].clone();
    let r: Value = server
        .h1()
        .post(server.url("/preview?namespace=team-b"))
        .json(&pod)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["warnings"][0].as_str(), Some(w));
    // The claim is created: a watch event, no new list.
    {
        let mut a = api.lock().unwrap();
        a.rv += 1;
        let ev = json!({"type": "ADDED", "object": pvc_meta("team-b", "nixuv-uv-cache", a.rv)}).to_string() + "\n";
        assert!(!a.watchers.is_empty(), "nixuv is watching");
        a.watchers.retain(|w| w.send(ev.clone()).is_ok());
    }
    eventually("the watch event to land", async || claim_of(&mutate_in(&server, "team-b").await, "nixuv-uv").is_some())
        .await;
    assert!(mutate_in(&server, "team-b").await["warnings"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_cannot_bind_falls_back_to_emptydir_with_a_warning() {
    let pending =
        |ns: &str, name: &str, class: &str, age: i64| (ns.into(), name.into(), "Pending".into(), class.into(), age);
    let api: Shared = Arc::new(Mutex::new(Api {
        classes: vec![("nfs".into(), "Immediate".into()), ("standard".into(), "WaitForFirstConsumer".into())],
        pending: vec![
            // An Immediate class that has not bound it in ten minutes (no RWX support, a quota).
            pending("team-a", "nixuv-nix-store", "nfs", 600),
            // Just created: still provisioning.
            pending("team-a", "nixuv-uv-cache", "nfs", 2),
            // WaitForFirstConsumer: Pending until a Pod uses it, which is normal.
            pending("team-b", "nixuv-nix-store", "standard", 600),
            pending("team-b", "nixuv-uv-cache", "standard", 600),
        ],
        rv: 10,
        mwc: mwc(),
        ..Default::default()
    }));
    let (server, _dir) = claim_checking_server(api.clone()).await;
    eventually("the claim cache to sync", async || {
        !mutate_in(&server, "team-b").await["warnings"].to_string().contains("could not check")
    })
    .await;
    let a = mutate_in(&server, "team-a").await;
    assert_eq!(claim_of(&a, "nixuv-nix"), None, "{a}");
    assert_eq!(claim_of(&a, "nixuv-uv").as_deref(), Some("nixuv-uv-cache"));
    let w = a["warnings"][0].as_str().unwrap();
    assert!(w.contains("\"nixuv-nix-store\"") && w.contains("is Pending when it should have bound"), "{w}");
    let b = mutate_in(&server, "team-b").await;
    assert_eq!(claim_of(&b, "nixuv-nix").as_deref(), Some("nixuv-nix-store"), "{b}");
    assert!(b["warnings"].is_null(), "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_unreachable_keeps_serving_with_the_configured_claims() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(dir.path(), closed);
    let server = Server::builder().env("KUBECONFIG", kc.to_str().unwrap()).arg("--check-claims").start();
    assert_eq!(server.h1().get(server.url("/readyz")).send().await.unwrap().status(), 200);
    let v = mutate_in(&server, "team-a").await;
    assert_eq!(claim_of(&v, "nixuv-uv").as_deref(), Some("nixuv-uv-cache"));
    let w = v["warnings"][0].as_str().unwrap();
    assert!(w.contains("could not check") && w.contains("nixuv-nix-store"), "{w}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_bundle_follows_the_ca_file() {
    let api: Shared = Arc::new(Mutex::new(Api { rv: 1, mwc: mwc(), ..Default::default() }));
    let addr = start_api(api.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("tls");
    common::make_certs(&certs);
    let kc = kubeconfig(dir.path(), addr);
    let server = Server::builder()
        .env("KUBECONFIG", kc.to_str().unwrap())
        .cert_dir(&certs)
        .arg("--manage-ca-bundle")
        .arg("nixuv")
        .arg("--ca-bundle-file")
        .arg(certs.join("ca.crt").to_str().unwrap())
        .arg("--reload-interval")
        .arg("200ms")
        .start();
    let bundle = |api: &Shared| -> Vec<String> {
        api.lock().unwrap().mwc["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["clientConfig"]["caBundle"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let b64 = |p: &std::path::Path| base64::engine::general_purpose::STANDARD.encode(std::fs::read(p).unwrap());
    let want = b64(&certs.join("ca.crt"));
    eventually("the caBundle to be set", async || bundle(&api) == vec![want.clone(), want.clone()]).await;
    let (ctype, first) = api.lock().unwrap().patches[0].clone();
    assert_eq!(ctype, "application/json-patch+json");
    assert_eq!(first[0]["op"], "test", "the patch checks the webhook it changes: {first}");
    // Rotation: a new CA in the file (as kubelet updates a Secret) reaches the configuration.
    let next = dir.path().join("next");
    common::make_certs(&next);
    for f in ["ca.crt", "tls.crt", "tls.key"] {
        std::fs::copy(next.join(f), certs.join(format!("{f}.new"))).unwrap();
        std::fs::rename(certs.join(format!("{f}.new")), certs.join(f)).unwrap();
    }
    let want2 = b64(&certs.join("ca.crt"));
    assert_ne!(want, want2);
    eventually("the rotated caBundle", async || bundle(&api) == vec![want2.clone(), want2.clone()]).await;
    // In step: no further patches once equal.
    let n = api.lock().unwrap().patches.len();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(api.lock().unwrap().patches.len(), n);
    server.log_line("caBundle updated").await;
}
