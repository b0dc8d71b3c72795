//! `nixuv gc`: removes envs not used for `--max-age`, never one whose build lease is live, then
//! lets nix and uv free what nothing references any more.

use std::ffi::OsString;
use std::fs;
use std::path::Path;
use std::time::Duration;

use super::layout::Layout;
use super::lease::{self, age, Lease};
use super::tool::Tool;
use super::{io, MaterializeError};

#[derive(Debug, Clone)]
pub struct GcOptions {
    pub max_age: Duration,
    pub lease_ttl: Duration,
    pub dry_run: bool,
    /// Run `nix store gc` (through nix-portable) and `uv cache prune` after removing envs.
    pub prune_stores: bool,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub removed: Vec<String>,
    pub kept: Vec<String>,
    pub skipped_busy: Vec<String>,
    pub orphans_removed: usize,
}

/// Whether the env's last use (the `.used` stamp, else the marker's own time) is over `max_age` ago.
fn unused_for(layout: &Layout, id: &str, max_age: Duration) -> bool {
    age(&layout.used(id)).or_else(|| age(&layout.marker(id))).is_some_and(|a| a > max_age)
}

fn remove_env(layout: &Layout, id: &str) -> Result<(), MaterializeError> {
    // The marker first: from here on a materialize rebuilds instead of trusting what follows.
    let marker = layout.marker(id);
    if let Err(e) = fs::remove_file(&marker) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(io(&marker)(e));
        }
    }
    let link = layout.venv_link(id);
    if let Ok(target) = fs::read_link(&link) {
        let _ = fs::remove_file(&link);
        let dir = layout.envs().join(target);
        if dir.starts_with(layout.envs()) {
            fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
    }
    if let Ok(entries) = fs::read_dir(layout.profiles()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == id || (name.starts_with(&format!("{id}-")) && name.ends_with("-link")) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    let _ = fs::remove_file(layout.used(id));
    Ok(())
}

pub fn gc(layout: &Layout, opts: &GcOptions) -> Result<GcReport, MaterializeError> {
    let mut report = GcReport::default();
    let state = layout.state();
    let ids: Vec<String> = match fs::read_dir(&state) {
        Ok(rd) => rd
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".json")).map(String::from))
            .filter(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io(&state)(e)),
    };
    let mut ids = ids;
    ids.sort();
    for id in ids {
        if !unused_for(layout, &id, opts.max_age) {
            report.kept.push(id);
            continue;
        }
        if opts.dry_run {
            report.removed.push(id);
            continue;
        }
        // Hold the env's lease while removing: a build of the same env waits, and an env being
        // built (live lease) is left alone.
        let held = Lease::acquire(&layout.env_lease(&id), opts.lease_ttl, Duration::ZERO, || false, |_| {});
        let Ok(Some(_lease)) = held else {
            report.skipped_busy.push(id);
            continue;
        };
        // Re-check under the lease: a materialize may have used it a moment ago.
        if !unused_for(layout, &id, opts.max_age) {
            report.kept.push(id);
            continue;
        }
        remove_env(layout, &id)?;
        tracing::info!(env = %id, "removed unused env");
        report.removed.push(id);
    }
    // Build directories that were never published (a build killed half-way), once their lease is
    // dead and they are older than two lease lifetimes.
    if let Ok(rd) = fs::read_dir(layout.envs()) {
        let published: Vec<std::path::PathBuf> = fs::read_dir(layout.envs())
            .map(|r| r.flatten().filter_map(|e| fs::read_link(e.path()).ok()).collect())
            .unwrap_or_default();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix('.') else { continue };
            let id = rest.split('.').next().unwrap_or("");
            let old = age(&e.path()).is_some_and(|a| a > opts.lease_ttl * 2);
            if !old
                || published.iter().any(|p| p == Path::new(&name))
                || lease::is_held(&layout.env_lease(id), opts.lease_ttl)
            {
                continue;
            }
            if !opts.dry_run {
                let p = e.path();
                let res = if p.is_dir() && !p.is_symlink() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
                res.map_err(io(&p))?;
            }
            report.orphans_removed += 1;
        }
    }
    if opts.prune_stores && !opts.dry_run {
        prune(layout, opts)?;
    }
    Ok(report)
}

fn prune(layout: &Layout, opts: &GcOptions) -> Result<(), MaterializeError> {
    if layout.nix_dir.join("store").is_dir() {
        if let Some(np_location) = layout.np_location() {
            let _store = Lease::hold(&layout.store_lease(), opts.lease_ttl, Duration::from_secs(3600), |_| {})?;
            let np = Tool::from_env("nix-portable", "NIXUV_NIX_PORTABLE", "nix-portable");
            let args: Vec<OsString> = ["nix", "--extra-experimental-features", "nix-command", "store", "gc"]
                .iter()
                .map(OsString::from)
                .collect();
            np.run(&args, &[("NP_LOCATION", np_location.as_os_str().to_owned())], &[], None)
                .map_err(|source| MaterializeError::Tool { what: "nix store gc".into(), source })?;
        }
    }
    if layout.uv_cache().is_dir() {
        let _cache = Lease::hold(&layout.uv_cache_lease(), opts.lease_ttl, Duration::from_secs(3600), |_| {})?;
        let uv = Tool::from_env("uv", "NIXUV_UV", "uv");
        let args: Vec<OsString> = vec!["cache".into(), "prune".into()];
        uv.run(&args, &[("UV_CACHE_DIR", layout.uv_cache().into())], &[], None)
            .map_err(|source| MaterializeError::Tool { what: "uv cache prune".into(), source })?;
    }
    Ok(())
}
