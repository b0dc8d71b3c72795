//! `nixuv check`: "why wasn't my Pod injected?", asked of a live cluster (kubeconfig or in-cluster
//! config), answered in sentences. For a Pod, a workload or a namespace it reads what decides
//! injection — the MutatingWebhookConfiguration (present, caBundle set and verifying the
//! certificate nixuv serves, selectors matching), the Service's ready endpoints, nixuv's config
//! (excluded namespaces), the store claims — and runs the same preview as `nixuv preview` on the
//! object as the API server has it. For an existing Pod it also says whether it was injected and,
//! if its `nixuv-init` failed, why.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};
use rustls::client::danger::ServerCertVerifier;
use serde::Serialize;
use serde_json::Value;

use crate::claims::AssumePresent;
use crate::config::{Config, Overrides};
use crate::inject::Injector;
use crate::keys::{ANN_ENV, ANN_STATUS, STATUS_INJECTED};
use crate::names::INIT_CONTAINER;

/// What is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Pod,
    /// A workload kind `nixuv preview` reads (deployment, statefulset, daemonset, replicaset, job,
    /// cronjob, workflow).
    Workload(String),
    Namespace,
}

#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub target: Target,
    pub name: String,
    pub namespace: Option<String>,
    /// The MutatingWebhookConfiguration's name.
    pub webhook: String,
    /// nixuv's ConfigMap (keys `config.yaml`, `initImage`) in the webhook Service's namespace.
    pub config_map: String,
    /// nixuv's serving Secret, checked when the Service cannot be reached from here.
    pub tls_secret: String,
    /// Where to connect to the webhook instead of the Service's DNS name (a port-forward).
    pub connect: Option<String>,
    /// Also resolve the env's deps from here (`nixuv preview --resolve`).
    pub resolve: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Info,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub level: Level,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: String,
    pub findings: Vec<Finding>,
}

impl Report {
    fn add(&mut self, check: &'static str, level: Level, message: impl Into<String>) {
        self.findings.push(Finding { check, level, message: message.into() });
    }
    pub fn failed(&self) -> bool {
        self.findings.iter().any(|f| f.level == Level::Fail)
    }
    /// One line per finding, for people.
    pub fn text(&self) -> String {
        let mut out = format!("{}\n", self.target);
        for f in &self.findings {
            let mark = match f.level {
                Level::Ok => "ok  ",
                Level::Info => "info",
                Level::Warn => "warn",
                Level::Fail => "FAIL",
            };
            out.push_str(&format!("  [{mark}] {}: {}\n", f.check, one_line(&f.message)));
        }
        out
    }
}

/// A message on one line, its control characters escaped: messages quote what Pods say about
/// themselves (nixuv-init's termination message is whatever its container wrote), and that must
/// not reach the terminal as escape sequences.
fn one_line(s: &str) -> String {
    s.trim()
        .chars()
        .map(|c| match c {
            '\n' => " | ".to_string(),
            c if c.is_control() => c.escape_debug().to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// The API path of a namespaced object of a kind `check` reads.
fn object_path(target: &Target, ns: &str, name: &str) -> Option<(String, &'static str)> {
    let (prefix, plural, kind) = match target {
        Target::Pod => ("/api/v1", "pods", "Pod"),
        Target::Namespace => return None,
        Target::Workload(k) => match k.as_str() {
            "deployment" | "deploy" => ("/apis/apps/v1", "deployments", "Deployment"),
            "statefulset" | "sts" => ("/apis/apps/v1", "statefulsets", "StatefulSet"),
            "daemonset" | "ds" => ("/apis/apps/v1", "daemonsets", "DaemonSet"),
            "replicaset" | "rs" => ("/apis/apps/v1", "replicasets", "ReplicaSet"),
            "job" => ("/apis/batch/v1", "jobs", "Job"),
            "cronjob" | "cj" => ("/apis/batch/v1", "cronjobs", "CronJob"),
            "workflow" | "wf" => ("/apis/argoproj.io/v1alpha1", "workflows", "Workflow"),
            _ => return None,
        },
    };
    Some((format!("{prefix}/namespaces/{ns}/{plural}/{name}"), kind))
}

/// The config's `caBundle` ConfigMap in `ns`: there, with the key, holding certificates; `who`
/// mounts it there.
async fn check_ca_bundle(
    client: &kube::Client,
    report: &mut Report,
    ca: &crate::config::CaBundleFile,
    ns: &str,
    who: &str,
) -> anyhow::Result<()> {
    let name = &ca.config_map;
    let (level, message) = match get(client, &format!("/api/v1/namespaces/{ns}/configmaps/{name}")).await? {
        None => (Level::Fail, format!("ConfigMap {ns}/{name} (caBundle) does not exist: {who} stay in ContainerCreating until it does (trust-manager, or create it: docs/configuration.md, \"A private CA\")")),
        Some(cm) => match cm["data"][&ca.key].as_str() {
            None => (Level::Fail, format!("ConfigMap {ns}/{name} (caBundle) has no key {:?}: {who} cannot start", ca.key)),
            Some(pem) => match crate::materialize::trust::certificates(pem.as_bytes()) {
                Ok(n) => (Level::Ok, format!("ConfigMap {ns}/{name} (caBundle) holds {n} certificate(s) under {:?}", ca.key)),
                Err(e) => (Level::Fail, format!("ConfigMap {ns}/{name} (caBundle), key {:?}: {e}: every build fails", ca.key)),
            },
        },
    };
    report.add("caBundleConfigMap", level, message);
    Ok(())
}

/// GET `path` as JSON; `Ok(None)` on 404.
async fn get(client: &kube::Client, path: &str) -> anyhow::Result<Option<Value>> {
    let req = http::Request::get(path).body(Vec::new())?;
    match client.request::<Value>(req).await {
        Ok(v) => Ok(Some(v)),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context(format!("GET {path}"))),
    }
}

fn labels_of(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string()))).collect())
        .unwrap_or_default()
}

