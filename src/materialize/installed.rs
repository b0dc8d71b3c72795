//! What an env actually holds, recorded in its marker when it is published: the interpreter, every
//! Python distribution, the nix store paths. Read from the tools' own records — uv's
//! `pip list --format json`, the venv's `pyvenv.cfg`, each distribution's `RECORD` (the list of its
//! files with their hashes, which uv writes), and the nix profile's `manifest.json` — never
//! from logs.

use std::ffi::OsString;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::store::{Contents, StoreDir};
use super::tool::{Tool, ToolError};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interpreter {
    /// The full version (`3.12.4`), from the venv's `pyvenv.cfg`.
    pub version: String,
    /// Where the interpreter lives (`home` in `pyvenv.cfg`).
    pub home: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dist {
    /// Normalised name, as uv reports it.
    pub name: String,
    pub version: String,
    /// SHA-256 of the distribution's installed `RECORD` (which lists every file it installed with
    /// that file's own hash): uv reports no other per-distribution hash for what is installed.
    pub record_sha256: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lock {
    pub interpreter: Option<Interpreter>,
    pub python: Vec<Dist>,
    /// The store paths of the nix profile's elements.
    pub nix: Vec<String>,
}

/// A small text file (`pyvenv.cfg`, a `RECORD`, `manifest.json`) in a store directory, read the
/// store's way: never through a link, never blocking on a FIFO, size-capped.
fn read_capped(dir: &StoreDir, name: &str) -> Option<Vec<u8>> {
    match dir.read_small(name, 16 << 20) {
        Ok(Contents::Bytes(b)) => Some(b),
        _ => None,
    }
}

/// `dir`, opened for reading (the directory this build just made or resolved).
fn open(dir: &Path) -> Option<StoreDir> {
    StoreDir::open(dir, "", false).ok().flatten()
}

fn normalise(name: &str) -> String {
    name.chars().map(|c| if c == '-' || c == '.' { '_' } else { c.to_ascii_lowercase() }).collect()
}

/// The venv's `lib/*/site-packages` directories.
pub(crate) fn site_packages(venv: &StoreDir) -> Vec<StoreDir> {
    let Some(lib) = venv.subdir("lib") else { return Vec::new() };
    lib.names().unwrap_or_default().iter().filter_map(|n| lib.subdir(n)?.subdir("site-packages")).collect()
}

/// The interpreter and distributions of `venv`, from uv and the venv's own files. With
/// `overlay_python` (the declared version), `venv` is an overlay directory: the distributions are
/// at its top and no interpreter is recorded (the app runs the image's own).
pub fn python(
    uv: &Tool,
    venv: &Path,
    overlay_python: Option<&str>,
    env: &[(&str, OsString)],
    remove: &[&str],
) -> Result<(Option<Interpreter>, Vec<Dist>), ToolError> {
    let dir = open(venv);
    let cfg = dir
        .as_ref()
        .and_then(|d| read_capped(d, "pyvenv.cfg"))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let field = |k: &str| {
        cfg.lines()
            .find_map(|l| l.split_once('=').filter(|(key, _)| key.trim() == k).map(|(_, v)| v.trim().to_string()))
    };
    let interpreter =
        Interpreter { version: field("version_info").unwrap_or_default(), home: field("home").unwrap_or_default() };
    let mut args: Vec<OsString> = vec!["pip".into(), "list".into(), "--format".into(), "json".into()];
    match overlay_python {
        Some(version) => args.extend(["--target".into(), venv.into(), "--python".into(), version.into()]),
        None => args.extend(["--python".into(), venv.join("bin/python").into()]),
    }
    let out = uv.run(&args, env, remove, None)?;
    #[derive(Deserialize)]
    struct Listed {
        name: String,
        version: String,
    }
    let listed: Vec<Listed> = serde_json::from_str(&out).unwrap_or_default();
    let sites = match (overlay_python, dir.as_ref()) {
        (Some(_), Some(d)) => d.try_clone().into_iter().collect(),
        (None, Some(d)) => site_packages(d),
        (_, None) => Vec::new(),
    };
    let dists = listed
        .into_iter()
        .map(|l| {
            let dir = format!("{}-{}.dist-info", normalise(&l.name), l.version);
            let record = sites.iter().find_map(|s| read_capped(&s.subdir(&dir)?, "RECORD"));
            Dist { record_sha256: record.map(|r| hex::encode(Sha256::digest(r))), name: l.name, version: l.version }
        })
        .collect();
    Ok((overlay_python.is_none().then_some(interpreter), dists))
}

/// The store paths of the profile whose resolved directory (in the nix volume) is `profile_dir`,
/// from nix's own `manifest.json`; the paths are as nix and app containers see them (`/nix/...`).
pub fn nix(profile_dir: &Path) -> Vec<String> {
    let Some(text) = open(profile_dir).and_then(|d| read_capped(&d, "manifest.json")) else { return Vec::new() };
    let v: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
    let mut out: Vec<String> = v["elements"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["storePaths"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p.as_str().map(String::from))
        .collect();
    out.sort();
    out.dedup();
    out
}
