//! deploy/: every kustomization renders with `kubectl kustomize`, every document passes strict
//! schema validation offline (`kubernetes-validate`), the webhook configuration says what the
//! docs promise, the webhook's Pod passes PodSecurity `restricted`, and every example previews
//! to its golden output. No cluster is involved: what only a cluster can show is in docs/install.md.

use std::path::Path;
use std::process::Command;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::Value;

use crate::common;

const KUSTOMIZATIONS: &[&str] = &[
    "base",
    "overlays/cert-manager",
    "overlays/self-managed",
    "overlays/stores-example",
    "overlays/kind-stores",
    "overlays/eks-efs-stores",
    "overlays/nfs-stores",
    "overlays/gke-filestore-stores",
    "overlays/managed-stores",
    "overlays/cluster-example",
    "overlays/image-store-example",
];
const KUBERNETES_VERSION: &str = "1.34.0";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn render(k: &str) -> (String, Vec<Value>) {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(root().join("deploy").join(k))
        .output()
        .expect("kubectl on PATH (make tools)");
    assert!(out.status.success(), "kubectl kustomize {k}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let docs = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect();
    (text, docs)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn every_kustomization_renders_and_validates_strictly() {
    let dir = tempfile::tempdir().unwrap();
    for k in KUSTOMIZATIONS {
        let (text, docs) = render(k);
        assert!(!docs.is_empty(), "{k}");
        let file = dir.path().join(format!("{}.yaml", k.replace('/', "-")));
        std::fs::write(&file, &text).unwrap();
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "-k", KUBERNETES_VERSION])
            .arg(&file)
            .output()
            .expect("kubernetes-validate on PATH (make tools)");
        let report = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{k}: {report}");
        // Every non-CRD document was checked against a schema; CRDs (cert-manager) are checked below.
        let passed = report.lines().filter(|l| l.contains("passed")).count();
        let crd = |d: &&Value| {
            let v = d["apiVersion"].as_str().unwrap_or("");
            v.starts_with("cert-manager.io/") || v.starts_with("monitoring.coreos.com/")
        };
        let crds = docs.iter().filter(crd).count();
        assert_eq!(passed + crds, docs.len(), "{k}: {report}");
        // Every object says what it belongs to.
        for d in &docs {
            let labels = &d["metadata"]["labels"];
            assert_eq!(labels["app.kubernetes.io/name"], "nixuv", "{k}: {} {}", d["kind"], d["metadata"]["name"]);
            assert_eq!(labels["app.kubernetes.io/part-of"], "nixuv", "{k}: {} {}", d["kind"], d["metadata"]["name"]);
        }
    }
}

#[test]
fn webhook_configuration_selects_only_opted_in_pods() {
    for k in ["overlays/cert-manager", "overlays/self-managed"] {
        let (_, docs) = render(k);
        let mwc: MutatingWebhookConfiguration =
            serde_json::from_value(find(&docs, "MutatingWebhookConfiguration", "nixuv").clone()).unwrap();
        let hooks = mwc.webhooks.unwrap();
        assert_eq!(hooks.len(), 1);
        let w = &hooks[0];
        assert_eq!(w.admission_review_versions, ["v1", "v1beta1"]);
        assert_eq!(w.side_effects, "None");
        assert_eq!(w.reinvocation_policy.as_deref(), Some("IfNeeded"));
        assert_eq!(w.failure_policy.as_deref(), Some("Fail"));
        assert!(w.timeout_seconds.is_some_and(|t| (1..=10).contains(&t)), "short timeout");
        let rules = w.rules.as_ref().unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].operations.as_deref(), Some(&["CREATE".to_string()][..]));
        assert_eq!(rules[0].api_groups.as_deref(), Some(&["".to_string()][..]));
        assert_eq!(rules[0].api_versions.as_deref(), Some(&["v1".to_string()][..]));
        assert_eq!(rules[0].resources.as_deref(), Some(&["pods".to_string()][..]));
        let obj = w.object_selector.as_ref().unwrap().match_labels.as_ref().unwrap();
        assert_eq!(obj.get("nixuv.io/inject").map(String::as_str), Some("true"));
        let exprs = w.namespace_selector.as_ref().unwrap().match_expressions.as_ref().unwrap();
        let by_key = |k: &str| exprs.iter().find(|e| e.key == k).unwrap_or_else(|| panic!("no {k} expression"));
        let inject = by_key("nixuv.io/inject");
        assert_eq!(
            (inject.operator.as_str(), inject.values.as_deref()),
            ("NotIn", Some(&["disabled".to_string()][..]))
        );
        let names = by_key("kubernetes.io/metadata.name");
        assert_eq!(names.operator, "NotIn");
        for ns in ["kube-system", "kube-public"] {
            assert!(names.values.as_ref().unwrap().iter().any(|v| v == ns), "{k}: {ns} not excluded");
        }
        let svc = w.client_config.service.as_ref().unwrap();
        assert_eq!(
            (svc.name.as_str(), svc.namespace.as_str(), svc.path.as_deref(), svc.port),
            ("nixuv", "nixuv-system", Some("/mutate"), Some(443))
        );
        // The Service routes 443 to the container's https port.
        let service = find(&docs, "Service", "nixuv");
        assert_eq!(service["spec"]["ports"][0]["port"], 443);
        assert_eq!(service["spec"]["ports"][0]["targetPort"], "https");
        // The config excludes the namespace nixuv runs in (from the Pod's own namespace).
        let cfg_text = find(&docs, "ConfigMap", "nixuv-config")["data"]["config.yaml"].as_str().unwrap();
        let cfg = nixuv::config::Config::from_yaml(cfg_text).unwrap();
        assert!(cfg.excluded_namespaces.iter().any(|n| n == "nixuv-system"));
        assert!(cfg.file.namespace.is_none(), "{k}: the namespace comes from POD_NAMESPACE");
        match k {
            "overlays/cert-manager" => {
                assert_eq!(
                    mwc.metadata.annotations.unwrap()["cert-manager.io/inject-ca-from"],
                    "nixuv-system/nixuv-serving"
                );
                let cert = find(&docs, "Certificate", "nixuv-serving");
                assert_eq!(cert["spec"]["secretName"], "nixuv-tls");
                assert_eq!(cert["spec"]["privateKey"]["algorithm"], "ECDSA");
                let dns: Vec<&str> =
                    cert["spec"]["dnsNames"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
                assert!(dns.contains(&"nixuv.nixuv-system.svc"));
                assert_eq!(cert["spec"]["issuerRef"]["name"], "nixuv-ca");
                assert_eq!(find(&docs, "Issuer", "nixuv-ca")["spec"]["ca"]["secretName"], "nixuv-ca");
                assert_eq!(find(&docs, "Certificate", "nixuv-ca")["spec"]["isCA"], true);
            }
            _ => {
                let c = &find(&docs, "Deployment", "nixuv")["spec"]["template"]["spec"]["containers"][0];
                let args: Vec<&str> = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
                assert!(args.contains(&"--ca-bundle-file=/tls/ca.crt"), "{args:?}");
                assert!(c["env"]
                    .as_array()
                    .unwrap()
                    .contains(&serde_json::json!({"name": "NIXUV_MANAGE_CA_BUNDLE", "value": "nixuv"})));
                let role = find(&docs, "ClusterRole", "nixuv-ca-bundle");
                assert_eq!(
                    role["rules"][0]["resourceNames"],
                    serde_json::json!(["nixuv"]),
                    "patch only its own configuration"
                );
                assert_eq!(role["rules"][0]["verbs"], serde_json::json!(["get", "patch"]));
            }
        }
    }
}

