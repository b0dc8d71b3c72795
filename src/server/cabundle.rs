//! `nixuv serve --manage-ca-bundle NAME`: keeps `clientConfig.caBundle` of every webhook in the
//! MutatingWebhookConfiguration NAME equal to the CA file (re-read every reload interval, so a
//! rotated Secret is followed), through the Kubernetes API.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

use super::metrics::{Metrics, ResultLabels};

#[derive(Debug, thiserror::Error)]
pub enum CaBundleError {
    #[error("reading CA file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no PEM CERTIFICATE block")]
    NotPem { path: PathBuf },
    #[error("MutatingWebhookConfiguration {name}: {source}")]
    Api {
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Makes every webhook's caBundle the CA file's content; returns how many were changed.
pub async fn sync_once(client: &Client, name: &str, ca_file: &std::path::Path) -> Result<usize, CaBundleError> {
    let pem =
        tokio::fs::read(ca_file).await.map_err(|source| CaBundleError::Read { path: ca_file.to_path_buf(), source })?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(CaBundleError::NotPem { path: ca_file.to_path_buf() });
    }
    let want = base64::engine::general_purpose::STANDARD.encode(&pem);
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let api_err = |source| CaBundleError::Api { name: name.to_string(), source };
    let mwc = api.get(name).await.map_err(api_err)?;
    let mut ops = Vec::new();
    for (i, w) in mwc.webhooks.iter().flatten().enumerate() {
        let current =
            w.client_config.ca_bundle.as_ref().map(|b| base64::engine::general_purpose::STANDARD.encode(&b.0));
        if current.as_deref() != Some(want.as_str()) {
            // `test` guards against the list having changed since the GET.
            ops.push(serde_json::json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": w.name}));
            ops.push(
                serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": want}),
            );
        }
    }
    if ops.is_empty() {
        return Ok(0);
    }
    let changed = ops.len() / 2;
    let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops)).expect("valid patch ops");
    api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch)).await.map_err(api_err)?;
    Ok(changed)
}

/// Runs [`sync_once`] now and every `interval`, logging and counting failures.
pub fn spawn(client: Client, name: String, ca_file: PathBuf, interval: Duration, metrics: Arc<Metrics>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            match sync_once(&client, &name, &ca_file).await {
                Ok(0) => {}
                Ok(n) => {
                    metrics.ca_bundle_syncs.get_or_create(&ResultLabels { result: "updated" }).inc();
                    tracing::info!(webhook_configuration = %name, webhooks = n, "caBundle updated");
                }
                Err(e) => {
                    metrics.ca_bundle_syncs.get_or_create(&ResultLabels { result: "error" }).inc();
                    tracing::warn!(error = %e, "caBundle sync failed; retrying");
                }
            }
        }
    });
}
