//! The parts of a Pod that nixuv reads. Everything else in the object is skipped by the parser
//! and never copied: the patch only adds, so it never needs the rest.

use std::collections::BTreeMap;

use std::marker::PhantomData;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

pub use crate::review::Str;

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
pub struct PodView<'a> {
    #[serde(borrow, deserialize_with = "object")]
    pub metadata: Option<MetaView<'a>>,
    #[serde(borrow, deserialize_with = "object")]
    pub spec: Option<SpecView<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MetaView<'a> {
    #[serde(borrow)]
    pub name: Option<Str<'a>>,
    #[serde(borrow)]
    pub generate_name: Option<Str<'a>>,
    #[serde(borrow)]
    pub namespace: Option<Str<'a>>,
    /// nixuv's own labels only (see [`own_entries`]).
    #[serde(deserialize_with = "own_entries")]
    pub labels: Option<BTreeMap<String, String>>,
    /// nixuv's own annotations only.
    #[serde(deserialize_with = "own_entries")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// A labels or annotations object, keeping only nixuv's keys ([`crate::keys::is_nixuv_key`]:
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
            while let Some(Str(k)) = map.next_key::<Str<'de>>()? {
                if crate::keys::is_nixuv_key(&k) {
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
pub struct SpecView<'a> {
    #[serde(borrow, deserialize_with = "objects")]
    pub volumes: Option<Vec<VolumeView<'a>>>,
    #[serde(borrow, deserialize_with = "objects")]
    pub init_containers: Option<Vec<ContainerView<'a>>>,
    #[serde(borrow, deserialize_with = "objects")]
    pub containers: Option<Vec<ContainerView<'a>>>,
    #[serde(borrow)]
    pub ephemeral_containers: Option<Vec<Named<'a>>>,
    #[serde(borrow)]
    pub image_pull_secrets: Option<Vec<Named<'a>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Named<'a> {
    #[serde(borrow)]
    pub name: Str<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VolumeView<'a> {
    #[serde(borrow)]
    pub name: Str<'a>,
    #[serde(borrow)]
    pub persistent_volume_claim: Option<ClaimRefView<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ClaimRefView<'a> {
    #[serde(borrow)]
    pub claim_name: Str<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ContainerView<'a> {
    #[serde(borrow)]
    pub name: Str<'a>,
    #[serde(borrow)]
    pub image: Option<Str<'a>>,
    /// `Always` on an init container makes it a native sidecar.
    #[serde(borrow)]
    pub restart_policy: Option<Str<'a>>,
    #[serde(borrow, deserialize_with = "objects")]
    pub env: Option<Vec<EnvView<'a>>>,
    #[serde(borrow, deserialize_with = "objects")]
    pub volume_mounts: Option<Vec<MountView<'a>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct EnvView<'a> {
    #[serde(borrow)]
    pub name: Str<'a>,
    #[serde(borrow)]
    pub value: Option<Str<'a>>,
    pub value_from: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MountView<'a> {
    #[serde(borrow)]
    pub name: Str<'a>,
    #[serde(borrow)]
    pub mount_path: Str<'a>,
    pub read_only: Option<bool>,
}

impl<'a> PodView<'a> {
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
    pub fn containers(&self) -> &[ContainerView<'a>] {
        self.spec.as_ref().and_then(|s| s.containers.as_deref()).unwrap_or(&[])
    }
    pub fn init_containers(&self) -> &[ContainerView<'a>] {
        self.spec.as_ref().and_then(|s| s.init_containers.as_deref()).unwrap_or(&[])
    }
    pub fn volumes(&self) -> &[VolumeView<'a>] {
        self.spec.as_ref().and_then(|s| s.volumes.as_deref()).unwrap_or(&[])
    }
    pub fn ephemeral_containers(&self) -> &[Named<'a>] {
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

impl<'a> ContainerView<'a> {
    /// The variable `name` as the container will see it: the last entry of that name (the
    /// kubelet applies them in order, so a later duplicate wins).
    pub fn env_var(&self, name: &str) -> Option<(usize, &EnvView<'a>)> {
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

    #[test]
    fn strings_are_borrowed_from_the_input_unless_escaped() {
        use std::borrow::Cow;
        let json =
            r#"{"spec":{"containers":[{"name":"app","image":"r.io\/app","env":[{"name":"PATH","value":"/bin"}]}]}}"#;
        let pod: PodView = serde_json::from_str(json).unwrap();
        let c = &pod.containers()[0];
        assert!(matches!(c.name.0, Cow::Borrowed("app")));
        assert!(matches!(&c.image.as_ref().unwrap().0, Cow::Owned(s) if s == "r.io/app"));
        assert!(matches!(c.env_var("PATH").unwrap().1.value.as_ref().unwrap().0, Cow::Borrowed("/bin")));
        // From a `Value` (previews) they borrow from it.
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        let pod = PodView::deserialize(&v).unwrap();
        assert!(matches!(pod.containers()[0].image.as_ref().unwrap().0, Cow::Borrowed("r.io/app")));
        assert_eq!(format!("{:?}", pod.containers()[0].name), "\"app\"");
    }
}
