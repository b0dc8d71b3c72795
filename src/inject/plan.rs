//! The env plan: everything the webhook decided about a Pod's env, and everything the init
//! container needs to build it.

use sha2::{Digest, Sha256};

use super::deps::Declared;
use crate::config::Config;

/// Where the `nixuv-uv` volume is mounted, in the init container and in target containers alike
/// (venvs and their interpreter links are not relocatable).
pub const UV_ROOT: &str = "/nixuv/uv";
/// Where the `nixuv-nix` volume is mounted in target containers: store paths are absolute.
pub const NIX_MOUNT: &str = "/nix";
/// The init container's scratch directory (an emptyDir): HOME, TMPDIR and nix-portable's
/// `NP_LOCATION`.
pub const WORK_DIR: &str = "/nixuv/work";
/// Where the `nixuv-nix` volume is mounted in the init container: nix-portable keeps its store at
/// `$NP_LOCATION/.nix-portable/nix/store`, so this is the volume's root seen through nix-portable.
pub const INIT_NIX_DIR: &str = "/nixuv/work/.nix-portable/nix";

/// Version tag of the canonical form below. Changing the form changes every env id, so it is
/// pinned by a golden test and documented in docs/annotations.md.
const CANONICAL_VERSION: &str = "nixuv-env-v1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvPlan {
    /// The env id `H`: 16 hex chars.
    pub id: String,
    /// nixpkgs attribute paths, as declared (order kept).
    pub system: Vec<String>,
    /// Normalised PEP 508 requirements, as declared (order kept).
    pub python: Vec<String>,
    pub python_version: String,
    pub nixpkgs: String,
    pub index_url: String,
    /// The variables of the init container's environment that reach nix or uv (the admin's
    /// `initEnv`), sorted by name: part of the id, so an env built under another index, proxy or
    /// tool option is another env.
    pub tool_env: Vec<(String, String)>,
}

/// Which tool a variable of the init container's environment reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolScope {
    /// uv: `UV_*`.
    Python,
    /// nix-portable and nix: `NP_*`, `NIX_*`.
    System,
    /// Both: where they trust certificates and which proxy they use.
    Both,
}

/// The variables nixuv binds into the env id (and strips from the tools' environment unless the
/// webhook declared them): everything that can change what uv or nix fetch.
pub fn tool_scope(name: &str) -> Option<ToolScope> {
    if name.starts_with("UV_") {
        return Some(ToolScope::Python);
    }
    if name.starts_with("NP_") || name.starts_with("NIX_") {
        return Some(ToolScope::System);
    }
    const BOTH: &[&str] = &[
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "CURL_CA_BUNDLE",
        "REQUESTS_CA_BUNDLE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
    ];
    BOTH.iter().any(|b| b.eq_ignore_ascii_case(name)).then_some(ToolScope::Both)
}

/// An index URL as it may enter the env id and reach uv: `http(s)://` or `file://`, no
/// whitespace or control characters (the id's canonical form is line-based).
pub fn valid_index_url(url: &str) -> bool {
    ["https://", "http://", "file://"].iter().any(|p| url.starts_with(p))
        && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// uv's own default index, used when `initEnv` names none.
pub const DEFAULT_INDEX_URL: &str = "https://pypi.org/simple";

/// The index uv uses given the tool variables: `UV_DEFAULT_INDEX`, else `UV_INDEX_URL`, else
/// uv's default.
pub fn effective_index<'a>(tool_env: impl IntoIterator<Item = (&'a str, &'a str)> + Clone) -> String {
    ["UV_DEFAULT_INDEX", "UV_INDEX_URL"]
        .iter()
        .find_map(|k| tool_env.clone().into_iter().find(|(n, _)| n == k).map(|(_, v)| v.to_string()))
        .unwrap_or_else(|| DEFAULT_INDEX_URL.into())
}

impl EnvPlan {
    pub fn new(declared: &Declared, cfg: &Config) -> Self {
        let mut plan = EnvPlan {
            id: String::new(),
            system: declared.system.iter().map(|d| d.attr.clone()).collect(),
            python: declared.python.iter().map(|d| d.requirement.clone()).collect(),
            python_version: declared.python_version.clone().unwrap_or_else(|| cfg.file.default_python.clone()),
            nixpkgs: cfg.file.nixpkgs.clone(),
            index_url: cfg.index_url.clone(),
            tool_env: cfg.tool_env.clone(),
        };
        plan.id = env_id(&plan.canonical());
        plan
    }

    /// The canonical text the env id hashes: one `key=value` line each, deps sorted, and only the
    /// inputs that affect the env (no nixpkgs ref without system deps, no Python version or index
    /// without Python deps).
    pub fn canonical(&self) -> String {
        let mut out = String::with_capacity(256);
        out.push_str(CANONICAL_VERSION);
        out.push('\n');
        if !self.system.is_empty() {
            out.push_str("nixpkgs=");
            out.push_str(&self.nixpkgs);
            out.push('\n');
            let mut sys: Vec<&str> = self.system.iter().map(String::as_str).collect();
            sys.sort_unstable();
            sys.dedup();
            for s in sys {
                out.push_str("system=");
                out.push_str(s);
                out.push('\n');
            }
            self.push_tool_env(&mut out, "system-env=", ToolScope::System);
        }
        if !self.python.is_empty() {
            out.push_str("python-version=");
            out.push_str(&self.python_version);
            out.push('\n');
            out.push_str("index=");
            out.push_str(&self.index_url);
            out.push('\n');
            let mut py: Vec<&str> = self.python.iter().map(String::as_str).collect();
            py.sort_unstable();
            py.dedup();
            for p in py {
                out.push_str("python=");
                out.push_str(p);
                out.push('\n');
            }
            self.push_tool_env(&mut out, "python-env=", ToolScope::Python);
        }
        out
    }

