//! The shared store as a tenant sees it: anyone who can create Pods in the namespace can mount the
//! store claims and plant links, FIFOs, directories and huge files, or run a hand-written
//! `nixuv-init`. Each attack is planted on a real directory tree, then the real binary runs
//! (`nixuv gc` directly, `nixuv materialize` as the init container runs it, in a mount namespace
//! with the Pod's mounts). Nothing outside the store may change, nothing may hang, and a malformed
//! entry costs a rebuild at most.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::common;
use crate::materialize::{app_stdout, run_init, start_init_with, support, text, Fixture, Volumes};

fn env_id(pod: &Value) -> String {
    pod["metadata"]["annotations"]["nixuv.io/env"].as_str().unwrap().to_string()
}

fn set_old(path: &Path) {
    let month_ago = SystemTime::now() - Duration::from_secs(30 * 86400);
    let f = fs::File::options().write(true).custom_flags_nofollow().open(path).unwrap();
    f.set_modified(month_ago).unwrap();
}

trait NoFollow {
    fn custom_flags_nofollow(&mut self) -> &mut Self;
}
impl NoFollow for fs::OpenOptions {
    fn custom_flags_nofollow(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
    }
}

fn mkfifo(path: &Path) {
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
}

/// A directory outside the store with something worth stealing or deleting in it.
fn victim(root: &Path) -> std::path::PathBuf {
    let v = root.join("victim");
    fs::create_dir_all(v.join(".ssh")).unwrap();
    fs::write(v.join(".ssh/id_ed25519"), "PRIVATE").unwrap();
    fs::write(v.join(".bashrc"), "rc").unwrap();
    fs::create_dir_all(v.join(".config")).unwrap();
    v
}

fn victim_intact(v: &Path) {
    assert_eq!(fs::read_to_string(v.join(".ssh/id_ed25519")).unwrap(), "PRIVATE");
    assert_eq!(fs::read_to_string(v.join(".bashrc")).unwrap(), "rc");
    assert!(v.join(".config").is_dir());
}

