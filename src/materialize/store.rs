//! The shared stores are hostile ground: any Pod of the namespace can mount the claims read-write
//! and plant anything there (symlinks to other directories or secrets, FIFOs, sockets, directories
//! where files belong, huge or sparse files). Everything nixuv reads, writes or removes on a store
//! goes through a [`StoreDir`]:
//!
//! - each layout directory is opened once as a directory handle, component by component, without
//!   following a symlink (cap-std's `open_dir_nofollow`); every later operation is relative to that
//!   handle and names one plain entry, so a path can neither be redirected by a planted link nor
//!   swapped between a check and its use;
//! - files are opened with `O_NOFOLLOW | O_NONBLOCK` (a FIFO never blocks), their type checked on
//!   the open descriptor, and at most a fixed number of bytes read;
//! - files are written under a random name created with `O_EXCL` (cap-tempfile) and renamed into
//!   place, never through a predictable temporary name;
//! - an entry of the wrong type is malformed: callers treat it as absent and remove it (the entry
//!   itself, never what a link points at), never as fatal for the whole store.

use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use cap_fs_ext::{DirExt, FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt, Permissions, PermissionsExt};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: is {what}, not a directory; refusing a store whose layout directories are links or files (remove it, or run `nixuv materialize`, which replaces it)")]
    Layout { path: PathBuf, what: &'static str },
}

fn io(path: PathBuf) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { path, source }
}

/// What a directory entry is, looked at without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Absent,
    File,
    Dir,
    Symlink,
    /// A FIFO, socket or device.
    Special,
}

impl Kind {
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Absent => "absent",
            Kind::File => "a regular file",
            Kind::Dir => "a directory",
            Kind::Symlink => "a symbolic link",
            Kind::Special => "a FIFO, socket or device",
        }
    }
}

/// What [`StoreDir::read_small`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Contents {
    Absent,
    /// Not a regular file, or larger than the cap: to be treated as absent, and said why.
    Malformed(String),
    Bytes(Vec<u8>),
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
    h.update(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_le_bytes());
    hex::encode(&h.finalize()[..8])
}

/// One directory of a store, held open; every operation names a single entry in it.
#[derive(Debug)]
pub struct StoreDir {
    dir: Dir,
    path: PathBuf,
}

/// True if `name` is one plain path component (no `/`, not `.` or `..`, not empty).
pub fn plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

impl StoreDir {
    /// Opens `root/rel` (root is the volume's mount point, given by the admin; `rel` the layout's
    /// directories below it, e.g. `.nixuv/envs`) without following a symlink below the root.
    /// With `repair`, missing directories are created and a layout entry that is not a directory
    /// (a link, a file, a FIFO) is removed and replaced by one; without it (gc, read-only tools),
    /// such an entry is refused and a missing one gives `Ok(None)`.
    pub fn open(root: &Path, rel: &str, repair: bool) -> Result<Option<Self>, StoreError> {
        if repair {
            std::fs::create_dir_all(root).map_err(io(root.to_path_buf()))?;
        }
        let mut dir = match Dir::open_ambient_dir(root, cap_std::ambient_authority()) {
            Ok(d) => d,
            Err(e) if e.kind() == ErrorKind::NotFound && !repair => return Ok(None),
            Err(e) => return Err(io(root.to_path_buf())(e)),
        };
        let mut path = root.to_path_buf();
        for comp in rel.split('/').filter(|c| !c.is_empty()) {
            path.push(comp);
            let here = StoreDir { dir, path: path.parent().unwrap_or(root).to_path_buf() };
            match here.kind(comp) {
                Kind::Dir => {}
                Kind::Absent if repair => {
                    if let Err(e) = here.dir.create_dir(comp) {
                        if e.kind() != ErrorKind::AlreadyExists {
                            return Err(io(path)(e));
                        }
                    }
                }
                Kind::Absent => return Ok(None),
                other if repair => {
                    tracing::warn!(path = %path.display(), found = other.describe(), "store layout entry is not a directory; replacing it");
                    here.remove_entry(comp)?;
                    here.dir.create_dir(comp).map_err(io(path.clone()))?;
                }
                other => return Err(StoreError::Layout { path, what: other.describe() }),
            }
            dir = match here.dir.open_dir_nofollow(comp) {
                Ok(d) => d,
                // Swapped for a link between the look and the open: refuse rather than follow.
                Err(e) => return Err(io(path)(e)),
            };
        }
        Ok(Some(StoreDir { dir, path }))
    }

