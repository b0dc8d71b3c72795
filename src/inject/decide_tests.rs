//! The decision, in process and table-driven: every conflict, the re-injection of a stale
//! injection, and each per-Pod option, each checked on the Pod the patch makes (applied with
//! json-patch and read back as a typed k8s-openapi Pod).

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{json, Value};

use super::{Decision, DenyKind, Injector, Outcome};
use crate::config::Config;

fn decide(inj: &Injector, pod: &Value) -> Decision {
    inj.decide_pod(&pod.to_string(), Some("team-a"))
}

/// The Pod the decision's patch makes of `pod`.
fn patched(pod: &Value, d: &Decision) -> Value {
    let mut out = pod.clone();
    if let Some(p) = d.patch() {
        json_patch::patch(&mut out, &p.to_patch()).unwrap_or_else(|e| panic!("the patch does not apply: {e}"));
    }
    out
}

fn typed(pod: &Value) -> Pod {
    serde_json::from_value(pod.clone()).expect("a Pod")
}

fn env<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env.as_ref()?.iter().find(|e| e.name == name)?.value.as_deref()
}

/// An opted-in Pod declaring `ann`, with one app container `app` (plus `extra` merged into its
/// spec).
fn pod(ann: Value, app: Value, extra: Value) -> Value {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "labels": {"nixuv.io/inject": "true"}, "annotations": ann},
        "spec": {"containers": [app]}
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        p["spec"][k] = v.clone();
    }
    p
}

#[test]
fn each_conflict_is_denied_naming_the_field_and_item() {
    let inj = Injector::new(Config::default());
    let deps = json!({"nixuv.io/python-deps": "rich"});
    let overlay = json!({"nixuv.io/python-deps": "rich", "nixuv.io/python-mode": "overlay"});
    let app = |extra: Value| {
        let mut c = json!({"name": "app", "image": "debian"});
        for (k, v) in extra.as_object().into_iter().flatten() {
            c[k] = v.clone();
        }
        c
    };
    let from = json!({"configMapKeyRef": {"name": "c", "key": "k"}});
    let cases: Vec<(&str, Value, DenyKind, &str)> = vec![
        (
            "a volume of nixuv's name",
            pod(deps.clone(), app(json!({})), json!({"volumes": [{"name": "nixuv-uv", "emptyDir": {}}]})),
            DenyKind::Conflict,
            "spec.volumes: a volume named \"nixuv-uv\" already exists",
        ),
        (
            "an init container named nixuv-init",
            pod(deps.clone(), app(json!({})), json!({"initContainers": [{"name": "nixuv-init", "image": "x"}]})),
            DenyKind::Conflict,
            "spec.initContainers: a container named \"nixuv-init\"",
        ),
        (
            "a mount over /nix",
            pod(deps.clone(), app(json!({"volumeMounts": [{"name": "d", "mountPath": "//nix/./store"}]})), json!({})),
            DenyKind::Conflict,
            "spec.containers[\"app\"].volumeMounts: \"//nix/./store\" (volume \"d\") overlaps nixuv's mount at \"/nix\"",
        ),
        (
            "PATH from a reference",
            pod(deps.clone(), app(json!({"env": [{"name": "PATH", "valueFrom": from}]})), json!({})),
            DenyKind::Conflict,
            "spec.containers[\"app\"].env: PATH is set with valueFrom",
        ),
        (
            "VIRTUAL_ENV of its own",
            pod(deps.clone(), app(json!({"env": [{"name": "VIRTUAL_ENV", "value": "/opt/venv"}]})), json!({})),
            DenyKind::Conflict,
            "spec.containers[\"app\"].env: VIRTUAL_ENV is already set",
        ),
        (
            "PYTHONPATH from a reference, overlay",
            pod(overlay.clone(), app(json!({"env": [{"name": "PYTHONPATH", "valueFrom": from}]})), json!({})),
            DenyKind::Conflict,
            "spec.containers[\"app\"].env: PYTHONPATH is set with valueFrom",
        ),
        (
            "NIXUV_ENV of its own",
            pod(deps.clone(), app(json!({"env": [{"name": "NIXUV_ENV", "value": "x"}]})), json!({})),
            DenyKind::Conflict,
            "spec.containers[\"app\"].env: NIXUV_ENV is already set",
        ),
        (
            "a store claim mounted by the Pod",
            pod(
                deps.clone(),
                app(json!({})),
                json!({"volumes": [{"name": "s", "persistentVolumeClaim": {"claimName": "nixuv-uv-cache"}}]}),
            ),
            DenyKind::Policy,
            "spec.volumes[\"s\"]: PersistentVolumeClaim \"nixuv-uv-cache\" is one of nixuv's shared stores",
        ),
        (
            "an unknown container named",
            pod(json!({"nixuv.io/python-deps": "rich", "nixuv.io/containers": "web"}), app(json!({})), json!({})),
            DenyKind::Invalid,
            "annotation \"nixuv.io/containers\": \"web\" is not a container of this Pod (containers: \"app\")",
        ),
        (
            "a bad placement",
            pod(json!({"nixuv.io/python-deps": "rich", "nixuv.io/init-placement": "last"}), app(json!({})), json!({})),
            DenyKind::Invalid,
            "annotation \"nixuv.io/init-placement\": \"last\" is not \"first\" or \"afterSidecars\"",
        ),
        (
            "a relative image path",
            pod(json!({"nixuv.io/python-deps": "rich", "nixuv.io/image-path": "bin"}), app(json!({})), json!({})),
            DenyKind::Invalid,
            "annotation \"nixuv.io/image-path\": \"bin\" must be a colon-separated list",
        ),
    ];
    for (what, pod, kind, message) in cases {
        let d = decide(&inj, &pod);
        let denial = d.denial().unwrap_or_else(|| panic!("{what}: not denied: {:?}", d.outcome()));
        assert_eq!(denial.kind, kind, "{what}");
        assert!(denial.message.contains(message), "{what}: {}", denial.message);
        // A VIRTUAL_ENV that is not nixuv's is a conflict in venv mode only.
        assert!(d.patch().is_none(), "{what}");
    }
    let ok = pod(overlay, app(json!({"env": [{"name": "VIRTUAL_ENV", "value": "/opt/venv"}]})), json!({}));
    assert_eq!(decide(&inj, &ok).outcome(), Outcome::Injected, "VIRTUAL_ENV is not nixuv's in overlay mode");
}

