//! The AdmissionReview wire format (admission.k8s.io v1 and v1beta1).
//!
//! Decoding is written here rather than taken from `kube_core::admission` on purpose: kube-core
//! deserialises `request.object` eagerly into a typed object, so a review of a kind nixuv does not
//! handle could fail to decode, and every review would pay for parsing a whole object. Here the
//! object stays a borrowed raw JSON slice until the gate in [`crate::inject`] has decided the
//! review is a Pod CREATE worth looking at, and only the fields nixuv reads are decoded then. The
//! response shape follows `kube_core::admission::AdmissionResponse` field for field.

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::inject::Decision;

pub const API_V1: &str = "admission.k8s.io/v1";
pub const API_V1BETA1: &str = "admission.k8s.io/v1beta1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReviewError {
    #[error("body is not JSON: {0}")]
    NotJson(String),
    #[error("body is not an AdmissionReview: kind is {0:?}")]
    WrongKind(String),
    #[error("unsupported AdmissionReview apiVersion {0:?} (expected {API_V1} or {API_V1BETA1})")]
    WrongVersion(String),
    #[error("AdmissionReview has no request")]
    NoRequest,
    #[error("AdmissionReview request has no uid")]
    NoUid,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct GroupVersionKind {
    pub group: String,
    pub version: String,
    pub kind: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct GroupVersionResource {
    pub group: String,
    pub version: String,
    pub resource: String,
}

/// The parts of an `AdmissionRequest` that nixuv reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest<'a> {
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub kind: GroupVersionKind,
    #[serde(default)]
    pub resource: GroupVersionResource,
    #[serde(default)]
    pub sub_resource: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub operation: String,
    #[serde(default)]
    pub dry_run: Option<bool>,
    #[serde(borrow, default)]
    pub object: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn<'a> {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(borrow, default)]
    request: Option<AdmissionRequest<'a>>,
}

/// A decoded review: its apiVersion (echoed in the response) and its request.
#[derive(Debug)]
pub struct AdmissionReview<'a> {
    pub api_version: &'static str,
    pub request: AdmissionRequest<'a>,
}

pub fn decode(body: &[u8]) -> Result<AdmissionReview<'_>, ReviewError> {
    let review: ReviewIn<'_> = serde_json::from_slice(body).map_err(|e| ReviewError::NotJson(e.to_string()))?;
    if review.kind != "AdmissionReview" {
        return Err(ReviewError::WrongKind(review.kind));
    }
    let api_version = match review.api_version.as_str() {
        API_V1 => API_V1,
        API_V1BETA1 => API_V1BETA1,
        other => return Err(ReviewError::WrongVersion(other.to_string())),
    };
    let request = review.request.ok_or(ReviewError::NoRequest)?;
    if request.uid.is_empty() {
        return Err(ReviewError::NoUid);
    }
    Ok(AdmissionReview { api_version, request })
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub status: String,
    pub code: u16,
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    pub uid: String,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warnings: Option<Vec<String>>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReviewOut {
    pub api_version: String,
    pub kind: String,
    pub response: AdmissionResponse,
}

fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        403 => "Forbidden",
        409 => "Conflict",
        _ => "Invalid",
    }
}

/// The response review for `decision`, same apiVersion and uid as the request.
pub fn respond(api_version: &str, uid: &str, decision: &Decision) -> ReviewOut {
    let status = (!decision.allowed).then(|| {
        let code = decision.code;
        Status {
            status: "Failure".into(),
            code,
            reason: reason_for(code).into(),
            message: decision.message.clone().unwrap_or_default(),
        }
    });
    let (patch, patch_type) = match &decision.patch {
        Some(p) if decision.allowed => {
            let bytes = serde_json::to_vec(p).expect("a JSON patch always serialises");
            (Some(base64::engine::general_purpose::STANDARD.encode(bytes)), Some("JSONPatch".to_string()))
        }
        _ => (None, None),
    };
    ReviewOut {
        api_version: api_version.to_string(),
        kind: "AdmissionReview".into(),
        response: AdmissionResponse {
            uid: uid.to_string(),
            allowed: decision.allowed,
            status,
            patch,
            patch_type,
            warnings: (!decision.warnings.is_empty()).then(|| decision.warnings.clone()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_errors() {
        let cases: [(&str, fn(&ReviewError) -> bool); 6] = [
            ("not json", |e| matches!(e, ReviewError::NotJson(_))),
            (r#"{"kind":"Pod","apiVersion":"v1"}"#, |e| matches!(e, ReviewError::WrongKind(_))),
            (r#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v2"}"#, |e| {
                matches!(e, ReviewError::WrongVersion(_))
            }),
            (r#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}"#, |e| *e == ReviewError::NoRequest),
            (
                r#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"operation":"CREATE"}}"#,
                |e| *e == ReviewError::NoUid,
            ),
            (r#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":7}}"#, |e| {
                matches!(e, ReviewError::NotJson(_))
            }),
        ];
        for (body, check) in cases {
            let err = decode(body.as_bytes()).expect_err(body);
            assert!(check(&err), "{body}: {err:?}");
        }
    }

    #[test]
    fn v1beta1_is_echoed() {
        let body = r#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1beta1","request":{"uid":"u1","operation":"CREATE","object":{"a":1}}}"#;
        let r = decode(body.as_bytes()).unwrap();
        assert_eq!(r.api_version, API_V1BETA1);
        assert_eq!(r.request.object.unwrap().get(), r#"{"a":1}"#);
        let out = respond(r.api_version, &r.request.uid, &Decision::allow());
        assert_eq!(out.api_version, API_V1BETA1);
        assert_eq!(out.response.uid, "u1");
        assert!(out.response.status.is_none() && out.response.patch.is_none());
    }
}
