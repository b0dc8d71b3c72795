//! Test helpers: the real `nixuv` binary on port 0, a TLS client that trusts the generated CA,
//! fixtures, and patch application.
#![allow(dead_code)]

pub mod kubeapi;
pub mod pss;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_nixuv")
}

/// A Python that imports `module`: `.tools/NAME-venv`'s, where scripts/install-tools.sh installs
/// the optional packages. `None` (printing why, the test then skips) only when install-tools
/// recorded that it could not install them (`.tools/NAME.unavailable`: no package index); missing
/// for any other reason is a failure, not a pass.
pub fn optional_python(name: &str, module: &str) -> Option<String> {
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools");
    let candidates = [tools.join(format!("{name}-venv/bin/python")), tools.join("venv/bin/python"), "python3".into()];
    let found = candidates.iter().find(|py| {
        Command::new(py).args(["-c", &format!("import {module}")]).output().is_ok_and(|o| o.status.success())
    });
    if let Some(py) = found {
        return Some(py.display().to_string());
    }
    match std::fs::read_to_string(tools.join(format!("{name}.unavailable"))) {
        Ok(why) => {
            eprintln!("skipped: {name} could not be installed: {}", why.trim());
            None
        }
        Err(_) => panic!("{name} is not installed: run `make tools` (scripts/install-tools.sh)"),
    }
}

/// `nixuv preview -o json` of `pod` under the config `config` (YAML), from the real binary.
pub fn preview_json(config: &str, pod: &Value) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, f) = (dir.path().join("config.yaml"), dir.path().join("pod.json"));
    std::fs::write(&cfg, config).unwrap();
    std::fs::write(&f, pod.to_string()).unwrap();
    let out =
        Command::new(bin()).args(["preview", "-o", "json", "--config"]).arg(&cfg).arg("-f").arg(&f).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn fixture_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

pub fn fixture(rel: &str) -> Value {
    let text = std::fs::read_to_string(fixture_path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_json::from_str(&text).unwrap()
}

/// Runs `nixuv certs` into `dir` for localhost / 127.0.0.1.
pub fn make_certs(dir: &Path) {
    let out = Command::new(bin())
        .args(["certs", "--out-dir"])
        .arg(dir)
        .args(["--dns-name", "localhost", "--ip", "127.0.0.1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "nixuv certs failed: {}", String::from_utf8_lossy(&out.stderr));
}

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub ca: Vec<u8>,
    logs: Arc<Mutex<Vec<String>>>,
}

pub struct ServerBuilder {
    args: Vec<String>,
    env: Vec<(String, String)>,
    config: Option<String>,
    metrics: bool,
    cert_dir: Option<PathBuf>,
    stall_logs: bool,
}

impl ServerBuilder {
    /// After start-up, stop reading the server's stderr (a log pipe nobody drains).
    pub fn stall_logs(mut self) -> Self {
        self.stall_logs = true;
        self
    }
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_string());
        self
    }
    pub fn args(mut self, a: &[&str]) -> Self {
        self.args.extend(a.iter().map(|s| s.to_string()));
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }
    pub fn config(mut self, yaml: &str) -> Self {
        self.config = Some(yaml.to_string());
        self
    }
    pub fn separate_metrics(mut self) -> Self {
        self.metrics = true;
        self
    }
    /// Serve `tls.crt`/`tls.key`/`ca.crt` from this directory instead of fresh ones.
    pub fn cert_dir(mut self, dir: &Path) -> Self {
        self.cert_dir = Some(dir.to_path_buf());
        self
    }
    pub fn start(self) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let cert_dir = self.cert_dir.clone().unwrap_or_else(|| {
            make_certs(dir.path());
            dir.path().to_path_buf()
        });
        let mut cmd = Command::new(bin());
        cmd.args(["--log-format", "json", "serve", "--addr", "127.0.0.1:0"])
            .arg("--tls-cert")
            .arg(cert_dir.join("tls.crt"))
            .arg("--tls-key")
            .arg(cert_dir.join("tls.key"));
        if let Some(yaml) = &self.config {
            let p = dir.path().join("config.yaml");
            std::fs::write(&p, yaml).unwrap();
            cmd.arg("--config").arg(p);
        }
        if self.metrics {
            cmd.args(["--metrics-addr", "127.0.0.1:0"]);
        }
        cmd.args(&self.args)
            .env("NIXUV_LOG", "info")
            .envs(self.env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = Arc::clone(&logs);
        let stall = self.stall_logs;
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            for line in (&mut reader).lines().map_while(Result::ok) {
                let listening = line.contains("\"message\":\"listening\"");
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if let Some(addr) = v["addr"].as_str() {
                        let _ = tx.send((
                            v["message"].as_str().unwrap_or("").to_string(),
                            addr.parse::<SocketAddr>().unwrap(),
                        ));
                    }
                }
                sink.lock().unwrap().push(line);
                if stall && listening {
                    // Keep the pipe open and never read it again.
                    loop {
                        std::thread::park();
                    }
                }
            }
        });
        let mut addr = None;
        let mut metrics_addr = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while addr.is_none() || (self.metrics && metrics_addr.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((msg, a)) if msg == "listening" => addr = Some(a),
                Ok((msg, a)) if msg.starts_with("metrics listening") => metrics_addr = Some(a),
                Ok(_) => {}
                Err(_) => panic!("server did not report its address; logs: {:?}", logs.lock().unwrap()),
            }
        }
        let ca = std::fs::read(cert_dir.join("ca.crt")).unwrap();
        Server { child, addr: addr.unwrap(), metrics_addr, dir, ca, logs }
    }
}

