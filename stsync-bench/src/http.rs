//! Just enough HTTP/1.1 to mint session keys from the relay's API and poll its health.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One request on a fresh connection; returns (status, body).
pub fn request(
    netns: Option<&str>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, String)> {
    let mut s = stsync_user::os::in_netns(netns, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2))
    })
    .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("malformed HTTP response")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// `POST /v1/streams/:id/sessions` → the new session key.
pub fn mint_session(
    netns: Option<&str>,
    addr: SocketAddr,
    stream: &str,
    token: &str,
) -> Result<String> {
    let (status, body) = request(
        netns,
        addr,
        "POST",
        &format!("/v1/streams/{stream}/sessions"),
        Some(token),
    )?;
    if status != 201 {
        bail!("minting a session key: HTTP {status}: {}", body.trim());
    }
    let v: serde_json::Value = serde_json::from_str(&body).context("session answer")?;
    v.get("session_id")
        .and_then(|s| s.as_str())
        .map(str::to_string)
        .context("no session_id in the answer")
}

/// Polls `GET /v1/health` until it answers 200 or `timeout` passes.
pub fn wait_healthy(netns: Option<&str>, addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match request(netns, addr, "GET", "/v1/health", None) {
            Ok((200, _)) => return Ok(()),
            r if std::time::Instant::now() >= deadline => {
                bail!("relay HTTP at {addr} not healthy: {r:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