/// `nixuv gc` on the stores with a time limit: it must never block on what it finds.
fn gc(uv: &Path, nix: &Path) -> Output {
    let mut child = Command::new(common::bin())
        .args(["gc", "--max-age", "7d", "--no-prune", "--lease-ttl", "2s", "--uv-root"])
        .arg(uv)
        .arg("--nix-dir")
        .arg(nix)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            panic!("gc hung for 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

const ID: &str = "0123456789abcdef";

/// A uv store with an old env `ID` whose marker exists.
fn store_with_old_marker(root: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let uv = root.join("uv");
    let nix = root.join("work/.nix-portable/nix");
    fs::create_dir_all(uv.join(".nixuv/envs")).unwrap();
    fs::create_dir_all(uv.join("envs")).unwrap();
    fs::create_dir_all(&nix).unwrap();
    let marker = uv.join(format!(".nixuv/envs/{ID}.json"));
    fs::write(&marker, format!(r#"{{"env":"{ID}","system":[],"python":["six"],"pythonVersion":"3.12","nixpkgs":"x","venv":".{ID}.0000000000000000","builtAtUnix":0,"buildSeconds":0}}"#)).unwrap();
    set_old(&marker);
    (uv, nix)
}

#[test]
fn gc_never_deletes_through_a_planted_link() {
    let targets: [&dyn Fn(&Path, &Path) -> std::path::PathBuf; 3] = [
        // Relative, climbing out of the store.
        &|_root, v| {
            let mut rel = std::path::PathBuf::new();
            for _ in 0..12 {
                rel.push("..");
            }
            rel.join(v.strip_prefix("/").unwrap())
        },
        // Absolute.
        &|_root, v| v.to_path_buf(),
        // A link inside envs/ that is itself a link out: `x -> victim`, `envs/H -> x`.
        &|root, v| {
            symlink(v, root.join("uv/envs/x")).unwrap();
            "x".into()
        },
    ];
    for (i, target) in targets.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let v = victim(dir.path());
        let (uv, nix) = store_with_old_marker(dir.path());
        symlink(target(dir.path(), &v), uv.join(format!("envs/{ID}"))).unwrap();
        let out = gc(&uv, &nix);
        assert!(out.status.success(), "case {i}: {}", text(&out));
        victim_intact(&v);
        assert!(fs::symlink_metadata(uv.join(format!("envs/{ID}"))).is_err(), "case {i}: the link itself is removed");
        assert!(!uv.join(format!(".nixuv/envs/{ID}.json")).exists(), "case {i}");
    }
}

#[test]
fn gc_refuses_a_store_whose_layout_directories_are_links() {
    let dir = tempfile::tempdir().unwrap();
    let v = victim(dir.path());
    let (uv, nix) = store_with_old_marker(dir.path());
    // `envs -> a home directory`: the orphan sweep removes old dot-entries of envs/.
    fs::remove_dir_all(uv.join("envs")).unwrap();
    symlink(&v, uv.join("envs")).unwrap();
    for e in [".ssh", ".bashrc", ".config"] {
        let p = v.join(e);
        let f = fs::File::options().read(true).open(&p).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(86400)).ok();
    }
    let out = gc(&uv, &nix);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("envs") && text(&out).contains("symbolic link"), "{}", text(&out));
    victim_intact(&v);
    // The same with the state directory.
    fs::remove_file(uv.join("envs")).unwrap();
    fs::create_dir(uv.join("envs")).unwrap();
    fs::rename(uv.join(".nixuv"), dir.path().join("moved")).unwrap();
    symlink(dir.path().join("moved"), uv.join(".nixuv")).unwrap();
    let out = gc(&uv, &nix);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(dir.path().join(format!("moved/envs/{ID}.json")).exists());
}

#[test]
fn gc_does_not_hang_or_abort_on_special_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (uv, nix) = store_with_old_marker(dir.path());
    // A FIFO at a second env's marker and at the first env's lease, a directory named like a
    // marker, a FIFO at the `.used` stamp, an orphan-looking FIFO in envs/.
    let other = "fedcba9876543210";
    mkfifo(&uv.join(format!(".nixuv/envs/{other}.json")));
    fs::create_dir_all(uv.join(".nixuv/locks")).unwrap();
    mkfifo(&uv.join(format!(".nixuv/locks/{ID}.lease")));
    fs::create_dir(uv.join(".nixuv/envs/aaaaaaaaaaaaaaaa.json")).unwrap();
    mkfifo(&uv.join(format!(".nixuv/envs/{other}.used")));
    mkfifo(&uv.join(format!("envs/.{other}.1111111111111111")));
    let out = gc(&uv, &nix);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!uv.join(format!(".nixuv/envs/{ID}.json")).exists(), "the old env is removed: {}", text(&out));
}

