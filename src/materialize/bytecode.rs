//! A new venv's bytecode, compiled once per source file across the envs of a store. Compiling
//! is most of a build once the wheels are cached (every env compiles numpy and pandas again
//! although their files are the same hard-linked inodes), so each `.pyc` is kept in
//! `pyc/<tag>/` on the uv volume under the SHA-256 of its source, and a later env hard-links it
//! instead of compiling: a second env pays only for the files no env had before.
//!
//! The bytecode is hash-checked (PEP 552, `CHECKED_HASH`): valid whatever times the files carry
//! (hard links, image layers), and a changed source is noticed at import. It names its source
//! by its path below `site-packages`, the same in every env: the interpreter replaces the name
//! with the file's real path when it imports it (`_imp._fix_co_filename`), so tracebacks are
//! unchanged, and the same source gives the same bytes in every env and image.
//!
//! Written by hand: uv's `--compile-bytecode` compiles every file of every env, and neither uv
//! nor `compileall` keeps bytecode by content. The interpreter compiles; nixuv decides what.
//! Store entries are taken as the store's rules say: found without following a link, linked
//! only when the linked entry is a regular file of bounded size (see [`StoreDir::link_file`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use super::store::{Contents, Kind, StoreDir};
use super::{io, MaterializeError};

/// Source files larger than this are compiled but not kept (generated tables; none in common
/// wheels is near it).
const MAX_SOURCE: u64 = 32 << 20;
/// The largest bytecode file linked from the store.
const MAX_PYC: u64 = 64 << 20;
/// Files looked at, at most, per venv.
const MAX_FILES: usize = 500_000;

/// Asks the interpreter for its bytecode tag (`cpython-312`) and magic number.
const QUERY: &str = r#"
import sys, importlib.util
print(sys.implementation.cache_tag or "")
print(importlib.util.MAGIC_NUMBER.hex())
"#;

/// One worker: NUL-separated (source, bytecode file, name in the bytecode) triples on stdin;
/// prints one line per file that does not compile (a test file for another Python version, as
/// some wheels ship), which is skipped, as uv and pip skip it.
const WORKER: &str = r#"
import os, sys, py_compile
items = sys.stdin.buffer.read().split(b"\0")
mode = py_compile.PycInvalidationMode.CHECKED_HASH
for i in range(0, len(items) - 2, 3):
    src, cfile, dfile = (os.fsdecode(p) for p in items[i:i + 3])
    try:
        py_compile.compile(src, cfile=cfile, dfile=dfile, doraise=True, invalidation_mode=mode)
    except Exception as e:
        print(dfile + ": " + type(e).__name__, flush=True)
"#;

/// What a venv's compile did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Source files found.
    pub files: usize,
    /// Bytecode linked from the store.
    pub reused: usize,
    /// Bytecode compiled now (and kept).
    pub compiled: usize,
    /// Sources that do not compile.
    pub failed: usize,
}

/// A source file whose bytecode is not in the store yet.
struct Miss {
    /// The directory below the venv's `site-packages`.
    dir: PathBuf,
    source: String,
    key: Option<String>,
    /// The source's size, to share the compiling out evenly.
    bytes: u64,
}

/// `foo.py` -> `foo.<tag>.pyc`.
fn pyc_name(source: &str, tag: &str) -> String {
    format!("{}.{tag}.pyc", source.strip_suffix(".py").unwrap_or(source))
}

/// An interpreter's bytecode names: its cache tag (`cpython-312`, in `__pycache__` file names)
/// and the store directory for its bytecode (`cpython-312-<magic number>`).
struct Tag {
    cache_tag: String,
    dir: String,
}

fn interpreter_tag(python: &Path) -> Result<Option<Tag>, MaterializeError> {
    let out = Command::new(python).args(["-I", "-B", "-c", QUERY]).stdin(Stdio::null()).output().map_err(io(python))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(io(python)(std::io::Error::other(format!("cannot ask for its bytecode tag: {err}"))));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let (tag, magic) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
    let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    Ok((plain(tag) && plain(magic)).then(|| Tag { cache_tag: tag.to_string(), dir: format!("{tag}-{magic}") }))
}

/// Walks `dir` (below `site-packages` at `rel`): links what the store has, collects the rest.
fn walk(
    dir: &StoreDir,
    rel: &Path,
    tag: &Tag,
    cache: &StoreDir,
    stats: &mut Stats,
    misses: &mut Vec<Miss>,
    budget: &mut usize,
) {
    let mut names = dir.names().unwrap_or_default();
    names.sort();
    let mut pycache: Option<StoreDir> = None;
    for name in &names {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        match dir.kind(name) {
            Kind::Dir if name != "__pycache__" => {
                if let Some(sub) = dir.subdir(name) {
                    walk(&sub, &rel.join(name), tag, cache, stats, misses, budget);
                }
            }
            Kind::File if name.ends_with(".py") => {
                stats.files += 1;
                if pycache.is_none() {
                    pycache = dir.ensure_subdir("__pycache__");
                }
                let Some(out) = &pycache else { continue };
                let target = pyc_name(name, &tag.cache_tag);
                if out.kind(&target) != Kind::Absent {
                    continue;
                }
                let (key, bytes) = match dir.read_small(name, MAX_SOURCE) {
                    Ok(Contents::Bytes(b)) => (Some(hex::encode(Sha256::digest(&b))), b.len() as u64),
                    _ => (None, MAX_SOURCE),
                };
                let hit = key.as_deref().is_some_and(|k| {
                    cache
                        .subdir(&k[..2])
                        .is_some_and(|shard| shard.link_file(&format!("{k}.pyc"), out, &target, MAX_PYC))
                });
                if hit {
                    stats.reused += 1;
                } else {
                    misses.push(Miss { dir: rel.to_path_buf(), source: name.clone(), key, bytes });
                }
            }
            _ => {}
        }
    }
}

