//! The patch of a Pod whose env is a Ready image (config `imageStore`): one `image` volume,
//! `<repository>@<digest>` pulled `IfNotPresent`, mounted read-only in each target container at
//! `/nix` and `/nixuv/uv` through the image's `nix` and `uv` directories (`subPath`), the same
//! variables as with the stores, the pull Secret added to `imagePullSecrets`; no init container,
//! no claims, no scratch volume.

use super::patch::{annotate, patch_env, Target};
use super::patch_text::{index, key, Ops, PodPatch};
use super::pod::PodView;
use crate::ecosystem::Ecosystem;
use crate::imagestore::{SUBPATH_NIX, SUBPATH_UV, VOL_ENV};
use crate::plan::EnvPlan;

/// The volume (keys sorted, as in [`super::patch`]).
#[derive(serde::Serialize)]
struct ImageVolume<'a> {
    image: ImageSource<'a>,
    name: &'static str,
}

#[derive(serde::Serialize)]
struct ImageSource<'a> {
    #[serde(rename = "pullPolicy")]
    pull_policy: &'static str,
    reference: &'a str,
}

/// A mount of the image (keys sorted).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ImageMount {
    #[serde(rename = "mountPath")]
    pub mount_path: &'static str,
    pub name: &'static str,
    #[serde(rename = "readOnly")]
    pub read_only: bool,
    #[serde(rename = "subPath")]
    pub sub_path: &'static str,
}

#[derive(serde::Serialize)]
struct SecretRef<'a> {
    name: &'a str,
}

/// The image's mounts for `plan`: `/nix` only when the env has system deps (an image without
/// them has no `nix` directory, and a missing `subPath` of a read-only volume fails the
/// container), `/nixuv/uv` always (it holds the env's records at least).
pub fn image_mounts(plan: &EnvPlan) -> Vec<ImageMount> {
    Ecosystem::ALL
        .into_iter()
        .filter(|e| *e == Ecosystem::Python || plan.has_system())
        .map(|e| ImageMount {
            mount_path: e.target_mount(),
            name: VOL_ENV,
            read_only: true,
            sub_path: match e {
                Ecosystem::System => SUBPATH_NIX,
                Ecosystem::Python => SUBPATH_UV,
            },
        })
        .collect()
}

