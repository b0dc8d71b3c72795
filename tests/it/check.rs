//! `nixuv check` against the local server of `common::kubeapi` that answers with Kubernetes API
//! JSON (the shapes of real API responses: objects with their apiVersion, kind, metadata and
//! status; 404 Status objects), because no API server runs on the test machines; the webhook itself is a real
//! `nixuv serve` with a certificate for its Service's DNS name, reached through `--connect` as a
//! port-forward would. One case per answer `check` can give.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;

use base64::Engine;
use serde_json::{json, Value};

use crate::common::kubeapi::{self, Shared};
use crate::common::{self, Server};

const MWC: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/nixuv";
const SLICE: &str = "/apis/discovery.k8s.io/v1/namespaces/nixuv-system/endpointslices/nixuv-abcde";

/// The API holds exactly the objects of `objects` (by path).
fn load(api: &Shared, objects: &BTreeMap<String, Value>) {
    let mut f = api.lock().unwrap();
    f.objects.clear();
    for (path, obj) in objects {
        f.put_at(path, obj.clone());
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A healthy cluster: nixuv installed as deploy/base does it, namespace team-a with its stores.
fn cluster(ca: &[u8], tls_crt: &[u8]) -> BTreeMap<String, Value> {
    let mut m = BTreeMap::new();
    let mwc = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "nixuv", "uid": "1", "resourceVersion": "7"},
        "webhooks": [{"name": "pods.nixuv.io", "admissionReviewVersions": ["v1", "v1beta1"], "sideEffects": "None",
            "failurePolicy": "Fail", "timeoutSeconds": 5,
            "clientConfig": {"service": {"namespace": "nixuv-system", "name": "nixuv", "path": "/mutate", "port": 443}, "caBundle": b64(ca)},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}],
            "objectSelector": {"matchLabels": {"nixuv.io/inject": "true"}},
            "namespaceSelector": {"matchExpressions": [
                {"key": "nixuv.io/inject", "operator": "NotIn", "values": ["disabled"]},
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "kube-public"]}]}}]});
    m.insert(MWC.into(), mwc);
    m.insert("/api/v1/namespaces/team-a".into(), json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "team-a", "labels": {"kubernetes.io/metadata.name": "team-a"}}, "status": {"phase": "Active"}}));
    m.insert(SLICE.into(), json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "nixuv-abcde", "namespace": "nixuv-system", "labels": {"kubernetes.io/service-name": "nixuv"}},
        "addressType": "IPv4", "ports": [{"name": "https", "port": 8443, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.0.0.5"], "conditions": {"ready": true, "serving": true, "terminating": false}},
                      {"addresses": ["10.0.1.7"], "conditions": {"ready": true, "serving": true, "terminating": false}}]}));
    // Another Service's slice in the same namespace: `check` must select nixuv's by label.
    m.insert("/apis/discovery.k8s.io/v1/namespaces/nixuv-system/endpointslices/other-xyz".into(), json!({"apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice", "metadata": {"name": "other-xyz", "namespace": "nixuv-system", "labels": {"kubernetes.io/service-name": "other"}},
        "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.2.9"], "conditions": {"ready": true}}]}));
    let config =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/base/configmap.yaml"))
            .unwrap();
    let cm: Value = serde_yaml_ng::from_str(&config).unwrap();
    let mut cm = cm;
    cm["metadata"]["namespace"] = json!("nixuv-system");
    m.insert("/api/v1/namespaces/nixuv-system/configmaps/nixuv-config".into(), cm);
    m.insert(
        "/api/v1/namespaces/nixuv-system/secrets/nixuv-tls".into(),
        json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "nixuv-tls", "namespace": "nixuv-system"}, "type": "kubernetes.io/tls",
        "data": {"tls.crt": b64(tls_crt), "tls.key": "", "ca.crt": b64(ca)}}),
    );
    for claim in ["nixuv-nix-store", "nixuv-uv-cache"] {
        m.insert(format!("/api/v1/namespaces/team-a/persistentvolumeclaims/{claim}"), json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": "team-a"}, "spec": {"accessModes": ["ReadWriteMany"]}, "status": {"phase": "Bound"}}));
    }
    // The Pod as the API server stores it: created through nixuv (the real binary's output).
    let created = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "job-1", "namespace": "team-a", "labels": {"nixuv.io/inject": "true"},
            "annotations": {"nixuv.io/system-deps": "gcc"}},
        "spec": {"containers": [{"name": "app", "image": "python:3.12"}]}});
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("pod.json");
    std::fs::write(&f, created.to_string()).unwrap();
    let out = Command::new(common::bin()).args(["preview", "-o", "json", "-f"]).arg(&f).output().unwrap();
    let mut pod: Value = serde_json::from_slice(&out.stdout).unwrap();
    pod["status"] = json!({"phase": "Running", "initContainerStatuses": [{"name": "nixuv-init", "ready": true, "restartCount": 0,
        "image": "ghcr.io/nixuv/nixuv-init:0.1.0", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]});
    m.insert("/api/v1/namespaces/team-a/pods/job-1".into(), pod);
    m.insert("/apis/apps/v1/namespaces/team-a/deployments/web".into(), json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "team-a", "labels": {"nixuv.io/inject": "true"}, "annotations": {"nixuv.io/system-deps": "gcc"}},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "image": "python:3.12"}]}}}}));
    m
}

