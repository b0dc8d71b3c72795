//! `caBundle`: the certificates uv and nix trust. The ConfigMap's PEM file is added to the init
//! image's own CA bundle (so a bundle holding only a corporate root still lets nix reach public
//! caches), written to the init container's private scratch directory, and handed to uv as
//! `SSL_CERT_FILE` and to nix as `NIX_SSL_CERT_FILE`. Without `caBundle`, neither is set and the
//! tools use their defaults (uv its bundled Mozilla roots, nix the image's bundle).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::{io, MaterializeError};
use crate::envspec::EnvSpec;

/// Where images keep their CA bundle (Debian's first); the first regular file is used.
const SYSTEM_BUNDLES: &[&str] =
    &["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];

/// The most a `caBundle` file may hold: a ConfigMap is at most 1 MiB.
const MAX_BUNDLE: u64 = 1 << 20;

/// The combined bundle for one build, removed when dropped.
#[derive(Debug)]
pub(crate) struct Trust {
    file: PathBuf,
}

impl Trust {
    /// The variables that point uv and nix at the combined bundle.
    pub(crate) fn env(&self) -> [(&'static str, OsString); 2] {
        [("SSL_CERT_FILE", self.file.clone().into()), ("NIX_SSL_CERT_FILE", self.file.clone().into())]
    }
}

impl Drop for Trust {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, std::io::Error> {
    let mut buf = Vec::new();
    std::fs::File::open(path)?.take(MAX_BUNDLE + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_BUNDLE {
        return Err(std::io::Error::other("larger than a ConfigMap can be (1 MiB)"));
    }
    Ok(buf)
}

/// How many certificates a `caBundle` holds, each parsed; an error says what is wrong with it (not
/// PEM, a certificate that does not parse, none at all). `nixuv check` asks the same of the
/// ConfigMap.
pub fn certificates(pem: &[u8]) -> Result<usize, String> {
    let mut count = 0usize;
    for cert in CertificateDer::pem_slice_iter(pem) {
        let der = cert.map_err(|e| format!("not PEM ({e})"))?;
        x509_parser::parse_x509_certificate(&der)
            .map_err(|e| format!("certificate {} does not parse: {e}", count + 1))?;
        count += 1;
    }
    if count == 0 {
        return Err("no PEM certificate in it".into());
    }
    Ok(count)
}

/// The error for a `caBundle` that cannot be used, naming the ConfigMap and key.
fn unusable(spec: &EnvSpec, path: &Path, why: impl std::fmt::Display) -> MaterializeError {
    let reference = spec.plan.ca_bundle.as_deref().unwrap_or_default();
    io(path)(std::io::Error::other(format!(
        "caBundle {reference} (ConfigMap/key, mounted by the kubelet): {why}; the ConfigMap must exist in the Pod's namespace and hold PEM certificates under that key"
    )))
}

/// The combined bundle for `spec`, in `scratch` (a directory private to this container), or
/// `None` when the plan names no `caBundle`.
pub(crate) fn prepare(spec: &EnvSpec, scratch: &Path) -> Result<Option<Trust>, MaterializeError> {
    let Some(file) = spec.ca_file.as_deref().filter(|_| spec.plan.ca_bundle.is_some()) else { return Ok(None) };
    let path = Path::new(file);
    // The kubelet projects a ConfigMap key as a link into its `..data` directory: followed here,
    // as the volume is the kubelet's, not a store anyone else writes.
    let private = read_bounded(path).map_err(|e| unusable(spec, path, e))?;
    let count = certificates(&private).map_err(|e| unusable(spec, path, e))?;
    let system = SYSTEM_BUNDLES
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .and_then(|p| read_bounded(p).ok())
        .unwrap_or_default();
    let combined = scratch.join(format!("nixuv-ca-{}.pem", super::store::nonce()));
    let mut out =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&combined).map_err(io(&combined))?;
    let trust = Trust { file: combined };
    let mut text = system;
    if !text.is_empty() && !text.ends_with(b"\n") {
        text.push(b'\n');
    }
    text.extend_from_slice(&private);
    out.write_all(&text).and_then(|()| out.sync_all()).map_err(io(&trust.file))?;
    tracing::info!(ca_bundle = %spec.plan.ca_bundle.as_deref().unwrap_or_default(), certificates = count, "caBundle: uv and nix trust its certificates besides the image's");
    Ok(Some(trust))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::plan::EnvPlan;

    fn spec_with(file: &Path) -> EnvSpec {
        let cfg = Config::from_yaml("caBundle: {configMap: corp-ca, key: ca.crt}").unwrap();
        let mut spec = EnvSpec::for_plan(&EnvPlan::new(&Default::default(), cfg.plan_inputs()));
        spec.ca_file = Some(file.display().to_string());
        spec
    }

    /// A whole public-roots bundle (what trust-manager's `useDefaultCAs` gives) is taken as it is,
    /// and the combined file holds it after the image's own; a file without certificates, or
    /// with a broken one, is refused naming the bundle.
    #[test]
    fn bundles_are_checked_and_combined() {
        let dir = tempfile::tempdir().unwrap();
        let system = SYSTEM_BUNDLES.iter().map(Path::new).find(|p| p.is_file());
        let pem = match system {
            Some(p) => std::fs::read(p).unwrap(),
            None => {
                let cert = rcgen::generate_simple_self_signed(vec!["ca.example".into()]).unwrap();
                cert.cert.pem().into_bytes()
            }
        };
        let file = dir.path().join("ca.crt");
        std::fs::write(&file, &pem).unwrap();
        let trust = prepare(&spec_with(&file), dir.path()).unwrap().expect("a bundle");
        let combined = std::fs::read(&trust.file).unwrap();
        assert!(combined.ends_with(&pem) && combined.len() >= pem.len());
        let path = trust.file.clone();
        drop(trust);
        assert!(!path.exists(), "removed after the build");
        for bad in [&b"no certificate here\n"[..], b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"] {
            std::fs::write(&file, bad).unwrap();
            let err = prepare(&spec_with(&file), dir.path()).unwrap_err().to_string();
            assert!(err.contains("caBundle corp-ca/ca.crt"), "{err}");
        }
        // No caBundle in the plan: nothing to do.
        let plain = EnvSpec::for_plan(&EnvPlan::new(&Default::default(), Config::default().plan_inputs()));
        assert!(prepare(&plain, dir.path()).unwrap().is_none());
    }
}
