//! An env's files as OCI image layers: reproducible gzipped tars (sorted entries, fixed owner and
//! times, `tar`'s deterministic header mode), one per nix store path, one for the interpreters,
//! one for the venv, one for nixuv's own records. The same files give the same layer digest,
//! whichever env they were built for, so envs share layers in the registry and on every node.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// What one layer holds: `(path in the image, path on disk)` roots, each walked whole without
/// following links, under the image directories in `parents`.
#[derive(Debug, Clone)]
pub struct LayerSpec {
    /// What it is, for logs and the layer's `org.opencontainers.image.title`.
    pub title: String,
    pub roots: Vec<(String, PathBuf)>,
}

/// A layer written to disk.
#[derive(Debug, Clone)]
pub struct Layer {
    pub title: String,
    pub file: PathBuf,
    /// `sha256:` of the gzipped tar (the blob).
    pub digest: String,
    /// `sha256:` of the tar (the config's `diff_ids`).
    pub diff_id: String,
    pub size: u64,
}

/// Writes through to `inner`, hashing what passes.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    count: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn sha(h: Sha256) -> String {
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// Whether `path` is bytecode checked against its source's modification time (a `.pyc` whose
/// header flags are 0, PEP 552). Layers carry normalised times, so such bytecode would be stale in
/// every container and never used: it is left out (Python wrote it while the env was built, e.g.
/// in the interpreter's standard library, at times that differ from build to build, which would
/// give the same interpreter another layer digest in every env).
fn timestamp_bytecode(path: &Path, meta: &fs::Metadata) -> bool {
    use std::io::Read;
    if !meta.is_file() || path.extension().is_none_or(|e| e != "pyc") {
        return false;
    }
    let mut head = [0u8; 8];
    let read = fs::File::open(path).and_then(|mut f| f.read_exact(&mut head));
    read.is_ok() && u32::from_le_bytes([head[4], head[5], head[6], head[7]]) == 0
}

/// Every entry under `disk` (itself first), sorted by path, links not followed.
fn walk(disk: &Path, image: &str, out: &mut Vec<(String, PathBuf)>) -> io::Result<()> {
    let meta = fs::symlink_metadata(disk)?;
    if timestamp_bytecode(disk, &meta) {
        return Ok(());
    }
    out.push((image.to_string(), disk.to_path_buf()));
    if meta.is_dir() {
        let mut names: Vec<_> = fs::read_dir(disk)?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
        names.sort();
        for n in names {
            let name = n.to_str().ok_or_else(|| io::Error::other(format!("{}: not UTF-8", disk.join(&n).display())))?;
            walk(&disk.join(&n), &format!("{image}/{name}"), out)?;
        }
    }
    Ok(())
}

/// Writes `spec` as a gzipped tar into `dir`.
pub fn write(spec: &LayerSpec, dir: &Path) -> io::Result<Layer> {
    let mut entries = Vec::new();
    for (image, disk) in &spec.roots {
        walk(disk, image, &mut entries)?;
    }
    // The parents of every root, as plain directories.
    let mut parents: Vec<String> = Vec::new();
    for (image, _) in &spec.roots {
        let mut p = image.as_str();
        while let Some((head, _)) = p.rsplit_once('/') {
            parents.push(head.to_string());
            p = head;
        }
    }
    parents.sort();
    parents.dedup();
    parents.retain(|p| !entries.iter().any(|(i, _)| i == p));
    let file = dir.join(format!("layer-{}.tar.gz", crate::materialize::store::nonce()));
    let blob = Hashing { inner: io::BufWriter::new(fs::File::create(&file)?), hash: Sha256::new(), count: 0 };
    // gzip at the default level with the zlib-rs backend: numpy + pandas (45 MB of blobs) packed
    // in 2.9 s against 7.3 s with miniz_oxide; level 1 took 1.2 s but made 33 % more bytes, which
    // every node pulls (docs/performance.md).
    let gz = flate2::write::GzEncoder::new(blob, flate2::Compression::default());
    let tar_stream = Hashing { inner: gz, hash: Sha256::new(), count: 0 };
    let mut tar = tar::Builder::new(tar_stream);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    let mut all: Vec<(String, Option<PathBuf>)> = parents.into_iter().map(|p| (p, None)).collect();
    all.extend(entries.into_iter().map(|(i, d)| (i, Some(d))));
    all.sort_by(|a, b| a.0.cmp(&b.0));
    for (image, disk) in all {
        match disk {
            None => {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_mtime(1153704088);
                h.set_size(0);
                tar.append_data(&mut h, format!("{image}/"), io::empty())?;
            }
            Some(d) => {
                let ft = fs::symlink_metadata(&d)?.file_type();
                if !(ft.is_dir() || ft.is_file() || ft.is_symlink()) {
                    return Err(io::Error::other(format!(
                        "{}: not a file, directory or link; an env holds nothing else",
                        d.display()
                    )));
                }
                tar.append_path_with_name(&d, &image)?;
            }
        }
    }
    let tar_stream = tar.into_inner()?;
    let diff_id = sha(tar_stream.hash);
    let mut blob = tar_stream.inner.finish()?;
    blob.flush()?;
    Ok(Layer { title: spec.title.clone(), file, digest: sha(blob.hash), diff_id, size: blob.count })
}
