//! The HTTP API: session keys, stream listing, metrics, health. Errors are JSON.

use crate::access::Sessions;
use crate::metrics::{Metrics, StreamStats};
use crate::srt::streamid::normalize_hex;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;
use subtle::ConstantTimeEq;
use tracing::info;

pub struct StreamEntry {
    pub id: String,
    pub name: String,
    pub token: String,
    pub stats: Arc<StreamStats>,
}

pub struct AppState {
    pub streams: Vec<StreamEntry>,
    pub sessions: Arc<Sessions>,
    pub metrics: Arc<Metrics>,
    /// The relay's latency (the least any viewer has), for the delay headroom check.
    pub latency_ms: u64,
}

struct ApiError(StatusCode, std::borrow::Cow<'static, str>);

impl ApiError {
    fn new(status: StatusCode, msg: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        ApiError(status, msg.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/streams/{id}/sessions", post(create_session))
        .route("/v1/streams/{id}/delay", get(get_delay).put(put_delay))
        .route("/v1/streams", get(list_streams))
        .route("/v1/metrics", get(metrics))
        .route("/metrics", get(metrics))
        .route(
            "/v1/health",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        })
        .with_state(state)
}

/// The configured stream `id` names.
fn stream<'a>(st: &'a AppState, id: &str) -> Result<&'a StreamEntry, ApiError> {
    let resource = normalize_hex(id)
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "stream id must be hex"))?;
    st.streams
        .iter()
        .find(|s| s.id == resource)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "unknown stream"))
}

/// The request carries the stream's bearer token (compared in constant time).
fn authorize(stream: &StreamEntry, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "missing bearer token"))?;
    if !bool::from(given.as_bytes().ct_eq(stream.token.as_bytes())) {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid token"));
    }
    Ok(())
}

async fn create_session(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let stream = stream(&st, &id)?;
    authorize(stream, &headers)?;
    let resource = &stream.id;
    let session_id = st.sessions.insert(resource, rand::random(), Instant::now());
    info!(resource = %resource, "session key issued");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "resource_id": resource, "session_id": session_id })),
    ))
}

fn delay_json(s: &StreamEntry) -> serde_json::Value {
    json!({
        "id": s.id,
        "delay_ms": s.stats.delay_target_ms.load(Relaxed),
        "delay_applied_ms": s.stats.delay_applied_us.load(Relaxed) / 1000,
    })
}

async fn get_delay(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(delay_json(stream(&st, &id)?)))
}

/// `{"delay_ms": N}`: the stream's viewers move to the new delay gradually (see README).
async fn put_delay(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let stream = stream(&st, &id)?;
    authorize(stream, &headers)?;
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("body is not JSON: {e}")))?;
    let delay_ms = v.get("delay_ms").and_then(|d| d.as_u64()).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            r#"body must be {"delay_ms": <non-negative integer>}"#,
        )
    })?;
    let rate = stream.stats.packet_rate.load(Relaxed);
    crate::delay::check(delay_ms, rate, st.latency_ms)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    stream.stats.delay_target_ms.store(delay_ms, Relaxed);
    info!(resource = %stream.id, delay_ms, "stream delay set");
    Ok(Json(delay_json(stream)))
}

async fn list_streams(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    let list: Vec<_> = st
        .streams
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "name": s.name,
                "publisher": s.stats.publisher.load(Relaxed),
                "viewers": s.stats.viewers.load(Relaxed),
                "bitrate_bps": s.stats.bitrate_bps.load(Relaxed),
                "delay_ms": s.stats.delay_target_ms.load(Relaxed),
                "delay_applied_ms": s.stats.delay_applied_us.load(Relaxed) / 1000,
                "ingest_latency_ms": s.stats.ingest_latency_us.load(Relaxed) as f64 / 1e3,
            })
        })
        .collect();
    Json(list)
}

async fn metrics(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
}
