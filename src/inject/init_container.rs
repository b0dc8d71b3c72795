//! The `nixuv-init` container: `nixuv materialize` with the plan in its env, no shell, resources
//! and a securityContext that pass the PodSecurity `restricted` profile; serialised once per env
//! ([`InitText`]) and shared by the patches of all its Pods.

use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::config::Config;
use crate::ecosystem::Ecosystem;
use crate::envspec::EnvSpec;
use crate::names::{CA_MOUNT, INIT_CONTAINER, VOL_CA, VOL_TMP, WORK_DIR};
use crate::plan::EnvPlan;
use crate::values::Quantity;

/// The `nixuv-init` container as JSON text, shared by the patches of all the Pods of an env, and
/// its base64 at each of the three phases it can begin at in a patch (each computed when first
/// needed). base64 encodes 3 bytes at a time, so a piece of a text can be encoded once for every
/// text it appears in at the same phase.
#[derive(Debug)]
pub struct InitText {
    raw: Box<RawValue>,
    encoded: [std::sync::OnceLock<Box<str>>; 3],
}

impl InitText {
    pub fn new(raw: Box<RawValue>) -> Self {
        InitText { raw, encoded: Default::default() }
    }

    pub fn get(&self) -> &str {
        self.raw.get()
    }

    /// Bytes held with all three encodings made, for the memo's byte bound.
    pub fn heap_bytes(&self) -> usize {
        self.get().len() * 5
    }

    /// The base64 of the text from byte `skip` on, cut to a multiple of 3 bytes (no padding).
    pub(super) fn encoded(&self, skip: usize) -> &str {
        self.encoded[skip].get_or_init(|| {
            use base64::Engine;
            let bytes = &self.get().as_bytes()[skip..];
            base64::engine::general_purpose::STANDARD.encode(&bytes[..bytes.len() / 3 * 3]).into()
        })
    }
}

/// The `nixuv-init` container, serialised: built once per env and config (see
/// [`super::memo::EnvOutcome`]) and shared by the patches of all its Pods.
pub fn init_container_text(plan: &EnvPlan, cfg: &Config) -> Arc<InitText> {
    Arc::new(InitText::new(
        serde_json::value::to_raw_value(&init_container(plan, cfg)).expect("a JSON value serialises"),
    ))
}

/// The `nixuv-init` container: `nixuv materialize` with the plan in its env, no shell, and a
/// securityContext that passes the PodSecurity `restricted` profile. Built as JSON directly; tests
/// read it back as a typed k8s-openapi Container.
pub fn init_container(plan: &EnvPlan, cfg: &Config) -> Value {
    let spec_env = EnvSpec::for_plan(plan).to_env();
    let mut env = Vec::with_capacity(spec_env.len() + 2 + cfg.file.init_env.len());
    env.extend(spec_env.into_iter().map(|(name, value)| json!({ "name": name, "value": value })));
    env.push(json!({ "name": "HOME", "value": WORK_DIR }));
    env.push(json!({ "name": "TMPDIR", "value": WORK_DIR }));
    env.extend(cfg.file.init_env.iter().map(|e| match &e.value_from {
        None => json!({ "name": e.name, "value": e.value }),
        Some(from) => {
            let r = &from.secret_key_ref;
            let mut key_ref = json!({ "name": r.name, "key": r.key });
            if let Some(o) = r.optional {
                key_ref["optional"] = json!(o);
            }
            json!({ "name": e.name, "valueFrom": { "secretKeyRef": key_ref } })
        }
    }));
    let uid = cfg.file.init_run_as_user;
    let mut c = json!({
        "name": INIT_CONTAINER,
        "image": cfg.file.init_image,
        "command": ["nixuv", "materialize"],
        "env": env,
        "resources": { "requests": quantities(&cfg.init_requests), "limits": quantities(&cfg.init_limits) },
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "capabilities": { "drop": ["ALL"] },
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "runAsUser": uid,
            "runAsGroup": uid,
            "seccompProfile": { "type": "RuntimeDefault" }
        },
        "volumeMounts": std::iter::once(json!({ "name": VOL_TMP, "mountPath": WORK_DIR }))
            .chain(Ecosystem::ALL.map(|e| json!({ "name": e.volume(), "mountPath": e.init_mount() })))
            .chain(plan.ca_bundle.as_ref().map(|_| json!({ "name": VOL_CA, "mountPath": CA_MOUNT, "readOnly": true })))
            .collect::<Vec<_>>(),
        "terminationMessagePolicy": "FallbackToLogsOnError"
    });
    if let Some(policy) = cfg.pull_policy {
        c["imagePullPolicy"] = json!(policy.as_str());
    }
    c
}

fn quantities(q: &[(String, Quantity)]) -> Value {
    Value::Object(q.iter().map(|(k, v)| (k.clone(), json!(v.as_str()))).collect())
}