struct Check {
    dir: tempfile::TempDir,
    kubeconfig: std::path::PathBuf,
}

impl Check {
    fn new(addr: std::net::SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster: {{server: 'http://{addr}'}}\nusers:\n- name: u\n  user: {{token: test}}\ncontexts:\n- name: c\n  context: {{cluster: local, user: u, namespace: team-a}}\ncurrent-context: c\n"
        )).unwrap();
        Check { dir, kubeconfig }
    }
    fn run(&self, args: &[&str]) -> (i32, Value) {
        self.run_env(args, &[])
    }
    fn run_env(&self, args: &[&str], env: &[(&str, std::path::PathBuf)]) -> (i32, Value) {
        let out = Command::new(common::bin())
            .arg("check")
            .args(args)
            .args(["-o", "json"])
            .envs(env.iter().map(|(k, v)| (*k, v)))
            .env("KUBECONFIG", &self.kubeconfig)
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        let report: Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code().unwrap(), report)
    }
}

fn finding<'a>(r: &'a Value, check: &str, level: &str, needle: &str) -> &'a Value {
    r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == check && f["level"] == level && f["message"].as_str().unwrap().contains(needle))
        .unwrap_or_else(|| {
            panic!("no {level} {check} finding containing {needle:?} in {}", serde_json::to_string_pretty(r).unwrap())
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_answers_each_question_about_a_live_cluster() {
    // The real webhook, with a certificate for its Service's name.
    let certs = tempfile::tempdir().unwrap();
    let out = Command::new(common::bin())
        .args(["certs", "--out-dir"])
        .arg(certs.path())
        .args(["--dns-name", "nixuv.nixuv-system.svc", "--dns-name", "localhost", "--ip", "127.0.0.1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let webhook = Server::builder().cert_dir(certs.path()).start();
    let ca = std::fs::read(certs.path().join("ca.crt")).unwrap();
    let crt = std::fs::read(certs.path().join("tls.crt")).unwrap();
    let full = cluster(&ca, &crt);
    let objs: Shared = Arc::default();
    load(&objs, &full);
    let api = kubeapi::start(Arc::clone(&objs)).await;
    let check = Check::new(api);
    let connect = webhook.addr.to_string();
    let set = |path: &str, v: Value| {
        objs.lock().unwrap().put_at(path, v);
    };
    let remove = |path: &str| {
        objs.lock().unwrap().delete_at(path);
    };

    // A healthy cluster and an injected Pod: nothing in the way.
    let (code, r) = check.run(&["pod", "job-1", "--connect", &connect]);
    assert_eq!(code, 0, "{}", serde_json::to_string_pretty(&r).unwrap());
    finding(
        &r,
        "certificate",
        "ok",
        "answers with a certificate for nixuv.nixuv-system.svc that the caBundle verifies",
    );
    finding(&r, "namespaceSelector", "ok", "selects namespace team-a");
    finding(&r, "objectSelector", "ok", "selects the Pod's labels");
    finding(&r, "endpoints", "ok", "2 ready endpoint(s)");
    finding(&r, "config", "ok", "does not exclude namespace team-a");
    finding(&r, "stores", "ok", "nixuv-uv-cache is Bound");
    finding(&r, "preview", "ok", "nixuv injects env");
    let env = objs.lock().unwrap().get_at("/api/v1/namespaces/team-a/pods/job-1").unwrap()["metadata"]["annotations"]
        ["nixuv.io/env"]
        .as_str()
        .unwrap()
        .to_string();
    finding(&r, "preview", "ok", &format!("nixuv injects env {env} (already_injected)"));
    finding(&r, "pod", "ok", &format!("injected for env {env}"));
    finding(&r, "nixuv-init", "ok", "finished");
    // Without a way to the Service, the Secret's certificate is checked instead.
    let (code, r) = check.run(&["pod", "job-1", "--connect", "127.0.0.1:1"]);
    assert_eq!(code, 0);
    finding(
        &r,
        "certificate",
        "ok",
        "Secret nixuv-system/nixuv-tls is for nixuv.nixuv-system.svc and the caBundle verifies it",
    );

    // A Deployment labelled on itself, not on its template.
    let (code, r) = check.run(&["deployment", "web", "--connect", &connect]);
    assert_eq!(code, 1);
    finding(&r, "objectSelector", "fail", "does not select the Pod template's labels");
    finding(&r, "preview", "warn", "move it to spec.template.metadata.labels");

    // A namespace nixuv must not touch.
    set(
        "/api/v1/namespaces/team-a",
        json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "team-a", "labels": {"kubernetes.io/metadata.name": "team-a", "nixuv.io/inject": "disabled"}}}),
    );
    let (code, r) = check.run(&["namespace", "team-a", "--connect", &connect]);
    assert_eq!(code, 1);
    finding(&r, "namespaceSelector", "fail", "does not select namespace team-a");
    set(
        "/api/v1/namespaces/team-a",
        json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "team-a", "labels": {"kubernetes.io/metadata.name": "team-a"}}}),
    );

    // A caBundle of another CA: the Service's certificate does not verify.
    let other = tempfile::tempdir().unwrap();
    common::make_certs(other.path());
    let mut mwc = objs.lock().unwrap().get_at(MWC).unwrap();
    mwc["webhooks"][0]["clientConfig"]["caBundle"] = json!(b64(&std::fs::read(other.path().join("ca.crt")).unwrap()));
    set(MWC, mwc.clone());
    let (code, r) = check.run(&["pod", "job-1", "--connect", &connect]);
    assert_eq!(code, 1);
    finding(&r, "certificate", "fail", "the caBundle does not verify");
    // An empty caBundle.
    mwc["webhooks"][0]["clientConfig"]["caBundle"] = json!("");
    set(MWC, mwc);
    let (_, r) = check.run(&["pod", "job-1", "--connect", &connect]);
    finding(&r, "caBundle", "fail", "caBundle is empty");

    // No webhook configuration at all.
    remove(MWC);
    let (code, r) = check.run(&["pod", "job-1"]);
    assert_eq!(code, 1);
    finding(&r, "webhook", "fail", "does not exist");
    load(&objs, &full);

    // No ready endpoint, a Pending store, an excluded namespace.
    let mut slice = full[SLICE].clone();
    slice["endpoints"] = json!([{"addresses": ["10.0.0.5"], "conditions": {"ready": false}}]);
    set(SLICE, slice);
    set(
        "/api/v1/namespaces/team-a/persistentvolumeclaims/nixuv-uv-cache",
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "nixuv-uv-cache", "namespace": "team-a"}, "status": {"phase": "Pending"}}),
    );
    remove("/api/v1/namespaces/team-a/persistentvolumeclaims/nixuv-nix-store");
    let mut cm = full["/api/v1/namespaces/nixuv-system/configmaps/nixuv-config"].clone();
    let text = cm["data"]["config.yaml"].as_str().unwrap().replace(
        "excludeNamespaces: [kube-system, kube-public]",
        "excludeNamespaces: [kube-system, kube-public, team-a]",
    );
    cm["data"]["config.yaml"] = json!(text);
    set("/api/v1/namespaces/nixuv-system/configmaps/nixuv-config", cm);
    let (code, r) = check.run(&["pod", "job-1", "--connect", &connect]);
    assert_eq!(code, 1);
    finding(&r, "endpoints", "fail", "no ready endpoint");
    finding(&r, "stores", "warn", "nixuv-uv-cache is Pending");
    finding(&r, "stores", "warn", "nixuv-nix-store does not exist");
    finding(&r, "config", "fail", "excludes namespace team-a");
    load(&objs, &full);

    // A Pod created before nixuv, and one whose nixuv-init failed.
    let mut pod = full["/api/v1/namespaces/team-a/pods/job-1"].clone();
    pod["metadata"]["annotations"] = json!({"nixuv.io/system-deps": "gcc", "nixuv.io/status": "pending"});
    pod["status"]["initContainerStatuses"] = json!([{"name": "nixuv-init", "ready": false, "restartCount": 1, "image": "x",
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
            "message": "nixuv materialize: system dep \"gcc\": nix-portable: error: cannot connect to cache.nixos.org\n\u{1b}]0;owned\u{7}"}}}]);
    set("/api/v1/namespaces/team-a/pods/job-1", pod);
    let (code, r) = check.run(&["pod", "job-1", "--connect", &connect]);
    assert_eq!(code, 1);
    finding(&r, "pod", "fail", "was not injected");
    finding(&r, "nixuv-init", "fail", "cannot connect to cache.nixos.org");
    // For people: one line, and what the container wrote cannot drive the terminal.
    let out = Command::new(common::bin())
        .args(["check", "pod", "job-1", "--connect", &connect])
        .env("KUBECONFIG", &check.kubeconfig)
        .current_dir(check.dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.stdout.contains(&0x1b) && !out.stdout.contains(&0x07), "{text}");
    assert!(text.contains("cache.nixos.org | \\u{1b}]0;owned"), "{text}");
    // An object that does not exist; a cluster that cannot be asked.
    let (code, r) = check.run(&["pod", "nope"]);
    assert_eq!(code, 1);
    finding(&r, "object", "fail", "not found in namespace team-a");
    let out =
        Command::new(common::bin()).args(["check", "pod", "x"]).env("KUBECONFIG", "/nonexistent").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `nixuv check --resolve`: a Deployment's deps resolved from here with the cluster's config
