//! The env plan: everything the webhook decided about a Pod's env, and everything the init
//! container needs to build it.

pub mod deps;
pub mod options;

use crate::envid::EnvId;
use crate::names::{NIX_MOUNT, UV_ROOT};
use crate::toolenv::{tool_scope, ToolScope};
use crate::values::{PythonMode, PythonVersion};
use deps::Declared;

/// What an env's identity takes from the config besides the Pod's declaration: the few values
/// the plan needs, not the config itself (the init container reads plans, never the config).
#[derive(Debug, Clone, Copy)]
pub struct PlanInputs<'a> {
    pub default_python: &'a PythonVersion,
    pub nixpkgs: &'a str,
    pub index_url: &'a str,
    pub tool_env: &'a [(String, String)],
    /// Tool variables from a Secret: (name, `secret/key`).
    pub secret_env: &'a [(String, String)],
    /// `python.allowSourceBuilds`.
    pub allow_source_builds: bool,
    /// `python.excludeNewer`.
    pub exclude_newer: Option<&'a str>,
    /// `python.mode`.
    pub default_python_mode: PythonMode,
    /// `caBundle` as `configmap/key`.
    pub ca_bundle: Option<&'a str>,
}

/// Version tag of the canonical form below. Changing the form changes every env id, so it is
/// pinned by a golden test and documented in docs/annotations.md.
const CANONICAL_VERSION: &str = "nixuv-env-v1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvPlan {
    /// The env id `H`.
    pub id: EnvId,
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
    /// The tool variables the kubelet takes from a Secret, as (name, `secret/key`), sorted: the id
    /// binds which Secret, never its value (credentials).
    pub secret_env: Vec<(String, String)>,
    /// Whether uv may build from source distributions (else wheels only): it can change what is
    /// installed, so it is part of the id.
    pub allow_source_builds: bool,
    /// Resolve as of this date-time (uv's `--exclude-newer`); part of the id.
    pub exclude_newer: Option<String>,
    /// Venv or overlay: another layout, so another env (in the id only when overlay, so venv ids
    /// stay what they were).
    pub python_mode: PythonMode,
    /// The `caBundle` the tools trust, as `configmap/key`: the reference is part of the id, the
    /// certificates are not (they decide whether a download is trusted, never what it holds).
    pub ca_bundle: Option<String>,
}

impl EnvPlan {
    pub fn new(declared: &Declared, inputs: PlanInputs<'_>) -> Self {
        let mut plan = EnvPlan {
            id: EnvId::of(""),
            system: declared.system.iter().map(|d| d.attr.clone()).collect(),
            python: declared.python.iter().map(|d| d.requirement.clone()).collect(),
            python_version: declared
                .python_version
                .clone()
                .unwrap_or_else(|| inputs.default_python.as_str().to_string()),
            nixpkgs: inputs.nixpkgs.to_string(),
            index_url: inputs.index_url.to_string(),
            tool_env: inputs.tool_env.to_vec(),
            secret_env: inputs.secret_env.to_vec(),
            allow_source_builds: inputs.allow_source_builds,
            exclude_newer: declared.exclude_newer.clone().or_else(|| inputs.exclude_newer.map(String::from)),
            // Without Python deps there is no layout to choose.
            python_mode: match declared.python.is_empty() {
                true => PythonMode::Venv,
                false => declared.python_mode.unwrap_or(inputs.default_python_mode),
            },
            ca_bundle: inputs.ca_bundle.map(String::from),
        };
        plan.id = EnvId::of(&plan.canonical());
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
            push_line(&mut out, "nixpkgs=", &self.nixpkgs);
            push_sorted(&mut out, "system=", &self.system);
            self.push_tool_env(&mut out, "system-env=", ToolScope::System);
            push_scoped(&mut out, "system-secret=", &self.secret_env, ToolScope::System);
        }
        if !self.python.is_empty() {
            push_line(&mut out, "python-version=", &self.python_version);
            push_line(&mut out, "index=", &self.index_url);
            push_sorted(&mut out, "python=", &self.python);
            self.push_tool_env(&mut out, "python-env=", ToolScope::Python);
            push_scoped(&mut out, "python-secret=", &self.secret_env, ToolScope::Python);
            if self.allow_source_builds {
                push_line(&mut out, "source-builds=", "allowed");
            }
            if let Some(t) = &self.exclude_newer {
                push_line(&mut out, "exclude-newer=", t);
            }
            if self.python_mode == PythonMode::Overlay {
                push_line(&mut out, "python-mode=", "overlay");
            }
        }
        if let Some(ca) = &self.ca_bundle {
            push_line(&mut out, "ca-bundle=", ca);
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

    /// The uv flags that decide how this plan's Python deps resolve, the same for the init
    /// container's install and for `preview --resolve`: as of the resolution date
    /// (`--exclude-newer`), and wheels only (`--no-build`: a source build would run the package's
    /// own code with write access to every env of the store) unless `python.allowSourceBuilds`.
    pub fn uv_resolution_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(t) = &self.exclude_newer {
            args.extend(["--exclude-newer".to_string(), t.clone()]);
        }
        if !self.allow_source_builds {
            args.push("--no-build".into());
        }
        args
    }

