//! deploy/components/store-guard: the ValidatingAdmissionPolicy that keeps tenants from writing
//! the shared stores. Its CEL is evaluated here with a CEL interpreter (the `cel` crate) against
//! Pods: the webhook's own output (from the real binary), nixuv's gc CronJob Pod, and the ways a
//! tenant would mount the claims. Variables are evaluated in order into `variables`, as the API
//! server does; `object` is the Pod and `params` the policy's ConfigMap. What only an API server
//! can show (the binding, `kubectl debug`'s subresource request) is in docs/security.md.

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::common;

fn rendered() -> (Value, Value) {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/overlays/cluster-example"))
        .output()
        .expect("kubectl on PATH (make tools)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&String::from_utf8(out.stdout).unwrap())
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
            .clone()
    };
    let binding = find("ValidatingAdmissionPolicyBinding", "nixuv-store-guard");
    let params = find("ConfigMap", binding["spec"]["paramRef"]["name"].as_str().unwrap());
    assert_eq!(params["metadata"]["namespace"], binding["spec"]["paramRef"]["namespace"]);
    (find("ValidatingAdmissionPolicy", binding["spec"]["policyName"].as_str().unwrap()), params)
}

/// Kubernetes CEL's `string.split(separator)` (strings extension).
fn split(
    cel::extractors::This(s): cel::extractors::This<Arc<String>>,
    sep: Arc<String>,
) -> Result<cel::Value, cel::ExecutionError> {
    Ok(cel::Value::List(Arc::new(s.split(sep.as_str()).map(|p| cel::Value::String(Arc::new(p.to_string()))).collect())))
}

/// Evaluates the policy on `pod`: `Ok(())` if admitted, else the message.
fn admit(policy: &Value, params: &Value, pod: &Value) -> Result<(), String> {
    let mut ctx = cel::Context::default();
    // Kubernetes' CEL has the strings extension; this interpreter does not: `split` as it defines
    // it (a list of the parts between the separators).
    ctx.add_function("split", split);
    ctx.add_variable_from_value("object", cel::to_value(pod).unwrap());
    ctx.add_variable_from_value("params", cel::to_value(params).unwrap());
    let mut vars: HashMap<String, cel::Value> = HashMap::new();
    for v in policy["spec"]["variables"].as_array().unwrap() {
        ctx.add_variable_from_value("variables", vars.clone());
        let expr = v["expression"].as_str().unwrap();
        let value = cel::Program::compile(expr).unwrap_or_else(|e| panic!("{expr}: {e}")).execute(&ctx);
        let value = value.unwrap_or_else(|e| panic!("variable {}: {e}", v["name"]));
        vars.insert(v["name"].as_str().unwrap().to_string(), value);
    }
    ctx.add_variable_from_value("variables", vars);
    for check in policy["spec"]["validations"].as_array().unwrap() {
        let ok = cel::Program::compile(check["expression"].as_str().unwrap()).unwrap().execute(&ctx).unwrap();
        if ok != cel::Value::Bool(true) {
            let msg =
                cel::Program::compile(check["messageExpression"].as_str().unwrap()).unwrap().execute(&ctx).unwrap();
            let cel::Value::String(s) = msg else { panic!("message is not a string: {msg:?}") };
            return Err(s.to_string());
        }
    }
    Ok(())
}

/// The webhook's output for an opted-in Pod, from the real binary, with the init image the
/// guard expects.
fn injected_pod() -> Value {
    injected_pod_with("")
}

/// [`injected_pod`] under the webhook config `config`.
fn injected_pod_with(config: &str) -> Value {
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "labels": {"nixuv.io/inject": "true"}, "annotations": {"nixuv.io/python-deps": "six"}},
        "spec": {"containers": [{"name": "app", "image": "python:3.12"}]}});
    common::preview_json(config, &pod)
}

/// nixuv's gc CronJob Pod, as deploy/components/gc renders it.
fn gc_pod() -> Value {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/overlays/stores-example"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&String::from_utf8(out.stdout).unwrap())
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let cj = docs.iter().find(|d| d["kind"] == "CronJob").expect("the gc CronJob");
    cj["spec"]["jobTemplate"]["spec"]["template"].clone()
}

