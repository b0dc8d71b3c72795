//! `nixuv preview --resolve`: what would fail in the init container, found before submit. For
//! each distinct env of a manifest, its Python deps are resolved with uv against the configured
//! index with the flags the init container uses (wheels only unless `python.allowSourceBuilds`,
//! the resolution date, the Python version, Linux), its Python version is checked against the
//! interpreters the init image carries, and each system dep is evaluated in the pinned nixpkgs
//! with nix. Each failure names the dep and the fix; what cannot be checked from here (no uv or
//! nix, an unreachable nixpkgs) is said, not failed.

use std::ffi::OsString;
use std::path::Path;

use crate::plan::EnvPlan;
use crate::values::PythonVersion;

/// The init image's interpreters: `PYTHON_MINORS` of the versions the image is built from.
const VERSIONS_ENV: &str = include_str!("../deploy/images/versions.env");

/// The Python minor versions the init image carries.
pub fn image_pythons() -> Vec<&'static str> {
    VERSIONS_ENV
        .lines()
        .find_map(|l| l.strip_prefix("PYTHON_MINORS="))
        .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default()
}

/// One thing that would fail, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The dep (or `python X`) it is about.
    pub item: String,
    pub problem: String,
    pub fix: String,
}

/// What one env's check found: failures, and what could not be checked (and why).
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub unchecked: Vec<String>,
}

/// The tools, located as `nixuv materialize` locates them (`NIXUV_UV`; `NIXUV_NIX`, else `nix`).
pub struct Tools {
    pub uv: OsString,
    pub nix: OsString,
}

impl Tools {
    pub fn from_env() -> Self {
        let get = |var: &str, default: &str| std::env::var_os(var).filter(|v| !v.is_empty()).unwrap_or(default.into());
        Tools { uv: get("NIXUV_UV", "uv"), nix: get("NIXUV_NIX", "nix") }
    }
}

/// The wheel platform the init container installs for (the app's Linux; glibc 2.28 or newer).
fn python_platform() -> String {
    format!("{}-manylinux_2_28", std::env::consts::ARCH)
}

/// Runs `program args` with `env` on top of this process's; (success, stdout, stderr).
fn run(program: &OsString, args: &[OsString], env: &[(String, String)]) -> std::io::Result<(bool, String, String)> {
    let out = std::process::Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(std::process::Stdio::null())
        .output()?;
    Ok((out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into()))
}

/// The fix uv's failure calls for.
fn python_fix(message: &str, plan: &EnvPlan) -> String {
    let m = message.to_lowercase();
    if m.contains("not found in the package registry")
        || m.contains("was not found in the provided package locations")
        || m.contains("was not found in the cache")
    {
        format!("no such package on the index ({}): check the name", plan.index_url)
    } else if m.contains("no usable wheels")
        || m.contains("building from source is disabled")
        || m.contains("no wheels with a matching")
    {
        format!(
            "no wheel for Python {} on Linux: pin a version that has one, declare another Python (nixuv.io/python), or let uv build from source (python.allowSourceBuilds in the config, an admin's choice: docs/security.md)",
            plan.python_version
        )
    } else if m.contains("is available and you require") || m.contains("there is no version of") {
        match &plan.exclude_newer {
            Some(t) => {
                format!("no version on the index matches it as of {t}: change the range, or the resolution date")
            }
            None => "no version on the index matches it: change the range".into(),
        }
    } else if m.contains("requires-python") || m.contains("python>=") || m.contains("python<") {
        format!("not for Python {}: declare a Python it supports (nixuv.io/python)", plan.python_version)
    } else if m.contains("no solution found") {
        "the declared versions conflict: relax one of them (a range goes in the nixuv.io/python-deps annotation, not a label)".into()
    } else {
        "see uv's message".into()
    }
}

fn first_lines(text: &str, n: usize) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("warning:"))
        .take(n)
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Checks `plan` with the tools; `work` is a scratch directory.
pub fn check(plan: &EnvPlan, tools: &Tools, work: &Path) -> Report {
    let mut report = Report::default();
    if !plan.python.is_empty() {
        check_python(plan, tools, work, &mut report);
    }
    for attr in &plan.system {
        check_attr(plan, attr, tools, &mut report);
    }
    report
}

