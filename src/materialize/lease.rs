//! A lease file with a heartbeat: the cross-node lock for building an env or touching a store.
//!
//! Written by hand because no crate offers what shared ReadWriteMany volumes need: `flock` and
//! `lockf` are unreliable or unsupported over NFS (uv #18073, #9050), and a lock held by a Pod on a
//! lost node must expire. The lease is a file created with `O_EXCL` (atomic on NFSv3+ and local
//! filesystems); its holder refreshes its mtime every `ttl / 4`; a lease whose mtime is older than
//! `ttl` belongs to a dead holder and is taken over. Take-overs are serialised by a second,
//! short-lived `O_EXCL` file so two waiters cannot both remove a lease and one of them remove the
//! other's fresh one.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use super::store::nonce;
use super::store::{Contents, Kind, StoreDir, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("lease {path}: still held by {holder} after waiting {waited:?}")]
    Timeout { path: PathBuf, holder: String, waited: Duration },
}

/// The most of a lease file that is read: a holder id is well under this.
const HOLDER_CAP: u64 = 256;

/// Who holds a lease: written into the file for humans and logs.
pub fn holder_id() -> String {
    let host =
        std::env::var("HOSTNAME").ok().or_else(|| std::fs::read_to_string("/etc/hostname").ok()).unwrap_or_default();
    format!("{}:{}:{}", sanitise(host.trim()), std::process::id(), nonce())
}

/// A holder id as it may be printed: at most 96 characters of `[A-Za-z0-9.:_-]`. A lease file is
/// written by whoever can write the store, so its content is never printed as is.
fn sanitise(raw: &str) -> String {
    raw.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '_' | '-')).take(96).collect()
}

/// Who holds the lease `name`, as it may be logged.
pub fn holder(dir: &StoreDir, name: &str) -> String {
    match dir.read_small(name, HOLDER_CAP) {
        Ok(Contents::Bytes(b)) => {
            let s = sanitise(&String::from_utf8_lossy(&b));
            if s.is_empty() {
                "an unnamed holder".into()
            } else {
                s
            }
        }
        Ok(Contents::Absent) => "nobody (released)".into(),
        Ok(Contents::Malformed(why)) => format!("a malformed lease entry (it {why})"),
        Err(_) => "an unreadable lease".into(),
    }
}

/// A held lease; released (deleted) on drop if it is still ours.
pub struct Lease {
    dir: Arc<StoreDir>,
    name: String,
    token: String,
    stop: Arc<AtomicBool>,
    heartbeat: Option<std::thread::JoinHandle<()>>,
}

fn is_ours(dir: &StoreDir, name: &str, token: &str) -> bool {
    matches!(dir.read_small(name, HOLDER_CAP), Ok(Contents::Bytes(b)) if b == token.as_bytes())
}

impl Lease {
    /// Removes the lease if it is older than `ttl`, or is not a regular file at all (a planted
    /// link, FIFO or directory: malformed, so dead), under the take-over guard. True if removed.
    fn take_over_if_stale(dir: &StoreDir, name: &str, ttl: Duration) -> Result<bool, LeaseError> {
        let stale = |dir: &StoreDir| match dir.kind(name) {
            Kind::Absent => false,
            Kind::File => dir.age(name).is_some_and(|a| a > ttl),
            _ => true,
        };
        if !stale(dir) {
            return Ok(false);
        }
        let guard = format!("{}.takeover", name.strip_suffix(".lease").unwrap_or(name));
        if dir.kind(&guard) != Kind::File || dir.age(&guard).is_some_and(|a| a > ttl) {
            // A taker-over died between its two steps (microseconds apart), or something was
            // planted there: clear it.
            dir.remove_entry(&guard)?;
        }
        if !dir.create_new(&guard, holder_id().as_bytes())? {
            return Ok(false);
        }
        // Re-check under the guard: the lease may have been renewed or replaced meanwhile.
        let removed = stale(dir) && dir.remove_entry(name).is_ok();
        let _ = dir.remove_entry(&guard);
        Ok(removed)
    }

    /// Takes the lease `name` in `dir`, waiting while a live holder has it. `done()` is polled
    /// while waiting: when it returns true the wait ends with `Ok(None)` (someone else did the
    /// work).
    pub fn acquire(
        dir: &StoreDir,
        name: &str,
        ttl: Duration,
        max_wait: Duration,
        mut done: impl FnMut() -> bool,
        mut on_wait: impl FnMut(&str),
    ) -> Result<Option<Lease>, LeaseError> {
        let token = holder_id();
        let start = std::time::Instant::now();
        let mut announced = false;
        loop {
            if dir.create_new(name, token.as_bytes())? {
                return Ok(Some(Self::start(dir.try_clone()?, name, token, ttl)));
            }
            if done() {
                return Ok(None);
            }
            let who = holder(dir, name);
            if Self::take_over_if_stale(dir, name, ttl)? {
                on_wait(&format!("took over a stale lease from {who} (no heartbeat for over {ttl:?})"));
                continue;
            }
            if !announced {
                on_wait(&format!("waiting for {who}"));
                announced = true;
            }
            if start.elapsed() > max_wait {
                return Err(LeaseError::Timeout { path: dir.entry_path(name), holder: who, waited: start.elapsed() });
            }
            std::thread::sleep(Duration::from_millis(100).min(ttl / 4));
        }
    }

    /// Takes the lease, waiting up to `max_wait` while a live holder has it (no early exit).
    pub fn hold(
        dir: &StoreDir,
        name: &str,
        ttl: Duration,
        max_wait: Duration,
        on_wait: impl FnMut(&str),
    ) -> Result<Lease, LeaseError> {
        Ok(Self::acquire(dir, name, ttl, max_wait, || false, on_wait)?
            .expect("acquire only returns None when done() is true"))
    }

