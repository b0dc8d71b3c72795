//! How an [`EnvPlan`] travels from the webhook to the init container: environment variables on
//! `nixuv-init`, written by [`crate::inject`] and read back by `nixuv materialize`. One type on
//! both sides, so the contract is checked by the compiler and a round-trip test.

use crate::envid::EnvId;
use crate::keys::ANN_PYTHON;
use crate::names::{CA_FILE, INIT_NIX_DIR, UV_ROOT};
pub use crate::names::{
    ENV_CA_BUNDLE, ENV_CA_FILE, ENV_EXCLUDE_NEWER, ENV_ID, ENV_INDEX_URL, ENV_NIXPKGS, ENV_NIX_DIR, ENV_PYTHON,
    ENV_PYTHON_DEPS, ENV_PYTHON_MODE, ENV_SECRET_ENV, ENV_SOURCE_BUILDS, ENV_SYSTEM_DEPS, ENV_TOOL_ENV, ENV_UV_ROOT,
};
use crate::plan::deps::{self, Source};
use crate::plan::EnvPlan;
use crate::toolenv::{effective_index, tool_scope, valid_index_url};
use crate::values::{valid_attr_path, valid_python_version, PythonMode};

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
    /// The `caBundle` certificates, when the plan names one: the `nixuv-ca` volume's file.
    pub ca_file: Option<String>,
}

impl EnvSpec {
    pub fn for_plan(plan: &EnvPlan) -> Self {
        Self {
            plan: plan.clone(),
            uv_root: UV_ROOT.into(),
            nix_dir: INIT_NIX_DIR.into(),
            ca_file: plan.ca_bundle.as_ref().map(|_| CA_FILE.into()),
        }
    }

