//! The one registry of the labels, annotations and label prefixes nixuv reads or writes on Pods
//! (docs/annotations.md lists exactly these, checked by a test). Everything that needs to know
//! "is this one of nixuv's keys?" reads [`KEYS`]: the Pod parser's filter, the near-miss hints,
//! the check for keys put on a workload's or Workflow's own metadata, the declaration that the
//! env id is computed from, and the messages that list the declaration's keys. Adding a key is one
//! entry here (and its parser in `plan::deps` or `plan::options`). Bottom layer: no imports.

/// Where a key lives on an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// `metadata.labels[name]`.
    Label,
    /// `metadata.annotations[name]`.
    Annotation,
    /// Every `metadata.labels` key that starts with the name.
    LabelPrefix,
}

/// Who sets a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetBy {
    /// The Pod's author: nixuv reads it.
    User,
    /// nixuv, on the Pods it injects.
    Nixuv,
}

/// One key of nixuv's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub name: &'static str,
    pub kind: KeyKind,
    pub set_by: SetBy,
    /// Whether its value is part of the declaration the env id is computed from (a change makes
    /// another env). Such keys are memoised together ([`declaration_keys`]).
    pub changes_env: bool,
    /// One line for users.
    pub description: &'static str,
}

impl Key {
    const fn user(name: &'static str, kind: KeyKind, changes_env: bool, description: &'static str) -> Key {
        Key { name, kind, set_by: SetBy::User, changes_env, description }
    }

    /// Whether `key`, found at `kind`'s place, is this key.
    pub fn matches(&self, key: &str) -> bool {
        match self.kind {
            KeyKind::LabelPrefix => key.starts_with(self.name),
            KeyKind::Label | KeyKind::Annotation => key == self.name,
        }
    }
}

pub const INJECT: Key = Key::user("nixuv.io/inject", KeyKind::Label, false, "opts a Pod in: exactly \"true\"");
pub const SYSTEM_DEPS: Key =
    Key::user("nixuv.io/system-deps", KeyKind::Annotation, true, "system packages: nixpkgs attribute paths");
pub const PYTHON_DEPS: Key =
    Key::user("nixuv.io/python-deps", KeyKind::Annotation, true, "Python packages: PEP 508 requirements");
pub const PYTHON_VERSION: Key =
    Key::user("nixuv.io/python", KeyKind::Annotation, true, "the interpreter version (3, 3.X or 3.X.Y)");
pub const EXCLUDE_NEWER: Key = Key::user(
    "nixuv.io/exclude-newer",
    KeyKind::Annotation,
    true,
    "resolve Python deps as of this RFC 3339 date-time (overrides python.excludeNewer)",
);
pub const PYTHON_MODE: Key =
    Key::user("nixuv.io/python-mode", KeyKind::Annotation, true, "venv or overlay: how Python deps reach the app");
pub const CONTAINERS: Key =
    Key::user("nixuv.io/containers", KeyKind::Annotation, false, "the containers that receive the env");
pub const INIT_PLACEMENT: Key = Key::user(
    "nixuv.io/init-placement",
    KeyKind::Annotation,
    false,
    "first or afterSidecars: where nixuv-init goes among the init containers",
);
pub const IMAGE_PATH: Key =
    Key::user("nixuv.io/image-path", KeyKind::Annotation, false, "the PATH of the Pod's images");
pub const SYSTEM_LABELS: Key =
    Key::user("system.nixuv.io/", KeyKind::LabelPrefix, true, "one system package per label (value \"\" or \"true\")");
pub const PYTHON_LABELS: Key =
    Key::user("python.nixuv.io/", KeyKind::LabelPrefix, true, "one Python package per label (value: its version)");
pub const STATUS: Key = Key {
    name: "nixuv.io/status",
    kind: KeyKind::Annotation,
    set_by: SetBy::Nixuv,
    changes_env: false,
    description: "\"injected\" on a Pod nixuv injected",
};
pub const ENV: Key = Key {
    name: "nixuv.io/env",
    kind: KeyKind::Annotation,
    set_by: SetBy::Nixuv,
    changes_env: false,
    description: "the env id of a Pod nixuv injected",
};

/// Every key, in the order docs/annotations.md lists them.
pub const KEYS: &[Key] = &[
    INJECT,
    SYSTEM_DEPS,
    PYTHON_DEPS,
    SYSTEM_LABELS,
    PYTHON_LABELS,
    PYTHON_VERSION,
    PYTHON_MODE,
    EXCLUDE_NEWER,
    CONTAINERS,
    IMAGE_PATH,
    INIT_PLACEMENT,
    STATUS,
    ENV,
];

