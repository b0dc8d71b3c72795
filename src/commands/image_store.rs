//! The image store's subcommands: `nixuv publish` (the builder), `nixuv gc --registry` and
//! `nixuv envs --cluster`.

use std::process::ExitCode;

use super::{safe, select_envs, with_cluster};
use crate::cli::{EnvsArgs, GcArgs, PublishArgs};
use crate::imagestore::NixuvEnv;

/// `nixuv publish`: exit 0 with the digest as the last stdout line, 1 with the reason; both in
/// the termination message.
pub fn publish(a: PublishArgs) -> ExitCode {
    let repository = match crate::imagestore::Repository::parse(&a.repository) {
        Ok(r) => r,
        Err(why) => {
            eprintln!("nixuv publish: --repository {:?}: {why}", a.repository);
            return ExitCode::from(2);
        }
    };
    let target = crate::publish::Target { repository, insecure: a.insecure, auth_file: a.auth_file };
    let result = crate::publish::run_from_env(&target);
    // Best effort: outside a Pod there is no termination log to write.
    if let Err(e) = std::fs::write(&a.termination_log, crate::publish::termination_message(&result)) {
        tracing::debug!(path = %a.termination_log.display(), error = %e, "no termination message written");
    }
    match result {
        Ok(p) => {
            tracing::info!(
                image = %p.image,
                layers = p.layers.len(),
                reused = p.reused,
                size_bytes = p.size,
                build_seconds = p.build_seconds,
                push_seconds = p.push_seconds,
                "env published"
            );
            println!("{}", p.digest);
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "publish failed");
            eprintln!("nixuv publish: {e}");
            ExitCode::from(1)
        }
    }
}

/// `nixuv gc --registry`: one pass over the image store (see `imagestore::gc`).
pub(super) fn gc_registry(a: &GcArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    let cfg = crate::config::Config::load(a.config.as_deref())?;
    let repo = cfg.image_repository.clone().context("gc --registry: the config has no imageStore")?;
    let insecure = cfg.file.image_store.as_ref().is_some_and(|s| s.insecure);
    let auth_file = std::env::var_os("NIXUV_REGISTRY_AUTH").map(std::path::PathBuf::from);
    let auth = crate::publish::registry::auth_from_file(auth_file.as_deref(), &repo.registry)?;
    let report = with_cluster(|client| async move {
        crate::imagegc::run(&client, &repo, insecure, &auth, a.max_age, a.dry_run)
            .await
            .context("reading Pods and NixuvEnvs")
    })?;
    let verb = if a.dry_run { "would remove" } else { "removed" };
    for id in &report.removed {
        println!("{id} {verb}");
    }
    for id in &report.in_use {
        println!("{id} in use");
    }
    for id in &report.kept {
        println!("{id} kept");
    }
    for (id, why) in &report.failed {
        println!("{id} failed: {why}");
    }
    tracing::info!(
        removed = report.removed.len(),
        in_use = report.in_use.len(),
        kept = report.kept.len(),
        failed = report.failed.len(),
        dry_run = a.dry_run,
        "registry gc done"
    );
    Ok(if report.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `nixuv envs --cluster`: the cluster's NixuvEnvs.
pub(super) fn envs_cluster(a: &EnvsArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    let all: Vec<NixuvEnv> = with_cluster(|client| async move {
        let api: kube::Api<NixuvEnv> = kube::Api::all(client);
        Ok(api.list(&Default::default()).await.context("listing NixuvEnvs")?.items)
    })?;
    let shown = select_envs(a, all, |e| e.metadata.name.as_deref().unwrap_or(""), "the cluster's NixuvEnvs")?;
    if a.output == "json" || a.action == "show" {
        println!("{}", serde_json::to_string_pretty(&shown)?);
        return Ok(ExitCode::SUCCESS);
    }
    for e in &shown {
        let st = e.status.clone().unwrap_or_default();
        let deps: Vec<String> = e.spec.system.iter().chain(&e.spec.python).map(|d| safe(d)).collect();
        println!(
            "{}  {:<8}  {:>10}  built {}  {}  {}",
            safe(e.metadata.name.as_deref().unwrap_or("")),
            e.phase().as_str(),
            st.size.as_deref().unwrap_or("-"),
            st.built_at.as_deref().unwrap_or("-"),
            deps.join(" "),
            st.image.as_deref().or(st.message.as_deref().map(|_| "(see envs show)")).unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}
