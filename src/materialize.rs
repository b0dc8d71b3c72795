//! `nixuv materialize`, the init container: realises env `H` in the shared stores, once per `H`
//! across every Pod and node, safe under concurrency and crashes.
//!
//! Flow: read and re-validate the [`EnvSpec`] from the environment; if the completion marker is
//! there and what it points at exists, record the use and exit (the warm path: a few stats).
//! Otherwise take the env's lease (waiting while another Pod builds, and finishing as soon as its
//! marker appears), build the system deps with nix-portable and the Python deps with uv, publish
//! the venv by an atomic symlink swap, write the marker last, release the lease.

mod bytecode;
pub mod cache_trim;
pub mod envs;
pub mod gc;
pub mod installed;
pub mod layout;
pub mod lease;
mod marker;
pub mod store;
mod tool;
pub mod trust;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::envid::EnvId;
use crate::envspec::{EnvSpec, EnvSpecError};
use layout::Layout;
use lease::{Lease, LeaseError};
use store::{Contents, StoreDir, StoreError};
use tool::{Tool, ToolError};

pub(crate) use marker::read_marker;
use marker::secrets_digest;
pub use marker::{is_complete, resolve_in_store, Marker};

#[derive(Debug, thiserror::Error)]
pub enum MaterializeError {
    #[error(transparent)]
    Spec(#[from] EnvSpecError),
    #[error("NIXUV_ENV {given:?} does not match the dependencies it is given (they give {computed:?}); refusing to build a mislabelled env")]
    IdMismatch { given: String, computed: String },
    #[error("{NIXUV_NIX_DIR}: {0:?} must end in .nix-portable/nix (nix-portable keeps its store at $NP_LOCATION/.nix-portable/nix)", NIXUV_NIX_DIR = crate::envspec::ENV_NIX_DIR)]
    NixDir(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what}: {source}")]
    Tool {
        what: String,
        #[source]
        source: ToolError,
    },
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MaterializeError + '_ {
    move |source| MaterializeError::Io { path: path.to_path_buf(), source }
}

/// How materialize is tuned (environment: `NIXUV_LEASE_TTL`, `NIXUV_WAIT_TIMEOUT`).
#[derive(Debug, Clone)]
pub struct Options {
    pub lease_ttl: Duration,
    pub wait_timeout: Duration,
}

impl Options {
    pub fn from_env() -> Self {
        let dur = |k: &str, d: u64| {
            std::env::var(k).ok().and_then(|v| humantime::parse_duration(&v).ok()).unwrap_or(Duration::from_secs(d))
        };
        Options { lease_ttl: dur("NIXUV_LEASE_TTL", 60), wait_timeout: dur("NIXUV_WAIT_TIMEOUT", 3600) }
    }
}

/// What a run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildOutcome {
    /// The env was there already.
    Cached,
    /// Another Pod built it while this one waited.
    Waited,
    /// This run built it.
    Built,
}

/// A tool located by its environment variable (`NIXUV_UV`, `NIXUV_NIX_PORTABLE`), else by name.
pub(crate) fn tool_from_env(name: &'static str, var: &'static str, default: &str) -> Tool {
    Tool::from_env(name, var, default)
}

/// Records a use of the env (the `.used` stamp's mtime), never through a planted link.
fn touch_used(layout: &Layout, id: &str) {
    let res = layout.uv_dir(layout::STATE, true).and_then(|d| d.expect("repaired").touch(&layout::used_name(id)));
    if let Err(e) = res {
        tracing::warn!(env = %id, error = %e, "could not record the env's last use");
    }
}

/// Names the deps a tool error is about: those whose name appears in the message, else all.
pub(crate) fn culprits<'a>(items: &'a [String], message: &str, name_of: impl Fn(&str) -> String) -> Vec<&'a String> {
    let lower = message.to_lowercase();
    let hits: Vec<&String> = items.iter().filter(|i| lower.contains(&name_of(i).to_lowercase())).collect();
    if hits.is_empty() {
        items.iter().collect()
    } else {
        hits
    }
}

