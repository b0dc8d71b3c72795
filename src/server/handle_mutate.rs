//! `POST /mutate`: the webhook. A review byte-identical (but for its uid) to one decided before is
//! answered from the decision cache; any other is read in one pass and decided by the core.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::body::read_body;
use super::cache;
use super::error::ApiError;
use super::metrics::{Endpoint, ResultLabels};
use super::AppState;
use crate::inject::{self, Outcome};
use crate::review;

/// The target of the per-request admission lines, so that `NIXUV_LOG` can select them on their
/// own (e.g. `info,nixuv::admission=warn` keeps every other info line).
pub const ADMISSION_LOG: &str = "nixuv::admission";

pub async fn mutate(State(state): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let body = read_body(&state, req, state.body_limit).await?;
    let bytes: &[u8] = &body.bytes;
    let start = Instant::now();
    // Where the request uid may stand, looked for once: for the lookup, and for the entry made if
    // the review is new.
    let uids: Vec<std::ops::Range<usize>> = match state.decisions.enabled() && bytes.len() <= cache::MAX_REVIEW {
        true => review::uid_candidates(bytes).collect(),
        false => Vec::new(),
    };
    // A replica of a review seen before is answered without parsing it (see `cache`).
    let (answer, uid, cached) = match cached(&state, bytes, &uids) {
        Some((hit, uid)) => (hit, std::borrow::Cow::Borrowed(uid), true),
        None => match decide_new(&state, bytes, &uids) {
            Ok((answer, uid)) => (answer, uid, false),
            Err(e) => {
                state.metrics.count(Endpoint::mutate, "invalid");
                return Err(ApiError::bad_request(e.to_string()));
            }
        },
    };
    if let (Some(envs), Some((id, spec)), false) = (&state.envs, &answer.request, answer.dry_run) {
        // Never for a dry run (the webhook is `sideEffects: NoneOnDryRun`).
        envs.request(*id, spec);
    }
    let body = answer.prepared.body(answer.api_version, &uid);
    let elapsed = start.elapsed();
    state.metrics.count(Endpoint::mutate, answer.outcome.as_str());
    state.metrics.observe(Endpoint::mutate, elapsed);
    log_admission(&uid, &answer, cached, elapsed);
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response())
}

/// One info line per decision made; the replicas answered from the cache repeat it word for word
/// but for the uid, so they are debug lines (counted in the metrics either way). At saturation a
/// line per request cost ~15 % of the server's CPU (docs/performance.md).
fn log_admission(uid: &str, a: &cache::Answer, cached: bool, elapsed: Duration) {
    let noteworthy = !cached && matches!(a.outcome, Outcome::Injected | Outcome::Denied | Outcome::AlreadyInjected);
    // `tracing::event!` takes its level as a constant.
    macro_rules! line {
        ($level:expr) => {
            tracing::event!(
                target: ADMISSION_LOG,
                $level,
                uid,
                namespace = &*a.namespace,
                name = &*a.name,
                decision = a.outcome.as_str(),
                env = a.env_id.as_deref().unwrap_or(""),
                denial = a.message.as_deref().unwrap_or(""),
                dry_run = a.dry_run,
                cached,
                elapsed_us = elapsed.as_micros() as u64,
                "admission"
            )
        };
    }
    if noteworthy {
        line!(tracing::Level::INFO);
    } else {
        line!(tracing::Level::DEBUG);
    }
}

/// A review not answered from the cache: its envelope and its Pod's fields read in one pass; only
/// an object that is not a Pod nixuv can read (a denial, with the parser's message) is read again
/// as raw JSON. The answer, and the request uid.
fn decide_new<'b>(
    state: &AppState,
    body: &'b [u8],
    uids: &[std::ops::Range<usize>],
) -> Result<(Arc<cache::Answer>, std::borrow::Cow<'b, str>), review::ReviewError> {
    match review::decode_as::<inject::pod::PodView>(body) {
        Ok(r) => Ok((answer(state, &r, body, uids), r.request.uid.0)),
        Err(_) => {
            let r = review::decode(body)?;
            Ok((answer(state, &r, body, uids), r.request.uid.0))
        }
    }
}

/// The cached answer for a review byte-identical, but for its uid (at one of `uids`), to one
/// decided before under this config and the claim states that still hold; with the uid.
fn cached<'b>(
    state: &AppState,
    body: &'b [u8],
    uids: &[std::ops::Range<usize>],
) -> Option<(Arc<cache::Answer>, &'b str)> {
    let injector = state.injector.load();
    for uid in uids {
        let key = cache::KeyRef { generation: injector.generation(), review: body, uid: uid.clone() };
        let Some(hit) = state.decisions.get(&key) else { continue };
        // Claims created, deleted or bound since: decided again (and the entry replaced).
        if injector.store_claims(&hit.namespace, &*state.claims) != hit.claims {
            return None;
        }
        // An env's image became Ready (or went) since: decided again.
        if state.envs.as_ref().is_some_and(|e| e.version() != hit.envs_version) {
            return None;
        }
        state.metrics.decision_cache.get_or_create(&ResultLabels { result: "hit" }).inc();
        return Some((hit, std::str::from_utf8(&body[uid.clone()]).ok()?));
    }
    None
}

/// The answer to one review, decided now; a Pod CREATE whose uid the parser found at one of
/// `uids` is kept for its replicas (see [`cached`]).
fn answer<O: inject::PodSource>(
    state: &AppState,
    review: &review::AdmissionReview<'_, O>,
    body: &[u8],
    uids: &[std::ops::Range<usize>],
) -> Arc<cache::Answer> {
    let req = &review.request;
    let injector = state.injector.load();
    let ns = req.namespace.as_deref().unwrap_or("");
    let cacheable =
        state.decisions.enabled() && !ns.is_empty() && req.object.is_some() && inject::optin::is_pod_create(req);
    // The claims' states are read once, by the core's own function, and the decision is made
    // with exactly those: entry and answer cannot disagree.
    let states = injector.store_claims(ns, &*state.claims);
    // Read before deciding: a change during the decision makes the entry stale, never wrong.
    let envs_version = state.envs.as_ref().map_or(0, |e| e.version());
    let d = if cacheable {
        injector.decide_with_states(req, states, &*state.claims)
    } else {
        injector.decide(req, &*state.claims)
    };
    let answer = Arc::new(cache::Answer {
        prepared: d.prepared(),
        outcome: d.outcome(),
        env_id: d.env_id().map(ToString::to_string),
        message: d.denial().map(|x| x.message.clone()),
        api_version: review.api_version,
        namespace: ns.into(),
        name: req.name.as_deref().unwrap_or("").into(),
        dry_run: req.dry_run.unwrap_or(false),
        claims: states,
        envs_version,
        request: d.env.as_ref().and_then(|e| Some((*d.env_id()?, Arc::clone(e.request.as_ref()?)))),
    });
    if cacheable {
        state.metrics.decision_cache.get_or_create(&ResultLabels { result: "miss" }).inc();
        // Only where a later lookup will try it: the parser's uid among the byte search's.
        if let Some(uid) = review::uid_span_of(body, &req.uid).filter(|u| uids.contains(u)) {
            let key = cache::KeyRef { generation: injector.generation(), review: body, uid };
            state.decisions.insert(&key, Arc::clone(&answer));
        }
    }
    answer
}