#[test]
fn webhook_deployment_is_restricted_and_highly_available() {
    let (_, docs) = render("base");
    let dep: Deployment = serde_json::from_value(find(&docs, "Deployment", "nixuv").clone()).unwrap();
    let spec = dep.spec.unwrap();
    assert!(spec.replicas.unwrap() >= 2);
    let tpl = spec.template;
    let pod = Pod { metadata: tpl.metadata.unwrap_or_default(), spec: tpl.spec.clone(), status: None };
    let pod_spec = tpl.spec.unwrap();
    for c in &pod_spec.containers {
        let v = common::pss::restricted_violations(&pod, c);
        assert!(v.is_empty(), "{}: {v:?}", c.name);
        let res = c.resources.as_ref().unwrap();
        assert!(res.requests.is_some() && res.limits.is_some(), "requests and limits");
        assert_eq!(c.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(), Some("/readyz"));
        assert_eq!(c.liveness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(), Some("/healthz"));
    }
    assert!(pod_spec.topology_spread_constraints.is_some_and(|t| !t.is_empty()));
    let pdb = find(&docs, "PodDisruptionBudget", "nixuv");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    // Least privilege: the base ClusterRole only reads PVCs.
    let role = find(&docs, "ClusterRole", "nixuv");
    assert_eq!(role["rules"].as_array().unwrap().len(), 2);
    assert_eq!(role["rules"][0]["resources"], serde_json::json!(["persistentvolumeclaims"]));
    assert_eq!(role["rules"][0]["verbs"], serde_json::json!(["get", "list", "watch"]));
    assert_eq!(role["rules"][1]["resources"], serde_json::json!(["storageclasses"]));
    assert_eq!(role["rules"][1]["verbs"], serde_json::json!(["list", "watch"]));
    let ns = find(&docs, "Namespace", "nixuv-system");
    assert_eq!(ns["metadata"]["labels"]["nixuv.io/inject"], "disabled");
    assert_eq!(ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted");
}

#[test]
fn stores_component_makes_rwx_claims_in_the_namespace() {
    let (_, docs) = render("overlays/stores-example");
    for name in ["nixuv-nix-store", "nixuv-uv-cache"] {
        let pvc = find(&docs, "PersistentVolumeClaim", name);
        assert_eq!(pvc["metadata"]["namespace"], "team-a");
        assert_eq!(pvc["spec"]["accessModes"], serde_json::json!(["ReadWriteMany"]));
        assert_eq!(pvc["spec"]["storageClassName"], "nfs-client");
    }
    // kind: ReadWriteOnce on its default class, which local-path can provide (one node).
    let (_, docs) = render("overlays/kind-stores");
    for name in ["nixuv-nix-store", "nixuv-uv-cache"] {
        let pvc = find(&docs, "PersistentVolumeClaim", name);
        assert_eq!(pvc["metadata"]["namespace"], "team-a");
        assert_eq!(pvc["spec"]["accessModes"], serde_json::json!(["ReadWriteOnce"]));
        assert_eq!(pvc["spec"]["storageClassName"], "standard");
    }
    let cfg = nixuv::config::Config::default();
    assert_eq!(cfg.file.storage.nix_claim, "nixuv-nix-store", "component names match the config defaults");
    assert_eq!(cfg.file.storage.uv_claim, "nixuv-uv-cache");
}

#[test]
fn examples_preview_to_their_golden_output() {
    for ex in ["pod.yaml", "job.yaml", "deployment.yaml", "workflow.yaml"] {
        let path = root().join("deploy/examples").join(ex);
        let out = Command::new(common::bin()).args(["preview", "-f"]).arg(&path).output().unwrap();
        assert!(out.status.success(), "{ex}: {}", String::from_utf8_lossy(&out.stderr));
        let golden = root().join("deploy/examples/golden").join(format!("{ex}.out"));
        let got = String::from_utf8(out.stdout).unwrap();
        if std::env::var_os("NIXUV_BLESS").is_some() {
            std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
            std::fs::write(&golden, &got).unwrap();
            continue;
        }
        assert_eq!(got, std::fs::read_to_string(&golden).unwrap(), "{ex}: differs from {}", golden.display());
    }
}

fn named<'a>(docs: &'a [Value], kind: &str) -> impl Iterator<Item = &'a Value> + 'a {
    let kind = kind.to_string();
    docs.iter().filter(move |d| d["kind"] == kind.as_str())
}