#[test]
fn store_guard_admits_nixuv_and_refuses_tenant_writers() {
    let (policy, params) = rendered();
    let injected = injected_pod();
    assert_eq!(injected["spec"]["initContainers"][0]["name"], "nixuv-init");
    assert!(admit(&policy, &params, &injected).is_ok(), "the webhook's own output");
    assert!(admit(&policy, &params, &gc_pod()).is_ok(), "the gc CronJob");
    // Its namespace variable comes from the Pod's own namespace, nothing else.
    let mut other = gc_pod();
    for e in other["spec"]["containers"][0]["env"].as_array_mut().unwrap() {
        if e["name"] == "NIXUV_GC_PODS_NAMESPACE" {
            e["valueFrom"]["fieldRef"]["fieldPath"] = json!("spec.serviceAccountName");
        }
    }
    assert!(admit(&policy, &params, &other).is_err(), "the gc with its namespace variable pointed elsewhere");
    let plain = json!({"spec": {"containers": [{"name": "a", "image": "x"}]}});
    assert!(admit(&policy, &params, &plain).is_ok(), "a Pod without the stores");

    type Edit = fn(&mut Value);
    let refused: &[(&str, Edit, &str)] = &[
        (
            "a sidecar of an injected Pod mounts the uv store read-write",
            |p| {
                p["spec"]["containers"].as_array_mut().unwrap().push(
                json!({"name": "sidecar", "image": "busybox", "volumeMounts": [{"name": "nixuv-uv", "mountPath": "/w"}]}),
            );
            },
            "sidecar",
        ),
        (
            "the app's own mount with readOnly: false",
            |p| {
                p["spec"]["containers"][0]["volumeMounts"][1]["readOnly"] = json!(false);
            },
            "app",
        ),
        (
            "a hand-written nixuv-init from another image",
            |p| {
                p["spec"]["initContainers"][0]["image"] = json!("evil.example/nixuv-init:0.1.0");
            },
            "nixuv-init",
        ),
        (
            "an image of a similar name",
            |p| {
                p["spec"]["initContainers"][0]["image"] = json!("ghcr.io/nixuv/nixuv-init-evil:0.1.0");
            },
            "nixuv-init",
        ),
        (
            "nixuv-init running something else",
            |p| {
                p["spec"]["initContainers"][0]["command"] = json!(["sh", "-c", "cp -r /evil /nixuv/uv/envs"]);
            },
            "nixuv-init",
        ),
        (
            "nixuv-init with its tool swapped",
            |p| {
                p["spec"]["initContainers"][0]["env"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "NIXUV_UV", "value": "/nixuv/uv/evil"}));
            },
            "nixuv-init",
        ),
        (
            "nixuv-init taking variables from a ConfigMap (envFrom)",
            |p| {
                p["spec"]["initContainers"][0]["envFrom"] = json!([{"configMapRef": {"name": "evil"}}]);
            },
            "nixuv-init",
        ),
        (
            "nixuv-init taking NIXUV_-prefixed variables from a ConfigMap",
            |p| {
                p["spec"]["initContainers"][0]["envFrom"] =
                    json!([{"prefix": "NIXUV_", "configMapRef": {"name": "evil"}}]);
            },
            "nixuv-init",
        ),
        (
            "nixuv-init with LD_AUDIT",
            |p| {
                p["spec"]["initContainers"][0]["env"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "LD_AUDIT", "value": "/nixuv/uv/evil.so"}));
            },
            "nixuv-init",
        ),
        (
            "nixuv-init with a tool variable the admin did not declare",
            |p| {
                p["spec"]["initContainers"][0]["env"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "UV_PYTHON_DOWNLOADS_JSON_URL", "value": "https://evil.example/d.json"}));
            },
            "nixuv-init",
        ),
        (
            "nixuv-init with an emptyDir over /usr/local/bin",
            |p| {
                p["spec"]["volumes"].as_array_mut().unwrap().push(json!({"name": "bin", "emptyDir": {}}));
                p["spec"]["initContainers"][0]["volumeMounts"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "bin", "mountPath": "/usr/local/bin"}));
            },
            "nixuv-init",
        ),
        (
            "nixuv-init with a single-file subPath mount over its binary",
            |p| {
                p["spec"]["initContainers"][0]["volumeMounts"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "nixuv-uv", "mountPath": "/usr/local/bin/nixuv", "subPath": "evil"}));
            },
            "nixuv-init",
        ),
        (
            "nixuv-init with a store mounted elsewhere",
            |p| {
                p["spec"]["initContainers"][0]["volumeMounts"][2]["mountPath"] = json!("/opt/nixuv/python");
            },
            "nixuv-init",
        ),
        (
            "an older tag of the init image (before the fixes)",
            |p| {
                p["spec"]["initContainers"][0]["image"] = json!("ghcr.io/nixuv/nixuv-init:0.0.9");
            },
            "nixuv-init",
        ),
        (
            "a container named nixuv-gc with envFrom",
            |p| {
                p["spec"]["containers"].as_array_mut().unwrap().push(json!({"name": "nixuv-gc",
                    "image": "ghcr.io/nixuv/nixuv-init:0.1.0", "args": ["gc"], "envFrom": [{"secretRef": {"name": "x"}}],
                    "volumeMounts": [{"name": "nixuv-uv", "mountPath": "/nixuv/uv"}]}));
            },
            "nixuv-gc",
        ),
        (
            "the gc's namespace variable on nixuv-init, pointed at another field",
            |p| {
                p["spec"]["initContainers"][0]["env"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "NIXUV_GC_PODS_NAMESPACE",
                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}));
            },
            "nixuv-init",
        ),
        (
            "a kubectl debug container mounting the store",
            |p| {
                p["spec"]["ephemeralContainers"] = json!([{"name": "debugger", "image": "busybox", "volumeMounts": [{"name": "nixuv-nix", "mountPath": "/n"}]}]);
            },
            "debugger",
        ),
    ];
    for (what, edit, who) in refused {
        let mut pod = injected.clone();
        edit(&mut pod);
        let msg = admit(&policy, &params, &pod).expect_err(what);
        assert!(msg.contains(&format!("container {who} mounts a nixuv store claim read-write")), "{what}: {msg}");
    }
    // The init image by digest is nixuv's too.
    let mut by_digest = injected.clone();
    by_digest["spec"]["initContainers"][0]["image"] =
        json!(format!("ghcr.io/nixuv/nixuv-init@sha256:{}", "a".repeat(64)));
    assert!(admit(&policy, &params, &by_digest).is_ok(), "the init image by digest");
    // The admin's initEnv: allowed with exactly the admin's value or Secret reference, as the
    // webhook writes it (from the real binary with that config).
    let config = "initEnv:\n  - {name: UV_INDEX_URL, value: https://pypi.example/simple}\n  - {name: UV_INDEX_PASSWORD, valueFrom: {secretKeyRef: {name: index, key: password}}}\n";
    let with_tool = injected_pod_with(config);
    assert!(admit(&policy, &params, &with_tool).is_err(), "not declared in the guard");
    let mut declared = params.clone();
    declared["data"]["env.UV_INDEX_URL"] = json!("https://pypi.example/simple");
    declared["data"]["secret.UV_INDEX_PASSWORD"] = json!("index/password");
    assert!(admit(&policy, &declared, &with_tool).is_ok(), "{:?}", admit(&policy, &declared, &with_tool));
    type ToolEdit = fn(&mut Value);
    let tool_bypasses: &[(&str, ToolEdit)] = &[
        ("the index pointed elsewhere", |e| e[0]["value"] = json!("https://evil.example/simple")),
        ("the password from another Secret", |e| e[1]["valueFrom"]["secretKeyRef"]["name"] = json!("mine")),
        ("the index from a Secret the tenant writes", |e| {
            e[0] = json!({"name": "UV_INDEX_URL", "valueFrom": {"secretKeyRef": {"name": "mine", "key": "url"}}})
        }),
        ("NIX_CONFIG without signatures", |e| {
            e.as_array_mut().unwrap().push(json!({"name": "NIX_CONFIG", "value": "require-sigs = false"}))
        }),
        ("a variable of nixuv's from a reference", |e| {
            e.as_array_mut()
                .unwrap()
                .push(json!({"name": "HOME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}))
        }),
    ];
    for (what, edit) in tool_bypasses {
        let mut pod = with_tool.clone();
        let env = &mut pod["spec"]["initContainers"][0]["env"];
        let tools: Vec<usize> = env
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .filter(|(_, e)| e["name"].as_str().is_some_and(|n| n.starts_with("UV_")))
            .map(|(i, _)| i)
            .collect();
        // The edits address the admin's two variables as [0] and [1], in the order written.
        let mut view = json!(tools.iter().map(|i| env[*i].clone()).collect::<Vec<_>>());
        edit(&mut view);
        let mut kept: Vec<Value> = env
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| !e["name"].as_str().unwrap().starts_with("UV_"))
            .cloned()
            .collect();
        kept.extend(view.as_array().unwrap().iter().cloned());
        *env = json!(kept);
        assert!(admit(&policy, &declared, &pod).is_err(), "{what}");
    }
    // A tenant's own Pod, not opted in, with the claim under another volume name.
    let tenant = json!({"spec": {"containers": [{"name": "x", "image": "busybox", "volumeMounts": [{"name": "mine", "mountPath": "/m"}]}],
        "volumes": [{"name": "mine", "persistentVolumeClaim": {"claimName": "nixuv-uv-cache"}}]}});
    assert!(admit(&policy, &params, &tenant).is_err());
    // The same read-only is fine.
    let mut ro = tenant.clone();
    ro["spec"]["containers"][0]["volumeMounts"][0]["readOnly"] = json!(true);
    assert!(admit(&policy, &params, &ro).is_ok());
}

/// With `caBundle`, nixuv-init mounts that key of that ConfigMap read-only: admitted when the
/// guard's `caBundle` parameter names it, and no other ConfigMap, key, path or file (a tenant's
/// own CA would let it sign for the index and plant what it likes in the admin's env).
#[test]
fn store_guard_admits_the_ca_bundle_exactly_as_configured() {
    let (policy, mut params) = rendered();
    let pod = injected_pod_with("caBundle: {configMap: corp-ca, key: ca.pem}\n");
    let vol = pod["spec"]["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "nixuv-ca").unwrap().clone();
    assert_eq!(vol["configMap"], json!({"name": "corp-ca", "items": [{"key": "ca.pem", "path": "ca.crt"}]}));
    // Without the parameter, the guard knows no caBundle and refuses the mount.
    assert!(admit(&policy, &params, &pod).is_err(), "no caBundle parameter");
    params["data"]["caBundle"] = json!("corp-ca/ca.pem");
    assert!(admit(&policy, &params, &pod).is_ok(), "the webhook's own output");
    type Edit = fn(&mut Value);
    let refused: &[(&str, Edit)] = &[
        ("another ConfigMap", |p| {
            let i = p["spec"]["volumes"].as_array().unwrap().iter().position(|v| v["name"] == "nixuv-ca").unwrap();
            p["spec"]["volumes"][i]["configMap"]["name"] = json!("tenant-ca");
        }),
        ("another key", |p| {
            let i = p["spec"]["volumes"].as_array().unwrap().iter().position(|v| v["name"] == "nixuv-ca").unwrap();
            p["spec"]["volumes"][i]["configMap"]["items"][0]["key"] = json!("mine.pem");
        }),
        ("the mount read-write", |p| {
            for m in p["spec"]["initContainers"][0]["volumeMounts"].as_array_mut().unwrap() {
                if m["name"] == "nixuv-ca" {
                    m["readOnly"] = json!(false);
                }
            }
        }),
        ("the certificates read from the store", |p| {
            for e in p["spec"]["initContainers"][0]["env"].as_array_mut().unwrap() {
                if e["name"] == "NIXUV_CA_FILE" {
                    e["value"] = json!("/nixuv/uv/tenant.pem");
                }
            }
        }),
        ("another bundle named", |p| {
            for e in p["spec"]["initContainers"][0]["env"].as_array_mut().unwrap() {
                if e["name"] == "NIXUV_CA_BUNDLE" {
                    e["value"] = json!("tenant-ca/ca.pem");
                }
            }
        }),
    ];
    for (what, edit) in refused {
        let mut p = pod.clone();
        edit(&mut p);
        let err = admit(&policy, &params, &p).expect_err(what);
        assert!(err.contains("nixuv-init"), "{what}: {err}");
    }
}