#[test]
fn each_per_pod_option_shapes_the_patched_pod() {
    let inj = Injector::new(Config::default());
    let sidecar = json!({"name": "proxy", "image": "envoy", "restartPolicy": "Always"});
    let two = json!({"containers": [{"name": "app", "image": "debian"}, {"name": "worker", "image": "debian"}],
        "initContainers": [sidecar, {"name": "setup", "image": "busybox"}]});
    let with = |ann: Value| {
        let mut p = pod(ann, json!({}), json!({}));
        for (k, v) in two.as_object().unwrap() {
            p["spec"][k] = v.clone();
        }
        p
    };
    let names = |p: &Pod| {
        p.spec.as_ref().unwrap().init_containers.as_ref().unwrap().iter().map(|c| c.name.clone()).collect::<Vec<_>>()
    };

    // Default: every container, nixuv-init after the native sidecar, PATH from defaultPath.
    let p = with(json!({"nixuv.io/system-deps": "jq"}));
    let out = typed(&patched(&p, &decide(&inj, &p)));
    assert_eq!(names(&out), ["proxy", "nixuv-init", "setup"]);
    let cs = &out.spec.as_ref().unwrap().containers;
    assert!(cs.iter().all(|c| env(c, "NIXUV_ENV").is_some()));
    assert!(env(&cs[0], "PATH").unwrap().ends_with(&Config::default().file.default_path));
    assert_eq!(env(&cs[0], "VIRTUAL_ENV"), None, "no Python deps, no venv");

    // containers, init-placement, image-path.
    let p = with(json!({"nixuv.io/python-deps": "rich", "nixuv.io/containers": "worker",
        "nixuv.io/init-placement": "first", "nixuv.io/image-path": "/opt/conda/bin:/usr/bin"}));
    let out = typed(&patched(&p, &decide(&inj, &p)));
    assert_eq!(names(&out), ["nixuv-init", "proxy", "setup"]);
    let cs = &out.spec.as_ref().unwrap().containers;
    assert_eq!(env(&cs[0], "NIXUV_ENV"), None, "not named");
    let path = env(&cs[1], "PATH").unwrap();
    assert!(path.starts_with("/nixuv/uv/envs/") && path.ends_with(":/opt/conda/bin:/usr/bin"), "{path}");
    assert!(env(&cs[1], "VIRTUAL_ENV").unwrap().starts_with("/nixuv/uv/envs/"));

    // python-mode overlay and python version: PYTHONPATH in front of the container's own.
    let mut p =
        with(json!({"nixuv.io/python-deps": "rich", "nixuv.io/python-mode": "overlay", "nixuv.io/python": "3.11"}));
    p["spec"]["containers"][0]["env"] = json!([{"name": "PYTHONPATH", "value": "/app/lib"}]);
    let d = decide(&inj, &p);
    let out = typed(&patched(&p, &d));
    let c = &out.spec.as_ref().unwrap().containers[0];
    assert_eq!(env(c, "PYTHONPATH").unwrap(), format!("/nixuv/uv/envs/{}:/app/lib", d.env_id().unwrap()));
    assert_eq!(env(c, "VIRTUAL_ENV"), None);
    let init = &out.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[1];
    assert_eq!(env(init, "NIXUV_PYTHON"), Some("3.11"));
    assert_eq!(env(init, "NIXUV_PYTHON_MODE"), Some("overlay"));
}