/// The patch for a fresh `pod` whose env `plan` is the Ready image `reference`.
pub fn build(
    pod: &PodView,
    plan: &EnvPlan,
    reference: &str,
    pull_secret: Option<&str>,
    targets: &[Target],
) -> PodPatch {
    let mut ops = Ops::default();
    annotate(&mut ops, pod, plan);
    let spec = pod.spec.as_ref();
    let volume = ImageVolume { image: ImageSource { pull_policy: "IfNotPresent", reference }, name: VOL_ENV };
    ops.append([key("spec"), key("volumes")], spec.and_then(|s| s.volumes.as_ref()).is_some(), &[volume]);
    if let Some(secret) = pull_secret {
        let have = spec.and_then(|s| s.image_pull_secrets.as_ref());
        if !have.is_some_and(|v| v.iter().any(|n| n.name == secret)) {
            ops.append([key("spec"), key("imagePullSecrets")], have.is_some(), &[SecretRef { name: secret }]);
        }
    }
    let mounts = image_mounts(plan);
    let containers = pod.containers();
    for t in targets {
        let c = &containers[t.index];
        let base = [key("spec"), key("containers"), index(t.index)];
        ops.append(base.iter().cloned().chain([key("volumeMounts")]), c.volume_mounts.is_some(), &mounts);
        patch_env(&mut ops, t, c, plan);
    }
    ops.finish()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::Pod;
    use serde_json::{json, Value};

    use crate::claims::{ClaimState, Claims};
    use crate::config::Config;
    use crate::inject::{Decision, DenyKind, Injector, Outcome};

    /// The cluster as the webhook's watches see it: every claim there, and envs Ready by id.
    struct Cluster(Vec<(String, String)>);
    impl Claims for Cluster {
        fn state(&self, _: &str, _: &str) -> ClaimState {
            ClaimState::Present
        }
        fn env_image(&self, id: &str) -> Option<Arc<str>> {
            self.0.iter().find(|(i, _)| i == id).map(|(_, r)| r.as_str().into())
        }
    }

    fn injector() -> Injector {
        Injector::new(
            Config::from_yaml("imageStore: {repository: registry.example/nixuv/envs, pullSecret: envs-pull}").unwrap(),
        )
    }

    fn pod(ann: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "p", "labels": {"nixuv.io/inject": "true"}, "annotations": ann},
               "spec": {"imagePullSecrets": [{"name": "own"}],
                        "containers": [{"name": "app", "image": "debian", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                        "volumes": [{"name": "data", "emptyDir": {}}]}})
    }

    fn patched(pod: &Value, d: &Decision) -> Pod {
        let mut out = pod.clone();
        json_patch::patch(&mut out, &d.patch().expect("a patch").to_patch()).expect("the patch applies");
        serde_json::from_value(out).expect("a Pod")
    }

    #[test]
    fn a_ready_env_is_one_read_only_image_volume_and_no_init_container() {
        let inj = injector();
        let p = pod(json!({"nixuv.io/system-deps": "jq", "nixuv.io/python-deps": "rich"}));
        let id = inj.decide_pod(&p.to_string(), Some("t")).env_id().unwrap().to_string();
        let reference = "registry.example/nixuv/envs@sha256:".to_string() + &"a".repeat(64);
        let cluster = Cluster(vec![(id.clone(), reference.clone())]);
        let d = inj.decide_pod_with(&p.to_string(), Some("t"), &cluster);
        assert_eq!(d.outcome(), Outcome::Injected);
        let env = d.env.as_ref().unwrap();
        assert_eq!(env.image.as_deref(), Some(reference.as_str()));
        assert!(env.request.is_none());
        let got = patched(&p, &d);
        let spec = got.spec.unwrap();
        assert!(spec.init_containers.is_none(), "no init container");
        let vols = spec.volumes.unwrap();
        assert_eq!(vols.len(), 2, "only the image volume is added: {vols:?}");
        let image = vols[1].image.as_ref().unwrap();
        assert_eq!(vols[1].name, "nixuv-env");
        assert_eq!(image.reference.as_deref(), Some(reference.as_str()));
        assert_eq!(image.pull_policy.as_deref(), Some("IfNotPresent"));
        let secrets: Vec<_> = spec.image_pull_secrets.unwrap().into_iter().map(|s| s.name).collect();
        assert_eq!(secrets, ["own", "envs-pull"]);
        let c = &spec.containers[0];
        let mounts: Vec<_> = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| (m.name.as_str(), m.mount_path.as_str(), m.sub_path.as_deref(), m.read_only))
            .collect();
        assert_eq!(
            mounts,
            [
                ("data", "/data", None, None),
                ("nixuv-env", "/nix", Some("nix"), Some(true)),
                ("nixuv-env", "/nixuv/uv", Some("uv"), Some(true))
            ]
        );
        let path = c.env.as_ref().unwrap().iter().find(|e| e.name == "PATH").unwrap().value.clone().unwrap();
        assert!(path.starts_with(&format!("/nixuv/uv/envs/{id}/bin:/nix/var/nix/profiles/nixuv/{id}/bin:")), "{path}");
        assert!(d.notes.iter().any(|n| n.contains("Ready image")), "{:?}", d.notes);

        // Reinvoked (or created again from this output): nothing to add.
        let again = serde_json::to_value(patched(&p, &d)).unwrap();
        let d2 = inj.decide_pod_with(&again.to_string(), Some("t"), &cluster);
        assert_eq!(d2.outcome(), Outcome::AlreadyInjected);
        // Its dependencies edited since: refused with what to do, never half rewritten.
        let mut edited = again.clone();
        edited["metadata"]["annotations"]["nixuv.io/python-deps"] = json!("rich==13.0");
        let d3 = inj.decide_pod_with(&edited.to_string(), Some("t"), &cluster);
        let denial = d3.denial().expect("denied");
        assert_eq!(denial.kind, DenyKind::Conflict);
        assert!(denial.message.contains("nixuv-env"), "{}", denial.message);
    }

    #[test]
    fn python_only_images_mount_no_nix_and_an_env_not_ready_falls_back_and_is_requested() {
        let inj = injector();
        let p = pod(json!({"nixuv.io/python-deps": "rich"}));
        let id = inj.decide_pod(&p.to_string(), Some("t")).env_id().unwrap().to_string();
        let cluster = Cluster(vec![(id.clone(), "registry.example/nixuv/envs@sha256:00".into())]);
        let got = patched(&p, &inj.decide_pod_with(&p.to_string(), Some("t"), &cluster));
        let mounts = got.spec.unwrap().containers[0].volume_mounts.clone().unwrap();
        assert_eq!(mounts.iter().filter(|m| m.name == "nixuv-env").count(), 1, "{mounts:?}");

        // Not Ready: today's injection, and the env requested with the declaration only.
        let d = inj.decide_pod_with(&p.to_string(), Some("t"), &Cluster(Vec::new()));
        let req = d.env.as_ref().unwrap().request.clone().expect("requested");
        assert_eq!(req.python, ["rich"]);
        assert_eq!(req.python_version.as_deref(), Some("3.12"));
        let spec = patched(&p, &d).spec.unwrap();
        assert_eq!(spec.init_containers.unwrap()[0].name, "nixuv-init");
        assert!(d.notes.iter().any(|n| n.contains("not a Ready image")), "{:?}", d.notes);

        // Without an image store nothing is requested.
        let plain = Injector::new(Config::default()).decide_pod(&p.to_string(), Some("t"));
        assert!(plain.env.unwrap().request.is_none());
    }
}
