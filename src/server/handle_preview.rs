//! `POST /preview`: the same inputs and outputs as `nixuv preview`, no side effects.

use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::body::read_body;
use super::error::ApiError;
use super::metrics::Endpoint;
use super::AppState;
use crate::preview;

#[derive(Debug, Deserialize)]
pub struct PreviewQuery {
    pub namespace: Option<String>,
}

pub async fn preview(
    State(state): State<Arc<AppState>>,
    Query(q): Query<PreviewQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    let wants_yaml =
        req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("yaml"));
    let Ok(_slot) = state.preview_slots.try_acquire() else {
        state.metrics.count(Endpoint::preview, "throttled");
        return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too many previews at once; retry shortly"));
    };
    let body = read_body(&state, req, state.preview_body_limit).await?;
    let start = std::time::Instant::now();
    if std::str::from_utf8(&body.bytes).is_err() {
        return Err(ApiError::bad_request("body is not UTF-8"));
    }
    // Rendered on the preview threads, never on the runtime that serves /mutate.
    let (injector, claims, metrics) =
        (state.injector.load_full(), Arc::clone(&state.claims), Arc::clone(&state.metrics));
    let max_output = state.preview_max_output;
    let (content_type, body) = state
        .preview_pool
        .run(move || {
            // The body is read in place (not copied), and stays in the byte budget until rendered.
            let text = std::str::from_utf8(&body.bytes).unwrap_or_default();
            render(text, q.namespace.as_deref(), &injector, claims.as_ref(), &metrics, wants_yaml, max_output)
        })
        .await??;
    state.metrics.observe(Endpoint::preview, start.elapsed());
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static(content_type))], body).into_response())
}

/// The answer to one preview: its content type and bytes.
fn render(
    text: &str,
    namespace: Option<&str>,
    injector: &crate::inject::Injector,
    claims: &dyn crate::claims::Claims,
    metrics: &super::metrics::Metrics,
    wants_yaml: bool,
    max_output: usize,
) -> Result<(&'static str, Vec<u8>), ApiError> {
    let (_, docs, previews) = match preview::preview_text(text, namespace, injector, claims) {
        Ok(r) => r,
        Err(e) => {
            metrics.count(Endpoint::preview, "invalid");
            return Err(ApiError::bad_request(e.to_string()));
        }
    };
    for p in &previews {
        metrics.count(Endpoint::preview, preview::outcome(p).as_str());
    }
    let too_large = |len: usize| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the preview's answer would be {len} bytes, over the limit of {max_output} (--preview-max-output); send fewer objects"
            ),
        )
    };
    let (content_type, body) = if wants_yaml {
        ("application/yaml", preview::output::yaml(&docs, &previews).into_bytes())
    } else {
        let results = preview::output::results(&previews);
        let body = if results.len() == 1 { serde_json::to_vec(&results[0]) } else { serde_json::to_vec(&results) };
        ("application/json", body.expect("serialises"))
    };
    if body.len() > max_output {
        return Err(too_large(body.len()));
    }
    Ok((content_type, body))
}
