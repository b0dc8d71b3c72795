//! The per-Pod options: the keys that say where and how an env reaches a Pod without changing the
//! env itself (`changes_env: false` in [`crate::keys`]): which containers, the images' PATH, where
//! nixuv-init goes. One parser for all of them, beside the declaration's ([`super::deps`]).

use std::collections::BTreeMap;

use crate::keys::{ANN_CONTAINERS, ANN_IMAGE_PATH, ANN_INIT_PLACEMENT};
use crate::values::{valid_path_list, InitPlacement};

/// The options a Pod sets; `None` where it sets none (the config's default applies).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodOptions<'a> {
    /// `nixuv.io/containers`: the names listed, duplicates removed, in order.
    pub containers: Option<Vec<&'a str>>,
    /// `nixuv.io/image-path`.
    pub image_path: Option<&'a str>,
    /// `nixuv.io/init-placement`.
    pub init_placement: Option<InitPlacement>,
}

/// A bad option value; the message names the annotation and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OptionError(String);

/// The options in a Pod's annotations.
pub fn parse(annotations: Option<&BTreeMap<String, String>>) -> Result<PodOptions<'_>, OptionError> {
    let get = |k: &str| annotations.and_then(|a| a.get(k)).map(String::as_str);
    let mut out = PodOptions::default();
    if let Some(list) = get(ANN_CONTAINERS) {
        let mut names: Vec<&str> = Vec::new();
        for name in list.split(|c: char| c == ',' || c.is_whitespace()).filter(|s| !s.is_empty()) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        if names.is_empty() {
            return Err(OptionError(format!("annotation {ANN_CONTAINERS:?}: names no container")));
        }
        out.containers = Some(names);
    }
    if let Some(p) = get(ANN_IMAGE_PATH) {
        if !valid_path_list(p) {
            return Err(OptionError(format!(
                "annotation {ANN_IMAGE_PATH:?}: {p:?} must be a colon-separated list of absolute directories"
            )));
        }
        out.image_path = Some(p);
    }
    if let Some(v) = get(ANN_INIT_PLACEMENT) {
        out.init_placement = Some(InitPlacement::parse(v).ok_or_else(|| {
            OptionError(format!("annotation {ANN_INIT_PLACEMENT:?}: {v:?} is not \"first\" or \"afterSidecars\""))
        })?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_option_and_its_error() {
        let ann = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        assert_eq!(parse(None).unwrap(), PodOptions::default());
        let a = ann(&[
            (ANN_CONTAINERS, "main, worker\nmain"),
            (ANN_IMAGE_PATH, "/opt/conda/bin:/usr/bin"),
            (ANN_INIT_PLACEMENT, "first"),
        ]);
        let o = parse(Some(&a)).unwrap();
        assert_eq!(o.containers.as_deref(), Some(&["main", "worker"][..]));
        assert_eq!(o.image_path, Some("/opt/conda/bin:/usr/bin"));
        assert_eq!(o.init_placement, Some(InitPlacement::First));
        for (k, v, needle) in [
            (ANN_CONTAINERS, " , ", "names no container"),
            (ANN_IMAGE_PATH, "bin:/usr/bin", "colon-separated list of absolute directories"),
            (ANN_IMAGE_PATH, "", "colon-separated"),
            (ANN_INIT_PLACEMENT, "last", "is not \"first\" or \"afterSidecars\""),
        ] {
            let e = parse(Some(&ann(&[(k, v)]))).unwrap_err().to_string();
            assert!(e.contains(k) && e.contains(needle), "{k}={v:?}: {e}");
        }
    }
}
