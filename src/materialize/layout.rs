//! Where things live on the two store volumes. Everything nixuv itself writes (markers, leases,
//! last-use stamps) is under `.nixuv/` on the uv volume and `var/nixuv/` on the nix volume.
//!
//! uv volume (mounted at the same path in the init and app containers):
//! ```text
//! cache/                 UV_CACHE_DIR
//! python/S/              UV_PYTHON_INSTALL_DIR (uv-managed interpreters), S a digest of where
//!                        they come from (the same for every build with the admin's settings)
//! pyc/T/xx/K.pyc         bytecode of a source whose SHA-256 is K (xx its first two hex), for the
//!                        interpreter tag and magic number T, hard-linked into every venv with it
//! envs/H  -> .H.<nonce>  the published venv: a symlink swapped in atomically
//! envs/.H.<nonce>/       a venv, built in place (venvs are not relocatable) and never renamed
//! .nixuv/envs/H.json     completion marker, written last
//! .nixuv/envs/H.used     last use (mtime)
//! .nixuv/locks/H.lease   build lease; uv-cache.lease serialises uv on the shared cache
//! ```
//! nix volume (`$NP_LOCATION/.nix-portable/nix` in the init container, `/nix` in app containers):
//! ```text
//! store/, var/nix/       nix's own
//! var/nix/profiles/nixuv/H   the env's profile (under nix's profiles dir: a GC root)
//! var/nixuv/locks/store.lease   serialises nix operations on this store
//! ```

use std::path::{Path, PathBuf};

use crate::envid::EnvId;

use super::store::{StoreDir, StoreError};

/// The layout directories, relative to their volume; opened through [`StoreDir`] only.
pub const ENVS: &str = "envs";
pub const STATE: &str = ".nixuv/envs";
pub const LOCKS: &str = ".nixuv/locks";
pub const PROFILES: &str = "var/nix/profiles/nixuv";
pub const NIX_LOCKS: &str = "var/nixuv/locks";
pub const UV_CACHE_LEASE: &str = "uv-cache.lease";
/// Bytecode by source hash, shared by the venvs of the store (see `bytecode`).
pub const PYC: &str = "pyc";
pub const STORE_LEASE: &str = "store.lease";

pub fn marker_name(id: &str) -> String {
    format!("{id}.json")
}
pub fn used_name(id: &str) -> String {
    format!("{id}.used")
}
pub fn lease_name(id: &str) -> String {
    format!("{id}.lease")
}

/// True for the name of a venv directory that nixuv builds for env `id`: `.<id>.<nonce>`, the
/// nonce in an env id's format (16 hex). A
/// published `envs/<id>` link is trusted only when it names exactly this.
pub fn is_venv_name(id: &str, name: &str) -> bool {
    name.strip_prefix('.')
        .and_then(|r| r.strip_prefix(id))
        .and_then(|r| r.strip_prefix('.'))
        .is_some_and(|n| EnvId::parse(n).is_some())
}

#[derive(Debug, Clone)]
pub struct Layout {
    pub uv_root: PathBuf,
    /// The nix volume as this process sees it.
    pub nix_dir: PathBuf,
}

impl Layout {
    pub fn new(uv_root: impl Into<PathBuf>, nix_dir: impl Into<PathBuf>) -> Self {
        Layout { uv_root: uv_root.into(), nix_dir: nix_dir.into() }
    }
    /// A layout directory of the uv volume (see [`StoreDir::open`] for `repair`).
    pub fn uv_dir(&self, rel: &str, repair: bool) -> Result<Option<StoreDir>, StoreError> {
        StoreDir::open(&self.uv_root, rel, repair)
    }
    /// A layout directory of the nix volume.
    pub fn nix_subdir(&self, rel: &str, repair: bool) -> Result<Option<StoreDir>, StoreError> {
        StoreDir::open(&self.nix_dir, rel, repair)
    }
    pub fn uv_cache(&self) -> PathBuf {
        self.uv_root.join("cache")
    }
    pub fn uv_python(&self) -> PathBuf {
        self.uv_root.join("python")
    }
    /// `$NP_LOCATION`: nix-portable keeps its store at `$NP_LOCATION/.nix-portable/nix`.
    pub fn np_location(&self) -> Option<&Path> {
        let parent = self.nix_dir.parent()?;
        (self.nix_dir.file_name()? == "nix" && parent.file_name()? == ".nix-portable")
            .then(|| parent.parent())
            .flatten()
    }
    pub fn profile(&self, id: &str) -> PathBuf {
        self.nix_dir.join(PROFILES).join(id)
    }
    /// The profile as nix (and app containers) see it.
    pub fn profile_in_store_view(id: &str) -> String {
        format!("/nix/var/nix/profiles/nixuv/{id}")
    }
}