    /// `key=NAME=<value as a JSON string>` per bound variable of `scope` (or both): a value may
    /// hold newlines (NIX_CONFIG), which JSON escapes, so no value can forge another line.
    fn push_tool_env(&self, out: &mut String, key: &str, scope: ToolScope) {
        for (name, value) in &self.tool_env {
            if matches!(tool_scope(name), Some(s) if s == scope || s == ToolScope::Both) {
                out.push_str(key);
                out.push_str(name);
                out.push('=');
                out.push_str(&serde_json::to_string(value).expect("a string serialises"));
                out.push('\n');
            }
        }
    }

    pub fn has_system(&self) -> bool {
        !self.system.is_empty()
    }
    pub fn has_python(&self) -> bool {
        !self.python.is_empty()
    }

    /// The venv for this env as target containers see it (a symlink published atomically).
    pub fn venv_dir(&self) -> String {
        format!("{UV_ROOT}/envs/{}", self.id)
    }
    /// The nix profile for this env as target containers see it.
    pub fn profile_dir(&self) -> String {
        format!("{NIX_MOUNT}/var/nix/profiles/nixuv/{}", self.id)
    }

    /// The directories put in front of PATH, venv first so its `python` wins.
    pub fn path_prefix(&self) -> String {
        let mut dirs = Vec::with_capacity(2);
        if self.has_python() {
            dirs.push(format!("{}/bin", self.venv_dir()));
        }
        if self.has_system() {
            dirs.push(format!("{}/bin", self.profile_dir()));
        }
        dirs.join(":")
    }
}

/// The first 16 hex chars of the SHA-256 of the canonical form.
pub fn env_id(canonical: &str) -> String {
    let digest = Sha256::digest(canonical.as_bytes());
    hex::encode(&digest[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::deps::declared;
    use std::collections::BTreeMap;

    fn plan(sys: &str, py: &str, version: Option<&str>) -> EnvPlan {
        let mut ann = BTreeMap::from([
            ("nixuv.io/system-deps".to_string(), sys.to_string()),
            ("nixuv.io/python-deps".to_string(), py.to_string()),
        ]);
        if let Some(v) = version {
            ann.insert("nixuv.io/python".into(), v.into());
        }
        EnvPlan::new(&declared(None, Some(&ann)).unwrap(), &Config::default())
    }

    /// Pins the canonical form and the env id across releases: if this test has to change, every
    /// env in every cluster is rebuilt.
    #[test]
    fn golden_env_id() {
        let p = plan("gcc, ffmpeg-headless", "pandas>=2,<3, NumPy==1.26.4", None);
        assert_eq!(
            p.canonical(),
            "nixuv-env-v1\nnixpkgs=github:NixOS/nixpkgs/nixos-25.05\nsystem=ffmpeg-headless\nsystem=gcc\n\
             python-version=3.12\nindex=https://pypi.org/simple\npython=numpy==1.26.4\npython=pandas>=2,<3\n"
        );
        assert_eq!(p.id, env_id(&p.canonical()));
        assert_eq!(p.id, "ac8b910916f3c14b");
    }

    #[test]
    fn order_and_spelling_do_not_matter() {
        let a = plan("gcc ffmpeg", "numpy==1.26.4, pandas", None);
        let b = plan("ffmpeg,\ngcc", "Pandas,numpy == 1.26.4", None);
        assert_eq!(a.id, b.id);
        assert_eq!(a.id.len(), 16);
        assert!(a.id.bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn what_changes_the_id() {
        let base = plan("gcc", "numpy", None);
        assert_ne!(base.id, plan("gcc", "numpy", Some("3.11")).id, "python version");
        assert_ne!(base.id, plan("gcc", "numpy==2", None).id, "requirement");
        assert_ne!(base.id, plan("clang", "numpy", None).id, "system dep");
        // The Python version does not matter without Python deps.
        assert_eq!(plan("gcc", "", None).id, plan("gcc", "", Some("3.11")).id);
    }

    #[test]
    fn tool_variables_change_the_id_of_the_part_they_reach() {
        let with = |env: &[(&str, &str)], sys: &str, py: &str| {
            let mut p = plan(sys, py, None);
            p.tool_env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            env_id(&p.canonical())
        };
        let base = with(&[], "gcc", "numpy");
        assert_ne!(base, with(&[("UV_INDEX", "https://evil.example/simple")], "gcc", "numpy"));
        assert_ne!(base, with(&[("NIX_CONFIG", "substituters = https://evil")], "gcc", "numpy"));
        assert_ne!(base, with(&[("HTTPS_PROXY", "http://proxy:3128")], "gcc", "numpy"));
        // uv's variables do not touch a system-only env, nix's not a Python-only one.
        assert_eq!(with(&[], "gcc", ""), with(&[("UV_INDEX", "x")], "gcc", ""));
        assert_eq!(with(&[], "", "numpy"), with(&[("NP_RUNTIME", "proot")], "", "numpy"));
        // A newline in a value cannot forge a line of the canonical form.
        let mut p = plan("", "idna, six", None);
        p.tool_env = vec![("UV_FIND_LINKS".into(), "x\npython=six".into())];
        assert_eq!(p.canonical().lines().filter(|l| l.starts_with("python=")).count(), 2);
    }

    #[test]
    fn path_prefix_venv_first() {
        let p = plan("gcc", "numpy", None);
        assert_eq!(p.path_prefix(), format!("/nixuv/uv/envs/{0}/bin:/nix/var/nix/profiles/nixuv/{0}/bin", p.id));
        assert_eq!(
            plan("gcc", "", None).path_prefix(),
            format!("/nix/var/nix/profiles/nixuv/{}/bin", plan("gcc", "", None).id)
        );
    }
}
