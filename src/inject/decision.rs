//! What the core decides about one Pod: a typed [`Verdict`] (a denial cannot carry a patch, an
//! injection always does), its warnings and notes, and [`Decision::to_response`], which turns it
//! into the AdmissionResponse that [`crate::review`] only serialises. Status codes are chosen here,
//! where a decision becomes a response.

use crate::envid::EnvId;
use crate::review::{AdmissionResponse, Status};

use std::sync::Arc;

use super::init_container::InitText;
use super::patch_text::PodPatch;
use super::store_choice::StoreVolumes;

/// What happened, for logs and the `decision` metric label (a closed, low-cardinality set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not a Pod CREATE: not nixuv's business.
    Skipped,
    /// No `nixuv.io/inject: "true"` label.
    NotOptedIn,
    /// The namespace is excluded by config.
    Excluded,
    /// Opted in without declaring any dependency.
    NoDeps,
    Injected,
    /// Already carries nixuv's output for the same env: nothing (more) to add.
    AlreadyInjected,
    Denied,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Skipped => "skipped",
            Outcome::NotOptedIn => "not_opted_in",
            Outcome::Excluded => "excluded",
            Outcome::NoDeps => "no_deps",
            Outcome::Injected => "injected",
            Outcome::AlreadyInjected => "already_injected",
            Outcome::Denied => "denied",
        }
    }
}

/// Why a Pod is allowed unchanged without being nixuv's (the reasons that carry no env).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    Skipped,
    NotOptedIn,
    Excluded,
    NoDeps,
}

/// What kind of denial: the input is wrong, it collides with what nixuv adds, or the admin's
/// policy forbids it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyKind {
    Invalid,
    Conflict,
    Policy,
}

impl DenyKind {
    /// The `status.code` of the AdmissionResponse (and what `nixuv preview` prints): 400 for bad
    /// input and conflicts, 403 for policy. Chosen here, where a decision becomes a response.
    pub fn code(self) -> u16 {
        match self {
            DenyKind::Invalid | DenyKind::Conflict => 400,
            DenyKind::Policy => 403,
        }
    }
    fn reason(self) -> &'static str {
        match self {
            DenyKind::Invalid | DenyKind::Conflict => "BadRequest",
            DenyKind::Policy => "Forbidden",
        }
    }
}

/// A denial: its kind and a message naming the field and the item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub kind: DenyKind,
    pub message: String,
}

impl Denial {
    pub fn invalid(message: impl Into<String>) -> Self {
        Denial { kind: DenyKind::Invalid, message: message.into() }
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Denial { kind: DenyKind::Conflict, message: message.into() }
    }
    pub fn policy(message: impl Into<String>) -> Self {
        Denial { kind: DenyKind::Policy, message: message.into() }
    }
}

/// The verdict on one Pod: a denied decision cannot carry a patch, an injected one always does.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Allowed unchanged; not nixuv's.
    Pass(Pass),
    /// Allowed unchanged: it already carries nixuv's output for this env.
    Unchanged {
        env_id: EnvId,
    },
    /// Allowed with nixuv's patch for this env.
    Inject {
        env_id: EnvId,
        patch: PodPatch,
    },
    Deny(Denial),
}

/// nixuv's own parts for the env of an allowed Pod (injected or already carrying it), made from
/// the plan and the config, never read from the Pod: what `nixuv preview -o warm-job` builds its
/// Jobs from.
#[derive(Debug, Clone)]
pub struct EnvParts {
    pub init_container: Arc<InitText>,
    pub stores: StoreVolumes,
    /// Image store: the env's image the Pod mounts (`<repository>@<digest>`), or `None` when the
    /// Pod got the stores above.
    pub image: Option<Arc<str>>,
    /// Image store, env not Ready: the `NixuvEnv` to request (the webhook creates it, never for
    /// a dry run). `None` without an image store and when the image is Ready.
    pub request: Option<Arc<crate::imagestore::NixuvEnvSpec>>,
}

#[derive(Debug, Clone)]
pub struct Decision {
    pub verdict: Verdict,
    /// Set exactly when the verdict names an env.
    pub env: Option<EnvParts>,
    /// Admission warnings (`kubectl` prints them), also on an allowed Pod.
    pub warnings: Vec<String>,
    /// Notes for `nixuv preview` only, too noisy for admission warnings (custom images).
    pub notes: Vec<String>,
}

impl From<Denial> for Decision {
    fn from(d: Denial) -> Self {
        Decision { verdict: Verdict::Deny(d), env: None, warnings: Vec::new(), notes: Vec::new() }
    }
}

impl Decision {
    pub fn pass(why: Pass) -> Self {
        Decision { verdict: Verdict::Pass(why), env: None, warnings: Vec::new(), notes: Vec::new() }
    }
    pub fn allowed(&self) -> bool {
        !matches!(self.verdict, Verdict::Deny(_))
    }
    pub fn outcome(&self) -> Outcome {
        match &self.verdict {
            Verdict::Pass(Pass::Skipped) => Outcome::Skipped,
            Verdict::Pass(Pass::NotOptedIn) => Outcome::NotOptedIn,
            Verdict::Pass(Pass::Excluded) => Outcome::Excluded,
            Verdict::Pass(Pass::NoDeps) => Outcome::NoDeps,
            Verdict::Unchanged { .. } => Outcome::AlreadyInjected,
            Verdict::Inject { .. } => Outcome::Injected,
            Verdict::Deny(_) => Outcome::Denied,
        }
    }
    pub fn env_id(&self) -> Option<&EnvId> {
        match &self.verdict {
            Verdict::Unchanged { env_id } | Verdict::Inject { env_id, .. } => Some(env_id),
            _ => None,
        }
    }
    pub fn patch(&self) -> Option<&PodPatch> {
        match &self.verdict {
            Verdict::Inject { patch, .. } => Some(patch),
            _ => None,
        }
    }
    pub fn denial(&self) -> Option<&Denial> {
        match &self.verdict {
            Verdict::Deny(d) => Some(d),
            _ => None,
        }
    }

    /// The decision as the wire form's prepared response (its bytes, the uid spliced in per
    /// request): one call from a decision to what `/mutate` sends.
    pub fn prepared(&self) -> crate::review::Prepared {
        crate::review::Prepared::new(self.to_response())
    }

    /// The AdmissionResponse for this decision, without its uid (the wire format fills it in).
    pub fn to_response(&self) -> AdmissionResponse {
        let status = self.denial().map(|d| Status {
            status: "Failure".into(),
            code: d.kind.code(),
            reason: d.kind.reason().into(),
            message: d.message.clone(),
        });
        let (patch, patch_type) = match self.patch() {
            // Written whole, then encoded in a few calls (streaming serde_json's many small writes
            // through base64's writer was measured at twice the cost), the init container's share
            // encoded once per env.
            Some(p) => (Some(p.base64()), Some("JSONPatch".to_string())),
            None => (None, None),
        };
        AdmissionResponse {
            uid: String::new(),
            allowed: self.allowed(),
            status,
            patch,
            patch_type,
            warnings: (!self.warnings.is_empty()).then(|| self.warnings.clone()),
        }
    }
}
