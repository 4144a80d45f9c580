//! config.json: listen addresses, protocol settings, limits and the streams with their tokens.

use crate::srt::streamid::normalize_hex;
use anyhow::{bail, Context};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "d::srt_listen")]
    pub srt_listen: SocketAddr,
    #[serde(default = "d::http_listen")]
    pub http_listen: SocketAddr,
    /// The relay's own TSBPD latency; each connection uses the larger of this and the peer's.
    #[serde(default = "d::latency_ms")]
    pub latency_ms: u16,
    /// Packets kept per stream for retransmission.
    #[serde(default = "d::buffer_packets")]
    pub buffer_packets: u32,
    #[serde(default = "d::session_ttl_secs")]
    pub session_ttl_secs: u64,
    #[serde(default = "d::idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    #[serde(default = "d::max_connections")]
    pub max_connections: usize,
    #[serde(default = "d::max_viewers_per_stream")]
    pub max_viewers_per_stream: usize,
    /// Open SRT connections from one source address.
    #[serde(default = "d::max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Handshake conclusions per second from one source address (bursts of twice this).
    #[serde(default = "d::handshakes_per_ip_per_sec")]
    pub handshakes_per_ip_per_sec: u32,
    pub streams: Vec<StreamConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub token: String,
    /// Viewers play this stream so many ms later (see README, "Synchronising streams").
    #[serde(default)]
    pub delay_ms: u64,
}

mod d {
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
    pub fn max_connections_per_ip() -> usize {
        256
    }
    pub fn handshakes_per_ip_per_sec() -> u32 {
        20
    }
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Parses and validates; serde's errors carry the line, column and field at fault.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut cfg: Config = serde_json::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&mut self) -> anyhow::Result<()> {
        if !(16..=65535).contains(&self.buffer_packets) || !self.buffer_packets.is_power_of_two() {
            bail!(
                "field `buffer_packets`: must be a power of two between 16 and 65536, got {}",
                self.buffer_packets
            );
        }
        if self.session_ttl_secs == 0 {
            bail!("field `session_ttl_secs`: must be at least 1");
        }
        if self.idle_timeout_ms < 1000 {
            bail!(
                "field `idle_timeout_ms`: must be at least 1000, got {}",
                self.idle_timeout_ms
            );
        }
        if self.max_connections == 0 || self.max_viewers_per_stream == 0 {
            bail!("fields `max_connections` and `max_viewers_per_stream` must be at least 1");
        }
        if self.max_connections_per_ip == 0 || self.handshakes_per_ip_per_sec == 0 {
            bail!("fields `max_connections_per_ip` and `handshakes_per_ip_per_sec` must be at least 1");
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.streams.iter_mut().enumerate() {
            let norm = normalize_hex(&s.id).with_context(|| {
                format!(
                    "field `streams[{i}].id`: {:?} is not a hex resource id",
                    s.id
                )
            })?;
            if !seen.insert(norm.clone()) {
                bail!(
                    "field `streams[{i}].id`: resource {:?} is listed twice",
                    s.id
                );
            }
            if s.token.len() < 8 {
                bail!("field `streams[{i}].token`: must be at least 8 characters");
            }
            if s.delay_ms > crate::delay::MAX_DELAY_MS {
                bail!(
                    "field `streams[{i}].delay_ms`: must be at most {}, got {}",
                    crate::delay::MAX_DELAY_MS,
                    s.delay_ms
                );
            }
            s.id = norm;
        }
        Ok(())
    }

    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_normalised_ids() {
        let c =
            Config::parse(r#"{"streams":[{"id":"0A","name":"x","token":"abcdefgh"}]}"#).unwrap();
        assert_eq!(c.srt_listen, "0.0.0.0:9999".parse().unwrap());
        assert_eq!(c.http_listen.port(), 9998);
        assert_eq!(c.streams[0].id, "a");
        assert_eq!(c.buffer_packets, 8192);
    }

    #[test]
    fn errors_name_line_and_field() {
        let e = Config::parse("{\n \"streams\": [\n {\"id\": \"1\", \"name\": \"x\"}\n ]\n}")
            .unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("missing field `token`") && msg.contains("line 3"),
            "{msg}"
        );
        let e = Config::parse(r#"{"strams": []}"#).unwrap_err();
        assert!(format!("{e:#}").contains("unknown field `strams`"));
        let e = Config::parse(r#"{"streams":[{"id":"xyz","token":"abcdefgh"}]}"#).unwrap_err();
        assert!(format!("{e:#}").contains("streams[0].id"));
        let e = Config::parse(r#"{"streams":[{"id":"1","token":"abcdefgh","delay_ms":30001}]}"#)
            .unwrap_err();
        assert!(format!("{e:#}").contains("streams[0].delay_ms"), "{e:#}");
        let e = Config::parse(r#"{"srt_listen":"nope","streams":[]}"#).unwrap_err();
        assert!(format!("{e:#}").contains("line 1"), "{e:#}");
    }
}