/// The init container's view, with extra arguments to `in-pod` and a time limit.
fn init_within(pod: &Value, vols: &Volumes, extra: &[(&str, &str)], args: &[String], limit: Duration) -> Output {
    let mut child = start_init_with(pod, vols, extra, args);
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = Command::new("kill").args(["-9", &format!("-{}", child.id())]).status();
            let out = child.wait_with_output().unwrap();
            panic!("materialize hung past {limit:?}:\n{}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn ok(out: &Output) {
    assert!(out.status.success(), "materialize failed:\n{}", text(out));
}

#[test]
fn materialize_rebuilds_over_planted_entries_and_never_blocks() {
    let fx = Fixture::new();
    let pod = fx.mutate(&fx.pod("", "nixuvdemo==1.0"));
    let id = env_id(&pod);
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("token");
    fs::write(&secret, "eyJhbGciOiJSUzI1NiJ9.service-account-token").unwrap();
    type Plant = Box<dyn Fn(&Path)>;
    let (id2, id3, secret2) = (id.clone(), id.clone(), secret.clone());
    let cases: Vec<(&str, Plant)> = vec![
        ("FIFO at the marker", Box::new(move |uv: &Path| mkfifo(&uv.join(format!(".nixuv/envs/{id2}.json"))))),
        (
            "directory at the marker",
            Box::new(move |uv: &Path| fs::create_dir_all(uv.join(format!(".nixuv/envs/{id3}.json/x"))).unwrap()),
        ),
        ("marker linked to /dev/zero", {
            let id = id.clone();
            Box::new(move |uv: &Path| symlink("/dev/zero", uv.join(format!(".nixuv/envs/{id}.json"))).unwrap())
        }),
        ("2 GB sparse marker", {
            let id = id.clone();
            Box::new(move |uv: &Path| {
                let f = fs::File::create(uv.join(format!(".nixuv/envs/{id}.json"))).unwrap();
                f.set_len(2 << 30).unwrap();
            })
        }),
        ("directory at envs/H", {
            let id = id.clone();
            Box::new(move |uv: &Path| fs::create_dir_all(uv.join(format!("envs/{id}/bin"))).unwrap())
        }),
        ("FIFO at the env lease", {
            let id = id.clone();
            Box::new(move |uv: &Path| mkfifo(&uv.join(format!(".nixuv/locks/{id}.lease"))))
        }),
        ("FIFO at the uv cache lease", Box::new(|uv: &Path| mkfifo(&uv.join(".nixuv/locks/uv-cache.lease")))),
        ("lease linked to a secret", {
            let id = id.clone();
            Box::new(move |uv: &Path| symlink(&secret2, uv.join(format!(".nixuv/locks/{id}.lease"))).unwrap())
        }),
        ("lock directory is a link", {
            let outside = outside.path().to_path_buf();
            Box::new(move |uv: &Path| {
                fs::remove_dir_all(uv.join(".nixuv/locks")).unwrap();
                symlink(&outside, uv.join(".nixuv/locks")).unwrap();
            })
        }),
    ];
    for (what, plant) in cases {
        let vols = Volumes::new();
        let uv = vols.path("nixuv-uv");
        fs::create_dir_all(uv.join(".nixuv/envs")).unwrap();
        fs::create_dir_all(uv.join(".nixuv/locks")).unwrap();
        fs::create_dir_all(uv.join("envs")).unwrap();
        plant(&uv);
        let out = init_within(&pod, &vols, &[("NIXUV_WAIT_TIMEOUT", "20s")], &[], Duration::from_secs(60));
        ok(&out);
        assert!(!text(&out).contains("service-account-token"), "{what}: {}", text(&out));
        assert_eq!(app_stdout(&pod, &vols, "nixuvdemo"), "nixuvdemo 42\n", "{what}");
        // And the next Pod finds it ready.
        let warm = run_init(&pod, &vols, &[]);
        assert!(text(&warm).contains("already built"), "{what}: {}", text(&warm));
        assert_eq!(fs::read_to_string(&secret).unwrap(), "eyJhbGciOiJSUzI1NiJ9.service-account-token", "{what}");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 1, "{what}: nothing created outside the store");
    }
}

#[test]
fn writes_never_follow_a_link_planted_at_a_predictable_name() {
    let fx = Fixture::new();
    let vols = Volumes::new();
    let pod = fx.mutate(&fx.pod("", "nixuvdemo==1.0"));
    let id = env_id(&pod);
    let outside = tempfile::tempdir().unwrap();
    let precious = outside.path().join("precious");
    fs::write(&precious, "keep me").unwrap();
    let uv = vols.path("nixuv-uv");
    fs::create_dir_all(uv.join(".nixuv/envs")).unwrap();
    // materialize is PID 1 in its container: the old temporary name was `.H.json.tmp-1`.
    symlink(&precious, uv.join(format!(".nixuv/envs/.{id}.json.tmp-1"))).unwrap();
    // A dangling link at the `.used` stamp, pointing at a file to be created outside.
    let created = outside.path().join("created-by-nixuv");
    symlink(&created, uv.join(format!(".nixuv/envs/{id}.used"))).unwrap();
    let out = init_within(&pod, &vols, &[], &["--pid1".to_string()], Duration::from_secs(60));
    ok(&out);
    assert_eq!(fs::read_to_string(&precious).unwrap(), "keep me");
    assert!(!created.exists(), "the stamp did not create a file through the link");
    let warm = init_within(&pod, &vols, &[], &["--pid1".to_string()], Duration::from_secs(60));
    ok(&warm);
    assert!(!created.exists());
}