impl Server {
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            args: Vec::new(),
            env: Vec::new(),
            config: None,
            metrics: false,
            cert_dir: None,
            stall_logs: false,
        }
    }
    pub fn start() -> Server {
        Self::builder().start()
    }
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{}", self.addr.port(), path)
    }
    fn client_builder(&self, ca: &[u8]) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(ca).unwrap())
            .resolve("localhost", self.addr)
            .timeout(Duration::from_secs(20))
    }
    /// POSTs `body` with `content_type` to `path` over HTTP/1.1 and returns the response.
    pub async fn post(&self, path: &str, content_type: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.h1().post(self.url(path)).header("content-type", content_type).body(body).send().await.unwrap()
    }
    pub fn h1(&self) -> reqwest::Client {
        self.client_builder(&self.ca).http1_only().build().unwrap()
    }
    pub fn h2(&self) -> reqwest::Client {
        self.client_builder(&self.ca).http2_prior_knowledge().build().unwrap()
    }
    /// A client for this server that trusts `ca` and does not pool connections.
    pub fn fresh_client(&self, ca: &[u8]) -> reqwest::Client {
        self.client_builder(ca).pool_max_idle_per_host(0).build().unwrap()
    }
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }
    /// The first log line containing `needle`, waited for: the server writes its lines in bursts,
    /// up to 10 ms after they are logged.
    pub async fn log_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(l) = self.logs.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            assert!(Instant::now() < deadline, "no log line with {needle:?}: {:?}", self.logs());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill").args([&format!("-{sig}"), &self.child.id().to_string()]).status().unwrap();
        assert!(st.success());
    }
    /// Waits for the process to exit (bounded).
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "server did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Posts `body` to `/mutate` and returns (HTTP status, JSON body).
pub async fn post_json(client: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let resp = client.post(url).json(body).send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("response is not JSON ({e}): {text}")))
}

/// Decodes the base64 JSON patch of an AdmissionReview response, if any.
pub fn response_patch(review: &Value) -> Option<json_patch::Patch> {
    let b64 = review["response"]["patch"].as_str()?;
    assert_eq!(review["response"]["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
    Some(serde_json::from_slice(&bytes).unwrap())
}

/// Applies `patch` to `doc` with the json-patch implementation; panics naming the failing op.
pub fn apply(doc: &Value, patch: &json_patch::Patch) -> Value {
    let mut out = doc.clone();
    json_patch::patch(&mut out, &patch.0).unwrap_or_else(|e| {
        panic!("patch does not apply: {e}\npatch: {}", serde_json::to_string_pretty(patch).unwrap())
    });
    out
}

/// The object of an AdmissionReview, with a patched copy swapped in.
pub fn with_object(review: &Value, object: Value) -> Value {
    let mut r = review.clone();
    r["request"]["object"] = object;
    r
}

pub fn as_pod(v: &Value) -> k8s_openapi::api::core::v1::Pod {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("not a Pod: {e}"))
}

pub fn env_of<'a>(c: &'a k8s_openapi::api::core::v1::Container, name: &str) -> Option<&'a str> {
    c.env.as_ref()?.iter().find(|e| e.name == name)?.value.as_deref()
}

/// The value of the first sample of metric `name` in Prometheus text.
pub fn metric(text: &str, name: &str) -> f64 {
    let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no metric {name} in\n{text}"));
    line.split_whitespace().last().unwrap().parse().unwrap()
}