fn check_python(plan: &EnvPlan, tools: &Tools, work: &Path, report: &mut Report) {
    let own_source = plan.tool_env.iter().any(|(k, _)| {
        matches!(k.as_str(), "UV_PYTHON_INSTALL_MIRROR" | "UV_PYTHON_DOWNLOADS_JSON_URL" | "UV_PYTHON_DOWNLOADS")
    });
    let carried = image_pythons();
    // `3.X` of a `3.X` or `3.X.Y` declaration (a bare `3` takes whatever is there).
    let minor =
        PythonVersion::parse(&plan.python_version).map(|v| v.as_str().split('.').take(2).collect::<Vec<_>>().join("."));
    if plan.python_mode == crate::values::PythonMode::Venv
        && !own_source
        && minor.as_ref().is_some_and(|m| m.contains('.') && !carried.contains(&m.as_str()))
    {
        report.findings.push(Finding {
            item: format!("python {}", plan.python_version),
            problem: format!("the init image carries Python {} only", carried.join(", ")),
            fix: "declare one of those (nixuv.io/python), or have the admin set UV_PYTHON_INSTALL_MIRROR in initEnv"
                .into(),
        });
    }
    match compile(plan, &plan.python, tools, work) {
        Err(why) => report.unchecked.push(why),
        Ok(None) => {}
        Ok(Some(joint)) => {
            // uv stops at the first requirement it cannot satisfy: each one alone says which
            // fail by themselves; if none does, they conflict together.
            let mut alone = Vec::new();
            for r in &plan.python {
                if let Ok(Some(err)) = compile(plan, std::slice::from_ref(r), tools, work) {
                    alone.push(Finding { item: r.clone(), problem: first_lines(&err, 4), fix: python_fix(&err, plan) });
                }
            }
            if alone.is_empty() {
                let items = crate::materialize::culprits(&plan.python, &joint, |r| {
                    crate::materialize::requirement_name(r).to_string()
                });
                let item = items.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ");
                alone.push(Finding { item, problem: first_lines(&joint, 4), fix: python_fix(&joint, plan) });
            }
            report.findings.extend(alone);
        }
    }
}

/// `uv pip compile` of `reqs` with the init container's flags for `plan`: `Ok(None)` when it
/// resolves, `Ok(Some(uv's error))` when it does not, `Err(why)` when it cannot be asked.
fn compile(plan: &EnvPlan, reqs: &[String], tools: &Tools, work: &Path) -> Result<Option<String>, String> {
    let file = work.join(format!("requirements-{}-{}.txt", plan.id, crate::materialize::store::nonce()));
    std::fs::write(&file, reqs.join("\n") + "\n").map_err(|e| format!("Python deps: {}: {e}", file.display()))?;
    let mut args: Vec<OsString> =
        ["pip", "compile", "--quiet", "--no-header", "--python-version"].iter().map(OsString::from).collect();
    args.push(plan.python_version.clone().into());
    args.extend(["--python-platform".into(), python_platform().into()]);
    args.extend(plan.uv_resolution_args().into_iter().map(OsString::from));
    args.push(file.clone().into());
    // The admin's tool variables (the index, its mirrors); never a config file; no interpreter
    // downloads (resolving needs none).
    let mut env: Vec<(String, String)> = plan.tool_env.clone();
    env.push(("UV_NO_CONFIG".into(), "1".into()));
    env.push(("UV_PYTHON_DOWNLOADS".into(), "never".into()));
    let result = run(&tools.uv, &args, &env);
    let _ = std::fs::remove_file(&file);
    match result {
        Err(e) => Err(format!("Python deps: could not run uv ({}): {e}", tools.uv.to_string_lossy())),
        Ok((true, _, _)) => Ok(None),
        Ok((false, _, err)) if err.contains("failed to lookup address") || err.contains("error sending request") => {
            Err(format!("Python deps: the index is not reachable from here ({})", first_lines(&err, 3)))
        }
        Ok((false, _, err)) => Ok(Some(err)),
    }
}

fn check_attr(plan: &EnvPlan, attr: &str, tools: &Tools, report: &mut Report) {
    let args: Vec<OsString> = [
        "--extra-experimental-features".to_string(),
        "nix-command flakes".into(),
        "eval".into(),
        "--raw".into(),
        format!("{}#{attr}.name", plan.nixpkgs),
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    let env: Vec<(String, String)> = plan.tool_env.iter().filter(|(k, _)| k.starts_with("NIX_")).cloned().collect();
    match run(&tools.nix, &args, &env) {
        Err(e) => report
            .unchecked
            .push(format!("system dep {attr:?}: could not run nix ({}): {e}", tools.nix.to_string_lossy())),
        Ok((true, _, _)) => {}
        Ok((false, _, err)) if err.contains("does not provide attribute") => report.findings.push(Finding {
            item: attr.to_string(),
            problem: format!("no such attribute in {}", plan.nixpkgs),
            fix: format!("check the name: `nix search {} {}`", plan.nixpkgs, attr.rsplit('.').next().unwrap_or(attr)),
        }),
        Ok((false, _, err)) => report.unchecked.push(format!(
            "system dep {attr:?}: nixpkgs {} could not be evaluated from here ({})",
            plan.nixpkgs,
            first_lines(&err, 2)
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_image_pythons_come_from_the_image_versions() {
        assert_eq!(super::image_pythons(), ["3.10", "3.11", "3.12", "3.13"]);
    }
}
