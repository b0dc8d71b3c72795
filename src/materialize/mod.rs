//! `nixuv materialize`, the init container: realises env `H` in the shared stores, once per `H`
//! across every Pod and node, safe under concurrency and crashes.
//!
//! Flow: read and re-validate the [`EnvSpec`] from the environment; if the completion marker is
//! there and what it points at exists, record the use and exit (the warm path: a few stats).
//! Otherwise take the env's lease (waiting while another Pod builds, and finishing as soon as its
//! marker appears), build the system deps with nix-portable and the Python deps with uv, publish
//! the venv by an atomic symlink swap, write the marker last, release the lease.

pub mod gc;
pub mod layout;
pub mod lease;
pub mod tool;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::envspec::{EnvSpec, EnvSpecError};
use crate::inject::plan::env_id;
use layout::Layout;
use lease::{Lease, LeaseError};
use tool::{Tool, ToolError};

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

/// The completion marker: what was built, written last.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Marker {
    pub env: String,
    pub system: Vec<String>,
    pub python: Vec<String>,
    pub python_version: String,
    pub nixpkgs: String,
    /// The venv directory under `envs/` that `envs/H` points at, if there are Python deps.
    pub venv: Option<String>,
    pub built_at_unix: u64,
    pub build_seconds: f64,
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
pub enum Outcome {
    /// The env was there already.
    Cached,
    /// Another Pod built it while this one waited.
    Waited,
    /// This run built it.
    Built,
}

fn read_marker(layout: &Layout, id: &str) -> Option<Marker> {
    let text = fs::read_to_string(layout.marker(id)).ok()?;
    serde_json::from_str::<Marker>(&text).ok().filter(|m| m.env == id)
}

/// Follows a profile symlink chain whose targets are `/nix/...` paths (as nix sees them) inside
/// the nix volume as this process sees it.
fn store_link_resolves(nix_dir: &Path, link: &Path) -> bool {
    let mut cur = link.to_path_buf();
    for _ in 0..16 {
        match fs::read_link(&cur) {
            Ok(t) => {
                cur = match t.strip_prefix("/nix") {
                    Ok(rest) => nix_dir.join(rest),
                    Err(_) if t.is_absolute() => t,
                    Err(_) => cur.parent().unwrap_or(Path::new("/")).join(t),
                }
            }
            Err(_) => return cur.is_dir(),
        }
    }
    false
}

/// The warm-path check: the marker, and what it points at, exist.
pub fn is_complete(layout: &Layout, spec: &EnvSpec) -> bool {
    let id = &spec.plan.id;
    let Some(m) = read_marker(layout, id) else { return false };
    let python_ok = !spec.plan.has_python()
        || m.venv.as_deref().is_some_and(|v| {
            fs::read_link(layout.venv_link(id)).is_ok_and(|t| t == Path::new(v))
                && layout.envs().join(v).join("bin").is_dir()
        });
    let system_ok = !spec.plan.has_system() || store_link_resolves(&layout.nix_dir, &layout.profile(id));
    python_ok && system_ok
}

fn touch(path: &Path) {
    if let Some(d) = path.parent() {
        let _ = fs::create_dir_all(d);
    }
    let f = fs::OpenOptions::new().create(true).truncate(false).write(true).open(path);
    if let Ok(f) = f {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// Names the deps a tool error is about: those whose name appears in the message, else all.
fn culprits<'a>(items: &'a [String], message: &str, name_of: impl Fn(&str) -> String) -> Vec<&'a String> {
    let lower = message.to_lowercase();
    let hits: Vec<&String> = items.iter().filter(|i| lower.contains(&name_of(i).to_lowercase())).collect();
    if hits.is_empty() {
        items.iter().collect()
    } else {
        hits
    }
}

