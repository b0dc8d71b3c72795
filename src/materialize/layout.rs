//! Where things live on the two store volumes. Everything nixuv itself writes (markers, leases,
//! last-use stamps) is under `.nixuv/` on the uv volume and `var/nixuv/` on the nix volume.
//!
//! uv volume (mounted at the same path in the init and app containers):
//! ```text
//! cache/                 UV_CACHE_DIR
//! python/                UV_PYTHON_INSTALL_DIR (uv-managed interpreters)
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
    pub fn uv_cache(&self) -> PathBuf {
        self.uv_root.join("cache")
    }
    pub fn uv_python(&self) -> PathBuf {
        self.uv_root.join("python")
    }
    pub fn envs(&self) -> PathBuf {
        self.uv_root.join("envs")
    }
    pub fn venv_link(&self, id: &str) -> PathBuf {
        self.envs().join(id)
    }
    pub fn state(&self) -> PathBuf {
        self.uv_root.join(".nixuv/envs")
    }
    pub fn marker(&self, id: &str) -> PathBuf {
        self.state().join(format!("{id}.json"))
    }
    pub fn used(&self, id: &str) -> PathBuf {
        self.state().join(format!("{id}.used"))
    }
    pub fn locks(&self) -> PathBuf {
        self.uv_root.join(".nixuv/locks")
    }
    pub fn env_lease(&self, id: &str) -> PathBuf {
        self.locks().join(format!("{id}.lease"))
    }
    pub fn uv_cache_lease(&self) -> PathBuf {
        self.locks().join("uv-cache.lease")
    }
    /// `$NP_LOCATION`: nix-portable keeps its store at `$NP_LOCATION/.nix-portable/nix`.
    pub fn np_location(&self) -> Option<&Path> {
        let parent = self.nix_dir.parent()?;
        (self.nix_dir.file_name()? == "nix" && parent.file_name()? == ".nix-portable")
            .then(|| parent.parent())
            .flatten()
    }
    pub fn profiles(&self) -> PathBuf {
        self.nix_dir.join("var/nix/profiles/nixuv")
    }
    pub fn profile(&self, id: &str) -> PathBuf {
        self.profiles().join(id)
    }
    /// The profile as nix (and app containers) see it.
    pub fn profile_in_store_view(id: &str) -> String {
        format!("/nix/var/nix/profiles/nixuv/{id}")
    }
    pub fn store_lease(&self) -> PathBuf {
        self.nix_dir.join("var/nixuv/locks/store.lease")
    }
}
