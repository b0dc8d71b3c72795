//! `caBundle`: a private CA from a ConfigMap, end to end. The index serves HTTPS with a
//! certificate from a CA made here (as a mirror behind a corporate CA, or a TLS-intercepting
//! proxy, does); the webhook's output mounts the ConfigMap's key into nixuv-init; the real uv
//! trusts it through what materialize hands on, and nothing but what the webhook declared
//! reaches the tools (the init image's own variables included: no warning on every build).

use std::path::Path;

use serde_json::{json, Value};

use crate::common;
use crate::materialize::{app_stdout, run_init, text, Fixture, JsonIndex, Volumes};

/// The `ENV` variables of the init image's final stage, as the container runtime sets them.
fn init_image_env() -> Vec<(String, String)> {
    let df =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/images/Dockerfile.init")).unwrap();
    let last = &df[df.rfind("\nFROM ").unwrap()..];
    let mut vars = Vec::new();
    let mut in_env = false;
    for line in last.lines() {
        let body = match line.strip_prefix("ENV ") {
            Some(b) => b,
            None if in_env => line.trim(),
            None => continue,
        };
        in_env = body.ends_with('\\');
        let (k, v) = body.trim_end_matches('\\').trim().split_once('=').unwrap();
        vars.push((k.to_string(), v.to_string()));
    }
    assert!(vars.iter().any(|(k, _)| k == "NIXUV_UV"), "{vars:?}");
    vars
}

/// A CA made here (`ca.crt` in the directory), and the test index serving HTTPS on 127.0.0.1
/// with a certificate it signed, logging each request's path to `requests.log` beside it.
fn https_index() -> (tempfile::TempDir, JsonIndex) {
    let certs = tempfile::tempdir().unwrap();
    common::make_certs(certs.path());
    let tls = format!("{}:{}", certs.path().join("tls.crt").display(), certs.path().join("tls.key").display());
    let log = certs.path().join("requests.log");
    let index =
        JsonIndex::start_with(&[("NIXUV_TEST_INDEX_TLS", &tls), ("NIXUV_TEST_INDEX_LOG", log.to_str().unwrap())]);
    (certs, index)
}

#[test]
fn a_private_ca_from_a_configmap_is_trusted_by_uv() {
    let fx = Fixture::new();
    let (certs, index) = https_index();
    std::fs::write(
        &fx.config,
        format!(
            "storage: {{mode: pvc}}\ncaBundle: {{configMap: corp-ca, key: ca.pem}}\ninitEnv:\n\
             - {{name: UV_DEFAULT_INDEX, value: 'https://127.0.0.1:{}/simple'}}\n\
             - {{name: UV_PYTHON_DOWNLOADS, value: never}}\n- {{name: UV_PYTHON_PREFERENCE, value: only-system}}\n",
            index.port
        ),
    )
    .unwrap();
    let pod = fx.mutate(&fx.pod("", "nixuvdep"));
    let typed = common::as_pod(&pod);
    let spec = typed.spec.as_ref().unwrap();
    let init = &spec.init_containers.as_ref().unwrap()[0];
    assert_eq!(common::pss::restricted_violations(&typed, init), Vec::<String>::new());
    let vol = pod["spec"]["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "nixuv-ca").unwrap();
    assert_eq!(vol["configMap"], json!({"name": "corp-ca", "items": [{"key": "ca.pem", "path": "ca.crt"}]}));
    let mount = init.volume_mounts.as_ref().unwrap().iter().find(|m| m.name == "nixuv-ca").unwrap();
    assert_eq!((mount.mount_path.as_str(), mount.read_only), ("/nixuv/ca", Some(true)));
    assert_eq!(common::env_of(init, "NIXUV_CA_BUNDLE"), Some("corp-ca/ca.pem"));
    // The app containers never see it.
    assert!(pod["spec"]["containers"][0]["volumeMounts"].as_array().unwrap().iter().all(|m| m["name"] != "nixuv-ca"));

    let vols = Volumes::new();
    let ca_dir = vols.path("nixuv-ca");
    std::fs::create_dir_all(&ca_dir).unwrap();
    // The init image's variables, but for where its tools are (the test's own are used).
    let image_env = init_image_env();
    for (k, _) in &image_env {
        assert!(nixuv::toolenv::tool_scope(k).is_none(), "the init image sets tool variable {k}");
    }
    let extra: Vec<(&str, &str)> = image_env
        .iter()
        .filter(|(k, _)| !["NIXUV_UV", "NIXUV_NIX_PORTABLE"].contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let run = |label: &str| {
        let out = run_init(&pod, &vols, &extra);
        (out.status.success(), format!("{label}:\n{}", text(&out)))
    };
    // Another CA: uv does not trust the index, and says so.
    let other = tempfile::tempdir().unwrap();
    common::make_certs(other.path());
    std::fs::copy(other.path().join("ca.crt"), ca_dir.join("ca.crt")).unwrap();
    let (ok, log) = run("another CA");
    assert!(!ok, "{log}");
    assert!(log.contains("invalid peer certificate"), "{log}");
    // Not certificates: refused before any tool runs, naming the ConfigMap and key.
    std::fs::write(ca_dir.join("ca.crt"), "not a certificate\n").unwrap();
    let (ok, log) = run("garbage");
    assert!(!ok && log.contains("caBundle corp-ca/ca.pem") && log.contains("no PEM certificate"), "{log}");
    // The CA that signed the index: built, and the app imports what uv fetched over HTTPS.
    std::fs::copy(certs.path().join("ca.crt"), ca_dir.join("ca.crt")).unwrap();
    let (ok, log) = run("the right CA");
    assert!(ok, "{log}");
    assert!(log.contains("caBundle: uv and nix trust its certificates"), "{log}");
    // The init image's own variables are not tool variables: nothing is stripped with a warning.
    assert!(!log.contains("not declared by the webhook"), "{log}");
    assert_eq!(app_stdout(&pod, &vols, "python -c 'import nixuvdep; print(nixuvdep.BASE)'"), "99\n");
    // The combined bundle lived in the init container's scratch space only for the build.
    let leftovers: Vec<_> = crate::materialize::walk(vols.dir.path())
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("nixuv-ca-")))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Re-injection follows the config: a Pod made from an earlier injection gains the CA volume when
/// `caBundle` is set, and loses it (nothing would mount it, and a missing ConfigMap would keep
/// the Pod from starting) when it is removed.
#[test]
fn reinjection_adds_and_removes_the_ca_volume() {
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "labels": {"nixuv.io/inject": "true"}, "annotations": {"nixuv.io/python-deps": "six"}},
        "spec": {"containers": [{"name": "app", "image": "python:3.12"}], "volumes": [{"name": "data", "emptyDir": {}}]}});
    let names = |p: &Value| -> Vec<String> {
        p["spec"]["volumes"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap().to_string()).collect()
    };
    let preview = common::preview_json;
    let plain = preview("", &pod);
    // Preview says where the ConfigMap must be.
    let dir = tempfile::tempdir().unwrap();
    let (cfg, f) = (dir.path().join("c.yaml"), dir.path().join("pod.json"));
    std::fs::write(&cfg, "caBundle: {configMap: corp-ca, key: ca.pem}\n").unwrap();
    std::fs::write(&f, pod.to_string()).unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["preview", "--config"])
        .arg(&cfg)
        .arg("-f")
        .arg(&f)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            r#"mounts key "ca.pem" of ConfigMap "corp-ca" (caBundle): the ConfigMap must exist in the Pod's namespace"#
        ),
        "{err}"
    );
    assert!(!names(&plain).contains(&"nixuv-ca".to_string()));
    let with_ca = preview("caBundle: {configMap: corp-ca, key: ca.pem}\n", &plain);
    assert_ne!(with_ca["metadata"]["annotations"]["nixuv.io/env"], plain["metadata"]["annotations"]["nixuv.io/env"]);
    assert_eq!(names(&with_ca), ["data", "nixuv-nix", "nixuv-uv", "nixuv-tmp", "nixuv-ca"]);
    let again = preview("", &with_ca);
    assert_eq!(names(&again), ["data", "nixuv-nix", "nixuv-uv", "nixuv-tmp"]);
    assert_eq!(again["metadata"]["annotations"]["nixuv.io/env"], plain["metadata"]["annotations"]["nixuv.io/env"]);
    assert_eq!(again["spec"]["initContainers"], plain["spec"]["initContainers"]);
}