fn quote_list(items: &[&String]) -> String {
    items.iter().map(|i| format!("{i:?}")).collect::<Vec<_>>().join(", ")
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// Realises the system deps into the env's nix profile, under the store lease.
fn build_system(layout: &Layout, spec: &EnvSpec, opts: &Options) -> Result<(), MaterializeError> {
    let np = Tool::from_env("nix-portable", "NIXUV_NIX_PORTABLE", "nix-portable");
    let np_location = layout.np_location().ok_or_else(|| MaterializeError::NixDir(layout.nix_dir.clone()))?;
    let id = &spec.plan.id;
    let _store = Lease::hold(&layout.store_lease(), opts.lease_ttl, opts.wait_timeout, |note| {
        tracing::info!(env = %id, "nix store: {note}");
    })?;
    let profiles = layout.profiles();
    fs::create_dir_all(&profiles).map_err(io(&profiles))?;
    // A build that died half-way may have left generation links; start the profile afresh.
    for entry in fs::read_dir(&profiles).map_err(io(&profiles))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == *id || (name.starts_with(&format!("{id}-")) && name.ends_with("-link")) {
            let _ = fs::remove_file(entry.path());
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
    np.run(&args, &[("NP_LOCATION", np_location.as_os_str().to_owned())], &[], None).map_err(|source| {
        let msg = source.to_string();
        let who = culprits(&spec.plan.system, &msg, |a| a.to_string());
        MaterializeError::Tool { what: format!("system dep {}", quote_list(&who)), source }
    })?;
    tracing::info!(env = %id, elapsed = %secs(start.elapsed()), "system deps: profile ready");
    Ok(())
}

/// Creates the env's venv with uv and installs the requirements; returns the venv's directory
/// name under `envs/`.
fn build_python(layout: &Layout, spec: &EnvSpec, opts: &Options) -> Result<String, MaterializeError> {
    let uv = Tool::from_env("uv", "NIXUV_UV", "uv");
    let id = &spec.plan.id;
    let envs = layout.envs();
    fs::create_dir_all(&envs).map_err(io(&envs))?;
    let name = format!(".{id}.{}", lease::nonce());
    let venv = envs.join(&name);
    let mut env: Vec<(&str, OsString)> = vec![
        ("UV_CACHE_DIR", layout.uv_cache().into()),
        ("UV_PYTHON_INSTALL_DIR", layout.uv_python().into()),
        // Cache and venv share the volume: hard links, not copies (uv's default is `clone`).
        ("UV_LINK_MODE", "hardlink".into()),
    ];
    if std::env::var_os("UV_PYTHON_PREFERENCE").is_none() {
        // The interpreter must live on the uv volume, where app containers can reach it.
        env.push(("UV_PYTHON_PREFERENCE", "only-managed".into()));
    }
    let remove = ["VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "PYTHONHOME", "PYTHONPATH"];
    let _cache = Lease::hold(&layout.uv_cache_lease(), opts.lease_ttl, opts.wait_timeout, |note| {
        tracing::info!(env = %id, "uv cache: {note}");
    })?;
    let start = Instant::now();
    let version = &spec.plan.python_version;
    tracing::info!(env = %id, python = %version, "python: creating the venv");
    let args: Vec<OsString> = vec!["venv".into(), "--python".into(), version.into(), venv.clone().into()];
    uv.run(&args, &env, &remove, Some(&envs))
        .map_err(|source| MaterializeError::Tool { what: format!("python {version:?}"), source })?;
    tracing::info!(env = %id, python = %version, elapsed = %secs(start.elapsed()), "python: venv ready");
    let reqs = venv.join("nixuv-requirements.txt");
    let mut text = spec.plan.python.join("\n");
    text.push('\n');
    fs::write(&reqs, text).map_err(io(&reqs))?;
    let start = Instant::now();
    tracing::info!(env = %id, deps = %spec.plan.python.join(", "), "python deps: resolving and installing with uv");
    let args: Vec<OsString> = vec![
        "pip".into(),
        "install".into(),
        "--python".into(),
        venv.join("bin/python").into(),
        "-r".into(),
        reqs.into(),
    ];
    uv.run(&args, &env, &remove, Some(&envs)).map_err(|source| {
        let msg = source.to_string();
        let who = culprits(&spec.plan.python, &msg, |r| {
            r.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
                .next()
                .unwrap_or(r)
                .to_string()
        });
        MaterializeError::Tool { what: format!("python dep {}", quote_list(&who)), source }
    })?;
    tracing::info!(env = %id, elapsed = %secs(start.elapsed()), "python deps: installed");
    Ok(name)
}

/// Writes `contents` to `path` via a temporary file and a rename, so readers see all or nothing.
fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), MaterializeError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io(dir))?;
    crate::certs::write_atomic(path, contents, 0o644).map_err(io(path))
}

