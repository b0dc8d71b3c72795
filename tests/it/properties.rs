//! Property tests of the core: for arbitrary Pods and dependency lists, the patch applies to the
//! Pod as sent, gives a valid Pod, is a fixed point on reinvocation, and the init container
//! passes PodSecurity `restricted`.

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use nixuv::config::Config;
use nixuv::inject::{Injector, Outcome};

use crate::common::{self, pss};

const SYSTEM: &[&str] = &["gcc", "gnumake", "ffmpeg-headless", "python312Packages.numpy", "xorg.libX11", "jq"];
const PYTHON: &[&str] =
    &["numpy==1.26.4", "pandas>=2,<3", "requests[socks]", "rich", "typing_extensions>=4; python_version >= '3.8'"];
const NAMES: &[&str] = &["app", "main", "web", "worker", "istio-proxy", "wait", "linkerd-proxy"];

fn env_entries() -> impl Strategy<Value = Option<Vec<Value>>> {
    proptest::option::of(proptest::collection::vec(
        prop_oneof![
            "[A-Z]{1,6}".prop_map(|n| json!({"name": n, "value": "v"})),
            "(/[a-z]{1,5}){1,3}(:/[a-z]{1,5}){0,2}".prop_map(|p| json!({"name": "PATH", "value": p})),
            Just(json!({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})),
        ],
        0..4,
    ))
    // Kubernetes keeps the last of duplicate names; keep at most one PATH for clarity.
    .prop_map(|o| {
        o.map(|mut v| {
            let mut seen = false;
            v.retain(|e| e["name"] != "PATH" || !std::mem::replace(&mut seen, true));
            v
        })
    })
}

fn container(name: String) -> impl Strategy<Value = Value> {
    (env_entries(), proptest::option::of(proptest::collection::vec("[a-z]{1,8}", 0..3))).prop_map(
        move |(env, mounts)| {
            let mut c = json!({"name": name, "image": "python:3.12-slim"});
            if let Some(env) = env {
                c["env"] = Value::Array(env);
            }
            if let Some(m) = mounts {
                c["volumeMounts"] =
                    Value::Array(m.iter().map(|n| json!({"name": n, "mountPath": format!("/data/{n}")})).collect());
            }
            c
        },
    )
}

fn pod() -> impl Strategy<Value = Value> {
    let containers = proptest::sample::subsequence(NAMES, 1..5)
        .prop_flat_map(|names| names.into_iter().map(|n| container(n.to_string())).collect::<Vec<_>>());
    (
        containers,
        proptest::sample::subsequence(SYSTEM, 0..4),
        proptest::sample::subsequence(PYTHON, 0..4),
        any::<bool>(),
        proptest::option::of(proptest::collection::btree_map("[a-z.]{1,8}/[a-z~/]{1,8}", "[ -~]{0,12}", 0..4)),
        proptest::option::of(proptest::collection::vec("[a-z]{1,8}", 0..3)),
        proptest::option::of(proptest::collection::vec("[a-z]{1,8}", 0..2)),
    )
        .prop_filter("at least one dep", |(_, s, p, ..)| !s.is_empty() || !p.is_empty())
        .prop_map(|(containers, sys, py, as_labels, annotations, volumes, inits)| {
            let mut labels = Map::new();
            labels.insert("nixuv.io/inject".into(), json!("true"));
            let mut ann: Map<String, Value> =
                annotations.unwrap_or_default().into_iter().map(|(k, v)| (k, json!(v))).collect();
            if as_labels {
                for s in &sys {
                    labels.insert(format!("system.nixuv.io/{s}"), json!(""));
                }
            } else if !sys.is_empty() {
                ann.insert("nixuv.io/system-deps".into(), json!(sys.join(", ")));
            }
            if !py.is_empty() {
                ann.insert("nixuv.io/python-deps".into(), json!(py.join("\n")));
            }
            let mut metadata = json!({"generateName": "p-", "labels": labels});
            if !ann.is_empty() {
                metadata["annotations"] = Value::Object(ann);
            }
            let mut spec = json!({"containers": containers});
            if let Some(v) = volumes {
                spec["volumes"] = Value::Array(v.iter().map(|n| json!({"name": n, "emptyDir": {}})).collect());
            }
            if let Some(i) = inits {
                spec["initContainers"] =
                    Value::Array(i.iter().map(|n| json!({"name": format!("init-{n}"), "image": "busybox"})).collect());
            }
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn patch_applies_is_a_pod_is_idempotent_and_restricted(pod in pod()) {
        let inj = Injector::new(Config::default());
        let cfg = inj.config();
        let text = serde_json::to_string(&pod).unwrap();
        let d = inj.decide_pod(&text, Some("team-a"));
        // All-sidecar Pods are denied with a message; everything else is injected.
        let all_sidecars = pod["spec"]["containers"].as_array().unwrap().iter().all(|c| cfg.file.sidecars.iter().any(|s| c["name"] == s.as_str()));
        if all_sidecars {
            prop_assert!(!d.allowed());
            prop_assert!(d.denial().unwrap().message.contains("sidecar"));
            return Ok(());
        }
        prop_assert!(d.allowed(), "denied: {:?}", d.denial());
        prop_assert_eq!(d.outcome(), Outcome::Injected);
        let patch = d.patch().expect("a patch").to_patch();
        let patched = common::apply(&pod, &patch);
        let typed = common::as_pod(&patched);
        // Nothing existing was removed or reordered: every original container and volume is still there in order.
        let names = |v: &Value, k: &str| -> Vec<String> { v["spec"][k].as_array().map(|a| a.iter().map(|c| c["name"].as_str().unwrap().to_string()).collect()).unwrap_or_default() };
        prop_assert_eq!(names(&patched, "containers"), names(&pod, "containers"));
        let before_init = names(&pod, "initContainers");
        let after_init = names(&patched, "initContainers");
        prop_assert_eq!(&after_init[0], "nixuv-init");
        prop_assert_eq!(&after_init[1..], &before_init[..]);
        prop_assert_eq!(&names(&patched, "volumes")[..names(&pod, "volumes").len()], &names(&pod, "volumes")[..]);
        // Reinvocation on the output: no patch.
        let again = inj.decide_pod(&serde_json::to_string(&patched).unwrap(), Some("team-a"));
        prop_assert!(again.allowed());
        prop_assert!(again.patch().is_none(), "reinvocation patched: {:?}", again.patch());
        prop_assert_eq!(again.outcome(), Outcome::AlreadyInjected);
        // Restricted.
        let init = &typed.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0];
        let v = pss::restricted_violations(&typed, init);
        prop_assert!(v.is_empty(), "{:?}", v);
        // Every target has PATH with the env in front and NIXUV_ENV; sidecars have neither.
        let env_id = d.env_id().unwrap().as_str();
        for c in &typed.spec.as_ref().unwrap().containers {
            let has = common::env_of(c, "NIXUV_ENV");
            if cfg.file.sidecars.contains(&c.name) {
                prop_assert!(has.is_none());
            } else {
                prop_assert_eq!(has, Some(env_id));
                let path = common::env_of(c, "PATH").unwrap();
                prop_assert!(path.contains(&format!("/{env_id}/bin:")), "{}", path);
            }
        }
    }
}