/// A Pod that carries nixuv's injection for one env and now declares another is rewritten for the
/// new env: the result is what a fresh Pod with the new deps gets, but for the container's own
/// values, which are kept; a second decision on the result changes nothing.
#[test]
fn a_stale_injection_is_rewritten_for_the_new_env() {
    let inj = Injector::new(Config::default());
    let app = json!({"name": "app", "image": "debian", "env": [{"name": "PATH", "value": "/app/bin:/usr/bin"}]});
    let cases = [
        (json!({"nixuv.io/system-deps": "jq"}), json!({"nixuv.io/python-deps": "rich"})),
        (
            json!({"nixuv.io/python-deps": "rich"}),
            json!({"nixuv.io/python-deps": "rich", "nixuv.io/python-mode": "overlay"}),
        ),
        (
            json!({"nixuv.io/python-deps": "rich", "nixuv.io/python-mode": "overlay"}),
            json!({"nixuv.io/system-deps": "jq"}),
        ),
    ];
    for (before, after) in cases {
        let first = pod(before.clone(), app.clone(), json!({}));
        let injected = patched(&first, &decide(&inj, &first));
        let mut stale = injected.clone();
        let ann = stale["metadata"]["annotations"].as_object_mut().unwrap();
        for k in ["nixuv.io/system-deps", "nixuv.io/python-deps", "nixuv.io/python-mode"] {
            ann.remove(k);
        }
        for (k, v) in after.as_object().unwrap() {
            ann.insert(k.clone(), v.clone());
        }
        let d = decide(&inj, &stale);
        assert_eq!(d.outcome(), Outcome::Injected, "{before} -> {after}");
        assert!(d.warnings.iter().any(|w| w.contains("re-injected")), "{:?}", d.warnings);
        let rewritten = patched(&stale, &d);
        let fresh_pod = pod(after.clone(), app.clone(), json!({}));
        let fresh = patched(&fresh_pod, &decide(&inj, &fresh_pod));
        // The same variables and values (a re-injection appends what was not there, so the order
        // of the variables may differ).
        let sorted = |p: &Value| {
            let mut spec = typed(p).spec.unwrap();
            for c in &mut spec.containers {
                c.env.as_mut().unwrap().sort_by(|a, b| a.name.cmp(&b.name));
            }
            spec
        };
        assert_eq!(sorted(&rewritten), sorted(&fresh), "{before} -> {after}");
        assert_eq!(
            rewritten["metadata"]["annotations"]["nixuv.io/env"],
            fresh["metadata"]["annotations"]["nixuv.io/env"]
        );
        let again = decide(&inj, &rewritten);
        assert_eq!(again.outcome(), Outcome::AlreadyInjected, "{before} -> {after}: a fixed point");
    }
}
