//! The HTTP API: session keys, stream listing, metrics, health. Every error is JSON,
//! `{"error": "<reason>"}`. The server it runs on is `serve`.

mod serve;

pub use serve::{connection_cap, nofile_limit, serve, ServeOptions, MAX_CONNECTIONS};

use crate::access::{Sessions, MAX_KEYS_PER_STREAM};
use crate::metrics::{Metrics, StreamStats};
use crate::srt::streamid::normalize_hex;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use std::borrow::Cow;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;
use subtle::ConstantTimeEq;
use tracing::debug;

/// A request's URI (path and query) may be this long; longer ones get 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// A request head (request line and headers) may be this large; larger ones get 431 (414
/// when the request line alone does not fit). Also hyper's read buffer, so it bounds what
/// a connection can make the server hold before a request is dispatched.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// A request body may be this large; larger ones get 413. The API's bodies are a few bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

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

struct ApiError(StatusCode, Cow<'static, str>);

impl ApiError {
    fn new(status: StatusCode, msg: impl Into<Cow<'static, str>>) -> Self {
        ApiError(status, msg.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

/// `{"error": msg}` as bytes, for answers written below axum.
fn error_body(msg: &str) -> Vec<u8> {
    json!({ "error": msg }).to_string().into_bytes()
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
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::map_response(json_errors))
        .layer(middleware::from_fn(uri_limit))
        .with_state(state)
}

/// Errors that axum and its layers produce themselves (a body over the limit, an
/// extractor's rejection) are plain text; the API's are JSON.
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let msg: Cow<'static, str> = if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!("request body larger than {MAX_BODY_BYTES} bytes").into()
    } else {
        match axum::body::to_bytes(resp.into_body(), 1024).await {
            Ok(text) if !text.trim_ascii().is_empty() => String::from_utf8_lossy(text.trim_ascii())
                .into_owned()
                .into(),
            _ => status.canonical_reason().unwrap_or("error").into(),
        }
    };
    ApiError(status, msg).into_response()
}

fn uri_len(uri: &Uri) -> usize {
    uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len())
}

/// A URI over `MAX_URI_BYTES` is refused before routing (one whose request line does not
/// even fit the head buffer is refused by `serve`).
async fn uri_limit(req: Request, next: Next) -> Response {
    if uri_len(req.uri()) > MAX_URI_BYTES {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            format!("request URI longer than {MAX_URI_BYTES} bytes"),
        )
        .into_response();
    }
    next.run(req).await
}

/// A JSON object body as `T` (whose fields are the only ones accepted), or a 400 saying
/// what the body must be.
fn json_object<T: DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, ApiError> {
    // serde would also take `[750]` for a struct: only an object is the documented shape.
    // Parsed straight into `T`, so a repeated field is refused too.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("body must be {shape}"),
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("body must be {shape}: {e}"),
        )
    })
}

/// `POST .../sessions` takes no parameters yet: an empty body or `{}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionParams {}

/// `PUT .../delay`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DelayParams {
    delay_ms: u64,
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
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let stream = stream(&st, &id)?;
    authorize(stream, &headers)?;
    if !body.trim_ascii().is_empty() {
        let SessionParams {} = json_object(&body, "empty or {}")?;
    }
    let resource = &stream.id;
    let session_id = st
        .sessions
        .mint(
            resource,
            rand::random(),
            Instant::now(),
            MAX_KEYS_PER_STREAM,
        )
        .map_err(|e| ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()))?;
    // Per request, so not at info: a client could flood the log.
    debug!(resource = %resource, "session key issued");
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
    let DelayParams { delay_ms } = json_object(&body, r#"{"delay_ms": <non-negative integer>}"#)?;
    let rate = stream.stats.packet_rate.load(Relaxed);
    crate::delay::check(delay_ms, rate, st.latency_ms)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    stream.stats.delay_target_ms.store(delay_ms, Relaxed);
    debug!(resource = %stream.id, delay_ms, "stream delay set");
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