/// nix gets the bundle too: a binary cache served over HTTPS under the private CA is asked for
/// what the build needs (its requests reach the server) when the CA is mounted, and not reached
/// (the TLS handshake fails) with another CA. Real nix, through the nix-portable stand-in.
#[test]
fn the_ca_bundle_reaches_nix() {
    let fx = Fixture::new();
    let (certs, cache) = https_index();
    let requests = certs.path().join("requests.log");
    let flake = fx.dir.path().join("flake");
    std::fs::write(
        &fx.config,
        format!(
            "nixpkgs: path:{}\nstorage: {{mode: pvc}}\ncaBundle: {{configMap: corp-ca, key: ca.pem}}\ninitEnv:\n\
             - {{name: NIX_CONFIG, value: \"substituters = https://127.0.0.1:{}\\nbuild-users-group =\"}}\n",
            flake.display(),
            cache.port
        ),
    )
    .unwrap();
    let pod = fx.mutate(&fx.pod("hello-nixuv", ""));
    let vols = Volumes::new();
    let ca_dir = vols.path("nixuv-ca");
    std::fs::create_dir_all(&ca_dir).unwrap();
    let asked = || std::fs::read_to_string(&requests).unwrap_or_default();
    // Another CA: the build goes on without the cache (nix builds the tiny derivation itself), and
    // no request got past the handshake.
    let other = tempfile::tempdir().unwrap();
    common::make_certs(other.path());
    std::fs::copy(other.path().join("ca.crt"), ca_dir.join("ca.crt")).unwrap();
    let out = run_init(&pod, &vols, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(asked(), "", "{}", text(&out));
    // The CA that signed the cache: nix's requests reach it. A fresh store, so nix asks again.
    let vols = Volumes::new();
    std::fs::create_dir_all(vols.path("nixuv-ca")).unwrap();
    std::fs::copy(certs.path().join("ca.crt"), vols.path("nixuv-ca").join("ca.crt")).unwrap();
    let out = run_init(&pod, &vols, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(asked().contains("/nix-cache-info"), "requests: {:?}\n{}", asked(), text(&out));
    assert_eq!(app_stdout(&pod, &vols, "hello-nixuv"), "hello from nixuv\n");
}
