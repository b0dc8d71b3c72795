//! Managed stores (`nixuv serve --manage-stores`): what nixuv keeps in a namespace labelled for
//! stores, and how it reads what it finds there. No I/O: the server's reconciler
//! (`server::stores`) applies these objects and reports the states.

use serde_json::{json, Value};

use crate::config::Config;
use crate::ecosystem::Ecosystem;
use crate::names::{VOL_TMP, WORK_DIR};

/// The label on everything nixuv manages: only objects carrying it are changed or deleted.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "nixuv");
/// The server-side apply field manager.
pub const FIELD_MANAGER: &str = "nixuv";
/// The gc CronJob's name (as in deploy/components/gc).
pub const GC_CRONJOB: &str = "nixuv-gc";
/// The Lease the replicas elect a reconciler with, in nixuv's namespace.
pub const LEASE_NAME: &str = "nixuv-stores";

fn labels(component: &str) -> Value {
    json!({
        MANAGED_BY.0: MANAGED_BY.1,
        "app.kubernetes.io/name": "nixuv",
        "app.kubernetes.io/part-of": "nixuv",
        "app.kubernetes.io/component": component,
    })
}

/// Whether an object's labels say nixuv manages it.
pub fn is_managed(labels: Option<&std::collections::BTreeMap<String, String>>) -> bool {
    labels.and_then(|l| l.get(MANAGED_BY.0)).is_some_and(|v| v == MANAGED_BY.1)
}

/// The store claims for `namespace`, one per ecosystem, as server-side apply bodies: (name, object).
pub fn claims(namespace: &str, cfg: &Config) -> Vec<(String, Value)> {
    let s = &cfg.file.stores;
    let claim = |name: &str, size: &str| {
        let mut spec = json!({
            "accessModes": s.access_modes,
            "resources": { "requests": { "storage": size } },
        });
        if let Some(class) = &s.storage_class_name {
            spec["storageClassName"] = json!(class);
        }
        let body = json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": { "name": name, "namespace": namespace, "labels": labels("store") },
            "spec": spec,
        });
        (name.to_string(), body)
    };
    let storage = &cfg.file.storage;
    Ecosystem::ALL.into_iter().map(|e| claim(storage.claim(e), s.size(e))).collect()
}

/// The variable that tells `nixuv gc` whose Pods to ask (`--pods-namespace`).
pub const GC_PODS_NAMESPACE_VAR: &str = "NIXUV_GC_PODS_NAMESPACE";

/// The gc CronJob's account in `namespace`, as server-side apply bodies: a ServiceAccount, a Role
/// that may list the namespace's Pods and nothing else, and the RoleBinding between them, all
/// named `nixuv-gc` (as in deploy/components/gc).
pub fn gc_account(namespace: &str) -> [Value; 3] {
    let meta = json!({ "name": GC_CRONJOB, "namespace": namespace, "labels": labels("gc") });
    [
        json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta }),
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta,
                "rules": [{ "apiGroups": [""], "resources": ["pods"], "verbs": ["list"] }] }),
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta,
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": GC_CRONJOB },
                "subjects": [{ "kind": "ServiceAccount", "name": GC_CRONJOB, "namespace": namespace }] }),
    ]
}

/// The `nixuv gc` CronJob for `namespace` (docs/materialize.md), as a server-side apply body: the
/// init image, `nixuv-gc` running `nixuv gc` as deploy/components/store-guard expects, the
/// stores mounted where `nixuv materialize` mounts them.
pub fn gc_cronjob(namespace: &str, cfg: &Config) -> Value {
    let s = &cfg.file.stores;
    let uid = cfg.file.init_run_as_user;
    let storage = &cfg.file.storage;
    let mut container = json!({
        "name": "nixuv-gc",
        "image": cfg.file.init_image,
        "args": ["gc", "--max-age", s.gc_max_age, "--uv-cache-max-size", s.uv_cache_max_size],
        "env": [{ "name": "HOME", "value": WORK_DIR }, { "name": "TMPDIR", "value": WORK_DIR }],
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": { "drop": ["ALL"] }
        },
        "resources": { "requests": { "cpu": "100m", "memory": "256Mi" }, "limits": { "cpu": "1", "memory": "1Gi" } },
        "volumeMounts": std::iter::once(json!({ "name": VOL_TMP, "mountPath": WORK_DIR }))
            .chain(Ecosystem::ALL.map(|e| json!({ "name": e.volume(), "mountPath": e.init_mount() })))
            .collect::<Vec<_>>()
    });
    let volumes: Vec<Value> = std::iter::once(json!({ "name": VOL_TMP, "emptyDir": {} }))
        .chain(
            Ecosystem::ALL
                .map(|e| json!({ "name": e.volume(), "persistentVolumeClaim": { "claimName": storage.claim(e) } })),
        )
        .collect();
    if let Some(p) = cfg.pull_policy {
        container["imagePullPolicy"] = json!(p.as_str());
    }
    container["env"].as_array_mut().expect("an array").push(json!({
        "name": GC_PODS_NAMESPACE_VAR, "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } }
    }));
    json!({
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": { "name": GC_CRONJOB, "namespace": namespace, "labels": labels("gc") },
        "spec": {
            "schedule": s.gc_schedule,
            "concurrencyPolicy": "Forbid",
            "successfulJobsHistoryLimit": 1,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": { "spec": {
                "backoffLimit": 2,
                "activeDeadlineSeconds": 7200,
                "template": {
                    "metadata": { "labels": { "app.kubernetes.io/name": "nixuv", "app.kubernetes.io/component": "gc" } },
                    "spec": {
                        "restartPolicy": "OnFailure",
                        // Its token may list the namespace's Pods only ([`gc_account`]).
                        "serviceAccountName": GC_CRONJOB,
                        "securityContext": {
                            "runAsNonRoot": true, "runAsUser": uid, "runAsGroup": uid,
                            "seccompProfile": { "type": "RuntimeDefault" }
                        },
                        "containers": [container],
                        "volumes": volumes
                    }
                }
            } }
        }
    })
}

