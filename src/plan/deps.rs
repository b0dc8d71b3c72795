//! Annotations and labels -> system attribute paths and PEP 508 requirements
//! (docs/annotations.md).

use std::collections::BTreeMap;
use std::str::FromStr;

use pep508_rs::{Requirement, VersionOrUrl};

use crate::keys::{
    ANN_EXCLUDE_NEWER, ANN_PYTHON, ANN_PYTHON_MODE, ANN_PYTHON_VERSION, ANN_SYSTEM, LABEL_PYTHON_PREFIX,
    LABEL_SYSTEM_PREFIX,
};
pub use crate::values::{valid_attr_path, valid_python_version};
use crate::values::{valid_rfc3339, PythonMode};

/// Where a dependency was declared, for error messages: `annotation "nixuv.io/system-deps"` or
/// `label "python.nixuv.io/numpy"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Annotation(&'static str),
    Label(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Annotation(k) => write!(f, "annotation {k:?}"),
            Source::Label(k) => write!(f, "label {k:?}"),
        }
    }
}

/// A bad declaration: names where it came from and the offending item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {item:?}: {reason}")]
pub struct DepError {
    pub origin: Source,
    pub item: String,
    pub reason: String,
}

/// Every bad item of a declaration, in the order declared: a denial lists them all, so that one
/// round of fixes is enough.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclarationErrors(pub Vec<DepError>);

impl std::fmt::Display for DeclarationErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DeclarationErrors {}

/// A label value as the API server accepts it: at most 63 of letters, digits, `-`, `_`, `.`,
/// beginning and ending with a letter or digit (or empty).
fn valid_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

fn dep_err(source: &Source, item: &str, reason: impl Into<String>) -> DepError {
    DepError { origin: source.clone(), item: item.to_string(), reason: reason.into() }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemDep {
    /// The nixpkgs attribute path, e.g. `python312Packages.numpy`.
    pub attr: String,
    pub source: Source,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonDep {
    /// The normalised package name (PEP 503), e.g. `typing-extensions`.
    pub name: String,
    /// The normalised requirement, e.g. `requests[socks]>=2 ; python_full_version >= '3.9'`.
    pub requirement: String,
    pub source: Source,
}

/// Everything a Pod declared, merged from both forms in order, duplicates removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Declared {
    pub system: Vec<SystemDep>,
    pub python: Vec<PythonDep>,
    /// From `nixuv.io/python`, if set.
    pub python_version: Option<String>,
    /// From `nixuv.io/python-mode`, if set.
    pub python_mode: Option<PythonMode>,
    /// From `nixuv.io/exclude-newer`, if set: resolve as of this date-time (overrides the
    /// config's `python.excludeNewer`).
    pub exclude_newer: Option<String>,
}

impl Declared {
    pub fn is_empty(&self) -> bool {
        self.system.is_empty() && self.python.is_empty()
    }
    pub fn count(&self) -> usize {
        self.system.len() + self.python.len()
    }
}

/// Splits a system dep list on commas, newlines and whitespace.
fn split_system(list: &str) -> impl Iterator<Item = &str> {
    list.split(|c: char| c == ',' || c.is_whitespace()).filter(|s| !s.is_empty())
}

/// Splits a Python dep list on commas and newlines, except that a comma followed by a version
/// operator continues the current requirement (`pandas>=2,<3`), and separators inside extras
/// brackets or quoted marker strings do not split. PEP 508 has no notion of a list, so no parser
/// crate offers this; it is a small scanner.
pub fn split_python(list: &str) -> Vec<&str> {
    let bytes = list.as_bytes();
    let mut items = Vec::new();
    let (mut start, mut depth, mut quote) = (0usize, 0i32, None::<u8>);
    fn push<'a>(list: &'a str, from: usize, to: usize, items: &mut Vec<&'a str>) {
        let item = list[from..to].trim();
        if !item.is_empty() {
            items.push(item);
        }
    }
    for (i, &b) in bytes.iter().enumerate() {
        match (quote, b) {
            (Some(q), _) if b == q => quote = None,
            (Some(_), b'\n') => {
                // An unterminated quote ends at the line; the parser will report it.
                quote = None;
                push(list, start, i, &mut items);
                start = i + 1;
            }
            (Some(_), _) => {}
            (None, b'"' | b'\'') => quote = Some(b),
            (None, b'[' | b'(') => depth += 1,
            (None, b']' | b')') => depth -= 1,
            (None, b'\n') => {
                depth = 0;
                push(list, start, i, &mut items);
                start = i + 1;
            }
            (None, b',') if depth <= 0 => {
                let next = list[i + 1..].trim_start_matches([' ', '\t', '\r']).bytes().next();
                if !matches!(next, Some(b'<' | b'>' | b'=' | b'!' | b'~')) {
                    push(list, start, i, &mut items);
                    start = i + 1;
                }
            }
            _ => {}
        }
    }
    push(list, start, list.len(), &mut items);
    items
}

