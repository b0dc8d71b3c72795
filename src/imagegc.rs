//! `nixuv gc --registry`: the image store's lifecycle. An env referenced by any Pod that has not
//! finished (its `nixuv.io/env` annotation) is in use, whatever its age: its `status.lastUsed`
//! is set to now. An env neither in use nor used for `max_age` (by `lastUsed`, else when it was
//! built or requested) loses its image's manifest in the registry and its `NixuvEnv`; the layers
//! it alone had are freed by the registry's own garbage collection. A Failed env is removed the
//! same way (it has no image), so that a later Pod requests it afresh.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::imagestore::{NixuvEnv, Phase, Repository};
use crate::keys::ANN_ENV;

/// What gc decides for one env.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// A Pod that has not finished references it.
    InUse,
    /// Not in use, but used (or made) within `max_age`; how long ago.
    Recent(Duration),
    /// Removed: its manifest (when it has one) and its object.
    Remove,
}

/// The env ids of the Pods that have not finished (any phase but Succeeded and Failed).
pub fn referenced(pods: &[Pod]) -> BTreeSet<String> {
    pods.iter()
        .filter(|p| !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")))
        .filter_map(|p| p.annotations().get(ANN_ENV).cloned())
        .collect()
}

/// When env was last in use, else built, else requested.
fn last_seen(env: &NixuvEnv) -> Option<Timestamp> {
    let status = env.status.as_ref();
    let parse = |s: Option<&String>| s.and_then(|t| t.parse::<Timestamp>().ok());
    parse(status.and_then(|s| s.last_used.as_ref()))
        .or_else(|| parse(status.and_then(|s| s.built_at.as_ref())))
        .or_else(|| env.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// The fate of `env` at `now`.
pub fn fate(env: &NixuvEnv, in_use: &BTreeSet<String>, max_age: Duration, now: Timestamp) -> Fate {
    if in_use.contains(&env.name_any()) {
        return Fate::InUse;
    }
    // Being built: left to the builder.
    if env.phase() == Phase::Building {
        return Fate::Recent(Duration::ZERO);
    }
    let age = last_seen(env).map(|t| now.duration_since(t).as_secs().max(0) as u64).unwrap_or(0);
    if age >= max_age.as_secs() {
        Fate::Remove
    } else {
        Fate::Recent(Duration::from_secs(age))
    }
}

/// What a gc pass did.
#[derive(Debug, Default)]
pub struct Report {
    pub in_use: Vec<String>,
    pub kept: Vec<String>,
    pub removed: Vec<String>,
    pub failed: Vec<(String, String)>,
}

/// Deletes the manifest `digest` of `repo` (DELETE /v2/<path>/manifests/<digest>, the OCI
/// distribution API; oci-client has no delete). Basic credentials, when given; a registry that
/// answers 404 has no such manifest already.
async fn delete_manifest(
    repo: &Repository,
    digest: &str,
    insecure: bool,
    auth: &oci_client::secrets::RegistryAuth,
) -> Result<(), String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let scheme = if insecure { "http" } else { "https" };
    let url = format!("{scheme}://{}/v2/{}/manifests/{digest}", repo.registry, repo.path);
    let client = reqwest13::Client::builder().build().map_err(|e| e.to_string())?;
    let mut req = client.delete(&url);
    match auth {
        oci_client::secrets::RegistryAuth::Basic(u, p) => req = req.basic_auth(u, Some(p)),
        oci_client::secrets::RegistryAuth::Bearer(t) => req = req.bearer_auth(t),
        oci_client::secrets::RegistryAuth::Anonymous => {}
    }
    let resp = req.send().await.map_err(|e| format!("DELETE {url}: {e}"))?;
    match resp.status().as_u16() {
        200..=299 | 404 => Ok(()),
        405 => Err(format!(
            "DELETE {url}: the registry does not allow deletes (distribution: storage.delete.enabled: true)"
        )),
        code => Err(format!("DELETE {url}: HTTP {code}")),
    }
}

/// One gc pass over the cluster's envs.
pub async fn run(
    client: &Client,
    repo: &Repository,
    insecure: bool,
    auth: &oci_client::secrets::RegistryAuth,
    max_age: Duration,
    dry_run: bool,
) -> Result<Report, kube::Error> {
    let pods: Api<Pod> = Api::all(client.clone());
    let envs_api: Api<NixuvEnv> = Api::all(client.clone());
    let in_use = referenced(&pods.list(&ListParams::default()).await?.items);
    let envs = envs_api.list(&ListParams::default()).await?.items;
    let now = Timestamp::now();
    let mut report = Report::default();
    for env in envs {
        let name = env.name_any();
        match fate(&env, &in_use, max_age, now) {
            Fate::InUse => {
                if !dry_run {
                    let patch = json!({"status": {"lastUsed": now.to_string()}});
                    envs_api.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch)).await?;
                }
                report.in_use.push(name);
            }
            Fate::Recent(_) => report.kept.push(name),
            Fate::Remove if dry_run => report.removed.push(name),
            Fate::Remove => {
                // The image's reference is where it was pushed (the status), else this repository.
                let digest = env.status.as_ref().and_then(|s| s.digest.clone());
                if let Some(d) = digest {
                    let at = env
                        .status
                        .as_ref()
                        .and_then(|s| s.image.as_deref())
                        .and_then(|i| Repository::parse(i.split('@').next().unwrap_or("")).ok())
                        .unwrap_or_else(|| repo.clone());
                    if let Err(e) = delete_manifest(&at, &d, insecure, auth).await {
                        report.failed.push((name, e));
                        continue;
                    }
                }
                match envs_api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => report.removed.push(name),
                    Err(kube::Error::Api(s)) if s.code == 404 => report.removed.push(name),
                    Err(e) => report.failed.push((name, e.to_string())),
                }
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str, phase: Option<&str>, created_days_ago: i64, last_used_days_ago: Option<i64>) -> NixuvEnv {
        let now = Timestamp::now();
        let ago = |d: i64| (now - k8s_openapi::jiff::SignedDuration::from_hours(24 * d)).to_string();
        let mut status = json!({});
        if let Some(p) = phase {
            status["phase"] = json!(p);
        }
        if let Some(d) = last_used_days_ago {
            status["lastUsed"] = json!(ago(d));
        }
        serde_json::from_value(json!({"apiVersion": "nixuv.io/v1alpha1", "kind": "NixuvEnv",
            "metadata": {"name": name, "creationTimestamp": ago(created_days_ago)},
            "spec": {"python": ["rich"]}, "status": status}))
        .unwrap()
    }

    #[test]
    fn an_env_in_use_is_never_removed_by_age_alone() {
        let day = Duration::from_secs(86400);
        let pod = |env: &str, phase: &str| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "p", "annotations": {ANN_ENV: env}},
                                          "status": {"phase": phase}}))
            .unwrap()
        };
        let in_use = referenced(&[pod("a", "Running"), pod("b", "Succeeded"), pod("c", "Pending")]);
        assert_eq!(in_use, BTreeSet::from(["a".to_string(), "c".to_string()]));
        let now = Timestamp::now();
        // 20 days old, running: kept.
        assert_eq!(fate(&env("a", Some("Ready"), 20, None), &in_use, 14 * day, now), Fate::InUse);
        // Its Pod finished 20 days ago and nothing used it since: removed.
        assert_eq!(fate(&env("b", Some("Ready"), 30, Some(20)), &in_use, 14 * day, now), Fate::Remove);
        // Used 3 days ago: kept.
        assert!(matches!(fate(&env("d", Some("Ready"), 30, Some(3)), &in_use, 14 * day, now), Fate::Recent(_)));
        // Being built: the builder's.
        assert!(matches!(fate(&env("e", Some("Building"), 30, None), &in_use, 14 * day, now), Fate::Recent(_)));
        // Failed long ago: removed, so that a later Pod requests it afresh.
        assert_eq!(fate(&env("f", Some("Failed"), 30, None), &in_use, 14 * day, now), Fate::Remove);
    }
}
