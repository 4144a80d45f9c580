//! config.json: listen addresses, protocol settings, limits and the streams with their tokens.

use crate::srt::streamid::normalize_hex;
use anyhow::{bail, Context};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// More workers than this would mostly wait on each other's feeds.
pub const MAX_WORKERS: u32 = 64;
/// The most connections `metrics_max_connections` may give series of their own.
pub const MAX_METRICS_CONNECTIONS: usize = 100_000;
/// Kernel stream rows beyond the configured streams, by default, for streams a reload adds.
pub const KERNEL_STREAMS_HEADROOM: u32 = 16;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "defaults::srt_listen")]
    pub srt_listen: SocketAddr,
    #[serde(default = "defaults::http_listen")]
    pub http_listen: SocketAddr,
    /// The relay's own TSBPD latency; each connection uses the larger of this and the peer's.
    #[serde(default = "defaults::latency_ms")]
    pub latency_ms: u16,
    /// Worker threads, each with its own socket on the SRT port and its share of the
    /// connections (default: the cores this process may use). `--workers` overrides it.
    #[serde(default)]
    pub workers: Option<u32>,
    /// Packets kept per stream for retransmission.
    #[serde(default = "defaults::buffer_packets")]
    pub buffer_packets: u32,
    #[serde(default = "defaults::session_ttl_secs")]
    pub session_ttl_secs: u64,
    #[serde(default = "defaults::idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    #[serde(default = "defaults::max_viewers_per_stream")]
    pub max_viewers_per_stream: usize,
    /// Connections that get `srt_connection_*` series of their own on /v1/metrics (the
    /// oldest; 0: none); the rest are counted in `srt_connection_series_omitted`.
    #[serde(default = "defaults::metrics_max_connections")]
    pub metrics_max_connections: usize,
    /// Open SRT connections from one source address.
    #[serde(default = "defaults::max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Handshake conclusions per second from one source address (bursts of twice this).
    #[serde(default = "defaults::handshakes_per_ip_per_sec")]
    pub handshakes_per_ip_per_sec: u32,
    /// An HTTP request head must be complete this long after the server starts waiting for
    /// it (connection accepted, or the previous response sent); else the connection closes.
    #[serde(default = "defaults::http_header_timeout_ms")]
    pub http_header_timeout_ms: u64,
    /// An HTTP connection that moves no byte either way for this long closes (a stalled
    /// body upload, a client that does not read its response).
    #[serde(default = "defaults::http_idle_timeout_ms")]
    pub http_idle_timeout_ms: u64,
    /// On SIGTERM/SIGINT, HTTP connections still open this long after the signal are closed.
    #[serde(default = "defaults::http_shutdown_timeout_ms")]
    pub http_shutdown_timeout_ms: u64,
    /// HTTP connections one address may hold open at once.
    #[serde(default = "defaults::http_max_connections_per_ip")]
    pub http_max_connections_per_ip: usize,
    /// HTTP connections one address may open per second (bursts of twice this); each may
    /// cost a TLS handshake.
    #[serde(default = "defaults::http_connections_per_ip_per_sec")]
    pub http_connections_per_ip_per_sec: u32,
    /// Packets an encrypted viewer gets under one key before the relay changes it (libsrt's
    /// SRTO_KMREFRESHRATE).
    #[serde(default = "defaults::kmrefreshrate")]
    pub kmrefreshrate: u32,
    /// The next key is announced this many packets before the change, and the old one kept
    /// as long after it (SRTO_KMPREANNOUNCE).
    #[serde(default = "defaults::kmpreannounce")]
    pub kmpreannounce: u32,
    /// The API's certificate chain (PEM, leaf first) and private key (PEM): both set, the
    /// API is served over HTTPS only; neither, plain HTTP. After `load`, relative paths are
    /// resolved against the config file's directory.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Shared by relays that should take each other's session keys (behind a UDP load
    /// balancer or DNS round robin): minted keys are signed with it. None: random keys.
    #[serde(default)]
    pub key_secret: Option<String>,
    /// Opens every stream's endpoints and the relay-wide ones (`/v1/connections`,
    /// `/v1/reload`). None: those take only a stream's own token, for its own connections.
    #[serde(default)]
    pub admin_token: Option<String>,
    /// Streams the eBPF fast path has room for (its maps are sized at start), so that
    /// streams a reload adds are served by the kernel too; a stream beyond them is served
    /// from userspace. Default: the configured streams + `KERNEL_STREAMS_HEADROOM`.
    #[serde(default)]
    pub kernel_streams: Option<u32>,
    pub streams: Vec<StreamConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub token: String,
    /// Viewers play this stream so many ms later (see README, "Synchronising streams").
    #[serde(default)]
    pub delay_ms: u64,
    /// The publisher must encrypt with this passphrase (SRT's `passphrase`); none: it must
    /// not encrypt.
    #[serde(default)]
    pub publish_passphrase: Option<String>,
    /// Viewers must encrypt with this passphrase; none: they must not.
    #[serde(default)]
    pub view_passphrase: Option<String>,
    /// The AES key length (16, 24 or 32 bytes) encrypting callers must use; none: theirs.
    #[serde(default)]
    pub pbkeylen: Option<u8>,
    /// This relay is an edge for the stream: it pulls it from these relays, in order (see
    /// README, "Edge relays"). A stream with upstreams takes no publisher of its own.
    #[serde(default)]
    pub upstream: Vec<Upstream>,
    /// When an edge pulls: while it has viewers (the default) or always.
    #[serde(default)]
    pub pull: Pull,
}

impl StreamConfig {
    /// The stream as the relay core takes it.
    pub fn relay(&self) -> crate::relay::StreamConfig {
        crate::relay::StreamConfig {
            resource: self.id.clone(),
            delay_ms: self.delay_ms,
            publish_passphrase: self.publish_passphrase.clone(),
            view_passphrase: self.view_passphrase.clone(),
            pbkeylen: self.pbkeylen,
            upstreams: self.upstream.iter().map(|u| u.srt.clone()).collect(),
            pull_always: self.pull == Pull::Always,
        }
    }
}

