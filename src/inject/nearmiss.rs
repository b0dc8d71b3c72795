//! Near misses: a Pod (or a workload's own metadata) that looks as if it meant to use nixuv but
//! will not get what it asked for — a marker on the wrong level, an annotation instead of a label,
//! `True` instead of `true`, dependencies without the opt-in label, a misspelt key, an excluded
//! namespace. Each becomes a warning that names the field to change; none is a denial. The webhook
//! returns them as admission warnings (what `kubectl` prints) and `nixuv preview` prints them.

use std::collections::BTreeMap;

use crate::keys::{self, KeyKind, ANN_ENV, ANN_STATUS, LABEL_INJECT, LABEL_PYTHON_PREFIX, LABEL_SYSTEM_PREFIX};

/// The registry's names of one kind.
fn known(kind: KeyKind) -> Vec<&'static str> {
    keys::KEYS.iter().filter(|k| k.kind == kind).map(|k| k.name).collect()
}

/// The known key closest to `key`, if it is close enough to be a slip.
fn closest(key: &str, known: &[&'static str]) -> Option<&'static str> {
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(key, k), *k))
        .filter(|(score, _)| *score >= 0.9)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

/// Whether these labels and annotations declare any dependency.
pub fn declares_deps(
    labels: Option<&BTreeMap<String, String>>,
    annotations: Option<&BTreeMap<String, String>>,
) -> bool {
    let dep_label = |k: &String| k.starts_with(LABEL_SYSTEM_PREFIX) || k.starts_with(LABEL_PYTHON_PREFIX);
    annotations.is_some_and(|a| a.contains_key(keys::ANN_SYSTEM) || a.contains_key(keys::ANN_PYTHON))
        || labels.is_some_and(|l| l.keys().any(dep_label))
}

/// Whether these labels and annotations carry anything of nixuv's (opt-in, deps, settings).
pub fn mentions_nixuv(
    labels: Option<&BTreeMap<String, String>>,
    annotations: Option<&BTreeMap<String, String>>,
) -> bool {
    labels.into_iter().chain(annotations).flat_map(|m| m.keys()).any(|k| keys::is_nixuv_key(k))
}

/// The near misses of one object's metadata. `at` is where that metadata sits
/// (`metadata`, `spec.template.metadata`, ...), for the messages.
pub fn metadata_warnings(
    at: &str,
    labels: Option<&BTreeMap<String, String>>,
    annotations: Option<&BTreeMap<String, String>>,
) -> Vec<String> {
    let (known_annotations, known_labels) = (known(KeyKind::Annotation), known(KeyKind::Label));
    let mut out = Vec::new();
    let label = labels.and_then(|l| l.get(LABEL_INJECT));
    let opted_in = label.map(String::as_str) == Some("true");
    if let Some(v) = label.filter(|_| !opted_in) {
        out.push(format!("nixuv: {at}.labels[{LABEL_INJECT:?}] is {v:?}; only \"true\" opts in (set it to \"true\")"));
    }
    if let Some(v) = annotations.and_then(|a| a.get(LABEL_INJECT)) {
        if !opted_in {
            out.push(format!(
                "nixuv: {LABEL_INJECT} is an annotation ({at}.annotations, {v:?}); it must be a label: set {at}.labels[{LABEL_INJECT:?}] to \"true\""
            ));
        }
    }
    if !opted_in && label.is_none() && declares_deps(labels, annotations) {
        out.push(format!(
            "nixuv: {at} declares dependencies but is not labelled {LABEL_INJECT}=true, so nothing is injected: add {at}.labels[{LABEL_INJECT:?}] = \"true\""
        ));
    }
    for (k, _) in annotations.into_iter().flatten() {
        if k.starts_with(LABEL_SYSTEM_PREFIX) || k.starts_with(LABEL_PYTHON_PREFIX) {
            out.push(format!("nixuv: {k} is an annotation ({at}.annotations); dependency keys with this prefix are read from {at}.labels only"));
        } else if k.starts_with("nixuv.io/") && !known_annotations.contains(&k.as_str()) && k != LABEL_INJECT {
            out.push(unknown(at, "annotations", k, &known_annotations));
        }
    }
    for (k, _) in labels.into_iter().flatten() {
        if k.starts_with("nixuv.io/") && !known_labels.contains(&k.as_str()) {
            if known_annotations.contains(&k.as_str()) && k != ANN_STATUS && k != ANN_ENV {
                out.push(format!("nixuv: {k} is a label ({at}.labels); it is read from {at}.annotations (label values cannot hold lists)"));
            } else {
                out.push(unknown(at, "labels", k, &known_labels));
            }
        }
    }
    out
}

fn unknown(at: &str, field: &str, key: &str, known: &[&'static str]) -> String {
    let all: Vec<&'static str> = keys::KEYS.iter().filter(|k| k.kind != KeyKind::LabelPrefix).map(|k| k.name).collect();
    match closest(key, known).or_else(|| closest(key, &all)) {
        Some(k) => format!("nixuv: {at}.{field}[{key:?}] is not a key nixuv knows; did you mean {k:?}?"),
        None => format!("nixuv: {at}.{field}[{key:?}] is not a key nixuv knows (docs/annotations.md lists them)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn each_near_miss_names_the_field() {
        let cases: &[(&[(&str, &str)], &[(&str, &str)], &str)] = &[
            (&[("nixuv.io/inject", "True")], &[], "only \"true\" opts in"),
            (&[("nixuv.io/inject", "yes")], &[], "metadata.labels[\"nixuv.io/inject\"] is \"yes\""),
            (&[], &[("nixuv.io/inject", "true")], "it must be a label"),
            (&[], &[("nixuv.io/system-deps", "gcc")], "not labelled nixuv.io/inject=true"),
            (&[("python.nixuv.io/numpy", "")], &[], "not labelled nixuv.io/inject=true"),
            (
                &[("nixuv.io/inject", "true")],
                &[("nixuv.io/python-dep", "six")],
                "did you mean \"nixuv.io/python-deps\"",
            ),
            (
                &[("nixuv.io/inject", "true")],
                &[("nixuv.io/sytem-deps", "gcc")],
                "did you mean \"nixuv.io/system-deps\"",
            ),
            (&[("nixuv.io/inject", "true")], &[("system.nixuv.io/gcc", "")], "read from metadata.labels only"),
            (&[("nixuv.io/inject", "true"), ("nixuv.io/containers", "main")], &[], "is read from metadata.annotations"),
            (&[("nixuv.io/injet", "true")], &[], "did you mean \"nixuv.io/inject\""),
        ];
        for (labels, ann, needle) in cases {
            let (l, a) = (map(labels), map(ann));
            let w = metadata_warnings("metadata", Some(&l), Some(&a));
            assert!(w.iter().any(|m| m.contains(needle)), "{labels:?} {ann:?}: {w:?}");
        }
        // A correct declaration has none.
        let l = map(&[("nixuv.io/inject", "true"), ("python.nixuv.io/numpy", "1.26.4")]);
        let a = map(&[("nixuv.io/system-deps", "gcc"), ("nixuv.io/python", "3.12"), ("other.io/x", "y")]);
        assert_eq!(metadata_warnings("metadata", Some(&l), Some(&a)), Vec::<String>::new());
        assert_eq!(metadata_warnings("metadata", None, None), Vec::<String>::new());
    }
}
