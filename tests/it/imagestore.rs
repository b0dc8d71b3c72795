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
use crate::materialize::{env_map, in_pod, support, text, Fixture, Volumes};

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
    let env = env_map(init);
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
    let env = env_map(container);
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
        "hello-nixuv && greet && nixuvdemo && python -c 'import nixuvdemo, sys, platform; print(nixuvdemo.VALUE, sys.prefix, platform.python_version())'",
    );
    assert!(run.status.success(), "{}", text(&run));
    // The lock names the interpreter by its full version, the one that runs.
    let full = message["lock"]["interpreter"]["version"].as_str().unwrap();
    assert_eq!(full.split('.').count(), 3, "{full}");
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        format!("hello from nixuv\ngreetings\nnixuvdemo 42\n42 /nixuv/uv/envs/{id} {full}\n")
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

/// Runs the Job's one container as a kubelet would (its command, env and mounts, each volume a
/// fresh directory), with the init image's tools; returns its output and termination message.
fn run_job(job: &Value) -> (Output, String) {
    let c = &job["spec"]["template"]["spec"]["containers"][0];
    let vols = Volumes::new();
    let scratch = vols.dir.path().join("tmp");
    let termination = vols.dir.path().join("termination-log");
    let mut cmd = in_pod(c, &vols, &scratch);
    cmd.arg("--");
    for a in c["command"].as_array().unwrap() {
        cmd.arg(a.as_str().unwrap());
    }
    let env = env_map(c);
    let bin_dir = Path::new(common::bin()).parent().unwrap();
    cmd.env_clear()
        .envs(env)
        .env("PATH", format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap()))
        .env("NIXUV_NIX_PORTABLE", support("nix-portable"))
        .env("NIXUV_UV", support("uv"))
        .env("NIXUV_TERMINATION_LOG", &termination);
    let out = cmd.output().unwrap();
    (out, std::fs::read_to_string(&termination).unwrap_or_default())
}

/// What the Job controller and the kubelet write when the Job's Pod ends.
fn finish_job(api: &common::kubeapi::Shared, job: &Value, exit_code: i32, message: &str) {
    let name = job["metadata"]["name"].as_str().unwrap();
    let ns = job["metadata"]["namespace"].as_str().unwrap();
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{name}-x1"), "namespace": ns, "labels": {"job-name": name}},
        "status": {"containerStatuses": [{"name": "publish", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
            "state": {"terminated": {"exitCode": exit_code, "message": message, "finishedAt": "2026-12-03T00:00:00Z"}}}]}});
    let mut f = api.lock().unwrap();
    f.put(&format!("/api/v1/namespaces/{ns}/pods"), pod);
    let mut j = job.clone();
    j["status"] = if exit_code == 0 {
        json!({"succeeded": 1})
    } else {
        json!({"failed": 4, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]})
    };
    f.put(&format!("/apis/batch/v1/namespaces/{ns}/jobs"), j);
}

const ENVS: &str = "/apis/nixuv.io/v1alpha1/nixuvenvs";
const JOBS: &str = "/apis/batch/v1/namespaces/nixuv-system/jobs";

async fn eventually<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn review(pod: &Value, uid: &str, dry_run: bool) -> Value {
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
           "request": {"uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
                       "resource": {"group": "", "version": "v1", "resource": "pods"},
                       "namespace": "team-a", "operation": "CREATE", "dryRun": dry_run,
                       "userInfo": {"username": "u"}, "object": pod}})
}

async fn admit(server: &common::Server, pod: &Value, uid: &str, dry_run: bool) -> Value {
    let (status, resp) = common::post_json(&server.h2(), &server.url("/mutate"), &review(pod, uid, dry_run)).await;
    assert_eq!(status, 200);
    assert_eq!(resp["response"]["allowed"], true, "{resp}");
    common::apply(pod, &common::response_patch(&resp).expect("a patch"))
}

