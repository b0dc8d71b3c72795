//! The parts of a Pod that nixuv reads. Everything else in the object is skipped by the parser
//! and never copied: the patch only adds, so it never needs the rest.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodView {
    pub metadata: Option<MetaView>,
    pub spec: Option<SpecView>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MetaView {
    pub name: Option<String>,
    pub generate_name: Option<String>,
    pub namespace: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SpecView {
    pub volumes: Option<Vec<Named>>,
    pub init_containers: Option<Vec<ContainerView>>,
    pub containers: Option<Vec<ContainerView>>,
    pub ephemeral_containers: Option<Vec<Named>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Named {
    pub name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ContainerView {
    pub name: String,
    pub env: Option<Vec<EnvView>>,
    pub volume_mounts: Option<Vec<MountView>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct EnvView {
    pub name: String,
    pub value: Option<String>,
    pub value_from: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MountView {
    pub name: String,
    pub mount_path: String,
}

impl PodView {
    pub fn labels(&self) -> Option<&BTreeMap<String, String>> {
        self.metadata.as_ref()?.labels.as_ref()
    }
    pub fn annotations(&self) -> Option<&BTreeMap<String, String>> {
        self.metadata.as_ref()?.annotations.as_ref()
    }
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels()?.get(key).map(String::as_str)
    }
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations()?.get(key).map(String::as_str)
    }
    pub fn containers(&self) -> &[ContainerView] {
        self.spec.as_ref().and_then(|s| s.containers.as_deref()).unwrap_or(&[])
    }
    pub fn init_containers(&self) -> &[ContainerView] {
        self.spec.as_ref().and_then(|s| s.init_containers.as_deref()).unwrap_or(&[])
    }
    pub fn volumes(&self) -> &[Named] {
        self.spec.as_ref().and_then(|s| s.volumes.as_deref()).unwrap_or(&[])
    }
    pub fn ephemeral_containers(&self) -> &[Named] {
        self.spec.as_ref().and_then(|s| s.ephemeral_containers.as_deref()).unwrap_or(&[])
    }
    /// A short name for logs and messages: `name`, else `generateName*`, else `<unnamed>`.
    pub fn display_name(&self) -> String {
        let m = self.metadata.as_ref();
        match (m.and_then(|m| m.name.as_deref()), m.and_then(|m| m.generate_name.as_deref())) {
            (Some(n), _) if !n.is_empty() => n.to_string(),
            (_, Some(g)) if !g.is_empty() => format!("{g}*"),
            _ => "<unnamed>".into(),
        }
    }
}

impl ContainerView {
    pub fn env_var(&self, name: &str) -> Option<(usize, &EnvView)> {
        self.env.as_deref()?.iter().enumerate().find(|(_, e)| e.name == name)
    }
}