fn exists(docs: &[Value], kind: &str, name: &str, ns: Option<&str>) -> bool {
    named(docs, kind).any(|d| d["metadata"]["name"] == name && ns.is_none_or(|n| d["metadata"]["namespace"] == n))
}

/// Every reference between the rendered objects points at an object of the output: what a
/// webhook needs to be reachable, authorised and trusted, whatever namespace and prefix it got.
fn check_references(k: &str, docs: &[Value]) {
    let dep = named(docs, "Deployment").next().unwrap_or_else(|| panic!("{k}: no Deployment"));
    let ns = dep["metadata"]["namespace"].as_str().unwrap();
    let namespace = named(docs, "Namespace").find(|d| d["metadata"]["name"] == ns);
    let namespace = namespace.unwrap_or_else(|| panic!("{k}: Namespace {ns} not in the output"));
    assert_eq!(namespace["metadata"]["labels"]["nixuv.io/inject"], "disabled", "{k}: own namespace excluded by label");
    for d in docs.iter().filter(|d| d["metadata"]["namespace"].is_string()) {
        assert_eq!(d["metadata"]["namespace"], ns, "{k}: {} {} elsewhere", d["kind"], d["metadata"]["name"]);
    }
    for crb in named(docs, "ClusterRoleBinding") {
        let role = crb["roleRef"]["name"].as_str().unwrap();
        assert!(exists(docs, "ClusterRole", role, None), "{k}: roleRef {role}");
        for s in crb["subjects"].as_array().unwrap() {
            let (name, sns) = (s["name"].as_str().unwrap(), s["namespace"].as_str().unwrap());
            assert!(exists(docs, "ServiceAccount", name, Some(sns)), "{k}: subject {sns}/{name}");
        }
    }
    let tpl = &dep["spec"]["template"]["spec"];
    let pc = tpl["priorityClassName"].as_str().unwrap();
    assert!(exists(docs, "PriorityClass", pc, None), "{k}: priorityClassName {pc}");
    let sa = tpl["serviceAccountName"].as_str().unwrap();
    assert!(exists(docs, "ServiceAccount", sa, Some(ns)), "{k}: serviceAccountName {sa}");
    let certs: Vec<&Value> = named(docs, "Certificate").collect();
    for v in tpl["volumes"].as_array().unwrap() {
        if let Some(cm) = v["configMap"]["name"].as_str() {
            assert!(exists(docs, "ConfigMap", cm, Some(ns)), "{k}: configMap volume {cm}");
        }
        if let Some(secret) = v["secret"]["secretName"].as_str() {
            // Made by cert-manager from a Certificate, or by hand (self-managed, docs/install.md).
            let by_cert = certs.iter().any(|c| c["spec"]["secretName"] == secret);
            assert!(by_cert || (certs.is_empty() && secret == "nixuv-tls"), "{k}: secret {secret}");
        }
    }
    let c = &tpl["containers"][0];
    for e in c["env"].as_array().unwrap() {
        if let Some(cm) = e["valueFrom"]["configMapKeyRef"]["name"].as_str() {
            let key = e["valueFrom"]["configMapKeyRef"]["key"].as_str().unwrap();
            let m =
                named(docs, "ConfigMap").find(|d| d["metadata"]["name"] == cm).unwrap_or_else(|| panic!("{k}: {cm}"));
            assert!(m["data"][key].is_string(), "{k}: configMapKeyRef {cm}/{key}");
        }
        if e["name"] == "NIXUV_MANAGE_CA_BUNDLE" {
            let mwc = e["value"].as_str().unwrap();
            assert!(exists(docs, "MutatingWebhookConfiguration", mwc, None), "{k}: --manage-ca-bundle {mwc}");
        }
    }
    for role in named(docs, "ClusterRole") {
        for rule in role["rules"].as_array().unwrap() {
            if rule["resources"] == serde_json::json!(["mutatingwebhookconfigurations"]) {
                for n in rule["resourceNames"].as_array().unwrap() {
                    assert!(
                        exists(docs, "MutatingWebhookConfiguration", n.as_str().unwrap(), None),
                        "{k}: resourceNames {n}"
                    );
                }
            }
        }
    }
    let services: Vec<(String, String)> = named(docs, "Service")
        .map(|s| {
            (
                s["metadata"]["name"].as_str().unwrap().to_string(),
                s["metadata"]["namespace"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for mwc in named(docs, "MutatingWebhookConfiguration") {
        for w in mwc["webhooks"].as_array().unwrap() {
            let svc = &w["clientConfig"]["service"];
            let (name, sns) = (svc["name"].as_str().unwrap(), svc["namespace"].as_str().unwrap());
            assert!(exists(docs, "Service", name, Some(sns)), "{k}: webhook service {sns}/{name}");
        }
        if let Some(from) = mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].as_str() {
            let (cns, cname) = from.split_once('/').unwrap();
            assert!(exists(docs, "Certificate", cname, Some(cns)), "{k}: inject-ca-from {from}");
        }
    }
    for cert in &certs {
        let issuer = cert["spec"]["issuerRef"]["name"].as_str().unwrap();
        assert!(exists(docs, "Issuer", issuer, Some(ns)), "{k}: issuerRef {issuer}");
        for dns in cert["spec"]["dnsNames"].as_array().into_iter().flatten() {
            let dns = dns.as_str().unwrap();
            let ok = services
                .iter()
                .any(|(n, sns)| dns == format!("{n}.{sns}.svc") || dns == format!("{n}.{sns}.svc.cluster.local"));
            assert!(ok, "{k}: dnsName {dns} names no Service of the output");
        }
    }
    for issuer in named(docs, "Issuer") {
        if let Some(secret) = issuer["spec"]["ca"]["secretName"].as_str() {
            assert!(certs.iter().any(|c| c["spec"]["secretName"] == secret), "{k}: CA issuer secret {secret}");
        }
    }
}

#[test]
fn every_reference_follows_a_new_namespace_and_prefix() {
    for k in [
        "overlays/self-managed",
        "overlays/cert-manager",
        "overlays/relocated-self-managed",
        "overlays/relocated-cert-manager",
    ] {
        let (text, docs) = render(k);
        check_references(k, &docs);
        if k.contains("relocated") {
            assert!(!text.contains("nixuv-system"), "{k}: the old namespace is still named");
            let dep = named(&docs, "Deployment").next().unwrap();
            assert_eq!(dep["metadata"]["namespace"], "platform-webhooks");
            assert_eq!(dep["metadata"]["name"], "acme-nixuv");
        }
    }
}

/// A kustomization in a temporary directory on top of `deploy/<base>` (by relative path, as
/// kustomize requires), rendered.
fn render_on_top(base: &str, extra: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let ups = "../".repeat(dir.path().components().count() - 1);
    let target = format!("{ups}{}", root().join("deploy").join(base).display().to_string().trim_start_matches('/'));
    std::fs::write(dir.path().join("kustomization.yaml"), format!("resources: [{target}]\n{extra}")).unwrap();
    let out = Command::new("kubectl").arg("kustomize").arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_yaml_ng::Deserializer::from_str(&String::from_utf8(out.stdout).unwrap())
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn one_images_entry_per_image_moves_every_image_nixuv_uses() {
    let knob = "images:\n  - {name: ghcr.io/nixuv/nixuv, newTag: 9.9.9}\n  - {name: ghcr.io/nixuv/nixuv-init, newTag: 9.9.9}\n";
    for base in ["overlays/self-managed", "overlays/cert-manager", "overlays/relocated-cert-manager"] {
        let docs = render_on_top(base, knob);
        let dep = named(&docs, "Deployment").next().unwrap();
        let c = &dep["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], "ghcr.io/nixuv/nixuv:9.9.9", "{base}");
        let cm = named(&docs, "ConfigMap").find(|d| d["data"]["initImage"].is_string()).unwrap();
        assert_eq!(cm["data"]["initImage"], "ghcr.io/nixuv/nixuv-init:9.9.9", "{base}");
        // The webhook as deployed (its env from that ConfigMap, its config file) injects that image.
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.yaml");
        std::fs::write(&cfg, cm["data"]["config.yaml"].as_str().unwrap()).unwrap();
        let pod = dir.path().join("pod.json");
        std::fs::write(&pod, r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","labels":{"nixuv.io/inject":"true"},"annotations":{"nixuv.io/system-deps":"gcc"}},"spec":{"containers":[{"name":"a","image":"x"}]}}"#).unwrap();
        let out = Command::new(common::bin())
            .args(["preview", "-o", "json", "--config"])
            .arg(&cfg)
            .arg("-f")
            .arg(&pod)
            .env("NIXUV_INIT_IMAGE", cm["data"]["initImage"].as_str().unwrap())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mutated: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(mutated["spec"]["initContainers"][0]["image"], "ghcr.io/nixuv/nixuv-init:9.9.9", "{base}");
        let env = c["env"].as_array().unwrap();
        assert!(env
            .iter()
            .any(|e| e["name"] == "NIXUV_INIT_IMAGE" && e["valueFrom"]["configMapKeyRef"]["key"] == "initImage"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_components_fit_the_webhook() {
    let (_, docs) = render("overlays/cluster-example");
    let dep = find(&docs, "Deployment", "nixuv");
    let tpl_labels = &dep["spec"]["template"]["metadata"]["labels"];
    let matches = |sel: &Value| sel.as_object().unwrap().iter().all(|(k, v)| &tpl_labels[k] == v);
    let ports: Vec<(String, i64)> = dep["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_string(), p["containerPort"].as_i64().unwrap()))
        .collect();
    // The ServiceMonitor scrapes the Service's metrics port.
    let sm = find(&docs, "ServiceMonitor", "nixuv");
    let svc = find(&docs, "Service", "nixuv");
    let svc_labels = &svc["metadata"]["labels"];
    assert!(sm["spec"]["selector"]["matchLabels"].as_object().unwrap().iter().all(|(k, v)| &svc_labels[k] == v));
    let port = sm["spec"]["endpoints"][0]["port"].as_str().unwrap();
    assert!(svc["spec"]["ports"].as_array().unwrap().iter().any(|p| p["name"] == port));
    // The NetworkPolicy selects the webhook's Pods and opens exactly its two ports.
    let np = find(&docs, "NetworkPolicy", "nixuv");
    assert!(matches(&np["spec"]["podSelector"]["matchLabels"]));
    let open: Vec<i64> =
        np["spec"]["ingress"].as_array().unwrap().iter().map(|r| r["ports"][0]["port"].as_i64().unwrap()).collect();
    let mut want: Vec<i64> = ports.iter().map(|(_, p)| *p).collect();
    want.sort();
    let mut open_sorted = open.clone();
    open_sorted.sort();
    assert_eq!(open_sorted, want);
    // Every nixuv metric the alerts use is one the running binary exports.
    // A server with a sample in every family: an admission, a config reload (failed) and a
    // certificate reload.
    let server = common::Server::builder()
        .separate_metrics()
        .config("maxDeps: 8\n")
        .arg("--reload-interval")
        .arg("100ms")
        .start();
    let review = common::fixture("reviews/bare-pod.json");
    assert_eq!(server.h1().post(server.url("/mutate")).json(&review).send().await.unwrap().status(), 200);
    std::fs::write(server.dir.path().join("config.yaml"), "maxDeps: 0\n").unwrap();
    common::make_certs(server.dir.path());
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let metrics =
        reqwest::get(format!("http://{}/metrics", server.metrics_addr.unwrap())).await.unwrap().text().await.unwrap();
    let rules = find(&docs, "PrometheusRule", "nixuv");
    let mut alerts = Vec::new();
    for r in rules["spec"]["groups"][0]["rules"].as_array().unwrap() {
        alerts.push(r["alert"].as_str().unwrap().to_string());
        let expr = r["expr"].as_str().unwrap();
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("nixuv_")) {
            let family = word.trim_end_matches("_bucket").trim_end_matches("_total");
            // `nixuv_stores` has samples only with --manage-stores: its export is checked by
            // stores::a_pending_claim_raises_an_event_and_the_metric.
            if family == "nixuv_stores" {
                continue;
            }
            assert!(metrics.contains(&format!("# TYPE {family} ")), "{}: {word} is not exported", r["alert"]);
        }
    }
    for a in [
        "NixuvWebhookDown",
        "NixuvWebhookNotReady",
        "NixuvAdmissionErrors",
        "NixuvDenialsSpiking",
        "NixuvLatencyNearTimeout",
        "NixuvConfigReloadFailing",
        "NixuvCertificateExpiringSoon",
        "NixuvStoresNeedAttention",
    ] {
        assert!(alerts.iter().any(|x| x == a), "{a}");
    }
}

#[test]
fn gc_component_is_restricted_and_mounts_the_stores() {
    let (_, docs) = render("overlays/stores-example");
    let cj = find(&docs, "CronJob", "nixuv-gc");
    assert_eq!(cj["metadata"]["namespace"], "team-a");
    assert_eq!(cj["spec"]["concurrencyPolicy"], "Forbid");
    let tpl = &cj["spec"]["jobTemplate"]["spec"]["template"];
    let pod = Pod {
        metadata: serde_json::from_value(tpl["metadata"].clone()).unwrap(),
        spec: Some(serde_json::from_value(tpl["spec"].clone()).unwrap()),
        status: None,
    };
    for c in &pod.spec.as_ref().unwrap().containers {
        let v = common::pss::restricted_violations(&pod, c);
        assert!(v.is_empty(), "{}: {v:?}", c.name);
        assert_eq!(c.name, "nixuv-gc");
        assert_eq!(c.args.as_deref().unwrap()[0], "gc");
    }
    let cfg = nixuv::config::Config::default();
    let claims: Vec<&str> = tpl["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["persistentVolumeClaim"]["claimName"].as_str())
        .collect();
    assert_eq!(claims, [cfg.file.storage.nix_claim.as_str(), cfg.file.storage.uv_claim.as_str()]);
    for claim in claims {
        assert!(exists(&docs, "PersistentVolumeClaim", claim, Some("team-a")));
    }
}

/// Evaluates a ValidatingAdmissionPolicy's matchConditions, variables and validations (CEL, with
/// the `cel` crate, as the API server would) on one request: `None` if it does not match,
/// `Some(Ok(()))` if admitted, `Some(Err(message))` if refused.
fn vap(policy: &Value, request: &Value, object: &Value, old: &Value) -> Option<Result<(), String>> {
    use std::collections::HashMap;
    let mut ctx = cel::Context::default();
    ctx.add_variable_from_value("request", cel::to_value(request).unwrap());
    ctx.add_variable_from_value("object", cel::to_value(object).unwrap());
    ctx.add_variable_from_value("oldObject", cel::to_value(old).unwrap());
    let eval = |ctx: &cel::Context, expr: &str| {
        cel::Program::compile(expr)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
            .execute(ctx)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
    };
    for m in policy["spec"]["matchConditions"].as_array().into_iter().flatten() {
        if eval(&ctx, m["expression"].as_str().unwrap()) != cel::Value::Bool(true) {
            return None;
        }
    }
    let mut vars: HashMap<String, cel::Value> = HashMap::new();
    for v in policy["spec"]["variables"].as_array().into_iter().flatten() {
        ctx.add_variable_from_value("variables", vars.clone());
        let value = eval(&ctx, v["expression"].as_str().unwrap());
        vars.insert(v["name"].as_str().unwrap().to_string(), value);
    }
    ctx.add_variable_from_value("variables", vars);
    for check in policy["spec"]["validations"].as_array().unwrap() {
        if eval(&ctx, check["expression"].as_str().unwrap()) != cel::Value::Bool(true) {
            let msg = eval(&ctx, check["messageExpression"].as_str().unwrap());
            let cel::Value::String(s) = msg else { panic!("{msg:?}") };
            return Some(Err(s.to_string()));
        }
    }
    Some(Ok(()))
}

#[test]
fn the_managed_stores_overlay_runs_the_reconciler_with_only_the_rights_it_uses() {
    let (_, docs) = render("overlays/managed-stores");
    // The webhook: no reconciler, and its ServiceAccount bound to nothing that writes.
    let webhook: Deployment = serde_json::from_value(find(&docs, "Deployment", "nixuv").clone()).unwrap();
    let spec = webhook.spec.unwrap().template.spec.unwrap();
    assert!(!spec.containers[0].args.as_ref().unwrap().iter().any(|a| a == "--manage-stores"));
    assert_eq!(spec.service_account_name.as_deref(), Some("nixuv"));
    // The reconciler: a Deployment of its own, under its own ServiceAccount.
    let stores: Deployment = serde_json::from_value(find(&docs, "Deployment", "nixuv-stores").clone()).unwrap();
    let spec = stores.spec.unwrap().template.spec.unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some("nixuv-stores"));
    let c = &spec.containers[0];
    let args = c.args.as_ref().unwrap();
    assert!(args.iter().any(|a| a == "--manage-stores") && args.iter().any(|a| a == "--stores-only"), "{args:?}");
    assert!(c.env.as_ref().unwrap().iter().any(|e| e.name == "POD_NAME"), "the Lease holder is the Pod's name");
    assert!(find(&docs, "ServiceAccount", "nixuv-stores").is_object());
    for binding in ["ClusterRoleBinding", "RoleBinding"] {
        let b = find(&docs, binding, if binding == "RoleBinding" { "nixuv-stores-lease" } else { "nixuv-stores" });
        assert_eq!(
            b["subjects"],
            serde_json::json!([{"kind": "ServiceAccount", "name": "nixuv-stores", "namespace": "nixuv-system"}])
        );
    }
    let cm = find(&docs, "ConfigMap", "nixuv-config");
    let cfg = nixuv::config::Config::from_yaml(cm["data"]["config.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(cfg.file.stores.namespace_label, "nixuv.io/stores=enabled");
    let rules = |kind: &str, name: &str| -> Vec<(String, Vec<String>)> {
        rules_of(&docs, kind, name).into_iter().map(|(_, res, verbs)| (res, verbs)).collect()
    };
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        rules("ClusterRole", "nixuv-stores"),
        [
            ("namespaces".to_string(), v(&["list", "watch"])),
            ("persistentvolumeclaims".to_string(), v(&["get", "create", "patch"])),
            ("cronjobs".to_string(), v(&["get", "list", "create", "patch", "delete"])),
            ("storageclasses".to_string(), v(&["get"])),
            ("serviceaccounts".to_string(), v(&["get", "create", "patch"])),
            ("roles".to_string(), v(&["get", "create", "patch"])),
            ("rolebindings".to_string(), v(&["get", "create", "patch"])),
            ("pods".to_string(), v(&["list"])),
            ("events".to_string(), v(&["create", "patch"])),
        ]
    );
    let lease = find(&docs, "Role", "nixuv-stores-lease");
    assert_eq!(lease["metadata"]["namespace"], "nixuv-system");
    assert_eq!(lease["rules"][0]["resourceNames"], serde_json::json!(["nixuv-stores"]));
    // Not in the base: without the overlay nixuv cannot touch claims or namespaces.
    let (_, base) = render("base");
    assert!(!base.iter().any(|d| d["metadata"]["name"] == "nixuv-stores"));

    // What the reconciler writes, whatever its RBAC: its own objects as it makes them, nothing else.
    let policy = find(&docs, "ValidatingAdmissionPolicy", "nixuv-stores-writes");
    let binding = find(&docs, "ValidatingAdmissionPolicyBinding", "nixuv-stores-writes");
    assert_eq!(binding["spec"]["policyName"], "nixuv-stores-writes");
    let by = |user: &str, op: &str, resource: &str, name: &str| {
        serde_json::json!({"userInfo": {"username": user}, "operation": op, "name": name,
            "resource": {"group": "", "version": "v1", "resource": resource}})
    };
    let sa = "system:serviceaccount:nixuv-system:nixuv-stores";
    let claims = nixuv::managed::claims("team-a", &cfg);
    let gc = nixuv::managed::gc_cronjob("team-a", &cfg);
    for (name, claim) in &claims {
        assert_eq!(vap(policy, &by(sa, "CREATE", "persistentvolumeclaims", name), claim, &Value::Null), Some(Ok(())));
        let refused = vap(policy, &by(sa, "DELETE", "persistentvolumeclaims", name), &Value::Null, claim);
        assert!(matches!(refused, Some(Err(_))), "claims are never deleted: {refused:?}");
    }
    assert_eq!(vap(policy, &by(sa, "CREATE", "cronjobs", "nixuv-gc"), &gc, &Value::Null), Some(Ok(())));
    // The gc's account: exactly nixuv's, or refused (a Role granting more, a binding to another
    // subject, a CronJob under another account).
    let [account, role, binding] = nixuv::managed::gc_account("team-a");
    for (resource, obj) in [("serviceaccounts", &account), ("roles", &role), ("rolebindings", &binding)] {
        assert_eq!(vap(policy, &by(sa, "CREATE", resource, "nixuv-gc"), obj, &Value::Null), Some(Ok(())), "{resource}");
    }
    let mut greedy = role.clone();
    greedy["rules"][0]["verbs"] = serde_json::json!(["list", "delete"]);
    let mut secrets = role.clone();
    secrets["rules"][0]["resources"] = serde_json::json!(["secrets"]);
    let mut elsewhere = binding.clone();
    elsewhere["subjects"][0]["name"] = serde_json::json!("default");
    let mut admin = binding.clone();
    admin["roleRef"] =
        serde_json::json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"});
    let mut other_sa = gc.clone();
    other_sa["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccountName"] = serde_json::json!("default");
    for (what, resource, obj) in [
        ("a Role that may delete Pods", "roles", &greedy),
        ("a Role on Secrets", "roles", &secrets),
        ("a binding to another account", "rolebindings", &elsewhere),
        ("a binding to the admin ClusterRole", "rolebindings", &admin),
        ("the gc CronJob under another account", "cronjobs", &other_sa),
    ] {
        let got =
            vap(policy, &by(sa, "CREATE", resource, obj["metadata"]["name"].as_str().unwrap()), obj, &Value::Null);
        assert!(matches!(got, Some(Err(_))), "{what}: {got:?}");
    }
    assert_eq!(vap(policy, &by(sa, "DELETE", "cronjobs", "nixuv-gc"), &Value::Null, &gc), Some(Ok(())));
    type Edit = fn(&mut Value);
    let cases: &[(&str, &str, Edit)] = &[
        ("another claim", "persistentvolumeclaims", |o| o["metadata"]["name"] = serde_json::json!("data")),
        ("an unlabelled claim", "persistentvolumeclaims", |o| o["metadata"]["labels"] = serde_json::json!({})),
        ("another CronJob", "cronjobs", |o| o["metadata"]["name"] = serde_json::json!("miner")),
        ("the gc CronJob running a shell", "cronjobs", |o| {
            o["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"] =
                serde_json::json!(["sh", "-c", "x"])
        }),
        ("the gc CronJob with another image", "cronjobs", |o| {
            o["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"] =
                serde_json::json!("evil/miner")
        }),
        ("the gc CronJob with a second container", "cronjobs", |o| {
            let c = o["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0].clone();
            o["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"].as_array_mut().unwrap().push(c);
        }),
    ];
    for (what, resource, edit) in cases {
        let mut obj = if *resource == "cronjobs" { gc.clone() } else { claims[0].1.clone() };
        edit(&mut obj);
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        let got = vap(policy, &by(sa, "CREATE", resource, &name), &obj, &Value::Null);
        assert!(matches!(got, Some(Err(ref m)) if m.contains("may write only the store claims")), "{what}: {got:?}");
    }
    // Anyone else is not this policy's business.
    assert_eq!(vap(policy, &by("alice", "CREATE", "persistentvolumeclaims", "data"), &Value::Null, &Value::Null), None);
}

/// The full path of a program on this process's PATH.
fn which(program: &str) -> std::path::PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} on PATH"))
}

/// What `make e2e` needs a cluster for cannot run here; what it applies and how it starts can:
/// the kind config names node images with image volumes (1.35 or newer), the Pods it creates are
/// valid and get what the run expects from the webhook's own decision (injected, or not for the
/// typo, with the hint `nixuv check` gives), and without a Docker engine it says so and fails.
#[test]
fn the_e2e_run_applies_valid_manifests_and_says_what_it_needs() {
    let kind: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(root().join("deploy/e2e/kind.yaml")).unwrap()).unwrap();
    assert_eq!(kind["kind"], "Cluster");
    for n in kind["nodes"].as_array().unwrap() {
        let image = n["image"].as_str().unwrap();
        let minor: u32 = image.split(":v1.").nth(1).and_then(|r| r.split('.').next()).unwrap().parse().unwrap();
        assert!(minor >= 35, "{image}: image volumes are on by default from 1.35");
    }
    let pods = root().join("deploy/e2e/pods.yaml");
    let out =
        Command::new("kubernetes-validate").args(["--strict", "-k", KUBERNETES_VERSION]).arg(&pods).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let out = Command::new(common::bin()).args(["preview", "-o", "json", "-f"]).arg(&pods).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let by_name =
        |n: &str| list["items"].as_array().unwrap().iter().find(|o| o["metadata"]["name"] == n).unwrap().clone();
    assert_eq!(by_name("e2e-both")["spec"]["initContainers"][0]["name"], "nixuv-init");
    assert_eq!(by_name("e2e-shared")["spec"]["template"]["spec"]["initContainers"][0]["name"], "nixuv-init");
    assert!(by_name("e2e-typo")["spec"].get("initContainers").is_none());
    assert!(stderr.contains("did you mean \"nixuv.io/inject\""), "{stderr}");
    // Without a Docker engine (no docker on PATH here, only what the script needs to start): a
    // message and exit 1, not a half-run.
    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(which("dirname"), bin.path().join("dirname")).unwrap();
    let out =
        Command::new(which("bash")).arg(root().join("scripts/e2e-kind.sh")).env("PATH", bin.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("make e2e: needs a running Docker engine"));
}

/// The storage recipes: each class makes the store writable by the uid nixuv-init runs as (the
/// config's default initRunAsUser), and the namespace's claims and gc use it.
#[test]
fn storage_recipes_make_the_store_writable_by_the_init_uid() {
    let uid = nixuv::config::Config::default().file.init_run_as_user.to_string();
    for (k, class) in [
        ("overlays/eks-efs-stores", "nixuv-efs"),
        ("overlays/nfs-stores", "nixuv-nfs"),
        ("overlays/gke-filestore-stores", "nixuv-filestore"),
    ] {
        let (_, docs) = render(k);
        let sc = find(&docs, "StorageClass", class);
        assert!(sc["metadata"].get("namespace").is_none(), "{k}: a StorageClass is cluster-scoped");
        assert_eq!(sc["reclaimPolicy"], "Retain", "{k}: built envs outlive a deleted claim");
        if class == "nixuv-efs" {
            assert_eq!(sc["parameters"]["uid"], uid.as_str());
            assert_eq!(sc["parameters"]["gid"], uid.as_str());
            assert_eq!(sc["parameters"]["provisioningMode"], "efs-ap");
        }
        if class == "nixuv-filestore" {
            // No squashing to one uid on Filestore: the claim's directory is open to all.
            assert_eq!(sc["parameters"]["mountPermissions"], "0777");
        }
        let claims: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "PersistentVolumeClaim").collect();
        assert_eq!(claims.len(), 2, "{k}");
        for c in claims {
            assert_eq!(c["spec"]["storageClassName"], class, "{k}");
            assert_eq!(c["spec"]["accessModes"], serde_json::json!(["ReadWriteMany"]), "{k}");
            assert_eq!(c["metadata"]["namespace"], "team-a", "{k}");
        }
        assert!(exists(&docs, "CronJob", "nixuv-gc", Some("team-a")), "{k}");
    }
    // The comment of the NFS recipe says how the export must squash to that uid.
    let nfs = std::fs::read_to_string(root().join("deploy/overlays/nfs-stores/kustomization.yaml")).unwrap();
    assert!(nfs.contains(&format!("anonuid={uid},anongid={uid}")));
}

/// The rules of RBAC object `kind`/`name` in `docs`: (API group, resource, verbs), one per
/// resource.
fn rules_of(docs: &[Value], kind: &str, name: &str) -> Vec<(String, String, Vec<String>)> {
    find(docs, kind, name)["rules"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            let verbs: Vec<String> =
                r["verbs"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().into()).collect();
            let group = r["apiGroups"][0].as_str().unwrap().to_string();
            r["resources"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |res| (group.clone(), res.as_str().unwrap().to_string(), verbs.clone()))
        })
        .collect()
}

/// The image store's component: the CRD, the webhook's rights to read and request envs and set
/// their status, the builder's rights in nixuv's namespace only, and `NoneOnDryRun` (the webhook
/// creates NixuvEnvs, never for a dry run); the example's config turns the store on.
#[test]
fn the_image_store_component_grants_what_the_builder_uses_and_no_more() {
    let (_, docs) = render("overlays/image-store-example");
    let crd = find(&docs, "CustomResourceDefinition", "nixuvenvs.nixuv.io");
    assert_eq!(crd["spec"]["scope"], "Cluster");
    let mwc = find(&docs, "MutatingWebhookConfiguration", "nixuv");
    assert_eq!(mwc["webhooks"][0]["sideEffects"], "NoneOnDryRun");
    let (_, plain) = render("overlays/self-managed");
    assert_eq!(find(&plain, "MutatingWebhookConfiguration", "nixuv")["webhooks"][0]["sideEffects"], "None");
    let rules = |kind: &str, name: &str| rules_of(&docs, kind, name);
    let cluster = rules("ClusterRole", "nixuv-image-store");
    assert!(
        cluster.iter().all(|(g, _, verbs)| g == "nixuv.io" && !verbs.iter().any(|v| v == "delete" || v == "*")),
        "{cluster:?}"
    );
    let role = find(&docs, "Role", "nixuv-builder");
    assert_eq!(role["metadata"]["namespace"], "nixuv-system");
    let builder = rules("Role", "nixuv-builder");
    assert!(builder.contains(&("batch".into(), "jobs".into(), vec!["get".into(), "create".into()])), "{builder:?}");
    let binding = find(&docs, "RoleBinding", "nixuv-builder");
    assert_eq!(binding["subjects"][0]["name"], "nixuv");
    let cm = find(&docs, "ConfigMap", "nixuv-config");
    let cfg = nixuv::config::Config::from_yaml(cm["data"]["config.yaml"].as_str().unwrap()).unwrap();
    assert!(cfg.image_repository.is_some());
    // The registry gc: restricted, its own account, reading Pods and deleting envs only.
    let cron = find(&docs, "CronJob", "nixuv-registry-gc");
    let tpl = &cron["spec"]["jobTemplate"]["spec"]["template"];
    let pod: Pod = serde_json::from_value(serde_json::json!({"spec": tpl["spec"]})).unwrap();
    let spec = pod.spec.clone().unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some("nixuv-registry-gc"));
    assert_eq!(common::pss::restricted_violations(&pod, &spec.containers[0]), Vec::<String>::new());
    let args = spec.containers[0].args.clone().unwrap();
    assert_eq!(&args[..2], ["gc", "--registry"]);
    let gc = rules("ClusterRole", "nixuv-registry-gc");
    assert!(
        gc.iter().all(|(_, res, verbs)| match res.as_str() {
            "pods" => verbs == &["list"],
            "nixuvenvs" => verbs == &["list", "delete"],
            "nixuvenvs/status" => verbs == &["patch"],
            _ => false,
        }),
        "{gc:?}"
    );
}