// The names as plain strings, for patterns and formats.
pub const LABEL_INJECT: &str = INJECT.name;
pub const ANN_SYSTEM: &str = SYSTEM_DEPS.name;
pub const ANN_PYTHON: &str = PYTHON_DEPS.name;
pub const ANN_PYTHON_VERSION: &str = PYTHON_VERSION.name;
pub const ANN_PYTHON_MODE: &str = PYTHON_MODE.name;
pub const ANN_EXCLUDE_NEWER: &str = EXCLUDE_NEWER.name;
pub const ANN_CONTAINERS: &str = CONTAINERS.name;
pub const ANN_INIT_PLACEMENT: &str = INIT_PLACEMENT.name;
pub const ANN_IMAGE_PATH: &str = IMAGE_PATH.name;
pub const ANN_STATUS: &str = STATUS.name;
pub const ANN_ENV: &str = ENV.name;
pub const LABEL_SYSTEM_PREFIX: &str = SYSTEM_LABELS.name;
pub const LABEL_PYTHON_PREFIX: &str = PYTHON_LABELS.name;
/// The value of [`STATUS`] on an injected Pod.
pub const STATUS_INJECTED: &str = "injected";

/// The key `key` is at `kind`'s place, if it is one of nixuv's.
pub fn find(kind: KeyKind, key: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| match (k.kind, kind) {
        (KeyKind::LabelPrefix, KeyKind::Label) => k.matches(key),
        (a, b) => a == b && k.matches(key),
    })
}

/// A key of nixuv's domain, known or not: under `nixuv.io/` or a dependency label prefix. The
/// Pod parser keeps exactly these (the near-miss hints need the unknown ones too).
pub fn is_nixuv_key(key: &str) -> bool {
    key.starts_with("nixuv.io/") || KEYS.iter().any(|k| k.kind == KeyKind::LabelPrefix && k.matches(key))
}

/// The annotations a user sets.
pub fn user_annotations() -> impl Iterator<Item = &'static Key> {
    KEYS.iter().filter(|k| k.kind == KeyKind::Annotation && k.set_by == SetBy::User)
}

/// The keys whose values make the declaration an env id is computed from.
pub fn declaration_keys() -> impl Iterator<Item = &'static Key> {
    KEYS.iter().filter(|k| k.changes_env)
}

/// The declaration's keys as users read them in a message: `nixuv.io/system-deps, ...,
/// system.nixuv.io/*, python.nixuv.io/*`.
pub fn declaration_list(only_deps: bool) -> String {
    let mut names: Vec<String> = declaration_keys()
        .filter(|k| !only_deps || matches!(k.name, ANN_SYSTEM | ANN_PYTHON) || k.kind == KeyKind::LabelPrefix)
        .map(|k| match k.kind {
            KeyKind::LabelPrefix => format!("{}*", k.name),
            _ => k.name.to_string(),
        })
        .collect();
    // Annotations first, as the messages always listed them.
    names.sort_by_key(|n| n.ends_with('*'));
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/annotations.md lists exactly the registry's keys: every key in a table row or list
    /// item of its own, and no `nixuv.io` key the registry does not have.
    #[test]
    fn the_docs_list_exactly_these_keys() {
        let docs = include_str!("../docs/annotations.md");
        for k in KEYS {
            assert!(docs.contains(&format!("`{}", k.name)), "docs/annotations.md does not list {}", k.name);
        }
        let re = regex::Regex::new(r"`((?:[a-z]+\.)?nixuv\.io/[A-Za-z0-9_.-]*)").unwrap();
        for m in re.captures_iter(docs) {
            let name = &m[1];
            let known =
                KEYS.iter().any(|k| k.name == name || (k.kind == KeyKind::LabelPrefix && name.starts_with(k.name)));
            assert!(known, "docs/annotations.md names {name:?}, which is not in the registry");
        }
    }

    #[test]
    fn lookups() {
        assert_eq!(find(KeyKind::Label, "python.nixuv.io/numpy"), Some(&PYTHON_LABELS));
        assert_eq!(find(KeyKind::Annotation, "python.nixuv.io/numpy"), None);
        assert_eq!(find(KeyKind::Annotation, ANN_IMAGE_PATH), Some(&IMAGE_PATH));
        assert_eq!(find(KeyKind::Label, ANN_IMAGE_PATH), None);
        assert!(is_nixuv_key("nixuv.io/typo") && !is_nixuv_key("app.kubernetes.io/name"));
        assert_eq!(
            declaration_list(false),
            "nixuv.io/system-deps, nixuv.io/python-deps, nixuv.io/python, nixuv.io/python-mode, nixuv.io/exclude-newer, system.nixuv.io/*, python.nixuv.io/*"
        );
        assert_eq!(
            declaration_list(true),
            "nixuv.io/system-deps, nixuv.io/python-deps, system.nixuv.io/*, python.nixuv.io/*"
        );
    }
}
