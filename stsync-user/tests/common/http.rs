//! HTTP.

use super::*;

#[derive(Debug, Clone)]
pub struct HttpResp {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl HttpResp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// `r` is an API error: `status`, JSON, `{"error": "<reason>"}`.
pub fn assert_json_error(r: &HttpResp, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {r:?}");
    assert!(
        r.content_type.starts_with("application/json"),
        "{what}: content-type {:?}",
        r.content_type
    );
    let v = r.json();
    let e = v.get("error").and_then(|e| e.as_str());
    assert!(
        e.is_some_and(|e| !e.is_empty()),
        "{what}: body should be {{\"error\": \"<reason>\"}}, got {}",
        r.body
    );
}

pub fn http(method: &str, url: &str, headers: &[(&str, &str)]) -> Result<HttpResp, String> {
    http_body(method, url, headers, None)
}

/// An HTTP request with a body (sent as given, without a content type of its own).
pub fn http_body(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<HttpResp, String> {
    http_body_tls(method, url, headers, body, None)
}

/// `http_body`, to an https URL whose certificate `tls` checks.
pub fn http_body_tls(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> Result<HttpResp, String> {
    let mut agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(2))
        .timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        agent = agent.tls_config(tls);
    }
    let agent = agent.build();
    let mut req = agent.request(method, url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let sent = match body {
        Some(b) => req.send_string(b),
        None => req.call(),
    };
    let resp = match sent {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(format!("{method} {url}: {e}")),
    };
    let status = resp.status();
    let content_type = resp.header("content-type").unwrap_or("").to_string();
    let body = resp.into_string().map_err(|e| e.to_string())?;
    Ok(HttpResp {
        status,
        content_type,
        body,
    })
}

pub fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Reads until the server closes (or `limit` passes): what it sent, and how long it took.
pub fn read_to_close(s: &mut std::net::TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    use std::io::{ErrorKind, Read};
    let start = std::time::Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // A reset also ends the connection.
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("no close within {limit:?} ({e}); got {:?}", lossy(&out)),
        }
    }
    (out, start.elapsed())
}

/// A TCP connection to `to` from loopback address `from` (every 127.x.y.z is this host),
/// so one test can be several clients of the relay's per-address budgets.
pub fn connect_from(from: Ipv4Addr, to: SocketAddrV4) -> std::net::TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SocketAddrV4::new(from, 0).into())
        .unwrap_or_else(|e| panic!("bind {from}: {e}"));
    s.connect_timeout(&to.into(), Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("connect {from} → {to}: {e}"));
    let s: std::net::TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// The `i`-th of several client addresses, none of them 127.0.0.1 (the tests' own API
/// calls come from there): 127.0.1.x.
pub fn client_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 1, 1 + (i % 250) as u8)
}
