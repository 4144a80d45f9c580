//! The HTTP API: session keys, streams, connections (list, close), reload, metrics, health.
//! Every error is JSON, `{"error": "<reason>"}`. The server it runs on is `serve`.

mod serve;

pub use serve::{connection_cap, nofile_limit, serve, ServeOptions, MAX_CONNECTIONS};

use crate::access::{Access, SharedAccess, StreamEntry};
use crate::api::{
    ConnectionInfo, ConnectionStats, CreateSession, Delay, ErrorBody, Health, SessionCreated,
    SetDelay, StreamInfo, UpstreamInfo, METRICS_CONTENT_TYPE,
};
use crate::driver::{RelayHandle, Unavailable};
use crate::metrics::Scrape;
use crate::relay::{Command, CommandError, ConnMode, ConnSnapshot, Reply, StreamSnapshot};
use crate::reload::{ReloadError, Reloader};
use crate::srt::streamid::normalize_hex;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use std::borrow::Cow;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// A request's URI (path and query) may be this long; longer ones get 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// A request head (request line and headers) may be this large; larger ones get 431 (414
/// when the request line alone does not fit). Also hyper's read buffer, so it bounds what
/// a connection can make the server hold before a request is dispatched.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// A request body may be this large; larger ones get 413. The API's bodies are a few bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub access: SharedAccess,
    /// Live state and changes go through the relay.
    pub relay: RelayHandle,
    /// `POST /v1/reload` (none: answered 503).
    pub reloader: Option<Arc<Reloader>>,
}

impl AppState {
    fn access(&self) -> Arc<Access> {
        self.access
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

struct ApiError(StatusCode, Cow<'static, str>);

impl ApiError {
    fn new(status: StatusCode, msg: impl Into<Cow<'static, str>>) -> Self {
        ApiError(status, msg.into())
    }
}

impl From<Unavailable> for ApiError {
    fn from(e: Unavailable) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        let status = match e {
            CommandError::UnknownStream | CommandError::UnknownConnection => StatusCode::NOT_FOUND,
            CommandError::Passphrase => StatusCode::BAD_REQUEST,
            CommandError::TooManyKeys(_) => StatusCode::TOO_MANY_REQUESTS,
            CommandError::Delay(_) => StatusCode::UNPROCESSABLE_ENTITY,
            CommandError::TooManyStreams | CommandError::StreamExists => StatusCode::CONFLICT,
        };
        ApiError::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.0,
            Json(ErrorBody {
                error: self.1.into(),
            }),
        )
            .into_response()
    }
}

/// `{"error": msg}` as bytes, for answers written below axum.
fn error_body(msg: &str) -> Vec<u8> {
    let body = ErrorBody { error: msg.into() };
    serde_json::to_vec(&body).expect("a string serialises")
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/streams/{id}/sessions", post(create_session))
        .route("/v1/streams/{id}/delay", get(get_delay).put(put_delay))
        .route("/v1/streams/{id}/connections", get(stream_connections))
        .route("/v1/streams", get(list_streams))
        .route("/v1/connections", get(list_connections))
        .route("/v1/connections/{id}", delete(close_connection))
        .route("/v1/reload", post(reload))
        .route("/v1/metrics", get(metrics))
        .route("/metrics", get(metrics))
        .route("/v1/health", get(|| async { Json(Health::ok()) }))
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

/// The configured stream `id` names.
fn stream<'a>(st: &'a Access, id: &str) -> Result<&'a StreamEntry, ApiError> {
    let resource = normalize_hex(id)
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "stream id must be hex"))?;
    st.streams
        .iter()
        .find(|s| s.id == resource)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "unknown stream"))
}

/// The bearer token of the request, or 401.
fn bearer(headers: &HeaderMap) -> Result<&[u8], ApiError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::as_bytes)
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "missing bearer token"))
}

/// Whether `given` is `token` (compared in constant time).
fn same_token(given: &[u8], token: Option<&str>) -> bool {
    token.is_some_and(|t| bool::from(given.ct_eq(t.as_bytes())))
}

/// The request carries the stream's bearer token or the admin token.
fn authorize(st: &Access, stream: &StreamEntry, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = bearer(headers)?;
    if same_token(given, Some(&stream.token)) || same_token(given, st.admin_token.as_deref()) {
        return Ok(());
    }
    Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid token"))
}

