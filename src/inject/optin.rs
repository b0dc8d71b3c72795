//! Which requests and Pods nixuv acts on, and which containers receive the env
//! (docs/annotations.md).

use super::pod::PodView;
use super::Denial;
use crate::config::Config;
use crate::keys::{ANN_CONTAINERS, LABEL_INJECT};
use crate::review::AdmissionRequest;

/// Only CREATE of core/v1 `pods` (not a subresource such as `pods/ephemeralcontainers`).
pub fn is_pod_create<O>(req: &AdmissionRequest<'_, O>) -> bool {
    req.operation == "CREATE"
        && req.kind.group.is_empty()
        && req.kind.version == "v1"
        && req.kind.kind == "Pod"
        && req.resource.group.is_empty()
        && req.resource.version == "v1"
        && req.resource.resource == "pods"
        && req.sub_resource.as_deref().unwrap_or("").is_empty()
}

/// The label value must be exactly `"true"`.
pub fn opted_in(pod: &PodView) -> bool {
    pod.label(LABEL_INJECT) == Some("true")
}

/// Indices of the containers that receive the env: those named in `nixuv.io/containers`
/// (`named`, from [`crate::plan::options`]), else every container except the known sidecars of
/// the config.
pub fn targets(pod: &PodView, named: Option<&[&str]>, cfg: &Config) -> Result<Vec<usize>, Denial> {
    let containers = pod.containers();
    if containers.is_empty() {
        return Err(Denial::invalid("spec.containers: the Pod has no containers"));
    }
    let names = || containers.iter().map(|c| format!("{:?}", c.name)).collect::<Vec<_>>().join(", ");
    match named {
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for want in list {
                let idx = containers.iter().position(|c| c.name == *want).ok_or_else(|| {
                    Denial::invalid(format!(
                        "annotation {ANN_CONTAINERS:?}: {want:?} is not a container of this Pod (containers: {})",
                        names()
                    ))
                })?;
                if !out.contains(&idx) {
                    out.push(idx);
                }
            }
            out.sort_unstable();
            Ok(out)
        }
        None => {
            let out: Vec<usize> = (0..containers.len())
                .filter(|&i| !cfg.file.sidecars.iter().any(|s| containers[i].name == *s))
                .collect();
            if out.is_empty() {
                return Err(Denial::invalid(format!(
                    "spec.containers: every container ({}) is a known sidecar; name the targets in annotation {ANN_CONTAINERS:?}",
                    names()
                )));
            }
            Ok(out)
        }
    }
}