/// (here the test's offline wheels and flake): what would fail in its init container is a failed
/// check, named with its fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_resolves_a_workloads_deps_with_the_clusters_config() {
    let fx = crate::materialize::Fixture::new();
    let mut full = cluster(b"ca", b"crt");
    let cm = full.get_mut("/api/v1/namespaces/nixuv-system/configmaps/nixuv-config").unwrap();
    cm["data"]["config.yaml"] = json!(std::fs::read_to_string(&fx.config).unwrap());
    full.insert("/apis/apps/v1/namespaces/team-a/deployments/etl".into(), json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "etl", "namespace": "team-a"},
        "spec": {"selector": {"matchLabels": {"app": "etl"}}, "template": {
            "metadata": {"labels": {"app": "etl", "nixuv.io/inject": "true"},
                         "annotations": {"nixuv.io/python-deps": "nixuvdemo==1.0, pandass", "nixuv.io/python": fx.python.clone(),
                                         "nixuv.io/system-deps": "hello-nixuv ffmpeg_7-headless"}},
            "spec": {"containers": [{"name": "app", "image": "python:3.12"}]}}}}));
    let objs: Shared = Arc::default();
    load(&objs, &full);
    let api = kubeapi::start(Arc::clone(&objs)).await;
    let check = Check::new(api);
    let (code, r) = tokio::task::spawn_blocking(move || {
        let uv = [("NIXUV_UV", crate::materialize::support("uv"))];
        check.run_env(&["deployment", "etl", "--resolve", "--connect", "127.0.0.1:1"], &uv)
    })
    .await
    .unwrap();
    assert_eq!(code, 1);
    finding(&r, "resolve", "fail", "\"pandass\" would fail");
    finding(&r, "resolve", "fail", "\"ffmpeg_7-headless\" would fail: no such attribute");
    assert!(!r.to_string().contains("\\\"nixuvdemo==1.0\\\" would fail"), "{r}");
}