/// Whether `selector` (absent: everything) selects these labels.
fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> Result<bool, String> {
    if selector.is_null() {
        return Ok(true);
    }
    let ls: LabelSelector = serde_json::from_value(selector.clone()).map_err(|e| e.to_string())?;
    let sel = Selector::try_from(ls).map_err(|e| e.to_string())?;
    Ok(sel.matches(labels))
}

/// The Pod labels of an object: its own for a Pod, its template's for a workload.
fn pod_labels(obj: &Value, kind: &str) -> BTreeMap<String, String> {
    let meta = match kind {
        "Pod" => &obj["metadata"],
        "CronJob" => &obj["spec"]["jobTemplate"]["spec"]["template"]["metadata"],
        "Workflow" => &obj["spec"]["podMetadata"],
        _ => &obj["spec"]["template"]["metadata"],
    };
    labels_of(&meta["labels"])
}

/// Does the webhook's caBundle verify the certificate nixuv serves? Asked of the Service itself
/// (or `connect`); where it cannot be reached from here, of the serving Secret's `tls.crt`.
async fn check_certificate(
    client: &kube::Client,
    opts: &CheckOptions,
    report: &mut Report,
    ca_pem: &[u8],
    svc: (&str, &str, u16),
) -> anyhow::Result<()> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};
    let (name, ns, port) = svc;
    let dns = format!("{name}.{ns}.svc");
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem).flatten() {
        let _ = roots.add(c);
    }
    if roots.is_empty() {
        report.add("caBundle", Level::Fail, "the caBundle holds no certificate that parses");
        return Ok(());
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_name = ServerName::try_from(dns.clone())?;
    let addr = opts.connect.clone().unwrap_or_else(|| format!("{dns}:{port}"));
    let tcp =
        tokio::time::timeout(std::time::Duration::from_secs(5), tokio::net::TcpStream::connect(addr.clone())).await;
    if let Ok(Ok(tcp)) = tcp {
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        match tokio::time::timeout(std::time::Duration::from_secs(5), connector.connect(server_name, tcp)).await {
            Ok(Ok(_)) => report.add(
                "certificate",
                Level::Ok,
                format!("the Service ({addr}) answers with a certificate for {dns} that the caBundle verifies"),
            ),
            Ok(Err(e)) => report.add(
                "certificate",
                Level::Fail,
                format!("the Service ({addr}) answers with a certificate the caBundle does not verify for {dns}: {e}; the API server will refuse to call nixuv"),
            ),
            Err(_) => report.add("certificate", Level::Warn, format!("the TLS handshake with {addr} timed out")),
        }
        return Ok(());
    }
    report.add(
        "certificate",
        Level::Info,
        format!("{addr} cannot be reached from here; checking Secret {ns}/{} instead", opts.tls_secret),
    );
    let Some(secret) = get(client, &format!("/api/v1/namespaces/{ns}/secrets/{}", opts.tls_secret)).await? else {
        report.add(
            "certificate",
            Level::Warn,
            format!("Secret {ns}/{} not found (or not readable): cannot tell", opts.tls_secret),
        );
        return Ok(());
    };
    let Some(pem) = secret["data"]["tls.crt"]
        .as_str()
        .and_then(|b| base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b).ok())
    else {
        report.add("certificate", Level::Warn, format!("Secret {ns}/{} has no tls.crt", opts.tls_secret));
        return Ok(());
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem).flatten().collect();
    let Some((leaf, rest)) = chain.split_first() else {
        report.add(
            "certificate",
            Level::Fail,
            format!("Secret {ns}/{}'s tls.crt holds no certificate", opts.tls_secret),
        );
        return Ok(());
    };
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider).build()?;
    let now = rustls_pki_types::UnixTime::now();
    match verifier.verify_server_cert(leaf, rest, &server_name, &[], now) {
        Ok(_) => report.add(
            "certificate",
            Level::Ok,
            format!(
                "the serving certificate in Secret {ns}/{} is for {dns} and the caBundle verifies it",
                opts.tls_secret
            ),
        ),
        Err(e) => report.add(
            "certificate",
            Level::Fail,
            format!(
                "the caBundle does not verify the serving certificate in Secret {ns}/{} for {dns}: {e}",
                opts.tls_secret
            ),
        ),
    }
    Ok(())
}

