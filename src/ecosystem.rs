//! The ecosystems nixuv installs from (system packages through nix, Python packages through uv)
//! and the kinds of store a Pod's env can live in. Each ecosystem has its own store volume, mount
//! paths, declaration keys and claim; everything that used to be written once for nix and once for
//! uv iterates [`Ecosystem::ALL`] or holds a [`PerEcosystem`], so a third ecosystem, or a new
//! [`StoreKind`], is found by following the compiler's errors. Bottom layer.

use crate::keys::{ANN_PYTHON, ANN_SYSTEM, LABEL_PYTHON_PREFIX, LABEL_SYSTEM_PREFIX};
use crate::names::{INIT_NIX_DIR, NIX_MOUNT, UV_ROOT, VOL_CA, VOL_NIX, VOL_TMP, VOL_UV};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ecosystem {
    /// nixpkgs attributes, realised by nix-portable into a nix store.
    System,
    /// PEP 508 requirements, installed by uv into a venv.
    Python,
}

impl Ecosystem {
    /// In the order their volumes, mounts and variables appear in a patch.
    pub const ALL: [Ecosystem; 2] = [Ecosystem::System, Ecosystem::Python];

    /// The Pod volume of this ecosystem's store.
    pub fn volume(self) -> &'static str {
        match self {
            Ecosystem::System => VOL_NIX,
            Ecosystem::Python => VOL_UV,
        }
    }

    /// Where app containers mount the store: nix store paths are absolute (`/nix`); venvs are not
    /// relocatable, so the uv volume is at the same path everywhere.
    pub fn target_mount(self) -> &'static str {
        match self {
            Ecosystem::System => NIX_MOUNT,
            Ecosystem::Python => UV_ROOT,
        }
    }

    /// Where the init container mounts the store (nix-portable sees its store under its own
    /// `NP_LOCATION`).
    pub fn init_mount(self) -> &'static str {
        match self {
            Ecosystem::System => INIT_NIX_DIR,
            Ecosystem::Python => UV_ROOT,
        }
    }

    /// The annotation listing this ecosystem's deps.
    pub fn deps_annotation(self) -> &'static str {
        match self {
            Ecosystem::System => ANN_SYSTEM,
            Ecosystem::Python => ANN_PYTHON,
        }
    }

    /// The prefix of the labels that declare one dep each.
    pub fn label_prefix(self) -> &'static str {
        match self {
            Ecosystem::System => LABEL_SYSTEM_PREFIX,
            Ecosystem::Python => LABEL_PYTHON_PREFIX,
        }
    }

    /// The ecosystem whose store volume is `name`.
    pub fn of_volume(name: &str) -> Option<Ecosystem> {
        Ecosystem::ALL.into_iter().find(|e| e.volume() == name)
    }
}

/// One value per ecosystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PerEcosystem<T> {
    pub system: T,
    pub python: T,
}

impl<T> PerEcosystem<T> {
    pub fn from_fn(mut f: impl FnMut(Ecosystem) -> T) -> Self {
        PerEcosystem { system: f(Ecosystem::System), python: f(Ecosystem::Python) }
    }

    pub fn get(&self, e: Ecosystem) -> &T {
        match e {
            Ecosystem::System => &self.system,
            Ecosystem::Python => &self.python,
        }
    }

    /// (ecosystem, value) in [`Ecosystem::ALL`]'s order.
    pub fn iter(&self) -> impl Iterator<Item = (Ecosystem, &T)> {
        Ecosystem::ALL.into_iter().map(move |e| (e, self.get(e)))
    }
}

impl<T> std::ops::Index<Ecosystem> for PerEcosystem<T> {
    type Output = T;
    fn index(&self, e: Ecosystem) -> &T {
        self.get(e)
    }
}

/// The kind of store an ecosystem's volume is, for one Pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreKind {
    /// Per Pod: nothing shared, the env is built by this Pod alone (`storage.mode: emptyDir`, or
    /// the namespace's claim is missing or cannot bind).
    EmptyDir,
    /// The namespace's ReadWriteMany claim (`storage.nixClaim` / `storage.uvClaim`), shared by
    /// the namespace's Pods and written by their nixuv-init.
    Claim,
}

/// Whether `name` is a volume nixuv adds: a store's, the init container's scratch space, or its
/// `caBundle`.
pub fn is_nixuv_volume(name: &str) -> bool {
    Ecosystem::of_volume(name).is_some() || name == VOL_TMP || name == VOL_CA
}
