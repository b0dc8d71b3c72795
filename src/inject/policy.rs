//! Admin policy: allow/deny globs per ecosystem and the maximum number of deps (SPEC §2).

use super::deps::Declared;
use crate::config::{Config, Verdict};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{origin}: {item:?} is denied by policy.{ecosystem}.deny {glob:?}")]
    Denied { origin: String, item: String, ecosystem: &'static str, glob: String },
    #[error("{origin}: {item:?} is not in policy.{ecosystem}.allow")]
    NotAllowed { origin: String, item: String, ecosystem: &'static str },
    #[error("the Pod declares {count} dependencies, more than maxDeps ({max})")]
    TooMany { count: usize, max: usize },
}

pub fn check(declared: &Declared, cfg: &Config) -> Result<(), PolicyError> {
    let max = cfg.file.max_deps;
    if declared.count() > max {
        return Err(PolicyError::TooMany { count: declared.count(), max });
    }
    let system = declared.system.iter().map(|d| (&cfg.system_policy, "system", d.attr.as_str(), &d.attr, &d.source));
    let python =
        declared.python.iter().map(|d| (&cfg.python_policy, "python", d.name.as_str(), &d.requirement, &d.source));
    for (policy, ecosystem, name, item, source) in system.chain(python) {
        match policy.check(name) {
            Verdict::Allowed => {}
            Verdict::Denied(glob) => {
                return Err(PolicyError::Denied { origin: source.to_string(), item: item.clone(), ecosystem, glob })
            }
            Verdict::NotAllowed => {
                return Err(PolicyError::NotAllowed { origin: source.to_string(), item: item.clone(), ecosystem })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::deps::declared;
    use std::collections::BTreeMap;

    fn ann(sys: &str, py: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("nixuv.io/system-deps".to_string(), sys.to_string()),
            ("nixuv.io/python-deps".to_string(), py.to_string()),
        ])
    }

    #[test]
    fn table() {
        let cfg = Config::from_yaml(
            "maxDeps: 4\npolicy:\n  system: {allow: ['ffmpeg*', 'gcc', 'python3*Packages.*'], deny: ['gcc']}\n  python: {deny: ['evil-*']}\n",
        )
        .unwrap();
        let cases: &[(&str, &str, &str, Option<&str>)] = &[
            ("allowed", "ffmpeg-headless", "numpy", None),
            ("glob with dots", "python312Packages.numpy", "", None),
            ("deny wins over allow", "gcc", "", Some("\"gcc\" is denied by policy.system.deny \"gcc\"")),
            ("not in allow", "curl", "", Some("\"curl\" is not in policy.system.allow")),
            ("python deny uses the normalised name", "", "Evil_Pkg==1", Some("policy.python.deny \"evil-*\"")),
            (
                "max deps",
                "ffmpeg, ffmpeg-full, ffmpeg_7",
                "a, b",
                Some("declares 5 dependencies, more than maxDeps (4)"),
            ),
        ];
        for (name, sys, py, want) in cases {
            let d = declared(None, Some(&ann(sys, py))).unwrap();
            match (check(&d, &cfg), want) {
                (Ok(()), None) => {}
                (Err(e), Some(w)) => assert!(e.to_string().contains(w), "{name}: {e}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn error_names_the_annotation() {
        let cfg = Config::from_yaml("policy: {python: {deny: ['numpy']}}").unwrap();
        let d = declared(None, Some(&ann("", "numpy==1"))).unwrap();
        assert_eq!(
            check(&d, &cfg).unwrap_err().to_string(),
            "annotation \"nixuv.io/python-deps\": \"numpy==1\" is denied by policy.python.deny \"numpy\""
        );
    }
}