/// A relay an edge pulls a stream from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Its SRT address, `host:port` (resolved at each connection attempt).
    pub srt: String,
    /// Its API's base URL, where session keys are minted (`http://host:port`).
    pub api: String,
    /// The stream's token there.
    pub token: String,
    /// The upstream's viewers must encrypt (its `view_passphrase`): this edge does, with
    /// this passphrase (a key the upstream mints with a passphrase of its own asks for
    /// that one instead).
    #[serde(default)]
    pub passphrase: Option<String>,
    /// The AES key length (16, 24 or 32 bytes) this edge offers; default 16.
    #[serde(default)]
    pub pbkeylen: Option<u8>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pull {
    /// While the stream has viewers here (and a few seconds after the last one left).
    #[default]
    OnDemand,
    Always,
}

/// What config.json's optional fields default to (the README's table says the same).
mod defaults {
    use std::net::SocketAddr;
    pub fn srt_listen() -> SocketAddr {
        "0.0.0.0:9999".parse().unwrap()
    }
    pub fn http_listen() -> SocketAddr {
        "0.0.0.0:9998".parse().unwrap()
    }
    pub fn latency_ms() -> u16 {
        120
    }
    pub fn buffer_packets() -> u32 {
        8192
    }
    pub fn session_ttl_secs() -> u64 {
        300
    }
    pub fn idle_timeout_ms() -> u64 {
        5000
    }
    pub fn max_connections() -> usize {
        4096
    }
    pub fn max_viewers_per_stream() -> usize {
        1024
    }
    pub fn metrics_max_connections() -> usize {
        1000
    }
    pub fn max_connections_per_ip() -> usize {
        256
    }
    pub fn handshakes_per_ip_per_sec() -> u32 {
        20
    }
    pub fn http_header_timeout_ms() -> u64 {
        30_000
    }
    pub fn http_idle_timeout_ms() -> u64 {
        30_000
    }
    pub fn http_shutdown_timeout_ms() -> u64 {
        3_000
    }
    pub fn http_max_connections_per_ip() -> usize {
        64
    }
    pub fn http_connections_per_ip_per_sec() -> u32 {
        50
    }
    pub fn kmrefreshrate() -> u32 {
        crate::relay::KeySchedule::default().refresh_rate
    }
    pub fn kmpreannounce() -> u32 {
        crate::relay::KeySchedule::default().pre_announce
    }
}

/// Tokens shorter than this are weak (see [`token_weakness`]).
pub const STRONG_TOKEN_LEN: usize = 16;

/// The example tokens this repository ships (config.json, README): public, so never a secret.
const PLACEHOLDER_TOKENS: [&str; 2] = [
    "replace-with-a-long-random-token",
    "replace-with-another-random-token",
];

/// A value that parsed but is refused: where it is (`streams[1].token`) and why.
struct Invalid {
    path: String,
    reason: String,
}

