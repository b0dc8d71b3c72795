//! The image store's builder, run by the leader (a Lease of its own, `nixuv-builder`): every
//! Pending `NixuvEnv` becomes a Job in nixuv's namespace running `nixuv publish`
//! ([`crate::imagestore::job`]); when the Job ends, the digest (or the error) in its Pod's
//! termination message becomes the env's status. Envs are read from the webhook's watch cache;
//! only Jobs, their Pods and statuses are asked of the API, a few calls per build.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{json, Value};
use tokio::sync::watch;

use super::env_watch::EnvCache;
use super::metrics::{Metrics, PhaseLabels, ResultLabels};
use super::AppState;
use crate::config::Config;
use crate::imagebuild::{job, job_name};
use crate::imagestore::{human_bytes, NixuvEnv, Phase};

/// The builder's Lease.
pub const LEASE_NAME: &str = "nixuv-builder";
/// How often the leader looks at the envs and their Jobs.
const PASS_EVERY: Duration = Duration::from_secs(2);
/// Builds running at once; more Pending envs wait for a slot.
pub const MAX_BUILDS: usize = 4;

pub fn spawn(state: &Arc<AppState>, client: Client, namespace: &str, identity: String) {
    let Some(envs) = state.envs.clone() else { return };
    let s = Arc::clone(state);
    let config = move || Arc::new(s.injector.load().config().clone());
    let cfg = config();
    let election = super::leader::Election {
        name: LEASE_NAME.into(),
        identity,
        lease_duration: Duration::from_secs(cfg.file.stores.lease_duration_seconds),
        renew_deadline: Duration::from_secs(cfg.file.stores.renew_deadline_seconds),
    };
    let (tx, mut leading) = watch::channel(false);
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let metrics = Arc::clone(&state.metrics);
    let m = Arc::clone(&metrics);
    super::leader::spawn(leases, election, tx, move |l| {
        m.image_builder_leader.set(i64::from(l));
        tracing::info!(leading = l, "image builder leadership");
    });
    let namespace = namespace.to_string();
    tokio::spawn(async move {
        loop {
            while !*leading.borrow_and_update() {
                if leading.changed().await.is_err() {
                    return;
                }
            }
            let cfg = config();
            if let Err(e) = pass(&client, &envs, &cfg, &namespace, &metrics).await {
                tracing::warn!(error = %e, "image builder pass failed; retrying");
            }
            tokio::time::sleep(PASS_EVERY).await;
        }
    });
}

/// Sets `status` (merged) on env `name`.
async fn set_status(api: &Api<NixuvEnv>, name: &str, status: Value) -> Result<(), kube::Error> {
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({ "status": status }))).await.map(|_| ())
}

/// What a finished build's Pod said in its termination message: of every attempt, a
/// successful one first, then the latest.
fn termination_message(pods: &[Pod]) -> Option<(i32, Value)> {
    pods.iter()
        .flat_map(|p| p.status.iter().flat_map(|s| s.container_statuses.iter().flatten()))
        .filter_map(|cs| cs.state.as_ref()?.terminated.as_ref())
        .max_by_key(|t| (t.exit_code == 0, t.finished_at.as_ref().map(|f| f.0)))
        .map(|t| {
            let text = t.message.clone().unwrap_or_default();
            let msg = serde_json::from_str::<Value>(&text).unwrap_or_else(|_| json!({ "error": text }));
            (t.exit_code, msg)
        })
}

fn job_ended(job: &Job) -> Option<bool> {
    let status = job.status.as_ref()?;
    if status.succeeded.unwrap_or(0) > 0 {
        return Some(true);
    }
    let failed = status.conditions.iter().flatten().any(|c| c.type_ == "Failed" && c.status == "True");
    failed.then_some(false)
}

