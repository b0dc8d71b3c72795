//! The handlers' error type: an HTTP status and a message, answered as JSON
//! (`{"error": ..., "code": ...}`); handlers return `Result<Response, ApiError>`, and the router's
//! [`count_errors`] layer counts every such answer in `nixuv_http_errors_total`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::metrics::CodeLabels;
use super::AppState;

/// An answer other than the core's: the request could not be read, was too large, or came at a
/// bad time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: StatusCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into() }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn too_large(limit: usize) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, format!("request body exceeds the limit of {limit} bytes"))
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    code: u16,
}

/// Marks a response made from an [`ApiError`], for [`count_errors`].
#[derive(Clone, Copy)]
struct Counted(u16);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code.as_u16();
        let body = serde_json::to_vec(&ErrorBody { error: &self.message, code }).expect("serialises");
        let mut resp =
            (self.code, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response();
        resp.extensions_mut().insert(Counted(code));
        resp
    }
}

/// Counts the answers made from an [`ApiError`] by status code (a router layer).
pub async fn count_errors(State(state): State<Arc<AppState>>, resp: Response) -> Response {
    if let Some(Counted(code)) = resp.extensions().get::<Counted>() {
        state.metrics.http_errors.get_or_create(&CodeLabels { code: *code }).inc();
    }
    resp
}
