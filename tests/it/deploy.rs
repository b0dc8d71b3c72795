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
    "overlays/store-guard-example",
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
        let crds =
            docs.iter().filter(|d| d["apiVersion"].as_str().unwrap_or("").starts_with("cert-manager.io/")).count();
        assert_eq!(passed + crds, docs.len(), "{k}: {report}");
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
        for ns in ["kube-system", "kube-public", "nixuv-system"] {
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
        // The config excludes the namespace nixuv runs in.
        let cfg_text = find(&docs, "ConfigMap", "nixuv-config")["data"]["config.yaml"].as_str().unwrap();
        let cfg = nixuv::config::Config::from_yaml(cfg_text).unwrap();
        assert!(cfg.excluded_namespaces.iter().any(|n| n == "nixuv-system"));
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
                let args =
                    find(&docs, "Deployment", "nixuv")["spec"]["template"]["spec"]["containers"][0]["args"].clone();
                let args: Vec<&str> = args.as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
                assert!(
                    args.contains(&"--manage-ca-bundle=nixuv") && args.contains(&"--ca-bundle-file=/tls/ca.crt"),
                    "{args:?}"
                );
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
    assert_eq!(role["rules"].as_array().unwrap().len(), 1);
    assert_eq!(role["rules"][0]["resources"], serde_json::json!(["persistentvolumeclaims"]));
    assert_eq!(role["rules"][0]["verbs"], serde_json::json!(["get", "list", "watch"]));
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
