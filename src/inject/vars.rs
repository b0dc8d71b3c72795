//! The variables nixuv sets on target containers, in one table ([`TargetVar::ALL`]): what each
//! is set to, whether a value the container already has is kept after nixuv's or refused, and
//! how nixuv recognises its own entries. The conflict check, the patch of a new Pod and the
//! re-injection of an old one all read it, so a new variable is one row here.

use crate::envid::EnvId;
use crate::names::ENV_ID;
use crate::plan::EnvPlan;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetVar {
    /// The env's `bin` directories in front of the container's PATH.
    Path,
    /// Overlay mode: the env's package directory in front of the container's PYTHONPATH.
    PythonPath,
    /// Venv mode: the env's venv.
    VirtualEnv,
    /// `NIXUV_ENV`: the env id.
    EnvId,
}

impl TargetVar {
    /// Every variable, in the order a container's env gets them.
    pub const ALL: [TargetVar; 4] = [TargetVar::Path, TargetVar::PythonPath, TargetVar::VirtualEnv, TargetVar::EnvId];

    pub fn name(self) -> &'static str {
        match self {
            TargetVar::Path => "PATH",
            TargetVar::PythonPath => "PYTHONPATH",
            TargetVar::VirtualEnv => "VIRTUAL_ENV",
            TargetVar::EnvId => ENV_ID,
        }
    }

    /// Whether a target container of `plan` gets this variable.
    pub fn set_for(self, plan: &EnvPlan) -> bool {
        match self {
            TargetVar::Path | TargetVar::EnvId => true,
            TargetVar::PythonPath => plan.is_overlay(),
            TargetVar::VirtualEnv => plan.has_python() && !plan.is_overlay(),
        }
    }

    /// A list nixuv puts its entries in front of (the container's own value is kept after them),
    /// rather than a value nixuv owns whole.
    pub fn prepends(self) -> bool {
        matches!(self, TargetVar::Path | TargetVar::PythonPath)
    }

    /// nixuv's part of the value for `plan`.
    pub fn ours(self, plan: &EnvPlan) -> String {
        match self {
            TargetVar::Path => plan.path_prefix(),
            TargetVar::PythonPath | TargetVar::VirtualEnv => plan.venv_dir(),
            TargetVar::EnvId => plan.id.to_string(),
        }
    }

    /// The value a target container gets, `rest` being what it keeps of its own after nixuv's
    /// part (lists only; empty: nothing).
    pub fn value(self, plan: &EnvPlan, rest: &str) -> String {
        let mut ours = self.ours(plan);
        if self.prepends() && !rest.is_empty() {
            // Grown in place: one allocation a variable on the hot path.
            ours.reserve(1 + rest.len());
            ours.push(':');
            ours.push_str(rest);
        }
        ours
    }

    /// Whether `entry` (a list's entry, or the whole value) is nixuv's, for any env.
    pub fn is_ours(self, entry: &str) -> bool {
        match self {
            TargetVar::Path => EnvId::of_bin_dir(entry).is_some(),
            TargetVar::PythonPath | TargetVar::VirtualEnv => EnvId::of_venv_dir(entry).is_some(),
            // Reserved for nixuv whatever it holds.
            TargetVar::EnvId => true,
        }
    }

    /// `value` without the leading entries nixuv put there (lists), or without nixuv's value.
    pub fn strip_ours(self, value: &str) -> &str {
        if !self.prepends() {
            return if self.is_ours(value) { "" } else { value };
        }
        let mut rest = value;
        while let Some(first) = rest.split(':').next().filter(|d| self.is_ours(d)) {
            rest = rest.get(first.len() + 1..).unwrap_or("");
        }
        rest
    }

    /// Why a value the container sets for this variable is refused.
    pub fn conflict(self, container: &str) -> String {
        match self {
            TargetVar::Path => format!(
                "spec.containers[{container:?}].env: PATH is set with valueFrom, so nixuv cannot put the env's directories in front of it; set PATH as a value or leave it unset"
            ),
            TargetVar::PythonPath => format!(
                "spec.containers[{container:?}].env: PYTHONPATH is set with valueFrom, so nixuv cannot put the env's packages in front of it (python mode overlay); set PYTHONPATH as a value or leave it unset"
            ),
            TargetVar::VirtualEnv => format!(
                "spec.containers[{container:?}].env: VIRTUAL_ENV is already set; nixuv sets it to the env's venv"
            ),
            TargetVar::EnvId => {
                format!("spec.containers[{container:?}].env: NIXUV_ENV is already set; it is reserved for nixuv")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::plan::deps::declared;

    fn plan(ann: &[(&str, &str)]) -> EnvPlan {
        let a = ann.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        EnvPlan::new(&declared(None, Some(&a)).unwrap(), Config::default().plan_inputs())
    }

    #[test]
    fn which_variables_each_kind_of_env_sets() {
        let set =
            |p: &EnvPlan| TargetVar::ALL.into_iter().filter(|v| v.set_for(p)).map(TargetVar::name).collect::<Vec<_>>();
        assert_eq!(set(&plan(&[("nixuv.io/system-deps", "jq")])), ["PATH", "NIXUV_ENV"]);
        assert_eq!(set(&plan(&[("nixuv.io/python-deps", "rich")])), ["PATH", "VIRTUAL_ENV", "NIXUV_ENV"]);
        let overlay = plan(&[("nixuv.io/python-deps", "rich"), ("nixuv.io/python-mode", "overlay")]);
        assert_eq!(set(&overlay), ["PATH", "PYTHONPATH", "NIXUV_ENV"]);
    }

    /// What one env put in front is taken off by any other env's re-injection; the user's own
    /// entries stay, also when they look like nixuv's further along the list.
    #[test]
    fn strip_ours_takes_off_only_the_leading_entries_of_any_env() {
        let a = plan(&[("nixuv.io/system-deps", "jq"), ("nixuv.io/python-deps", "rich")]);
        let b = plan(&[("nixuv.io/python-deps", "six"), ("nixuv.io/python-mode", "overlay")]);
        let path = TargetVar::Path.value(&a, "/app/bin:/usr/bin");
        assert_eq!(TargetVar::Path.strip_ours(&path), "/app/bin:/usr/bin");
        assert_eq!(TargetVar::Path.strip_ours(&TargetVar::Path.ours(&a)), "");
        let late = format!("/usr/bin:{}/bin", a.venv_dir());
        assert_eq!(TargetVar::Path.strip_ours(&late), late);
        let pp = TargetVar::PythonPath.value(&b, "/app/lib");
        assert_eq!(TargetVar::PythonPath.strip_ours(&pp), "/app/lib");
        assert_eq!(TargetVar::PythonPath.value(&b, ""), b.venv_dir());
        assert_eq!(TargetVar::VirtualEnv.strip_ours(&a.venv_dir()), "");
        assert_eq!(TargetVar::VirtualEnv.strip_ours("/opt/venv"), "/opt/venv");
        assert_eq!(TargetVar::EnvId.strip_ours("anything"), "");
    }
}