    /// The variables, in a stable order. Lists are newline-separated: no dep can contain one.
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            (ENV_ID, self.plan.id.to_string()),
            (ENV_SYSTEM_DEPS, self.plan.system.join("\n")),
            (ENV_PYTHON_DEPS, self.plan.python.join("\n")),
            (ENV_PYTHON, self.plan.python_version.clone()),
            (ENV_NIXPKGS, self.plan.nixpkgs.clone()),
            (ENV_INDEX_URL, self.plan.index_url.clone()),
            (ENV_UV_ROOT, self.uv_root.clone()),
            (ENV_NIX_DIR, self.nix_dir.clone()),
        ];
        if self.plan.allow_source_builds && self.plan.has_python() {
            env.push((ENV_SOURCE_BUILDS, "allowed".to_string()));
        }
        if let (Some(t), true) = (&self.plan.exclude_newer, self.plan.has_python()) {
            env.push((ENV_EXCLUDE_NEWER, t.clone()));
        }
        if !self.plan.secret_env.is_empty() {
            let refs: Vec<String> = self.plan.secret_env.iter().map(|(k, r)| format!("{k}={r}")).collect();
            env.push((ENV_SECRET_ENV, refs.join(",")));
        }
        if self.plan.is_overlay() {
            env.push((ENV_PYTHON_MODE, PythonMode::Overlay.as_str().to_string()));
        }
        if !self.plan.tool_env.is_empty() {
            let names: Vec<&str> = self.plan.tool_env.iter().map(|(k, _)| k.as_str()).collect();
            env.push((ENV_TOOL_ENV, names.join(",")));
        }
        if let (Some(r), Some(f)) = (&self.plan.ca_bundle, &self.ca_file) {
            env.push((ENV_CA_BUNDLE, r.clone()));
            env.push((ENV_CA_FILE, f.clone()));
        }
        env
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
        let given = req(ENV_ID)?;
        let id = EnvId::parse(&given).ok_or_else(|| bad(ENV_ID, &given, "is not a 16-hex-char env id"))?;
        let lines = |s: String| -> Vec<String> {
            s.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
        };
        let system = lines(get(ENV_SYSTEM_DEPS).unwrap_or_default());
        if let Some(s) = system.iter().find(|s| !valid_attr_path(s)) {
            return Err(bad(ENV_SYSTEM_DEPS, s, "is not a nixpkgs attribute path"));
        }
        let python = lines(get(ENV_PYTHON_DEPS).unwrap_or_default());
        for p in &python {
            let src = Source::Annotation(ANN_PYTHON);
            deps::parse_requirement(p, &src)
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
        let mut tool_env: Vec<(String, String)> = Vec::new();
        for name in get(ENV_TOOL_ENV).unwrap_or_default().split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if tool_scope(name).is_none() || tool_env.iter().any(|(k, _)| k == name) {
                return Err(bad(ENV_TOOL_ENV, name, "is not a tool variable, or is named twice"));
            }
            let value = get(name).ok_or_else(|| bad(ENV_TOOL_ENV, name, "names a variable that is not set"))?;
            tool_env.push((name.to_string(), value));
        }
        tool_env.sort();
        let mut secret_env: Vec<(String, String)> = Vec::new();
        for item in get(ENV_SECRET_ENV).unwrap_or_default().split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let ok = item.split_once('=').filter(|(name, reference)| {
                tool_scope(name).is_some()
                    && !tool_env.iter().chain(&secret_env).any(|(k, _)| k == name)
                    && reference.split_once('/').is_some_and(|(s, k)| {
                        !s.is_empty()
                            && !k.is_empty()
                            && reference
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
                    })
            });
            let Some((name, reference)) = ok else {
                return Err(bad(ENV_SECRET_ENV, item, "is not NAME=secret/key for a tool variable named once"));
            };
            secret_env.push((name.to_string(), reference.to_string()));
        }
        secret_env.sort();
        let allow_source_builds = match get(ENV_SOURCE_BUILDS).as_deref() {
            None | Some("") => false,
            Some("allowed") => true,
            Some(other) => return Err(bad(ENV_SOURCE_BUILDS, other, "is not \"allowed\"")),
        };
        let python_mode = match get(ENV_PYTHON_MODE).as_deref() {
            None | Some("") => PythonMode::Venv,
            Some(v) => PythonMode::parse(v).ok_or_else(|| bad(ENV_PYTHON_MODE, v, "is not \"venv\" or \"overlay\""))?,
        };
        let exclude_newer = get(ENV_EXCLUDE_NEWER).filter(|t| !t.is_empty());
        if let Some(t) = exclude_newer.as_deref().filter(|t| !crate::values::valid_rfc3339(t)) {
            return Err(bad(ENV_EXCLUDE_NEWER, t, "is not an RFC 3339 date-time"));
        }
        let index_url = get(ENV_INDEX_URL).unwrap_or_default();
        let effective = effective_index(tool_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if !valid_index_url(&index_url) || index_url != effective {
            return Err(bad(
                ENV_INDEX_URL,
                &index_url,
                "is not the index uv will use (UV_DEFAULT_INDEX, else UV_INDEX_URL, else PyPI)",
            ));
        }
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
        let ca_bundle = get(ENV_CA_BUNDLE).filter(|r| !r.is_empty());
        if let Some(r) = ca_bundle.as_deref().filter(|r| !crate::values::is_data_reference(r)) {
            return Err(bad(ENV_CA_BUNDLE, r, "is not configmap/key"));
        }
        let ca_file = match ca_bundle {
            Some(_) => Some(abs(ENV_CA_FILE)?),
            None => None,
        };
        Ok(Self {
            plan: EnvPlan {
                id,
                system,
                python,
                python_version,
                nixpkgs,
                index_url,
                tool_env,
                secret_env,
                allow_source_builds,
                exclude_newer,
                python_mode,
                ca_bundle,
            },
            uv_root,
            nix_dir,
            ca_file,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::plan::deps::declared;
    use std::collections::{BTreeMap, HashMap};

    #[test]
    fn round_trip() {
        let ann = BTreeMap::from([
            ("nixuv.io/system-deps".to_string(), "gcc ffmpeg-headless python312Packages.numpy".to_string()),
            ("nixuv.io/python-deps".to_string(), "pandas>=2,<3, requests[socks]; python_version > '3.8'".to_string()),
        ]);
        let plan = EnvPlan::new(&declared(None, Some(&ann)).unwrap(), Config::default().plan_inputs());
        let spec = EnvSpec::for_plan(&plan);
        let env: HashMap<&str, String> = spec.to_env().into_iter().collect();
        let back = EnvSpec::from_env(|k| env.get(k).cloned()).unwrap();
        assert_eq!(back, spec);
        // The id still matches the deps after the trip.
        assert_eq!(EnvId::of(&back.plan.canonical()), back.plan.id);
        // So does an overlay's.
        let mut ann = ann;
        ann.insert("nixuv.io/python-mode".into(), "overlay".into());
        let overlay =
            EnvSpec::for_plan(&EnvPlan::new(&declared(None, Some(&ann)).unwrap(), Config::default().plan_inputs()));
        let env: HashMap<&str, String> = overlay.to_env().into_iter().collect();
        assert_eq!(env[ENV_PYTHON_MODE], "overlay");
        assert_eq!(EnvSpec::from_env(|k| env.get(k).cloned()).unwrap(), overlay);
    }

    #[test]
    fn tampered_env_is_rejected() {
        let plan = EnvPlan::new(&Default::default(), Config::default().plan_inputs());
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
            (ENV_INDEX_URL, "https://pypi.org/simple\npython=six"),
            (ENV_INDEX_URL, "https://other.example/simple"),
            (ENV_TOOL_ENV, "PATH"),
            (ENV_TOOL_ENV, "UV_INDEX"),
            (ENV_CA_BUNDLE, "../ca"),
            (ENV_CA_BUNDLE, "ca bundle/key"),
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

    #[test]
    fn tool_variables_travel_and_bind_the_id() {
        let cfg = Config::from_yaml(
            "initEnv: [{name: UV_DEFAULT_INDEX, value: 'https://mirror.example/simple'}, {name: NIX_CONFIG, value: \"a = 1\\nb = 2\"}, {name: OTHER, value: x}]",
        )
        .unwrap();
        let ann = BTreeMap::from([("nixuv.io/python-deps".to_string(), "six".to_string())]);
        let plan = EnvPlan::new(&declared(None, Some(&ann)).unwrap(), cfg.plan_inputs());
        let mut env: HashMap<&str, String> = EnvSpec::for_plan(&plan).to_env().into_iter().collect();
        assert_eq!(env[ENV_TOOL_ENV], "NIX_CONFIG,UV_DEFAULT_INDEX");
        for e in &cfg.file.init_env {
            env.insert(e.name.as_str(), e.value.clone());
        }
        let back = EnvSpec::from_env(|k| env.get(k).cloned()).unwrap();
        assert_eq!(back.plan, plan);
        assert_eq!(EnvId::of(&back.plan.canonical()), plan.id);
        // Another index in the container's env gives another id, which the materialize refuses.
        env.insert("UV_DEFAULT_INDEX", "https://evil.example/simple".into());
        let err = EnvSpec::from_env(|k| env.get(k).cloned()).unwrap_err();
        assert!(err.to_string().contains(ENV_INDEX_URL), "{err}");
        env.insert(ENV_INDEX_URL, "https://evil.example/simple".into());
        let tampered = EnvSpec::from_env(|k| env.get(k).cloned()).unwrap();
        assert_ne!(EnvId::of(&tampered.plan.canonical()), plan.id);
    }

    #[test]
    fn the_ca_bundle_travels_and_binds_the_id() {
        let cfg = Config::from_yaml("caBundle: {configMap: corp-ca, key: ca.pem}").unwrap();
        let ann = BTreeMap::from([("nixuv.io/python-deps".to_string(), "six".to_string())]);
        let decl = declared(None, Some(&ann)).unwrap();
        let plan = EnvPlan::new(&decl, cfg.plan_inputs());
        assert_ne!(plan.id, EnvPlan::new(&decl, Config::default().plan_inputs()).id);
        let mut env: HashMap<&str, String> = EnvSpec::for_plan(&plan).to_env().into_iter().collect();
        assert_eq!(env[ENV_CA_BUNDLE], "corp-ca/ca.pem");
        assert_eq!(env[ENV_CA_FILE], crate::names::CA_FILE);
        let back = EnvSpec::from_env(|k| env.get(k).cloned()).unwrap();
        assert_eq!(back.plan.id, EnvId::of(&back.plan.canonical()));
        assert_eq!(back.ca_file.as_deref(), Some(crate::names::CA_FILE));
        // Another ConfigMap is another env; a relative file is refused.
        env.insert(ENV_CA_BUNDLE, "other-ca/ca.pem".into());
        let other = EnvSpec::from_env(|k| env.get(k).cloned()).unwrap();
        assert_ne!(EnvId::of(&other.plan.canonical()), plan.id);
        env.insert(ENV_CA_FILE, "ca.crt".into());
        let err = EnvSpec::from_env(|k| env.get(k).cloned()).unwrap_err();
        assert!(err.to_string().contains(ENV_CA_FILE), "{err}");
        // Bad config names the key, and initEnv may not set what caBundle sets.
        for (yaml, key) in [
            ("caBundle: {configMap: Corp_CA, key: ca.pem}", "caBundle.configMap"),
            ("caBundle: {configMap: corp-ca, key: 'a/b'}", "caBundle.key"),
            (
                "caBundle: {configMap: corp-ca, key: ca.pem}\ninitEnv: [{name: SSL_CERT_FILE, value: /x}]",
                "initEnv[0].name",
            ),
        ] {
            let err = Config::from_yaml(yaml).unwrap_err().to_string();
            assert!(err.contains(key), "{yaml}: {err}");
        }
    }
}
