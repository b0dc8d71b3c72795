//! The Kubernetes API side of `nixuv serve` (`--check-claims`, `--manage-ca-bundle`), against the
//! local server of `common::kubeapi` that answers with Kubernetes API JSON in the shape of real
//! responses (list and watch of PersistentVolumeClaims and StorageClasses, get and JSON-patch of a
//! MutatingWebhookConfiguration), because no API server can run on the test machines. The claims
//! of a real cluster are documented, not tested, here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::common::kubeapi::{self, pvc_path, Shared};
use crate::common::{self, post_json, Server};

const PVCS: &str = "persistentvolumeclaims";
const CLASSES: &str = "/apis/storage.k8s.io/v1/storageclasses";
const MWCS: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations";

/// A claim as a user's `kubectl apply` made it.
fn pvc_full(ns: &str, name: &str, phase: &str, class: &str, age_secs: u64) -> Value {
    let mut c = kubeapi::claim(ns, name, class, phase, age_secs);
    c["metadata"]["labels"] = json!({"app.kubernetes.io/part-of": "nixuv"});
    c["metadata"]["managedFields"] = json!([{"manager": "kubectl", "operation": "Apply", "apiVersion": "v1"}]);
    c
}

/// A claim that bound a day ago.
fn bound(f: &mut kubeapi::Fake, ns: &str, name: &str) {
    f.put(&pvc_path(ns), pvc_full(ns, name, "Bound", "nfs", 86400));
}

fn storage_class(name: &str, mode: &str) -> Value {
    json!({"kind": "StorageClass", "apiVersion": "storage.k8s.io/v1",
           "metadata": {"name": name, "uid": format!("uid-{name}"), "creationTimestamp": "2026-01-01T00:00:00Z"},
           "provisioner": "example.com/provisioner", "reclaimPolicy": "Delete", "volumeBindingMode": mode})
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

/// The local API server with the webhook configuration in it.
async fn start_api(api: &Shared) -> std::net::SocketAddr {
    api.lock().unwrap().put(MWCS, mwc());
    kubeapi::start(api.clone()).await
}

fn kubeconfig(dir: &std::path::Path, addr: std::net::SocketAddr) -> std::path::PathBuf {
    kubeapi::kubeconfig(dir, addr, "test")
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
async fn claim_checking_server(api: &Shared) -> (Server, tempfile::TempDir) {
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
    let api: Shared = Arc::default();
    {
        let mut f = api.lock().unwrap();
        bound(&mut f, "team-a", "nixuv-nix-store");
        bound(&mut f, "team-a", "nixuv-uv-cache");
        bound(&mut f, "team-b", "nixuv-nix-store");
    }
    let (server, _dir) = claim_checking_server(&api).await;
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
        let mut f = api.lock().unwrap();
        assert!(f.watched(PVCS), "nixuv is watching");
        bound(&mut f, "team-b", "nixuv-uv-cache");
    }
    eventually("the watch event to land", async || claim_of(&mutate_in(&server, "team-b").await, "nixuv-uv").is_some())
        .await;
    assert!(mutate_in(&server, "team-b").await["warnings"].is_null());
    // A claim deleted: the watch says so, and that volume falls back to an emptyDir again.
    api.lock().unwrap().delete(&pvc_path("team-a"), "nixuv-uv-cache").unwrap();
    eventually("the deletion to land", async || claim_of(&mutate_in(&server, "team-a").await, "nixuv-uv").is_none())
        .await;
    assert_eq!(claim_of(&mutate_in(&server, "team-a").await, "nixuv-nix").as_deref(), Some("nixuv-nix-store"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_cannot_bind_falls_back_to_emptydir_with_a_warning() {
    let api: Shared = Arc::default();
    {
        let mut f = api.lock().unwrap();
        f.put(CLASSES, storage_class("nfs", "Immediate"));
        f.put(CLASSES, storage_class("standard", "WaitForFirstConsumer"));
        for (ns, name, class, age) in [
            // An Immediate class that has not bound it in ten minutes (no RWX support, a quota).
            ("team-a", "nixuv-nix-store", "nfs", 600),
            // Just created: still provisioning.
            ("team-a", "nixuv-uv-cache", "nfs", 2),
            // WaitForFirstConsumer: Pending until a Pod uses it, which is normal.
            ("team-b", "nixuv-nix-store", "standard", 600),
            ("team-b", "nixuv-uv-cache", "standard", 600),
        ] {
            f.put(&pvc_path(ns), pvc_full(ns, name, "Pending", class, age));
        }
    }
    let (server, _dir) = claim_checking_server(&api).await;
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
    let api: Shared = Arc::default();
    let addr = start_api(&api).await;
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
        api.lock().unwrap().get(MWCS, "nixuv").unwrap()["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["clientConfig"]["caBundle"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let b64 = |p: &std::path::Path| base64::engine::general_purpose::STANDARD.encode(std::fs::read(p).unwrap());
    let want = b64(&certs.join("ca.crt"));
    eventually("the caBundle to be set", async || bundle(&api) == vec![want.clone(), want.clone()]).await;
    let patches = |api: &Shared| -> Vec<(String, Value)> {
        let f = api.lock().unwrap();
        let writes = f.writes.iter().filter(|w| w.method == "PATCH" && w.path == format!("{MWCS}/nixuv"));
        writes.map(|w| (w.content_type.clone(), serde_json::from_str(&w.body).unwrap())).collect()
    };
    let (ctype, first) = patches(&api)[0].clone();
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
    let n = patches(&api).len();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(patches(&api).len(), n);
    server.log_line("caBundle updated").await;
}
