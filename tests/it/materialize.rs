//! `nixuv materialize` end to end, offline, on real tools: the webhook's output for a Pod gives the
//! init container's exact command, env and mounts; that runs in a private mount namespace with the
//! store volumes where the patch mounts them (real `nix` through a nix-portable stand-in, real `uv`
//! installing wheels built here); then the app container's view (its mounts, PATH, VIRTUAL_ENV)
//! runs the installed binaries and imports the installed module. Needs root for mount namespaces
//! (CI runs as root).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common;

pub fn support(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support").join(name)
}

fn host_python_version() -> String {
    let out =
        Command::new("python3").args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"]).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A flake with tiny derivations built from /bin tools, and wheels, both made here, offline.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub python: String,
}

/// A flake of tiny derivations built from /bin tools (`SYSTEM` is replaced by the machine's).
const FLAKE: &str = include_str!("../support/flake.nix.in");

impl Fixture {
    pub fn new() -> Self {
        Self::build(false)
    }

    /// As [`Fixture::new`], but the interpreter is a uv-managed CPython, packed here from the
    /// machine's own and served to uv from a local downloads list, so that the venv's interpreter
    /// lives on the uv volume as in a cluster.
    pub fn with_managed_python() -> Self {
        Self::build(true)
    }

    /// As [`Fixture::with_managed_python`], but the config names no download list: the
    /// interpreter comes from the init image's own (`/opt/nixuv/python`, which the returned
    /// directory is to be mounted at), indexed by the image's script.
    pub fn with_image_pythons() -> (Self, PathBuf) {
        let fx = Self::build(true);
        let text = std::fs::read_to_string(&fx.config).unwrap();
        let text: String =
            text.lines().filter(|l| !l.contains("UV_PYTHON_DOWNLOADS_JSON_URL")).map(|l| format!("{l}\n")).collect();
        std::fs::write(&fx.config, text).unwrap();
        let dist = fx.dir.path().join("python-dist");
        std::fs::remove_file(dist.join("downloads.json")).unwrap();
        let name =
            format!("cpython-{}+20240101-{}-unknown-linux-gnu-install_only.tar.gz", fx.python, std::env::consts::ARCH);
        std::fs::rename(dist.join("cpython.tar.gz"), dist.join(name)).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/images/python-downloads.sh");
        let st = Command::new(script).arg("index").arg(&dist).arg("file:///opt/nixuv/python").status().unwrap();
        assert!(st.success());
        (fx, dist)
    }

    fn build(managed: bool) -> Self {
        let ok = Command::new("unshare").args(["--mount", "true"]).status().map(|s| s.success()).unwrap_or(false);
        assert!(ok, "these tests need `unshare --mount` (root): CI runs as root");
        let dir = tempfile::tempdir().unwrap();
        let flake = dir.path().join("flake");
        std::fs::create_dir_all(&flake).unwrap();
        let system = format!("{}-linux", std::env::consts::ARCH);
        std::fs::write(flake.join("flake.nix"), FLAKE.replace("SYSTEM", &system)).unwrap();
        let wheels = dir.path().join("wheels");
        let st = Command::new("python3").arg(support("make_wheels.py")).arg(&wheels).status().unwrap();
        assert!(st.success());
        let config = dir.path().join("config.yaml");
        let mut python = host_python_version();
        let python_env = if managed {
            let dist = dir.path().join("python-dist");
            let out = Command::new("python3").arg(support("make_python_dist.py")).arg(&dist).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            python = String::from_utf8(out.stdout).unwrap().trim().to_string();
            // Not offline: uv refuses implicit interpreter downloads then, even from file://. The
            // index is a PEP 503 index on disk, so nothing leaves the machine.
            format!(
                "- {{name: UV_PYTHON_DOWNLOADS_JSON_URL, value: 'file://{}/downloads.json'}}\n- {{name: UV_DEFAULT_INDEX, value: 'file://{}/simple'}}\n",
                dist.display(),
                wheels.display()
            )
        } else {
            "- {name: UV_OFFLINE, value: '1'}\n- {name: UV_NO_INDEX, value: '1'}\n- {name: UV_PYTHON_DOWNLOADS, value: never}\n- {name: UV_PYTHON_PREFERENCE, value: only-system}\n".to_string()
        };
        let yaml = format!(
            "nixpkgs: path:{flake}\nstorage: {{mode: pvc}}\ninitEnv:\n\
             - {{name: UV_FIND_LINKS, value: {wheels}}}\n{python_env}\
             - {{name: NIX_CONFIG, value: \"substituters =\\nbuild-users-group =\"}}\n",
            flake = flake.display(),
            wheels = wheels.display()
        );
        std::fs::write(&config, yaml).unwrap();
        Fixture { dir, config, python }
    }

    pub fn pod(&self, system: &str, python: &str) -> Value {
        let mut ann = serde_json::Map::new();
        if !system.is_empty() {
            ann.insert("nixuv.io/system-deps".into(), json!(system));
        }
        if !python.is_empty() {
            ann.insert("nixuv.io/python-deps".into(), json!(python));
            ann.insert("nixuv.io/python".into(), json!(self.python));
        }
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "job", "labels": {"nixuv.io/inject": "true"}, "annotations": ann},
               "spec": {"containers": [{"name": "app", "image": "debian:bookworm-slim"}]}})
    }

    /// The mutated Pod, from the real binary.
    pub fn mutate(&self, pod: &Value) -> Value {
        let path = self.dir.path().join(format!("pod-{}.json", common_nonce()));
        std::fs::write(&path, serde_json::to_vec(pod).unwrap()).unwrap();
        let out = Command::new(common::bin())
            .args(["preview", "-o", "json", "--config"])
            .arg(&self.config)
            .arg("-f")
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

fn common_nonce() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

/// The shared volumes of a namespace (the two PVCs).
pub struct Volumes {
    pub dir: tempfile::TempDir,
}

impl Volumes {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for v in ["nixuv-nix", "nixuv-uv"] {
            std::fs::create_dir_all(dir.path().join(v)).unwrap();
        }
        Volumes { dir }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

pub fn env_map(container: &Value) -> BTreeMap<String, String> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e["value"].as_str().unwrap_or("").to_string()))
        .collect()
}

/// `in-pod` with the container's volumeMounts, each volume a directory; emptyDirs are fresh.
pub fn in_pod(container: &Value, vols: &Volumes, scratch: &Path) -> Command {
    let mut cmd = Command::new(support("in-pod"));
    let mut mounts: Vec<(&str, &str, bool)> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap(), m["mountPath"].as_str().unwrap(), m["readOnly"] == true))
        .collect();
    mounts.sort_by_key(|(_, p, _)| p.len());
    for (name, path, ro) in mounts {
        let src = if name == "nixuv-tmp" {
            std::fs::create_dir_all(scratch).unwrap();
            scratch.to_path_buf()
        } else {
            vols.path(name)
        };
        cmd.arg("--mount").arg(format!("{}:{path}{}", src.display(), if ro { ":ro" } else { "" }));
    }
    cmd
}

/// Starts the init container of `pod` (its exact command and env), with the image's tools.
pub fn start_init(pod: &Value, vols: &Volumes, extra: &[(&str, &str)]) -> Child {
    start_init_with(pod, vols, extra, &[])
}