/// Runs every check for `opts` against the cluster `client` talks to.
pub async fn check(client: &kube::Client, opts: &CheckOptions) -> anyhow::Result<Report> {
    let ns = opts.namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
    let (object, kind) = match object_path(&opts.target, &ns, &opts.name) {
        Some((path, kind)) => (get(client, &path).await?, kind),
        None if opts.target == Target::Namespace => (None, "Namespace"),
        None => anyhow::bail!("nixuv check: unknown kind {:?}", opts.target),
    };
    let ns = if opts.target == Target::Namespace { opts.name.clone() } else { ns };
    let mut report = Report { target: format!("{kind} {ns}/{}", opts.name), findings: Vec::new() };
    if opts.target == Target::Namespace {
        report.target = format!("namespace {ns}");
    } else if object.is_none() {
        report.add("object", Level::Fail, format!("{kind} {} not found in namespace {ns}", opts.name));
        return Ok(report);
    }
    let namespace = get(client, &format!("/api/v1/namespaces/{ns}")).await?;
    let Some(namespace) = namespace else {
        report.add("namespace", Level::Fail, format!("namespace {ns} does not exist"));
        return Ok(report);
    };
    let ns_labels = labels_of(&namespace["metadata"]["labels"]);

    // The webhook configuration.
    let mwc =
        get(client, &format!("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{}", opts.webhook))
            .await?;
    let Some(mwc) = mwc else {
        report.add(
            "webhook",
            Level::Fail,
            format!("MutatingWebhookConfiguration {} does not exist: the API server calls no nixuv", opts.webhook),
        );
        return Ok(report);
    };
    let hook = &mwc["webhooks"][0];
    report.add(
        "webhook",
        Level::Ok,
        format!(
            "MutatingWebhookConfiguration {} is present (failurePolicy {})",
            opts.webhook,
            hook["failurePolicy"].as_str().unwrap_or("Fail")
        ),
    );
    let svc = &hook["clientConfig"]["service"];
    let (svc_name, svc_ns, svc_port) = (
        svc["name"].as_str().unwrap_or("nixuv").to_string(),
        svc["namespace"].as_str().unwrap_or("nixuv-system").to_string(),
        svc["port"].as_u64().unwrap_or(443) as u16,
    );
    let ca = hook["clientConfig"]["caBundle"].as_str().unwrap_or("");
    let ca_pem = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, ca).unwrap_or_default();
    if ca_pem.is_empty() {
        report.add("caBundle", Level::Fail, "the webhook's caBundle is empty: the API server cannot trust nixuv (cert-manager's CA injector or --manage-ca-bundle fills it)");
    } else {
        report.add("caBundle", Level::Ok, "the webhook's caBundle is set");
        check_certificate(client, opts, &mut report, &ca_pem, (&svc_name, &svc_ns, svc_port)).await?;
    }
    match selects(&hook["namespaceSelector"], &ns_labels) {
        Ok(true) => report.add("namespaceSelector", Level::Ok, format!("the webhook's namespaceSelector selects namespace {ns}")),
        Ok(false) => report.add("namespaceSelector", Level::Fail, format!("the webhook's namespaceSelector does not select namespace {ns} (its labels: {ns_labels:?}); a namespace labelled nixuv.io/inject=disabled, kube-system or kube-public is never injected")),
        Err(e) => report.add("namespaceSelector", Level::Warn, format!("cannot read the namespaceSelector: {e}")),
    }
    if let Some(obj) = &object {
        let labels = pod_labels(obj, kind);
        let whose = if kind == "Pod" { "the Pod's labels" } else { "the Pod template's labels" };
        match selects(&hook["objectSelector"], &labels) {
            Ok(true) => report.add("objectSelector", Level::Ok, format!("the webhook's objectSelector selects {whose}")),
            Ok(false) => report.add("objectSelector", Level::Fail, format!("the webhook's objectSelector does not select {whose} ({labels:?}): label the Pod (template) nixuv.io/inject=\"true\"")),
            Err(e) => report.add("objectSelector", Level::Warn, format!("cannot read the objectSelector: {e}")),
        }
    }

    // The Service's endpoints.
    let slices = get(client, &format!("/apis/discovery.k8s.io/v1/namespaces/{svc_ns}/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3D{svc_name}")).await?;
    let ready = slices
        .as_ref()
        .and_then(|s| s["items"].as_array())
        .map(|items| {
            items
                .iter()
                .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
                .filter(|e| e["conditions"]["ready"] != Value::Bool(false))
                .count()
        })
        .unwrap_or(0);
    if ready == 0 {
        report.add("endpoints", Level::Fail, format!("Service {svc_ns}/{svc_name} has no ready endpoint: nixuv is not running or not ready, and opted-in Pods are refused"));
    } else {
        report.add("endpoints", Level::Ok, format!("Service {svc_ns}/{svc_name} has {ready} ready endpoint(s)"));
    }

    // nixuv's config, as deployed.
    let cm = get(client, &format!("/api/v1/namespaces/{svc_ns}/configmaps/{}", opts.config_map)).await?;
    let overrides = Overrides {
        init_image: cm.as_ref().and_then(|c| c["data"]["initImage"].as_str()).map(String::from),
        own_namespace: Some(svc_ns.clone()),
    };
    let config = match cm.as_ref().and_then(|c| c["data"]["config.yaml"].as_str()) {
        Some(text) => match Config::from_yaml_with(text, &overrides) {
            Ok(c) => c,
            Err(e) => {
                report.add("config", Level::Fail, format!("ConfigMap {svc_ns}/{}: {e}", opts.config_map));
                return Ok(report);
            }
        },
        None => {
            report.add(
                "config",
                Level::Warn,
                format!("ConfigMap {svc_ns}/{} not found: checking with the default config", opts.config_map),
            );
            Config::from_yaml_with("", &overrides)?
        }
    };
    if config.excluded_namespaces.contains(&ns) {
        report.add(
            "config",
            Level::Fail,
            format!("nixuv's config excludes namespace {ns} (excludeNamespaces, or nixuv's own namespace)"),
        );
    } else {
        report.add("config", Level::Ok, format!("nixuv's config does not exclude namespace {ns}"));
    }
    if let Some(ca) = &config.file.ca_bundle {
        check_ca_bundle(client, &mut report, ca, &ns, "nixuv-init of its Pods").await?;
        if config.image_repository.is_some() && svc_ns != ns {
            check_ca_bundle(client, &mut report, ca, &svc_ns, "the image builder's Jobs").await?;
        }
    }
    let storage = &config.file.storage;
    if storage.mode == crate::config::StorageMode::EmptyDir {
        report.add("stores", Level::Info, "storage.mode is emptyDir: every Pod builds its env alone");
    } else {
        for claim in [&storage.nix_claim, &storage.uv_claim] {
            match get(client, &format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}")).await? {
                None => report.add("stores", Level::Warn, format!("PersistentVolumeClaim {ns}/{claim} does not exist: Pods fall back to an emptyDir and build their env alone (deploy/components/stores)")),
                Some(pvc) => match pvc["status"]["phase"].as_str() {
                    Some("Bound") => report.add("stores", Level::Ok, format!("PersistentVolumeClaim {ns}/{claim} is Bound")),
                    phase => report.add("stores", Level::Warn, format!("PersistentVolumeClaim {ns}/{claim} is {} : Pods using it wait until it binds (a ReadWriteMany storage class?)", phase.unwrap_or("without a phase"))),
                },
            }
        }
    }

    // What nixuv would do to the object, and what it did to an existing Pod.
    if let Some(obj) = &object {
        let mut obj = obj.clone();
        if kind == "Pod" {
            // The webhook saw the Pod before nixuv's own changes; preview it as created.
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("managedFields");
            }
        }
        let injector = Injector::new(config);
        let text = serde_json::to_string(&obj)?;
        match crate::preview::preview_text(&text, Some(&ns), &injector, &AssumePresent) {
            Err(e) => report.add("preview", Level::Warn, format!("cannot preview it: {e}")),
            Ok((_, _, previews)) => {
                for p in &previews {
                    if let Some(d) = p.denial() {
                        report.add("preview", Level::Fail, format!("nixuv would deny it: {d}"));
                    } else if let Some(env) = p.decision.as_ref().and_then(|d| d.env_id()) {
                        report.add(
                            "preview",
                            Level::Ok,
                            format!(
                                "nixuv injects env {env} ({})",
                                p.decision.as_ref().map(|d| d.outcome().as_str()).unwrap_or("")
                            ),
                        );
                    } else if p.templates.iter().any(|t| t.env_id.is_some()) {
                        for t in &p.templates {
                            report.add("preview", Level::Info, format!("template {:?}: {}", t.template, t.summary));
                        }
                    } else {
                        let why = p.decision.as_ref().map(|d| d.outcome().as_str()).unwrap_or("nothing to inject");
                        report.add("preview", Level::Warn, format!("nixuv would not inject it ({why})"));
                    }
                    for w in &p.warnings {
                        report.add("preview", Level::Warn, w.clone());
                    }
                    if opts.resolve {
                        let work = std::env::temp_dir().join(format!("nixuv-check-{}", std::process::id()));
                        let _ = std::fs::create_dir_all(&work);
                        let tools = crate::resolve::Tools::from_env();
                        for plan in p.plans() {
                            let r = crate::resolve::check(&plan, &tools, &work);
                            for f in &r.findings {
                                report.add(
                                    "resolve",
                                    Level::Fail,
                                    format!("env {}: {:?} would fail: {}; fix: {}", plan.id, f.item, f.problem, f.fix),
                                );
                            }
                            for u in &r.unchecked {
                                report.add("resolve", Level::Info, format!("env {}: not checked: {u}", plan.id));
                            }
                            if r.findings.is_empty() && r.unchecked.is_empty() {
                                report.add("resolve", Level::Ok, format!("env {} resolves", plan.id));
                            }
                        }
                        let _ = std::fs::remove_dir_all(&work);
                    }
                    for n in &p.notes {
                        report.add("preview", Level::Info, n.clone());
                    }
                }
            }
        }
        if kind == "Pod" {
            let ann = &obj["metadata"]["annotations"];
            if ann[ANN_STATUS] == STATUS_INJECTED {
                report.add(
                    "pod",
                    Level::Ok,
                    format!("the Pod was injected for env {}", ann[ANN_ENV].as_str().unwrap_or("?")),
                );
            } else {
                report.add("pod", Level::Fail, "the Pod was not injected (no nixuv.io/status annotation): it was created before nixuv ran, or the webhook was not called for it (see the checks above)");
            }
            let statuses = obj["status"]["initContainerStatuses"].as_array().cloned().unwrap_or_default();
            if let Some(s) = statuses.iter().find(|s| s["name"] == INIT_CONTAINER) {
                let term = if s["state"]["terminated"].is_object() {
                    &s["state"]["terminated"]
                } else {
                    &s["lastState"]["terminated"]
                };
                match term["exitCode"].as_i64() {
                    Some(0) => report.add("nixuv-init", Level::Ok, "nixuv-init finished: the env is ready"),
                    Some(code) => report.add(
                        "nixuv-init",
                        Level::Fail,
                        format!(
                            "nixuv-init failed (exit code {code}): {}",
                            term["message"]
                                .as_str()
                                .unwrap_or("(no termination message; kubectl logs -c nixuv-init)")
                                .trim()
                        ),
                    ),
                    None if s["state"]["running"].is_object() => {
                        report.add("nixuv-init", Level::Info, "nixuv-init is running (building or waiting for the env)")
                    }
                    None => report.add("nixuv-init", Level::Info, "nixuv-init has not run yet"),
                }
            }
        }
    }
    Ok(report)
}