/// Parses and normalises one PEP 508 requirement; rejects URLs, paths and pip options.
/// Longest accepted dependency item: real ones are far shorter, and each ends up in the Pod.
pub const MAX_ITEM_LEN: usize = 256;

pub fn parse_requirement(item: &str, source: &Source) -> Result<PythonDep, DepError> {
    if item.len() > MAX_ITEM_LEN {
        return Err(dep_err(source, &truncate(item), format!("longer than {MAX_ITEM_LEN} characters")));
    }
    if item.starts_with('-') {
        return Err(dep_err(
            source,
            item,
            "pip options are not allowed; declare a requirement such as \"numpy==1.26.4\"",
        ));
    }
    if item.chars().any(|c| c.is_control()) {
        return Err(dep_err(source, item, "control characters are not allowed"));
    }
    if item.starts_with(['.', '/', '~']) || item.contains("://") {
        return Err(dep_err(source, item, "URLs and local paths are not allowed; use a package name and version"));
    }
    // PEP 508 names start and end with a letter or digit. pep508_rs 0.9.2 panics (an `expect` in
    // its name parser) on a name ending in `.`, `-` or `_` followed by an operator (`A-!`, found
    // by fuzzing), so that case is rejected here first, and the parser runs under catch_unwind so
    // that any other such bug becomes a denial instead of a dropped connection.
    let name_end =
        item.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))).unwrap_or(item.len());
    if item[..name_end].ends_with(['.', '-', '_']) {
        return Err(dep_err(
            source,
            item,
            "not a PEP 508 requirement: the package name must end with a letter or digit",
        ));
    }
    let parsed = std::panic::catch_unwind(|| Requirement::<pep508_rs::VerbatimUrl>::from_str(item))
        .map_err(|_| dep_err(source, item, "not a PEP 508 requirement: the parser rejected it"))?;
    let req: Requirement =
        parsed.map_err(|e| dep_err(source, item, format!("not a PEP 508 requirement: {}", e.message)))?;
    if let Some(VersionOrUrl::Url(_)) = req.version_or_url {
        return Err(dep_err(source, item, "URL requirements are not allowed; use a package name and version"));
    }
    Ok(PythonDep { name: req.name.to_string(), requirement: req.to_string(), source: source.clone() })
}

/// The first 64 characters of a long item, for messages.
fn truncate(item: &str) -> String {
    match item.char_indices().nth(64) {
        Some((i, _)) => format!("{}...", &item[..i]),
        None => item.to_string(),
    }
}

fn parse_system(item: &str, source: &Source) -> Result<SystemDep, DepError> {
    if item.len() > MAX_ITEM_LEN {
        return Err(dep_err(source, &truncate(item), format!("longer than {MAX_ITEM_LEN} characters")));
    }
    if !valid_attr_path(item) {
        return Err(dep_err(source, item, "not a nixpkgs attribute path (letters, digits, _ ' - separated by dots)"));
    }
    Ok(SystemDep { attr: item.to_string(), source: source.clone() })
}