    pub fn has_system(&self) -> bool {
        !self.system.is_empty()
    }
    pub fn has_python(&self) -> bool {
        !self.python.is_empty()
    }

    pub fn is_overlay(&self) -> bool {
        self.has_python() && self.python_mode == PythonMode::Overlay
    }

    /// The venv (or, in overlay mode, the PYTHONPATH directory) for this env as target containers
    /// see it (a symlink published atomically).
    pub fn venv_dir(&self) -> String {
        self.id.venv_dir()
    }
    /// The nix profile for this env as target containers see it.
    pub fn profile_dir(&self) -> String {
        self.id.profile_dir()
    }

    /// The directories put in front of PATH, venv first so its `python` wins (an overlay's `bin`
    /// holds console scripts only, so the image's `python` still wins there).
    /// Written into one string (this runs for every target container of every new Pod).
    pub fn path_prefix(&self) -> String {
        let mut out = String::with_capacity(160);
        if self.has_python() {
            out.extend([UV_ROOT, "/envs/", &self.id, "/bin"]);
        }
        if self.has_system() {
            if !out.is_empty() {
                out.push(':');
            }
            out.extend([NIX_MOUNT, "/var/nix/profiles/nixuv/", &self.id, "/bin"]);
        }
        out
    }
}

/// `key=NAME=secret/key` per Secret-backed variable of `scope` (or both). Names and references
/// are validated (no newlines), so no line can be forged.
fn push_scoped(out: &mut String, key: &str, vars: &[(String, String)], scope: ToolScope) {
    for (name, reference) in vars {
        if matches!(tool_scope(name), Some(s) if s == scope || s == ToolScope::Both) {
            out.push_str(key);
            out.push_str(name);
            out.push('=');
            out.push_str(reference);
            out.push('\n');
        }
    }
}

fn push_line(out: &mut String, key: &str, value: &str) {
    out.push_str(key);
    out.push_str(value);
    out.push('\n');
}

/// One line per distinct item, sorted: order and repetition do not change the id.
fn push_sorted(out: &mut String, key: &str, items: &[String]) {
    let mut sorted: Vec<&str> = items.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    for item in sorted {
        push_line(out, key, item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::deps::declared;
    use std::collections::BTreeMap;

    fn plan(sys: &str, py: &str, version: Option<&str>) -> EnvPlan {
        let mut ann = BTreeMap::from([
            ("nixuv.io/system-deps".to_string(), sys.to_string()),
            ("nixuv.io/python-deps".to_string(), py.to_string()),
        ]);
        if let Some(v) = version {
            ann.insert("nixuv.io/python".into(), v.into());
        }
        EnvPlan::new(
            &declared(None, Some(&ann)).unwrap(),
            PlanInputs {
                default_python: &PythonVersion::parse("3.12").unwrap(),
                nixpkgs: "github:NixOS/nixpkgs/8fd9daa3db09ced9700431c5b7ad0e8ba199b575",
                index_url: crate::toolenv::DEFAULT_INDEX_URL,
                tool_env: &[],
                secret_env: &[],
                allow_source_builds: false,
                exclude_newer: None,
                default_python_mode: PythonMode::Venv,
                ca_bundle: None,
            },
        )
    }

    /// Pins the canonical form and the env id across releases: if this test has to change, every
    /// env in every cluster is rebuilt.
    #[test]
    fn golden_env_id() {
        let p = plan("gcc, ffmpeg-headless", "pandas>=2,<3, NumPy==1.26.4", None);
        assert_eq!(
            p.canonical(),
            "nixuv-env-v1\nnixpkgs=github:NixOS/nixpkgs/8fd9daa3db09ced9700431c5b7ad0e8ba199b575\nsystem=ffmpeg-headless\nsystem=gcc\n\
             python-version=3.12\nindex=https://pypi.org/simple\npython=numpy==1.26.4\npython=pandas>=2,<3\n"
        );
        assert_eq!(p.id, "238f9abbc854cf1c");
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
        // Overlay is another layout, so another env; venv ids are what they were before modes.
        let mut overlay = plan("gcc", "numpy", None);
        overlay.python_mode = PythonMode::Overlay;
        assert!(overlay.canonical().ends_with("python-mode=overlay\n"));
        assert_ne!(EnvId::of(&overlay.canonical()), base.id);
        assert!(!base.canonical().contains("python-mode"));
    }

    #[test]
    fn tool_variables_change_the_id_of_the_part_they_reach() {
        let with = |env: &[(&str, &str)], sys: &str, py: &str| {
            let mut p = plan(sys, py, None);
            p.tool_env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            EnvId::of(&p.canonical())
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
