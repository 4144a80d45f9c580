//! A blocking client for the relay's HTTP API, for the `session` subcommand, the bench and
//! the tests. Blocking because all of them are synchronous, and because a caller that must
//! reach a relay inside a network namespace switches the thread's namespace around the call.

use super::{
    ConnectionInfo, CreateSession, Delay, ErrorBody, Health, SessionCreated, SetDelay, StreamInfo,
};
use serde::de::DeserializeOwned;
use std::io::Read;
use std::net::SocketAddr;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// For a whole request, answer included: every answer of the API is small and immediate.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The metrics text grows with the connections (about 1 KiB each); this is far above it.
const MAX_METRICS_BYTES: u64 = 64 << 20;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The relay refused the request; `message` is its `{"error": ...}` (or the raw body
    /// when that is not JSON).
    #[error("the relay answered {status}: {message}")]
    Status { status: u16, message: String },
    /// No answer: connection refused, timed out, not HTTP, or a TLS handshake that failed
    /// (a certificate this client does not trust, say).
    #[error("cannot reach the relay's HTTP API: {0}")]
    Transport(Box<ureq::Transport>),
    /// An answer whose body is not what the endpoint returns.
    #[error("unexpected answer from the relay's HTTP API: {0}")]
    Body(std::io::Error),
}

impl ApiError {
    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl From<ureq::Error> for ApiError {
    fn from(e: ureq::Error) -> ApiError {
        match e {
            ureq::Error::Status(status, resp) => {
                let body = resp.into_string().unwrap_or_default();
                let message = match serde_json::from_str::<ErrorBody>(&body) {
                    Ok(b) => b.error,
                    Err(_) => body.trim().to_string(),
                };
                ApiError::Status { status, message }
            }
            ureq::Error::Transport(t) => ApiError::Transport(Box::new(t)),
        }
    }
}

/// The API of one relay, with the bearer token of one stream (or none: listing, delay
/// reads, health and metrics need none).
pub struct Client {
    agent: ureq::Agent,
    base: String,
    auth: Option<String>,
}

impl Client {
    /// `base_url` is e.g. `http://127.0.0.1:9998`, or `https://relay.example:9998`, whose
    /// certificate is then checked against the Mozilla roots built in (webpki-roots).
    pub fn new(base_url: &str, token: Option<&str>) -> Client {
        Client::build(base_url, token, ureq::AgentBuilder::new())
    }

    /// An `https://` API whose certificate `tls` checks (see `crate::tls::trusting` for a
    /// CA file, `crate::tls::pinned` for the relay's own certificate).
    pub fn with_tls(
        base_url: &str,
        token: Option<&str>,
        tls: std::sync::Arc<rustls::ClientConfig>,
    ) -> Client {
        Client::build(base_url, token, ureq::AgentBuilder::new().tls_config(tls))
    }

