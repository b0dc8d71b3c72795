//! Fuzzing the store side: random trees of directories, files (small, oversized, sparse), FIFOs
//! and symbolic links (out of the store, to secrets, to /dev/zero, dangling, climbing with `..`)
//! planted at the names nixuv uses and at random ones, then gc, the ready check and the build
//! lease run on them. Properties: nothing outside the store root changes, and every run ends
//! within a bound. `make fuzz` runs many more cases (FUZZ_CASES).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;

use nixuv::envspec::EnvSpec;
use nixuv::materialize::gc::{gc, GcOptions};
use nixuv::materialize::layout::{self, Layout};
use nixuv::materialize::lease::Lease;
use nixuv::materialize::store::StoreDir;
use nixuv::plan::EnvPlan;

fn cases() -> u32 {
    std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse::<u32>().ok()).map(|n| n / 10).unwrap_or(40).max(10)
}

const ID: &str = "0123456789abcdef";

/// Where an entry is planted, relative to the uv root.
fn places() -> Vec<String> {
    vec![
        "envs".into(),
        ".nixuv".into(),
        ".nixuv/envs".into(),
        ".nixuv/locks".into(),
        "cache".into(),
        "cache/archive-v0".into(),
        "cache/archive-v0/AbCd".into(),
        "cache/archive-v0/AbCd/mod.py".into(),
        // The bytecode store, which gc trims too.
        "pyc".into(),
        "pyc/cpython-312-cb0d0d0a".into(),
        "pyc/cpython-312-cb0d0d0a/ab".into(),
        "pyc/cpython-312-cb0d0d0a/ab/ab01.pyc".into(),
        format!("envs/{ID}"),
        format!("envs/.{ID}.1111111111111111"),
        format!("envs/.{ID}.link-2222222222222222"),
        format!(".nixuv/envs/{ID}.json"),
        format!(".nixuv/envs/{ID}.used"),
        format!(".nixuv/locks/{ID}.lease"),
        format!(".nixuv/locks/{ID}.takeover"),
        ".nixuv/locks/uv-cache.lease".into(),
        "envs/x".into(),
        ".nixuv/envs/fedcba9876543210.json".into(),
    ]
}

#[derive(Debug, Clone)]
enum Entry {
    Dir,
    File(usize),
    Sparse,
    Fifo,
    LinkOutsideDir,
    LinkOutsideFile,
    LinkDevZero,
    Dangling,
    Climb,
    LinkInside(usize),
    Marker { venv: String },
}

fn entry() -> impl Strategy<Value = Entry> {
    prop_oneof![
        Just(Entry::Dir),
        (0usize..2048).prop_map(Entry::File),
        Just(Entry::Sparse),
        Just(Entry::Fifo),
        Just(Entry::LinkOutsideDir),
        Just(Entry::LinkOutsideFile),
        Just(Entry::LinkDevZero),
        Just(Entry::Dangling),
        Just(Entry::Climb),
        (0usize..15).prop_map(Entry::LinkInside),
        prop::sample::select(vec!["../../victim", "/etc", ".0123456789abcdef.1111111111111111", "cache", ""])
            .prop_map(|v| Entry::Marker { venv: v.to_string() }),
    ]
}

