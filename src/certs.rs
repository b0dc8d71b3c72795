//! `nixuv certs`: a CA and an ECDSA P-256 serving certificate for local runs and clusters without
//! cert-manager (ECDSA: full handshakes cost about a quarter of RSA-2048's).

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--dns-name {0:?} is not a DNS name")]
    BadName(String),
}

pub struct Generated {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Generated {
    /// The caBundle value for a webhook configuration: base64 of the CA's PEM.
    pub fn ca_bundle(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.ca_pem.as_bytes())
    }
}

pub fn generate(dns_names: &[String], ips: &[IpAddr], valid_days: i64) -> Result<Generated, CertsError> {
    for n in dns_names {
        let ok = !n.is_empty()
            && n.split('.').all(|l| {
                !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*')
            });
        if !ok {
            return Err(CertsError::BadName(n.clone()));
        }
    }
    let now = OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(DnType::CommonName, "nixuv webhook CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    ca_params.not_before = now - Duration::hours(1);
    ca_params.not_after = now + Duration::days(valid_days.max(1) * 5);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(dns_names.to_vec())?;
    params.subject_alt_names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.distinguished_name.push(DnType::CommonName, dns_names.first().map(String::as_str).unwrap_or("nixuv"));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(valid_days.max(1));
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Generated { ca_pem: ca_cert.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Writes `contents` to `path` atomically (a temporary file in the same directory, then rename),
/// so a server polling the files never reads half a key.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Writes `ca.crt`, `tls.crt` and `tls.key` (mode 0600) into `dir`.
pub fn write(dir: &Path, g: &Generated) -> Result<(), CertsError> {
    let io = |path: PathBuf| move |source| CertsError::Io { path, source };
    std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
    for (name, contents, mode) in
        [("ca.crt", &g.ca_pem, 0o644), ("tls.crt", &g.cert_pem, 0o644), ("tls.key", &g.key_pem, 0o600)]
    {
        let path = dir.join(name);
        write_atomic(&path, contents.as_bytes(), mode).map_err(io(path.clone()))?;
    }
    Ok(())
}