fn invalid(path: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid {
        path: path.into(),
        reason: reason.into(),
    }
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut cfg = Self::parse(&text)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        // Relative to the file, so the config means the same whatever the working directory.
        let dir = path.parent().unwrap_or(Path::new(""));
        for p in [&mut cfg.tls_cert, &mut cfg.tls_key].into_iter().flatten() {
            *p = dir.join(&*p);
        }
        Ok(cfg)
    }

    /// `(tls_cert, tls_key)` when the API is served over HTTPS.
    pub fn tls(&self) -> Option<(&Path, &Path)> {
        Some((self.tls_cert.as_deref()?, self.tls_key.as_deref()?))
    }

    /// Parses and validates. serde's errors carry the line, column and field at fault; a
    /// refused value is reported with its field and the line it is on.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let expanded = expand_env(text, |name| std::env::var(name).ok())?;
        let text = expanded.as_ref();
        let mut cfg: Config = serde_json::from_str(text)?;
        if let Err(Invalid { path, reason }) = cfg.validate() {
            match line_of(text, &path) {
                Some(line) => bail!("field `{path}` at line {line}: {reason}"),
                None => bail!("field `{path}`: {reason}"),
            }
        }
        Ok(cfg)
    }

    fn validate(&mut self) -> Result<(), Invalid> {
        if !(16..=65535).contains(&self.buffer_packets) || !self.buffer_packets.is_power_of_two() {
            return Err(invalid(
                "buffer_packets",
                format!(
                    "must be a power of two between 16 and 65536, got {}",
                    self.buffer_packets
                ),
            ));
        }
        self.key_schedule()
            .check()
            .map_err(|why| invalid("kmpreannounce", why))?;
        if self
            .workers
            .is_some_and(|w| !(1..=MAX_WORKERS).contains(&w))
        {
            return Err(invalid(
                "workers",
                format!("must be between 1 and {MAX_WORKERS}"),
            ));
        }
        if self.session_ttl_secs == 0 {
            return Err(invalid("session_ttl_secs", "must be at least 1"));
        }
        if self.idle_timeout_ms < 1000 {
            return Err(invalid(
                "idle_timeout_ms",
                format!("must be at least 1000, got {}", self.idle_timeout_ms),
            ));
        }
        for (name, v) in [
            ("max_connections", self.max_connections),
            ("max_viewers_per_stream", self.max_viewers_per_stream),
            ("max_connections_per_ip", self.max_connections_per_ip),
            (
                "handshakes_per_ip_per_sec",
                self.handshakes_per_ip_per_sec as usize,
            ),
            (
                "http_max_connections_per_ip",
                self.http_max_connections_per_ip,
            ),
            (
                "http_connections_per_ip_per_sec",
                self.http_connections_per_ip_per_sec as usize,
            ),
        ] {
            if v == 0 {
                return Err(invalid(name, "must be at least 1"));
            }
        }
        // Each connection adds about 30 series (2 KiB of text) to every scrape.
        if self.metrics_max_connections > MAX_METRICS_CONNECTIONS {
            return Err(invalid(
                "metrics_max_connections",
                format!(
                    "must be at most {MAX_METRICS_CONNECTIONS} (the connections API lists \
                     every connection), got {}",
                    self.metrics_max_connections
                ),
            ));
        }
        // Long enough for a slow link, short enough that a held connection is let go.
        for (name, v, range) in [
            (
                "http_header_timeout_ms",
                self.http_header_timeout_ms,
                100..=600_000,
            ),
            (
                "http_idle_timeout_ms",
                self.http_idle_timeout_ms,
                100..=600_000,
            ),
            (
                "http_shutdown_timeout_ms",
                self.http_shutdown_timeout_ms,
                0..=60_000,
            ),
        ] {
            if !range.contains(&v) {
                return Err(invalid(
                    name,
                    format!(
                        "must be between {} and {} (milliseconds), got {v}",
                        range.start(),
                        range.end()
                    ),
                ));
            }
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err(invalid(
                    "tls_cert",
                    "is set without `tls_key`: set both (PEM files) for HTTPS, or neither",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "tls_key",
                    "is set without `tls_cert`: set both (PEM files) for HTTPS, or neither",
                ))
            }
            _ => {}
        }
        for (name, p) in [("tls_cert", &self.tls_cert), ("tls_key", &self.tls_key)] {
            if p.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(invalid(name, "is empty: the path of a PEM file"));
            }
        }
        if let Some(why) = self.key_secret.as_deref().and_then(key_secret_weakness) {
            return Err(invalid(
                "key_secret",
                format!(
                    "this secret {why}: whoever guesses it can mint session keys for every \
                     stream. Generate one with `openssl rand -hex 32` and give every relay \
                     that should take the others' keys the same one"
                ),
            ));
        }
        let api_is_local = self.http_listen.ip().to_canonical().is_loopback();
        if let Some(t) = self.admin_token.as_deref() {
            if let Some(reason) = token_error(t) {
                return Err(invalid("admin_token", reason));
            }
            // Weak is refused even on loopback: it opens every stream and every connection.
            if let Some(weak) = token_weakness(t) {
                return Err(invalid(
                    "admin_token",
                    format!(
                        "this token {weak}: it opens every stream and can close any \
                         connection. Generate one with `openssl rand -hex 24`"
                    ),
                ));
            }
        }
        if self.streams.is_empty() {
            return Err(invalid(
                "streams",
                "is empty: list at least one stream ({\"id\": \"1\", \"token\": \"...\"})",
            ));
        }
        let max = crate::relay::MAX_STREAMS;
        if self.streams.len() > max {
            return Err(invalid(
                "streams",
                format!("lists {} streams; at most {max}", self.streams.len()),
            ));
        }
        if self
            .kernel_streams
            .is_some_and(|n| !(1..=max as u32).contains(&n))
        {
            return Err(invalid(
                "kernel_streams",
                format!("must be between 1 and {max}"),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.streams.iter_mut().enumerate() {
            let norm = normalize_hex(&s.id).ok_or_else(|| {
                invalid(
                    format!("streams[{i}].id"),
                    format!("{:?} is not a hex resource id", s.id),
                )
            })?;
            if !seen.insert(norm.clone()) {
                return Err(invalid(
                    format!("streams[{i}].id"),
                    format!("resource {:?} is listed twice", s.id),
                ));
            }
            let token = format!("streams[{i}].token");
            if let Some(reason) = token_error(&s.token) {
                return Err(invalid(token, reason));
            }
            if let (Some(weak), false) = (token_weakness(&s.token), api_is_local) {
                return Err(invalid(
                    token,
                    format!(
                        "this token {weak}, and `http_listen` {} is not a loopback address: \
                         whoever reaches the API could guess it and mint session keys. \
                         Generate one with `openssl rand -hex 24`, or set `http_listen` to \
                         \"127.0.0.1:{}\" to keep the API on this host",
                        self.http_listen,
                        self.http_listen.port()
                    ),
                ));
            }
            if s.delay_ms > crate::delay::MAX_DELAY_MS {
                return Err(invalid(
                    format!("streams[{i}].delay_ms"),
                    format!(
                        "must be at most {}, got {}",
                        crate::delay::MAX_DELAY_MS,
                        s.delay_ms
                    ),
                ));
            }
            for (field, p) in [
                ("publish_passphrase", &s.publish_passphrase),
                ("view_passphrase", &s.view_passphrase),
            ] {
                if let Some(why) = passphrase_error(p.as_deref()) {
                    return Err(invalid(format!("streams[{i}].{field}"), why));
                }
            }
            if let Some(why) = pbkeylen_error(s.pbkeylen) {
                return Err(invalid(format!("streams[{i}].pbkeylen"), why));
            }
            for (j, u) in s.upstream.iter().enumerate() {
                let at = |f: &str| format!("streams[{i}].upstream[{j}].{f}");
                if !u
                    .srt
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0))
                {
                    return Err(invalid(
                        at("srt"),
                        format!("{:?} is not host:port (the upstream's SRT port)", u.srt),
                    ));
                }
                if !(u.api.starts_with("http://") || u.api.starts_with("https://")) {
                    return Err(invalid(
                        at("api"),
                        format!("{:?} is not an http:// or https:// URL", u.api),
                    ));
                }
                if let Some(reason) = token_error(&u.token) {
                    return Err(invalid(at("token"), reason));
                }
                if let Some(why) = passphrase_error(u.passphrase.as_deref()) {
                    return Err(invalid(at("passphrase"), why));
                }
                if let Some(why) = pbkeylen_error(u.pbkeylen) {
                    return Err(invalid(at("pbkeylen"), why));
                }
            }
            if !s.upstream.is_empty() && s.publish_passphrase.is_some() {
                return Err(invalid(
                    format!("streams[{i}].publish_passphrase"),
                    "is set on a stream pulled from upstream, which takes no publisher here",
                ));
            }
            s.id = norm;
        }
        Ok(())
    }

    pub fn key_schedule(&self) -> crate::relay::KeySchedule {
        crate::relay::KeySchedule {
            refresh_rate: self.kmrefreshrate,
            pre_announce: self.kmpreannounce,
        }
    }

    /// The limits a reload may change, as the relay core takes them.
    pub fn relay_limits(&self) -> crate::relay::RelayLimits {
        crate::relay::RelayLimits {
            max_connections: self.max_connections,
            max_viewers_per_stream: self.max_viewers_per_stream,
            per_address: crate::relay::AddressLimits {
                max_connections: self.max_connections_per_ip,
                handshakes_per_sec: self.handshakes_per_ip_per_sec,
            },
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            session_ttl: Duration::from_secs(self.session_ttl_secs),
        }
    }

    /// Rows of the kernel path's stream table (see `kernel_streams`).
    pub fn kernel_streams(&self) -> u32 {
        self.kernel_streams.unwrap_or_else(|| {
            (self.streams.len() as u32 + KERNEL_STREAMS_HEADROOM)
                .min(crate::relay::MAX_STREAMS as u32)
        })
    }

    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms.into())
    }

    /// Streams whose token is weak (accepted only because the API listens on loopback),
    /// with the reason: worth a warning at start.
    pub fn weak_tokens(&self) -> Vec<(&str, &'static str)> {
        self.streams
            .iter()
            .filter_map(|s| Some((s.id.as_str(), token_weakness(&s.token)?)))
            .collect()
    }
}