    /// [`Self::open`] with `repair`: the directory exists afterwards.
    pub fn ensure(root: &Path, rel: &str) -> Result<Self, StoreError> {
        Ok(Self::open(root, rel, true)?.expect("repair creates the directory"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn entry_path(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    fn err(&self, name: impl AsRef<Path>) -> impl FnOnce(std::io::Error) -> StoreError {
        io(self.entry_path(name))
    }

    pub fn try_clone(&self) -> Result<Self, StoreError> {
        Ok(StoreDir { dir: self.dir.try_clone().map_err(io(self.path.clone()))?, path: self.path.clone() })
    }

    /// A subdirectory, opened without following a link; `None` if it is not a plain directory.
    pub fn subdir(&self, name: &str) -> Option<StoreDir> {
        if !plain_name(name) || self.kind(name) != Kind::Dir {
            return None;
        }
        let dir = self.dir.open_dir_nofollow(name).ok()?;
        Some(StoreDir { dir, path: self.entry_path(name) })
    }

    /// The subdirectory `name`, created if absent; `None` if something else is there.
    pub fn ensure_subdir(&self, name: &str) -> Option<StoreDir> {
        if self.kind(name) == Kind::Absent {
            // Made by another process meanwhile: open theirs, as plain directories go.
            let _ = self.dir.create_dir(name);
        }
        self.subdir(name)
    }

    /// The directory `rel` below this one, each component opened without following a link.
    pub fn descend(&self, rel: &Path) -> Option<StoreDir> {
        let mut dir = self.try_clone().ok()?;
        for c in rel.components() {
            dir = dir.subdir(c.as_os_str().to_str()?)?;
        }
        Some(dir)
    }

    /// Creates the directory `name` (which must not exist) and opens it without following links.
    pub fn create_dir(&self, name: &str) -> Result<StoreDir, StoreError> {
        self.dir.create_dir(name).map_err(self.err(name))?;
        let dir = self.dir.open_dir_nofollow(name).map_err(self.err(name))?;
        Ok(StoreDir { dir, path: self.entry_path(name) })
    }

    pub fn kind(&self, name: impl AsRef<Path>) -> Kind {
        match self.dir.symlink_metadata(name) {
            Err(_) => Kind::Absent,
            Ok(m) => {
                let t = m.file_type();
                if t.is_symlink() {
                    Kind::Symlink
                } else if t.is_dir() {
                    Kind::Dir
                } else if t.is_file() {
                    Kind::File
                } else {
                    Kind::Special
                }
            }
        }
    }

    /// A regular file's device, inode and length, looked at without following a link.
    pub fn file_identity(&self, name: impl AsRef<Path>) -> Option<(u64, u64, u64)> {
        use cap_std::fs::MetadataExt;
        let m = self.dir.symlink_metadata(name).ok()?;
        m.is_file().then(|| (m.dev(), m.ino(), m.len()))
    }

    /// A regular file's link count, length, and the time its inode last changed (a hard link made
    /// or removed changes it), looked at without following a link.
    pub fn file_links(&self, name: impl AsRef<Path>) -> Option<(u64, u64, i64)> {
        use cap_std::fs::MetadataExt;
        let m = self.dir.symlink_metadata(name).ok()?;
        m.is_file().then(|| (m.nlink(), m.len(), m.ctime()))
    }

    /// How long ago the entry itself (not what it links to) was modified.
    pub fn age(&self, name: impl AsRef<Path>) -> Option<Duration> {
        let m = self.dir.symlink_metadata(name).ok()?.modified().ok()?.into_std();
        Some(SystemTime::now().duration_since(m).unwrap_or_default())
    }

    /// Reads a regular file of at most `cap` bytes, never following a link and never blocking on
    /// a FIFO; anything else is [`Contents::Malformed`].
    pub fn read_small(&self, name: &str, cap: u64) -> Result<Contents, StoreError> {
        let mut opts = OpenOptions::new();
        opts.read(true).follow(FollowSymlinks::No).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
        let mut f = match self.dir.open_with(name, &opts) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Contents::Absent),
            // ELOOP: a symbolic link (O_NOFOLLOW); ENXIO and friends: a special file.
            Err(_) => return Ok(Contents::Malformed(format!("is {}", self.kind(name).describe()))),
        };
        let meta = f.metadata().map_err(self.err(name))?;
        if !meta.is_file() {
            let what = if meta.is_dir() { Kind::Dir } else { Kind::Special };
            return Ok(Contents::Malformed(format!("is {}", what.describe())));
        }
        if meta.len() > cap {
            return Ok(Contents::Malformed(format!("is {} bytes, over the limit of {cap}", meta.len())));
        }
        let mut buf = Vec::with_capacity(meta.len() as usize);
        // Read one byte past the cap: a file that grew after the stat is still refused.
        (&mut f).take(cap + 1).read_to_end(&mut buf).map_err(self.err(name))?;
        if buf.len() as u64 > cap {
            return Ok(Contents::Malformed(format!("grew over the limit of {cap} bytes")));
        }
        Ok(Contents::Bytes(buf))
    }

    /// Writes `name` atomically: a file with a random name created with `O_EXCL` in this
    /// directory, synced, then renamed over `name`. Whatever was at `name` (a planted link, a
    /// directory) is replaced, never followed.
    pub fn write_atomic(&self, name: &str, contents: &[u8], mode: u32) -> Result<(), StoreError> {
        if self.kind(name) == Kind::Dir {
            self.remove_entry(name)?;
        }
        let mut tmp = cap_tempfile::TempFile::new(&self.dir).map_err(self.err(name))?;
        tmp.as_file_mut().write_all(contents).map_err(self.err(name))?;
        tmp.as_file().set_permissions(Permissions::from_mode(mode)).map_err(self.err(name))?;
        tmp.as_file().sync_all().map_err(self.err(name))?;
        tmp.replace(name).map_err(self.err(name))
    }

    /// Creates `name` with `contents` if nothing is there (`O_EXCL`: never through a link).
    /// False if an entry exists.
    pub fn create_new(&self, name: &str, contents: &[u8]) -> Result<bool, StoreError> {
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true).follow(FollowSymlinks::No).mode(0o644);
        match self.dir.open_with(name, &opts) {
            Ok(mut f) => {
                f.write_all(contents).and_then(|_| f.sync_all()).map_err(self.err(name))?;
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(self.err(name)(e)),
        }
    }

    /// Sets a regular file's mtime to now, creating it if absent. A link, FIFO or directory at
    /// `name` is removed and replaced by a file (it was planted; nixuv never made one there).
    pub fn touch(&self, name: &str) -> Result<(), StoreError> {
        for _ in 0..2 {
            let mut opts = OpenOptions::new();
            opts.write(true).create(true).follow(FollowSymlinks::No).custom_flags(libc::O_NONBLOCK).mode(0o644);
            match self.dir.open_with(name, &opts) {
                Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => {
                    return f.into_std().set_modified(SystemTime::now()).map_err(self.err(name));
                }
                _ => self.remove_entry(name)?,
            }
        }
        Err(self.err(name)(std::io::Error::other("keeps being replaced by something that is not a file")))
    }

    /// Sets the mtime of a regular file that exists (a lease's heartbeat). False if `name` is not
    /// a regular file.
    pub fn refresh(&self, name: &str) -> bool {
        let mut opts = OpenOptions::new();
        opts.write(true).follow(FollowSymlinks::No).custom_flags(libc::O_NONBLOCK);
        match self.dir.open_with(name, &opts) {
            Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => f.into_std().set_modified(SystemTime::now()).is_ok(),
            _ => false,
        }
    }

    /// Removes the entry itself, whatever it is: a link is unlinked (its target untouched), a
    /// directory removed with everything in it without following a link inside. Absent is fine.
    pub fn remove_entry(&self, name: impl AsRef<Path>) -> Result<(), StoreError> {
        let name = name.as_ref();
        let res = match self.kind(name) {
            Kind::Absent => return Ok(()),
            Kind::Dir => self.dir.remove_dir_all(name),
            _ => self.dir.remove_file_or_symlink(name),
        };
        match res {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(self.err(name)(e)),
            _ => Ok(()),
        }
    }

    /// Hard-links the regular file `name` as `dst_name` in `dst` (which must not exist). The link
    /// is made without following anything, then checked: an inode's type never changes, so a
    /// planted link or FIFO at `name` is caught on the new entry itself, which is then removed.
    /// Returns whether a regular file of at most `cap` bytes was linked.
    pub fn link_file(&self, name: &str, dst: &StoreDir, dst_name: &str, cap: u64) -> bool {
        if self.dir.hard_link(name, &dst.dir, dst_name).is_err() {
            return false;
        }
        match dst.file_identity(dst_name) {
            Some((_, _, len)) if len <= cap => true,
            _ => {
                let _ = dst.remove_entry(dst_name);
                false
            }
        }
    }

    /// The target of a symbolic link (not followed).
    pub fn read_link(&self, name: impl AsRef<Path>) -> Option<PathBuf> {
        self.dir.read_link_contents(name).ok()
    }

    /// Publishes `link -> target` atomically: a link under a random name renamed over `link`.
    /// A directory planted at `link` is removed first (a rename cannot replace it).
    pub fn symlink_atomic(&self, target: &str, link: &str) -> Result<(), StoreError> {
        if self.kind(link) == Kind::Dir {
            self.remove_entry(link)?;
        }
        let tmp = format!(".{link}.link-{}", nonce());
        self.dir.symlink_contents(target, &tmp).map_err(self.err(&tmp))?;
        self.dir.rename(&tmp, &self.dir, link).map_err(|e| {
            let _ = self.dir.remove_file_or_symlink(&tmp);
            self.err(link)(e)
        })
    }

    /// The names in this directory (lossy UTF-8 names are skipped: nixuv never makes one).
    pub fn names(&self) -> Result<Vec<String>, StoreError> {
        let rd = self.dir.entries().map_err(io(self.path.clone()))?;
        Ok(rd.flatten().filter_map(|e| e.file_name().to_str().map(String::from)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn never_follows_or_blocks() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        std::fs::write(&secret, "token").unwrap();
        let d = StoreDir::ensure(root.path(), "a/b").unwrap();
        symlink(&secret, d.entry_path("link")).unwrap();
        assert!(matches!(d.read_small("link", 100).unwrap(), Contents::Malformed(_)));
        let fifo = d.entry_path("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        assert!(matches!(d.read_small("fifo", 100).unwrap(), Contents::Malformed(_)));
        std::fs::write(d.entry_path("big"), vec![b'x'; 101]).unwrap();
        assert!(matches!(d.read_small("big", 100).unwrap(), Contents::Malformed(_)));
        // Writing over a link replaces the link; the target keeps its content.
        d.write_atomic("link", b"mine", 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "token");
        assert_eq!(d.read_small("link", 100).unwrap(), Contents::Bytes(b"mine".to_vec()));
        // A dangling link at a stamp is replaced, nothing created at its target.
        let dangling = outside.path().join("created");
        symlink(&dangling, d.entry_path("used")).unwrap();
        d.touch("used").unwrap();
        assert!(!dangling.exists());
        d.touch("fifo").unwrap();
        assert_eq!(d.kind("fifo"), Kind::File);
        // Linking takes regular files of bounded size only: a link, a FIFO or a big file leaves
        // nothing behind.
        let other = StoreDir::ensure(root.path(), "c").unwrap();
        std::fs::write(d.entry_path("small"), b"ok").unwrap();
        for (name, linked) in [("link", false), ("fifo", false), ("big", false), ("small", true)] {
            let _ = std::fs::remove_file(d.entry_path("big"));
            std::fs::write(d.entry_path("big"), vec![b'x'; 101]).unwrap();
            if name == "link" {
                let _ = std::fs::remove_file(d.entry_path("link"));
                symlink(&secret, d.entry_path("link")).unwrap();
            }
            if name == "fifo" {
                let _ = std::fs::remove_file(&fifo);
                assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
            }
            assert_eq!(d.link_file(name, &other, "out", 100), linked, "{name}");
            assert_eq!(other.kind("out"), if linked { Kind::File } else { Kind::Absent }, "{name}");
        }
        // A layout directory that is a link is refused without repair and replaced with it.
        std::fs::remove_dir_all(root.path().join("a/b")).unwrap();
        symlink(outside.path(), root.path().join("a/b")).unwrap();
        assert!(matches!(StoreDir::open(root.path(), "a/b", false), Err(StoreError::Layout { .. })));
        let d = StoreDir::ensure(root.path(), "a/b").unwrap();
        assert_eq!(d.names().unwrap(), Vec::<String>::new());
        assert!(secret.exists());
    }
}
