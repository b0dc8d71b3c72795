//! `nixuv gc`: removes envs not used for `--max-age`, never one whose build lease is live, then
//! lets nix and uv free what nothing references any more.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::layout::{self, Layout};
use super::lease::{self, Lease};
use super::store::{Kind, StoreDir};
use super::tool::Tool;
use super::{io, MaterializeError};
use crate::envid::EnvId;

#[derive(Debug, Clone)]
pub struct GcOptions {
    pub max_age: Duration,
    pub lease_ttl: Duration,
    pub dry_run: bool,
    /// Run `nix store gc` (through nix-portable) and `uv cache prune` after removing envs.
    pub prune_stores: bool,
    /// Then keep the uv cache under this many bytes (see [`super::cache_trim`]).
    pub uv_cache_max: Option<u64>,
    /// Envs a Pod that has not finished uses (its `nixuv.io/env`): never removed, whatever their
    /// age (`--pods-namespace`).
    pub in_use: std::collections::BTreeSet<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub removed: Vec<String>,
    /// Kept because a Pod that has not finished uses them.
    pub in_use: Vec<String>,
    pub kept: Vec<String>,
    pub skipped_busy: Vec<String>,
    pub orphans_removed: usize,
    pub cache: Option<super::cache_trim::TrimReport>,
}

/// Whether the env's last use (the `.used` stamp, else the marker's own time) is over `max_age` ago.
fn unused_for(state: &StoreDir, id: &str, max_age: Duration) -> bool {
    state.age(layout::used_name(id)).or_else(|| state.age(layout::marker_name(id))).is_some_and(|a| a > max_age)
}

/// Removes env `id`: its marker first (from then on a materialize rebuilds instead of trusting
/// what follows), then the venv its `envs/` link names, but only when the link names exactly a
/// `.H.<nonce>` directory of `envs/` (anything else planted there is unlinked, never followed),
/// then its profile links and its stamp.
fn remove_env(layout: &Layout, state: &StoreDir, envs: Option<&StoreDir>, id: &str) -> Result<(), MaterializeError> {
    state.remove_entry(layout::marker_name(id))?;
    if let Some(envs) = envs {
        match envs.kind(id) {
            Kind::Symlink => {
                let target = envs.read_link(id);
                envs.remove_entry(id)?;
                if let Some(t) = target.as_deref().and_then(Path::to_str) {
                    if layout::is_venv_name(id, t) && envs.kind(t) == Kind::Dir {
                        envs.remove_entry(t)?;
                    }
                }
            }
            Kind::Absent => {}
            // A directory or file planted at `envs/H`: removed itself (nothing it points at).
            _ => envs.remove_entry(id)?,
        }
    }
    if let Some(profiles) = layout.nix_subdir(layout::PROFILES, false)? {
        for name in profiles.names()? {
            if name == id || (name.starts_with(&format!("{id}-")) && name.ends_with("-link")) {
                profiles.remove_entry(&name)?;
            }
        }
    }
    state.remove_entry(layout::used_name(id))?;
    Ok(())
}

/// Removes what a build killed half-way left in `envs/`: venv directories `.H.<nonce>` that no
/// `envs/H` link names and leftover `.H.link-<nonce>` links, once their env's lease is dead and
/// they are older than two lease lifetimes. Names nixuv never makes are left alone.
fn sweep_orphans(envs: &StoreDir, locks: Option<&StoreDir>, opts: &GcOptions) -> Result<usize, MaterializeError> {
    let names = envs.names()?;
    let published: Vec<PathBuf> = names.iter().filter_map(|n| envs.read_link(n)).collect();
    let mut removed = 0;
    for name in &names {
        let Some(rest) = name.strip_prefix('.') else { continue };
        let Some((id, tail)) = rest.split_once('.') else { continue };
        let ours = EnvId::parse(id).is_some()
            && (EnvId::parse(tail).is_some() || tail.strip_prefix("link-").is_some_and(|n| EnvId::parse(n).is_some()));
        let old = envs.age(name).is_some_and(|a| a > opts.lease_ttl * 2);
        let busy = locks.is_some_and(|l| lease::is_held(l, &layout::lease_name(id), opts.lease_ttl));
        if !ours || !old || busy || published.iter().any(|p| p == Path::new(name)) {
            continue;
        }
        if !opts.dry_run {
            envs.remove_entry(name)?;
        }
        removed += 1;
    }
    Ok(removed)
}