/// A namespace's stores as the reconciler last saw them (the `state` label of `nixuv_stores`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StoreState {
    /// Both claims bound, the CronJob in place.
    Ready,
    /// A claim is still being provisioned.
    Pending,
    /// A claim is Pending when it should have bound (docs/install.md): Pods get emptyDirs.
    Unbindable,
    /// A claim or CronJob of the same name exists and is not nixuv's: left alone.
    Unmanaged,
    /// The API refused a write (a conflict with another field manager, RBAC).
    Error,
}

impl StoreState {
    pub const ALL: [StoreState; 5] =
        [StoreState::Ready, StoreState::Pending, StoreState::Unbindable, StoreState::Unmanaged, StoreState::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            StoreState::Ready => "ready",
            StoreState::Pending => "pending",
            StoreState::Unbindable => "unbindable",
            StoreState::Unmanaged => "unmanaged",
            StoreState::Error => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::CronJob;
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;

    #[test]
    fn objects_are_valid_kubernetes_objects_from_the_config() {
        let cfg = Config::from_yaml(
            "stores: {storageClassName: nfs-client, nixSize: 80Gi, uvSize: 20Gi, gcSchedule: '0 4 * * 0', gcMaxAge: 7d}",
        )
        .unwrap();
        let [(nix, a), (uv, b)]: [_; 2] = claims("team-a", &cfg).try_into().unwrap();
        assert_eq!((nix.as_str(), uv.as_str()), ("nixuv-nix-store", "nixuv-uv-cache"));
        let a: PersistentVolumeClaim = serde_json::from_value(a).unwrap();
        let b: PersistentVolumeClaim = serde_json::from_value(b).unwrap();
        let spec = a.spec.unwrap();
        assert_eq!(spec.storage_class_name.as_deref(), Some("nfs-client"));
        assert_eq!(spec.access_modes.unwrap(), ["ReadWriteMany"]);
        assert_eq!(spec.resources.unwrap().requests.unwrap()["storage"].0, "80Gi");
        assert_eq!(b.spec.unwrap().resources.unwrap().requests.unwrap()["storage"].0, "20Gi");
        assert!(is_managed(a.metadata.labels.as_ref()));
        let cj: CronJob = serde_json::from_value(gc_cronjob("team-a", &cfg)).unwrap();
        let spec = cj.spec.unwrap();
        assert_eq!(spec.schedule, "0 4 * * 0");
        let pod = spec.job_template.spec.unwrap().template.spec.unwrap();
        assert_eq!(
            pod.containers[0].args.as_deref().unwrap(),
            ["gc", "--max-age", "7d", "--uv-cache-max-size", "20Gi"]
        );
        assert_eq!(pod.containers[0].image.as_deref(), Some(cfg.file.init_image.as_str()));
        let mounted: Vec<_> = pod
            .volumes
            .unwrap()
            .iter()
            .filter_map(|v| Some(v.persistent_volume_claim.as_ref()?.claim_name.clone()))
            .collect();
        assert_eq!(mounted, ["nixuv-nix-store", "nixuv-uv-cache"]);
        // The cluster's default class when none is configured.
        let (_, a) = &claims("team-a", &Config::default())[0];
        assert!(a["spec"].get("storageClassName").is_none());
    }
}
