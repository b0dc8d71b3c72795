//! Pushing an env image with `oci-client`: each layer blob unless the registry has it already
//! (envs share layers), the config, then the manifest, whose bytes are ours so that its digest is
//! known without asking. Credentials come from a `kubernetes.io/dockerconfigjson` file.

use std::collections::BTreeMap;
use std::path::Path;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::json;

use super::layers::Layer;
use super::PublishError;
use crate::imagestore::Repository;

pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The credentials for `registry` in a docker config file (`auths.<registry>`: `auth`, the
/// base64 of `user:password`, or `username` and `password`); anonymous without a file or entry.
/// Read by hand: one JSON lookup in a mounted Secret (the docker credential crates read the
/// user's own docker config and run credential helpers, which a builder Pod has none of).
pub fn auth_from_file(path: Option<&Path>, registry: &str) -> Result<RegistryAuth, PublishError> {
    let Some(path) = path else { return Ok(RegistryAuth::Anonymous) };
    let text = match std::fs::read(path) {
        Ok(t) => t,
        // An optional Secret that is not there: no credentials.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RegistryAuth::Anonymous),
        Err(e) => return Err(PublishError::Auth(format!("{}: {e}", path.display()))),
    };
    let v: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| PublishError::Auth(format!("{}: {e}", path.display())))?;
    let Some(entry) = v["auths"].get(registry) else { return Ok(RegistryAuth::Anonymous) };
    if let (Some(u), Some(p)) = (entry["username"].as_str(), entry["password"].as_str()) {
        return Ok(RegistryAuth::Basic(u.into(), p.into()));
    }
    let encoded = entry["auth"].as_str().unwrap_or("");
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            PublishError::Auth(format!("{}: auths.{registry}.auth is not base64 of user:password", path.display()))
        })?;
    let (u, p) = decoded
        .split_once(':')
        .ok_or_else(|| PublishError::Auth(format!("{}: auths.{registry}.auth is not user:password", path.display())))?;
    Ok(RegistryAuth::Basic(u.into(), p.into()))
}

/// A client for `repo`'s registry (plain HTTP when `insecure`).
pub fn client(insecure: bool) -> Result<Client, PublishError> {
    // oci-client's reqwest uses rustls without a built-in provider: ring, as everywhere in nixuv.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = ClientConfig {
        protocol: if insecure { ClientProtocol::Http } else { ClientProtocol::Https },
        ..Default::default()
    };
    Client::try_from(config).map_err(|e| PublishError::Registry(format!("client: {e}")))
}

/// The image config: the platform and each layer's uncompressed digest.
pub fn config_json(layers: &[Layer], labels: &BTreeMap<String, String>) -> Vec<u8> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let v = json!({
        "architecture": arch,
        "os": "linux",
        "config": { "Labels": labels },
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| &l.diff_id).collect::<Vec<_>>() },
    });
    serde_json::to_vec(&v).expect("serialises")
}

/// The manifest for `layers` and `config`.
pub fn manifest_json(layers: &[Layer], config: &[u8], annotations: &BTreeMap<String, String>) -> Vec<u8> {
    let v = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": { "mediaType": CONFIG_TYPE, "digest": sha256(config), "size": config.len() },
        "layers": layers.iter().map(|l| json!({
            "mediaType": LAYER_TYPE,
            "digest": l.digest,
            "size": l.size,
            "annotations": { "org.opencontainers.image.title": l.title },
        })).collect::<Vec<_>>(),
        "annotations": annotations,
    });
    serde_json::to_vec(&v).expect("serialises")
}

pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// What a push did: the manifest's digest, and how many layer blobs the registry already had.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub digest: String,
    pub reused: usize,
}

/// Pushes the blobs and the manifest under `tag`.
pub async fn push(
    client: &Client,
    auth: &RegistryAuth,
    repo: &Repository,
    tag: &str,
    layers: &[Layer],
    config: &[u8],
    manifest: &[u8],
) -> Result<Pushed, PublishError> {
    let reference = Reference::with_tag(repo.registry.clone(), repo.path.clone(), tag.to_string());
    let err = |what: &str, e: oci_client::errors::OciDistributionError| {
        PublishError::Registry(format!("{what} to {}/{}: {e}", repo.registry, repo.path))
    };
    client.store_auth_if_needed(&repo.registry, auth).await;
    // Asks for push access (a token, where the registry uses them) before the first HEAD.
    client.auth(&reference, auth, oci_client::RegistryOperation::Push).await.map_err(|e| err("authenticating", e))?;
    let mut reused = 0;
    for l in layers {
        if client.blob_exists(&reference, &l.digest).await.map_err(|e| err("checking a layer", e))? {
            reused += 1;
            continue;
        }
        let data = std::fs::read(&l.file).map_err(|e| PublishError::Registry(format!("{}: {e}", l.file.display())))?;
        client
            .push_blob(&reference, data, &l.digest)
            .await
            .map_err(|e| err(&format!("pushing layer {}", l.title), e))?;
    }
    client.push_blob(&reference, config.to_vec(), &sha256(config)).await.map_err(|e| err("pushing the config", e))?;
    client
        .push_manifest_raw(&reference, manifest.to_vec(), MANIFEST_TYPE.parse().expect("a header value"))
        .await
        .map_err(|e| err("pushing the manifest", e))?;
    Ok(Pushed { digest: sha256(manifest), reused })
}