    fn start(dir: StoreDir, name: &str, token: String, ttl: Duration) -> Lease {
        let dir = Arc::new(dir);
        let stop = Arc::new(AtomicBool::new(false));
        let (d, n, t, s) = (Arc::clone(&dir), name.to_string(), token.clone(), Arc::clone(&stop));
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
                if !(is_ours(&d, &n, &t) && d.refresh(&n)) {
                    tracing::warn!(lease = %d.entry_path(&n).display(), "lease lost (taken over after a stalled heartbeat); finishing anyway, publishing is atomic");
                    return;
                }
            }
        });
        Lease { dir, name: name.to_string(), token, stop, heartbeat: Some(heartbeat) }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.entry_path(&self.name)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.heartbeat.take() {
            let _ = h.join();
        }
        if is_ours(&self.dir, &self.name, &self.token) {
            let _ = self.dir.remove_entry(&self.name);
        }
    }
}

/// True when the lease `name` is a regular file refreshed within `ttl` (a live holder).
pub fn is_held(dir: &StoreDir, name: &str, ttl: Duration) -> bool {
    dir.kind(name) == Kind::File && dir.age(name).is_some_and(|a| a <= ttl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, OpenOptions};
    use std::time::SystemTime;

    fn dir() -> (tempfile::TempDir, StoreDir) {
        let t = tempfile::tempdir().unwrap();
        let d = StoreDir::ensure(t.path(), "locks").unwrap();
        (t, d)
    }

    #[test]
    fn exclusive_then_released() {
        let (_t, d) = dir();
        let ttl = Duration::from_secs(5);
        let a = Lease::acquire(&d, "x.lease", ttl, Duration::from_secs(1), || false, |_| {}).unwrap().unwrap();
        assert!(is_held(&d, "x.lease", ttl));
        let err = Lease::acquire(&d, "x.lease", ttl, Duration::from_millis(300), || false, |_| {}).err().unwrap();
        assert!(matches!(err, LeaseError::Timeout { .. }), "{err}");
        drop(a);
        assert_eq!(d.kind("x.lease"), Kind::Absent);
        assert!(Lease::acquire(&d, "x.lease", ttl, Duration::from_secs(1), || false, |_| {}).unwrap().is_some());
    }

    #[test]
    fn stale_lease_is_taken_over_and_done_ends_the_wait() {
        let (_t, d) = dir();
        let p = d.entry_path("x.lease");
        fs::write(&p, "dead-holder").unwrap();
        let old = SystemTime::now() - Duration::from_secs(60);
        OpenOptions::new().write(true).open(&p).unwrap().set_modified(old).unwrap();
        let mut notes = Vec::new();
        let l = Lease::acquire(
            &d,
            "x.lease",
            Duration::from_secs(2),
            Duration::from_secs(5),
            || false,
            |n| notes.push(n.to_string()),
        )
        .unwrap();
        assert!(l.is_some());
        assert!(notes[0].contains("took over a stale lease from dead-holder"), "{notes:?}");
        // A live holder keeps it; `done` ends the wait.
        let got =
            Lease::acquire(&d, "x.lease", Duration::from_secs(2), Duration::from_secs(5), || true, |_| {}).unwrap();
        assert!(got.is_none());
    }

    #[test]
    fn heartbeat_keeps_a_long_hold_alive() {
        let (_t, d) = dir();
        let ttl = Duration::from_millis(400);
        let _held = Lease::acquire(&d, "x.lease", ttl, Duration::from_secs(1), || false, |_| {}).unwrap().unwrap();
        std::thread::sleep(Duration::from_millis(1200));
        assert!(is_held(&d, "x.lease", ttl), "heartbeat refreshed the lease");
        let err = Lease::acquire(&d, "x.lease", ttl, Duration::from_millis(500), || false, |_| {}).err();
        assert!(err.is_some(), "a live lease is not taken over");
    }

    #[test]
    fn planted_entries_are_taken_over_at_once_and_never_printed() {
        let (t, d) = dir();
        let secret = t.path().join("token");
        fs::write(&secret, "eyJhbGciOiJSUzI1NiJ9.secret-service-account-token").unwrap();
        std::os::unix::fs::symlink(&secret, d.entry_path("a.lease")).unwrap();
        assert!(std::process::Command::new("mkfifo").arg(d.entry_path("b.lease")).status().unwrap().success());
        fs::create_dir(d.entry_path("c.lease")).unwrap();
        fs::write(d.entry_path("d.lease"), "evil\x1b[2J\nholder with spaces and a very long tail ".repeat(20)).unwrap();
        let ttl = Duration::from_secs(60);
        for name in ["a.lease", "b.lease", "c.lease"] {
            let mut notes = Vec::new();
            let l = Lease::acquire(&d, name, ttl, Duration::from_secs(2), || false, |n| notes.push(n.to_string()));
            assert!(l.unwrap().is_some(), "{name}");
            assert!(!notes.concat().contains("secret"), "{notes:?}");
        }
        assert!(secret.exists(), "the link's target is untouched");
        let who = holder(&d, "d.lease");
        assert_eq!(who, "a malformed lease entry (it is 980 bytes, over the limit of 256)");
        fs::write(d.entry_path("e.lease"), "host\x1b[2J\n; rm -rf / ".repeat(8)).unwrap();
        let who = holder(&d, "e.lease");
        assert!(who.len() <= 96 && who.chars().all(|c| c.is_ascii_alphanumeric() || ".:_-".contains(c)), "{who}");
        assert!(who.starts_with("host2Jrm-rf"), "{who}");
    }
}
