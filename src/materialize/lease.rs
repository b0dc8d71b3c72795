//! A lease file with a heartbeat: the cross-node lock for building an env or touching a store.
//!
//! Written by hand because no crate offers what shared ReadWriteMany volumes need: `flock` and
//! `lockf` are unreliable or unsupported over NFS (uv #18073, #9050), and a lock held by a Pod on a
//! lost node must expire. The lease is a file created with `O_EXCL` (atomic on NFSv3+ and local
//! filesystems); its holder refreshes its mtime every `ttl / 4`; a lease whose mtime is older than
//! `ttl` belongs to a dead holder and is taken over. Take-overs are serialised by a second,
//! short-lived `O_EXCL` file so two waiters cannot both remove a lease and one of them remove the
//! other's fresh one.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("lease {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lease {path}: still held by {holder} after waiting {waited:?}")]
    Timeout { path: PathBuf, holder: String, waited: Duration },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LeaseError + '_ {
    move |source| LeaseError::Io { path: path.to_path_buf(), source }
}

/// Who holds a lease: written into the file for humans and logs.
pub fn holder_id() -> String {
    let host = std::env::var("HOSTNAME").ok().or_else(|| fs::read_to_string("/etc/hostname").ok()).unwrap_or_default();
    format!("{}:{}:{}", host.trim(), std::process::id(), nonce())
}