/// The whole image store against the local API server (see `common::kubeapi`): the webhook
/// falls back and requests the env (not on a dry run), the leader's builder turns the
/// `NixuvEnv` into a Job, the Job runs here as written (`nixuv publish`, real nix and uv, a real
/// registry), its termination message becomes the status, and the next Pod gets the image
/// volume, pulled and unpacked by skopeo and umoci and run read-only. A failed build is Failed
/// with uv's message, and its Pods keep the fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_the_image_once_the_builder_published_it() {
    let reg = Registry::start();
    let fx = Fixture::with_managed_python();
    let api: common::kubeapi::Shared = Default::default();
    let addr = common::kubeapi::start(api.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let kc = common::kubeapi::kubeconfig(dir.path(), addr, "webhook");
    let config = format!(
        "{}namespace: nixuv-system\nimageStore: {{repository: {}, insecure: true, pullSecret: envs-pull}}\n",
        std::fs::read_to_string(&fx.config).unwrap(),
        reg.repository()
    );
    let server = common::Server::builder().config(&config).env("KUBECONFIG", kc.to_str().unwrap()).start();
    let pod = fx.pod("hello-nixuv tools.greet", "nixuvdemo==1.0");

    // A dry run: today's injection, nothing requested.
    let dry = admit(&server, &pod, "u-dry", true).await;
    assert_eq!(dry["spec"]["initContainers"][0]["name"], "nixuv-init");
    let id = dry["metadata"]["annotations"]["nixuv.io/env"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(api.lock().unwrap().get(ENVS, &id).is_none(), "a dry run requested an env");

    // For real: today's injection again, and the env is requested, then built by a Job.
    let first = admit(&server, &pod, "u-1", false).await;
    assert_eq!(first["spec"]["initContainers"][0]["name"], "nixuv-init");
    let job = eventually("the builder's Job", 30, || api.lock().unwrap().get(JOBS, &format!("nixuv-build-{id}"))).await;
    let env = api.lock().unwrap().get(ENVS, &id).unwrap();
    assert_eq!(env["spec"]["python"], json!(["nixuvdemo==1.0"]));
    assert_eq!(env["status"]["phase"], "Building");
    let tpl: k8s_openapi::api::core::v1::PodTemplateSpec =
        serde_json::from_value(job["spec"]["template"].clone()).unwrap();
    let spec = tpl.spec.clone().unwrap();
    assert_eq!(spec.automount_service_account_token, Some(false));
    let as_pod = k8s_openapi::api::core::v1::Pod { spec: Some(spec.clone()), ..Default::default() };
    assert_eq!(common::pss::restricted_violations(&as_pod, &spec.containers[0]), Vec::<String>::new());
    let (out, message) = run_job(&job);
    let digest = digest_of(&out);
    finish_job(&api, &job, 0, &message);
    let image = eventually("the env to be Ready", 30, || {
        let e = api.lock().unwrap().get(ENVS, &id)?;
        (e["status"]["phase"] == "Ready").then(|| e["status"]["image"].as_str().unwrap().to_string())
    })
    .await;
    assert_eq!(image, format!("{}@{digest}", reg.repository()));
    let env = api.lock().unwrap().get(ENVS, &id).unwrap();
    assert!(env["status"]["lock"]["python"].as_array().unwrap().iter().any(|d| d["name"] == "nixuvdemo"), "{env}");
    assert!(env["status"]["size"].as_str().unwrap().ends_with("iB"), "{env}");

    // The next Pod of the env mounts the image: no init container, no claims.
    let mut n = 0;
    let got = loop {
        n += 1;
        let p = admit(&server, &pod, &format!("u-{n}"), false).await;
        if p["spec"]["initContainers"].is_null() {
            break p;
        }
        assert!(n < 100, "the webhook never saw the env Ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let vols = got["spec"]["volumes"].as_array().unwrap();
    assert_eq!(vols.len(), 1, "{vols:?}");
    assert_eq!(vols[0]["image"]["reference"], image.as_str());
    assert_eq!(got["spec"]["imagePullSecrets"], json!([{"name": "envs-pull"}]));
    let work = tempfile::tempdir().unwrap();
    let rootfs = reg.unpack(vols[0]["image"]["reference"].as_str().unwrap(), work.path());
    let run = run_in_image(&got["spec"]["containers"][0], &rootfs, "hello-nixuv && greet && nixuvdemo");
    assert!(run.status.success(), "{}", text(&run));
    assert_eq!(String::from_utf8_lossy(&run.stdout), "hello from nixuv\ngreetings\nnixuvdemo 42\n");

    // A build that fails: Failed with uv's message; its Pods keep the fallback.
    let bad = fx.pod("", "no-such-package-nixuv");
    let fell = admit(&server, &bad, "b-1", false).await;
    let bad_id = fell["metadata"]["annotations"]["nixuv.io/env"].as_str().unwrap().to_string();
    let job =
        eventually("the failing env's Job", 30, || api.lock().unwrap().get(JOBS, &format!("nixuv-build-{bad_id}")))
            .await;
    let (out, message) = run_job(&job);
    assert!(!out.status.success());
    finish_job(&api, &job, 1, &message);
    let why = eventually("the env to be Failed", 30, || {
        let e = api.lock().unwrap().get(ENVS, &bad_id)?;
        (e["status"]["phase"] == "Failed").then(|| e["status"]["message"].as_str().unwrap().to_string())
    })
    .await;
    assert!(why.contains("no-such-package-nixuv"), "{why}");
    let again = admit(&server, &bad, "b-2", false).await;
    assert_eq!(again["spec"]["initContainers"][0]["name"], "nixuv-init");
    // The builder's metrics: one build of each outcome, this replica leading.
    let metrics = server.h1().get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for line in [
        "nixuv_image_builds_total{result=\"ready\"} 1",
        "nixuv_image_builds_total{result=\"failed\"} 1",
        "nixuv_image_builder_leader 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "no {line:?} in\n{metrics}");
    }

    // `envs --cluster` lists the cluster's envs.
    let cfg_file = dir.path().join("config.yaml");
    std::fs::write(&cfg_file, &config).unwrap();
    let listed = nixuv_cmd(&kc, &["envs", "list", "--cluster"]).await;
    assert!(listed.status.success(), "{}", text(&listed));
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(
        listed.lines().any(|l| l.starts_with(&id) && l.contains("Ready") && l.contains("nixuvdemo==1.0")),
        "{listed}"
    );
    assert!(listed.lines().any(|l| l.starts_with(&bad_id) && l.contains("Failed")), "{listed}");

    // gc --registry: an env a Pod still runs with is kept however old, and marked used...
    let running = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "long-runner", "namespace": "team-a", "annotations": {"nixuv.io/env": id}},
        "status": {"phase": "Running"}});
    api.lock().unwrap().put("/api/v1/namespaces/team-a/pods", running.clone());
    let gc = |dry: bool| {
        let mut args = vec!["gc", "--registry", "--max-age", "0s", "--config", cfg_file.to_str().unwrap()];
        if dry {
            args.push("--dry-run");
        }
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let out = nixuv_cmd(&kc, &gc(false).iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(said.contains(&format!("{id} in use")) && said.contains(&format!("{bad_id} removed")), "{said}");
    assert!(api.lock().unwrap().get(ENVS, &id).unwrap()["status"]["lastUsed"].is_string());
    reg.manifest(&image);
    // ...and removed, manifest and object, once no unfinished Pod uses it.
    let mut done = running;
    done["status"]["phase"] = json!("Succeeded");
    api.lock().unwrap().put("/api/v1/namespaces/team-a/pods", done);
    let out = nixuv_cmd(&kc, &gc(false).iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{id} removed")), "{}", text(&out));
    assert!(api.lock().unwrap().get(ENVS, &id).is_none());
    let probe = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{image}"))
        .output()
        .unwrap();
    assert!(!probe.status.success(), "the manifest is still in the registry");
}

/// Runs `nixuv ARGS` against the local API server of `kubeconfig`, off the test's runtime.
async fn nixuv_cmd(kubeconfig: &Path, args: &[&str]) -> Output {
    let (kc, args): (PathBuf, Vec<String>) = (kubeconfig.to_path_buf(), args.iter().map(|a| a.to_string()).collect());
    tokio::task::spawn_blocking(move || Command::new(common::bin()).args(&args).env("KUBECONFIG", kc).output().unwrap())
        .await
        .unwrap()
}