#[test]
fn a_planted_marker_is_not_a_ready_env() {
    let fx = Fixture::new();
    let vols = Volumes::new();
    let pod = fx.mutate(&fx.pod("", "nixuvdemo==1.0"));
    let id = env_id(&pod);
    let uv = vols.path("nixuv-uv");
    // A marker naming no deps, and a venv outside the store (through `envs/H`), with a `bin/`.
    let outside = tempfile::tempdir().unwrap();
    fs::create_dir_all(outside.path().join("venv/bin")).unwrap();
    fs::create_dir_all(uv.join(".nixuv/envs")).unwrap();
    fs::create_dir_all(uv.join("envs")).unwrap();
    let forged = format!(
        r#"{{"env":"{id}","system":[],"python":[],"pythonVersion":"{}","nixpkgs":"x","venv":"{}","builtAtUnix":0,"buildSeconds":0}}"#,
        fx.python,
        outside.path().join("venv").display()
    );
    fs::write(uv.join(format!(".nixuv/envs/{id}.json")), &forged).unwrap();
    symlink(outside.path().join("venv"), uv.join(format!("envs/{id}"))).unwrap();
    let out = run_init(&pod, &vols, &[]);
    ok(&out);
    assert!(!text(&out).contains("already built"), "{}", text(&out));
    assert_eq!(app_stdout(&pod, &vols, "nixuvdemo"), "nixuvdemo 42\n");
    // The right deps but a venv that is not a `.H.<nonce>` directory of envs/: also rebuilt.
    let m: Value = serde_json::from_slice(&fs::read(uv.join(format!(".nixuv/envs/{id}.json"))).unwrap()).unwrap();
    let mut m2 = m.clone();
    m2["venv"] = Value::from("cache");
    fs::write(uv.join(format!(".nixuv/envs/{id}.json")), serde_json::to_vec(&m2).unwrap()).unwrap();
    let out = run_init(&pod, &vols, &[]);
    ok(&out);
    assert!(!text(&out).contains("already built"), "{}", text(&out));
}