/// The request carries the admin token (403 when the relay has none configured).
fn authorize_admin(st: &Access, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = bearer(headers)?;
    if st.admin_token.is_none() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this endpoint needs the admin token, and config.json sets no `admin_token`",
        ));
    }
    if same_token(given, st.admin_token.as_deref()) {
        return Ok(());
    }
    Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid token"))
}

async fn create_session(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let access = st.access();
    let stream = stream(&access, &id)?;
    authorize(&access, stream, &headers)?;
    let mut params = CreateSession::default();
    if !body.trim_ascii().is_empty() {
        params = json_object(
            &body,
            r#"empty, {} or {"encrypt": true, "mode": "publish" | "request"} (both optional)"#,
        )?;
    }
    // 24 random bytes as hex: 48 characters, within libsrt's 10 to 79. (A relay with a
    // `key_secret` derives a signed key's passphrase from the key instead.)
    let passphrase = (params.encrypt == Some(true)).then(|| {
        rand::random::<[u8; 24]>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    });
    let cmd = Command::MintSession {
        resource: stream.id.clone(),
        key: rand::random(),
        passphrase,
        mode: params.mode.map(Into::into),
    };
    let Reply::Session(minted) = st.relay.command(cmd).await?? else {
        unreachable!("a session command is answered with a session");
    };
    let created = SessionCreated {
        passphrase: minted.passphrase,
        resource_id: stream.id.clone(),
        session_id: minted.key,
    };
    Ok((StatusCode::CREATED, Json(created)))
}

/// Stream `id`'s live state, from a snapshot of the relay.
async fn snapshot(st: &AppState, id: &str) -> Result<StreamSnapshot, ApiError> {
    let (relay, _) = st.relay.stats().await?;
    relay
        .streams
        .into_iter()
        .find(|s| s.resource == id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "unknown stream"))
}

fn delay(s: &StreamSnapshot) -> Delay {
    Delay {
        id: s.resource.clone(),
        delay_ms: s.delay_target_ms,
        delay_applied_ms: s.delay_applied_us / 1000,
    }
}

async fn get_delay(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = stream(&st.access(), &id)?.id.clone();
    Ok(Json(delay(&snapshot(&st, &id).await?)))
}

/// `{"delay_ms": N}`: the stream's viewers move to the new delay gradually (see README).
async fn put_delay(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let access = st.access();
    let stream = stream(&access, &id)?;
    authorize(&access, stream, &headers)?;
    let SetDelay { delay_ms } = json_object(&body, r#"{"delay_ms": <non-negative integer>}"#)?;
    let cmd = Command::SetDelay {
        resource: stream.id.clone(),
        delay_ms,
    };
    let Reply::Stream(s) = st.relay.command(cmd).await?? else {
        unreachable!("a delay command is answered with the stream");
    };
    Ok(Json(delay(&s)))
}

async fn list_streams(State(st): State<Arc<AppState>>) -> Result<impl IntoResponse, ApiError> {
    let (relay, _) = st.relay.stats().await?;
    let list: Vec<StreamInfo> = st
        .access()
        .streams
        .iter()
        .filter_map(|e| {
            let s = relay.streams.iter().find(|s| s.resource == e.id)?;
            Some(StreamInfo {
                id: e.id.clone(),
                name: e.name.clone(),
                publisher: s.publisher,
                viewers: s.viewers,
                bitrate_bps: s.bitrate_bps,
                delay_ms: s.delay_target_ms,
                delay_applied_ms: s.delay_applied_us / 1000,
                ingest_latency_ms: s.ingest_latency_us as f64 / 1e3,
                upstream: s.pull.as_ref().map(|p| {
                    let c = p
                        .conn
                        .and_then(|id| relay.conns.iter().find(|c| c.id == id));
                    let stats = c.map(|c| c.stats).unwrap_or_default();
                    UpstreamInfo {
                        upstream: p.upstream.clone(),
                        state: p.state.into(),
                        connection: p.conn,
                        reconnects: p.reconnects,
                        failures: p.failures,
                        rtt_ms: stats.rtt_us as f64 / 1e3,
                        packets_received: stats.data_packets_recv,
                        packets_lost: stats.data_packets_lost,
                    }
                }),
            })
        })
        .collect();
    Ok(Json(list))
}

/// `POST /v1/reload` (admin token): config.json read again and applied; the answer says
/// what changed (`reload::Summary`), or 422 with the reason the file is refused.
async fn reload(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    authorize_admin(&st.access(), &headers)?;
    let Some(r) = st.reloader.clone() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this relay cannot reload",
        ));
    };
    match r.reload("POST /v1/reload").await {
        Ok(summary) => Ok(Json(summary)),
        Err(e @ ReloadError::Invalid(_)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            e.to_string(),
        )),
        Err(e @ ReloadError::Unavailable) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        )),
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> Result<impl IntoResponse, ApiError> {
    let (relay, datapath) = st.relay.stats().await?;
    let scrape = Scrape {
        relay,
        datapath,
        heap_allocations: crate::alloc_count::allocations(),
        snapshots: st.relay.snapshots_taken(),
        max_connection_series: st.access().metrics_max_connections,
    };
    Ok((
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        scrape.render(),
    ))
}

