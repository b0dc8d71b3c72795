//! How an [`EnvPlan`] travels from the webhook to the init container: environment variables on
//! `nixuv-init`, written by [`crate::inject`] and read back by `nixuv materialize`. One type on
//! both sides, so the contract is checked by the compiler and a round-trip test.

use crate::inject::deps::{valid_attr_path, valid_python_version};
use crate::inject::plan::{EnvPlan, INIT_NIX_DIR, UV_ROOT};

pub const ENV_ID: &str = "NIXUV_ENV";
pub const ENV_SYSTEM_DEPS: &str = "NIXUV_SYSTEM_DEPS";
pub const ENV_PYTHON_DEPS: &str = "NIXUV_PYTHON_DEPS";
pub const ENV_PYTHON: &str = "NIXUV_PYTHON";
pub const ENV_NIXPKGS: &str = "NIXUV_NIXPKGS";
pub const ENV_INDEX_URL: &str = "NIXUV_INDEX_URL";
pub const ENV_UV_ROOT: &str = "NIXUV_UV_ROOT";
pub const ENV_NIX_DIR: &str = "NIXUV_NIX_DIR";

/// Variables that `nixuv materialize` sets for the tools itself, from the store layout; an admin's
/// `initEnv` may not override them.
pub const FIXED_TOOL_ENV: &[&str] =
    &["HOME", "TMPDIR", "UV_CACHE_DIR", "UV_PYTHON_INSTALL_DIR", "UV_LINK_MODE", "NP_LOCATION", "VIRTUAL_ENV"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvSpecError {
    #[error("environment variable {0} is not set")]
    Missing(&'static str),
    #[error("environment variable {name}: {value:?} {reason}")]
    Invalid { name: &'static str, value: String, reason: &'static str },
}

/// What the init container is asked to build, and where the stores are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvSpec {
    pub plan: EnvPlan,
    /// The `nixuv-uv` volume (same path as in target containers).
    pub uv_root: String,
    /// The `nixuv-nix` volume as the init container sees it: `$NP_LOCATION/.nix-portable/nix`.
    pub nix_dir: String,
}

impl EnvSpec {
    pub fn for_plan(plan: &EnvPlan) -> Self {
        Self { plan: plan.clone(), uv_root: UV_ROOT.into(), nix_dir: INIT_NIX_DIR.into() }
    }

    /// The variables, in a stable order. Lists are newline-separated: no dep can contain one.
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        vec![
            (ENV_ID, self.plan.id.clone()),
            (ENV_SYSTEM_DEPS, self.plan.system.join("\n")),
            (ENV_PYTHON_DEPS, self.plan.python.join("\n")),
            (ENV_PYTHON, self.plan.python_version.clone()),
            (ENV_NIXPKGS, self.plan.nixpkgs.clone()),
            (ENV_INDEX_URL, self.plan.index_url.clone()),
            (ENV_UV_ROOT, self.uv_root.clone()),
            (ENV_NIX_DIR, self.nix_dir.clone()),
        ]
    }

    /// Reads the spec back and re-validates everything that will reach a tool's argument vector
    /// or a path: the init container's env can be edited by anyone who can create Pods.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, EnvSpecError> {
        let req = |name: &'static str| get(name).ok_or(EnvSpecError::Missing(name));
        let bad = |name: &'static str, value: &str, reason: &'static str| EnvSpecError::Invalid {
            name,
            value: value.to_string(),
            reason,
        };
        let id = req(ENV_ID)?;
        if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(bad(ENV_ID, &id, "is not a 16-hex-char env id"));
        }
        let lines = |s: String| -> Vec<String> {
            s.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
        };
        let system = lines(get(ENV_SYSTEM_DEPS).unwrap_or_default());
        if let Some(s) = system.iter().find(|s| !valid_attr_path(s)) {
            return Err(bad(ENV_SYSTEM_DEPS, s, "is not a nixpkgs attribute path"));
        }
        let python = lines(get(ENV_PYTHON_DEPS).unwrap_or_default());
        for p in &python {
            let src = crate::inject::deps::Source::Annotation(crate::inject::ANN_PYTHON);
            crate::inject::deps::parse_requirement(p, &src)
                .map_err(|_| bad(ENV_PYTHON_DEPS, p, "is not an allowed PEP 508 requirement"))?;
        }
        let python_version = req(ENV_PYTHON)?;
        if !valid_python_version(&python_version) {
            return Err(bad(ENV_PYTHON, &python_version, "is not a Python version"));
        }
        let nixpkgs = req(ENV_NIXPKGS)?;
        if nixpkgs.is_empty()
            || nixpkgs.starts_with('-')
            || nixpkgs.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad(ENV_NIXPKGS, &nixpkgs, "is not a flake reference"));
        }
        let index_url = get(ENV_INDEX_URL).unwrap_or_default();
        let abs = |name: &'static str| -> Result<String, EnvSpecError> {
            let v = req(name)?;
            let p = std::path::Path::new(&v);
            if !p.is_absolute() || p.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                return Err(bad(name, &v, "is not an absolute path without `..`"));
            }
            Ok(v)
        };
        let uv_root = abs(ENV_UV_ROOT)?;
        let nix_dir = abs(ENV_NIX_DIR)?;
        Ok(Self { plan: EnvPlan { id, system, python, python_version, nixpkgs, index_url }, uv_root, nix_dir })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::inject::deps::declared;
    use std::collections::{BTreeMap, HashMap};

    #[test]
    fn round_trip() {
        let ann = BTreeMap::from([
            ("nixuv.io/system-deps".to_string(), "gcc ffmpeg-headless python312Packages.numpy".to_string()),
            ("nixuv.io/python-deps".to_string(), "pandas>=2,<3, requests[socks]; python_version > '3.8'".to_string()),
        ]);
        let plan = EnvPlan::new(&declared(None, Some(&ann)).unwrap(), &Config::default());
        let spec = EnvSpec::for_plan(&plan);
        let env: HashMap<&str, String> = spec.to_env().into_iter().collect();
        let back = EnvSpec::from_env(|k| env.get(k).cloned()).unwrap();
        assert_eq!(back, spec);
        // The id still matches the deps after the trip.
        assert_eq!(crate::inject::plan::env_id(&back.plan.canonical()), back.plan.id);
    }

    #[test]
    fn tampered_env_is_rejected() {
        let plan = EnvPlan::new(&Default::default(), &Config::default());
        let good: HashMap<&str, String> = EnvSpec::for_plan(&plan).to_env().into_iter().collect();
        let cases: &[(&str, &str)] = &[
            (ENV_ID, "../../etc"),
            (ENV_SYSTEM_DEPS, "gcc\n--option sandbox false"),
            (ENV_PYTHON_DEPS, "--index-url=http://evil"),
            (ENV_PYTHON_DEPS, "foo @ file:///etc/passwd"),
            (ENV_PYTHON, "3.12; rm -rf /"),
            (ENV_NIXPKGS, "--impure"),
            (ENV_UV_ROOT, "relative/dir"),
            (ENV_NIX_DIR, "/nixuv/../etc"),
        ];
        for (name, value) in cases {
            let mut env = good.clone();
            env.insert(name, value.to_string());
            let err = EnvSpec::from_env(|k| env.get(k).cloned()).expect_err(name);
            assert!(err.to_string().contains(name), "{err}");
        }
        let mut env = good.clone();
        env.remove(ENV_ID);
        assert_eq!(EnvSpec::from_env(|k| env.get(k).cloned()), Err(EnvSpecError::Missing(ENV_ID)));
    }
}