/// Why `token` can never work, if it cannot.
/// Why a passphrase is one libsrt would not take, if it is.
fn passphrase_error(p: Option<&str>) -> Option<String> {
    let len = p.map_or(10, |p| p.chars().count());
    (!crate::srt::crypto::PASSPHRASE_LEN.contains(&len))
        .then(|| format!("must be 10 to 79 characters (as libsrt takes), got {len}"))
}

/// Why a key length is not an AES one, if it is not.
fn pbkeylen_error(n: Option<u8>) -> Option<String> {
    let n = n.filter(|n| ![16, 24, 32].contains(n))?;
    Some(format!(
        "must be 16, 24 or 32 (bytes: AES-128, -192, -256), got {n}"
    ))
}

fn token_error(token: &str) -> Option<String> {
    if token.trim().is_empty() {
        return Some("is blank".into());
    }
    // It travels in `Authorization: Bearer <token>`: a header value is visible ASCII, and
    // surrounding spaces are stripped, so anything else could never match.
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Some("must be printable ASCII without spaces or control characters".into());
    }
    if token.len() < 8 {
        return Some("must be at least 8 characters".into());
    }
    None
}

/// Why `token` is too easy to guess for an API that other hosts can reach, if it is.
fn token_weakness(token: &str) -> Option<&'static str> {
    if PLACEHOLDER_TOKENS.contains(&token) || token.starts_with("replace-with") {
        return Some("is the example config's placeholder");
    }
    if token.len() < STRONG_TOKEN_LEN {
        return Some("is shorter than 16 characters");
    }
    // Random tokens of 16 or more characters have fewer than 6 distinct ones about once in
    // 70,000 draws (hex); "aaaa…", "abab…" always.
    let distinct = token
        .bytes()
        .collect::<std::collections::HashSet<_>>()
        .len();
    if distinct < 6 {
        return Some("has fewer than 6 different characters");
    }
    let b = token.as_bytes();
    if (1..=b.len() / 2).any(|p| b.len().is_multiple_of(p) && b.chunks(p).all(|c| c == &b[..p])) {
        return Some("repeats a shorter pattern");
    }
    None
}

/// Why `secret` (config.json `key_secret`) is too weak to sign session keys with, if it
/// is. Unlike a weak token, never accepted: SRT callers reach every relay that takes it.
fn key_secret_weakness(secret: &str) -> Option<String> {
    let min = crate::relay::MIN_SECRET_LEN;
    if secret.chars().count() < min {
        return Some(format!("is shorter than {min} characters"));
    }
    // The token checks: placeholders, few different characters, a repeated pattern.
    token_weakness(secret).map(str::to_owned)
}

/// The line (1-based) on which the value at `path` (`streams[1].token`) starts in `text`.
/// `text` is JSON serde has already accepted, so this only walks it; keys are compared as
/// written (a key spelled with escapes is not found, and the error then has no line).
fn line_of(text: &str, path: &str) -> Option<usize> {
    value_at(text, path).map(|pos| text[..pos].matches('\n').count() + 1)
}

/// Where (byte offset) the value at `path` starts in `text`, as `line_of` finds it.
fn value_at(text: &str, path: &str) -> Option<usize> {
    let b = text.as_bytes();
    let mut pos = 0;
    for seg in path.split('.') {
        let (key, indexes) = match seg.find('[') {
            Some(i) => (&seg[..i], &seg[i..]),
            None => (seg, ""),
        };
        pos = json_walk::member(b, pos, key)?;
        for idx in indexes.split(['[', ']']).filter(|s| !s.is_empty()) {
            pos = json_walk::element(b, pos, idx.parse().ok()?)?;
        }
    }
    Some(pos)
}