/// `misses` shared out among at most `workers` interpreters by size, largest first, each to the
/// least loaded so far: a few big modules (pandas has sources of 500 KB) do not leave one worker
/// compiling long after the others are done.
fn shares(misses: &[Miss], workers: usize) -> Vec<Vec<&Miss>> {
    let mut order: Vec<&Miss> = misses.iter().collect();
    order.sort_by_key(|m| std::cmp::Reverse(m.bytes));
    let mut out: Vec<(u64, Vec<&Miss>)> = vec![(0, Vec::new()); workers.max(1).min(misses.len())];
    for m in order {
        let least = out.iter_mut().min_by_key(|(load, _)| *load).expect("at least one worker when there is a miss");
        least.0 += m.bytes.max(1);
        least.1.push(m);
    }
    out.into_iter().map(|(_, share)| share).collect()
}

/// Compiles `misses` with `workers` interpreters at once; returns the lines of those that failed.
fn compile(
    python: &Path,
    site: &Path,
    tag: &Tag,
    misses: &[Miss],
    workers: usize,
) -> Result<Vec<String>, MaterializeError> {
    let mut children = Vec::new();
    for share in shares(misses, workers) {
        let mut input = Vec::new();
        for m in share {
            let dir = site.join(&m.dir);
            for part in [
                dir.join(&m.source).into_os_string(),
                dir.join("__pycache__").join(pyc_name(&m.source, &tag.cache_tag)).into_os_string(),
                m.dir.join(&m.source).into_os_string(),
            ] {
                input.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(part.as_os_str()));
                input.push(0);
            }
        }
        let mut child = Command::new(python)
            .args(["-I", "-B", "-c", WORKER])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io(python))?;
        // The worker reads all of its input before it writes anything.
        child.stdin.take().expect("piped").write_all(&input).map_err(io(python))?;
        children.push(child);
    }
    let mut failed = Vec::new();
    for child in children {
        let out = child.wait_with_output().map_err(io(python))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(io(python)(std::io::Error::other(format!("compiling bytecode failed: {err}"))));
        }
        failed.extend(String::from_utf8_lossy(&out.stdout).lines().map(String::from));
    }
    Ok(failed)
}

/// Compiles the bytecode of the venv whose interpreter is `python` and whose packages are in
/// `site` (the venv's `site-packages`, at `site_path`), reusing and filling the store's `pyc/`
/// (`pyc_root`, the uv volume's `pyc/`); adds what it did to `stats`.
pub(crate) fn compile_venv(
    python: &Path,
    site: &StoreDir,
    pyc_root: &StoreDir,
    stats: &mut Stats,
) -> Result<(), MaterializeError> {
    let Some(tag) = interpreter_tag(python)? else { return Ok(()) };
    let Some(cache) = pyc_root.ensure_subdir(&tag.dir) else { return Ok(()) };
    let mut misses = Vec::new();
    let mut budget = MAX_FILES;
    walk(site, Path::new(""), &tag, &cache, stats, &mut misses, &mut budget);
    // uv's own count: one interpreter per CPU this container may use (its CPU limit included).
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let failed = compile(python, site.path(), &tag, &misses, workers)?;
    stats.failed += failed.len();
    if let Some(first) = failed.first() {
        tracing::info!(files = failed.len(), first = %first, "bytecode: some sources do not compile (skipped, as uv does)");
    }
    // Keep what was compiled, one directory at a time (opened again without following links).
    let mut by_dir: BTreeMap<&Path, Vec<&Miss>> = BTreeMap::new();
    for m in &misses {
        by_dir.entry(m.dir.as_path()).or_default().push(m);
    }
    for (dir, ms) in by_dir {
        let Some(out) = site.descend(&dir.join("__pycache__")) else { continue };
        for m in ms {
            let target = pyc_name(&m.source, &tag.cache_tag);
            if out.kind(&target) != Kind::File {
                continue;
            }
            stats.compiled += 1;
            let Some(key) = &m.key else { continue };
            // Another build may have kept the same source meanwhile: either copy will do.
            if let Some(shard) = cache.ensure_subdir(&key[..2]) {
                out.link_file(&target, &shard, &format!("{key}.pyc"), MAX_PYC);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_work_is_shared_out_by_size() {
        let miss = |bytes| Miss { dir: PathBuf::new(), source: format!("{bytes}.py"), key: None, bytes };
        let misses: Vec<Miss> = [500, 100, 100, 100, 100, 100, 3].into_iter().map(miss).collect();
        let mut loads: Vec<u64> = shares(&misses, 2).iter().map(|s| s.iter().map(|m| m.bytes).sum()).collect();
        loads.sort();
        assert_eq!(loads, [500, 503]);
        // Never more workers than files, every file once.
        let few = shares(&misses[..2], 8);
        assert_eq!(few.len(), 2);
        assert_eq!(shares(&misses, 3).iter().map(Vec::len).sum::<usize>(), misses.len());
        assert!(shares(&[], 4).is_empty());
        assert_eq!(pyc_name("mod.py", "cpython-312"), "mod.cpython-312.pyc");
    }
}
