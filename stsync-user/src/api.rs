//! The HTTP API's bodies as types, for the server's handlers and for [`client::Client`].
//!
//! Fields are in alphabetical order: the handlers built these bodies with `json!`, whose
//! maps sort their keys, so this order keeps the bytes on the wire what they were.
//! Responses accept fields they do not know (a newer relay may add some); request bodies
//! refuse them, as the handlers do, so a typo is an error instead of a silent no-op.

pub mod client;
pub mod metrics;

pub use client::{ApiError, Client};

use serde::{Deserialize, Serialize};

/// `Content-Type` of `GET /metrics` and `GET /v1/metrics` (Prometheus text format 0.0.4).
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Body of `POST /v1/streams/{id}/sessions`: empty, `{}`, or an object with either or
/// both of `"encrypt": true` and `"mode": "publish" | "request"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// `true`: the key comes with a passphrase of its own that its connection must encrypt
    /// with (instead of the stream's), so no two connections share one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypt: Option<bool>,
    /// The only mode (`m=`) the key admits; absent: either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<SessionMode>,
}

/// `"publish"` or `"request"`, as in the stream ID's `m=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionMode {
    Publish,
    Request,
}

impl From<SessionMode> for crate::srt::streamid::Mode {
    fn from(m: SessionMode) -> Self {
        match m {
            SessionMode::Publish => crate::srt::streamid::Mode::Publish,
            SessionMode::Request => crate::srt::streamid::Mode::Request,
        }
    }
}

/// 201 answer to `POST /v1/streams/{id}/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCreated {
    /// With `{"encrypt": true}`: the passphrase this key's connection must use (SRT's
    /// `passphrase`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase: Option<String>,
    /// The stream the key is for: its id as configured (lowercase hex, no leading zeros).
    pub resource_id: String,
    /// The session key that goes in the SRT stream ID as `s=`: 16 hex characters, or 62
    /// for a signed key (a relay with `key_secret`).
    pub session_id: String,
}

/// One entry of `GET /v1/streams` (an array of these, one per configured stream).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamInfo {
    /// Publisher data rate over the last measurement interval, bit/s.
    pub bitrate_bps: u64,
    /// The delay viewers get now, ms; it moves towards `delay_ms` gradually.
    pub delay_applied_ms: u64,
    /// The delay the operator asked for (config.json or `PUT .../delay`), ms.
    pub delay_ms: u64,
    /// The stream's id (hex).
    pub id: String,
    /// Estimated latency from the publisher to the relay, ms (0 without a publisher).
    pub ingest_latency_ms: f64,
    /// The stream's name from config.json.
    pub name: String,
    /// Whether a publisher is connected.
    pub publisher: bool,
    /// Connected viewers.
    pub viewers: u64,
    /// An edge's pull of the stream from its upstream (only for streams with upstreams,
    /// on the relay that pulls them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamInfo>,
}

/// An edge's pull from its upstream relay, in `GET /v1/streams`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamInfo {
    /// The upstream being pulled from or tried (`host:port` as configured).
    pub upstream: String,
    /// idle (no viewers), minting (a key at its API), calling (SRT handshake), connected,
    /// or waiting (to try again).
    pub state: String,
    /// The connection's id (as in the metrics' `id` label), when connected.
    pub connection: Option<u32>,
    /// Connections to an upstream that ended and were made again.
    pub reconnects: u64,
    /// Attempts that failed (no key, no answer, refused).
    pub failures: u64,
    /// Of the current connection: round-trip time, ms; data packets received and lost.
    pub rtt_ms: f64,
    pub packets_received: u64,
    pub packets_lost: u64,
}

/// One entry of `GET /v1/connections` and `GET /v1/streams/{id}/connections`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// When its handshake was accepted, Unix seconds.
    pub connected_since: u64,
    /// `kernel` while the eBPF program clones the publisher's packets to this viewer, else
    /// `userspace`.
    pub datapath: String,
    /// As in the metrics' `id` label and `DELETE /v1/connections/{id}` (the relay's SRT
    /// socket ID).
    pub id: u32,
    /// The TSBPD delay agreed in the handshake (the larger of both directions), ms.
    pub latency_ms: u64,
    /// `publish`, `request`, or `handshake` (accepted, the caller not heard from since).
    pub mode: String,
    /// The caller's address (`a.b.c.d:port` for IPv4 callers, also on a dual-stack socket).
    pub peer: String,
    pub stats: ConnectionStats,
    /// The stream's id (hex).
    pub stream: String,
}