/// `${NAME}` in config.json: every string value that is exactly `"${NAME}"` (NAME:
/// `[A-Z_][A-Z0-9_]*`) becomes the value of environment variable NAME (`env`), so secrets
/// can come from the environment (a Kubernetes Secret) rather than the file. Anything else
/// is left as written (`"a${X}"`, `"${lower}"`, keys). The placeholders are found by
/// walking the parsed tree; each is replaced in the text itself by its value as a JSON
/// string (escaped, so on one line), so serde's errors and `line_of` give the lines of the
/// file as written. A variable that is unset or empty refuses the config with the field,
/// its line and the variable's name, never a value.
fn expand_env(
    text: &str,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<std::borrow::Cow<'_, str>> {
    use serde_json::Value;
    fn is_name(s: &str) -> bool {
        let mut b = s.bytes();
        b.next()
            .is_some_and(|c| c.is_ascii_uppercase() || c == b'_')
            && b.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_')
    }
    fn walk(v: &Value, path: String, found: &mut Vec<(String, String)>) {
        match v {
            Value::String(s) => {
                if let Some(name) = s.strip_prefix("${").and_then(|s| s.strip_suffix('}')) {
                    if is_name(name) {
                        found.push((path, name.to_string()));
                    }
                }
            }
            Value::Array(a) => {
                for (i, e) in a.iter().enumerate() {
                    walk(e, format!("{path}[{i}]"), found);
                }
            }
            Value::Object(o) => {
                for (k, e) in o {
                    let sub = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(e, sub, found);
                }
            }
            _ => {}
        }
    }
    if !text.contains("${") {
        return Ok(text.into());
    }
    // Not JSON: left for serde to report, with its line.
    let Ok(tree) = serde_json::from_str::<Value>(text) else {
        return Ok(text.into());
    };
    let mut found = Vec::new();
    walk(&tree, String::new(), &mut found);
    let mut splices = Vec::new();
    for (path, name) in found {
        let field = match line_of(text, &path) {
            Some(line) => format!("field `{path}` at line {line}"),
            None => format!("field `{path}`"),
        };
        let value = match env(&name) {
            Some(v) if !v.is_empty() => v,
            Some(_) => {
                bail!("{field}: environment variable {name} (from \"${{{name}}}\") is empty")
            }
            None => bail!("{field}: environment variable {name} (from \"${{{name}}}\") is not set"),
        };
        let literal = format!("\"${{{name}}}\"");
        let start = value_at(text, &path)
            .filter(|&at| text[at..].starts_with(&literal))
            .with_context(|| {
                format!("{field}: cannot place ${{{name}}}: write the field's key and the placeholder without escapes")
            })?;
        let json = serde_json::to_string(&value).expect("a string serialises");
        splices.push((start, start + literal.len(), json));
    }
    splices.sort_by_key(|&(start, ..)| std::cmp::Reverse(start));
    let mut out = text.to_string();
    for (start, end, json) in splices {
        out.replace_range(start..end, &json);
    }
    Ok(out.into())
}