/// The distribution name a PEP 508 requirement starts with (`pandas` of `pandas[sql]>=2`).
pub(crate) fn requirement_name(r: &str) -> &str {
    r.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')).next().unwrap_or(r)
}

fn quote_list(items: &[&String]) -> String {
    items.iter().map(|i| format!("{i:?}")).collect::<Vec<_>>().join(", ")
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// The tool variables of this process's environment that the webhook did not declare (not in
/// `NIXUV_TOOL_ENV`, so not part of the env id): stripped from the tools' environment, so that
/// an env is built only with what its id binds.
fn undeclared_tool_vars(spec: &EnvSpec) -> Vec<String> {
    std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| crate::toolenv::tool_scope(k).is_some())
        .filter(|k| !spec.plan.tool_env.iter().chain(&spec.plan.secret_env).any(|(n, _)| n == k))
        .filter(|k| !crate::toolenv::FIXED_TOOL_ENV.contains(&k.as_str()))
        .collect()
}

/// What every tool call of a build gets besides its own settings: the undeclared tool variables
/// to strip, and the variables of the `caBundle` (set after the strip).
struct ToolEnv<'a> {
    strip: &'a [&'a str],
    set: Vec<(&'static str, OsString)>,
}

/// Realises the system deps into the env's nix profile, under the store lease.
fn build_system(layout: &Layout, spec: &EnvSpec, opts: &Options, tools: &ToolEnv) -> Result<(), MaterializeError> {
    let np = Tool::from_env("nix-portable", "NIXUV_NIX_PORTABLE", "nix-portable");
    let np_location = layout.np_location().ok_or_else(|| MaterializeError::NixDir(layout.nix_dir.clone()))?;
    let id = &spec.plan.id;
    let locks = StoreDir::ensure(&layout.nix_dir, layout::NIX_LOCKS)?;
    let _store = Lease::hold(&locks, layout::STORE_LEASE, opts.lease_ttl, opts.wait_timeout, |note| {
        tracing::info!(env = %id, "nix store: {note}");
    })?;
    let profiles = StoreDir::ensure(&layout.nix_dir, layout::PROFILES)?;
    // A build that died half-way may have left generation links; start the profile afresh.
    for name in profiles.names()? {
        if name == *id || (name.starts_with(&format!("{id}-")) && name.ends_with("-link")) {
            profiles.remove_entry(&name)?;
        }
    }
    let mut args: Vec<OsString> =
        ["nix", "--extra-experimental-features", "nix-command flakes", "profile", "install", "--profile"]
            .iter()
            .map(OsString::from)
            .collect();
    args.push(Layout::profile_in_store_view(id).into());
    args.extend(spec.plan.system.iter().map(|a| OsString::from(format!("{}#{a}", spec.plan.nixpkgs))));
    let start = Instant::now();
    tracing::info!(env = %id, deps = %spec.plan.system.join(" "), nixpkgs = %spec.plan.nixpkgs, "system deps: realising with nix-portable");
    let mut env = vec![("NP_LOCATION", np_location.as_os_str().to_owned())];
    env.extend(tools.set.iter().cloned());
    np.run(&args, &env, tools.strip, None).map_err(|source| {
        let msg = source.to_string();
        let who = culprits(&spec.plan.system, &msg, |a| a.to_string());
        MaterializeError::Tool { what: format!("system dep {}", quote_list(&who)), source }
    })?;
    tracing::info!(env = %id, elapsed = %secs(start.elapsed()), "system deps: profile ready");
    Ok(())
}

/// The tool variables that say where uv's interpreters come from.
const PYTHON_SOURCE_VARS: &[&str] =
    &["UV_PYTHON_DOWNLOADS_JSON_URL", "UV_PYTHON_INSTALL_MIRROR", "UV_PYPY_INSTALL_MIRROR", "UV_PYTHON_DOWNLOADS"];

