//! Start-up, certificate rotation, config reload and SIGTERM drain of the real binary.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{self, post_json, Server};

#[test]
fn bad_config_fails_at_startup_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    common::make_certs(dir.path());
    for (yaml, key) in [
        ("storage:\n  mode: nfs\n", "nfs"),
        ("maxDepz: 3\n", "maxDepz"),
        ("initResources: {requests: {cpu: 1}, limits: {cpu: 1, memory: 1Gi}}", "initResources.requests.memory"),
    ] {
        let cfg = dir.path().join("config.yaml");
        std::fs::write(&cfg, yaml).unwrap();
        let out = Command::new(common::bin())
            .args(["serve", "--addr", "127.0.0.1:0", "--config"])
            .arg(&cfg)
            .arg("--tls-cert")
            .arg(dir.path().join("tls.crt"))
            .arg("--tls-key")
            .arg(dir.path().join("tls.key"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{yaml}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{yaml}: stderr does not name {key:?}: {err}");
    }
    // A missing key file fails fast too, naming the file.
    let out = Command::new(common::bin())
        .args(["serve", "--addr", "127.0.0.1:0", "--tls-cert"])
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("missing.key"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.key"));
}

#[test]
fn certs_files_and_modes() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(common::bin())
        .args(["certs", "--out-dir"])
        .arg(dir.path().join("sub"))
        .args([
            "--dns-name",
            "nixuv.nixuv-system.svc",
            "--dns-name",
            "nixuv.nixuv-system.svc.cluster.local",
            "--ip",
            "10.0.0.1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let bundle = String::from_utf8(out.stdout).unwrap();
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.decode(bundle.trim()).unwrap();
    assert_eq!(ca, std::fs::read(dir.path().join("sub/ca.crt")).unwrap(), "stdout is base64 of ca.crt");
    let mode = std::fs::metadata(dir.path().join("sub/tls.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let key = std::fs::read_to_string(dir.path().join("sub/tls.key")).unwrap();
    assert!(key.contains("BEGIN PRIVATE KEY"));
    let bad =
        Command::new(common::bin()).args(["certs", "--out-dir", "/tmp/x", "--dns-name", "bad name"]).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("bad name"));
}

/// Lays out a directory the way kubelet projects a Secret: `..data` -> a timestamped dir, and
/// `tls.crt` / `tls.key` / `ca.crt` -> `..data/<file>`.
fn kubelet_layout(root: &Path, generation: &str) {
    let gen_dir = root.join(generation);
    common::make_certs(&gen_dir);
    let tmp = root.join("..data_tmp");
    symlink(generation, &tmp).unwrap();
    std::fs::rename(&tmp, root.join("..data")).unwrap();
    for f in ["tls.crt", "tls.key", "ca.crt"] {
        let link = root.join(f);
        if link.symlink_metadata().is_err() {
            symlink(format!("..data/{f}"), &link).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_by_symlink_swap_without_failed_requests() {
    let secret = tempfile::tempdir().unwrap();
    kubelet_layout(secret.path(), "..2026_11_25_00_00_00.1");
    let old_ca = std::fs::read(secret.path().join("ca.crt")).unwrap();
    let server = Arc::new(Server::builder().cert_dir(secret.path()).arg("--reload-interval").arg("100ms").start());
    // The next generation is prepared before the swap, like kubelet does.
    let next = "..2026_11_25_01_00_00.2";
    common::make_certs(&secret.path().join(next));
    let new_ca = std::fs::read(secret.path().join(next).join("ca.crt")).unwrap();
    let both: Vec<u8> = [old_ca.clone(), new_ca.clone()].concat();

    let review = common::fixture("reviews/bare-pod.json");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (server, stop, ok, failed, review, both) =
            (server.clone(), stop.clone(), ok.clone(), failed.clone(), review.clone(), both.clone());
        workers.push(tokio::spawn(async move {
            // Half the workers reuse a connection, half open a new one per request.
            let pooled = server.h1();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 5000 {
                n += 1;
                let client = if w % 2 == 0 { pooled.clone() } else { server.fresh_client(&both) };
                match client.post(server.url("/mutate")).json(&review).send().await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The swap: one atomic rename of `..data`.
    let tmp = secret.path().join("..data_tmp");
    symlink(next, &tmp).unwrap();
    std::fs::rename(&tmp, secret.path().join("..data")).unwrap();
    // New connections present the new certificate soon: a client trusting only the new CA
    // gets through within a few reload intervals.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if server.fresh_client(&new_ca).get(server.url("/healthz")).send().await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "new certificate never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    // A client that trusts only the old CA is now refused.
    assert!(server.fresh_client(&old_ca).get(server.url("/healthz")).send().await.is_err());
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("rotation: {ok} requests succeeded, {failed} failed");
    assert!(ok > 50, "too few requests to mean anything: {ok}");
    assert_eq!(failed, 0);
    server.log_line("serving certificate reloaded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_config_reload_keeps_the_old_config() {
    let mut server =
        Server::builder().config("policy: {python: {deny: ['numpy']}}\n").arg("--reload-interval").arg("100ms").start();
    let cfg = server.dir.path().join("config.yaml");
    let review = common::fixture("reviews/bare-pod.json");
    let client = server.h1();
    let denied = |v: &Value| v["response"]["allowed"] == false;
    assert!(denied(&post_json(&client, &server.url("/mutate"), &review).await.1));
    std::fs::write(&cfg, "policy: {python: {deny: ['numpy']}}\nbogusKey: 1\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.logs().iter().any(|l| l.contains("config reload failed") && l.contains("bogusKey")) {
        assert!(Instant::now() < deadline, "reload failure not logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(denied(&post_json(&client, &server.url("/mutate"), &review).await.1), "old config still in force");
    std::fs::write(&cfg, "policy: {python: {deny: []}}\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while denied(&post_json(&client, &server.url("/mutate"), &review).await.1) {
        assert!(Instant::now() < deadline, "valid config never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.signal("TERM");
    assert!(server.wait(Duration::from_secs(10)).success());
}

/// Opens a raw TLS connection (HTTP/1.1) trusting the server's CA.
pub async fn raw_tls(server: &Server) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    raw_tls_alpn(server, b"http/1.1").await
}

/// A TLS connection offering only `alpn`, nothing sent on it yet.
pub async fn raw_tls_alpn(server: &Server, alpn: &[u8]) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    raw_tls_from(server, alpn, None).await
}

/// [`raw_tls_alpn`] from the loopback address `from` (any 127.x.y.z: another client address).
pub async fn raw_tls_from(
    server: &Server,
    alpn: &[u8],
    from: Option<std::net::IpAddr>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(&server.ca) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let tcp = match from {
        None => tokio::net::TcpStream::connect(server.addr).await.unwrap(),
        Some(ip) => {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind(std::net::SocketAddr::new(ip, 0)).unwrap();
            s.connect(server.addr).await.unwrap()
        }
    };
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let mut server = Server::builder().arg("--shutdown-delay").arg("300ms").start();
    let body = serde_json::to_vec(&common::fixture("reviews/bare-pod.json")).unwrap();
    // An in-flight request: headers and half the body sent before SIGTERM.
    let mut conn = raw_tls(&server).await;
    let head = format!(
        "POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body[..body.len() / 2]).await.unwrap();
    conn.flush().await.unwrap();
    // An idle keep-alive HTTP/2 connection, which the server must close.
    let h2 = server.h2();
    assert_eq!(h2.get(server.url("/healthz")).send().await.unwrap().status(), 200);
    server.signal("TERM");
    // During the shutdown delay readiness fails but requests are still served.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = server.h1().get(server.url("/readyz")).send().await.unwrap();
        if r.status() == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "readyz never failed");
    }
    conn.write_all(&body[body.len() / 2..]).await.unwrap();
    conn.flush().await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut resp))
        .await
        .expect("server closed the connection")
        .ok();
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 200"), "in-flight request failed: {text}");
    assert!(text.contains("\"allowed\":true"));
    let status = server.wait(Duration::from_secs(15));
    assert!(status.success(), "exit status {status:?}");
    let logs = server.logs().join("\n");
    assert!(logs.contains("draining") && logs.contains("drained; exiting"), "{logs}");
}

async fn expiry(server: &Server, which: &str) -> Option<f64> {
    let text =
        reqwest::get(format!("http://{}/metrics", server.metrics_addr.unwrap())).await.ok()?.text().await.ok()?;
    let name = format!("nixuv_certificate_expiry_seconds{{certificate=\"{which}\"}}");
    text.lines().find(|l| l.starts_with(&name))?.split_whitespace().last()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_expiry_gauges_follow_rotation() {
    let dir = tempfile::tempdir().unwrap();
    common::make_certs(dir.path());
    let server =
        Server::builder().cert_dir(dir.path()).arg("--reload-interval").arg("200ms").separate_metrics().start();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let day = 86400.0;
    let deadline = Instant::now() + Duration::from_secs(10);
    let serving = loop {
        if let Some(e) = expiry(&server, "serving").await {
            break e;
        }
        assert!(Instant::now() < deadline, "no expiry gauge");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!((serving - (now + 365.0 * day)).abs() < 2.0 * day, "serving expiry {serving} vs now {now}");
    let ca = expiry(&server, "ca").await.expect("the CA's expiry (ca.crt beside tls.crt)");
    assert!((ca - (now + 5.0 * 365.0 * day)).abs() < 2.0 * day, "ca expiry {ca}");
    // Rotate to a 30-day certificate: the gauge follows on the next reload.
    let out = Command::new(common::bin())
        .args(["certs", "--valid-days", "30", "--out-dir"])
        .arg(dir.path())
        .args(["--dns-name", "localhost", "--ip", "127.0.0.1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let e = expiry(&server, "serving").await.unwrap();
        if (e - (now + 30.0 * day)).abs() < 2.0 * day {
            break;
        }
        assert!(Instant::now() < deadline, "gauge did not follow the rotation: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Logs are plain text when they do not go to a terminal (`kubectl logs`, files): no ANSI colour
/// escapes, in any subcommand.
#[test]
fn logs_to_a_pipe_have_no_colour_escapes() {
    let dir = tempfile::tempdir().unwrap();
    let runs: [&[&str]; 2] =
        [&["gc", "--uv-root", "/nonexistent/uv", "--nix-dir", "/nonexistent/nix"], &["materialize"]];
    for args in runs {
        let out =
            Command::new(common::bin()).args(args).env("NIXUV_LOG", "debug").current_dir(dir.path()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.is_empty(), "{args:?} logged nothing");
        assert!(!stderr.contains('\u{1b}'), "{args:?}: colour escapes in {stderr:?}");
    }
}
