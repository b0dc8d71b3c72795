//! Reading a request body: within the size limit, the request's deadline and the server's
//! budget of bytes in flight ([`super::budget`]).

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, StatusCode};
use http_body_util::BodyExt;

use super::budget::Held;
use super::conn::PeerAddr;
use super::error::ApiError;
use super::AppState;

/// A body read whole, and the bytes of the budget it holds until dropped.
pub struct ReadBody {
    pub bytes: Bytes,
    pub _held: Held,
}

/// The request's declared length, refused at once when over `limit`.
pub fn declared_length(req: &Request, limit: usize) -> Result<Option<usize>, ApiError> {
    let len = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    match len {
        Some(len) if len > limit as u64 => Err(ApiError::too_large(limit)),
        Some(len) => Ok(Some(len as usize)),
        None => Ok(None),
    }
}

/// Reads the whole body of `req` within `limit` bytes and the request timeout, its bytes taken
/// from the budget before they are buffered: the declared length up front, else each frame as it
/// comes.
pub async fn read_body(state: &AppState, req: Request, limit: usize) -> Result<ReadBody, ApiError> {
    let declared = declared_length(&req, limit)?;
    let client = req.extensions().get::<PeerAddr>().map(|p| p.0.ip());
    let mut held = state.budget.empty(client);
    if let Some(len) = declared {
        state.budget.take(&mut held, len).await?;
    }
    let body: Body = req.into_body();
    let read = async {
        let mut body = body;
        let mut buf: Vec<u8> = Vec::with_capacity(declared.unwrap_or(0).min(limit));
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
            let Ok(data) = frame.into_data() else { continue };
            if buf.len() + data.len() > limit {
                return Err(ApiError::too_large(limit));
            }
            let within = declared.is_some_and(|d| buf.len() + data.len() <= d);
            if !within {
                state.budget.take(&mut held, data.len()).await?;
            }
            buf.extend_from_slice(&data);
        }
        Ok(Bytes::from(buf))
    };
    match tokio::time::timeout(state.request_timeout, read).await {
        Err(_) => Err(ApiError::new(StatusCode::REQUEST_TIMEOUT, "timed out reading the request body")),
        Ok(Err(e)) => Err(e),
        Ok(Ok(bytes)) => Ok(ReadBody { bytes, _held: held }),
    }
}
