//! From the file to [`Config`]: every key checked once, with an error that names it.

use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::names::RESERVED_INIT_ENV_PREFIX;
use crate::toolenv::{effective_index, tool_scope, valid_index_url, FIXED_TOOL_ENV};
use crate::values::{PullPolicy, PythonVersion, Quantity};
use globset::{Glob, GlobSetBuilder};

/// The variables whose value says where packages come from: part of the env id by value, so they
/// cannot come from a Secret (their credentials can, as `UV_INDEX_<NAME>_USERNAME` / `_PASSWORD`).
const SOURCE_VARS: &[&str] = &["UV_DEFAULT_INDEX", "UV_INDEX_URL", "UV_INDEX", "UV_EXTRA_INDEX_URL", "UV_FIND_LINKS"];

/// Whether `value` holds a URL with user-info (`scheme://user[:password]@host`). Checked by hand
/// because the values are lists and `name=url` forms, not single URLs.
fn has_url_credentials(value: &str) -> bool {
    value.match_indices("://").any(|(i, _)| {
        let rest = &value[i + 3..];
        let authority = rest.split(|c: char| c == '/' || c == ',' || c.is_whitespace()).next().unwrap_or("");
        authority.contains('@')
    })
}

/// A container image's repository: no tag, no digest, and Docker Hub's implicit
/// `docker.io/library/` dropped, so `python`, `python:3.12` and `docker.io/library/python@sha256:…`
/// are all `python`.
pub fn image_repository(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    let repo = match no_digest.rfind(':') {
        Some(i) if !no_digest[i..].contains('/') => &no_digest[..i],
        _ => no_digest,
    };
    let repo = repo.strip_prefix("docker.io/").or_else(|| repo.strip_prefix("index.docker.io/")).unwrap_or(repo);
    repo.strip_prefix("library/").unwrap_or(repo)
}

/// Whether a flake reference names a fixed commit: a `github:`, `gitlab:` or `sourcehut:`
/// reference whose last path segment, or `rev=` parameter, is a full 40-hex commit; a `git+` URL
/// with `rev=`; a `path:` (a local tree, not moved by anyone upstream). Anything else is a branch
/// or a tag, which moves: the same env id would hold other packages next month.
pub fn pinned_flake_ref(r: &str) -> bool {
    let is_rev = |s: &str| s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let (base, query) = r.split_once('?').unwrap_or((r, ""));
    if query.split('&').any(|kv| kv.strip_prefix("rev=").is_some_and(is_rev)) {
        return true;
    }
    if r.starts_with("path:") || r.starts_with('/') {
        return true;
    }
    ["github:", "gitlab:", "sourcehut:"].iter().any(|p| base.starts_with(p))
        && base.split('/').count() >= 3
        && base.rsplit('/').next().is_some_and(is_rev)
}

/// A label key (an optional DNS-subdomain prefix and `/`, then a name of at most 63 characters)
/// and value, as Kubernetes accepts them.
fn valid_label(key: &str, value: &str) -> bool {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.len() <= 63
            && n.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && n.starts_with(|c: char| c.is_ascii_alphanumeric())
            && n.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    let (prefix, name) = key.rsplit_once('/').unwrap_or(("", key));
    (prefix.is_empty() || is_dns1123_subdomain(prefix)) && name_ok(name) && (value.is_empty() || name_ok(value))
}