/// Where uv installs interpreters for `spec`: `python/<source>/` on the uv volume, `<source>` a
/// digest of where the interpreters come from (the image's own list, or the declared download
/// variables with their values). Every build with the admin's settings shares one directory; a
/// build given other sources (a hand-written nixuv-init pointing uv at its own interpreter list)
/// installs into a directory of its own, which no other env's build ever uses.
fn python_install_dir(layout: &Layout, spec: &EnvSpec) -> PathBuf {
    let mut source = String::from("nixuv-python-source-v1\n");
    if let Some(list) = image_python_downloads(spec) {
        source.push_str(&format!("image-list={list}\n"));
    }
    for (name, value) in spec.plan.tool_env.iter().filter(|(n, _)| PYTHON_SOURCE_VARS.contains(&n.as_str())) {
        source.push_str(&format!("{name}={}\n", serde_json::to_string(value).expect("a string serialises")));
    }
    layout.uv_python().join(EnvId::of(&source).as_str())
}

/// The environment every uv call of a build runs with (on top of the declared tool variables).
fn uv_env(layout: &Layout, spec: &EnvSpec) -> Vec<(&'static str, OsString)> {
    let mut env: Vec<(&str, OsString)> = vec![
        ("UV_CACHE_DIR", layout.uv_cache().into()),
        ("UV_PYTHON_INSTALL_DIR", python_install_dir(layout, spec).into()),
        // Cache and venv share the volume: hard links, not copies (uv's default is `clone`).
        ("UV_LINK_MODE", "hardlink".into()),
        // uv reads `uv.toml` / `pyproject.toml` from the working directory up and from the user's
        // config: anyone who can write the store could plant one there (another index). Only the
        // environment, which the env id binds, configures uv.
        ("UV_NO_CONFIG", "1".into()),
    ];
    // Declared by the admin (part of the env id) or not at all: an undeclared one is stripped.
    if !spec.plan.tool_env.iter().any(|(k, _)| k == "UV_PYTHON_PREFERENCE") {
        // The interpreter must live on the uv volume, where app containers can reach it.
        env.push(("UV_PYTHON_PREFERENCE", "only-managed".into()));
    }
    if let Some(list) = image_python_downloads(spec) {
        env.push(("UV_PYTHON_DOWNLOADS_JSON_URL", list.into()));
    }
    env
}

/// uv's download list for the interpreters the init image carries (`file://` URLs), unless the
/// admin chose another list or a mirror (declared tool variables, part of the env id): with it, a
/// managed interpreter installs without reaching python-build-standalone's releases. The path is
/// fixed, not an input: the Pod's author does not choose where interpreters come from.
fn image_python_downloads(spec: &EnvSpec) -> Option<String> {
    let own = ["UV_PYTHON_DOWNLOADS_JSON_URL", "UV_PYTHON_INSTALL_MIRROR", "UV_PYTHON_DOWNLOADS"];
    if spec.plan.tool_env.iter().any(|(k, _)| own.contains(&k.as_str())) {
        return None;
    }
    let list = Path::new(crate::names::IMAGE_PYTHON_DOWNLOADS);
    fs::metadata(list).is_ok_and(|m| m.is_file()).then(|| format!("file://{}", list.display()))
}