/// A connection's SRT statistics (bytes are SRT bytes: header included, UDP/IP not), as
/// the same names without the prefix in `/v1/metrics` (`srt_connection_*`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectionStats {
    pub ctrl_bytes_lost: u64,
    pub ctrl_bytes_recv: u64,
    pub ctrl_bytes_sent: u64,
    pub ctrl_packets_lost: u64,
    pub ctrl_packets_recv: u64,
    pub ctrl_packets_sent: u64,
    pub data_bytes_lost: u64,
    pub data_bytes_recv: u64,
    pub data_bytes_sent: u64,
    /// Publishers: gaps given up on (libsrt's `pktRcvDrop`); viewers: packets it was told
    /// to drop with DROPREQ (libsrt's `pktSndDrop`).
    pub data_packets_dropped: u64,
    pub data_packets_lost: u64,
    pub data_packets_recv: u64,
    /// Sent again on the peer's loss report (a subset of `data_packets_sent`).
    pub data_packets_retransmitted: u64,
    pub data_packets_sent: u64,
    /// Cloned to this viewer by the kernel path (not in `data_packets_sent`).
    pub data_packets_sent_kernel: u64,
    /// Loss reports received (viewers) and sent (publishers).
    pub naks_recv: u64,
    pub naks_sent: u64,
    /// A viewer's free receive buffer, packets, from its latest full or small ACK.
    pub peer_buffer_available: Option<u32>,
    /// The peer's receive buffer, packets, from its handshake.
    pub peer_buffer_size: Option<u32>,
    /// Viewers: how long before its play-out time the newest packet it acknowledged
    /// reached it, ms.
    pub playout_lead_ms: Option<f64>,
    /// Over the last measurement interval (1 s), bit/s.
    pub recv_rate_bps: u64,
    pub rtt_ms: f64,
    pub rtt_variance_ms: f64,
    pub send_rate_bps: u64,
}

/// Body of `PUT /v1/streams/{id}/delay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetDelay {
    /// The new delay, ms (at most 30000, and what the viewers' buffers hold at the
    /// stream's rate; otherwise 422).
    pub delay_ms: u64,
}

/// Answer to `GET` and `PUT /v1/streams/{id}/delay`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delay {
    /// The delay viewers get now, ms.
    pub delay_applied_ms: u64,
    /// The delay asked for, ms.
    pub delay_ms: u64,
    /// The stream's id (hex).
    pub id: String,
}

/// Answer to `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `"ok"` whenever the relay answers at all.
    pub status: String,
}

impl Health {
    pub fn ok() -> Health {
        Health {
            status: "ok".into(),
        }
    }
}