/// Reads the declarations (docs/annotations.md) from a Pod's annotations and labels. Annotations
/// come first, then labels in key order. Every bad item is reported, not only the first.
pub fn declared(
    labels: Option<&BTreeMap<String, String>>,
    annotations: Option<&BTreeMap<String, String>>,
) -> Result<Declared, DeclarationErrors> {
    let mut out = Declared::default();
    let mut errors = Vec::new();
    let push_system = |d: Result<SystemDep, DepError>, out: &mut Declared, errors: &mut Vec<DepError>| match d {
        Ok(d) if !out.system.iter().any(|s| s.attr == d.attr) => out.system.push(d),
        Ok(_) => {}
        Err(e) => errors.push(e),
    };
    let push_python = |d: Result<PythonDep, DepError>, out: &mut Declared, errors: &mut Vec<DepError>| match d {
        Ok(d) if !out.python.iter().any(|p| p.requirement == d.requirement) => out.python.push(d),
        Ok(_) => {}
        Err(e) => errors.push(e),
    };
    if let Some(ann) = annotations {
        if let Some(list) = ann.get(ANN_SYSTEM) {
            let src = Source::Annotation(ANN_SYSTEM);
            for item in split_system(list) {
                push_system(parse_system(item, &src), &mut out, &mut errors);
            }
        }
        if let Some(list) = ann.get(ANN_PYTHON) {
            let src = Source::Annotation(ANN_PYTHON);
            for item in split_python(list) {
                push_python(parse_requirement(item, &src), &mut out, &mut errors);
            }
        }
        if let Some(v) = ann.get(ANN_PYTHON_VERSION) {
            let v = v.trim();
            match valid_python_version(v) {
                true => out.python_version = Some(v.to_string()),
                false => errors.push(dep_err(
                    &Source::Annotation(ANN_PYTHON_VERSION),
                    v,
                    "not a Python 3 version such as \"3.12\"",
                )),
            }
        }
        if let Some(v) = ann.get(ANN_PYTHON_MODE) {
            let v = v.trim();
            match PythonMode::parse(v) {
                Some(mode) => out.python_mode = Some(mode),
                None => {
                    errors.push(dep_err(&Source::Annotation(ANN_PYTHON_MODE), v, "must be \"venv\" or \"overlay\""))
                }
            }
        }
        if let Some(v) = ann.get(ANN_EXCLUDE_NEWER) {
            let v = v.trim();
            match valid_rfc3339(v) {
                true => out.exclude_newer = Some(v.to_string()),
                false => errors.push(dep_err(
                    &Source::Annotation(ANN_EXCLUDE_NEWER),
                    v,
                    "not an RFC 3339 date-time such as \"2025-06-01T00:00:00Z\"",
                )),
            }
        }
    }
    if let Some(labels) = labels {
        for (key, value) in labels {
            if let Some(attr) = key.strip_prefix(LABEL_SYSTEM_PREFIX) {
                let src = Source::Label(key.clone());
                match value.as_str() {
                    "" | "true" => push_system(parse_system(attr, &src), &mut out, &mut errors),
                    "false" => {}
                    other => errors.push(dep_err(&src, other, "value must be empty, \"true\" or \"false\"")),
                }
            } else if let Some(name) = key.strip_prefix(LABEL_PYTHON_PREFIX) {
                let src = Source::Label(key.clone());
                if !valid_label_value(value) {
                    // `2.5.1+cpu`, `>=2`: a label cannot hold them (the API server refuses the
                    // Pod); the annotation can.
                    let requirement = if value.starts_with(['<', '>', '=', '!', '~']) {
                        format!("{name}{value}")
                    } else {
                        format!("{name}=={value}")
                    };
                    errors.push(dep_err(
                        &src,
                        value,
                        format!(
                            "a label value holds only letters, digits, '-', '_' and '.' (the API server refuses this Pod): declare it in annotation {ANN_PYTHON:?} instead: \"{requirement}\""
                        ),
                    ));
                    continue;
                }
                let item = if value.is_empty() { name.to_string() } else { format!("{name}=={value}") };
                push_python(parse_requirement(&item, &src), &mut out, &mut errors);
            }
        }
    }
    match errors.is_empty() {
        true => Ok(out),
        false => Err(DeclarationErrors(errors)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn python_list_splitting() {
        let cases: &[(&str, &str, &[&str])] = &[
            ("simple", "numpy, pandas", &["numpy", "pandas"]),
            (
                "specifier continues",
                "numpy==1.26.4, pandas>=2,<3, requests[socks]",
                &["numpy==1.26.4", "pandas>=2,<3", "requests[socks]"],
            ),
            ("space before operator", "pandas>=2, <3,scipy", &["pandas>=2, <3", "scipy"]),
            ("extras with commas", "requests[socks,security]>=2", &["requests[socks,security]>=2"]),
            ("newlines", "numpy\npandas\n\n", &["numpy", "pandas"]),
            (
                "quoted marker comma",
                "a; platform_system in 'Linux,Darwin', b",
                &["a; platform_system in 'Linux,Darwin'", "b"],
            ),
            ("not-equal continues", "a>1,!=1.5,b", &["a>1,!=1.5", "b"]),
            ("compatible continues", "a~=1.0,<2", &["a~=1.0,<2"]),
            ("empty", " , ,\n", &[]),
        ];
        for (name, input, want) in cases {
            assert_eq!(split_python(input), *want, "case {name}");
        }
    }

    #[test]
    fn attr_paths() {
        for ok in ["gcc", "python312Packages.numpy", "_x", "ffmpeg-headless", "a'b", "xorg.libX11"] {
            assert!(valid_attr_path(ok), "{ok}");
        }
        for bad in ["", ".", "a.", ".a", "1gcc", "a..b", "a b", "a/b", "$(rm)", "a;b", "-rf", "a.1b", "ünï"] {
            assert!(!valid_attr_path(bad), "{bad}");
        }
    }

    #[test]
    fn requirements_normalised_or_rejected() {
        let src = Source::Annotation(ANN_PYTHON);
        let ok: &[(&str, &str, &str)] = &[
            ("NumPy==1.26.4", "numpy", "numpy==1.26.4"),
            ("pandas>=2,<3", "pandas", "pandas>=2,<3"),
            ("Requests[SOCKS]", "requests", "requests[socks]"),
            ("typing_extensions", "typing-extensions", "typing-extensions"),
        ];
        for (input, name, _) in ok {
            let d = parse_requirement(input, &src).unwrap();
            assert_eq!(d.name, *name, "{input}");
        }
        let marker = parse_requirement("requests[socks]; python_version > \"3.8\"", &src).unwrap();
        assert!(marker.requirement.starts_with("requests[socks]"), "{}", marker.requirement);
        assert!(
            marker.requirement.contains("python_full_version") || marker.requirement.contains("python_version"),
            "{}",
            marker.requirement
        );
        for bad in [
            "foo @ https://example.com/foo.whl",
            "https://example.com/foo.whl",
            "./local/pkg",
            "/abs/path",
            "-e git+https://x",
            "--index-url=https://evil",
            "foo==",
            "foo bar",
            "foo\u{0}",
            "foo; os.system('x')",
            // Found by fuzzing: made pep508_rs panic.
            "A-!",
            "K.==1",
            "a_<2",
        ] {
            let e = parse_requirement(bad, &src).expect_err(bad);
            assert_eq!(e.item, bad);
            assert!(e.to_string().contains("nixuv.io/python-deps"), "{e}");
        }
    }

    #[test]
    fn both_forms_merged_in_order_without_duplicates() {
        let ann = map(&[
            (ANN_SYSTEM, "gcc, gnumake\npython312Packages.numpy gcc"),
            (ANN_PYTHON, "numpy==1.26.4, pandas>=2,<3"),
            (ANN_PYTHON_VERSION, "3.11"),
        ]);
        let labels = map(&[
            ("nixuv.io/inject", "true"),
            ("system.nixuv.io/ffmpeg-headless", ""),
            ("system.nixuv.io/gcc", "true"),
            ("system.nixuv.io/curl", "false"),
            ("python.nixuv.io/numpy", "1.26.4"),
            ("python.nixuv.io/rich", ""),
        ]);
        let d = declared(Some(&labels), Some(&ann)).unwrap();
        let sys: Vec<_> = d.system.iter().map(|s| s.attr.as_str()).collect();
        assert_eq!(sys, ["gcc", "gnumake", "python312Packages.numpy", "ffmpeg-headless"]);
        let py: Vec<_> = d.python.iter().map(|p| p.requirement.as_str()).collect();
        assert_eq!(py, ["numpy==1.26.4", "pandas>=2,<3", "rich"]);
        assert_eq!(d.python_version.as_deref(), Some("3.11"));
        assert_eq!(d.python[2].source, Source::Label("python.nixuv.io/rich".into()));
    }

    #[test]
    fn errors_name_the_label_or_annotation() {
        let cases: &[(&[(&str, &str)], &[(&str, &str)], &str, &str)] = &[
            (&[("system.nixuv.io/gcc", "yes")], &[], "label \"system.nixuv.io/gcc\"", "yes"),
            (&[("python.nixuv.io/numpy", "latest!")], &[], "label \"python.nixuv.io/numpy\"", "numpy==latest!"),
            (&[], &[(ANN_SYSTEM, "gcc $(reboot)")], "annotation \"nixuv.io/system-deps\"", "$(reboot)"),
            (&[], &[(ANN_PYTHON_VERSION, "2.7")], "annotation \"nixuv.io/python\"", "2.7"),
        ];
        for (labels, ann, source, item) in cases {
            let e = declared(Some(&map(labels)), Some(&map(ann))).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(source) && msg.contains(&format!("{item:?}")), "{msg}");
        }
    }

    #[test]
    fn python_versions() {
        for ok in ["3", "3.12", "3.12.4", "3.9"] {
            assert!(valid_python_version(ok), "{ok}");
        }
        for bad in ["", "2.7", "3.", "3.x", "3.12.4.1", "three", "3.1234", " 3.12"] {
            assert!(!valid_python_version(bad), "{bad}");
        }
    }

    #[test]
    fn a_denial_lists_every_bad_item_and_labels_name_the_annotation_to_use() {
        let labels = BTreeMap::from([
            ("python.nixuv.io/torch".to_string(), "2.5.1+cpu".to_string()),
            ("python.nixuv.io/pandas".to_string(), ">=2".to_string()),
            ("python.nixuv.io/six".to_string(), "1.16.0".to_string()),
        ]);
        let ann = BTreeMap::from([
            (ANN_SYSTEM.to_string(), "gcc, $(reboot), jq, rm -rf".to_string()),
            (ANN_PYTHON_VERSION.to_string(), "2.7".to_string()),
        ]);
        let e = declared(Some(&labels), Some(&ann)).unwrap_err();
        let items: Vec<&str> = e.0.iter().map(|d| d.item.as_str()).collect();
        assert_eq!(items, ["$(reboot)", "-rf", "2.7", ">=2", "2.5.1+cpu"], "{e}");
        let text = e.to_string();
        assert!(text.contains(r#"label "python.nixuv.io/torch": "2.5.1+cpu": a label value holds only"#), "{text}");
        assert!(text.contains(r#"annotation "nixuv.io/python-deps" instead: "torch==2.5.1+cpu""#), "{text}");
        assert!(text.contains(r#"instead: "pandas>=2""#), "{text}");
        assert_eq!(text.matches("; ").count(), 4, "{text}");
    }

    #[test]
    fn exclude_newer_per_pod() {
        let ann = |v: &str| {
            BTreeMap::from([
                (ANN_PYTHON.to_string(), "pandas".to_string()),
                (ANN_EXCLUDE_NEWER.to_string(), v.to_string()),
            ])
        };
        let d = declared(None, Some(&ann("2025-06-01T00:00:00Z"))).unwrap();
        assert_eq!(d.exclude_newer.as_deref(), Some("2025-06-01T00:00:00Z"));
        let e = declared(None, Some(&ann("last week"))).unwrap_err().to_string();
        assert!(e.contains(r#"annotation "nixuv.io/exclude-newer": "last week": not an RFC 3339 date-time"#), "{e}");
        // It is part of the env id, and overrides the config's.
        let cfg = crate::config::Config::from_yaml("python: {excludeNewer: '2024-01-01T00:00:00Z'}").unwrap();
        let plan = |d: &Declared| crate::plan::EnvPlan::new(d, cfg.plan_inputs());
        let pinned = plan(&d);
        assert_eq!(pinned.exclude_newer.as_deref(), Some("2025-06-01T00:00:00Z"));
        let default =
            plan(&declared(None, Some(&BTreeMap::from([(ANN_PYTHON.to_string(), "pandas".to_string())]))).unwrap());
        assert_eq!(default.exclude_newer.as_deref(), Some("2024-01-01T00:00:00Z"));
        assert_ne!(pinned.id, default.id);
    }
}
