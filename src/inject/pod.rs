//! The parts of a Pod that nixuv reads. Everything else in the object is skipped by the parser
//! and never copied: the patch only adds, so it never needs the rest.

use std::collections::BTreeMap;

use std::marker::PhantomData;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// Accepts only a JSON object for `T`. serde's derived structs also accept an array (fields by
/// position); a Kubernetes object never is one, and a patch built for an object cannot apply to an
/// array (found by fuzzing), so the parts the patch writes into must be objects.
struct Obj<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(V(PhantomData)).map(Obj)
    }
}

fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    Ok(Option::<Obj<T>>::deserialize(d)?.map(|o| o.0))
}

fn objects<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Vec<T>>, D::Error> {
    Ok(Option::<Vec<Obj<T>>>::deserialize(d)?.map(|v| v.into_iter().map(|o| o.0).collect()))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodView {
    #[serde(deserialize_with = "object")]
    pub metadata: Option<MetaView>,
    #[serde(deserialize_with = "object")]
    pub spec: Option<SpecView>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MetaView {
    pub name: Option<String>,
    pub generate_name: Option<String>,
    pub namespace: Option<String>,
    /// nixuv's own labels only (see [`own_entries`]).
    #[serde(deserialize_with = "own_entries")]
    pub labels: Option<BTreeMap<String, String>>,
    /// nixuv's own annotations only.
    #[serde(deserialize_with = "own_entries")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// A map key, borrowed from the input where it has no escapes: most keys are not nixuv's and
/// are looked at once, never kept.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_string())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A labels or annotations object, keeping only nixuv's keys ([`super::nearmiss::is_nixuv_key`]:
/// `nixuv.io/…` and the dependency prefixes): nothing in nixuv reads the others, and a Pod's
/// other annotations (a `kubectl.kubernetes.io/last-applied-configuration` of kilobytes) would
/// otherwise be copied on every admission. Their values are skipped, whatever their type. The map
/// is there (perhaps empty) exactly when the object is: the patch adds to an existing one.
fn own_entries<'de, D: Deserializer<'de>>(d: D) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<BTreeMap<String, String>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object of strings")
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
                if super::nearmiss::is_nixuv_key(&k) {
                    let v: String = map.next_value()?;
                    out.insert(k.into_owned(), v);
                } else {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
            Ok(Some(out))
        }
    }
    d.deserialize_option(V)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SpecView {
    #[serde(deserialize_with = "objects")]
    pub volumes: Option<Vec<VolumeView>>,
    #[serde(deserialize_with = "objects")]
    pub init_containers: Option<Vec<ContainerView>>,
    #[serde(deserialize_with = "objects")]
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
pub struct VolumeView {
    pub name: String,
    pub persistent_volume_claim: Option<ClaimRefView>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ClaimRefView {
    pub claim_name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ContainerView {
    pub name: String,
    pub image: Option<String>,
    /// `Always` on an init container makes it a native sidecar.
    pub restart_policy: Option<String>,
    #[serde(deserialize_with = "objects")]
    pub env: Option<Vec<EnvView>>,
    #[serde(deserialize_with = "objects")]
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
    pub read_only: Option<bool>,
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
    pub fn volumes(&self) -> &[VolumeView] {
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
    /// The variable `name` as the container will see it: the last entry of that name (the
    /// kubelet applies them in order, so a later duplicate wins).
    pub fn env_var(&self, name: &str) -> Option<(usize, &EnvView)> {
        self.env.as_deref()?.iter().enumerate().rev().find(|(_, e)| e.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_where_objects_belong_are_rejected() {
        // Each of these once parsed (serde reads a struct from an array by position) and gave a
        // patch that could not apply.
        for bad in [
            r#"{"metadata": ["p", null, null, {"nixuv.io/inject": "true"}]}"#,
            r#"{"spec": [null, null, [["app"]]]}"#,
            r#"{"spec": {"containers": [["app"]]}}"#,
            r#"{"spec": {"containers": [{"name": "app", "env": [["PATH", "/bin"]]}]}}"#,
        ] {
            assert!(serde_json::from_str::<PodView>(bad).is_err(), "{bad}");
        }
        let ok: PodView =
            serde_json::from_str(r#"{"metadata": null, "spec": {"containers": [{"name": "a", "env": null}]}}"#)
                .unwrap();
        assert_eq!(ok.containers()[0].name, "a");
    }
}
