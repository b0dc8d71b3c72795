//! The PodSecurity `restricted` rules (Kubernetes Pod Security Standards, v1.25+) that apply to a
//! container and the Pod's volumes, checked on typed objects. Returns the violations.

use k8s_openapi::api::core::v1::{Container, Pod};

pub fn restricted_violations(pod: &Pod, container: &Container) -> Vec<String> {
    let mut v = Vec::new();
    let spec = pod.spec.as_ref().expect("pod has a spec");
    let psc = spec.security_context.clone().unwrap_or_default();
    let sc = container.security_context.clone().unwrap_or_default();
    // Baseline.
    if sc.privileged == Some(true) {
        v.push("privileged".into());
    }
    if spec.host_network == Some(true) || spec.host_pid == Some(true) || spec.host_ipc == Some(true) {
        v.push("host namespaces".into());
    }
    if container.ports.iter().flatten().any(|p| p.host_port.unwrap_or(0) != 0) {
        v.push("hostPort".into());
    }
    if sc.proc_mount.as_deref().is_some_and(|m| m != "Default") {
        v.push("procMount".into());
    }
    // Restricted.
    const ALLOWED_VOLUMES: &[&str] =
        &["configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"];
    for vol in spec.volumes.iter().flatten() {
        let j = serde_json::to_value(vol).unwrap();
        for key in j.as_object().unwrap().keys().filter(|k| *k != "name") {
            if !ALLOWED_VOLUMES.contains(&key.as_str()) {
                v.push(format!("volume {} of type {key}", vol.name));
            }
        }
    }
    if sc.allow_privilege_escalation != Some(false) {
        v.push("allowPrivilegeEscalation must be false".into());
    }
    if !(sc.run_as_non_root == Some(true) || (sc.run_as_non_root.is_none() && psc.run_as_non_root == Some(true))) {
        v.push("runAsNonRoot must be true".into());
    }
    if sc.run_as_user.or(psc.run_as_user) == Some(0) {
        v.push("runAsUser must not be 0".into());
    }
    let seccomp = sc.seccomp_profile.as_ref().or(psc.seccomp_profile.as_ref()).map(|p| p.type_.as_str());
    if !matches!(seccomp, Some("RuntimeDefault" | "Localhost")) {
        v.push("seccompProfile must be RuntimeDefault or Localhost".into());
    }
    let caps = sc.capabilities.clone().unwrap_or_default();
    if !caps.drop.iter().flatten().any(|c| c == "ALL") {
        v.push("capabilities must drop ALL".into());
    }
    if caps.add.iter().flatten().any(|c| c != "NET_BIND_SERVICE") {
        v.push("capabilities may add only NET_BIND_SERVICE".into());
    }
    v
}
