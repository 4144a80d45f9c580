//! The HTTP API: session keys, stream listing, metrics, health. Errors are JSON.

use crate::access::Sessions;
use crate::metrics::{Metrics, StreamStats};
use crate::srt::streamid::normalize_hex;
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
}

struct ApiError(StatusCode, &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/streams/{id}/sessions", post(create_session))
        .route("/v1/streams", get(list_streams))
        .route("/v1/metrics", get(metrics))
        .route("/metrics", get(metrics))
        .route(
            "/v1/health",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        })
        .with_state(state)
}

async fn create_session(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let resource =
        normalize_hex(&id).ok_or(ApiError(StatusCode::BAD_REQUEST, "stream id must be hex"))?;
    let stream = st
        .streams
        .iter()
        .find(|s| s.id == resource)
        .ok_or(ApiError(StatusCode::NOT_FOUND, "unknown stream"))?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError(StatusCode::UNAUTHORIZED, "missing bearer token"))?;
    if !bool::from(given.as_bytes().ct_eq(stream.token.as_bytes())) {
        return Err(ApiError(StatusCode::UNAUTHORIZED, "invalid token"));
    }
    let session_id = st
        .sessions
        .insert(&resource, rand::random(), Instant::now());
    info!(resource = %resource, "session key issued");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "resource_id": resource, "session_id": session_id })),
    ))
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