/// 16 hex chars from the clock and the pid; enough to tell holders apart.
pub fn nonce() -> String {
    use sha2::{Digest, Sha256};
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut h = Sha256::new();
    h.update(now.as_nanos().to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(format!("{:?}", std::thread::current().id()).as_bytes());
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    h.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    hex::encode(&h.finalize()[..8])
}

/// How long ago `path` (not what it links to) was last modified.
pub(crate) fn age(path: &Path) -> Option<Duration> {
    let m = fs::symlink_metadata(path).ok()?.modified().ok()?;
    Some(SystemTime::now().duration_since(m).unwrap_or_default())
}

/// A held lease; released (deleted) on drop if it is still ours.
pub struct Lease {
    path: PathBuf,
    token: String,
    stop: Arc<AtomicBool>,
    heartbeat: Option<std::thread::JoinHandle<()>>,
}

impl Lease {
    fn try_create(path: &Path, token: &str) -> Result<bool, LeaseError> {
        match OpenOptions::new().write(true).create_new(true).open(path) {
            Ok(mut f) => {
                f.write_all(token.as_bytes()).and_then(|_| f.sync_all()).map_err(io(path))?;
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io(path)(e)),
        }
    }

    /// Removes `path` if it is older than `ttl`, under the take-over guard. True if removed.
    fn take_over_if_stale(path: &Path, ttl: Duration) -> Result<bool, LeaseError> {
        if age(path).is_none_or(|a| a <= ttl) {
            return Ok(false);
        }
        let guard = path.with_extension("takeover");
        if age(&guard).is_some_and(|a| a > ttl) {
            // A taker-over died between its two steps (microseconds apart): clear its guard.
            let _ = fs::remove_file(&guard);
        }
        if !Self::try_create(&guard, &holder_id())? {
            return Ok(false);
        }
        // Re-check under the guard: the lease may have been renewed or replaced meanwhile.
        let removed = if age(path).is_some_and(|a| a > ttl) { fs::remove_file(path).is_ok() } else { false };
        let _ = fs::remove_file(&guard);
        Ok(removed)
    }

    /// Takes the lease at `path`, waiting while a live holder has it. `done()` is polled while
    /// waiting: when it returns true the wait ends with `Ok(None)` (someone else did the work).
    pub fn acquire(
        path: &Path,
        ttl: Duration,
        max_wait: Duration,
        mut done: impl FnMut() -> bool,
        mut on_wait: impl FnMut(&str),
    ) -> Result<Option<Lease>, LeaseError> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let token = holder_id();
        let start = std::time::Instant::now();
        let mut announced = false;
        loop {
            if Self::try_create(path, &token)? {
                return Ok(Some(Self::start(path, token, ttl)));
            }
            if done() {
                return Ok(None);
            }
            let holder = fs::read_to_string(path).unwrap_or_default();
            if Self::take_over_if_stale(path, ttl)? {
                on_wait(&format!("took over a stale lease from {holder} (no heartbeat for over {ttl:?})"));
                continue;
            }
            if !announced {
                on_wait(&format!("waiting for {holder}"));
                announced = true;
            }
            if start.elapsed() > max_wait {
                return Err(LeaseError::Timeout { path: path.to_path_buf(), holder, waited: start.elapsed() });
            }
            std::thread::sleep(Duration::from_millis(100).min(ttl / 4));
        }
    }

    /// Takes the lease, waiting up to `max_wait` while a live holder has it (no early exit).
    pub fn hold(
        path: &Path,
        ttl: Duration,
        max_wait: Duration,
        on_wait: impl FnMut(&str),
    ) -> Result<Lease, LeaseError> {
        Ok(Self::acquire(path, ttl, max_wait, || false, on_wait)?
            .expect("acquire only returns None when done() is true"))
    }

    fn start(path: &Path, token: String, ttl: Duration) -> Lease {
        let stop = Arc::new(AtomicBool::new(false));
        let (p, t, s) = (path.to_path_buf(), token.clone(), Arc::clone(&stop));
        let heartbeat = std::thread::spawn(move || {
            let every = ttl / 4;
            let step = Duration::from_millis(50).min(every);
            let mut last = std::time::Instant::now();
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(step);
                if last.elapsed() < every {
                    continue;
                }
                last = std::time::Instant::now();
                match fs::read_to_string(&p) {
                    Ok(cur) if cur == t => {
                        if let Ok(f) = OpenOptions::new().write(true).open(&p) {
                            let _ = f.set_modified(SystemTime::now());
                        }
                    }
                    _ => {
                        tracing::warn!(lease = %p.display(), "lease lost (taken over after a stalled heartbeat); finishing anyway, publishing is atomic");
                        return;
                    }
                }
            }
        });
        Lease { path: path.to_path_buf(), token, stop, heartbeat: Some(heartbeat) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.heartbeat.take() {
            let _ = h.join();
        }
        if fs::read_to_string(&self.path).is_ok_and(|c| c == self.token) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// True when a lease file exists and is fresh (a live holder).
pub fn is_held(path: &Path, ttl: Duration) -> bool {
    age(path).is_some_and(|a| a <= ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_then_released() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lease");
        let ttl = Duration::from_secs(5);
        let a = Lease::acquire(&p, ttl, Duration::from_secs(1), || false, |_| {}).unwrap().unwrap();
        assert!(is_held(&p, ttl));
        let err = Lease::acquire(&p, ttl, Duration::from_millis(300), || false, |_| {}).err().unwrap();
        assert!(matches!(err, LeaseError::Timeout { .. }), "{err}");
        drop(a);
        assert!(!p.exists());
        assert!(Lease::acquire(&p, ttl, Duration::from_secs(1), || false, |_| {}).unwrap().is_some());
    }

    #[test]
    fn stale_lease_is_taken_over_and_done_ends_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lease");
        fs::write(&p, "dead-holder").unwrap();
        let old = SystemTime::now() - Duration::from_secs(60);
        OpenOptions::new().write(true).open(&p).unwrap().set_modified(old).unwrap();
        let mut notes = Vec::new();
        let l =
            Lease::acquire(&p, Duration::from_secs(2), Duration::from_secs(5), || false, |n| notes.push(n.to_string()))
                .unwrap();
        assert!(l.is_some());
        assert!(notes[0].contains("took over a stale lease from dead-holder"), "{notes:?}");
        // A live holder keeps it; `done` ends the wait.
        let got = Lease::acquire(&p, Duration::from_secs(2), Duration::from_secs(5), || true, |_| {}).unwrap();
        assert!(got.is_none());
    }

    #[test]
    fn heartbeat_keeps_a_long_hold_alive() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lease");
        let ttl = Duration::from_millis(400);
        let _held = Lease::acquire(&p, ttl, Duration::from_secs(1), || false, |_| {}).unwrap().unwrap();
        std::thread::sleep(Duration::from_millis(1200));
        assert!(is_held(&p, ttl), "heartbeat refreshed the lease");
        let err = Lease::acquire(&p, ttl, Duration::from_millis(500), || false, |_| {}).err();
        assert!(err.is_some(), "a live lease is not taken over");
    }
}