/// Body of every error answer, whatever its status and whoever refused the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Why, for a person (e.g. `"invalid token"`).
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;
    use std::fmt::Debug;

    /// `json` (written as the relay sends it) decodes to `value` and encodes back to the
    /// same bytes.
    fn round_trip<T>(json: &str, value: T)
    where
        T: Serialize + DeserializeOwned + PartialEq + Debug,
    {
        let decoded: T = serde_json::from_str(json).expect(json);
        assert_eq!(decoded, value, "{json}");
        assert_eq!(serde_json::to_string(&value).unwrap(), json);
    }

    #[test]
    fn api_session_created() {
        round_trip(
            r#"{"resource_id":"1","session_id":"91bf7a9ed500c8ce"}"#,
            SessionCreated {
                passphrase: None,
                resource_id: "1".into(),
                session_id: "91bf7a9ed500c8ce".into(),
            },
        );
        round_trip(
            r#"{"passphrase":"0123456789abcdef","resource_id":"1","session_id":"91bf"}"#,
            SessionCreated {
                passphrase: Some("0123456789abcdef".into()),
                resource_id: "1".into(),
                session_id: "91bf".into(),
            },
        );
    }

    #[test]
    fn api_create_session_is_empty() {
        round_trip(
            "{}",
            CreateSession {
                encrypt: None,
                mode: None,
            },
        );
        round_trip(
            r#"{"encrypt":true}"#,
            CreateSession {
                encrypt: Some(true),
                mode: None,
            },
        );
        round_trip(
            r#"{"encrypt":false,"mode":"publish"}"#,
            CreateSession {
                encrypt: Some(false),
                mode: Some(SessionMode::Publish),
            },
        );
        assert!(serde_json::from_str::<CreateSession>(r#"{"mode": "either"}"#).is_err());
        assert!(serde_json::from_str::<CreateSession>(r#"{"encrypted": true}"#).is_err());
    }

    #[test]
    fn api_stream_listing() {
        round_trip(
            concat!(
                r#"[{"bitrate_bps":4000000,"delay_applied_ms":120,"delay_ms":180,"id":"1","#,
                r#""ingest_latency_ms":0.4,"name":"Main stage","publisher":true,"viewers":2},"#,
                r#"{"bitrate_bps":0,"delay_applied_ms":0,"delay_ms":0,"id":"2","#,
                r#""ingest_latency_ms":0.0,"name":"Stream two","publisher":false,"viewers":0}]"#
            ),
            vec![
                StreamInfo {
                    bitrate_bps: 4_000_000,
                    delay_applied_ms: 120,
                    delay_ms: 180,
                    id: "1".into(),
                    ingest_latency_ms: 0.4,
                    name: "Main stage".into(),
                    publisher: true,
                    viewers: 2,
                    upstream: None,
                },
                StreamInfo {
                    bitrate_bps: 0,
                    delay_applied_ms: 0,
                    delay_ms: 0,
                    id: "2".into(),
                    ingest_latency_ms: 0.0,
                    name: "Stream two".into(),
                    publisher: false,
                    viewers: 0,
                    upstream: None,
                },
            ],
        );
    }

    #[test]
    fn api_delay() {
        round_trip(
            r#"{"delay_applied_ms":0,"delay_ms":180,"id":"1"}"#,
            Delay {
                delay_applied_ms: 0,
                delay_ms: 180,
                id: "1".into(),
            },
        );
    }

    #[test]
    fn api_set_delay_takes_exactly_delay_ms() {
        round_trip(r#"{"delay_ms":750}"#, SetDelay { delay_ms: 750 });
        for bad in [
            r#"{"delay": 100}"#,
            r#"{"delay_ms": -5}"#,
            r#"{"delay_ms": 1.5}"#,
            r#"{"delay_ms": 100, "extra": 1}"#,
            r#"{"delay_ms": 100, "delay_ms": 200}"#,
        ] {
            assert!(serde_json::from_str::<SetDelay>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn api_connection_listing() {
        let stats = ConnectionStats {
            data_packets_sent: 7,
            peer_buffer_size: Some(8192),
            rtt_ms: 1.5,
            ..Default::default()
        };
        let json = serde_json::to_string(&vec![ConnectionInfo {
            connected_since: 1_800_000_000,
            datapath: "kernel".into(),
            id: 42,
            latency_ms: 120,
            mode: "request".into(),
            peer: "192.0.2.1:5000".into(),
            stats,
            stream: "1".into(),
        }])
        .unwrap();
        assert!(
            json.starts_with(concat!(
                r#"[{"connected_since":1800000000,"datapath":"kernel","id":42,"#,
                r#""latency_ms":120,"mode":"request","peer":"192.0.2.1:5000","stats":"#,
                r#"{"ctrl_bytes_lost":0,"#
            )),
            "{json}"
        );
        assert!(json.contains(r#""peer_buffer_available":null,"peer_buffer_size":8192,"#));
        assert!(json.ends_with(r#""rtt_variance_ms":0.0,"send_rate_bps":0},"stream":"1"}]"#));
        let back: Vec<ConnectionInfo> = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
    }

    #[test]
    fn api_health() {
        round_trip(r#"{"status":"ok"}"#, Health::ok());
    }

    #[test]
    fn api_error_body() {
        round_trip(
            r#"{"error":"invalid token"}"#,
            ErrorBody {
                error: "invalid token".into(),
            },
        );
    }

    /// What the handlers build today with `json!` encodes exactly as the types do.
    #[test]
    fn api_types_match_the_handlers_json() {
        let ingest_latency_us: u64 = 400;
        let listed = serde_json::json!([{
            "id": "1",
            "name": "Main stage",
            "publisher": true,
            "viewers": 2u64,
            "bitrate_bps": 4_000_000u64,
            "delay_ms": 180u64,
            "delay_applied_ms": 120u64,
            "ingest_latency_ms": ingest_latency_us as f64 / 1e3,
        }]);
        let typed: Vec<StreamInfo> = serde_json::from_value(listed.clone()).unwrap();
        assert_eq!(serde_json::to_string(&typed).unwrap(), listed.to_string());
        let delay = serde_json::json!({ "id": "1", "delay_ms": 180u64, "delay_applied_ms": 0u64 });
        let typed: Delay = serde_json::from_value(delay.clone()).unwrap();
        assert_eq!(serde_json::to_string(&typed).unwrap(), delay.to_string());
        let created = serde_json::json!({ "resource_id": "1", "session_id": "00ff" });
        let typed: SessionCreated = serde_json::from_value(created.clone()).unwrap();
        assert_eq!(serde_json::to_string(&typed).unwrap(), created.to_string());
    }
}
