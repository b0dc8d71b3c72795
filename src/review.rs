//! The AdmissionReview wire format (admission.k8s.io v1 and v1beta1).
//!
//! Decoding is written here rather than taken from `kube_core::admission` on purpose: kube-core
//! deserialises `request.object` eagerly into a typed object, so a review of a kind nixuv does not
//! handle could fail to decode, and every review would pay for parsing a whole object. Here the
//! object stays a borrowed raw JSON slice until the core has decided the review is a Pod CREATE
//! worth looking at, and only the fields nixuv reads are decoded then. The response shape follows
//! `kube_core::admission::AdmissionResponse` field for field; the core builds it, this module only
//! serialises it. The bottom layer: it depends on nothing else in the crate.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

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

/// A string of the review, borrowed from the body where it has no escapes (most have none): a
/// new Pod's names, images and variables, and the envelope's, are looked at once and never copied.
#[derive(Default, Clone, PartialEq, Eq)]
pub struct Str<'a>(pub std::borrow::Cow<'a, str>);

/// As a `str` (quoted and escaped): messages quote names with `{:?}`.
impl std::fmt::Debug for Str<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::ops::Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Str<'_> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PartialEq<String> for Str<'_> {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<str> for Str<'_> {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for Str<'_> {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl std::fmt::Display for Str<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(std::borrow::Cow::Owned(v.to_string())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Str<'de>, E> {
                Ok(Str(std::borrow::Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct GroupVersionKind<'a> {
    #[serde(borrow)]
    pub group: Str<'a>,
    #[serde(borrow)]
    pub version: Str<'a>,
    #[serde(borrow)]
    pub kind: Str<'a>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct GroupVersionResource<'a> {
    #[serde(borrow)]
    pub group: Str<'a>,
    #[serde(borrow)]
    pub version: Str<'a>,
    #[serde(borrow)]
    pub resource: Str<'a>,
}

/// The parts of an `AdmissionRequest` that nixuv reads. The object is kept as raw JSON by default
/// ([`decode`]); [`decode_as`] reads it as `O` in the same pass.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", bound(deserialize = "O: Deserialize<'de>"))]
pub struct AdmissionRequest<'a, O = &'a RawValue> {
    /// Borrowed from the body unless it holds an escape ([`uid_span_of`]).
    #[serde(borrow, default)]
    pub uid: Str<'a>,
    #[serde(borrow, default)]
    pub kind: GroupVersionKind<'a>,
    #[serde(borrow, default)]
    pub resource: GroupVersionResource<'a>,
    #[serde(borrow, default)]
    pub sub_resource: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub name: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub namespace: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub operation: Str<'a>,
    #[serde(default)]
    pub dry_run: Option<bool>,
    #[serde(default = "none")]
    pub object: Option<O>,
}

fn none<O>() -> Option<O> {
    None
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", bound(deserialize = "O: Deserialize<'de>"))]
struct ReviewIn<'a, O> {
    #[serde(borrow, default)]
    api_version: Str<'a>,
    #[serde(borrow, default)]
    kind: Str<'a>,
    #[serde(borrow, default = "none")]
    request: Option<AdmissionRequest<'a, O>>,
}

/// A decoded review: its apiVersion (echoed in the response) and its request.
#[derive(Debug)]
pub struct AdmissionReview<'a, O = &'a RawValue> {
    pub api_version: &'static str,
    pub request: AdmissionRequest<'a, O>,
}

/// The places in `body` where a review's request uid may stand: the contents of each
/// `"uid":"…"` string (whitespace allowed around the colon) that holds no escape, quote or
/// control character, at most [`MAX_UID_CANDIDATES`] of them, the one after `"request":{` (the
/// API server's field order) first. Which of them (if any) is the request's uid is not known
/// without parsing; the decision cache only ever matches one against a body whose uid was found
/// there by the parser ([`uid_span_of`]). Written by hand because it is a byte search, the point
/// being not to parse.
pub fn uid_candidates(body: &[u8]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    const KEY: &[u8] = br#""uid""#;
    let ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    // The searcher is built once (building it cost more than a search of a ~5 KB review).
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(KEY));
    let mut spans: Vec<(usize, std::ops::Range<usize>)> = FINDER
        .find_iter(body)
        .filter_map(|at| {
            // `"uid"`, optional whitespace, `:`, optional whitespace, `"`: a key and a string value.
            let mut i = at + KEY.len();
            while body.get(i).is_some_and(ws) {
                i += 1;
            }
            (body.get(i) == Some(&b':')).then_some(())?;
            i += 1;
            while body.get(i).is_some_and(ws) {
                i += 1;
            }
            (body.get(i) == Some(&b'"')).then_some(())?;
            let start = i + 1;
            let len = memchr::memchr(b'"', &body[start..])?;
            let s = &body[start..start + len];
            (!s.is_empty() && s.iter().all(|&b| b >= 0x20 && b != b'\\') && std::str::from_utf8(s).is_ok())
                .then_some((at, start..start + len))
        })
        .take(MAX_UID_CANDIDATES)
        .collect();
    let after_request = |at: usize| {
        let head = body[..at].trim_ascii_end();
        head.ends_with(b"{") && head[..head.len() - 1].trim_ascii_end().ends_with(br#""request":"#)
    };
    if let Some(i) = spans.iter().position(|(at, _)| after_request(*at)) {
        spans.swap(0, i);
    }
    spans.into_iter().map(|(_, s)| s)
}

/// At most this many `"uid"` strings are tried as the request's uid (a Pod has one per owner
/// reference; the review's `userInfo` has one).
pub const MAX_UID_CANDIDATES: usize = 4;

/// Where the parsed request uid `uid` stands in `body`, if the parser borrowed it from there
/// (it does unless the uid holds an escape).
pub fn uid_span_of(body: &[u8], uid: &Str<'_>) -> Option<std::ops::Range<usize>> {
    let std::borrow::Cow::Borrowed(uid) = uid.0 else { return None };
    let start = (uid.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    (start + uid.len() <= body.len() && !uid.is_empty()).then(|| start..start + uid.len())
}

pub fn decode(body: &[u8]) -> Result<AdmissionReview<'_>, ReviewError> {
    decode_as(body)
}

/// [`decode`], reading the object as `O` in the same pass (an error in the object is an error of
/// the whole review).
pub fn decode_as<'a, O: Deserialize<'a>>(body: &'a [u8]) -> Result<AdmissionReview<'a, O>, ReviewError> {
    // The body checked as UTF-8 once, as a whole (a word at a time), rather than each string as
    // the parser meets it.
    let text = std::str::from_utf8(body).map_err(|e| ReviewError::NotJson(format!("not UTF-8: {e}")))?;
    let review: ReviewIn<'a, O> = serde_json::from_str(text).map_err(|e| ReviewError::NotJson(e.to_string()))?;
    if review.kind != "AdmissionReview" {
        return Err(ReviewError::WrongKind(review.kind.to_string()));
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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub status: String,
    pub code: u16,
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// The response review for `response` (built by the core), same apiVersion and uid as the request.
pub fn respond(api_version: &str, uid: &str, mut response: AdmissionResponse) -> ReviewOut {
    response.uid = uid.to_string();
    ReviewOut { api_version: api_version.to_string(), kind: "AdmissionReview".into(), response }
}

/// A response review serialised once, without its uid: what `/mutate` keeps for a decision so that
/// replicas of one workload (byte-identical Pods, differing only in the request uid) cost a splice
/// rather than a new patch. [`Prepared::body`] gives exactly the bytes of
/// `serde_json::to_vec(&respond(api_version, uid, response))`.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The serialised `response` object after its `"uid":"",`, i.e. from `"allowed"` to its `}`.
    tail: Box<[u8]>,
}

/// How a serialised response with an empty uid begins (`uid` is the first field).
const EMPTY_UID_HEAD: &[u8] = br#"{"uid":"","#;

impl Prepared {
    pub fn new(response: AdmissionResponse) -> Self {
        let mut resp = response;
        resp.uid.clear();
        // The base64 patch is spliced in rather than serialised: serde_json would scan its
        // kilobytes for characters to escape, and the base64 alphabet has none.
        let patch = resp.patch.take();
        let patch_type = resp.patch_type.take();
        let json = serde_json::to_vec(&resp).expect("a review always serialises");
        let rest = json.strip_prefix(EMPTY_UID_HEAD).expect("uid is the response's first field");
        let (Some(patch), Some(patch_type)) = (patch, patch_type) else { return Prepared { tail: rest.into() } };
        // A patch comes only with `allowed: true` and no status, so the fields run `allowed`,
        // `patch`, `patchType`, then the rest (`warnings`) in the struct's order.
        const ALLOWED: &[u8] = br#""allowed":true"#;
        let after = rest.strip_prefix(ALLOWED).expect("allowed follows uid");
        let mut tail = Vec::with_capacity(rest.len() + patch.len() + 40);
        tail.extend_from_slice(ALLOWED);
        tail.extend_from_slice(br#","patch":""#);
        tail.extend_from_slice(patch.as_bytes());
        tail.extend_from_slice(br#"","patchType":"#);
        serde_json::to_writer(&mut tail, &patch_type).expect("a string serialises");
        tail.extend_from_slice(after);
        Prepared { tail: tail.into() }
    }

    /// Bytes held, for cache accounting.
    pub fn len(&self) -> usize {
        self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tail.is_empty()
    }

    /// The whole response review for the request `uid` in `api_version`.
    pub fn body(&self, api_version: &str, uid: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.tail.len() + uid.len() + 96);
        out.extend_from_slice(br#"{"apiVersion":"#);
        serde_json::to_writer(&mut out, api_version).expect("a string serialises");
        out.extend_from_slice(br#","kind":"AdmissionReview","response":{"uid":"#);
        serde_json::to_writer(&mut out, uid).expect("a string serialises");
        out.push(b',');
        out.extend_from_slice(&self.tail);
        out.push(b'}');
        out
    }
}

/// Asserts that the prepared body of `resp` is byte for byte its serialised review, for both
/// versions and uids that need escaping. Shared with the core's tests.
#[cfg(test)]
pub(crate) fn assert_same_bytes(resp: &AdmissionResponse) {
    for api in [API_V1, API_V1BETA1] {
        for uid in ["u1", "0c9a8d74-9cb7-44dd-b98e-09fd62def2f4", "a\"b\\c\u{1}é"] {
            let want = serde_json::to_vec(&respond(api, uid, resp.clone())).unwrap();
            assert_eq!(Prepared::new(resp.clone()).body(api, uid), want, "{resp:?} {api} {uid}");
        }
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

    /// An allowed response without status or patch.
    pub fn allowed() -> AdmissionResponse {
        AdmissionResponse {
            uid: String::new(),
            allowed: true,
            status: None,
            patch: None,
            patch_type: None,
            warnings: None,
        }
    }

    #[test]
    fn v1beta1_is_echoed() {
        let body = r#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1beta1","request":{"uid":"u1","operation":"CREATE","object":{"a":1}}}"#;
        let r = decode(body.as_bytes()).unwrap();
        assert_eq!(r.api_version, API_V1BETA1);
        assert_eq!(r.request.object.unwrap().get(), r#"{"a":1}"#);
        let out = respond(r.api_version, &r.request.uid, allowed());
        assert_eq!(out.api_version, API_V1BETA1);
        assert_eq!(out.response.uid, "u1");
        assert!(out.response.status.is_none() && out.response.patch.is_none());
    }

    /// The spliced body is byte for byte the serialised review, for every shape of response and for
    /// uids that need escaping (the core's real decisions: `inject`'s tests).
    #[test]
    fn prepared_body_equals_respond() {
        let denied = AdmissionResponse {
            allowed: false,
            status: Some(Status {
                status: "Failure".into(),
                code: 403,
                reason: "Forbidden".into(),
                message: "policy: \"x\" is not allowed".into(),
            }),
            ..allowed()
        };
        let warned = AdmissionResponse { warnings: Some(vec!["w \"1\"".into(), "w2".into()]), ..allowed() };
        let patched = AdmissionResponse {
            patch: Some("W3sib3AiOiJhZGQifV0=".into()),
            patch_type: Some("JSONPatch".into()),
            warnings: Some(vec!["nixuv: \"claim\" missing".into()]),
            ..allowed()
        };
        for resp in [allowed(), denied, warned, patched] {
            assert_same_bytes(&resp);
        }
    }
}
