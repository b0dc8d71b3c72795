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
    let bytes: &[u8] = &body.bytes;
    let start = std::time::Instant::now();
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Err(ApiError::bad_request("body is not UTF-8"));
    };
    let injector = state.injector.load();
    let (_, docs, previews) =
        match preview::preview_text(text, q.namespace.as_deref(), &injector, state.claims.as_ref()) {
            Ok(r) => r,
            Err(e) => {
                state.metrics.count(Endpoint::preview, "invalid");
                return Err(ApiError::bad_request(e.to_string()));
            }
        };
    for p in &previews {
        let decision = preview::outcome(p).as_str();
        state.metrics.count(Endpoint::preview, decision);
    }
    state.metrics.observe(Endpoint::preview, start.elapsed());
    let too_large = |len: usize| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the preview's answer would be {len} bytes, over the limit of {} (--preview-max-output); send fewer objects",
                state.preview_max_output
            ),
        )
    };
    if wants_yaml {
        let body = preview::output::yaml(&docs, &previews);
        if body.len() > state.preview_max_output {
            return Err(too_large(body.len()));
        }
        return Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/yaml"))], body).into_response());
    }
    let results = preview::output::results(&previews);
    let body = if results.len() == 1 { serde_json::to_vec(&results[0]) } else { serde_json::to_vec(&results) };
    let body = body.expect("serialises");
    if body.len() > state.preview_max_output {
        return Err(too_large(body.len()));
    }
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response())
}
