//! The image store's builds: the plan a `NixuvEnv` gives ([`plan_of`]), and the builder's Job for
//! one env: `nixuv publish` in the init image, with the init container's
//! inputs (the plan, the admin's `initEnv`) and securityContext (PodSecurity `restricted`), on
//! private emptyDir volumes, in nixuv's own namespace, without a service account token. Only this
//! Job writes an env image; tenants never write anything shared.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::config::Config;
use crate::ecosystem::Ecosystem;
use crate::imagestore::{NixuvEnvSpec, LABEL_BUILD};
use crate::inject::init_container::init_container;
use crate::names::VOL_TMP;
use crate::plan::EnvPlan;

/// Where the push Secret's `.dockerconfigjson` is mounted.
pub const PUSH_DIR: &str = "/nixuv/push";
const VOL_PUSH: &str = "nixuv-push";

/// The Job's name for env `id`.
pub fn job_name(id: &str) -> String {
    format!("nixuv-build-{id}")
}

/// Build attempts per Job: Kubernetes retries a failed Pod with exponential backoff (10 s, 20 s,
/// 40 s, ...) before the Job fails.
pub const BACKOFF_LIMIT: u32 = 3;

/// The Job that publishes `plan`'s env to the configured image store. `None` without one.
pub fn job(plan: &EnvPlan, cfg: &Config, namespace: &str) -> Option<Value> {
    let repo = cfg.image_repository.as_ref()?;
    let store = cfg.file.image_store.as_ref()?;
    let id = plan.id.as_str();
    let mut c = init_container(plan, cfg);
    c["name"] = json!("publish");
    let mut command =
        vec!["nixuv".to_string(), "publish".into(), "--repository".into(), format!("{}/{}", repo.registry, repo.path)];
    if store.insecure {
        command.push("--insecure".into());
    }
    c["command"] = json!(command);
    // The digest (or the error) is what the leader reads back.
    c["terminationMessagePolicy"] = json!("File");
    let mut volumes = vec![json!({"name": VOL_TMP, "emptyDir": {}})];
    volumes.extend(Ecosystem::ALL.map(|e| json!({"name": e.volume(), "emptyDir": {}})));
    // The init container mounts it when the plan names a caBundle (the ConfigMap must then exist
    // in nixuv's namespace too).
    volumes.extend(crate::inject::patch::ca_volume(cfg).map(|v| json!(v)));
    if let Some(secret) = &store.push_secret {
        c["env"].as_array_mut().expect("an array").push(json!({
            "name": "NIXUV_REGISTRY_AUTH", "value": format!("{PUSH_DIR}/.dockerconfigjson")
        }));
        c["volumeMounts"].as_array_mut().expect("an array").push(json!({
            "name": VOL_PUSH, "mountPath": PUSH_DIR, "readOnly": true
        }));
        volumes.push(json!({"name": VOL_PUSH, "secret": {
            "secretName": secret, "items": [{"key": ".dockerconfigjson", "path": ".dockerconfigjson"}]
        }}));
    }
    let uid = cfg.file.init_run_as_user;
    Some(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(id),
            "namespace": namespace,
            "labels": {LABEL_BUILD: id, "app.kubernetes.io/managed-by": "nixuv", "app.kubernetes.io/component": "builder"},
        },
        "spec": {
            "backoffLimit": BACKOFF_LIMIT,
            "activeDeadlineSeconds": 7200,
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": {LABEL_BUILD: id, "app.kubernetes.io/component": "builder"}},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": false,
                    "enableServiceLinks": false,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": uid,
                        "runAsGroup": uid,
                        "fsGroup": uid,
                        "seccompProfile": {"type": "RuntimeDefault"}
                    },
                    "containers": [c],
                    "volumes": volumes,
                }
            }
        }
    }))
}

/// The plan this declaration gives under `cfg`: read and checked exactly as a Pod's
/// annotations would be (every item valid, the admin's policy, the limits), so that a
/// `NixuvEnv` written by hand gets no further than a Pod would.
pub fn plan_of(spec: &NixuvEnvSpec, cfg: &Config) -> Result<EnvPlan, String> {
    use crate::keys::{ANN_EXCLUDE_NEWER, ANN_PYTHON, ANN_PYTHON_MODE, ANN_PYTHON_VERSION, ANN_SYSTEM};
    let mut ann = BTreeMap::new();
    if !spec.system.is_empty() {
        ann.insert(ANN_SYSTEM.to_string(), spec.system.join(" "));
    }
    if !spec.python.is_empty() {
        ann.insert(ANN_PYTHON.to_string(), spec.python.join("\n"));
    }
    for (k, v) in [
        (ANN_PYTHON_VERSION, &spec.python_version),
        (ANN_PYTHON_MODE, &spec.python_mode),
        (ANN_EXCLUDE_NEWER, &spec.exclude_newer),
    ] {
        if let Some(v) = v {
            ann.insert(k.to_string(), v.clone());
        }
    }
    let declared = crate::plan::deps::declared(None, Some(&ann)).map_err(|e| e.to_string())?;
    if declared.is_empty() {
        return Err("spec declares no dependency".into());
    }
    crate::inject::policy::check(&declared, cfg).map_err(|e| e.to_string())?;
    Ok(EnvPlan::new(&declared, cfg.plan_inputs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With `caBundle`, the builder's container mounts the ConfigMap as nixuv-init does, and the
    /// Job has the volume.
    #[test]
    fn the_builder_trusts_the_ca_bundle() {
        let cfg = Config::from_yaml(
            "imageStore: {repository: registry.example/nixuv/envs}\ncaBundle: {configMap: corp-ca, key: ca.pem}",
        )
        .unwrap();
        let spec = NixuvEnvSpec { python: vec!["six".into()], ..Default::default() };
        let plan = plan_of(&spec, &cfg).unwrap();
        let job = job(&plan, &cfg, "nixuv-system").unwrap();
        let pod = &job["spec"]["template"]["spec"];
        let mounts = pod["containers"][0]["volumeMounts"].as_array().unwrap();
        assert!(mounts.contains(&json!({"name": "nixuv-ca", "mountPath": "/nixuv/ca", "readOnly": true})));
        let vols = pod["volumes"].as_array().unwrap();
        assert!(vols.contains(
            &json!({"name": "nixuv-ca", "configMap": {"name": "corp-ca", "items": [{"key": "ca.pem", "path": "ca.crt"}]}})
        ));
        let env = pod["containers"][0]["env"].as_array().unwrap();
        assert!(env.contains(&json!({"name": "NIXUV_CA_BUNDLE", "value": "corp-ca/ca.pem"})));
    }
}
