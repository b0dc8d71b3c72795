//! `nixuv envs`: what a store holds, env by env — its declaration, the recorded lock, its size,
//! when it was built and last used, and whether it is ready, being built (and by whom), or a build
//! directory left behind. Reads the store as gc does: through no-follow directory handles.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::installed::Lock;
use super::layout::{self, Layout};
use super::lease;
use super::store::{self, Kind, StoreDir};
use super::{read_marker, resolve_in_store, MaterializeError};
use crate::envid::EnvId;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvInfo {
    pub id: String,
    /// `ready`, `building` (a live build lease), `incomplete` (a marker whose venv or profile is
    /// gone) or `abandoned` (a build directory no env points at, its lease dead).
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    pub system: Vec<String>,
    pub python: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub python_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<Lock>,
    /// Bytes of the venv and the nix store paths, each file counted once even where it is
    /// hard-linked several times (uv links venv files from its cache: those bytes are shared with
    /// the cache and with other envs).
    pub bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub venv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub built_at_unix: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_unix: Option<u64>,
}

/// At most this many entries are looked at for one env's size (a numpy + pandas venv has ~10,000
/// files): a planted tree of millions cannot make `envs list` run for ever.
const MAX_ENTRIES: usize = 1_000_000;

/// Bytes of the regular files under `dir`, each inode once: every directory opened without
/// following a link (a directory swapped for a link mid-walk is not entered), nothing opened
/// for reading (a FIFO cannot block it), at most [`MAX_ENTRIES`] entries.
fn disk_bytes(dir: Option<StoreDir>, seen: &mut HashSet<(u64, u64)>) -> u64 {
    let mut total = 0;
    let mut visited = 0;
    let mut stack: Vec<StoreDir> = dir.into_iter().collect();
    while let Some(d) = stack.pop() {
        for name in d.names().unwrap_or_default() {
            visited += 1;
            if visited > MAX_ENTRIES {
                return total;
            }
            match d.kind(&name) {
                Kind::Dir => stack.extend(d.subdir(&name)),
                Kind::File => {
                    if let Some((dev, ino, len)) = d.file_identity(&name) {
                        if seen.insert((dev, ino)) {
                            total += len;
                        }
                    }
                }
                _ => {}
            }
        }
    }
    total
}

/// The directory of a nix store path named in a marker (`/nix/store/<name>`), opened in the
/// store without following links; anything else (a planted `/nix/../etc`) is `None`.
fn store_path_dir(layout: &Layout, path: &str) -> Option<StoreDir> {
    let name = path.strip_prefix("/nix/store/")?;
    if !store::plain_name(name) {
        return None;
    }
    StoreDir::open(&layout.nix_dir, "store", false).ok()??.subdir(name)
}

fn unix(age: Option<Duration>) -> Option<u64> {
    let t = SystemTime::now().checked_sub(age?)?;
    t.duration_since(SystemTime::UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// Every env of the store at `layout`, sorted by id.
pub fn list(layout: &Layout, lease_ttl: Duration) -> Result<Vec<EnvInfo>, MaterializeError> {
    let state = layout.uv_dir(layout::STATE, false)?;
    let envs = layout.uv_dir(layout::ENVS, false)?;
    let locks = layout.uv_dir(layout::LOCKS, false)?;
    let mut ids: Vec<String> = Vec::new();
    for dir in [&state, &locks].into_iter().flatten() {
        for n in dir.names()? {
            if let Some(id) =
                n.strip_suffix(".json").or_else(|| n.strip_suffix(".lease")).filter(|i| EnvId::parse(i).is_some())
            {
                ids.push(id.to_string());
            }
        }
    }
    ids.sort();
    ids.dedup();
    let mut out = Vec::new();
    let mut claimed: Vec<String> = Vec::new();
    for id in &ids {
        let marker = state.as_ref().and_then(|s| read_marker(s, id));
        let building = locks.as_ref().is_some_and(|l| lease::is_held(l, &layout::lease_name(id), lease_ttl));
        let holder = building.then(|| locks.as_ref().map(|l| lease::holder(l, &layout::lease_name(id)))).flatten();
        let link = envs.as_ref().and_then(|e| e.read_link(id)).and_then(|t| t.to_str().map(String::from));
        if let Some(l) = &link {
            claimed.push(l.clone());
        }
        let mut seen = HashSet::new();
        let mut bytes = 0;
        let venv_ok = match (&marker, &link) {
            (Some(m), Some(l)) if m.venv.as_deref() == Some(l.as_str()) && layout::is_venv_name(id, l) => {
                let venv = envs.as_ref().and_then(|e| e.subdir(l));
                let ok = venv.is_some();
                bytes += disk_bytes(venv, &mut seen);
                ok
            }
            (Some(m), _) => m.python.is_empty(),
            _ => false,
        };
        let profile = resolve_in_store(&layout.nix_dir, &layout.profile(id));
        let nix_ok = marker.as_ref().is_some_and(|m| m.system.is_empty()) || profile.is_some();
        if let Some(m) = &marker {
            for p in &m.lock.nix {
                bytes += disk_bytes(store_path_dir(layout, p), &mut seen);
            }
        }
        let state_name = match (&marker, building) {
            (_, true) => "building",
            (Some(_), false) if venv_ok && nix_ok => "ready",
            (Some(_), false) => "incomplete",
            (None, false) => continue,
        };
        let used = state.as_ref().and_then(|s| s.age(layout::used_name(id)));
        out.push(EnvInfo {
            id: id.clone(),
            state: state_name,
            holder,
            system: marker.as_ref().map(|m| m.system.clone()).unwrap_or_default(),
            python: marker.as_ref().map(|m| m.python.clone()).unwrap_or_default(),
            python_version: marker.as_ref().filter(|m| !m.python.is_empty()).map(|m| m.python_version.clone()),
            lock: marker.as_ref().map(|m| m.lock.clone()),
            bytes,
            venv: link,
            built_at_unix: marker.as_ref().map(|m| m.built_at_unix),
            build_seconds: marker.as_ref().map(|m| m.build_seconds),
            last_used_unix: unix(used),
        });
    }
    // Build directories nothing points at and whose lease is dead: left behind by a killed build.
    if let Some(envs) = &envs {
        for n in envs.names()? {
            let Some((id, tail)) = n.strip_prefix('.').and_then(|r| r.split_once('.')) else { continue };
            let live = locks.as_ref().is_some_and(|l| lease::is_held(l, &layout::lease_name(id), lease_ttl));
            if EnvId::parse(id).is_none()
                || EnvId::parse(tail).is_none()
                || claimed.contains(&n)
                || live
                || envs.kind(&n) != Kind::Dir
            {
                continue;
            }
            let mut seen = HashSet::new();
            out.push(EnvInfo {
                id: id.to_string(),
                state: "abandoned",
                holder: None,
                system: Vec::new(),
                python: Vec::new(),
                python_version: None,
                lock: None,
                bytes: disk_bytes(envs.subdir(&n), &mut seen),
                venv: Some(n.clone()),
                built_at_unix: None,
                build_seconds: None,
                last_used_unix: unix(envs.age(&n)),
            });
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id).then(a.state.cmp(b.state)));
    Ok(out)
}