fn build(layout: &Layout, spec: &EnvSpec, opts: &Options) -> Result<(), MaterializeError> {
    let start = Instant::now();
    let id = &spec.plan.id;
    if spec.plan.has_system() {
        build_system(layout, spec, opts)?;
    }
    let venv = if spec.plan.has_python() {
        let name = build_python(layout, spec, opts)?;
        // Publish: a new symlink renamed over `envs/H` (atomic); readers see the old or the new.
        let tmp = layout.envs().join(format!(".{id}.link-{}", lease::nonce()));
        std::os::unix::fs::symlink(&name, &tmp).map_err(io(&tmp))?;
        fs::rename(&tmp, layout.venv_link(id)).map_err(io(&layout.venv_link(id)))?;
        Some(name)
    } else {
        None
    };
    let marker = Marker {
        env: id.clone(),
        system: spec.plan.system.clone(),
        python: spec.plan.python.clone(),
        python_version: spec.plan.python_version.clone(),
        nixpkgs: spec.plan.nixpkgs.clone(),
        venv,
        built_at_unix: SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs(),
        build_seconds: start.elapsed().as_secs_f64(),
    };
    write_atomic(&layout.marker(id), &serde_json::to_vec_pretty(&marker).expect("serialises"))?;
    Ok(())
}

/// Realises `spec` in `layout`.
pub fn materialize(layout: &Layout, spec: &EnvSpec, opts: &Options) -> Result<Outcome, MaterializeError> {
    let id = &spec.plan.id;
    let computed = env_id(&spec.plan.canonical());
    if computed != *id {
        return Err(MaterializeError::IdMismatch { given: id.clone(), computed });
    }
    if spec.plan.has_system() && layout.np_location().is_none() {
        return Err(MaterializeError::NixDir(layout.nix_dir.clone()));
    }
    let start = Instant::now();
    if is_complete(layout, spec) {
        touch(&layout.used(id));
        tracing::info!(env = %id, elapsed_ms = start.elapsed().as_millis() as u64, "env ready (already built)");
        return Ok(Outcome::Cached);
    }
    tracing::info!(
        env = %id,
        system = %spec.plan.system.join(" "),
        python = %spec.plan.python.join(", "),
        python_version = %spec.plan.python_version,
        "env not built yet: taking the build lease"
    );
    let lease = Lease::acquire(
        &layout.env_lease(id),
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
            Outcome::Waited
        }
        Some(_held) if is_complete(layout, spec) => {
            tracing::info!(env = %id, elapsed = %secs(start.elapsed()), "env ready (built by another Pod)");
            Outcome::Waited
        }
        Some(_held) => {
            build(layout, spec, opts)?;
            tracing::info!(env = %id, elapsed = %secs(start.elapsed()), "env built and published");
            Outcome::Built
        }
    };
    touch(&layout.used(id));
    Ok(outcome)
}

/// The init container's entry point: the spec from the environment.
pub fn run_from_env() -> Result<Outcome, MaterializeError> {
    let spec = EnvSpec::from_env(|k| std::env::var(k).ok())?;
    let layout = Layout::new(&spec.uv_root, &spec.nix_dir);
    materialize(&layout, &spec, &Options::from_env())
}