/// Creates the env's venv with uv and installs the requirements; returns the venv's directory
/// name under `envs/`.
fn build_python(layout: &Layout, spec: &EnvSpec, opts: &Options, tools: &ToolEnv) -> Result<String, MaterializeError> {
    let uv = Tool::from_env("uv", "NIXUV_UV", "uv");
    let id = &spec.plan.id;
    let envs = StoreDir::ensure(&layout.uv_root, layout::ENVS)?;
    let name = format!(".{id}.{}", lease::nonce());
    let venv = envs.entry_path(&name);
    let mut env = uv_env(layout, spec);
    env.extend(tools.set.iter().cloned());
    let mut remove = vec!["VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "PYTHONHOME", "PYTHONPATH"];
    remove.extend_from_slice(tools.strip);
    let locks = StoreDir::ensure(&layout.uv_root, layout::LOCKS)?;
    let _cache = Lease::hold(&locks, layout::UV_CACHE_LEASE, opts.lease_ttl, opts.wait_timeout, |note| {
        tracing::info!(env = %id, "uv cache: {note}");
    })?;
    let version = &spec.plan.python_version;
    let overlay = spec.plan.is_overlay();
    let venv_dir = if overlay {
        // An overlay is a plain directory uv installs into (`--target`); `bin` always exists, so
        // the ready check and PATH look the same whether or not a package has console scripts.
        let dir = envs.create_dir(&name)?;
        dir.create_dir("bin")?;
        dir
    } else {
        let start = Instant::now();
        tracing::info!(env = %id, python = %version, "python: creating the venv");
        let args: Vec<OsString> = vec!["venv".into(), "--python".into(), version.into(), venv.clone().into()];
        uv.run(&args, &env, &remove, Some(envs.path()))
            .map_err(|source| {
                let msg = source.to_string();
                let missing = msg.contains("No download found") || msg.contains("No interpreter found");
                let hint = if missing && image_python_downloads(spec).is_some() {
                    " (not among the interpreters this init image carries, nor at the configured mirror: use a version the image has, or set UV_PYTHON_INSTALL_MIRROR in initEnv)"
                } else {
                    ""
                };
                MaterializeError::Tool { what: format!("python {version:?}{hint}"), source }
            })?;
        tracing::info!(env = %id, python = %version, elapsed = %secs(start.elapsed()), "python: venv ready");
        // The new venv is opened without following links, and the requirements written under a
        // random name: someone watching `envs/` cannot redirect the write.
        envs.subdir(&name).ok_or_else(|| {
            io(&venv)(std::io::Error::other("the new venv is not a plain directory (replaced while building?)"))
        })?
    };
    let mut text = spec.plan.python.join("\n");
    text.push('\n');
    venv_dir.write_atomic("nixuv-requirements.txt", text.as_bytes(), 0o644)?;
    let start = Instant::now();
    tracing::info!(env = %id, deps = %spec.plan.python.join(", "), "python deps: resolving and installing with uv");
    let mut args: Vec<OsString> = vec!["pip".into(), "install".into()];
    if overlay {
        // For the declared version (its wheels' tags and bytecode), into the overlay directory.
        args.extend(["--target".into(), venv.clone().into(), "--python".into(), version.into()]);
    } else {
        args.extend(["--python".into(), venv.join("bin/python").into()]);
    }
    args.extend(spec.plan.uv_resolution_args().into_iter().map(OsString::from));
    args.extend(["-r".into(), venv.join("nixuv-requirements.txt").into()]);
    uv.run(&args, &env, &remove, Some(envs.path())).map_err(|source| {
        let msg = source.to_string();
        let who = culprits(&spec.plan.python, &msg, |r| requirement_name(r).to_string());
        let why = if msg.contains("building from source is disabled") {
            " (no wheel for this platform, and python.allowSourceBuilds is false: nixuv installs wheels only)"
        } else {
            ""
        };
        MaterializeError::Tool { what: format!("python dep {}{why}", quote_list(&who)), source }
    })?;
    tracing::info!(env = %id, elapsed = %secs(start.elapsed()), "python deps: installed");
    // The env is mounted read-only in the app: compile now, or every start compiles again; once
    // per source across the store's envs. A venv's own interpreter compiles its site-packages; an
    // overlay's, the interpreter uv installed for (the declared version, as the image's).
    let start = Instant::now();
    let (python, sites) = if overlay {
        let args: Vec<OsString> = vec!["python".into(), "find".into(), version.into()];
        let found = uv.run(&args, &env, &remove, Some(envs.path())).map_err(|source| MaterializeError::Tool {
            what: format!("python {version:?} (to compile the overlay's bytecode)"),
            source,
        })?;
        (PathBuf::from(found.trim()), vec![venv_dir.try_clone()?])
    } else {
        (venv.join("bin/python"), installed::site_packages(&venv_dir))
    };
    let pyc = StoreDir::ensure(&layout.uv_root, layout::PYC)?;
    let mut stats = bytecode::Stats::default();
    for site in &sites {
        bytecode::compile_venv(&python, site, &pyc, &mut stats)?;
    }
    tracing::info!(env = %id, files = stats.files, reused = stats.reused, compiled = stats.compiled, elapsed = %secs(start.elapsed()), "python deps: bytecode compiled (reused from other envs where the source is the same)");
    if overlay {
        let bin = venv_dir.subdir("bin").ok_or_else(|| {
            io(&venv.join("bin"))(std::io::Error::other("not a plain directory (replaced while building?)"))
        })?;
        portable_scripts(&bin)?;
    }
    Ok(name)
}

/// An overlay's console scripts start with the interpreter uv installed for (`#!/path/python3.X`),
/// which is not the app's: each Python shebang becomes `#!/usr/bin/env python3`, the image's own
/// interpreter first on the app's PATH. Written by hand: uv has no option for it with `--target`.
fn portable_scripts(bin: &StoreDir) -> Result<(), MaterializeError> {
    const PORTABLE: &[u8] = b"#!/usr/bin/env python3";
    for name in bin.names()? {
        let Ok(Contents::Bytes(text)) = bin.read_small(&name, 16 << 20) else { continue };
        let first = text.split(|&b| b == b'\n').next().unwrap_or_default();
        let python_shebang = first.starts_with(b"#!")
            && first.rsplit(|&b| b == b'/').next().is_some_and(|exe| exe.starts_with(b"python"));
        if python_shebang && first != PORTABLE {
            let mut out = PORTABLE.to_vec();
            out.extend_from_slice(&text[first.len()..]);
            bin.write_atomic(&name, &out, 0o755)?;
        }
    }
    Ok(())
}

fn build(layout: &Layout, spec: &EnvSpec, opts: &Options) -> Result<(), MaterializeError> {
    let start = Instant::now();
    let id = &spec.plan.id;
    let undeclared = undeclared_tool_vars(spec);
    if !undeclared.is_empty() {
        tracing::warn!(env = %id, ignored = %undeclared.join(","), "tool variables not declared by the webhook (not part of the env id) are not passed to the tools");
    }
    let strip: Vec<&str> = undeclared.iter().map(String::as_str).collect();
    // The init container's TMPDIR: its private scratch emptyDir (the builder Job's likewise).
    let trust = trust::prepare(spec, &std::env::temp_dir())?;
    let tools = ToolEnv { strip: &strip, set: trust.as_ref().map(|t| t.env().to_vec()).unwrap_or_default() };
    let state = StoreDir::ensure(&layout.uv_root, layout::STATE)?;
    // The marker first: from here on nothing trusts what a half-done build leaves behind.
    state.remove_entry(layout::marker_name(id))?;
    if spec.plan.has_system() {
        build_system(layout, spec, opts, &tools)?;
    }
    let mut lock = installed::Lock::default();
    if spec.plan.has_system() {
        if let Some(dir) = resolve_in_store(&layout.nix_dir, &layout.profile(id)) {
            lock.nix = installed::nix(&dir);
        }
    }
    let venv = if spec.plan.has_python() {
        let name = build_python(layout, spec, opts, &tools)?;
        let uv = Tool::from_env("uv", "NIXUV_UV", "uv");
        let env = uv_env(layout, spec);
        let overlay = spec.plan.is_overlay().then_some(spec.plan.python_version.as_str());
        match installed::python(&uv, &layout.uv_root.join(layout::ENVS).join(&name), overlay, &env, &strip) {
            Ok((interpreter, dists)) => {
                lock.interpreter = interpreter;
                lock.python = dists;
            }
            Err(e) => tracing::warn!(env = %id, error = %e, "could not record the installed Python distributions"),
        }
        // Publish: a new symlink renamed over `envs/H` (atomic); readers see the old or the new.
        StoreDir::ensure(&layout.uv_root, layout::ENVS)?.symlink_atomic(&name, id)?;
        Some(name)
    } else {
        None
    };
    let marker = Marker {
        env: id.to_string(),
        system: spec.plan.system.clone(),
        python: spec.plan.python.clone(),
        python_version: spec.plan.python_version.clone(),
        nixpkgs: spec.plan.nixpkgs.clone(),
        venv,
        python_mode: spec.plan.python_mode,
        built_at_unix: SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs(),
        build_seconds: start.elapsed().as_secs_f64(),
        lock,
        secrets: (!spec.plan.secret_env.is_empty()).then(|| secrets_digest(spec, &store::nonce())),
    };
    state.write_atomic(&layout::marker_name(id), &serde_json::to_vec_pretty(&marker).expect("serialises"), 0o644)?;
    Ok(())
}

/// What to do about `e`, when the error alone does not say: a store this process may not write
/// (`Permission denied`) names the uid and gid it runs as and the settings that fix it.
pub fn hint(e: &MaterializeError) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let denied = std::iter::from_fn(|| {
        let this = cur?;
        cur = this.source();
        Some(this)
    })
    .any(|err| {
        err.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
    });
    if !denied {
        return None;
    }
    // The ids this process runs as, from /proc (no unsafe call needed).
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let id = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|r| r.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_string()
    };
    let (uid, gid) = (id("Uid:"), id("Gid:"));
    Some(format!(
        "nixuv-init runs as uid {uid}, gid {gid} (the config's initRunAsUser) and may not write the store volume: \
         make the volume writable by that uid (an EFS access point or NFS export with uid/gid {uid}, or a \
         storage class that honours fsGroup), or set initRunAsUser to the volume's owner (docs/install.md, \
         \"Shared stores\")"
    ))
}