/// Just enough of a JSON reader to find where a value is (the input is valid JSON).
mod json_walk {
    fn ws(b: &[u8], mut i: usize) -> usize {
        while b.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
            i += 1;
        }
        i
    }

    /// The index just past the string starting at `i` (a `"`).
    fn string_end(b: &[u8], mut i: usize) -> Option<usize> {
        i += 1;
        loop {
            match b.get(i)? {
                b'\\' => i += 2,
                b'"' => return Some(i + 1),
                _ => i += 1,
            }
        }
    }

    /// The index just past the value starting at `i`.
    fn value_end(b: &[u8], i: usize) -> Option<usize> {
        match b.get(i)? {
            b'"' => string_end(b, i),
            b'{' | b'[' => {
                let mut depth = 0usize;
                let mut j = i;
                loop {
                    match b.get(j)? {
                        b'"' => {
                            j = string_end(b, j)?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                return Some(j + 1);
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
            }
            _ => {
                let mut j = i;
                while b
                    .get(j)
                    .is_some_and(|c| !matches!(c, b',' | b'}' | b']') && !c.is_ascii_whitespace())
                {
                    j += 1;
                }
                Some(j)
            }
        }
    }

    /// Where the value of member `key` of the object at `i` starts.
    pub fn member(b: &[u8], i: usize, key: &str) -> Option<usize> {
        let mut i = ws(b, i);
        if b.get(i)? != &b'{' {
            return None;
        }
        i += 1;
        loop {
            i = ws(b, i);
            if b.get(i)? != &b'"' {
                return None;
            }
            let end = string_end(b, i)?;
            let name = &b[i + 1..end - 1];
            i = ws(b, end);
            if b.get(i)? != &b':' {
                return None;
            }
            i = ws(b, i + 1);
            if name == key.as_bytes() {
                return Some(i);
            }
            i = ws(b, value_end(b, i)?);
            if b.get(i)? != &b',' {
                return None;
            }
            i += 1;
        }
    }

    /// Where element `n` of the array at `i` starts.
    pub fn element(b: &[u8], i: usize, n: usize) -> Option<usize> {
        let mut i = ws(b, i);
        if b.get(i)? != &b'[' {
            return None;
        }
        i = ws(b, i + 1);
        for _ in 0..n {
            i = ws(b, value_end(b, i)?);
            if b.get(i)? != &b',' {
                return None;
            }
            i = ws(b, i + 1);
        }
        (b.get(i)? != &b']').then_some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRONG: &str = "3f9c1e0b7a5d42e8c6b1f0a9d37e5c24";

    fn err(text: &str) -> String {
        format!("{:#}", Config::parse(text).unwrap_err())
    }

    #[test]
    fn admin_token_must_be_strong_even_on_loopback() {
        let with = |t: &str| {
            format!(
                r#"{{"http_listen":"127.0.0.1:9998","admin_token":"{t}",
                "streams":[{{"id":"1","token":"{STRONG}"}}]}}"#
            )
        };
        let c = Config::parse(&with("9d2b7f01c4e86a35b0f2d9c7e1a4f863")).unwrap();
        assert_eq!(
            c.admin_token.as_deref(),
            Some("9d2b7f01c4e86a35b0f2d9c7e1a4f863")
        );
        let e = err(&with("replace-with-a-long-random-token"));
        assert!(e.contains("admin_token") && e.contains("line 1"), "{e}");
        assert!(err(&with("short")).contains("admin_token"));
        assert!(err(&with("has space in it")).contains("admin_token"));
    }

    #[test]
    fn defaults_and_normalised_ids() {
        let c = Config::parse(&format!(
            r#"{{"streams":[{{"id":"0A","name":"x","token":"{STRONG}"}}]}}"#
        ))
        .unwrap();
        assert_eq!(c.srt_listen, "0.0.0.0:9999".parse().unwrap());
        assert_eq!(c.http_listen.port(), 9998);
        assert_eq!(c.streams[0].id, "a");
        assert_eq!(c.buffer_packets, 8192);
        assert_eq!(c.http_header_timeout_ms, 30_000);
        assert_eq!(c.http_idle_timeout_ms, 30_000);
        assert_eq!(c.http_shutdown_timeout_ms, 3_000);
        assert!(c.tls().is_none(), "plain HTTP by default");
        assert!(c.weak_tokens().is_empty());
    }

    #[test]
    fn metrics_max_connections_is_bounded() {
        let with = |n: usize| {
            format!(
                r#"{{"metrics_max_connections":{n},"streams":[{{"id":"1","token":"{STRONG}"}}]}}"#
            )
        };
        let c = Config::parse(&format!(
            r#"{{"streams":[{{"id":"1","token":"{STRONG}"}}]}}"#
        ));
        assert_eq!(c.unwrap().metrics_max_connections, 1000);
        assert_eq!(Config::parse(&with(0)).unwrap().metrics_max_connections, 0);
        assert!(Config::parse(&with(MAX_METRICS_CONNECTIONS)).is_ok());
        let e = err(&with(MAX_METRICS_CONNECTIONS + 1));
        assert!(e.contains("metrics_max_connections"), "{e}");
    }

    #[test]
    fn errors_name_line_and_field() {
        let e = err("{\n \"streams\": [\n {\"id\": \"1\", \"name\": \"x\"}\n ]\n}");
        assert!(
            e.contains("missing field `token`") && e.contains("line 3"),
            "{e}"
        );
        assert!(err(r#"{"strams": []}"#).contains("unknown field `strams`"));
        let e = err(&format!(
            r#"{{"streams":[{{"id":"xyz","token":"{STRONG}"}}]}}"#
        ));
        assert!(e.contains("streams[0].id") && e.contains("line 1"), "{e}");
        let e = err(&format!(
            r#"{{"streams":[{{"id":"1","token":"{STRONG}","delay_ms":30001}}]}}"#
        ));
        assert!(e.contains("streams[0].delay_ms"), "{e}");
        let e = err(&format!(
            r#"{{"streams":[{{"id":"1","token":"{STRONG}","view_passphrase":"short"}}]}}"#
        ));
        assert!(
            e.contains("streams[0].view_passphrase") && e.contains("10 to 79"),
            "{e}"
        );
        let e = err(&format!(
            r#"{{"streams":[{{"id":"1","token":"{STRONG}","pbkeylen":20}}]}}"#
        ));
        assert!(e.contains("streams[0].pbkeylen"), "{e}");
        assert!(err(r#"{"srt_listen":"nope","streams":[]}"#).contains("line 1"));
    }

    /// The config.json this repository ships starts as it is (`cargo xtask run`).
    #[test]
    fn shipped_config_is_accepted() {
        let text = include_str!("../../config.json");
        let c = Config::parse(text).unwrap();
        assert!(c.http_listen.ip().is_loopback(), "{}", c.http_listen);
        assert_eq!(c.weak_tokens().len(), c.streams.len(), "placeholders");
    }

    #[test]
    fn empty_stream_list_is_refused_with_its_line() {
        let e = err("{\n  \"http_listen\": \"127.0.0.1:9998\",\n  \"streams\": []\n}");
        assert!(
            e.contains("field `streams` at line 3") && e.contains("is empty"),
            "{e}"
        );
    }

    #[test]
    fn blank_and_unusable_tokens_are_refused_even_on_loopback() {
        let cfg = |token: &str| {
            format!(
                "{{\n  \"http_listen\": \"127.0.0.1:9998\",\n  \"streams\": [\n    \
                 {{ \"id\": \"1\", \"token\": \"{STRONG}\" }},\n    \
                 {{ \"id\": \"2\",\n      \"token\": \"{token}\" }}\n  ]\n}}"
            )
        };
        let e = err(&cfg("        "));
        assert!(
            e.contains("field `streams[1].token` at line 6") && e.contains("is blank"),
            "{e}"
        );
        let e = err(&cfg(""));
        assert!(
            e.contains("streams[1].token") && e.contains("is blank"),
            "{e}"
        );
        let e = err(&cfg(r"abc def ghi jkl mno\t"));
        assert!(
            e.contains("at line 6") && e.contains("printable ASCII"),
            "{e}"
        );
        let e = err(&cfg("x7#q2"));
        assert!(e.contains("at line 6") && e.contains("at least 8"), "{e}");
    }

    #[test]
    fn weak_tokens_are_refused_unless_the_api_is_on_loopback() {
        let cfg = |listen: &str, token: &str| {
            format!(
                "{{\n  \"http_listen\": \"{listen}\",\n  \"streams\": [\n    \
                 {{ \"id\": \"1\", \"token\": \"{STRONG}\" }},\n    \
                 {{ \"id\": \"2\", \"token\": \"{token}\" }}\n  ]\n}}"
            )
        };
        for (token, why) in [
            ("replace-with-a-long-random-token", "placeholder"),
            ("replace-with-another-random-token", "placeholder"),
            ("replace-with-my-own", "placeholder"),
            ("hunter2hunter", "shorter than 16"),
            ("aaaaaaaaaaaaaaaaaaaaaaaa", "fewer than 6 different"),
            ("abababababababababab", "fewer than 6 different"),
            ("0123456789ab0123456789ab", "repeats a shorter pattern"),
        ] {
            for listen in ["0.0.0.0:9998", "10.0.0.5:9998", "[::]:9998"] {
                let e = err(&cfg(listen, token));
                assert!(
                    e.contains("field `streams[1].token` at line 5")
                        && e.contains(why)
                        && e.contains("not a loopback address")
                        && e.contains("openssl rand -hex 24")
                        && e.contains("127.0.0.1:9998"),
                    "{token} on {listen}: {e}"
                );
                assert!(!e.contains(token), "the error echoes the token: {e}");
            }
            for listen in ["127.0.0.1:9998", "127.0.0.2:9998", "[::1]:9998"] {
                let c = Config::parse(&cfg(listen, token))
                    .unwrap_or_else(|e| panic!("{token} on {listen}: {e:#}"));
                assert_eq!(c.weak_tokens(), vec![("2", token_weakness(token).unwrap())]);
            }
        }
        // Strong tokens are fine anywhere: hex and base64 from `openssl rand`, and the
        // shape the benchmark uses.
        for token in [
            STRONG,
            "Zk3q9P0vX2mL7sR4tY8wB1nC",
            "stsync-bench-token-7f3a9c",
        ] {
            Config::parse(&cfg("0.0.0.0:9998", token)).unwrap_or_else(|e| panic!("{token}: {e:#}"));
        }
    }

    #[test]
    fn http_timeouts_are_bounded() {
        let cfg = |field: &str, v: u64| {
            format!(
                "{{\n  \"http_listen\": \"127.0.0.1:1\",\n  \"{field}\": {v},\n  \
                 \"streams\": [{{ \"id\": \"1\", \"token\": \"{STRONG}\" }}]\n}}"
            )
        };
        for (field, bad, good) in [
            ("http_header_timeout_ms", [0, 99, 600_001], [100, 600_000]),
            ("http_idle_timeout_ms", [0, 99, 600_001], [100, 600_000]),
            (
                "http_shutdown_timeout_ms",
                [60_001, 1 << 40, u64::MAX],
                [0, 60_000],
            ),
        ] {
            for v in bad {
                let e = err(&cfg(field, v));
                assert!(
                    e.contains(&format!("field `{field}` at line 3")) && e.contains("between"),
                    "{field}={v}: {e}"
                );
            }
            for v in good {
                Config::parse(&cfg(field, v)).unwrap();
            }
        }
    }

    #[test]
    fn key_secret_is_optional_and_must_be_strong() {
        let cfg = |secret: &str| {
            format!(
                "{{\n  \"http_listen\": \"127.0.0.1:1\",\n  \"key_secret\": \"{secret}\",\n  \
                 \"streams\": [{{ \"id\": \"1\", \"token\": \"{STRONG}\" }}]\n}}"
            )
        };
        let none = Config::parse(&format!(
            r#"{{"streams":[{{"id":"1","token":"{STRONG}"}}]}}"#
        ))
        .unwrap();
        assert_eq!(none.key_secret, None);
        for (secret, why) in [
            ("", "shorter than 32"),
            ("3f9c1e0b7a5d42e8c6b1f0a9d37e5c2", "shorter than 32"),
            ("replace-with-a-long-random-secret-please", "placeholder"),
            (
                "abababababababababababababababababab",
                "fewer than 6 different",
            ),
            (
                "0123456789ab0123456789ab0123456789ab",
                "repeats a shorter pattern",
            ),
        ] {
            let e = err(&cfg(secret));
            assert!(
                e.contains("field `key_secret` at line 3")
                    && e.contains(why)
                    && e.contains("openssl rand -hex 32"),
                "{secret:?}: {e}"
            );
            assert!(secret.is_empty() || !e.contains(secret), "echoes it: {e}");
        }
        let strong = "9c1e0b7a5d42e8c6b1f0a9d37e5c243f9c1e0b7a5d42e8c6";
        let c = Config::parse(&cfg(strong)).unwrap();
        assert_eq!(c.key_secret.as_deref(), Some(strong));
        assert!(err(&cfg(strong).replace("key_secret", "key_secrets")).contains("unknown field"));
    }

    /// libsrt's rule for its key schedule: 1 ≤ kmpreannounce ≤ (kmrefreshrate − 1) / 2.
    #[test]
    fn key_schedule_follows_libsrts_rule() {
        let cfg = |rate: u32, pre: u32| {
            format!(
                "{{\n  \"http_listen\": \"127.0.0.1:1\",\n  \"kmrefreshrate\": {rate},\n  \
                 \"kmpreannounce\": {pre},\n  \"streams\": [{{ \"id\": \"1\", \"token\": \"{STRONG}\" }}]\n}}"
            )
        };
        for (rate, pre) in [(100, 0), (100, 50), (2, 1)] {
            let e = err(&cfg(rate, pre));
            assert!(
                e.contains("field `kmpreannounce` at line 4"),
                "{rate}/{pre}: {e}"
            );
        }
        let c = Config::parse(&cfg(1000, 499)).unwrap();
        assert_eq!((c.kmrefreshrate, c.kmpreannounce), (1000, 499));
        let d = Config::parse(&format!(
            r#"{{"streams":[{{"id":"1","token":"{STRONG}"}}]}}"#
        ))
        .unwrap();
        assert_eq!((d.kmrefreshrate, d.kmpreannounce), (1 << 24, 1 << 12));
    }

    #[test]
    fn tls_cert_and_key_come_together() {
        let cfg = |fields: &str| {
            format!(
                "{{\n  \"http_listen\": \"127.0.0.1:1\",\n  {fields},\n  \
                 \"streams\": [{{ \"id\": \"1\", \"token\": \"{STRONG}\" }}]\n}}"
            )
        };
        let e = err(&cfg(r#""tls_cert": "cert.pem""#));
        assert!(
            e.contains("field `tls_cert` at line 3") && e.contains("without `tls_key`"),
            "{e}"
        );
        let e = err(&cfg(r#""tls_key": "key.pem""#));
        assert!(
            e.contains("field `tls_key` at line 3") && e.contains("without `tls_cert`"),
            "{e}"
        );
        let e = err(&cfg(r#""tls_cert": "", "tls_key": "key.pem""#));
        assert!(
            e.contains("field `tls_cert`") && e.contains("is empty"),
            "{e}"
        );
        let c = Config::parse(&cfg(r#""tls_cert": "c.pem", "tls_key": "/etc/k.pem""#)).unwrap();
        assert_eq!(c.tls(), Some((Path::new("c.pem"), Path::new("/etc/k.pem"))));
    }

    /// Relative PEM paths are the config file's neighbours, whatever the working directory.
    #[test]
    fn tls_paths_are_relative_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let text = format!(
            r#"{{"tls_cert": "tls/cert.pem", "tls_key": "/abs/key.pem",
                "streams": [{{"id": "1", "token": "{STRONG}"}}]}}"#
        );
        std::fs::write(&path, text).unwrap();
        let c = Config::load(&path).unwrap();
        let cert = dir.path().join("tls/cert.pem");
        assert_eq!(c.tls(), Some((cert.as_path(), Path::new("/abs/key.pem"))));
    }

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    #[test]
    fn env_placeholders_are_replaced_by_their_variables() {
        let text = format!(
            "{{\n  \"http_listen\": \"0.0.0.0:9998\",\n  \"streams\": [\n    \
             {{ \"id\": \"1\", \"token\": \"${{TOKEN_1}}\",\n      \
             \"view_passphrase\": \"${{PASS}}\" }},\n    \
             {{ \"id\": \"2\", \"name\": \"a${{TOKEN_1}}\", \"token\": \"{STRONG}\" }},\n    \
             {{ \"id\": \"3\", \"name\": \"${{lower}}\", \"token\": \"${{T_2}}\" }}\n  ]\n}}"
        );
        // A value that needs escaping in JSON stays one string on one line.
        let pass = "quote\" back\\slash\nnew line";
        let env = env_of(&[
            ("TOKEN_1", STRONG),
            ("PASS", pass),
            ("T_2", "Zk3q9P0vX2mL7sR4tY8wB1nC"),
        ]);
        let expanded = expand_env(&text, env).unwrap();
        assert_eq!(expanded.lines().count(), text.lines().count());
        let c = Config::parse(&expanded).unwrap();
        assert_eq!(c.streams[0].token, STRONG);
        assert_eq!(c.streams[0].view_passphrase.as_deref(), Some(pass));
        // Only a whole `"${NAME}"` value is a placeholder.
        assert_eq!(c.streams[1].name, "a${TOKEN_1}");
        assert_eq!(c.streams[2].name, "${lower}");
        assert_eq!(c.streams[2].token, "Zk3q9P0vX2mL7sR4tY8wB1nC");
        // Without placeholders the text is used as it is.
        let plain = format!(r#"{{"streams":[{{"id":"1","token":"{STRONG}"}}]}}"#);
        assert!(matches!(
            expand_env(&plain, |_| None).unwrap(),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn unset_or_empty_variables_are_refused_with_field_line_and_name() {
        let text = "{\n  \"key_secret\": \"${KEY}\",\n  \"streams\": [\n    \
                    { \"id\": \"1\",\n      \"token\": \"${TOKEN_1}\" }\n  ]\n}";
        let secret = "s3cr3t-value-that-must-not-leak";
        let e = format!(
            "{:#}",
            expand_env(text, env_of(&[("KEY", secret)])).unwrap_err()
        );
        assert!(
            e.contains("field `streams[0].token` at line 5")
                && e.contains("environment variable TOKEN_1")
                && e.contains("not set"),
            "{e}"
        );
        assert!(!e.contains(secret), "{e}");
        let e = format!(
            "{:#}",
            expand_env(text, env_of(&[("KEY", ""), ("TOKEN_1", secret)])).unwrap_err()
        );
        assert!(
            e.contains("field `key_secret` at line 2")
                && e.contains("environment variable KEY")
                && e.contains("is empty"),
            "{e}"
        );
        assert!(!e.contains(secret), "{e}");
    }

    /// After expansion, errors still name the lines of the file as written, and a
    /// refused secret is not echoed.
    #[test]
    fn errors_after_expansion_keep_the_files_lines() {
        let text = "{\n  \"http_listen\": \"0.0.0.0:9998\",\n  \"streams\": [\n    \
                    { \"id\": \"1\", \"token\": \"${T}\" },\n    \
                    { \"id\": \"2\", \"tokn\": \"${T}\" }\n  ]\n}";
        let weak = "hunter2hunter";
        let expanded = expand_env(text, env_of(&[("T", weak)])).unwrap();
        let e = err(&expanded);
        assert!(
            e.contains("unknown field `tokn`") && e.contains("line 5"),
            "{e}"
        );
        let text = text.replace("tokn", "token");
        let expanded = expand_env(&text, env_of(&[("T", weak)])).unwrap();
        let e = err(&expanded);
        assert!(
            e.contains("field `streams[0].token` at line 4") && e.contains("shorter than 16"),
            "{e}"
        );
        assert!(!e.contains(weak), "{e}");
    }

    #[test]
    fn line_of_walks_nested_values() {
        let text =
            "{\"a\": {\"b\": [1, {\"c\": \"x,]}\"}, [2]]},\n \"d\"\n:\n [\n {},\n {\"e\": 5}\n ]}";
        assert_eq!(line_of(text, "a.b[1].c"), Some(1));
        assert_eq!(line_of(text, "d"), Some(4));
        assert_eq!(line_of(text, "d[1].e"), Some(6));
        assert_eq!(line_of(text, "a.b[3]"), None);
        assert_eq!(line_of(text, "zz"), None);
    }
}