fn validate_stores(s: &StoresFile) -> Result<(), ConfigError> {
    let invalid = |field: &str, why: String| ConfigError::Invalid { key: format!("stores.{field}"), message: why };
    for (field, size) in [("nixSize", &s.nix_size), ("uvSize", &s.uv_size), ("uvCacheMaxSize", &s.uv_cache_max_size)] {
        if Quantity::parse(size).is_none() {
            return Err(invalid(field, format!("{size:?} is not a quantity like 50Gi")));
        }
    }
    const MODES: &[&str] = &["ReadWriteMany", "ReadWriteOnce", "ReadOnlyMany", "ReadWriteOncePod"];
    if s.access_modes.is_empty() || s.access_modes.iter().any(|m| !MODES.contains(&m.as_str())) {
        return Err(invalid("accessModes", format!("{:?}: each must be one of {MODES:?}", s.access_modes)));
    }
    match s.namespace_label.split_once('=') {
        Some((k, v)) if valid_label(k, v) => {}
        _ => return Err(invalid("namespaceLabel", format!("{:?} is not a label key=value", s.namespace_label))),
    }
    if s.gc_schedule.split_whitespace().count() != 5 {
        return Err(invalid("gcSchedule", format!("{:?} is not a cron schedule of five fields", s.gc_schedule)));
    }
    if humantime::parse_duration(&s.gc_max_age).is_err() {
        return Err(invalid("gcMaxAge", format!("{:?} is not a duration like 14d", s.gc_max_age)));
    }
    if let Some(c) = s.storage_class_name.as_deref().filter(|c| !is_dns1123_subdomain(c)) {
        return Err(invalid("storageClassName", format!("{c:?} is not a storage class name")));
    }
    if s.lease_duration_seconds == 0
        || s.renew_deadline_seconds == 0
        || s.renew_deadline_seconds >= s.lease_duration_seconds
    {
        return Err(invalid(
            "renewDeadlineSeconds",
            format!(
                "{} must be at least 1 and less than leaseDurationSeconds ({})",
                s.renew_deadline_seconds, s.lease_duration_seconds
            ),
        ));
    }
    Ok(())
}

fn validate_image_store(s: &ImageStoreFile) -> Result<crate::imagestore::Repository, ConfigError> {
    let invalid = |field: &str, why: String| ConfigError::Invalid { key: format!("imageStore.{field}"), message: why };
    let repo = crate::imagestore::Repository::parse(&s.repository)
        .map_err(|why| invalid("repository", format!("{:?}: {why}", s.repository)))?;
    for (field, secret) in [("pullSecret", &s.pull_secret), ("pushSecret", &s.push_secret)] {
        if let Some(n) = secret.as_deref().filter(|n| !is_dns1123_subdomain(n)) {
            return Err(invalid(field, format!("{n:?} is not a Secret name")));
        }
    }
    Ok(repo)
}