/// [`start_init`] with extra `in-pod` arguments (after the Pod's mounts), such as `--tmpfs`.
pub fn start_init_with(pod: &Value, vols: &Volumes, extra: &[(&str, &str)], in_pod_args: &[String]) -> Child {
    let init = &pod["spec"]["initContainers"][0];
    assert_eq!(init["name"], "nixuv-init");
    let scratch = vols.dir.path().join(format!("tmp-{}", common_nonce()));
    let mut cmd = in_pod(init, vols, &scratch);
    cmd.args(in_pod_args).arg("--");
    for a in init["command"].as_array().unwrap() {
        cmd.arg(a.as_str().unwrap());
    }
    let bin_dir = Path::new(common::bin()).parent().unwrap();
    cmd.env_clear()
        .envs(env_map(init))
        // What the init image provides: nixuv, nix-portable and uv on PATH.
        .env("PATH", format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap()))
        .env("NIXUV_NIX_PORTABLE", support("nix-portable"))
        .env("NIXUV_UV", support("uv"))
        .env("NIXUV_TEST_TOOL_LOG", vols.path("tools.log"))
        .envs(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.spawn().unwrap()
}

pub fn run_init(pod: &Value, vols: &Volumes, extra: &[(&str, &str)]) -> Output {
    start_init(pod, vols, extra).wait_with_output().unwrap()
}

/// Runs `script` with /bin/sh as the app container sees things: its mounts, PATH, VIRTUAL_ENV.
pub fn run_app(pod: &Value, vols: &Volumes, script: &str, hide_python: bool) -> Output {
    let app = &pod["spec"]["containers"][0];
    let mut cmd = in_pod(app, vols, Path::new("/nonexistent"));
    if hide_python {
        cmd.arg("--hide-python");
    }
    cmd.args(["--", "/bin/sh", "-c", script]).env_clear().envs(env_map(app));
    cmd.output().unwrap()
}

/// Runs the init container and asserts it succeeded.
pub fn init_ok(pod: &Value, vols: &Volumes) -> Output {
    let out = run_init(pod, vols, &[]);
    assert!(out.status.success(), "materialize failed:\n{}", text(&out));
    out
}

/// Runs `script` as the app container and returns its stdout, asserting it succeeded.
pub fn app_stdout(pod: &Value, vols: &Volumes, script: &str) -> String {
    let app = run_app(pod, vols, script, false);
    assert!(app.status.success(), "{}", text(&app));
    String::from_utf8_lossy(&app.stdout).into_owned()
}

pub fn tool_calls(vols: &Volumes) -> Vec<String> {
    std::fs::read_to_string(vols.path("tools.log")).unwrap_or_default().lines().map(String::from).collect()
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn end_to_end_then_warm() {
    let fx = Fixture::new();
    let vols = Volumes::new();
    let pod = fx.mutate(&fx.pod("hello-nixuv tools.greet", "nixuvdemo==1.0"));
    let out = run_init(&pod, &vols, &[]);
    assert!(out.status.success(), "materialize failed:\n{}", text(&out));
    let log = text(&out);
    for step in
        ["system deps: profile ready", "python: venv ready", "python deps: installed", "env built and published"]
    {
        assert!(log.contains(step), "no {step:?} progress line in\n{log}");
    }
    let app = run_app(&pod, &vols, "hello-nixuv && greet && nixuvdemo && python -c 'import nixuvdemo, sys; print(nixuvdemo.VALUE, sys.prefix)' && echo $VIRTUAL_ENV", false);
    let got = text(&app);
    assert!(app.status.success(), "{got}");
    let env_id = pod["metadata"]["annotations"]["nixuv.io/env"].as_str().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&app.stdout),
        format!("hello from nixuv\ngreetings\nnixuvdemo 42\n42 /nixuv/uv/envs/{env_id}\n/nixuv/uv/envs/{env_id}\n")
    );
    // The app container mounts the stores read-only.
    let ro = run_app(&pod, &vols, "touch /nixuv/uv/x 2>/dev/null || echo read-only", false);
    assert_eq!(String::from_utf8_lossy(&ro.stdout), "read-only\n");
    // Warm: a second Pod with the same deps invokes no tool.
    let calls = tool_calls(&vols);
    assert_eq!(calls.iter().filter(|c| c.contains("profile install")).count(), 1, "{calls:?}");
    let start = Instant::now();
    let warm = run_init(&pod, &vols, &[]);
    let elapsed = start.elapsed();
    assert!(warm.status.success(), "{}", text(&warm));
    assert!(text(&warm).contains("env ready (already built)"), "{}", text(&warm));
    assert_eq!(tool_calls(&vols), calls, "a warm run invoked a tool");
    eprintln!("warm materialize (whole process, in a fresh mount namespace): {elapsed:?}");
}

#[test]
fn python_only_and_system_only_envs() {
    let fx = Fixture::new();
    let vols = Volumes::new();
    let py = fx.mutate(&fx.pod("", "nixuvdemo"));
    init_ok(&py, &vols);
    assert!(!tool_calls(&vols).iter().any(|c| c.starts_with("nix ")), "no nix call without system deps");
    assert_eq!(app_stdout(&py, &vols, "nixuvdemo"), "nixuvdemo 42\n");
    let sys = fx.mutate(&fx.pod("hello-nixuv", ""));
    init_ok(&sys, &vols);
    assert_eq!(
        app_stdout(&sys, &vols, "hello-nixuv; test -z \"$VIRTUAL_ENV\" && echo no-venv"),
        "hello from nixuv\nno-venv\n"
    );
}

#[test]
fn six_concurrent_pods_build_once() {
    let fx = Fixture::new();
    let vols = Volumes::new();
    let pod = fx.mutate(&fx.pod("hello-nixuv", "nixuvdemo==1.0"));
    let children: Vec<Child> = (0..6).map(|_| start_init(&pod, &vols, &[])).collect();
    let outs: Vec<Output> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    for o in &outs {
        assert!(o.status.success(), "{}", text(o));
    }
    let calls = tool_calls(&vols);
    assert_eq!(calls.iter().filter(|c| c.contains("profile install")).count(), 1, "{calls:?}");
    assert_eq!(calls.iter().filter(|c| c.starts_with("uv venv")).count(), 1, "{calls:?}");
    assert_eq!(calls.iter().filter(|c| c.starts_with("uv pip install")).count(), 1, "{calls:?}");
    let built = outs.iter().filter(|o| text(o).contains("env built and published")).count();
    assert_eq!(built, 1);
    assert_eq!(app_stdout(&pod, &vols, "hello-nixuv && nixuvdemo"), "hello from nixuv\nnixuvdemo 42\n");
}

#[test]
fn killed_mid_build_is_redone_by_the_next_pod() {
    // Killed while each tool runs: nix (system deps), `uv venv`, `uv pip install`.
    for step in ["profile install", "uv venv", "pip install"] {
        killed_during(step);
    }
}

