//! A venv's bytecode is compiled once per source across the envs of a store: the second env
//! hard-links what the first compiled and compiles only what is new; the bytecode is hash-checked
//! and valid in every env (the interpreter accepts it, tracebacks name the env's own files); a
//! planted entry in the bytecode store is never linked or waited on; gc trims what no env links.
//! Real uv and the real interpreter, through the init container's exact command.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::common;
use crate::materialize::{app_stdout, gc_in_pod, init_ok, last_used_a_month_ago, text, walk, Fixture, Volumes};

/// The `.pyc` files of the env `pod` got, by the package directory they belong to.
fn pycs(vols: &Volumes, pod: &serde_json::Value) -> Vec<PathBuf> {
    let id = pod["metadata"]["annotations"]["nixuv.io/env"].as_str().unwrap();
    let link = std::fs::read_link(vols.path("nixuv-uv").join("envs").join(id)).unwrap();
    let venv = vols.path("nixuv-uv").join("envs").join(link);
    walk(&venv).into_iter().filter(|p| p.extension().is_some_and(|e| e == "pyc")).collect()
}

fn find<'a>(pycs: &'a [PathBuf], package: &str) -> &'a Path {
    pycs.iter()
        .find(|p| p.to_string_lossy().contains(&format!("/{package}/__pycache__/__init__.")))
        .unwrap_or_else(|| panic!("no bytecode for {package} in {pycs:?}"))
}

/// The bytecode store's directory for this interpreter (`pyc/<tag>-<magic>`).
fn tag_dir(vols: &Volumes) -> PathBuf {
    let pyc = vols.path("nixuv-uv").join("pyc");
    let dirs: Vec<_> = std::fs::read_dir(&pyc).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

const DEMO_INIT: &str = "from nixuvdep import BASE\nVALUE = BASE + 1\n\ndef main():\n    print('nixuvdemo', VALUE)\n";

#[test]
fn a_second_env_links_the_bytecode_the_first_compiled() {
    let fx = Fixture::new();
    let vols = Volumes::new();
    let first = fx.mutate(&fx.pod("", "nixuvdep"));
    let out = init_ok(&first, &vols);
    assert!(text(&out).contains("files=1 reused=0 compiled=1"), "{}", text(&out));
    // A FIFO planted where the second env's new source would be kept: never waited on, never
    // linked into a venv.
    let key = hex::encode(Sha256::digest(DEMO_INIT.as_bytes()));
    let shard = tag_dir(&vols).join(&key[..2]);
    std::fs::create_dir_all(&shard).unwrap();
    assert!(Command::new("mkfifo").arg(shard.join(format!("{key}.pyc"))).status().unwrap().success());

    let second = fx.mutate(&fx.pod("", "nixuvdemo"));
    let out = init_ok(&second, &vols);
    assert!(text(&out).contains("files=2 reused=1 compiled=1"), "{}", text(&out));
    let (a, b) = (pycs(&vols, &first), pycs(&vols, &second));
    // nixuvdep's bytecode is the first env's file, hard-linked; nixuvdemo's was compiled here and
    // is a plain file of its own.
    let (dep_a, dep_b) = (find(&a, "nixuvdep"), find(&b, "nixuvdep"));
    assert_ne!(dep_a, dep_b);
    assert_eq!(std::fs::metadata(dep_a).unwrap().ino(), std::fs::metadata(dep_b).unwrap().ino());
    let demo = std::fs::symlink_metadata(find(&b, "nixuvdemo")).unwrap();
    assert!(demo.file_type().is_file() && demo.len() > 16, "{demo:?}");

    // The interpreter accepts each file as it is (hash-checked, the hash of the env's own source),
    // and code objects name the env's own files once imported.
    let script = r#"python - <<'PY'
import importlib.util, nixuvdep, nixuvdemo
for m in (nixuvdep, nixuvdemo):
    data = open(m.__spec__.cached, 'rb').read()
    src = open(m.__file__, 'rb').read()
    assert data[:4] == importlib.util.MAGIC_NUMBER
    assert int.from_bytes(data[4:8], 'little') == 3, 'checked hash'
    assert data[8:16] == importlib.util.source_hash(src)
assert nixuvdemo.main.__code__.co_filename == nixuvdemo.__file__, nixuvdemo.main.__code__.co_filename
print(nixuvdemo.__file__.startswith('/nixuv/uv/envs/'), nixuvdemo.VALUE)
PY
"#;
    assert_eq!(app_stdout(&second, &vols, script), "True 42\n");
    assert_eq!(app_stdout(&first, &vols, "python -c 'import nixuvdep; print(nixuvdep.BASE)'"), "41\n");
}

/// `gc --uv-cache-max-size` removes bytecode no env links any more, and keeps what a remaining
/// env links; the env that lost its bytecode store entries still runs, and a rebuild compiles
/// them again.
#[test]
fn gc_trims_bytecode_no_env_links() {
    let fx = Fixture::new();
    let vols = Volumes::new();
    let old = fx.mutate(&fx.pod("", "nixuvdemo==1.0"));
    let fresh = fx.mutate(&fx.pod("", "nixuvdep"));
    init_ok(&old, &vols);
    init_ok(&fresh, &vols);
    let uv = vols.path("nixuv-uv");
    let stored = || -> usize { walk(&tag_dir(&vols)).into_iter().filter(|p| p.is_file()).count() };
    assert_eq!(stored(), 2);
    last_used_a_month_ago(&uv, old["metadata"]["annotations"]["nixuv.io/env"].as_str().unwrap());
    let out = gc_in_pod(&vols, &vols.dir.path().join("gc-tmp"))
        .args(["--", common::bin(), "gc", "--max-age", "7d", "--no-prune", "--uv-cache-max-size", "0"])
        .env("HOME", "/nixuv/work")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("removed bytecode no env links"), "{}", text(&out));
    // nixuvdemo's went with the old env; nixuvdep's stays, linked by the fresh env.
    assert_eq!(stored(), 1);
    assert_eq!(app_stdout(&fresh, &vols, "python -c 'import nixuvdep; print(nixuvdep.BASE)'"), "41\n");
    let out = init_ok(&old, &vols);
    assert!(text(&out).contains("files=2 reused=1 compiled=1"), "{}", text(&out));
    assert_eq!(app_stdout(&old, &vols, "nixuvdemo"), "nixuvdemo 42\n");
}

/// Envs of different deps built at the same time in one store: each gets all its bytecode, every
/// source is kept once, and the envs that share a source share its file.
#[test]
fn concurrent_envs_share_the_bytecode_store() {
    let fx = Fixture::new();
    let vols = Volumes::new();
    let decls = ["nixuvdep", "nixuvdemo", "nixuvdemo==1.0", "nixuvdep==0.1"];
    let pods: Vec<_> = decls.iter().map(|d| fx.mutate(&fx.pod("", d))).collect();
    let children: Vec<_> = pods.iter().map(|p| crate::materialize::start_init(p, &vols, &[])).collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    let stored: Vec<PathBuf> = walk(&tag_dir(&vols)).into_iter().filter(|p| p.is_file()).collect();
    assert_eq!(stored.len(), 2, "one file per source: {stored:?}");
    let deps: Vec<u64> =
        pods.iter().map(|p| std::fs::metadata(find(&pycs(&vols, p), "nixuvdep")).unwrap().ino()).collect();
    assert!(deps.iter().all(|i| *i == deps[0]), "every env links the one nixuvdep file: {deps:?}");
    for p in &pods {
        assert_eq!(app_stdout(p, &vols, "python -c 'import nixuvdep; print(nixuvdep.BASE)'"), "41\n");
    }
}
