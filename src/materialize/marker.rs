//! The completion marker: what an env's build recorded, written last, and the warm-path check
//! that trusts an env only when its marker, venv link and profile all say it is this env.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::installed;
use super::layout::{self, Layout};
use super::store::{Contents, Kind, StoreDir};
use crate::envspec::EnvSpec;

/// The completion marker: what was built, written last.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Marker {
    pub env: String,
    pub system: Vec<String>,
    pub python: Vec<String>,
    pub python_version: String,
    pub nixpkgs: String,
    /// The venv directory under `envs/` that `envs/H` points at, if there are Python deps.
    pub venv: Option<String>,
    pub built_at_unix: u64,
    pub build_seconds: f64,
    /// What was installed (absent in markers of earlier releases).
    #[serde(default)]
    pub lock: installed::Lock,
    /// Venv or overlay (absent in markers of earlier releases: venv).
    #[serde(default)]
    pub python_mode: crate::values::PythonMode,
    /// `salt:digest` of the values of the tool variables taken from a Secret, when there are
    /// some: the id binds which Secret, never its value, so a build under changed values is
    /// detected here and redone (see [`secrets_digest`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<String>,
}

/// `salt:digest`: the salted SHA-256 of the names and values of the env's Secret-sourced tool
/// variables as this process has them. Salted, so that the store (readable by every Pod of the
/// namespace) does not give a credential's plain hash away.
pub(super) fn secrets_digest(spec: &EnvSpec, salt: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    for (name, _) in &spec.plan.secret_env {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(std::env::var_os(name).unwrap_or_default().as_encoded_bytes());
        h.update([0]);
    }
    format!("{salt}:{}", hex::encode(h.finalize()))
}

/// The most of a marker that is read: a real one is well under 64 KiB.
const MARKER_CAP: u64 = 1 << 20;

/// The env's completion marker, if it is a well-formed one for `id`. A marker that is not a
/// regular file, too large or unreadable is malformed: treated as absent (so the env is rebuilt)
/// and said so.
pub(crate) fn read_marker(state: &StoreDir, id: &str) -> Option<Marker> {
    let name = layout::marker_name(id);
    match state.read_small(&name, MARKER_CAP) {
        Ok(Contents::Bytes(b)) => match serde_json::from_slice::<Marker>(&b) {
            Ok(m) if m.env == id => Some(m),
            _ => {
                tracing::warn!(env = %id, marker = %state.entry_path(&name).display(), "marker is not a marker of this env; rebuilding");
                None
            }
        },
        Ok(Contents::Malformed(why)) => {
            tracing::warn!(env = %id, marker = %state.entry_path(&name).display(), "marker {why}; treating the env as not built");
            None
        }
        _ => None,
    }
}

/// Follows a profile symlink chain whose targets are `/nix/...` paths (as nix sees them) inside
/// the nix volume as this process sees it. A hop that leaves `/nix` is refused: the env would not
/// resolve inside an app container's mounts, and nixuv never made such a link.
fn store_link_resolves(nix_dir: &Path, link: &Path) -> bool {
    resolve_in_store(nix_dir, link).is_some()
}

/// The directory in the nix store (as this process sees the volume) that a profile link chain
/// ends at; `None` if a hop leaves `/nix` or it ends anywhere else.
pub fn resolve_in_store(nix_dir: &Path, link: &Path) -> Option<PathBuf> {
    let mut cur = link.to_path_buf();
    for _ in 0..16 {
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {}
            Ok(m) => return (m.is_dir() && cur.starts_with(nix_dir.join("store"))).then_some(cur),
            Err(_) => return None,
        }
        let t = fs::read_link(&cur).ok()?;
        if t.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return None;
        }
        cur = match t.strip_prefix("/nix") {
            Ok(rest) => nix_dir.join(rest),
            Err(_) if t.is_absolute() => return None,
            Err(_) => cur.parent().unwrap_or(Path::new("/")).join(t),
        }
    }
    None
}

/// The warm-path check: a marker that records exactly this request's deps, a venv link naming a
/// venv nixuv built for this env (a plain `.H.<nonce>` directory of `envs/`), and a profile
/// resolving inside the nix store. Anything else is not ready, whoever wrote it.
pub fn is_complete(layout: &Layout, spec: &EnvSpec) -> bool {
    let id = &spec.plan.id;
    let Ok(Some(state)) = layout.uv_dir(layout::STATE, false) else { return false };
    let Some(m) = read_marker(&state, id) else { return false };
    let p = &spec.plan;
    let same_request = m.system == p.system
        && m.python == p.python
        && (!p.has_python() || (m.python_version == p.python_version && m.python_mode == p.python_mode))
        && (!p.has_system() || m.nixpkgs == p.nixpkgs);
    if !same_request {
        tracing::warn!(env = %id, "marker records other dependencies than this env's; rebuilding");
        return false;
    }
    let same_secrets = p.secret_env.is_empty()
        || m.secrets
            .as_deref()
            .is_some_and(|s| s.split_once(':').is_some_and(|(salt, _)| secrets_digest(spec, salt) == s));
    if !same_secrets {
        let names: Vec<&str> = p.secret_env.iter().map(|(n, _)| n.as_str()).collect();
        tracing::warn!(
            env = %id,
            "the values of the tool variables from Secrets ({}) are not those the env was built with; rebuilding",
            names.join(", ")
        );
        return false;
    }
    let python_ok = !p.has_python()
        || m.venv.as_deref().is_some_and(|v| {
            let Ok(Some(envs)) = layout.uv_dir(layout::ENVS, false) else { return false };
            layout::is_venv_name(id, v)
                && envs.read_link(id).is_some_and(|t| t == Path::new(v))
                && envs.subdir(v).is_some_and(|venv| venv.kind("bin") == Kind::Dir)
        });
    let system_ok = !p.has_system() || store_link_resolves(&layout.nix_dir, &layout.profile(id));
    python_ok && system_ok
}
