//! The relay's HTTP API through `stsync_user::api::Client`, from inside `netns` when the
//! relay lives in a network namespace (the whole call runs on a thread that entered it).

use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::time::Duration;
use stsync_user::api::{ApiError, Client};

/// Runs `call` against the relay at `addr`, inside `netns` if given.
fn with_client<T: Send>(
    netns: Option<&str>,
    addr: SocketAddr,
    token: Option<&str>,
    call: impl FnOnce(&Client) -> Result<T, ApiError> + Send,
) -> Result<T> {
    let client = Client::for_addr(addr, token);
    let answer = stsync_user::os::in_netns(netns, || Ok::<_, std::io::Error>(call(&client)))
        .with_context(|| format!("entering network namespace {netns:?}"))?;
    Ok(answer?)
}

/// `n` session keys, through one kept-alive connection (the relay holds one address to 50
/// new connections a second).
pub fn mint_sessions(
    netns: Option<&str>,
    addr: SocketAddr,
    stream: &str,
    token: &str,
    n: usize,
) -> Result<Vec<String>> {
    with_client(netns, addr, Some(token), |c| {
        (0..n)
            .map(|_| c.create_session(stream).map(|s| s.session_id))
            .collect()
    })
    .context("minting session keys")
}

/// `POST /v1/streams/:id/sessions` → the new session key.
pub fn mint_session(
    netns: Option<&str>,
    addr: SocketAddr,
    stream: &str,
    token: &str,
) -> Result<String> {
    let created = with_client(netns, addr, Some(token), |c| c.create_session(stream))
        .context("minting a session key")?;
    Ok(created.session_id)
}

/// Whether `GET /v1/health` answers.
pub fn healthy(netns: Option<&str>, addr: SocketAddr) -> bool {
    with_client(netns, addr, None, Client::health).is_ok()
}

/// `GET /v1/metrics`: the relay's Prometheus text.
pub fn metrics(netns: Option<&str>, addr: SocketAddr) -> Result<String> {
    with_client(netns, addr, None, Client::metrics_text)
}

/// Polls `GET /v1/health` until it answers or `timeout` passes.
pub fn wait_healthy(netns: Option<&str>, addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match with_client(netns, addr, None, Client::health) {
            Ok(_) => return Ok(()),
            Err(e) if std::time::Instant::now() >= deadline => {
                bail!("relay HTTP at {addr} not healthy: {e:#}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