fn killed_during(step: &str) {
    let fx = Fixture::new();
    let vols = Volumes::new();
    let pod = fx.mutate(&fx.pod("hello-nixuv", "nixuvdemo==1.0"));
    let env_id = pod["metadata"]["annotations"]["nixuv.io/env"].as_str().unwrap().to_string();
    // The first Pod hangs in `step`; it is SIGKILLed (node loss) there.
    let mut child =
        start_init(&pod, &vols, &[("NIXUV_TEST_SLOW", "60"), ("NIXUV_TEST_SLOW_ON", step), ("NIXUV_LEASE_TTL", "1s")]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !tool_calls(&vols).iter().any(|c| c.contains(step)) {
        assert!(Instant::now() < deadline, "build never reached {step}: {:?}", tool_calls(&vols));
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = Command::new("kill").args(["-s", "KILL", "--", &format!("-{}", child.id())]).status().unwrap();
    assert!(st.success());
    let _ = child.wait();
    let uv = vols.path("nixuv-uv");
    assert!(!uv.join(format!(".nixuv/envs/{env_id}.json")).exists(), "{step}: no marker for a half-built env");
    assert!(uv.join(format!("envs/{env_id}")).symlink_metadata().is_err(), "{step}: nothing published");
    assert!(uv.join(format!(".nixuv/locks/{env_id}.lease")).exists(), "{step}: the dead holder's lease is left behind");
    // The next Pod sees the lease go stale, takes over, and builds a complete env.
    let out = run_init(&pod, &vols, &[("NIXUV_LEASE_TTL", "1s")]);
    assert!(out.status.success(), "{step}: {}", text(&out));
    assert!(text(&out).contains("took over a stale lease"), "{step}: {}", text(&out));
    assert_eq!(app_stdout(&pod, &vols, "hello-nixuv && nixuvdemo"), "hello from nixuv\nnixuvdemo 42\n", "{step}");
}

#[test]
fn failures_name_the_item_and_the_tools_error() {
    let fx = Fixture::new();
    let vols = Volumes::new();
    let cases: &[(&str, &str, Option<&str>, &[&str])] = &[
        (
            "missing package version",
            "",
            Some("nixuvdemo==9.9"),
            &["python dep \"nixuvdemo==9.9\"", "uv: error: No solution found", "there is no version of nixuvdemo==9.9"],
        ),
        ("missing package", "", Some("nosuchpkg"), &["python dep \"nosuchpkg\"", "uv:"]),
        (
            "missing attribute",
            "hello-nixuv nosuchattr",
            None,
            &["system dep \"nosuchattr\"", "nix-portable:", "does not provide attribute"],
        ),
    ];
    for (name, system, python, needles) in cases {
        let pod = fx.mutate(&fx.pod(system, python.unwrap_or("")));
        let out = run_init(&pod, &vols, &[]);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("");
        for n in *needles {
            assert!(last.contains(n), "{name}: last stderr line {last:?} lacks {n:?}");
        }
    }
    // A Python version there is no interpreter for.
    let mut p = fx.pod("", "nixuvdemo");
    p["metadata"]["annotations"]["nixuv.io/python"] = json!("3.99");
    let out = run_init(&fx.mutate(&p), &vols, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("python \"3.99\": uv:"), "{}", text(&out));
    // A tool that is not there.
    let pod = fx.mutate(&fx.pod("", "nixuvdemo"));
    let out = run_init(&pod, &vols, &[("NIXUV_UV", "/nonexistent/uv")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("set NIXUV_UV to its path"), "{}", text(&out));
    // A mislabelled env (NIXUV_ENV edited by hand) is refused, so a shared env cannot be poisoned.
    let out = run_init(&pod, &vols, &[("NIXUV_PYTHON_DEPS", "nixuvdep")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not match the dependencies"), "{}", text(&out));
}

/// Makes env `id`'s last use (its `.used` stamp on uv volume `uv`) a month old.
pub fn last_used_a_month_ago(uv: &Path, id: &str) {
    let month_ago = std::time::SystemTime::now() - Duration::from_secs(30 * 86400);
    std::fs::File::options()
        .write(true)
        .open(uv.join(format!(".nixuv/envs/{id}.used")))
        .unwrap()
        .set_modified(month_ago)
        .unwrap();
}

/// `in-pod` with the gc CronJob's mounts: the nix volume at $NP_LOCATION/.nix-portable/nix, the
/// uv volume at its path.
pub fn gc_in_pod(vols: &Volumes, scratch: &Path) -> Command {
    let gc_container = json!({"volumeMounts": [
        {"name": "nixuv-tmp", "mountPath": "/nixuv/work"},
        {"name": "nixuv-nix", "mountPath": "/nixuv/work/.nix-portable/nix"},
        {"name": "nixuv-uv", "mountPath": "/nixuv/uv"}]});
    in_pod(&gc_container, vols, scratch)
}

#[test]
fn gc_removes_an_old_env_and_keeps_a_fresh_one() {
    let fx = Fixture::new();
    let vols = Volumes::new();
    let old = fx.mutate(&fx.pod("tools.greet", "nixuvdep"));
    let fresh = fx.mutate(&fx.pod("hello-nixuv", "nixuvdemo"));
    for p in [&old, &fresh] {
        let out = run_init(p, &vols, &[]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let id = |p: &Value| p["metadata"]["annotations"]["nixuv.io/env"].as_str().unwrap().to_string();
    let (old_id, fresh_id) = (id(&old), id(&fresh));
    let uv = vols.path("nixuv-uv");
    last_used_a_month_ago(&uv, &old_id);
    let old_venv = std::fs::read_link(uv.join(format!("envs/{old_id}"))).unwrap();
    // gc runs like the CronJob: nix volume at $NP_LOCATION/.nix-portable/nix, uv volume at its path.
    let scratch = vols.dir.path().join("gc-tmp");
    let out = gc_in_pod(&vols, &scratch)
        .args(["--", common::bin(), "gc", "--max-age", "7d"])
        .env("NIXUV_NIX_PORTABLE", support("nix-portable"))
        .env("NIXUV_UV", support("uv"))
        .env("NIXUV_TEST_TOOL_LOG", vols.path("tools.log"))
        .env("NIX_CONFIG", "substituters =\nbuild-users-group =")
        .env("HOME", "/nixuv/work")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("removed unused env"), "{}", text(&out));
    assert!(!uv.join(format!(".nixuv/envs/{old_id}.json")).exists());
    assert!(!uv.join("envs").join(&old_venv).exists(), "old venv removed");
    assert!(!vols.path("nixuv-nix").join(format!("var/nix/profiles/nixuv/{old_id}")).exists());
    let calls = tool_calls(&vols);
    assert!(calls.iter().any(|c| c.contains("store gc")), "{calls:?}");
    assert!(calls.iter().any(|c| c == "uv cache prune"), "{calls:?}");
    // The fresh env survives, nix's GC included (its profile is a root), and still works.
    assert!(uv.join(format!(".nixuv/envs/{fresh_id}.json")).exists());
    assert_eq!(app_stdout(&fresh, &vols, "hello-nixuv && nixuvdemo"), "hello from nixuv\nnixuvdemo 42\n");
    let warm = run_init(&fresh, &vols, &[]);
    assert!(text(&warm).contains("already built"), "{}", text(&warm));
    // The old env's store paths are gone: greet is not in the store any more.
    let greet = std::fs::read_dir(vols.path("nixuv-nix").join("store"))
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with("-greet"));
    assert!(!greet, "nix store gc freed the old env's paths");
}

#[test]
fn read_only_store_and_full_disk_fail_clearly_and_publish_nothing() {
    let fx = Fixture::new();
    let vols = Volumes::new();
    let pod = fx.mutate(&fx.pod("", "nixuvdemo==1.0"));
    let env_id = pod["metadata"]["annotations"]["nixuv.io/env"].as_str().unwrap().to_string();
    // The uv volume mounted read-only over its usual place.
    let ro = vec!["--mount".to_string(), format!("{}:/nixuv/uv:ro", vols.path("nixuv-uv").display())];
    let out = start_init_with(&pod, &vols, &[], &ro).wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or("");
    assert!(last.contains("/nixuv/uv") && last.to_lowercase().contains("read-only"), "{last}");
    // A full disk: the uv volume is a 64 KiB tmpfs.
    let full = vec!["--tmpfs".to_string(), "/nixuv/uv:64k".to_string()];
    let out = start_init_with(&pod, &vols, &[], &full).wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or("");
    assert!(last.contains("No space left on device") || last.contains("os error 28"), "{last}");
    // Neither left anything published on the real volume, and a normal run then succeeds.
    let uv = vols.path("nixuv-uv");
    assert!(!uv.join(format!(".nixuv/envs/{env_id}.json")).exists());
    let ok = run_init(&pod, &vols, &[]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert_eq!(app_stdout(&pod, &vols, "nixuvdemo"), "nixuvdemo 42\n");
}

#[test]
fn managed_python_on_the_volume_runs_without_the_machines_python() {
    let fx = Fixture::with_managed_python();
    let vols = Volumes::new();
    let pod = fx.mutate(&fx.pod("hello-nixuv", "nixuvdemo==1.0"));
    init_ok(&pod, &vols);
    // The interpreter uv installed is on the uv volume, and the venv links to it.
    // Under python/<source>/: the directory of the admin's interpreter source.
    let sources: Vec<PathBuf> =
        std::fs::read_dir(vols.path("nixuv-uv").join("python")).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(sources.len(), 1, "{sources:?}");
    assert!(std::fs::read_dir(&sources[0])
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("cpython-")));
    // In the app container the machine's interpreters are hidden: everything PATH and
    // VIRTUAL_ENV name must resolve inside the container's own mounts.
    let script = "python -c 'import sys, nixuvdemo; print(nixuvdemo.VALUE, sys.base_prefix)' && nixuvdemo && hello-nixuv && ! test -x /root/.pyenv/versions && echo hidden";
    let app = run_app(&pod, &vols, script, true);
    let out = String::from_utf8_lossy(&app.stdout).into_owned();
    assert!(app.status.success(), "{}", text(&app));
    let mut lines = out.lines();
    let first = lines.next().unwrap();
    assert!(
        first.starts_with("42 /nixuv/uv/python/") && first.contains("/cpython-"),
        "the interpreter comes from the uv volume: {first}"
    );
    assert_eq!(lines.collect::<Vec<_>>(), ["nixuvdemo 42", "hello from nixuv", "hidden"]);
}

impl Fixture {
    /// Adds top-level keys to the config the webhook's output is made with.
    pub fn append_config(&self, yaml: &str) {
        let mut text = std::fs::read_to_string(&self.config).unwrap();
        text.push_str(yaml);
        std::fs::write(&self.config, text).unwrap();
    }
}

#[test]
fn wheels_only_by_default_source_builds_when_allowed_and_bytecode_compiled() {
    let fx = Fixture::new();
    let vols = Volumes::new();
    // nixuvsrc is published as a source distribution only: refused, naming it and the setting.
    let pod = fx.mutate(&fx.pod("", "nixuvsrc"));
    let out = run_init(&pod, &vols, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("python dep \"nixuvsrc\"") && err.contains("python.allowSourceBuilds is false"), "{err}");
    assert!(tool_calls(&vols).iter().any(|c| c.contains("--no-build")), "{:?}", tool_calls(&vols));
    // Allowed by the admin: another env id (it can change what is installed), built and usable.
    fx.append_config("python: {allowSourceBuilds: true}\n");
    let allowed = fx.mutate(&fx.pod("", "nixuvsrc"));
    let id = |p: &Value| p["metadata"]["annotations"]["nixuv.io/env"].as_str().unwrap().to_string();
    assert_ne!(id(&pod), id(&allowed));
    let out = run_init(&allowed, &vols, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(app_stdout(&allowed, &vols, "python -c 'import nixuvsrc; print(nixuvsrc.BUILT_FROM_SOURCE)'"), "True\n");
    // Installed packages are byte-compiled at install: a read-only venv never compiles at start.
    let demo = fx.mutate(&fx.pod("", "nixuvdemo==1.0"));
    assert!(run_init(&demo, &vols, &[]).status.success());
    let venv = vols
        .path("nixuv-uv")
        .join("envs")
        .join(std::fs::read_link(vols.path("nixuv-uv").join("envs").join(id(&demo))).unwrap());
    let pyc = walk(&venv).into_iter().any(|p| p.to_string_lossy().contains("nixuvdemo/__pycache__/__init__"));
    assert!(pyc, "no .pyc for nixuvdemo under {}", venv.display());
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// A package index with upload times (tests/support/json_index.py), killed when dropped.
pub struct JsonIndex {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl JsonIndex {
    /// nixuvdep 0.1 (BASE 41) uploaded 2024-01-01, 0.2 (BASE 99) uploaded 2025-06-01.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// [`JsonIndex::start`] with the server's settings (json_index.py: `NIXUV_TEST_INDEX_AUTH`
    /// for HTTP Basic, `NIXUV_TEST_INDEX_TLS` for HTTPS, `NIXUV_TEST_INDEX_LOG`).
    pub fn start_with(env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let code = format!(
            "import sys, json; sys.path.insert(0, {sup:?}); import make_wheels as m\n\
             m.wheel({d:?}, 'nixuvdep', '0.1', {{'nixuvdep/__init__.py': 'BASE = 41\\n'}})\n\
             m.wheel({d:?}, 'nixuvdep', '0.2', {{'nixuvdep/__init__.py': 'BASE = 99\\n'}})\n\
             json.dump({{'nixuvdep-0.1-py3-none-any.whl': '2024-01-01T00:00:00Z', 'nixuvdep-0.2-py3-none-any.whl': '2025-06-01T00:00:00Z'}}, open({d:?} + '/upload-times.json', 'w'))\n",
            sup = support("").display().to_string(),
            d = dir.path().display().to_string()
        );
        assert!(Command::new("python3").args(["-c", &code]).status().unwrap().success());
        let mut cmd = Command::new("python3");
        cmd.arg(support("json_index.py")).arg(dir.path()).stdout(Stdio::piped()).envs(env.iter().copied());
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        JsonIndex { child, port: line.trim().parse().unwrap(), _dir: dir }
    }
}

impl Drop for JsonIndex {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn exclude_newer_pins_python_resolution_and_the_env_id() {
    let fx = Fixture::new();
    let index = JsonIndex::start();
    // uv from an HTTP index with upload times; the machine's interpreter, no downloads.
    std::fs::write(
        &fx.config,
        format!(
            "storage: {{mode: pvc}}\ninitEnv:\n- {{name: UV_DEFAULT_INDEX, value: 'http://127.0.0.1:{}/simple'}}\n- {{name: UV_PYTHON_DOWNLOADS, value: never}}\n- {{name: UV_PYTHON_PREFERENCE, value: only-system}}\n",
            index.port
        ),
    )
    .unwrap();
    let vols = Volumes::new();
    let latest = fx.mutate(&fx.pod("", "nixuvdep"));
    let out = run_init(&latest, &vols, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(app_stdout(&latest, &vols, "python -c 'import nixuvdep; print(nixuvdep.BASE)'"), "99\n");
    // As of 2025-01-01: the older release, under another env id.
    fx.append_config("python: {excludeNewer: '2025-01-01T00:00:00Z'}\n");
    let pinned = fx.mutate(&fx.pod("", "nixuvdep"));
    let id = |p: &Value| p["metadata"]["annotations"]["nixuv.io/env"].as_str().unwrap().to_string();
    assert_ne!(id(&latest), id(&pinned));
    let init = &pinned["spec"]["initContainers"][0];
    assert!(init["env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "NIXUV_EXCLUDE_NEWER" && e["value"] == "2025-01-01T00:00:00Z"));
    let out = run_init(&pinned, &vols, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(app_stdout(&pinned, &vols, "python -c 'import nixuvdep; print(nixuvdep.BASE)'"), "41\n");
    // A bad value is refused at start-up, naming the key.
    std::fs::write(&fx.config, "python: {excludeNewer: last-tuesday}\n").unwrap();
    let out =
        Command::new(common::bin()).args(["preview", "-f", "/dev/null", "--config"]).arg(&fx.config).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("python.excludeNewer"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_lock_is_recorded_and_envs_lists_the_store() {
    let fx = Fixture::new();
    let vols = Volumes::new();
    let pod = fx.mutate(&fx.pod("hello-nixuv", "nixuvdemo==1.0"));
    let id = pod["metadata"]["annotations"]["nixuv.io/env"].as_str().unwrap().to_string();
    init_ok(&pod, &vols);
    let uv = vols.path("nixuv-uv");
    let marker: Value =
        serde_json::from_slice(&std::fs::read(uv.join(format!(".nixuv/envs/{id}.json"))).unwrap()).unwrap();
    let lock = &marker["lock"];
    // The lock matches what uv itself reports for the venv.
    let venv = uv.join("envs").join(std::fs::read_link(uv.join("envs").join(&id)).unwrap());
    let listed = Command::new("uv")
        .args(["pip", "list", "--format", "json", "--python"])
        .arg(venv.join("bin/python"))
        .output()
        .unwrap();
    let listed: Vec<Value> = serde_json::from_slice(&listed.stdout).unwrap();
    let pairs = |v: &[Value]| -> Vec<(String, String)> {
        let mut p: Vec<_> = v
            .iter()
            .map(|d| (d["name"].as_str().unwrap().to_string(), d["version"].as_str().unwrap().to_string()))
            .collect();
        p.sort();
        p
    };
    assert_eq!(pairs(lock["python"].as_array().unwrap()), pairs(&listed));
    assert!(pairs(&listed).contains(&("nixuvdemo".into(), "1.0".into())), "{listed:?}");
    assert!(
        lock["python"].as_array().unwrap().iter().all(|d| d["recordSha256"].as_str().is_some_and(|h| h.len() == 64)),
        "{lock}"
    );
    // The interpreter's full version (3.X.Y), not the declared 3.X.
    let full =
        Command::new("python3").args(["-c", "import platform; print(platform.python_version())"]).output().unwrap();
    assert_eq!(lock["interpreter"]["version"].as_str().unwrap(), String::from_utf8_lossy(&full.stdout).trim());
    assert_eq!(
        lock["interpreter"]["version"].as_str().unwrap().split('.').take(2).collect::<Vec<_>>().join("."),
        fx.python
    );
    let nix_paths = lock["nix"].as_array().unwrap();
    assert!(!nix_paths.is_empty(), "{lock}");
    for p in nix_paths {
        let rest = p.as_str().unwrap().strip_prefix("/nix/").unwrap();
        assert!(vols.path("nixuv-nix").join(rest).exists(), "{p}");
    }
    // A build in progress (a fresh lease, no marker yet) and a build directory left behind.
    let building = "1111111111111111";
    std::fs::write(uv.join(format!(".nixuv/locks/{building}.lease")), "node-7:42:abcd").unwrap();
    let abandoned = uv.join("envs/.2222222222222222.3333333333333333");
    std::fs::create_dir_all(abandoned.join("lib")).unwrap();
    std::fs::write(abandoned.join("lib/x"), vec![0u8; 1000]).unwrap();
    let envs = |args: &[&str]| {
        Command::new(common::bin())
            .arg("envs")
            .args(args)
            .arg("--uv-root")
            .arg(&uv)
            .arg("--nix-dir")
            .arg(vols.path("nixuv-nix"))
            .output()
            .unwrap()
    };
    let out = envs(&["list", "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let state = |i: &str| list.iter().find(|e| e["id"] == i).map(|e| e["state"].as_str().unwrap().to_string());
    assert_eq!(state(&id).as_deref(), Some("ready"), "{list:?}");
    assert_eq!(state(building).as_deref(), Some("building"));
    assert_eq!(state("2222222222222222").as_deref(), Some("abandoned"));
    let ready = list.iter().find(|e| e["id"] == id.as_str()).unwrap();
    assert!(
        ready["bytes"].as_u64().unwrap() > 0 && ready["builtAtUnix"].is_u64() && ready["lastUsedUnix"].is_u64(),
        "{ready}"
    );
    assert_eq!(ready["python"], json!(["nixuvdemo==1.0"]));
    assert_eq!(list.iter().find(|e| e["id"] == building).unwrap()["holder"], "node-7:42:abcd");
    assert_eq!(list.iter().find(|e| e["id"] == "2222222222222222").unwrap()["bytes"], 1000);
    let out = envs(&["show", &id]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("nixuvdemo==1.0  RECORD sha256:") && shown.contains("ready"), "{shown}");
    // The list: human sizes and the deps, one line per env.
    let listed = envs(&["list"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    let line = text.lines().find(|l| l.starts_with(&id)).unwrap_or_else(|| panic!("{text}"));
    assert!(line.ends_with("  hello-nixuv nixuvdemo==1.0"), "{line}");
    assert!(line.contains(" KiB  built ") || line.contains(" MiB  built "), "{line}");
    eprintln!("{shown}");
}

/// `nixuv preview -o warm-job`: one Job per distinct env of a manifest; running its container (as
/// the cluster would) builds exactly the envs the webhook gives the manifest's Pods, which then
/// start warm.
#[test]
fn warm_jobs_build_the_envs_a_manifest_will_need() {
    let fx = Fixture::new();
    let vols = Volumes::new();
    let manifest = fx.dir.path().join("fanout.yaml");
    std::fs::write(&manifest, format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: team-a}}\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web, nixuv.io/inject: \"true\"}}, annotations: {{nixuv.io/python-deps: nixuvdemo==1.0, nixuv.io/python: \"{py}\"}}}}\n    spec: {{containers: [{{name: app, image: x}}]}}\n\
         ---\napiVersion: v1\nkind: Pod\nmetadata: {{name: same-env, namespace: team-a, labels: {{nixuv.io/inject: \"true\"}}, annotations: {{nixuv.io/python-deps: nixuvdemo==1.0, nixuv.io/python: \"{py}\"}}}}\nspec: {{containers: [{{name: app, image: x}}]}}\n\
         ---\napiVersion: batch/v1\nkind: Job\nmetadata: {{name: tools, namespace: team-a}}\nspec:\n  template:\n    metadata: {{labels: {{nixuv.io/inject: \"true\", system.nixuv.io/hello-nixuv: \"\"}}}}\n    spec: {{restartPolicy: Never, containers: [{{name: app, image: x}}]}}\n",
        py = fx.python
    )).unwrap();
    let preview = |o: &str| {
        let out = Command::new(common::bin())
            .args(["preview", "-o", o, "--config"])
            .arg(&fx.config)
            .arg("-f")
            .arg(&manifest)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let docs = |text: &str| -> Vec<Value> {
        serde_yaml_ng::Deserializer::from_str(text).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect()
    };
    let jobs = docs(&preview("warm-job"));
    let mutated = docs(&preview("yaml"));
    let ids_of = |objs: &[Value]| -> std::collections::BTreeSet<String> {
        objs.iter()
            .map(|o| {
                let meta = if o["kind"] == "Pod" { &o["metadata"] } else { &o["spec"]["template"]["metadata"] };
                meta["annotations"]["nixuv.io/env"].as_str().unwrap().to_string()
            })
            .collect()
    };
    let want = ids_of(&mutated);
    assert_eq!(want.len(), 2, "two distinct envs");
    assert_eq!(jobs.len(), 2, "one Job per distinct env: {jobs:?}");
    let got: std::collections::BTreeSet<String> =
        jobs.iter().map(|j| j["metadata"]["labels"]["nixuv.io/env"].as_str().unwrap().to_string()).collect();
    assert_eq!(got, want);
    for job in &jobs {
        assert_eq!(job["metadata"]["namespace"], "team-a");
        let spec = &job["spec"]["template"]["spec"];
        assert!(
            job["spec"]["template"]["metadata"]["labels"].get("nixuv.io/inject").is_none(),
            "the Job is not itself injected"
        );
        // Run the Job's container as the cluster would: its command, env and mounts.
        let pod =
            json!({"spec": {"initContainers": [spec["containers"][0].clone()], "volumes": spec["volumes"].clone()}});
        let out = run_init(&pod, &vols, &[]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("env built and published"), "{}", text(&out));
    }
    // The manifest's own Pods then find their envs built.
    for obj in &mutated {
        let tpl = if obj["kind"] == "Pod" { obj.clone() } else { obj["spec"]["template"].clone() };
        let warm = run_init(&tpl, &vols, &[]);
        assert!(text(&warm).contains("already built"), "{}", text(&warm));
    }
}

#[test]
fn overlay_mode_keeps_the_image_python_and_its_packages() {
    let fx = Fixture::new();
    let vols = Volumes::new();
    // The image's own Python, with a package of its own (a venv stands in for the image's prefix).
    let image = fx.dir.path().join("image-python");
    let st = Command::new("python3").args(["-m", "venv", "--without-pip"]).arg(&image).status().unwrap();
    assert!(st.success());
    let site = walk(&image).into_iter().find(|p| p.ends_with("site-packages")).unwrap_or_else(|| {
        let lib = std::fs::read_dir(image.join("lib")).unwrap().next().unwrap().unwrap().path();
        lib.join("site-packages")
    });
    std::fs::create_dir_all(site.join("imagepkg")).unwrap();
    std::fs::write(site.join("imagepkg/__init__.py"), "VALUE = 'from the image'\n").unwrap();
    let mut pod = fx.pod("", "nixuvdemo==1.0");
    pod["metadata"]["annotations"]["nixuv.io/python-mode"] = json!("overlay");
    pod["spec"]["containers"][0]["env"] =
        json!([{"name": "PATH", "value": format!("{}/bin:/usr/bin:/bin", image.display())}]);
    let pod = fx.mutate(&pod);
    let out = init_ok(&pod, &vols);
    // Compiled once per source, as a venv is: nixuvdemo's and nixuvdep's sources.
    assert!(text(&out).contains("files=2 reused=0 compiled=2"), "{}", text(&out));
    // The image's interpreter runs, and sees both its own package and the env's; the env's
    // console script runs with it too.
    let script = "python3 -c 'import sys, imagepkg, nixuvdemo; print(imagepkg.VALUE, nixuvdemo.VALUE, sys.prefix)' && nixuvdemo && head -1 \"$(command -v nixuvdemo)\"";
    let out = app_stdout(&pod, &vols, script);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("from the image 42 {}", image.display()), "{out}");
    assert_eq!(lines[1..], ["nixuvdemo 42", "#!/usr/bin/env python3"], "{out}");
    // The image's interpreter takes the overlay's bytecode as it is (its magic, the source's hash).
    let check = r#"python3 -c 'import importlib.util as u, nixuvdemo as m; d = open(m.__spec__.cached, "rb").read(16); print(d[:4] == u.MAGIC_NUMBER, d[8:16] == u.source_hash(open(m.__file__, "rb").read()))'"#;
    assert_eq!(app_stdout(&pod, &vols, check), "True True\n");
    // Byte-compiled at install for that Python, and the marker says how it was laid out.
    let id = pod["metadata"]["annotations"]["nixuv.io/env"].as_str().unwrap();
    let envs = vols.path("nixuv-uv").join("envs");
    let dir = envs.join(std::fs::read_link(envs.join(id)).unwrap());
    assert!(walk(&dir).iter().any(|p| p.to_string_lossy().contains("nixuvdemo/__pycache__/")), "{}", dir.display());
    let marker: Value =
        serde_json::from_slice(&std::fs::read(vols.path("nixuv-uv").join(format!(".nixuv/envs/{id}.json"))).unwrap())
            .unwrap();
    assert_eq!(marker["pythonMode"], "overlay");
    assert!(marker["lock"]["python"].as_array().unwrap().iter().any(|d| d["name"] == "nixuvdemo"), "{marker}");
    // Warm on the second run.
    let again = run_init(&pod, &vols, &[]);
    assert!(text(&again).contains("already built"), "{}", text(&again));
}

#[test]
fn interpreters_come_from_the_init_image_without_any_network() {
    let (fx, dist) = Fixture::with_image_pythons();
    let vols = Volumes::new();
    let pod = fx.mutate(&fx.pod("", "nixuvdemo==1.0"));
    let init_env = pod["spec"]["initContainers"][0]["env"].to_string();
    assert!(!init_env.contains("UV_PYTHON_DOWNLOADS_JSON_URL"), "the Pod names no download list: {init_env}");
    // The init container with the image's interpreters where the image has them, and no network.
    let image_pythons = format!("{}:/opt/nixuv/python:ro", dist.display());
    let out = start_init_with(&pod, &vols, &[], &["--mount".into(), image_pythons.clone(), "--no-net".into()])
        .wait_with_output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let script = "python -c 'import sys, nixuvdemo; print(nixuvdemo.VALUE, sys.base_prefix)'";
    let app = run_app(&pod, &vols, script, true);
    let stdout = String::from_utf8_lossy(&app.stdout).into_owned();
    assert!(stdout.starts_with("42 /nixuv/uv/python/") && stdout.contains("/cpython-"), "{}", text(&app));
    // A version the image does not carry fails naming it and what to do.
    let mut other = fx.pod("", "nixuvdemo==1.0");
    other["metadata"]["annotations"]["nixuv.io/python"] = json!("3.9");
    let other = fx.mutate(&other);
    let out = start_init_with(&other, &vols, &[], &["--mount".into(), image_pythons, "--no-net".into()])
        .wait_with_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("python \"3.9\"") && err.contains("interpreters this init image carries"), "{err}");
}

#[test]
fn private_index_credentials_come_from_a_secret_and_never_show() {
    const PASSWORD: &str = "s3cret-Pa55w0rd";
    let fx = Fixture::new();
    let index = JsonIndex::start_with(&[("NIXUV_TEST_INDEX_AUTH", &format!("reader:{PASSWORD}"))]);
    let config = |secret: &str| {
        format!(
            "storage: {{mode: pvc}}\ninitEnv:\n\
             - {{name: UV_DEFAULT_INDEX, value: 'private=http://127.0.0.1:{}/simple'}}\n\
             - {{name: UV_INDEX_PRIVATE_USERNAME, valueFrom: {{secretKeyRef: {{name: {secret}, key: username}}}}}}\n\
             - {{name: UV_INDEX_PRIVATE_PASSWORD, valueFrom: {{secretKeyRef: {{name: {secret}, key: password}}}}}}\n\
             - {{name: UV_PYTHON_DOWNLOADS, value: never}}\n- {{name: UV_PYTHON_PREFERENCE, value: only-system}}\n",
            index.port
        )
    };
    std::fs::write(&fx.config, config("pypi-creds")).unwrap();
    let pod = fx.mutate(&fx.pod("", "nixuvdep"));
    // The Pod spec carries references to the Secret, never the credentials.
    let init = &pod["spec"]["initContainers"][0];
    let env = init["env"].as_array().unwrap();
    let by_name = |n: &str| env.iter().find(|e| e["name"] == n).cloned().unwrap();
    assert_eq!(
        by_name("UV_INDEX_PRIVATE_PASSWORD")["valueFrom"],
        json!({"secretKeyRef": {"name": "pypi-creds", "key": "password"}})
    );
    assert_eq!(by_name("NIXUV_INDEX_URL")["value"], format!("http://127.0.0.1:{}/simple", index.port));
    assert_eq!(
        by_name("NIXUV_SECRET_ENV")["value"],
        "UV_INDEX_PRIVATE_PASSWORD=pypi-creds/password,UV_INDEX_PRIVATE_USERNAME=pypi-creds/username"
    );
    // What the kubelet does with the references: the Secret's values in the container's env.
    let secrets = [("UV_INDEX_PRIVATE_USERNAME", "reader"), ("UV_INDEX_PRIVATE_PASSWORD", PASSWORD)];
    let vols = Volumes::new();
    // Without them the index refuses, and the build fails.
    let out = run_init(&pod, &vols, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = run_init(&pod, &vols, &secrets);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains(PASSWORD), "{}", text(&out));
    assert_eq!(app_stdout(&pod, &vols, "python -c 'import nixuvdep; print(nixuvdep.BASE)'"), "99\n");
    // The same Secret edited afterwards: the env built with the old values is never served under
    // the new ones. A wrong value is a rebuild that fails (not "already built"); the right one
    // again builds it anew (the failed rebuild took the marker away first); the same values again
    // are the warm path.
    let edited = [("UV_INDEX_PRIVATE_USERNAME", "reader"), ("UV_INDEX_PRIVATE_PASSWORD", "edited-Pa55w0rd")];
    let out = run_init(&pod, &vols, &edited);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("are not those the env was built with; rebuilding"), "{}", text(&out));
    let out = run_init(&pod, &vols, &secrets);
    assert!(out.status.success() && !text(&out).contains("already built"), "{}", text(&out));
    let out = run_init(&pod, &vols, &secrets);
    assert!(out.status.success() && text(&out).contains("already built"), "{}", text(&out));
    // A wrong password fails without printing either password.
    let wrong = [("UV_INDEX_PRIVATE_USERNAME", "reader"), ("UV_INDEX_PRIVATE_PASSWORD", "not-the-Pa55w0rd")];
    let out = run_init(&pod, &Volumes::new(), &wrong);
    assert_eq!(out.status.code(), Some(1));
    assert!(!text(&out).contains("not-the-Pa55w0rd") && !text(&out).contains(PASSWORD), "{}", text(&out));
    // The id binds which Secret, not its value: another Secret is another env.
    std::fs::write(&fx.config, config("other-creds")).unwrap();
    let other = fx.mutate(&fx.pod("", "nixuvdep"));
    let id = |p: &Value| p["metadata"]["annotations"]["nixuv.io/env"].as_str().unwrap().to_string();
    assert_ne!(id(&pod), id(&other));
    // Credentials as a literal value, or the index URL from a Secret, are refused at start-up.
    for (bad, field) in [
        (
            format!("initEnv:\n- {{name: UV_DEFAULT_INDEX, value: 'https://reader:{PASSWORD}@pkgs.example/simple'}}\n"),
            "initEnv[0].value",
        ),
        (
            "initEnv:\n- {name: UV_DEFAULT_INDEX, valueFrom: {secretKeyRef: {name: s, key: url}}}\n".to_string(),
            "initEnv[0].valueFrom",
        ),
        (
            "initEnv:\n- {name: UV_INDEX_X_PASSWORD, valueFrom: {configMapKeyRef: {name: s, key: k}}}\n".to_string(),
            "configMapKeyRef",
        ),
    ] {
        std::fs::write(&fx.config, &bad).unwrap();
        let out = Command::new(common::bin())
            .args(["preview", "-f", "/dev/null", "--config"])
            .arg(&fx.config)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(field) && !err.contains(PASSWORD), "{field}: {err}");
    }
}

/// `make bench`'s env timings run the init container as the webhook configures it (a bench that
/// measured a failing build would report nonsense): the offline row, end to end.
#[test]
fn the_env_benchmark_builds_what_it_times() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench-envs.py"))
        .arg(common::bin())
        .arg(dir.path())
        .arg("--offline")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("| materialize, small Python env (offline): cold / warm (median) | "), "{stdout}");
    assert!(!text(&out).contains("materialize failed"), "{}", text(&out));
    // What it timed is there: the env's venv imports the package.
    let venv = dir.path().join("small-0/uv/envs");
    let env = std::fs::read_dir(&venv).unwrap().flatten().find(|e| e.file_name().len() == 16).unwrap();
    let st = Command::new(env.path().join("bin/python")).args(["-c", "import nixuvdemo"]).status().unwrap();
    assert!(st.success());
}

/// A store volume nixuv-init may not write (owned by root, as a fresh volume often is): the error
/// names the uid and gid it runs as and the settings to change, not only `Permission denied`.
#[test]
fn a_store_it_may_not_write_names_the_uid_and_the_setting() {
    let fx = Fixture::new();
    let pod = fx.mutate(&fx.pod("", "nixuvdemo==1.0"));
    let init = &pod["spec"]["initContainers"][0];
    let store = tempfile::tempdir().unwrap();
    // Root-owned and not writable by others, as a fresh volume.
    std::fs::set_permissions(store.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", "65532", "--regid", "65532", "--clear-groups", common::bin(), "materialize"]);
    cmd.env_clear();
    for e in init["env"].as_array().unwrap() {
        if let Some(v) = e["value"].as_str() {
            cmd.env(e["name"].as_str().unwrap(), v);
        }
    }
    cmd.env("NIXUV_UV_ROOT", store.path());
    let out = cmd.output().expect("setpriv (util-linux)");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Permission denied"), "{err}");
    assert!(err.contains("runs as uid 65532, gid 65532") && err.contains("initRunAsUser"), "{err}");
}

/// A build given another interpreter list (a hand-written nixuv-init whose id is computed for it)
/// installs its interpreter in a directory of its own: the admin's envs never run it.
#[test]
fn interpreters_from_another_source_never_serve_the_admins_envs() {
    let fx = Fixture::with_managed_python();
    let vols = Volumes::new();
    let honest = fx.mutate(&fx.pod("", "nixuvdemo==1.0"));
    init_ok(&honest, &vols);
    // The attacker's list: the same interpreter from another place (a real build then succeeds).
    let config = std::fs::read_to_string(&fx.config).unwrap();
    let dist = fx.dir.path().join("python-dist");
    let other = fx.dir.path().join("other-dist");
    std::fs::create_dir_all(&other).unwrap();
    for f in std::fs::read_dir(&dist).unwrap().flatten() {
        std::fs::copy(f.path(), other.join(f.file_name())).unwrap();
    }
    let list = std::fs::read_to_string(other.join("downloads.json"))
        .unwrap()
        .replace(&dist.display().to_string(), &other.display().to_string());
    std::fs::write(other.join("downloads.json"), list).unwrap();
    std::fs::write(
        &fx.config,
        config.replace(
            &format!("file://{}/downloads.json", dist.display()),
            &format!("file://{}/downloads.json", other.display()),
        ),
    )
    .unwrap();
    let attacker = fx.mutate(&fx.pod("", "nixuvdemo==1.0"));
    std::fs::write(&fx.config, &config).unwrap();
    assert_ne!(attacker["metadata"]["annotations"]["nixuv.io/env"], honest["metadata"]["annotations"]["nixuv.io/env"]);
    init_ok(&attacker, &vols);
    let sources: Vec<String> = std::fs::read_dir(vols.path("nixuv-uv").join("python"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(sources.len(), 2, "one interpreter directory per source: {sources:?}");
    // The honest env, rebuilt from scratch on the same volume, uses its own source's directory.
    let script = "python -c 'import sys; print(sys.base_prefix)'";
    let base_of = |pod: &Value| String::from_utf8_lossy(&run_app(pod, &vols, script, true).stdout).trim().to_string();
    let (h, a) = (base_of(&honest), base_of(&attacker));
    assert_ne!(h.split('/').nth(4), a.split('/').nth(4), "honest {h}, other {a}");
}

/// `nixuv preview --resolve`, offline against the fixture's wheels and flake: each thing that
/// would fail in the init container fails here, named with its fix (an unknown package, a
/// package with no wheel, no version in range, a Python the init image does not carry, an
/// unknown nix attribute); an env that builds resolves.
#[test]
fn resolve_finds_what_the_init_container_would_fail_on() {
    let fx = Fixture::new();
    // Interpreters from the init image's own list (no download variables in the config).
    let (image_fx, _dist) = Fixture::with_image_pythons();
    let run_with = |fx: &Fixture, system: &str, python: &str, version: Option<&str>| {
        let mut pod = fx.pod(system, python);
        if let Some(v) = version {
            pod["metadata"]["annotations"]["nixuv.io/python"] = json!(v);
        }
        let path = fx.dir.path().join(format!("resolve-{}.json", common_nonce()));
        std::fs::write(&path, serde_json::to_vec(&pod).unwrap()).unwrap();
        let out = Command::new(common::bin())
            .args(["preview", "--resolve", "--config"])
            .arg(&fx.config)
            .arg("-f")
            .arg(&path)
            .env("NIXUV_UV", support("uv"))
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let run = |system: &str, python: &str, version: Option<&str>| run_with(&fx, system, python, version);
    let (code, said) = run("hello-nixuv", "nixuvdemo==1.0", None);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains(": resolves"), "{said}");
    let (code, said) = run("hello-nixuv ffmpeg_7-headless", "nixuvdemo==1.0, pandass, nixuvsrc, nixuvdep>=0.5", None);
    assert_eq!(code, Some(1), "{said}");
    for (item, fix) in [
        ("\"pandass\" would fail", "no such package on the index"),
        ("\"nixuvsrc\" would fail", "python.allowSourceBuilds"),
        ("\"nixuvdep>=0.5\" would fail", "no version on the index matches it"),
        ("\"ffmpeg_7-headless\" would fail", "no such attribute in path:"),
    ] {
        let line = said.lines().find(|l| l.contains(item)).unwrap_or_else(|| panic!("no {item:?} in {said}"));
        assert!(line.contains(fix), "{line}");
    }
    assert!(!said.contains("\"nixuvdemo==1.0\" would fail") && !said.contains("\"hello-nixuv\" would fail"), "{said}");
    let (code, said) = run_with(&image_fx, "", "nixuvdemo==1.0", None);
    assert_eq!(code, Some(0), "{said}");
    let (code, said) = run_with(&image_fx, "", "nixuvdemo==1.0", Some("3.9"));
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("\"python 3.9\" would fail: the init image carries Python 3.10, 3.11, 3.12, 3.13 only"),
        "{said}"
    );
}

/// `nixuv gc --uv-cache-max-size`: once an env is gone, the unpacked wheels only it linked are
/// removed from the uv cache (the ones another env links stay), and a later build that needs
/// them again still builds.
#[test]
fn gc_trims_the_uv_cache_of_wheels_no_env_links() {
    let fx = Fixture::new();
    let vols = Volumes::new();
    let old = fx.mutate(&fx.pod("", "nixuvdemo==1.0"));
    let fresh = fx.mutate(&fx.pod("", "nixuvdep"));
    for p in [&old, &fresh] {
        init_ok(p, &vols);
    }
    let uv = vols.path("nixuv-uv");
    let old_id = old["metadata"]["annotations"]["nixuv.io/env"].as_str().unwrap().to_string();
    last_used_a_month_ago(&uv, &old_id);
    let archives = || -> Vec<String> {
        let mut names: Vec<String> = walk(&uv.join("cache"))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "py"))
            .filter(|p| p.to_string_lossy().contains("archive-v"))
            .map(|p| p.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names.dedup();
        names
    };
    let before = archives();
    assert!(before.contains(&"nixuvdemo".to_string()) && before.contains(&"nixuvdep".to_string()), "{before:?}");
    let scratch = vols.dir.path().join("gc-tmp");
    let out = gc_in_pod(&vols, &scratch)
        .args(["--", common::bin(), "gc", "--max-age", "7d", "--no-prune", "--uv-cache-max-size", "0"])
        .env("HOME", "/nixuv/work")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("uv cache: removed an unpacked wheel no env links"), "{}", text(&out));
    assert_eq!(archives(), ["nixuvdep"], "only the wheel the remaining env links stays");
    // The remaining env still works; the removed one builds again.
    assert_eq!(app_stdout(&fresh, &vols, "python -c 'import nixuvdep; print(nixuvdep.BASE)'"), "41\n");
    init_ok(&old, &vols);
    assert_eq!(app_stdout(&old, &vols, "nixuvdemo"), "nixuvdemo 42\n");
}

/// `nixuv gc --pods-namespace` (the gc CronJob's): an env a Pod that has not finished uses is
/// kept however old its last use, and removed once that Pod is done; when the Pods cannot be
/// listed, nothing is removed. The Pods come from the local API server of the tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_never_removes_an_env_a_running_pod_uses() {
    let fx = Fixture::new();
    let vols = Volumes::new();
    let pod = fx.mutate(&fx.pod("", "nixuvdep"));
    init_ok(&pod, &vols);
    let id = pod["metadata"]["annotations"]["nixuv.io/env"].as_str().unwrap().to_string();
    let uv = vols.path("nixuv-uv");
    last_used_a_month_ago(&uv, &id);
    let api: common::kubeapi::Shared = Default::default();
    let addr = common::kubeapi::start(api.clone()).await;
    let kc = common::kubeapi::kubeconfig(vols.dir.path(), addr, "gc");
    let mut running = pod.clone();
    running["metadata"]["name"] = json!("long-runner");
    running["metadata"]["namespace"] = json!("team-a");
    running["status"] = json!({"phase": "Running"});
    api.lock().unwrap().put("/api/v1/namespaces/team-a/pods", running.clone());
    let gc = |kubeconfig: std::path::PathBuf| {
        let scratch = vols.dir.path().join(format!("gc-{}", common_nonce()));
        let mut cmd = gc_in_pod(&vols, &scratch);
        cmd.args(["--", common::bin(), "gc", "--max-age", "7d", "--no-prune"])
            .env("HOME", "/nixuv/work")
            .env("KUBECONFIG", kubeconfig)
            .env("NIXUV_GC_PODS_NAMESPACE", "team-a");
        cmd
    };
    let marker = uv.join(format!(".nixuv/envs/{id}.json"));
    let run =
        |mut cmd: Command| async move { tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap() };
    let out = run(gc(kc.clone())).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(marker.exists(), "the env of a running Pod was removed: {}", text(&out));
    assert!(text(&out).contains(&id) && text(&out).contains("in_use"), "{}", text(&out));
    // The API cannot be asked: nothing is removed, and gc says why.
    let nowhere = common::kubeapi::kubeconfig(vols.dir.path(), "127.0.0.1:1".parse().unwrap(), "nowhere");
    let out = run(gc(nowhere)).await;
    assert!(!out.status.success());
    assert!(text(&out).contains("nothing removed"), "{}", text(&out));
    assert!(marker.exists());
    // The Pod finished: the env goes.
    running["status"]["phase"] = json!("Succeeded");
    api.lock().unwrap().put("/api/v1/namespaces/team-a/pods", running);
    let out = run(gc(kc)).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(!marker.exists(), "{}", text(&out));
}
