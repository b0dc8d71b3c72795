//! `nixuv publish`: the image store's builder. Takes the same `NIXUV_*` inputs as
//! `nixuv materialize`, builds the env into the private volumes of the builder's Job (real
//! nix-portable, real uv, bytecode compiled), and pushes it as an OCI image tagged with the env
//! id: one layer per nix store path of the env's closure, one for its interpreters, one for the
//! venv, one for nixuv's records (the marker and a CycloneDX SBOM of the lock, which the manifest
//! also carries as an annotation). Prints the manifest digest as its last stdout line and writes
//! it, with size and lock, to the termination message the leader reads.

pub mod layers;
pub mod registry;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;

use crate::envspec::EnvSpec;
use crate::imagestore::{Repository, ANN_IMAGE_ENV, ANN_IMAGE_SBOM, SUBPATH_NIX, SUBPATH_UV};
use crate::materialize::layout::{self, Layout};
use crate::materialize::{self as mat, Marker, MaterializeError};
use layers::{Layer, LayerSpec};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Build(#[from] MaterializeError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the env's completion marker is missing after its build")]
    NoMarker,
    #[error("nix path-info: {0}")]
    Closure(String),
    #[error("registry credentials: {0}")]
    Auth(String),
    #[error("registry: {0}")]
    Registry(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PublishError + '_ {
    move |source| PublishError::Io { path: path.to_path_buf(), source }
}

/// What `nixuv publish` is told on its command line.
#[derive(Debug, Clone)]
pub struct Target {
    pub repository: Repository,
    pub insecure: bool,
    /// A docker config file with push credentials (`NIXUV_REGISTRY_AUTH`).
    pub auth_file: Option<PathBuf>,
}

/// What a publish made.
#[derive(Debug, Clone)]
pub struct Published {
    pub digest: String,
    /// `<repository>@<digest>`.
    pub image: String,
    /// Bytes of the layer blobs and config (compressed).
    pub size: u64,
    pub layers: Vec<Layer>,
    /// Layer blobs the registry already had.
    pub reused: usize,
    pub marker: Marker,
    pub build_seconds: f64,
    pub push_seconds: f64,
}

/// The store paths of the env profile's closure, asked of nix itself.
fn nix_closure(layout: &Layout, id: &str) -> Result<Vec<String>, PublishError> {
    let np = mat::tool_from_env("nix-portable", "NIXUV_NIX_PORTABLE", "nix-portable");
    let np_location = layout.np_location().ok_or_else(|| PublishError::Closure("no nix-portable location".into()))?;
    let args: Vec<OsString> =
        ["nix", "--extra-experimental-features", "nix-command flakes", "path-info", "--recursive"]
            .iter()
            .map(OsString::from)
            .chain([OsString::from(Layout::profile_in_store_view(id))])
            .collect();
    let out = np
        .run(&args, &[("NP_LOCATION", np_location.as_os_str().to_owned())], &[], None)
        .map_err(|e| PublishError::Closure(e.to_string()))?;
    let mut paths: Vec<String> =
        out.lines().map(str::trim).filter(|l| l.starts_with("/nix/store/")).map(String::from).collect();
    paths.sort();
    paths.dedup();
    Ok(paths)
}

/// The entries of `dir` whose names pass `keep`, each as (image path under `image`, disk path).
fn entries(dir: &Path, image: &str, keep: impl Fn(&str) -> bool) -> Result<Vec<(String, PathBuf)>, PublishError> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(dir)(e)),
    };
    for e in rd {
        let e = e.map_err(io(dir))?;
        if let Some(name) = e.file_name().to_str().filter(|n| keep(n)) {
            out.push((format!("{image}/{name}"), e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The layers of the built env `id` (see the module docs), in the order they stack.
pub fn layer_specs(layout: &Layout, marker: &Marker, sbom_file: &Path) -> Result<Vec<LayerSpec>, PublishError> {
    let id = marker.env.as_str();
    let mut specs = Vec::new();
    if !marker.system.is_empty() {
        for path in nix_closure(layout, id)? {
            let base = path.trim_start_matches("/nix/store/").to_string();
            specs.push(LayerSpec {
                title: path.clone(),
                roots: vec![(format!("{SUBPATH_NIX}/store/{base}"), layout.nix_dir.join("store").join(&base))],
            });
        }
        let profiles = layout.nix_dir.join(layout::PROFILES);
        let links = entries(&profiles, &format!("{SUBPATH_NIX}/{}", layout::PROFILES), |n| {
            n == id || (n.starts_with(&format!("{id}-")) && n.ends_with("-link"))
        })?;
        specs.push(LayerSpec { title: format!("nix profile {id}"), roots: links });
    }
    if let Some(venv) = &marker.venv {
        // Interpreters: each entry of `python/<source>/` but uv's own dot-files (locks, caches).
        let mut roots = Vec::new();
        for (image, source) in entries(&layout.uv_python(), &format!("{SUBPATH_UV}/python"), |n| !n.starts_with('.'))? {
            roots.extend(entries(&source, &image, |n| !n.starts_with('.'))?);
        }
        if !roots.is_empty() {
            specs.push(LayerSpec { title: "python interpreters".into(), roots });
        }
        let envs = layout.uv_root.join(layout::ENVS);
        specs.push(LayerSpec {
            title: format!("venv {id}"),
            roots: vec![
                (format!("{SUBPATH_UV}/{}/{venv}", layout::ENVS), envs.join(venv)),
                (format!("{SUBPATH_UV}/{}/{id}", layout::ENVS), envs.join(id)),
            ],
        });
    }
    let state = layout.uv_root.join(layout::STATE);
    specs.push(LayerSpec {
        title: format!("nixuv records {id}"),
        roots: vec![
            (
                format!("{SUBPATH_UV}/{}/{}", layout::STATE, layout::marker_name(id)),
                state.join(layout::marker_name(id)),
            ),
            (format!("{SUBPATH_UV}/{}/{}", layout::STATE, sbom_name(id)), sbom_file.to_path_buf()),
        ],
    });
    Ok(specs)
}

/// The SBOM's file name beside the marker.
pub fn sbom_name(id: &str) -> String {
    format!("{id}.sbom.cdx.json")
}

/// The lock as a CycloneDX 1.5 SBOM: the interpreter, each Python distribution (a `pkg:pypi`
/// purl) and each nix store path of the profile. No timestamp: the same env, the same bytes.
pub fn sbom(marker: &Marker) -> serde_json::Value {
    let mut components = Vec::new();
    if let Some(i) = &marker.lock.interpreter {
        components.push(json!({"type": "application", "name": "cpython", "version": i.version,
                               "properties": [{"name": "nixuv:home", "value": i.home}]}));
    }
    for d in &marker.lock.python {
        let mut c = json!({"type": "library", "name": d.name, "version": d.version,
                           "purl": format!("pkg:pypi/{}@{}", d.name.replace('_', "-"), d.version)});
        if let Some(h) = &d.record_sha256 {
            c["properties"] = json!([{"name": "nixuv:record-sha256", "value": h}]);
        }
        components.push(c);
    }
    for p in &marker.lock.nix {
        let name = p.trim_start_matches("/nix/store/").split_once('-').map_or(p.as_str(), |(_, n)| n);
        components.push(json!({"type": "library", "name": name,
                               "properties": [{"name": "nix:store-path", "value": p}]}));
    }
    json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {"component": {"type": "application", "name": format!("nixuv-env-{}", marker.env),
                                   "bom-ref": marker.env}},
        "components": components,
    })
}

/// Builds the env from the environment's `NIXUV_*` inputs and pushes it to `target`.
pub fn run_from_env(target: &Target) -> Result<Published, PublishError> {
    let spec = EnvSpec::from_env(|k| std::env::var(k).ok()).map_err(MaterializeError::from)?;
    let layout = Layout::new(&spec.uv_root, &spec.nix_dir);
    publish(&layout, &spec, target)
}

/// Builds `spec` in `layout` (the builder's private volumes) and pushes it to `target`.
pub fn publish(layout: &Layout, spec: &EnvSpec, target: &Target) -> Result<Published, PublishError> {
    let id = spec.plan.id;
    let start = Instant::now();
    // materialize's bytecode is hash-checked: valid whatever times the image's files carry.
    mat::materialize(layout, spec, &mat::Options::from_env())?;
    let build_seconds = start.elapsed().as_secs_f64();
    let state =
        crate::materialize::store::StoreDir::ensure(&layout.uv_root, layout::STATE).map_err(MaterializeError::from)?;
    let marker = mat::read_marker(&state, id.as_str()).ok_or(PublishError::NoMarker)?;
    let work = std::env::temp_dir().join(format!("nixuv-publish-{}", crate::materialize::store::nonce()));
    std::fs::create_dir_all(&work).map_err(io(&work))?;
    let result = (|| {
        let sbom_text = serde_json::to_vec(&sbom(&marker)).expect("serialises");
        let sbom_file = work.join("sbom.cdx.json");
        std::fs::write(&sbom_file, &sbom_text).map_err(io(&sbom_file))?;
        let mut written = Vec::new();
        let pack_start = Instant::now();
        for s in layer_specs(layout, &marker, &sbom_file)? {
            written.push(layers::write(&s, &work).map_err(io(&work))?);
        }
        tracing::info!(
            env = %id,
            layers = written.len(),
            bytes = written.iter().map(|l| l.size).sum::<u64>(),
            elapsed = format!("{:.2}s", pack_start.elapsed().as_secs_f64()),
            "layers written"
        );
        let labels = BTreeMap::from([(ANN_IMAGE_ENV.to_string(), id.to_string())]);
        let config = registry::config_json(&written, &labels);
        let mut annotations = labels.clone();
        annotations.insert(ANN_IMAGE_SBOM.to_string(), String::from_utf8(sbom_text).expect("JSON is UTF-8"));
        let manifest = registry::manifest_json(&written, &config, &annotations);
        let push_start = Instant::now();
        let auth = registry::auth_from_file(target.auth_file.as_deref(), &target.repository.registry)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| PublishError::Registry(e.to_string()))?;
        let pushed = rt.block_on(async {
            let client = registry::client(target.insecure)?;
            registry::push(&client, &auth, &target.repository, id.as_str(), &written, &config, &manifest).await
        })?;
        let size = written.iter().map(|l| l.size).sum::<u64>() + config.len() as u64;
        Ok(Published {
            image: target.repository.by_digest(&pushed.digest),
            digest: pushed.digest,
            size,
            layers: written,
            reused: pushed.reused,
            marker: marker.clone(),
            build_seconds,
            push_seconds: push_start.elapsed().as_secs_f64(),
        })
    })();
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// The termination message the leader reads: the digest, size and lock, or the error. The
/// kubelet keeps at most 4096 bytes: the lock is left out when it does not fit.
pub fn termination_message(result: &Result<Published, PublishError>) -> String {
    let v = match result {
        Ok(p) => {
            let full = json!({"digest": p.digest, "sizeBytes": p.size, "buildSeconds": p.build_seconds,
                              "lock": p.marker.lock});
            if full.to_string().len() <= 4000 {
                full
            } else {
                json!({"digest": p.digest, "sizeBytes": p.size, "buildSeconds": p.build_seconds})
            }
        }
        Err(e) => {
            let mut msg = e.to_string();
            if let PublishError::Build(b) = e {
                if let Some(h) = mat::hint(b) {
                    msg = format!("{msg} ({h})");
                }
            }
            // Whole characters off the end until it fits (the kubelet keeps 4096 bytes).
            while msg.len() > 3900 {
                msg.pop();
            }
            json!({ "error": msg })
        }
    };
    v.to_string()
}
