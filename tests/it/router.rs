//! The fast tier: the axum `Router` called in-process (`oneshot`), no socket, no TLS, for status
//! codes, limits, errors and metrics. The binary tests (webhook.rs, hostile.rs, lifecycle.rs) keep
//! covering TLS, protocols, drain and the process's lifecycle.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use nixuv::claims::AssumePresent;
use nixuv::config::Config;
use nixuv::inject::Injector;
use nixuv::server::metrics::Metrics;
use nixuv::server::{router, AppState, HandlerLimits};

use crate::common;

fn state(limits: HandlerLimits) -> Arc<AppState> {
    let state =
        AppState::new(Injector::new(Config::default()), Arc::new(AssumePresent), Arc::new(Metrics::new()), &limits);
    state.ready.store(true, Ordering::Relaxed);
    Arc::new(state)
}

async fn call(app: &axum::Router, req: Request<Body>) -> (StatusCode, String, Vec<u8>) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let ct = resp.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes().to_vec();
    (status, ct, body)
}

fn post(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path).header(header::CONTENT_TYPE, "application/json").body(body.into()).unwrap()
}

#[tokio::test]
async fn status_codes_errors_and_metrics() {
    let st = state(HandlerLimits { body_limit: 64 * 1024, ..HandlerLimits::default() });
    let app = router(Arc::clone(&st), true, true);
    // Probes.
    let (s, _, b) = call(&app, Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!((s, b.as_slice()), (StatusCode::OK, &b"ok\n"[..]));
    st.ready.store(false, Ordering::Relaxed);
    let (s, _, _) = call(&app, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    st.ready.store(true, Ordering::Relaxed);
    // A body that is not an AdmissionReview: 400 with a JSON error.
    let (s, ct, b) = call(&app, post("/mutate", "not json")).await;
    assert_eq!((s, ct.as_str()), (StatusCode::BAD_REQUEST, "application/json"));
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["code"], 400);
    assert!(v["error"].as_str().unwrap().contains("not JSON"), "{v}");
    // Over the body limit, by header and by streaming.
    let big = vec![b' '; 64 * 1024 + 1];
    let (s, _, _) = call(&app, post("/mutate", big.clone())).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let stream = Body::from_stream(futures_util::stream::iter(
        big.chunks(1000).map(|c| Ok::<_, std::io::Error>(c.to_vec())).collect::<Vec<_>>(),
    ));
    let (s, _, _) = call(&app, Request::post("/mutate").body(stream).unwrap()).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    // A review: answered; the same Pod again comes from the decision cache.
    let review = serde_json::to_vec(&common::fixture("reviews/bare-pod.json")).unwrap();
    for _ in 0..2 {
        let (s, _, b) = call(&app, post("/mutate", review.clone())).await;
        assert_eq!(s, StatusCode::OK);
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["response"]["allowed"], true);
        assert_eq!(v["response"]["patchType"], "JSONPatch");
    }
    // Anything else: 404 naming the endpoints.
    let (s, _, b) = call(&app, Request::get("/nope").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&b).contains("POST /mutate"));
    // Metrics count all of it.
    let (s, ct, b) = call(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let text = String::from_utf8(b).unwrap();
    assert_eq!(common::metric(&text, "nixuv_admission_requests_total{endpoint=\"mutate\",decision=\"invalid\"}"), 1.0);
    assert_eq!(common::metric(&text, "nixuv_admission_requests_total{endpoint=\"mutate\",decision=\"injected\"}"), 2.0);
    assert_eq!(common::metric(&text, "nixuv_decision_cache_lookups_total{result=\"hit\"}"), 1.0);
    assert_eq!(common::metric(&text, "nixuv_http_errors_total{code=\"413\"}"), 2.0);
}

#[tokio::test]
async fn preview_routes_limits_and_placement() {
    let st = state(HandlerLimits { preview_concurrency: 1, preview_max_output: 6000, ..HandlerLimits::default() });
    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","labels":{"nixuv.io/inject":"true"},"annotations":{"nixuv.io/system-deps":"gcc"}},"spec":{"containers":[{"name":"a","image":"x"}]}}"#;
    let with = router(Arc::clone(&st), true, true);
    let (s, _, b) = call(&with, post("/preview", pod)).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    // Its answer over the output limit: 413.
    let two = format!(r#"{{"apiVersion":"v1","kind":"List","items":[{pod},{pod}]}}"#);
    let (s, _, b) = call(&with, post("/preview", two)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{}", String::from_utf8_lossy(&b));
    // Every slot taken: 429.
    let held = st.preview_slots.try_acquire().unwrap();
    let (s, _, _) = call(&with, post("/preview", pod)).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    drop(held);
    // Served only on the admin address: not on the webhook's.
    let without = router(Arc::clone(&st), false, false);
    let (s, _, _) = call(&without, post("/preview", pod)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = call(&without, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "metrics on the admin address only");
}
