//! Admin policy: allow/deny globs per ecosystem and the maximum number of deps
//! (docs/configuration.md).

use crate::config::{Config, GlobMatch};
use crate::plan::deps::Declared;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{origin}: {item:?} is denied by policy.{ecosystem}.deny {glob:?}")]
    Denied { origin: String, item: String, ecosystem: &'static str, glob: String },
    #[error("{origin}: {item:?} is not in policy.{ecosystem}.allow")]
    NotAllowed { origin: String, item: String, ecosystem: &'static str },
    #[error("the Pod declares {count} dependencies, more than maxDeps ({max})")]
    TooMany { count: usize, max: usize },
    #[error("{origin}: {item:?} reaches its package through the package-set alias {alias:?}, which policy.system cannot check; name the package itself")]
    Alias { origin: String, item: String, alias: String },
}

/// The first segment of a nixpkgs attribute path that is another view of the whole package set
/// (`pkgs.tor`, `buildPackages.nmap`, `pkgsCross.<platform>.x`, `pkgsStatic.x`,
/// `python312Packages.pkgs.x`, `python3.pkgs.x`): through it any package is reachable under a
/// name the policy's globs do not see. `pkgsite` and the like (no capital or digit after `pkgs`)
/// are packages, not aliases.
pub fn package_set_alias(attr: &str) -> Option<&str> {
    attr.split('.').find(|seg| {
        *seg == "pkgs"
            || matches!(*seg, "buildPackages" | "targetPackages" | "__splicedPackages" | "splicedPackages")
            || seg.strip_prefix("pkgs").is_some_and(|rest| {
                rest.starts_with(|c: char| {
                    c.is_ascii_uppercase()
                        || c.is_ascii_digit()
                        || c == 'i' && rest[1..].starts_with(|c: char| c.is_ascii_digit())
                })
            })
    })
}

pub fn check(declared: &Declared, cfg: &Config) -> Result<(), PolicyError> {
    let max = cfg.file.max_deps;
    if declared.count() > max {
        return Err(PolicyError::TooMany { count: declared.count(), max });
    }
    if cfg.system_policy.is_set() {
        for d in &declared.system {
            if let Some(alias) = package_set_alias(&d.attr) {
                return Err(PolicyError::Alias {
                    origin: d.source.to_string(),
                    item: d.attr.clone(),
                    alias: alias.to_string(),
                });
            }
        }
    }
    let system = declared.system.iter().map(|d| (&cfg.system_policy, "system", d.attr.as_str(), &d.attr, &d.source));
    let python =
        declared.python.iter().map(|d| (&cfg.python_policy, "python", d.name.as_str(), &d.requirement, &d.source));
    for (policy, ecosystem, name, item, source) in system.chain(python) {
        match policy.check(name) {
            GlobMatch::Allowed => {}
            GlobMatch::Denied(glob) => {
                return Err(PolicyError::Denied { origin: source.to_string(), item: item.clone(), ecosystem, glob })
            }
            GlobMatch::NotAllowed => {
                return Err(PolicyError::NotAllowed { origin: source.to_string(), item: item.clone(), ecosystem })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_of_the_package_set_are_found() {
        for a in [
            "pkgs.tor",
            "buildPackages.nmap",
            "pkgsCross.aarch64-multiplatform.nmap",
            "pkgsStatic.busybox",
            "pkgsi686Linux.nmap",
            "pkgsMusl.tor",
            "python312Packages.pkgs.nmap",
            "python3.pkgs.requests",
            "targetPackages.tor",
        ] {
            assert!(package_set_alias(a).is_some(), "{a}");
        }
        for a in ["tor", "nmap", "pkgsite", "python312Packages.numpy", "pkg-config", "haskellPackages.pkgs-x"] {
            assert_eq!(package_set_alias(a), None, "{a}");
        }
        let cfg = Config::from_yaml("policy:\n  system: {deny: ['tor*', 'nmap*']}\n").unwrap();
        for a in ["pkgs.tor", "buildPackages.nmap"] {
            let d = declared(None, Some(&ann(a, ""))).unwrap();
            let e = check(&d, &cfg).unwrap_err();
            assert!(matches!(e, PolicyError::Alias { .. }), "{a}: {e}");
        }
        let cfg = Config::from_yaml("policy:\n  system: {allow: ['python3*Packages.*']}\n").unwrap();
        let d = declared(None, Some(&ann("python312Packages.pkgs.nmap", ""))).unwrap();
        assert!(matches!(check(&d, &cfg), Err(PolicyError::Alias { .. })));
        // Without a system policy there is nothing to bypass.
        let d = declared(None, Some(&ann("pkgsStatic.busybox", ""))).unwrap();
        assert!(check(&d, &Config::default()).is_ok());
    }
    use crate::plan::deps::declared;
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