/// One look at every env: Pending ones get a Job (up to [`MAX_BUILDS`] at once), Building ones
/// whose Job ended get their outcome.
pub async fn pass(
    client: &Client,
    envs: &EnvCache,
    cfg: &Config,
    namespace: &str,
    metrics: &Metrics,
) -> Result<(), kube::Error> {
    let Some(repo) = cfg.image_repository.as_ref() else { return Ok(()) };
    let env_api: Api<NixuvEnv> = Api::all(client.clone());
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let all = envs.all();
    for phase in [Phase::Pending, Phase::Building, Phase::Ready, Phase::Failed] {
        let n = all.iter().filter(|e| e.phase() == phase).count();
        metrics.image_envs.get_or_create(&PhaseLabels { phase: phase.as_str() }).set(n as i64);
    }
    let mut building = all.iter().filter(|e| e.phase() == Phase::Building).count();
    for env in all {
        let name = env.name_any();
        match env.phase() {
            Phase::Ready | Phase::Failed => {}
            Phase::Pending => {
                if building >= MAX_BUILDS {
                    continue;
                }
                let plan = match crate::imagebuild::plan_of(&env.spec, cfg) {
                    Ok(p) if p.id.as_str() == name => p,
                    Ok(p) => {
                        let why = format!("under the current config this declaration is env {}, not {name}: the config changed since it was requested (Pods of the current config request the new env)", p.id);
                        set_status(&env_api, &name, json!({"phase": "Failed", "message": why})).await?;
                        continue;
                    }
                    Err(why) => {
                        set_status(&env_api, &name, json!({"phase": "Failed", "message": why})).await?;
                        continue;
                    }
                };
                let manifest = job(&plan, cfg, namespace).expect("an image store is configured");
                let job_obj: Job = serde_json::from_value(manifest).expect("a Job");
                match jobs.create(&PostParams::default(), &job_obj).await {
                    Ok(_) => tracing::info!(env = %name, job = %job_name(&name), "building the env's image"),
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => return Err(e),
                }
                building += 1;
                set_status(&env_api, &name, json!({"phase": "Building", "job": job_name(&name), "message": null}))
                    .await?;
            }
            Phase::Building => {
                let job_ref = env.status.as_ref().and_then(|s| s.job.clone()).unwrap_or_else(|| job_name(&name));
                let Some(j) = jobs.get_opt(&job_ref).await? else {
                    tracing::warn!(env = %name, job = %job_ref, "the builder Job is gone; building again");
                    set_status(
                        &env_api,
                        &name,
                        json!({"phase": "Pending", "message": "the builder Job was removed; building again"}),
                    )
                    .await?;
                    continue;
                };
                let Some(succeeded) = job_ended(&j) else { continue };
                let list = pods.list(&ListParams::default().labels(&format!("job-name={job_ref}"))).await?;
                let said = termination_message(&list.items);
                let status = match (succeeded, said) {
                    (true, Some((0, msg))) if msg["digest"].as_str().is_some_and(|d| d.starts_with("sha256:")) => {
                        let digest = msg["digest"].as_str().unwrap_or_default().to_string();
                        let size = msg["sizeBytes"].as_u64().unwrap_or(0);
                        tracing::info!(env = %name, %digest, size, "env image ready");
                        metrics.image_builds.get_or_create(&ResultLabels { result: "ready" }).inc();
                        json!({
                            "phase": "Ready",
                            "digest": digest,
                            "image": repo.by_digest(&digest),
                            "size": human_bytes(size),
                            "sizeBytes": size,
                            "lock": msg.get("lock").cloned().unwrap_or(Value::Null),
                            "builtAt": k8s_openapi::jiff::Timestamp::now().to_string(),
                            "buildSeconds": msg["buildSeconds"],
                            "message": null,
                        })
                    }
                    (_, said) => {
                        let why = said
                            .and_then(|(_, m)| m["error"].as_str().map(String::from))
                            .filter(|m| !m.is_empty())
                            .unwrap_or_else(|| format!("builder Job {job_ref} failed without saying why (kubectl -n {namespace} logs job/{job_ref})"));
                        tracing::warn!(env = %name, error = %why, "env image build failed");
                        metrics.image_builds.get_or_create(&ResultLabels { result: "failed" }).inc();
                        json!({"phase": "Failed", "message": why})
                    }
                };
                set_status(&env_api, &name, status).await?;
            }
        }
    }
    Ok(())
}
