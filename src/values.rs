//! Typed values of the contract, parsed once where they enter (config, annotations, the init
//! container's environment) and carried as types after that. Bottom layer.

use std::fmt;

/// `^[A-Za-z_][A-Za-z0-9_'-]*(\.[A-Za-z_][A-Za-z0-9_'-]*)*$`, written out by hand because it is a
/// few lines and runs per dep on the admission hot path.
pub fn valid_attr_path(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|seg| {
            let mut chars = seg.chars();
            matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '\'' | '-'))
        })
}

/// `3`, `3.12` or `3.12.4`: the forms `uv python install` takes for a CPython version.
pub fn valid_python_version(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    (1..=3).contains(&parts.len())
        && parts[0] == "3"
        && parts.iter().all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// A CPython version as uv takes it (`3`, `3.12`, `3.12.4`), validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PythonVersion(String);

impl PythonVersion {
    pub fn parse(s: &str) -> Option<Self> {
        valid_python_version(s).then(|| PythonVersion(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PythonVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How an env's Python deps reach the app (`python.mode`, `nixuv.io/python-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize)]
pub enum PythonMode {
    /// An isolated venv with its own (uv-managed) interpreter, first on PATH: the image's Python
    /// and its packages are out of the app's sight.
    #[default]
    #[serde(rename = "venv")]
    Venv,
    /// Packages installed for the declared version into a directory put on PYTHONPATH (console
    /// scripts on PATH): the image's own interpreter runs, with its own packages and these.
    #[serde(rename = "overlay")]
    Overlay,
}

impl PythonMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "venv" => Some(PythonMode::Venv),
            "overlay" => Some(PythonMode::Overlay),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            PythonMode::Venv => "venv",
            PythonMode::Overlay => "overlay",
        }
    }
}

/// Where `nixuv-init` goes among the Pod's init containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum InitPlacement {
    /// First of all: before every other init container.
    #[serde(rename = "first")]
    First,
    /// Right after the leading native sidecars (init containers with `restartPolicy: Always`,
    /// as Istio and Linkerd use in native-sidecar mode), so that their proxy is up and the network
    /// works when nixuv-init runs; first when there are none.
    #[serde(rename = "afterSidecars")]
    AfterSidecars,
}

impl InitPlacement {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "first" => Some(InitPlacement::First),
            "afterSidecars" => Some(InitPlacement::AfterSidecars),
            _ => None,
        }
    }
}

/// Whether `path` is a colon-separated list of absolute directories.
pub fn valid_path_list(path: &str) -> bool {
    !path.is_empty() && path.split(':').all(|p| p.starts_with('/'))
}

/// An RFC 3339 date-time (`2025-06-01T00:00:00Z`), as uv's `--exclude-newer` takes it.
pub fn valid_rfc3339(s: &str) -> bool {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok()
}

/// A container's `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Always" => Some(PullPolicy::Always),
            "IfNotPresent" => Some(PullPolicy::IfNotPresent),
            "Never" => Some(PullPolicy::Never),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// A Kubernetes resource quantity such as `100m`, `2`, `1.5Gi`, `512Mi`, validated; kept as
/// written (the API server canonicalises it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantity(String);

impl Quantity {
    pub fn parse(s: &str) -> Option<Self> {
        let digits_end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (num, suffix) = s.split_at(digits_end);
        let ok = !num.is_empty()
            && num.parse::<f64>().is_ok()
            && matches!(suffix, "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei");
        ok.then(|| Quantity(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The quantity as a number of bytes (rounded down; `m` is a thousandth).
    pub fn bytes(&self) -> u64 {
        let digits_end = self.0.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(self.0.len());
        let (num, suffix) = self.0.split_at(digits_end);
        let n: f64 = num.parse().unwrap_or(0.0);
        let scale: f64 = match suffix {
            "m" => 1e-3,
            "k" => 1e3,
            "M" => 1e6,
            "G" => 1e9,
            "T" => 1e12,
            "P" => 1e15,
            "E" => 1e18,
            "Ki" => 1024.0,
            "Mi" => 1024f64.powi(2),
            "Gi" => 1024f64.powi(3),
            "Ti" => 1024f64.powi(4),
            "Pi" => 1024f64.powi(5),
            "Ei" => 1024f64.powi(6),
            _ => 1.0,
        };
        (n * scale) as u64
    }
}

pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// A key of a Secret or ConfigMap's data, as the API server accepts it.
pub fn is_data_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `name/key` of a ConfigMap or Secret: how the env id and the init container name a reference.
pub fn is_data_reference(r: &str) -> bool {
    r.split_once('/').is_some_and(|(name, key)| is_dns1123_subdomain(name) && is_data_key(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_refuse() {
        assert_eq!(PythonVersion::parse("3.12").unwrap().as_str(), "3.12");
        for bad in ["2.7", "3.", "3.x", "3.12.1.1", "", "3.1234"] {
            assert!(PythonVersion::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(PullPolicy::parse("Never"), Some(PullPolicy::Never));
        assert_eq!(PullPolicy::parse("never"), None);
        for ok in ["100m", "2", "1.5Gi", "512Mi"] {
            assert_eq!(Quantity::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "Gi", "1.5GB", "-1"] {
            assert!(Quantity::parse(bad).is_none(), "{bad}");
        }
        assert!(valid_attr_path("python312Packages.numpy") && !valid_attr_path("a..b"));
    }
}
