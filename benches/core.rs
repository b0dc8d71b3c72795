//! The core on the hot path: decode an AdmissionReview, decide, build the patch, encode the
//! response (what `/mutate` does for a Pod it has not seen, i.e. without the decision cache).
//! Pods of ~1 KB, ~5 KB (a typical controller-made Pod) and ~100 KB, with 5 system and 5 Python
//! deps; the ~5 KB Pod again as the first Pod of its declaration (a fresh config each time, so
//! the per-declaration memo is empty); and scaling in the number of containers.

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use serde_json::{json, Value};

use nixuv::config::Config;
use nixuv::inject::Injector;
use nixuv::review;

// The same allocator as the binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A review whose Pod serialises to about `target` bytes, with `containers` containers.
pub fn review_body(target: usize, containers: usize) -> Vec<u8> {
    let env: Vec<Value> =
        (0..8).map(|i| json!({"name": format!("SETTING_{i}"), "value": format!("value-{i}")})).collect();
    let mk = |n: usize| {
        json!({
            "name": if n == 0 { "main".to_string() } else { format!("worker-{n}") },
            "image": "python:3.12-slim",
            "command": ["python", "-m", "app"],
            "env": env,
            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
            "volumeMounts": [{"name": "kube-api-access-abcde", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
            "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"
        })
    };
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": "etl-7d9f8b6c5-", "namespace": "team-a",
            "labels": {"nixuv.io/inject": "true", "app": "etl", "pod-template-hash": "7d9f8b6c5"},
            "annotations": {
                "nixuv.io/system-deps": "gcc, gnumake, ffmpeg-headless, jq, python312Packages.numpy",
                "nixuv.io/python-deps": "numpy==1.26.4, pandas>=2,<3, requests[socks], rich, pyarrow>=15"
            },
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "etl-7d9f8b6c5", "uid": "2c8a7b1e-1111-2222-3333-444455556666", "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "containers": (0..containers).map(mk).collect::<Vec<_>>(),
            "volumes": [{"name": "kube-api-access-abcde", "projected": {"sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}], "defaultMode": 420}}],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default", "securityContext": {}, "schedulerName": "default-scheduler",
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]
        }
    });
    let size = serde_json::to_vec(&pod).unwrap().len();
    if size < target {
        pod["metadata"]["annotations"]["example.com/padding"] = json!("x".repeat(target - size));
    }
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "0c9a8d74-9cb7-44dd-b98e-09fd62def2f4",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team-a", "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod, "oldObject": null, "dryRun": false
        }
    }))
    .unwrap()
}

/// What `/mutate` does for a review it has not seen: the envelope and the Pod's fields read in one
/// pass, decide, patch, encode.
fn handle(body: &[u8], inj: &Injector) -> Vec<u8> {
    handle_with(body, inj, &nixuv::claims::AssumePresent)
}

fn handle_with(body: &[u8], inj: &Injector, cluster: &dyn nixuv::claims::Claims) -> Vec<u8> {
    let r = review::decode_as::<nixuv::inject::pod::PodView>(body).unwrap();
    let d = inj.decide(&r.request, cluster);
    assert!(d.patch().is_some());
    review::Prepared::new(d.to_response()).body(r.api_version, &r.request.uid)
}

/// The image store's view of the cluster: every claim there, every env a Ready image.
struct AllReady;
impl nixuv::claims::Claims for AllReady {
    fn state(&self, _: &str, _: &str) -> nixuv::claims::ClaimState {
        nixuv::claims::ClaimState::Present
    }
    fn env_image(&self, _: &str) -> Option<std::sync::Arc<str>> {
        Some(
            "registry.example/nixuv/envs@sha256:0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
                .into(),
        )
    }
}

fn bench(c: &mut Criterion) {
    let cfg = Injector::new(Config::default());
    let mut g = c.benchmark_group("mutate");
    for (name, size) in [("small", 0), ("5KB", 5 * 1024), ("100KB", 100 * 1024)] {
        let body = review_body(size, 1);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::new("pod", name), &body, |b, body| b.iter(|| handle(body, &cfg)));
    }
    let body = review_body(5 * 1024, 1);
    g.bench_with_input(BenchmarkId::new("pod", "5KB-new-declaration"), &body, |b, body| {
        b.iter_batched_ref(|| Injector::new(Config::default()), |inj| handle(body, inj), BatchSize::SmallInput)
    });
    // Image store, the env Ready: one image volume, no init container.
    let image = Injector::new(Config::from_yaml("imageStore: {repository: registry.example/nixuv/envs}").unwrap());
    g.bench_with_input(BenchmarkId::new("pod", "5KB-image"), &body, |b, body| {
        b.iter(|| handle_with(body, &image, &AllReady))
    });
    g.finish();
    // The parts of one new Pod's request, for the profile in docs/performance.md: the envelope
    // alone (what the cached path pays) and the Pod's fields read from its object.
    let mut g = c.benchmark_group("parts");
    let body = review_body(5 * 1024, 1);
    g.bench_with_input(BenchmarkId::new("decode-envelope", "5KB"), &body, |b, body| {
        b.iter(|| review::decode(body).unwrap().request.object.map(|o| o.get().len()))
    });
    let object = review::decode(&body).unwrap().request.object.unwrap().get().to_string();
    g.bench_with_input(BenchmarkId::new("read-pod", "5KB"), &object, |b, object| {
        b.iter(|| serde_json::from_str::<nixuv::inject::pod::PodView>(object).unwrap().containers().len())
    });
    g.finish();
    let mut g = c.benchmark_group("containers");
    for n in [1, 4, 16, 64] {
        let body = review_body(0, n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &body, |b, body| b.iter(|| handle(body, &cfg)));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