/// Realises `spec` in `layout`.
pub fn materialize(layout: &Layout, spec: &EnvSpec, opts: &Options) -> Result<BuildOutcome, MaterializeError> {
    let id = &spec.plan.id;
    let computed = EnvId::of(&spec.plan.canonical());
    if computed != *id {
        return Err(MaterializeError::IdMismatch { given: id.to_string(), computed: computed.to_string() });
    }
    if spec.plan.has_system() && layout.np_location().is_none() {
        return Err(MaterializeError::NixDir(layout.nix_dir.clone()));
    }
    let start = Instant::now();
    if is_complete(layout, spec) {
        touch_used(layout, id);
        tracing::info!(env = %id, elapsed_ms = start.elapsed().as_millis() as u64, "env ready (already built)");
        return Ok(BuildOutcome::Cached);
    }
    tracing::info!(
        env = %id,
        system = %spec.plan.system.join(" "),
        python = %spec.plan.python.join(", "),
        python_version = %spec.plan.python_version,
        "env not built yet: taking the build lease"
    );
    let locks = StoreDir::ensure(&layout.uv_root, layout::LOCKS)?;
    let lease = Lease::acquire(
        &locks,
        &layout::lease_name(id),
        opts.lease_ttl,
        opts.wait_timeout,
        || is_complete(layout, spec),
        |note| {
            tracing::info!(env = %id, "build lease: {note}");
        },
    )?;
    let outcome = match lease {
        None => {
            tracing::info!(env = %id, elapsed = %secs(start.elapsed()), "env ready (built by another Pod while this one waited)");
            BuildOutcome::Waited
        }
        Some(_held) if is_complete(layout, spec) => {
            tracing::info!(env = %id, elapsed = %secs(start.elapsed()), "env ready (built by another Pod)");
            BuildOutcome::Waited
        }
        Some(_held) => {
            build(layout, spec, opts)?;
            tracing::info!(env = %id, elapsed = %secs(start.elapsed()), "env built and published");
            BuildOutcome::Built
        }
    };
    touch_used(layout, id);
    Ok(outcome)
}

/// The init container's entry point: the spec from the environment.
pub fn run_from_env() -> Result<BuildOutcome, MaterializeError> {
    let spec = EnvSpec::from_env(|k| std::env::var(k).ok())?;
    let layout = Layout::new(&spec.uv_root, &spec.nix_dir);
    materialize(&layout, &spec, &Options::from_env())
}
