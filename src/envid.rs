//! The env id `H`: 16 lower-case hex characters, the first 8 bytes of the SHA-256 of an env's
//! canonical form. This type owns its format (nothing else checks "16 hex") and the paths an env
//! has under its id, in target containers as in the stores. Bottom layer.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::names::{NIX_MOUNT, UV_ROOT};

/// An env id, valid by construction.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EnvId([u8; EnvId::LEN]);

impl EnvId {
    pub const LEN: usize = 16;

    /// The id of a canonical form.
    pub fn of(canonical: &str) -> EnvId {
        let digest = Sha256::digest(canonical.as_bytes());
        let mut out = [0u8; Self::LEN];
        out.copy_from_slice(hex::encode(&digest[..Self::LEN / 2]).as_bytes());
        EnvId(out)
    }

    /// `s` if it is an env id as nixuv writes them.
    pub fn parse(s: &str) -> Option<EnvId> {
        let bytes: [u8; Self::LEN] = s.as_bytes().try_into().ok()?;
        bytes.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)).then_some(EnvId(bytes))
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex is ASCII")
    }

    /// The env's venv (or overlay directory) in target containers: `/nixuv/uv/envs/H`.
    pub fn venv_dir(&self) -> String {
        format!("{UV_ROOT}/envs/{self}")
    }

    /// The env's nix profile in target containers: `/nix/var/nix/profiles/nixuv/H`.
    pub fn profile_dir(&self) -> String {
        format!("{NIX_MOUNT}/var/nix/profiles/nixuv/{self}")
    }

    /// The id of a venv directory (`/nixuv/uv/envs/H`), as a PYTHONPATH entry or VIRTUAL_ENV.
    pub fn of_venv_dir(dir: &str) -> Option<EnvId> {
        dir.strip_prefix(UV_ROOT)?.strip_prefix("/envs/").and_then(EnvId::parse)
    }

    /// The id of a directory nixuv puts on PATH: the venv's or the profile's `bin`.
    pub fn of_bin_dir(dir: &str) -> Option<EnvId> {
        let env_dir = dir.strip_suffix("/bin")?;
        EnvId::of_venv_dir(env_dir).or_else(|| {
            env_dir.strip_prefix(NIX_MOUNT)?.strip_prefix("/var/nix/profiles/nixuv/").and_then(EnvId::parse)
        })
    }
}

impl std::ops::Deref for EnvId {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for EnvId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<std::path::Path> for EnvId {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(self.as_str())
    }
}

impl AsRef<std::ffi::OsStr> for EnvId {
    fn as_ref(&self) -> &std::ffi::OsStr {
        std::ffi::OsStr::new(self.as_str())
    }
}

impl PartialEq<EnvId> for String {
    fn eq(&self, other: &EnvId) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<EnvId> for str {
    fn eq(&self, other: &EnvId) -> bool {
        self == other.as_str()
    }
}

impl fmt::Display for EnvId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for EnvId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq<str> for EnvId {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for EnvId {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl serde::Serialize for EnvId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_and_paths() {
        let id = EnvId::of("nixuv-env-v1\n");
        assert_eq!(id.len(), 16);
        assert_eq!(EnvId::parse(&id), Some(id));
        for bad in
            ["", "0123456789abcde", "0123456789abcdef0", "0123456789ABCDEF", "0123456789abcdeg", "é123456789abcde"]
        {
            assert_eq!(EnvId::parse(bad), None, "{bad:?}");
        }
        assert_eq!(EnvId::of_venv_dir(&id.venv_dir()), Some(id));
        assert_eq!(EnvId::of_bin_dir(&format!("{}/bin", id.venv_dir())), Some(id));
        assert_eq!(EnvId::of_bin_dir(&format!("{}/bin", id.profile_dir())), Some(id));
        assert_eq!(EnvId::of_bin_dir(&id.venv_dir()), None);
        assert_eq!(EnvId::of_venv_dir(&format!("{}/x", id.venv_dir())), None);
        assert_eq!(EnvId::of_bin_dir("/usr/local/bin"), None);
    }
}