impl Config {
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        Self::from_yaml_with(text, &Overrides::default())
    }

    pub fn from_yaml_with(text: &str, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut file: ConfigFile = if text.trim().is_empty() {
            ConfigFile::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?
        };
        if let Some(image) = overrides.init_image.as_deref().filter(|i| !i.trim().is_empty()) {
            file.init_image = image.to_string();
        }
        Self::validate_in(file, overrides.own_namespace.as_deref())
    }

    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with(path, &Overrides::default())
    }

    pub fn load_with(path: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let text = match path {
            None => String::new(),
            Some(p) => std::fs::read_to_string(p)
                .map_err(|source| ConfigError::Read { path: p.display().to_string(), source })?,
        };
        Self::from_yaml_with(&text, overrides)
    }

    pub fn validate(file: ConfigFile) -> Result<Self, ConfigError> {
        Self::validate_in(file, None)
    }

    /// Validates `file` for a webhook running in `own_namespace` (always excluded; the config's
    /// `namespace`, else this, else `nixuv-system`).
    pub fn validate_in(file: ConfigFile, own_namespace: Option<&str>) -> Result<Self, ConfigError> {
        if file.init_image.trim().is_empty() {
            return Err(invalid("initImage", "must not be empty"));
        }
        let pull_policy = match &file.init_image_pull_policy {
            None => None,
            Some(p) => Some(PullPolicy::parse(p).ok_or_else(|| {
                invalid("initImagePullPolicy", format!("{p:?} is not one of Always, IfNotPresent, Never"))
            })?),
        };
        if file.init_run_as_user <= 0 {
            return Err(invalid("initRunAsUser", "must be a non-root uid (> 0) to pass PodSecurity restricted"));
        }
        if file.nixpkgs.trim().is_empty() || file.nixpkgs.chars().any(|c| c.is_whitespace()) {
            return Err(invalid("nixpkgs", format!("{:?} is not a flake reference", file.nixpkgs)));
        }
        let default_python = PythonVersion::parse(&file.default_python).ok_or_else(|| {
            invalid("defaultPython", format!("{:?} is not a Python version like 3.12", file.default_python))
        })?;
        if !valid_path_list(&file.default_path) {
            return Err(invalid(
                "defaultPath",
                format!("{:?} must be a colon-separated list of absolute directories", file.default_path),
            ));
        }
        for (key, claim) in [("storage.nixClaim", &file.storage.nix_claim), ("storage.uvClaim", &file.storage.uv_claim)]
        {
            if !is_dns1123_subdomain(claim) {
                return Err(invalid(key, format!("{claim:?} is not a valid PersistentVolumeClaim name")));
            }
        }
        for (i, ns) in file.exclude_namespaces.iter().enumerate() {
            if !is_dns1123_label(ns) {
                return Err(invalid(format!("excludeNamespaces[{i}]"), format!("{ns:?} is not a namespace name")));
            }
        }
        if let Some(ns) = &file.namespace {
            if !is_dns1123_label(ns) {
                return Err(invalid("namespace", format!("{ns:?} is not a namespace name")));
            }
        }
        if file.max_deps == 0 {
            return Err(invalid("maxDeps", "must be at least 1"));
        }
        if file.max_containers == 0 {
            return Err(invalid("maxContainers", "must be at least 1"));
        }
        for (i, e) in file.init_env.iter().enumerate() {
            if e.name.is_empty()
                || !e.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                || e.name.starts_with(|c: char| c.is_ascii_digit())
            {
                return Err(invalid(
                    format!("initEnv[{i}].name"),
                    format!("{:?} is not an environment variable name", e.name),
                ));
            }
            if file.init_env[..i].iter().any(|p| p.name == e.name) {
                return Err(invalid(format!("initEnv[{i}].name"), format!("{:?} is set twice", e.name)));
            }
            if e.name.starts_with(RESERVED_INIT_ENV_PREFIX) || FIXED_TOOL_ENV.contains(&e.name.as_str()) {
                return Err(invalid(format!("initEnv[{i}].name"), format!("{:?} is set by nixuv itself", e.name)));
            }
            if has_url_credentials(&e.value) {
                return Err(invalid(
                    format!("initEnv[{i}].value"),
                    format!("{}: a URL with credentials would be written into every Pod spec; give the URL without them and the credentials from a Secret (valueFrom.secretKeyRef), e.g. UV_INDEX_<NAME>_USERNAME and UV_INDEX_<NAME>_PASSWORD for an index named <name>=URL", e.name),
                ));
            }
            if let Some(from) = &e.value_from {
                let r = &from.secret_key_ref;
                if !e.value.is_empty() {
                    return Err(invalid(
                        format!("initEnv[{i}]"),
                        format!("{}: set value or valueFrom, not both", e.name),
                    ));
                }
                if SOURCE_VARS.contains(&e.name.as_str()) {
                    return Err(invalid(
                        format!("initEnv[{i}].valueFrom"),
                        format!("{}: where packages come from is part of the env id, so it is given as value; only credentials come from a Secret (UV_INDEX_<NAME>_USERNAME / _PASSWORD)", e.name),
                    ));
                }
                if !is_dns1123_subdomain(&r.name) {
                    return Err(invalid(
                        format!("initEnv[{i}].valueFrom.secretKeyRef.name"),
                        format!("{:?} is not a Secret name", r.name),
                    ));
                }
                if !crate::values::is_data_key(&r.key) {
                    return Err(invalid(
                        format!("initEnv[{i}].valueFrom.secretKeyRef.key"),
                        format!("{:?} is not a Secret key", r.key),
                    ));
                }
            }
        }
        let quantities =
            |section: &str, map: &BTreeMap<String, String>| -> Result<Vec<(String, Quantity)>, ConfigError> {
                for res in ["cpu", "memory"] {
                    if !map.contains_key(res) {
                        return Err(invalid(
                            format!("initResources.{section}.{res}"),
                            "must be set (ResourceQuota rejects containers without requests and limits)",
                        ));
                    }
                }
                map.iter()
                    .map(|(res, v)| {
                        let q = Quantity::parse(v).ok_or_else(|| {
                            invalid(format!("initResources.{section}.{res}"), format!("{v:?} is not a quantity"))
                        })?;
                        Ok((res.clone(), q))
                    })
                    .collect()
            };
        let mut globs = GlobSetBuilder::new();
        for (i, e) in file.image_paths.iter().enumerate() {
            let glob = Glob::new(&e.image)
                .map_err(|err| invalid(format!("imagePaths[{i}].image"), format!("{:?}: {err}", e.image)))?;
            globs.add(glob);
            if !valid_path_list(&e.path) {
                return Err(invalid(
                    format!("imagePaths[{i}].path"),
                    format!("{:?} must be a colon-separated list of absolute directories", e.path),
                ));
            }
        }
        let image_paths = ImagePaths {
            globs: globs.build().map_err(|e| invalid("imagePaths", e.to_string()))?,
            paths: file.image_paths.iter().map(|e| e.path.clone()).collect(),
        };
        if let Some(t) = file.python.exclude_newer.as_deref().filter(|t| !crate::values::valid_rfc3339(t)) {
            return Err(invalid(
                "python.excludeNewer",
                format!("{t:?} is not an RFC 3339 date-time like 2025-06-01T00:00:00Z"),
            ));
        }
        validate_ca_bundle(&file)?;
        validate_stores(&file.stores)?;
        let image_repository = match &file.image_store {
            Some(is) => Some(validate_image_store(is)?),
            None => None,
        };
        let init_requests = quantities("requests", &file.init_resources.requests)?;
        let init_limits = quantities("limits", &file.init_resources.limits)?;
        let system_policy = GlobPolicy::compile("policy.system", &file.policy.system)?;
        let python_policy = GlobPolicy::compile("policy.python", &file.policy.python)?;

        let mut excluded_namespaces = file.exclude_namespaces.clone();
        let own =
            file.namespace.clone().or_else(|| own_namespace.map(String::from)).unwrap_or_else(|| "nixuv-system".into());
        if !excluded_namespaces.contains(&own) {
            excluded_namespaces.push(own.clone());
        }
        let mut tool_env: Vec<(String, String)> = file
            .init_env
            .iter()
            .filter(|e| tool_scope(&e.name).is_some() && e.value_from.is_none())
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect();
        tool_env.sort();
        let mut secret_env: Vec<(String, String)> = file
            .init_env
            .iter()
            .filter(|e| tool_scope(&e.name).is_some())
            .filter_map(|e| Some((e.name.clone(), e.value_from.as_ref()?.secret_key_ref.reference())))
            .collect();
        secret_env.sort();
        let index_url = effective_index(tool_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if let Some(i) = ["UV_DEFAULT_INDEX", "UV_INDEX_URL"]
            .iter()
            .find_map(|k| file.init_env.iter().position(|e| e.name == *k))
            .filter(|_| !valid_index_url(&index_url))
        {
            return Err(invalid(format!("initEnv[{i}].value"), format!("{index_url:?} is not an http(s) or file URL")));
        }
        let ca_bundle = file.ca_bundle.as_ref().map(CaBundleFile::reference);
        Ok(Self {
            file,
            excluded_namespaces,
            own_namespace: own,
            system_policy,
            python_policy,
            default_python,
            pull_policy,
            image_paths,
            init_requests,
            init_limits,
            index_url,
            tool_env,
            secret_env,
            ca_bundle,
            image_repository,
        })
    }
}

/// The variables nixuv sets for uv and nix when `caBundle` is set.
pub const CA_VARS: &[&str] = &["SSL_CERT_FILE", "NIX_SSL_CERT_FILE"];

/// `caBundle`: a ConfigMap name and key; with it, `initEnv` may not set the variables it sets.
fn validate_ca_bundle(file: &ConfigFile) -> Result<(), ConfigError> {
    let Some(ca) = &file.ca_bundle else { return Ok(()) };
    if !crate::values::is_dns1123_subdomain(&ca.config_map) {
        return Err(invalid("caBundle.configMap", format!("{:?} is not a ConfigMap name", ca.config_map)));
    }
    if !crate::values::is_data_key(&ca.key) {
        return Err(invalid("caBundle.key", format!("{:?} is not a ConfigMap key", ca.key)));
    }
    if let Some(i) = file.init_env.iter().position(|e| CA_VARS.contains(&e.name.as_str())) {
        return Err(invalid(
            format!("initEnv[{i}].name"),
            format!(
                "{}: caBundle is set, and nixuv points {} at its certificates (with the image's own); remove one of the two",
                file.init_env[i].name,
                CA_VARS.join(" and ")
            ),
        ));
    }
    Ok(())
}