pub fn gc(layout: &Layout, opts: &GcOptions) -> Result<GcReport, MaterializeError> {
    let mut report = GcReport::default();
    if !layout.uv_root.is_dir() {
        return Err(io(&layout.uv_root)(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the uv store root does not exist (is the volume mounted at --uv-root?)",
        )));
    }
    // Layout directories that are links (or files) are refused here, never followed: gc removes.
    let state = layout.uv_dir(layout::STATE, false)?;
    let envs = layout.uv_dir(layout::ENVS, false)?;
    let locks = layout.uv_dir(layout::LOCKS, false)?;
    let mut ids: Vec<String> = match &state {
        Some(st) => st
            .names()?
            .into_iter()
            .filter_map(|n| n.strip_suffix(".json").map(String::from))
            .filter(|id| EnvId::parse(id).is_some())
            .collect(),
        None => Vec::new(),
    };
    ids.sort();
    for id in ids {
        let state = state.as_ref().expect("ids come from the state directory");
        if opts.in_use.contains(&id) {
            report.in_use.push(id);
            continue;
        }
        if !unused_for(state, &id, opts.max_age) {
            report.kept.push(id);
            continue;
        }
        if opts.dry_run {
            report.removed.push(id);
            continue;
        }
        // Hold the env's lease while removing: a build of the same env waits, and an env being
        // built (live lease) is left alone.
        let locks = match &locks {
            Some(l) => l,
            None => &StoreDir::ensure(&layout.uv_root, layout::LOCKS)?,
        };
        let held = Lease::acquire(locks, &layout::lease_name(&id), opts.lease_ttl, Duration::ZERO, || false, |_| {});
        let Ok(Some(_lease)) = held else {
            report.skipped_busy.push(id);
            continue;
        };
        // Re-check under the lease: a materialize may have used it a moment ago.
        if !unused_for(state, &id, opts.max_age) {
            report.kept.push(id);
            continue;
        }
        remove_env(layout, state, envs.as_ref(), &id)?;
        tracing::info!(env = %id, "removed unused env");
        report.removed.push(id);
    }
    if let Some(envs) = &envs {
        report.orphans_removed = sweep_orphans(envs, locks.as_ref(), opts)?;
    }
    if opts.prune_stores && !opts.dry_run {
        prune(layout, opts)?;
    }
    if let Some(max) = opts.uv_cache_max {
        report.cache = Some(super::cache_trim::trim(layout, max, opts.lease_ttl, opts.dry_run)?);
    }
    Ok(report)
}

fn prune(layout: &Layout, opts: &GcOptions) -> Result<(), MaterializeError> {
    if layout.nix_dir.join("store").is_dir() {
        if let Some(np_location) = layout.np_location() {
            let locks = StoreDir::ensure(&layout.nix_dir, layout::NIX_LOCKS)?;
            let _store = Lease::hold(&locks, layout::STORE_LEASE, opts.lease_ttl, Duration::from_secs(3600), |_| {})?;
            let np = Tool::from_env("nix-portable", "NIXUV_NIX_PORTABLE", "nix-portable");
            let args: Vec<OsString> = ["nix", "--extra-experimental-features", "nix-command", "store", "gc"]
                .iter()
                .map(OsString::from)
                .collect();
            np.run(&args, &[("NP_LOCATION", np_location.as_os_str().to_owned())], &[], None)
                .map_err(|source| MaterializeError::Tool { what: "nix store gc".into(), source })?;
        }
    }
    // `uv cache prune` removes in whatever directory it is given: a cache that is a link is refused.
    if StoreDir::open(&layout.uv_root, "cache", false)?.is_some() {
        let locks = StoreDir::ensure(&layout.uv_root, layout::LOCKS)?;
        let _cache = Lease::hold(&locks, layout::UV_CACHE_LEASE, opts.lease_ttl, Duration::from_secs(3600), |_| {})?;
        let uv = Tool::from_env("uv", "NIXUV_UV", "uv");
        let args: Vec<OsString> = vec!["cache".into(), "prune".into()];
        uv.run(&args, &[("UV_CACHE_DIR", layout.uv_cache().into())], &[], None)
            .map_err(|source| MaterializeError::Tool { what: "uv cache prune".into(), source })?;
    }
    Ok(())
}
