//! Managed stores (`nixuv serve --manage-stores` and `--manage-stores-once`) against the local
//! server of `common::kubeapi` that answers like the Kubernetes API: Namespaces listed and
//! watched, PersistentVolumeClaims and CronJobs applied server-side, CronJobs listed and deleted,
//! Leases created and replaced with resourceVersion checks, Events, StorageClasses.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::kubeapi::{claim, kubeconfig, pvc_path, start, Fake, Shared};
use crate::common::{self, Server};

const PVCS: &str = "persistentvolumeclaims";

fn cronjob_path(ns: &str) -> String {
    format!("/apis/batch/v1/namespaces/{ns}/cronjobs")
}

fn events_in(f: &Fake, ns: &str) -> Vec<Value> {
    f.objects
        .get(&format!("/apis/events.k8s.io/v1/namespaces/{ns}/events"))
        .map(|e| e.values().cloned().collect())
        .unwrap_or_default()
}

/// `nixuv serve --manage-stores-once` with `config`, against the API of kubeconfig `kc`.
async fn once(config: &std::path::Path, kc: &std::path::Path) -> (i32, String, String) {
    let out = tokio::process::Command::new(common::bin())
        .args(["serve", "--manage-stores-once", "--config"])
        .arg(config)
        .env("KUBECONFIG", kc)
        .env("NIXUV_LOG", "info")
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn wait_for_logs(s: &Server, f: &dyn Fn(&Server) -> bool, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !f(s) {
        assert!(Instant::now() < deadline, "timed out; logs: {:?}", s.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

const CONFIG: &str =
    "stores: {storageClassName: nfs-client, nixSize: 80Gi, uvSize: 20Gi, gcSchedule: '0 4 * * 0', gcMaxAge: 7d}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelled_namespaces_get_their_stores_and_lose_only_the_cronjob() {
    let fake: Shared = Arc::default();
    {
        let mut f = fake.lock().unwrap();
        f.namespace("team-a", json!({"nixuv.io/stores": "enabled"}));
        f.namespace("team-b", json!({}));
        f.namespace("team-c", json!({"nixuv.io/stores": "enabled"}));
        // An admin's own claim in team-c, made before.
        let mut admin = claim("team-c", "nixuv-nix-store", "cephfs", "Bound", 86400);
        admin["metadata"]["labels"] = json!({"owner": "platform"});
        admin["spec"]["resources"]["requests"]["storage"] = json!("500Gi");
        f.put(&pvc_path("team-c"), admin);
    }
    let addr = start(fake.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(dir.path(), addr, "admin");
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    let (code, stdout, stderr) = once(&config, &kc).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stdout, "team-a ready\nteam-c unmanaged\n");
    {
        let f = fake.lock().unwrap();
        // team-a: both claims with the configured class and sizes, and the CronJob, all labelled.
        for (name, size) in [("nixuv-nix-store", "80Gi"), ("nixuv-uv-cache", "20Gi")] {
            let pvc = f.get(&pvc_path("team-a"), name).unwrap_or_else(|| panic!("{name} in team-a"));
            assert_eq!(pvc["spec"]["storageClassName"], "nfs-client");
            assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], size);
            assert_eq!(pvc["spec"]["accessModes"], json!(["ReadWriteMany"]));
            assert_eq!(pvc["metadata"]["labels"]["app.kubernetes.io/managed-by"], "nixuv");
            assert_eq!(pvc["metadata"]["managedFields"][0]["manager"], "nixuv");
        }
        let cj = f.get(&cronjob_path("team-a"), "nixuv-gc").unwrap();
        assert_eq!(cj["spec"]["schedule"], "0 4 * * 0");
        let c = &cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["args"], json!(["gc", "--max-age", "7d", "--uv-cache-max-size", "20Gi"]));
        // It runs under the gc's account, which may list the namespace's Pods and nothing else.
        assert_eq!(cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccountName"], "nixuv-gc");
        assert!(c["env"].as_array().unwrap().iter().any(|e| e["name"] == "NIXUV_GC_PODS_NAMESPACE"
            && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"));
        let role =
            f.get("/apis/rbac.authorization.k8s.io/v1/namespaces/team-a/roles", "nixuv-gc").expect("the gc's Role");
        assert_eq!(role["rules"], json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]));
        assert!(f.get("/api/v1/namespaces/team-a/serviceaccounts", "nixuv-gc").is_some());
        let binding = f.get("/apis/rbac.authorization.k8s.io/v1/namespaces/team-a/rolebindings", "nixuv-gc").unwrap();
        assert_eq!(binding["subjects"][0]["name"], "nixuv-gc");
        // Written by server-side apply, field manager nixuv.
        let applies: Vec<_> = f.writes.iter().filter(|w| w.method == "PATCH").collect();
        assert!(!applies.is_empty());
        for w in &applies {
            assert!(w.content_type.starts_with("application/apply-patch"), "{w:?}");
            assert!(w.query.contains("fieldManager=nixuv"), "{w:?}");
        }
        // team-b: not labelled, nothing.
        assert!(!f.objects.contains_key(&pvc_path("team-b")) && !f.objects.contains_key(&cronjob_path("team-b")));
        // team-c: the admin's claim untouched and reported; the other claim created.
        let admin = f.get(&pvc_path("team-c"), "nixuv-nix-store").unwrap();
        assert_eq!(admin["spec"]["storageClassName"], "cephfs");
        assert!(admin["metadata"].get("managedFields").is_none());
        assert!(!f.writes.iter().any(|w| w.path.ends_with("team-c/persistentvolumeclaims/nixuv-nix-store")));
        assert!(f.get(&pvc_path("team-c"), "nixuv-uv-cache").is_some());
        let events = events_in(&f, "team-c");
        assert!(
            events.iter().any(|e| e["reason"] == "StoreClaimNotManaged" && e["regarding"]["name"] == "team-c"),
            "{events:?}"
        );
    }
    assert!(stderr.contains("not managed by nixuv"), "{stderr}");
    // An admin's own field on a managed claim survives the next pass (apply merges what nixuv sets).
    {
        let mut f = fake.lock().unwrap();
        let mut pvc = f.get(&pvc_path("team-a"), "nixuv-uv-cache").unwrap();
        pvc["metadata"]["annotations"] = json!({"backup.example.com/policy": "nightly"});
        f.put(&pvc_path("team-a"), pvc);
        // The label is removed from team-a.
        f.namespace("team-a", json!({}));
    }
    let (code, stdout, _) = once(&config, &kc).await;
    assert_eq!(code, 0);
    assert_eq!(stdout, "team-c unmanaged\nteam-a removed\n");
    let f = fake.lock().unwrap();
    assert!(f.get(&cronjob_path("team-a"), "nixuv-gc").is_none(), "the CronJob goes");
    for name in ["nixuv-nix-store", "nixuv-uv-cache"] {
        assert!(f.get(&pvc_path("team-a"), name).is_some(), "the claims stay: {name}");
    }
    assert_eq!(
        f.get(&pvc_path("team-a"), "nixuv-uv-cache").unwrap()["metadata"]["annotations"]["backup.example.com/policy"],
        "nightly"
    );
    assert!(!f.writes.iter().any(|w| w.method == "DELETE" && w.path.contains(PVCS)), "claims are never deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_claim_raises_an_event_and_the_metric() {
    let fake: Shared = Arc::default();
    {
        let mut f = fake.lock().unwrap();
        f.namespace("team-d", json!({"nixuv.io/stores": "enabled"}));
        f.put(
            "/apis/storage.k8s.io/v1/storageclasses",
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "no-rwx"}, "provisioner": "rancher.io/local-path", "volumeBindingMode": "Immediate"}),
        );
        // nixuv's claims from an earlier pass, Pending for ten minutes on a class without RWX.
        for name in ["nixuv-nix-store", "nixuv-uv-cache"] {
            let mut pvc = claim("team-d", name, "no-rwx", "Pending", 600);
            pvc["metadata"]["labels"] = json!({"app.kubernetes.io/managed-by": "nixuv"});
            f.put(&pvc_path("team-d"), pvc);
        }
    }
    let addr = start(fake.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(dir.path(), addr, "a");
    let server = Server::builder()
        .config("stores: {storageClassName: no-rwx, leaseDurationSeconds: 3, renewDeadlineSeconds: 2}\n")
        .env("KUBECONFIG", kc.to_str().unwrap())
        .env("POD_NAME", "nixuv-a")
        .arg("--manage-stores")
        .separate_metrics()
        .start();
    let metrics_url = format!("http://{}/metrics", server.metrics_addr.unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = reqwest::get(&metrics_url).await.unwrap().text().await.unwrap();
        if text.contains("nixuv_stores{namespace=\"team-d\",state=\"unbindable\"} 1") {
            assert!(text.contains("nixuv_stores_leader 1"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "no unbindable state in the metrics: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.log_line("is still Pending").await;
    let f = fake.lock().unwrap();
    let events = events_in(&f, "team-d");
    let pending: Vec<_> = events.iter().filter(|e| e["reason"] == "StoreClaimPending").collect();
    assert!(!pending.is_empty(), "{events:?}");
    assert!(pending[0]["note"].as_str().unwrap().contains("cannot bind"), "{events:?}");
    // The lease names this replica.
    let lease = f.get("/apis/coordination.k8s.io/v1/namespaces/nixuv-system/leases", "nixuv-stores").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "nixuv-a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_writes_and_another_takes_over_when_it_is_killed() {
    let fake: Shared = Arc::default();
    fake.lock().unwrap().namespace("team-e", json!({"nixuv.io/stores": "enabled"}));
    let addr = start(fake.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = "stores: {leaseDurationSeconds: 3, renewDeadlineSeconds: 2}\n";
    let start_replica = |token: &str| {
        Server::builder()
            .config(config)
            .env("KUBECONFIG", kubeconfig(dir.path(), addr, token).to_str().unwrap())
            .env("POD_NAME", &format!("nixuv-{token}"))
            .arg("--manage-stores")
            .start()
    };
    let replicas = [start_replica("a"), start_replica("b")];
    let wait_for = |what: &str, f: &dyn Fn(&Fake) -> bool, limit: Duration| {
        let deadline = Instant::now() + limit;
        loop {
            if f(&fake.lock().unwrap()) {
                return Instant::now();
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("team-e's stores", &|f| f.get(&cronjob_path("team-e"), "nixuv-gc").is_some(), Duration::from_secs(20));
    // Both replicas run for a while (several renewals): only the holder of the lease writes.
    std::thread::sleep(Duration::from_secs(4));
    let lease_of =
        |f: &Fake| f.get("/apis/coordination.k8s.io/v1/namespaces/nixuv-system/leases", "nixuv-stores").unwrap();
    let holder = lease_of(&fake.lock().unwrap())["spec"]["holderIdentity"].as_str().unwrap().to_string();
    let (leader, other) = if holder == "nixuv-a" { (0, 1) } else { (1, 0) };
    let token = |i: usize| format!("Bearer {}", ["a", "b"][i]);
    {
        let f = fake.lock().unwrap();
        assert!(!f.writes_by(&token(leader)).is_empty());
        assert!(
            f.writes_by(&token(other)).is_empty(),
            "the replica without the lease wrote: {:?}",
            f.writes_by(&token(other))
        );
    }
    // The webhook answers on both.
    for s in &replicas {
        assert_eq!(s.h1().get(s.url("/readyz")).send().await.unwrap().status(), 200);
    }
    // The holder is killed (SIGKILL: it releases nothing); the other takes over once the lease
    // has gone unrenewed for its duration (3 s), and reconciles a namespace labelled meanwhile.
    replicas[leader].signal("KILL");
    let killed = Instant::now();
    fake.lock().unwrap().namespace("team-f", json!({"nixuv.io/stores": "enabled"}));
    let done = wait_for(
        "the other replica to take over",
        &|f| f.writes.iter().any(|w| w.token == token(other) && w.path.contains("team-f")),
        Duration::from_secs(20),
    );
    let took = done - killed;
    assert!(took < Duration::from_secs(8), "takeover took {took:?}");
    assert!(fake.lock().unwrap().get(&pvc_path("team-f"), "nixuv-uv-cache").is_some());
    let lease = lease_of(&fake.lock().unwrap());
    assert_ne!(lease["spec"]["holderIdentity"], holder.as_str());
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    eprintln!("takeover after SIGKILL: {took:?} (lease 3 s)");
    // Someone else takes the Lease (as a replica that won a race would): the holder sees it at its
    // next renewal and stops writing; a namespace labelled afterwards is left to the new holder.
    {
        let mut f = fake.lock().unwrap();
        let mut l = lease_of(&f);
        l["spec"]["holderIdentity"] = json!("intruder");
        l["spec"]["renewTime"] = json!("2026-11-26T10:00:00.000000Z");
        f.put("/apis/coordination.k8s.io/v1/namespaces/nixuv-system/leases", l);
    }
    let stolen = Instant::now();
    let stepped_down = |s: &Server| s.logs().iter().any(|l| l.contains("stores lease lost"));
    wait_for_logs(&replicas[other], &stepped_down, Duration::from_secs(5));
    eprintln!("stepped down after {:?}", stolen.elapsed());
    fake.lock().unwrap().namespace("team-g", json!({"nixuv.io/stores": "enabled"}));
    // (Well within the 3 s after which the intruder's unrenewed Lease may be taken back.)
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !fake.lock().unwrap().writes.iter().any(|w| w.path.contains("team-g")),
        "a replica without the lease wrote"
    );
}

/// A tenant editing its own, unselected namespace 100 times costs the API nothing but the watch;
/// a selected namespace edited 100 times is reconciled in batches (about one a second), and only
/// that namespace's objects are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_churn_reconciles_only_what_changed_and_at_most_once_a_second() {
    let fake: Shared = Arc::default();
    {
        let mut f = fake.lock().unwrap();
        for i in 0..50 {
            f.namespace(&format!("team-{i:02}"), json!({"nixuv.io/stores": "enabled"}));
        }
        f.namespace("tenant", json!({}));
    }
    let addr = start(fake.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let _server = Server::builder()
        .env("KUBECONFIG", kubeconfig(dir.path(), addr, "a").to_str().unwrap())
        .env("POD_NAME", "nixuv-a")
        .arg("--manage-stores")
        .start();
    let deadline = Instant::now() + Duration::from_secs(30);
    while (0..50).any(|i| fake.lock().unwrap().get(&cronjob_path(&format!("team-{i:02}")), "nixuv-gc").is_none()) {
        assert!(Instant::now() < deadline, "the 50 namespaces were not reconciled");
        std::thread::sleep(Duration::from_millis(100));
    }
    let not_lease = |f: &Fake| f.requests.iter().filter(|(_, p)| !p.contains("/leases")).count();
    let store_writes = |f: &Fake| {
        f.writes.iter().filter(|w| w.path.contains("persistentvolumeclaims") || w.path.contains("cronjobs")).count()
    };
    // Let the first pass and the watch's initial events settle: no store write for 2 s.
    let mut last = (usize::MAX, Instant::now());
    loop {
        let n = store_writes(&fake.lock().unwrap());
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(2) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (requests, writes) = {
        let f = fake.lock().unwrap();
        (not_lease(&f), store_writes(&f))
    };
    // The tenant's churn: 100 edits of its own namespace in 5 s.
    for i in 0..100 {
        fake.lock().unwrap().namespace("tenant", json!({"edit": i.to_string()}));
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(2000));
    let (tenant_requests, tenant_writes) = {
        let f = fake.lock().unwrap();
        (not_lease(&f) - requests, store_writes(&f) - writes)
    };
    // A selected namespace's churn: 100 edits in 5 s.
    for i in 0..100 {
        fake.lock().unwrap().namespace("team-07", json!({"nixuv.io/stores": "enabled", "edit": i.to_string()}));
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(2000));
    let f = fake.lock().unwrap();
    let selected_writes: Vec<&str> = f
        .writes
        .iter()
        .filter(|w| w.path.contains("persistentvolumeclaims") || w.path.contains("cronjobs"))
        .skip(writes + tenant_writes)
        .map(|w| w.path.as_str())
        .collect();
    eprintln!(
        "namespace churn: 100 tenant edits -> {tenant_requests} API requests ({tenant_writes} store writes); 100 edits of a selected namespace -> {} store writes",
        selected_writes.len()
    );
    assert_eq!(tenant_writes, 0);
    assert!(tenant_requests <= 2, "{tenant_requests} requests for an unselected namespace's churn");
    assert!(selected_writes.iter().all(|p| p.contains("/namespaces/team-07/")), "{selected_writes:?}");
    // Three objects a reconcile; about one reconcile a second over ~7 s.
    assert!(selected_writes.len() <= 3 * 10, "{} writes", selected_writes.len());
    assert!(!selected_writes.is_empty(), "the selected namespace was reconciled");
}

/// `--manage-stores --stores-only`: the reconciler as a Deployment of its own (the webhook's
/// ServiceAccount then needs no write access): no TLS files, no webhook port; it reconciles,
/// and its probes and metrics answer on --metrics-addr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_runs_alone_without_a_webhook() {
    use std::io::BufRead;
    let fake: Shared = Arc::default();
    fake.lock().unwrap().namespace("team-s", json!({"nixuv.io/stores": "enabled"}));
    let addr = start(fake.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(common::bin())
        .args(["--log-format", "json", "serve", "--manage-stores", "--stores-only", "--metrics-addr", "127.0.0.1:0"])
        .env("KUBECONFIG", kubeconfig(dir.path(), addr, "stores"))
        .env("POD_NAME", "nixuv-stores-0")
        .env("NIXUV_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut metrics = None;
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while metrics.is_none() {
        let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("a metrics address");
        let v: Value = serde_json::from_str(&line).unwrap_or_default();
        if v["message"].as_str().is_some_and(|m| m.starts_with("metrics listening")) {
            metrics = v["addr"].as_str().map(String::from);
        }
        lines.push(line);
    }
    let metrics = metrics.unwrap();
    let wait = Instant::now() + Duration::from_secs(20);
    while fake.lock().unwrap().get(&cronjob_path("team-s"), "nixuv-gc").is_none() {
        assert!(Instant::now() < wait, "team-s not reconciled");
        std::thread::sleep(Duration::from_millis(100));
    }
    let client = reqwest::Client::new();
    assert_eq!(client.get(format!("http://{metrics}/healthz")).send().await.unwrap().status(), 200);
    let text = client.get(format!("http://{metrics}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("nixuv_stores_leader 1"), "{text}");
    // No admission endpoint anywhere.
    assert_eq!(client.post(format!("http://{metrics}/mutate")).send().await.unwrap().status(), 404);
    while let Ok(l) = rx.try_recv() {
        lines.push(l);
    }
    assert!(!lines.iter().any(|l| l.contains("\"message\":\"listening\"")), "a webhook listener: {lines:?}");
    child.kill().unwrap();
    let _ = child.wait();
}
