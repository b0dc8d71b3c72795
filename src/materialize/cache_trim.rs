//! Keeping the uv cache under a size (`nixuv gc --uv-cache-max-size`, the config's
//! `stores.uvCacheMaxSize`): `uv cache prune` keeps every unpacked wheel, so the cache only grows.
//! An unpacked wheel (a directory of `cache/archive-v0/`) whose files no venv hard-links any more
//! (every file's link count is 1) serves no env; such directories are removed, least recently
//! linked first (the newest change time of their files: making or removing a hard link changes
//! it), until the cache fits. Walked without following a link, bounded in entries, under the uv
//! cache lease, so no uv runs on the cache meanwhile. uv's pointers to a removed directory (the
//! small files under `wheels-v*/` and `sdists-v*/` that name it) are removed with it, so that a
//! later build that needs the wheel fetches and unpacks it again instead of failing. nixuv's own
//! bytecode store (`pyc/`, see `bytecode`) counts too: a file there that no venv links (link
//! count 1) is removed the same way, oldest first among the rest.

use std::collections::HashSet;
use std::time::Duration;

use super::layout::{self, Layout};
use super::lease::Lease;
use super::store::{Contents, Kind, StoreDir};
use super::MaterializeError;

/// Entries looked at, at most, per trim (a cache of millions of files is counted partly).
const MAX_ENTRIES: usize = 2_000_000;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TrimReport {
    /// The cache's bytes before (each file once).
    pub before: u64,
    pub removed: Vec<String>,
    pub freed: u64,
}

/// Bytes of a directory tree (each inode once), whether any file in it is linked from elsewhere,
/// and the newest change time of its files.
fn scan(dir: &StoreDir, seen: &mut HashSet<(u64, u64)>, budget: &mut usize) -> (u64, bool, i64) {
    let (mut bytes, mut linked, mut newest) = (0u64, false, i64::MIN);
    for name in dir.names().unwrap_or_default() {
        if *budget == 0 {
            break;
        }
        *budget -= 1;
        match dir.kind(&name) {
            Kind::Dir => {
                if let Some(sub) = dir.subdir(&name) {
                    let (b, l, n) = scan(&sub, seen, budget);
                    bytes += b;
                    linked |= l;
                    newest = newest.max(n);
                }
            }
            Kind::File => {
                if let (Some((links, len, ctime)), Some((dev, ino, _))) =
                    (dir.file_links(&name), dir.file_identity(&name))
                {
                    linked |= links > 1;
                    newest = newest.max(ctime);
                    if seen.insert((dev, ino)) {
                        bytes += len;
                    }
                }
            }
            _ => {}
        }
    }
    (bytes, linked, newest)
}

/// What a trim may remove: an unpacked wheel of `archive-v0/`, or a bytecode file of `pyc/`
/// (`pyc/<tag>/<shard>/<file>`) that no venv links.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Unused {
    Archive(String),
    Pyc(String, String, String),
}

/// The bytecode files of `pyc/` that no venv links, as (change time, entry, bytes).
fn unused_bytecode(
    pyc: &StoreDir,
    out: &mut Vec<(i64, Unused, u64)>,
    budget: &mut usize,
) -> Result<(), MaterializeError> {
    for tag in pyc.names()? {
        let Some(tag_dir) = pyc.subdir(&tag) else { continue };
        for shard in tag_dir.names()? {
            let Some(shard_dir) = tag_dir.subdir(&shard) else { continue };
            for file in shard_dir.names()? {
                if *budget == 0 {
                    return Ok(());
                }
                *budget -= 1;
                if let Some((1, len, ctime)) = shard_dir.file_links(&file) {
                    out.push((ctime, Unused::Pyc(tag.clone(), shard.clone(), file), len));
                }
            }
        }
    }
    Ok(())
}