    fn build(base_url: &str, token: Option<&str>, agent: ureq::AgentBuilder) -> Client {
        Client {
            agent: agent
                .timeout_connect(CONNECT_TIMEOUT)
                .timeout(REQUEST_TIMEOUT)
                .build(),
            base: base_url.trim_end_matches('/').to_string(),
            auth: token.map(|t| format!("Bearer {t}")),
        }
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The relay whose `http_listen` is `addr`, over plain HTTP.
    pub fn for_addr(addr: SocketAddr, token: Option<&str>) -> Client {
        Client::new(&format!("http://{addr}"), token)
    }

    /// `POST /v1/streams/{stream}/sessions`: a new session key.
    pub fn create_session(&self, stream: &str) -> Result<SessionCreated, ApiError> {
        let req = self.request("POST", &format!("/v1/streams/{stream}/sessions"));
        json(req.call()?)
    }

    /// `POST /v1/streams/{stream}/sessions` with `{"encrypt": true}`: a new session key and
    /// the passphrase its connection must encrypt with.
    pub fn create_encrypted_session(&self, stream: &str) -> Result<SessionCreated, ApiError> {
        let req = self.request("POST", &format!("/v1/streams/{stream}/sessions"));
        let body = CreateSession {
            encrypt: Some(true),
            mode: None,
        };
        json(req.send_json(body)?)
    }

    /// `GET /v1/health`.
    pub fn health(&self) -> Result<Health, ApiError> {
        json(self.request("GET", "/v1/health").call()?)
    }

    /// `GET /v1/streams`.
    pub fn streams(&self) -> Result<Vec<StreamInfo>, ApiError> {
        json(self.request("GET", "/v1/streams").call()?)
    }

    /// `GET /v1/streams/{stream}/delay`.
    pub fn delay(&self, stream: &str) -> Result<Delay, ApiError> {
        json(self.request("GET", &delay_path(stream)).call()?)
    }

    /// `PUT /v1/streams/{stream}/delay`.
    pub fn set_delay(&self, stream: &str, delay_ms: u64) -> Result<Delay, ApiError> {
        let req = self.request("PUT", &delay_path(stream));
        json(req.send_json(SetDelay { delay_ms })?)
    }

    /// `GET /v1/connections` (the admin token).
    pub fn connections(&self) -> Result<Vec<ConnectionInfo>, ApiError> {
        json(self.request("GET", "/v1/connections").call()?)
    }

    /// `GET /v1/streams/{stream}/connections`.
    pub fn stream_connections(&self, stream: &str) -> Result<Vec<ConnectionInfo>, ApiError> {
        let path = format!("/v1/streams/{stream}/connections");
        json(self.request("GET", &path).call()?)
    }

    /// `DELETE /v1/connections/{id}`: the relay closes the connection (204).
    pub fn close_connection(&self, id: u32) -> Result<(), ApiError> {
        self.request("DELETE", &format!("/v1/connections/{id}"))
            .call()?;
        Ok(())
    }

    /// `GET /v1/metrics`: the Prometheus text (see [`super::metrics`] to read it).
    pub fn metrics_text(&self) -> Result<String, ApiError> {
        let resp = self.request("GET", "/v1/metrics").call()?;
        let mut text = String::new();
        resp.into_reader()
            .take(MAX_METRICS_BYTES)
            .read_to_string(&mut text)
            .map_err(ApiError::Body)?;
        Ok(text)
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let req = self.agent.request(method, &format!("{}{path}", self.base));
        match &self.auth {
            Some(a) => req.set("Authorization", a),
            None => req,
        }
    }
}

fn delay_path(stream: &str) -> String {
    format!("/v1/streams/{stream}/delay")
}

fn json<T: DeserializeOwned>(resp: ureq::Response) -> Result<T, ApiError> {
    resp.into_json().map_err(ApiError::Body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    /// Answers one request with `answer` and hands back its request line and headers.
    fn one_shot(answer: &'static str) -> (SocketAddr, std::thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s);
            let mut head = String::new();
            while r.read_line(&mut head).unwrap() > 2 {}
            r.get_mut().write_all(answer.as_bytes()).unwrap();
            head
        });
        (addr, t)
    }

    fn answer(status: &str, body: &'static str) -> &'static str {
        format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .leak()
    }

    #[test]
    fn api_client_sends_the_token_and_decodes_the_answer() {
        let (addr, t) = one_shot(answer(
            "201 Created",
            r#"{"resource_id":"1","session_id":"91bf7a9ed500c8ce"}"#,
        ));
        let got = Client::for_addr(addr, Some("tok"))
            .create_session("1")
            .unwrap();
        assert_eq!(got.session_id, "91bf7a9ed500c8ce");
        let head = t.join().unwrap().to_ascii_lowercase();
        assert!(
            head.starts_with("post /v1/streams/1/sessions http/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nauthorization: bearer tok\r\n"), "{head}");
    }

    #[test]
    fn api_client_errors_carry_status_and_reason() {
        let (addr, _) = one_shot(answer("401 Unauthorized", r#"{"error":"invalid token"}"#));
        let e = Client::for_addr(addr, Some("x"))
            .create_session("1")
            .unwrap_err();
        assert_eq!(e.status(), Some(401));
        assert_eq!(e.to_string(), "the relay answered 401: invalid token");

        // Not JSON (a proxy in between, say): the body as it is.
        let (addr, _) = one_shot(answer("502 Bad Gateway", "upstream down\n"));
        let e = Client::for_addr(addr, None).health().unwrap_err();
        assert_eq!(e.to_string(), "the relay answered 502: upstream down");

        // 200 with a body of another shape.
        let (addr, _) = one_shot(answer("200 OK", r#"{"nope":1}"#));
        let e = Client::for_addr(addr, None).health().unwrap_err();
        assert!(matches!(e, ApiError::Body(_)), "{e:?}");

        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let e = Client::for_addr(closed, None).health().unwrap_err();
        assert!(matches!(e, ApiError::Transport(_)), "{e:?}");
    }
}