/// With `caBundle` (and the image store), `check` looks for the ConfigMap where it is mounted: the
/// checked namespace (nixuv-init) and nixuv's own (the builder's Jobs); a missing one, one
/// without the key, or one whose key holds no certificate fails, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_finds_the_ca_bundle_configmap_where_it_is_mounted() {
    let certs = tempfile::tempdir().unwrap();
    common::make_certs(certs.path());
    let pem = std::fs::read_to_string(certs.path().join("ca.crt")).unwrap();
    let mut full = cluster(b"ca", b"crt");
    let cm = full.get_mut("/api/v1/namespaces/nixuv-system/configmaps/nixuv-config").unwrap();
    let text = cm["data"]["config.yaml"].as_str().unwrap().to_string();
    cm["data"]["config.yaml"] = json!(format!(
        "{text}\ncaBundle: {{configMap: corp-ca, key: ca.crt}}\nimageStore: {{repository: registry.example/nixuv/envs}}\n"
    ));
    let objs: Shared = Arc::default();
    load(&objs, &full);
    let api = kubeapi::start(Arc::clone(&objs)).await;
    let check = Arc::new(Check::new(api));
    let ca_map = |ns: &str, data: Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "corp-ca", "namespace": ns}, "data": data});
    let run = |c: Arc<Check>| move || c.run(&["pod", "job-1", "--connect", "127.0.0.1:1"]);
    let (code, r) = tokio::task::spawn_blocking(run(check.clone())).await.unwrap();
    assert_eq!(code, 1);
    finding(&r, "caBundleConfigMap", "fail", "ConfigMap team-a/corp-ca (caBundle) does not exist: nixuv-init");
    finding(
        &r,
        "caBundleConfigMap",
        "fail",
        "ConfigMap nixuv-system/corp-ca (caBundle) does not exist: the image builder",
    );
    objs.lock()
        .unwrap()
        .put_at("/api/v1/namespaces/team-a/configmaps/corp-ca", ca_map("team-a", json!({"other": pem})));
    objs.lock().unwrap().put_at(
        "/api/v1/namespaces/nixuv-system/configmaps/corp-ca",
        ca_map("nixuv-system", json!({"ca.crt": "not a certificate"})),
    );
    let (_, r) = tokio::task::spawn_blocking(run(check.clone())).await.unwrap();
    finding(&r, "caBundleConfigMap", "fail", "ConfigMap team-a/corp-ca (caBundle) has no key \"ca.crt\"");
    finding(&r, "caBundleConfigMap", "fail", "key \"ca.crt\": no PEM certificate in it");
    for ns in ["team-a", "nixuv-system"] {
        objs.lock()
            .unwrap()
            .put_at(&format!("/api/v1/namespaces/{ns}/configmaps/corp-ca"), ca_map(ns, json!({"ca.crt": pem})));
    }
    let (_, r) = tokio::task::spawn_blocking(run(check)).await.unwrap();
    finding(&r, "caBundleConfigMap", "ok", "ConfigMap team-a/corp-ca (caBundle) holds 1 certificate(s)");
    finding(&r, "caBundleConfigMap", "ok", "ConfigMap nixuv-system/corp-ca (caBundle) holds 1 certificate(s)");
}