/// Trims the uv cache of `layout` (uv's `cache/` and nixuv's `pyc/`) to `max_bytes` (see the
/// module docs).
pub fn trim(
    layout: &Layout,
    max_bytes: u64,
    lease_ttl: Duration,
    dry_run: bool,
) -> Result<TrimReport, MaterializeError> {
    let mut report = TrimReport::default();
    let cache = StoreDir::open(&layout.uv_root, "cache", false)?;
    let pyc = StoreDir::open(&layout.uv_root, layout::PYC, false)?;
    if cache.is_none() && pyc.is_none() {
        return Ok(report);
    }
    let locks = StoreDir::ensure(&layout.uv_root, layout::LOCKS)?;
    let _cache_lease = Lease::hold(&locks, layout::UV_CACHE_LEASE, lease_ttl, Duration::from_secs(3600), |_| {})?;
    let mut seen = HashSet::new();
    let mut budget = MAX_ENTRIES;
    for dir in cache.iter().chain(&pyc) {
        report.before += scan(dir, &mut seen, &mut budget).0;
    }
    if report.before <= max_bytes {
        return Ok(report);
    }
    let mut unused: Vec<(i64, Unused, u64)> = Vec::new();
    let archives = cache.as_ref().and_then(|c| c.subdir("archive-v0"));
    if let Some(archives) = &archives {
        for name in archives.names()? {
            let Some(dir) = archives.subdir(&name) else { continue };
            let mut own = HashSet::new();
            let mut budget = MAX_ENTRIES;
            let (bytes, linked, newest) = scan(&dir, &mut own, &mut budget);
            if !linked {
                unused.push((newest, Unused::Archive(name), bytes));
            }
        }
    }
    if let Some(pyc) = &pyc {
        let mut budget = MAX_ENTRIES;
        unused_bytecode(pyc, &mut unused, &mut budget)?;
    }
    unused.sort();
    let mut size = report.before;
    let mut bytecode = 0usize;
    for (_, entry, bytes) in unused {
        if size <= max_bytes {
            break;
        }
        match entry {
            Unused::Archive(name) => {
                if let (false, Some(archives)) = (dry_run, &archives) {
                    archives.remove_entry(&name)?;
                }
                tracing::info!(archive = %name, bytes, dry_run, "uv cache: removed an unpacked wheel no env links");
                report.removed.push(name);
            }
            Unused::Pyc(tag, shard, file) => {
                let dir = pyc.as_ref().and_then(|p| p.subdir(&tag)).and_then(|t| t.subdir(&shard));
                if let (false, Some(dir)) = (dry_run, dir) {
                    dir.remove_entry(&file)?;
                }
                bytecode += 1;
            }
        }
        size = size.saturating_sub(bytes);
        report.freed += bytes;
    }
    if bytecode > 0 {
        tracing::info!(files = bytecode, dry_run, "uv cache: removed bytecode no env links");
    }
    if let (false, Some(cache)) = (dry_run, &cache) {
        if !report.removed.is_empty() {
            drop_pointers(cache, &report.removed)?;
        }
    }
    Ok(report)
}

/// Removes uv's pointer files (under `wheels-v*/` and `sdists-v*/`, at most 1 MiB each) that
/// name one of the `removed` archive directories.
fn drop_pointers(cache: &StoreDir, removed: &[String]) -> Result<(), MaterializeError> {
    fn walk(dir: &StoreDir, removed: &[String], budget: &mut usize) -> Result<(), MaterializeError> {
        for name in dir.names()? {
            if *budget == 0 {
                return Ok(());
            }
            *budget -= 1;
            match dir.kind(&name) {
                Kind::Dir => {
                    if let Some(sub) = dir.subdir(&name) {
                        walk(&sub, removed, budget)?;
                    }
                }
                Kind::File => {
                    if let Ok(Contents::Bytes(b)) = dir.read_small(&name, 1 << 20) {
                        let names_one = removed.iter().any(|id| b.windows(id.len()).any(|w| w == id.as_bytes()));
                        if names_one {
                            dir.remove_entry(&name)?;
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
    let mut budget = MAX_ENTRIES;
    for name in cache.names()? {
        if name.starts_with("wheels-v") || name.starts_with("sdists-v") {
            if let Some(dir) = cache.subdir(&name) {
                walk(&dir, removed, &mut budget)?;
            }
        }
    }
    Ok(())
}