fn connection_info(c: &ConnSnapshot) -> ConnectionInfo {
    let s = &c.stats;
    ConnectionInfo {
        connected_since: c.since_unix_us / 1_000_000,
        datapath: c.datapath.as_str().into(),
        id: c.id,
        latency_ms: c.latency_ms,
        mode: c.mode.as_str().into(),
        peer: c.peer.to_string(),
        stats: ConnectionStats {
            ctrl_bytes_lost: s.ctrl_bytes_lost,
            ctrl_bytes_recv: s.ctrl_bytes_recv,
            ctrl_bytes_sent: s.ctrl_bytes_sent,
            ctrl_packets_lost: s.ctrl_packets_lost,
            ctrl_packets_recv: s.ctrl_packets_recv,
            ctrl_packets_sent: s.ctrl_packets_sent,
            data_bytes_lost: s.data_bytes_lost,
            data_bytes_recv: s.data_bytes_recv,
            data_bytes_sent: s.data_bytes_sent,
            data_packets_dropped: s.data_packets_dropped,
            data_packets_lost: s.data_packets_lost,
            data_packets_recv: s.data_packets_recv,
            data_packets_retransmitted: s.data_packets_retrans,
            data_packets_sent: s.data_packets_sent,
            data_packets_sent_kernel: s.data_packets_sent_kernel,
            naks_recv: s.naks_recv,
            naks_sent: s.naks_sent,
            peer_buffer_available: s.peer_buffer_available,
            peer_buffer_size: s.peer_buffer_size,
            playout_lead_ms: (c.mode == ConnMode::Request).then(|| s.playout_lead_us as f64 / 1e3),
            recv_rate_bps: s.recv_rate_bps,
            rtt_ms: s.rtt_us as f64 / 1e3,
            rtt_variance_ms: s.rtt_var_us as f64 / 1e3,
            send_rate_bps: s.send_rate_bps,
        },
        stream: c.resource.clone(),
    }
}

/// Every connection, with the admin token.
async fn list_connections(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    authorize_admin(&st.access(), &headers)?;
    let (relay, _) = st.relay.stats().await?;
    Ok(Json(
        relay.conns.iter().map(connection_info).collect::<Vec<_>>(),
    ))
}

/// One stream's connections, with its token or the admin token.
async fn stream_connections(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let access = st.access();
    let stream = stream(&access, &id)?;
    authorize(&access, stream, &headers)?;
    let (relay, _) = st.relay.stats().await?;
    let list: Vec<ConnectionInfo> = relay
        .conns
        .iter()
        .filter(|c| c.resource == stream.id)
        .map(connection_info)
        .collect();
    Ok(Json(list))
}

/// Closes a connection (SHUTDOWN to its peer), with the admin token or the token of the
/// connection's stream. Another stream's token sees no connection of this one: 404, as for
/// an id that does not exist, so stream tokens cannot probe each other's connections; a
/// token that is no stream's is 401.
async fn close_connection(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let given = bearer(&headers)?;
    let access = st.access();
    let admin = same_token(given, access.admin_token.as_deref());
    let own: Vec<&str> = access
        .streams
        .iter()
        .filter(|s| same_token(given, Some(&s.token)))
        .map(|s| s.id.as_str())
        .collect();
    if !admin && own.is_empty() {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid token"));
    }
    let conn: u32 = id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "connection id must be a decimal number (the `id` of GET /v1/connections)",
        )
    })?;
    let unknown = || ApiError::new(StatusCode::NOT_FOUND, "unknown connection");
    if !admin {
        let (relay, _) = st.relay.stats().await?;
        let c = relay
            .conns
            .iter()
            .find(|c| c.id == conn)
            .ok_or_else(unknown)?;
        if !own.contains(&c.resource.as_str()) {
            return Err(unknown());
        }
    }
    st.relay.command(Command::Close { conn }).await??;
    Ok(StatusCode::NO_CONTENT)
}
