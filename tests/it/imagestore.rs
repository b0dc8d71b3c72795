//! The image store, on real parts: `nixuv publish` builds envs with real nix (through the
//! nix-portable stand-in) and real uv, and pushes them to a real registry (Debian's
//! `docker-registry`, the CNCF distribution registry, on loopback). The images are then pulled
//! and unpacked by independent tools (`skopeo`, `umoci`) the way a kubelet would, mounted
//! read-only where the webhook's image volume puts them (its `subPath`s), and the app runs
//! there with the machine's Python hidden. Needs root for mount namespaces (CI runs as root).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common;
use crate::materialize::{in_pod, support, text, Fixture, Volumes};

/// A distribution registry on a free loopback port, its storage in a temporary directory.
pub struct Registry {
    pub addr: String,
    child: Child,
    /// The registry's storage, removed with it.
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (Debian package docker-registry; make test installs it)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "the registry did not start on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry { addr, child, _dir: dir }
    }

    pub fn repository(&self) -> String {
        format!("{}/nixuv/envs", self.addr)
    }

    /// The manifest of `reference` (by tag or digest), as skopeo reads it.
    pub fn manifest(&self, reference: &str) -> Value {
        let out = Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "skopeo inspect: {}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Pulls `reference` with skopeo and unpacks it with umoci, as a kubelet would; the rootfs.
    pub fn unpack(&self, reference: &str, into: &Path) -> PathBuf {
        let layout = into.join("layout");
        let out = Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .arg(format!("oci:{}:env", layout.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "skopeo copy: {}", text(&out));
        let rootfs = into.join("rootfs");
        let out = Command::new("umoci")
            .args(["raw", "unpack", "--image"])
            .arg(format!("{}:env", layout.display()))
            .arg(&rootfs)
            .output()
            .unwrap();
        assert!(out.status.success(), "umoci raw unpack: {}", text(&out));
        rootfs
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `nixuv publish` as the builder's Job runs it: the init container's command and env (from
/// the webhook's output for `pod`), its volumes private and fresh.
pub fn publish(pod: &Value, repository: &str, extra: &[&str]) -> (Output, Option<Value>) {
    let init = &pod["spec"]["initContainers"][0];
    let vols = Volumes::new();
    let scratch = vols.dir.path().join("tmp");
    let termination = vols.dir.path().join("termination-log");
    let mut cmd = in_pod(init, &vols, &scratch);
    cmd.args(["--", common::bin(), "publish", "--repository", repository, "--insecure"]).args(extra);
    let env: Vec<(String, String)> = init["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e["value"].as_str().unwrap_or("").to_string()))
        .collect();
    cmd.env_clear()
        .envs(env)
        .env("PATH", std::env::var("PATH").unwrap())
        .env("NIXUV_NIX_PORTABLE", support("nix-portable"))
        .env("NIXUV_UV", support("uv"))
        .env("NIXUV_TERMINATION_LOG", &termination);
    let out = cmd.output().unwrap();
    let message = std::fs::read(&termination).ok().map(|b| serde_json::from_slice(&b).unwrap());
    (out, message)
}

/// The digest `nixuv publish` printed last.
pub fn digest_of(out: &Output) -> String {
    assert!(out.status.success(), "nixuv publish failed:\n{}", text(out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("").to_string();
    assert!(last.starts_with("sha256:") && last.len() == 71, "last line is not a digest: {stdout}");
    last
}

/// `in-pod` for `container` with its image-volume mounts taken from `rootfs` (each mount's
/// `subPath` of the image) and everything else as [`in_pod`] would.
pub fn run_in_image(container: &Value, rootfs: &Path, script: &str) -> Output {
    let mut cmd = Command::new(support("in-pod"));
    for m in container["volumeMounts"].as_array().unwrap() {
        assert_eq!(m["name"], "nixuv-env", "only the env image is mounted: {m}");
        assert_eq!(m["readOnly"], true);
        let src = rootfs.join(m["subPath"].as_str().unwrap());
        cmd.arg("--mount").arg(format!("{}:{}:ro", src.display(), m["mountPath"].as_str().unwrap()));
    }
    let env: Vec<(String, String)> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e["value"].as_str().unwrap_or("").to_string()))
        .collect();
    cmd.arg("--hide-python").args(["--", "/bin/sh", "-c", script]).env_clear().envs(env);
    cmd.output().unwrap()
}

/// The layer digests of a manifest by title.
fn layers_by_title(manifest: &Value) -> std::collections::BTreeMap<String, String> {
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["annotations"]["org.opencontainers.image.title"].as_str().unwrap().to_string(),
                l["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The app container an image-mode Pod gets, as the webhook writes it (checked against its
/// output in the webhook's own test).
fn image_app(id: &str, digest_ref: &str) -> Value {
    let _ = digest_ref;
    json!({"name": "app", "image": "debian:bookworm-slim",
           "volumeMounts": [
               {"name": "nixuv-env", "mountPath": "/nix", "subPath": "nix", "readOnly": true},
               {"name": "nixuv-env", "mountPath": "/nixuv/uv", "subPath": "uv", "readOnly": true}],
           "env": [
               {"name": "PATH", "value": format!("/nix/var/nix/profiles/nixuv/{id}/bin:/nixuv/uv/envs/{id}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")},
               {"name": "VIRTUAL_ENV", "value": format!("/nixuv/uv/envs/{id}")}]})
}

#[test]
fn published_envs_run_from_the_pulled_image_and_share_layers() {
    let reg = Registry::start();
    let fx = Fixture::with_managed_python();
    let pod = fx.mutate(&fx.pod("hello-nixuv tools.greet", "nixuvdemo==1.0"));
    let id = pod["metadata"]["annotations"]["nixuv.io/env"].as_str().unwrap().to_string();
    let (out, message) = publish(&pod, &reg.repository(), &[]);
    let digest = digest_of(&out);
    let message = message.expect("a termination message");
    assert_eq!(message["digest"], digest.as_str());
    assert!(message["sizeBytes"].as_u64().unwrap() > 1000);
    assert!(message["lock"]["python"].as_array().unwrap().iter().any(|d| d["name"] == "nixuvdemo"), "{message}");
    // Tagged with the env id, by the same manifest.
    let tagged = reg.manifest(&format!("{}:{id}", reg.repository()));
    let by_digest = reg.manifest(&format!("{}@{digest}", reg.repository()));
    assert_eq!(tagged, by_digest);
    assert_eq!(by_digest["annotations"]["io.nixuv.env"], id.as_str());
    let sbom: Value = serde_json::from_str(by_digest["annotations"]["io.nixuv.sbom"].as_str().unwrap()).unwrap();
    assert_eq!(sbom["bomFormat"], "CycloneDX");
    assert!(sbom["components"].as_array().unwrap().iter().any(|c| c["purl"] == "pkg:pypi/nixuvdemo@1.0"), "{sbom}");
    let titles = layers_by_title(&by_digest);
    assert!(titles.keys().any(|t| t.ends_with("-hello-nixuv")), "a layer per store path: {titles:?}");
    assert!(titles.contains_key("python interpreters") && titles.contains_key(&format!("venv {id}")), "{titles:?}");

    // Pulled and unpacked as a kubelet would; run read-only at the Pod's paths, no host Python.
    let work = tempfile::tempdir().unwrap();
    let rootfs = reg.unpack(&format!("{}@{digest}", reg.repository()), work.path());
    let app = image_app(&id, &format!("{}@{digest}", reg.repository()));
    let run = run_in_image(
        &app,
        &rootfs,
        "hello-nixuv && greet && nixuvdemo && python -c 'import nixuvdemo, sys; print(nixuvdemo.VALUE, sys.prefix)'",
    );
    assert!(run.status.success(), "{}", text(&run));
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        format!("hello from nixuv\ngreetings\nnixuvdemo 42\n42 /nixuv/uv/envs/{id}\n")
    );
    // Bytecode is there, checked by hash (valid whatever times the image's files carry).
    let pycs: Vec<PathBuf> = crate::materialize::walk(&rootfs.join("uv/envs"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "pyc") && p.to_string_lossy().contains("nixuvdemo"))
        .collect();
    assert!(!pycs.is_empty(), "no bytecode for nixuvdemo in the image");
    for p in &pycs {
        let b = std::fs::read(p).unwrap();
        let flags = u32::from_le_bytes(b[4..8].try_into().unwrap());
        assert_eq!(flags & 1, 1, "{}: timestamp-based bytecode would be stale in the image", p.display());
    }
    // Read-only, as the image volume is.
    let ro = run_in_image(&app, &rootfs, "touch /nixuv/uv/x 2>/dev/null || echo read-only");
    assert_eq!(String::from_utf8_lossy(&ro.stdout), "read-only\n");

    // A second env sharing the nix path and the interpreter shares those layers.
    let pod2 = fx.mutate(&fx.pod("hello-nixuv", "nixuvdep"));
    let id2 = pod2["metadata"]["annotations"]["nixuv.io/env"].as_str().unwrap().to_string();
    assert_ne!(id, id2);
    let (out2, _) = publish(&pod2, &reg.repository(), &[]);
    let digest2 = digest_of(&out2);
    let titles2 = layers_by_title(&reg.manifest(&format!("{}@{digest2}", reg.repository())));
    let hello = titles.keys().find(|t| t.ends_with("-hello-nixuv")).unwrap();
    assert_eq!(titles.get(hello), titles2.get(hello), "the shared store path's layer");
    assert_eq!(titles["python interpreters"], titles2["python interpreters"], "the shared interpreter's layer");
    assert!(!titles2.keys().any(|t| t.ends_with("-greet")), "only the env's own closure: {titles2:?}");
    assert!(text(&out2).contains("reused"), "{}", text(&out2));
}

#[test]
fn a_failed_build_says_why_in_the_termination_message() {
    let reg = Registry::start();
    let fx = Fixture::with_managed_python();
    let pod = fx.mutate(&fx.pod("", "no-such-package-nixuv"));
    let (out, message) = publish(&pod, &reg.repository(), &[]);
    assert!(!out.status.success());
    let message = message.expect("a termination message");
    let err = message["error"].as_str().unwrap();
    assert!(err.contains("no-such-package-nixuv"), "{err}");
    // Nothing was pushed.
    let id = pod["metadata"]["annotations"]["nixuv.io/env"].as_str().unwrap();
    let probe = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{}:{id}", reg.repository()))
        .output()
        .unwrap();
    assert!(!probe.status.success(), "a failed build pushed a tag");
}
