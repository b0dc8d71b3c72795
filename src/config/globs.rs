//! Allow/deny glob lists (`policy.system`, `policy.python`), compiled once.

use globset::{Glob, GlobSet, GlobSetBuilder};

use super::{invalid, ConfigError, GlobListsFile};

/// Compiled allow/deny globs of one ecosystem.
#[derive(Debug, Clone)]
pub struct GlobPolicy {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    allow_set: Option<GlobSet>,
    deny_set: GlobSet,
}

/// What the policy says of one package name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GlobMatch {
    Allowed,
    /// Matched this deny glob.
    Denied(String),
    /// The allow list is set and nothing in it matched.
    NotAllowed,
}

impl GlobPolicy {
    /// Whether the admin set an allow or a deny list.
    pub fn is_set(&self) -> bool {
        !self.allow.is_empty() || !self.deny.is_empty()
    }
    pub(super) fn compile(key: &str, lists: &GlobListsFile) -> Result<Self, ConfigError> {
        let build = |which: &str, globs: &[String]| -> Result<GlobSet, ConfigError> {
            let mut b = GlobSetBuilder::new();
            for (i, g) in globs.iter().enumerate() {
                let glob = Glob::new(g).map_err(|e| invalid(format!("{key}.{which}[{i}]"), format!("{g:?}: {e}")))?;
                b.add(glob);
            }
            b.build().map_err(|e| invalid(format!("{key}.{which}"), e.to_string()))
        };
        Ok(Self {
            allow: lists.allow.clone(),
            deny: lists.deny.clone(),
            allow_set: if lists.allow.is_empty() { None } else { Some(build("allow", &lists.allow)?) },
            deny_set: build("deny", &lists.deny)?,
        })
    }

    pub fn check(&self, name: &str) -> GlobMatch {
        if let Some(i) = self.deny_set.matches(name).first() {
            return GlobMatch::Denied(self.deny[*i].clone());
        }
        match &self.allow_set {
            Some(set) if !set.is_match(name) => GlobMatch::NotAllowed,
            _ => GlobMatch::Allowed,
        }
    }
}