fn plant(root: &Path, outside: &Path, rel: &str, e: &Entry) {
    let p = root.join(rel);
    // Parents are created inside the store only: an ancestor that is a planted file or link means
    // this entry is simply not planted (the harness must not write outside either).
    let mut cur = root.to_path_buf();
    for comp in Path::new(rel).parent().into_iter().flat_map(|d| d.components()) {
        cur.push(comp);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return,
            Err(_) => {
                if std::fs::create_dir(&cur).is_err() {
                    return;
                }
            }
        }
    }
    if std::fs::symlink_metadata(&p).is_ok() {
        return;
    }
    let _ = match e {
        Entry::Dir => std::fs::create_dir(&p),
        Entry::File(n) => std::fs::write(&p, vec![b'{'; *n]),
        Entry::Sparse => std::fs::File::create(&p).and_then(|f| f.set_len(3 << 30)),
        Entry::Fifo => {
            let ok = std::process::Command::new("mkfifo").arg(&p).status().map(|s| s.success()).unwrap_or(false);
            assert!(ok);
            Ok(())
        }
        Entry::LinkOutsideDir => std::os::unix::fs::symlink(outside.join("victim"), &p),
        Entry::LinkOutsideFile => std::os::unix::fs::symlink(outside.join("victim/secret"), &p),
        Entry::LinkDevZero => std::os::unix::fs::symlink("/dev/zero", &p),
        Entry::Dangling => std::os::unix::fs::symlink(outside.join("victim/created"), &p),
        Entry::Climb => {
            let depth = rel.matches('/').count() + 1 + root.components().count();
            std::os::unix::fs::symlink(
                PathBuf::from("../".repeat(depth)).join(outside.join("victim").strip_prefix("/").unwrap()),
                &p,
            )
        }
        Entry::LinkInside(i) => std::os::unix::fs::symlink(places()[*i % places().len()].clone(), &p),
        Entry::Marker { venv } => std::fs::write(
            &p,
            format!(
                r#"{{"env":"{ID}","system":[],"python":["six"],"pythonVersion":"3.12","nixpkgs":"x","venv":"{venv}","builtAtUnix":0,"buildSeconds":0}}"#
            ),
        ),
    };
}

/// Every path, type and content under `dir`, without following links.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let what = if m.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if m.is_symlink() {
                format!("link {:?}", std::fs::read_link(&p).unwrap())
            } else if m.is_file() && m.len() < 1 << 20 {
                format!("file {:?}", std::fs::read(&p).unwrap())
            } else {
                format!("other {:?} {}", m.file_type(), m.len())
            };
            out.insert(p, what);
        }
    }
    out
}

fn run_with_limit(f: impl FnOnce() + Send + 'static) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(20)).is_ok()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn planted_store_trees_never_reach_outside_or_hang(plan in prop::collection::vec((0usize..15, entry()), 1..12)) {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(outside.join("victim/.ssh")).unwrap();
        std::fs::write(outside.join("victim/secret"), "token").unwrap();
        std::fs::write(outside.join("victim/.ssh/id"), "key").unwrap();
        let root = dir.path().join("store/uv");
        let nix = dir.path().join("store/work/.nix-portable/nix");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&nix).unwrap();
        for (i, e) in &plan {
            plant(&root, &outside, &places()[*i], e);
        }
        let before = snapshot(&outside);
        let (r, n) = (root.clone(), nix.clone());
        let finished = run_with_limit(move || {
            let layout = Layout::new(&r, &n);
            let opts = GcOptions {
                max_age: Duration::ZERO,
                lease_ttl: Duration::from_millis(1),
                dry_run: false,
                prune_stores: false,
                // The cache trim walks whatever is planted under cache/ and pyc/ too.
                uv_cache_max: Some(0),
                in_use: Default::default(),
            };
            let _ = gc(&layout, &opts);
            let mut env = EnvPlan::new(&Default::default(), nixuv::config::Config::default().plan_inputs());
            env.python = vec!["six".into()];
            env.id = nixuv::envid::EnvId::parse(ID).unwrap();
            let spec = EnvSpec::for_plan(&env);
            let _ = nixuv::materialize::is_complete(&layout, &spec);
            if let Ok(locks) = StoreDir::ensure(&r, layout::LOCKS) {
                let _ = Lease::acquire(&locks, &layout::lease_name(ID), Duration::from_millis(1), Duration::from_secs(2), || false, |_| {});
            }
        });
        prop_assert!(finished, "gc, the ready check or the lease hung on {plan:?}");
        prop_assert_eq!(snapshot(&outside), before, "something outside the store changed: {:?}", plan);
    }
}