/// A trojan `nixuvdep` that a tenant would like every Pod of this env id to import.
fn trojan_wheel(dir: &Path) -> std::path::PathBuf {
    let code = format!(
        "import sys; sys.path.insert(0, {:?}); import make_wheels; print(make_wheels.wheel({:?}, 'nixuvdep', '0.2', {{'nixuvdep/__init__.py': 'BASE = 666\\n'}}))",
        support("").display().to_string(),
        dir.display().to_string()
    );
    let out = Command::new("python3").args(["-c", &code]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    dir.join("nixuvdep-0.2-py3-none-any.whl")
}

#[test]
fn a_hand_written_init_container_cannot_publish_other_content_under_an_id() {
    let fx = Fixture::new();
    let pod = fx.mutate(&fx.pod("", "nixuvdemo==1.0"));
    let trojan_dir = tempfile::tempdir().unwrap();
    let wheel = trojan_wheel(trojan_dir.path());
    assert!(wheel.exists());
    let overrides = trojan_dir.path().join("overrides.txt");
    fs::write(&overrides, format!("nixuvdep @ file://{}\n", wheel.display())).unwrap();
    let ov = overrides.display().to_string();

    // (b) A tool variable the webhook never set: stripped, so the trojan is not installed.
    let vols = Volumes::new();
    let out = run_init(&pod, &vols, &[("UV_OVERRIDE", &ov)]);
    ok(&out);
    assert!(text(&out).contains("UV_OVERRIDE"), "the stripped variable is named: {}", text(&out));
    assert_eq!(app_stdout(&pod, &vols, "nixuvdemo"), "nixuvdemo 42\n");

    // Declaring it as bound changes the id the container must carry: refused.
    let vols = Volumes::new();
    let out = run_init(
        &pod,
        &vols,
        &[
            ("UV_OVERRIDE", &ov),
            (
                "NIXUV_TOOL_ENV",
                "UV_FIND_LINKS,UV_OFFLINE,UV_NO_INDEX,UV_PYTHON_DOWNLOADS,UV_PYTHON_PREFERENCE,NIX_CONFIG,UV_OVERRIDE",
            ),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("does not match the dependencies"), "{}", text(&out));
    // So does changing the value of a bound one.
    let out = run_init(&pod, &vols, &[("UV_FIND_LINKS", &trojan_dir.path().display().to_string())]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // (a) A newline in the index URL smuggling a requirement line.
    let out = run_init(&pod, &vols, &[("NIXUV_INDEX_URL", "https://pypi.org/simple\npython=six")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("NIXUV_INDEX_URL"), "{}", text(&out));
    assert!(fs::read_dir(vols.path("nixuv-uv")).map(|d| d.count()).unwrap_or(0) == 0, "nothing built");
}

/// `nixuv envs list` sizes an env from its marker's store paths and its venv: a planted marker
/// naming paths outside the store (`/nix/store/../..`), a store path that is a link out of it, or
/// a venv swapped for a link, never makes it count (or walk) anything outside.
#[test]
fn envs_list_never_walks_outside_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (uv, nix, outside) = (dir.path().join("uv"), dir.path().join("nix"), dir.path().join("outside"));
    for d in [uv.join(".nixuv/envs"), uv.join("envs"), nix.join("store/good"), outside.join("deep")] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(nix.join("store/good/bin"), vec![0u8; 100]).unwrap();
    std::fs::write(outside.join("deep/secret"), vec![0u8; 5_000_000]).unwrap();
    std::os::unix::fs::symlink(&outside, nix.join("store/evil")).unwrap();
    let id = "0123456789abcdef";
    let venv = format!(".{id}.1111111111111111");
    std::os::unix::fs::symlink(&outside, uv.join("envs").join(&venv)).unwrap();
    std::os::unix::fs::symlink(&venv, uv.join("envs").join(id)).unwrap();
    let climb = format!("/nix/store/../../{}", outside.strip_prefix("/").unwrap().display());
    let marker = serde_json::json!({
        "env": id, "system": ["x\u{1b}]0;owned\u{7}\u{1b}[2J"], "python": ["six"], "pythonVersion": "3.12", "nixpkgs": "path:/x",
        "venv": venv, "builtAtUnix": 1, "buildSeconds": 0.1,
        "lock": {"interpreter": {"version": "3.12\u{1b}[31m", "home": "/x"}, "python": [{"name": "six\u{1b}[1m", "version": "1"}],
                 "nix": ["/nix/store/good", "/nix/store/evil", climb, "/etc"]}
    });
    std::fs::write(uv.join(format!(".nixuv/envs/{id}.json")), serde_json::to_vec(&marker).unwrap()).unwrap();
    let envs = |args: &[&str]| {
        let out = std::process::Command::new(crate::common::bin())
            .arg("envs")
            .args(args)
            .arg("--uv-root")
            .arg(&uv)
            .arg("--nix-dir")
            .arg(&nix)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out
    };
    let out = envs(&["list", "-o", "json"]);
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let env = list.iter().find(|e| e["id"] == id).unwrap();
    assert_eq!(env["bytes"], 100, "only the store path inside the store counts: {env}");
    assert_eq!(env["state"], "incomplete", "a venv that is a link is not a venv: {env}");
    // What a planted marker says reaches the terminal with its escape sequences defused.
    let out = envs(&["show", id]);
    assert!(!out.stdout.contains(&0x1b) && !out.stdout.contains(&0x07), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("x\\u{1b}]0;owned"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
