//! TLS: certificates loaded at start-up (fail fast), then reloaded by polling the files' contents.
//! Polling content rather than watching inodes is deliberate: kubelet updates Secret volumes by
//! swapping a `..data` symlink, which inode watchers miss.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use super::metrics::{KindLabels, Metrics, ResultLabels};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no certificate found: {detail}")]
    NoCert { path: PathBuf, detail: String },
    #[error("{path}: no usable private key: {detail}")]
    BadKey { path: PathBuf, detail: String },
    #[error("{cert} and {key} do not match: {detail}")]
    Mismatch { cert: PathBuf, key: PathBuf, detail: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The files' bytes, hashed to notice a change.
fn read_pair(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>, [u8; 32]), TlsError> {
    let read = |p: &Path| std::fs::read(p).map_err(|source| TlsError::Read { path: p.to_path_buf(), source });
    let (c, k) = (read(cert)?, read(key)?);
    let mut h = Sha256::new();
    h.update(&c);
    h.update([0]);
    h.update(&k);
    Ok((c, k, h.finalize().into()))
}

fn parse_pair(cert: &Path, key: &Path, cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::NoCert { path: cert.to_path_buf(), detail: e.to_string() })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert {
            path: cert.to_path_buf(),
            detail: "the file holds no CERTIFICATE block".into(),
        });
    }
    let der = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| TlsError::BadKey { path: key.to_path_buf(), detail: e.to_string() })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| TlsError::BadKey { path: key.to_path_buf(), detail: e.to_string() })?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| TlsError::Mismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        detail: e.to_string(),
    })?;
    Ok(ck)
}

/// The earliest `notAfter` (seconds since the epoch) of the certificates in `pem`; `None` if it
/// holds none that parse.
pub fn earliest_expiry(pem: &[u8]) -> Option<i64> {
    CertificateDer::pem_slice_iter(pem)
        .flatten()
        .filter_map(|der| {
            x509_parser::parse_x509_certificate(&der).ok().map(|(_, c)| c.validity().not_after.timestamp())
        })
        .min()
}

/// The current serving certificate, swapped atomically on reload.
#[derive(Debug)]
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    /// The CA certificate(s) clients verify the serving certificate with, where nixuv can read
    /// them (`--ca-bundle-file`, else `ca.crt` beside `--tls-cert`, as cert-manager writes it).
    ca_path: Option<PathBuf>,
    current: ArcSwap<CertifiedKey>,
    digest: ArcSwap<[u8; 32]>,
}

impl CertStore {
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        Self::load_with_ca(cert_path, key_path, None)
    }

    pub fn load_with_ca(cert_path: &Path, key_path: &Path, ca_path: Option<&Path>) -> Result<Arc<Self>, TlsError> {
        let (c, k, digest) = read_pair(cert_path, key_path)?;
        let ck = parse_pair(cert_path, key_path, &c, &k)?;
        let ca_path =
            ca_path.map(Path::to_path_buf).or_else(|| Some(cert_path.parent()?.join("ca.crt")).filter(|p| p.is_file()));
        Ok(Arc::new(Self {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            ca_path,
            current: ArcSwap::from_pointee(ck),
            digest: ArcSwap::from_pointee(digest),
        }))
    }

    /// Sets the expiry gauges from the certificate in use and the CA file.
    pub fn record_expiry(&self, metrics: &Metrics) {
        let current = self.current.load();
        if let Some(leaf) = current.cert.first() {
            if let Ok((_, c)) = x509_parser::parse_x509_certificate(leaf) {
                metrics
                    .certificate_expiry
                    .get_or_create(&KindLabels { certificate: "serving" })
                    .set(c.validity().not_after.timestamp());
            }
        }
        if let Some(exp) =
            self.ca_path.as_deref().and_then(|p| std::fs::read(p).ok()).and_then(|pem| earliest_expiry(&pem))
        {
            metrics.certificate_expiry.get_or_create(&KindLabels { certificate: "ca" }).set(exp);
        }
    }

    /// Re-reads the files; swaps in the new pair if it changed and is valid. `Ok(false)`: no
    /// change. On error the old certificate stays in use.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (c, k, digest) = read_pair(&self.cert_path, &self.key_path)?;
        if **self.digest.load() == digest {
            return Ok(false);
        }
        let ck = parse_pair(&self.cert_path, &self.key_path, &c, &k)?;
        self.current.store(Arc::new(ck));
        self.digest.store(Arc::new(digest));
        Ok(true)
    }

    /// Polls the files every `interval` until the process ends.
    pub fn spawn_reloader(self: &Arc<Self>, interval: Duration, metrics: Arc<Metrics>) {
        let store = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            store.record_expiry(&metrics);
            tick.tick().await;
            loop {
                tick.tick().await;
                let s = Arc::clone(&store);
                // File reads are blocking; keep them off the runtime's workers.
                let res = tokio::task::spawn_blocking(move || s.reload()).await;
                match res {
                    Ok(Ok(false)) => store.record_expiry(&metrics),
                    Ok(Ok(true)) => {
                        store.record_expiry(&metrics);
                        metrics.tls_reloads.get_or_create(&ResultLabels { result: "success" }).inc();
                        tracing::info!(cert = %store.cert_path.display(), "serving certificate reloaded");
                    }
                    Ok(Err(e)) => {
                        metrics.tls_reloads.get_or_create(&ResultLabels { result: "error" }).inc();
                        tracing::warn!(error = %e, "serving certificate reload failed; keeping the current one");
                    }
                    Err(e) => tracing::error!(error = %e, "certificate reload task failed"),
                }
            }
        });
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// rustls server config: TLS 1.2 and 1.3, ALPN h2 and http/1.1, session resumption by tickets and
/// a session cache.
pub fn server_config(store: Arc<CertStore>) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(store);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg.ticketer = rustls::crypto::ring::Ticketer::new()?;
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    Ok(cfg)
}
