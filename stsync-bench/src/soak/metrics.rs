//! Scraping the relay: one GET of /v1/metrics read into what the soak samples (connections
//! by mode, drops, heap allocations, the datapath, per-connection data counters), and the
//! growth of the per-connection counters from one scrape to the next.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;
use stsync_user::api::metrics::{ParseError, Scrape};

/// Per-connection counters of the relay (`id` label = the relay's SRT socket ID).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ConnCounters {
    pub data_bytes_sent: f64,
    pub data_packets_sent: f64,
    pub data_packets_retransmitted: f64,
    pub data_packets_sent_kernel: f64,
}

/// What the soak reads from one scrape of /v1/metrics.
#[derive(Debug, Clone, Default)]
pub struct RelayMetrics {
    /// `srt_connections_current` by `mode`.
    pub current: HashMap<String, f64>,
    pub connections_total: Option<f64>,
    /// `srt_packets_dropped_total`, all reasons.
    pub dropped_total: f64,
    pub heap_allocations: Option<f64>,
    /// `stsync_datapath` kind whose value is 1.
    pub datapath: Option<String>,
    pub conns: HashMap<u32, ConnCounters>,
}

impl RelayMetrics {
    pub fn parse(text: &str) -> Result<RelayMetrics, ParseError> {
        let mut m = RelayMetrics::default();
        for s in Scrape::parse(text)?.samples() {
            let id = || s.label("id").and_then(|v| v.parse::<u32>().ok());
            match s.name.as_str() {
                "srt_connections_current" => {
                    if let Some(mode) = s.label("mode") {
                        m.current.insert(mode.to_string(), s.value);
                    }
                }
                "srt_connections_total" => m.connections_total = Some(s.value),
                "srt_packets_dropped_total" => m.dropped_total += s.value,
                "stsync_heap_allocations_total" => m.heap_allocations = Some(s.value),
                "stsync_datapath" if s.value == 1.0 => {
                    m.datapath = s.label("kind").map(str::to_string)
                }
                "srt_connection_data_bytes_sent" => {
                    if let Some(id) = id() {
                        m.conns.entry(id).or_default().data_bytes_sent = s.value;
                    }
                }
                "srt_connection_data_packets_sent" => {
                    if let Some(id) = id() {
                        m.conns.entry(id).or_default().data_packets_sent = s.value;
                    }
                }
                "srt_connection_data_packets_retransmitted" => {
                    if let Some(id) = id() {
                        m.conns.entry(id).or_default().data_packets_retransmitted = s.value;
                    }
                }
                "srt_connection_data_packets_sent_kernel" => {
                    if let Some(id) = id() {
                        m.conns.entry(id).or_default().data_packets_sent_kernel = s.value;
                    }
                }
                _ => {}
            }
        }
        Ok(m)
    }

    pub fn current(&self, mode: &str) -> Option<u64> {
        self.current.get(mode).map(|v| *v as u64)
    }
}

/// Growth of per-connection counters between scrapes. A connection's series disappear
/// when it closes, and a new connection starts from zero: each ID is followed on its own.
#[derive(Debug, Default)]
pub struct ConnDeltas {
    last: HashMap<u32, ConnCounters>,
}

impl ConnDeltas {
    /// The sum over `ids` of what each counter grew by since the previous call.
    pub fn step(&mut self, m: &RelayMetrics, ids: &[u32]) -> ConnCounters {
        let mut d = ConnCounters::default();
        for id in ids {
            let Some(now) = m.conns.get(id) else { continue };
            let before = self.last.get(id).copied().unwrap_or_default();
            d.data_bytes_sent += (now.data_bytes_sent - before.data_bytes_sent).max(0.0);
            d.data_packets_sent += (now.data_packets_sent - before.data_packets_sent).max(0.0);
            d.data_packets_retransmitted +=
                (now.data_packets_retransmitted - before.data_packets_retransmitted).max(0.0);
            d.data_packets_sent_kernel +=
                (now.data_packets_sent_kernel - before.data_packets_sent_kernel).max(0.0);
            self.last.insert(*id, *now);
        }
        d
    }
}

/// One scrape, and how long it took (ms); None when it failed or did not parse.
pub fn scrape(http: SocketAddr) -> (Option<RelayMetrics>, f64) {
    let t = Instant::now();
    let m = crate::http::metrics(None, http)
        .ok()
        .and_then(|body| RelayMetrics::parse(&body).ok());
    (m, t.elapsed().as_secs_f64() * 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# HELP srt_connections_current open connections by mode
# TYPE srt_connections_current gauge
srt_connections_current{mode="handshake"} 3
srt_connections_current{mode="publish"} 1
srt_connections_current{mode="request"} 27
srt_connections_total 912
srt_packets_dropped_total{reason="malformed"} 10
srt_packets_dropped_total{reason="unknown_socket"} 32.5
srt_connection_data_bytes_sent{id="1234"} 1.5e6
srt_connection_data_packets_retransmitted{id="1234"} 800
srt_connection_data_packets_sent_kernel{id="77"} 42
stsync_datapath{kind="ebpf"} 0
stsync_datapath{kind="userspace"} 1
stsync_heap_allocations_total 123456
weird{a="x\"y,z}",b="w"} +Inf 1700000000
"#;

    #[test]
    fn parses_the_relays_metrics() {
        let all = Scrape::parse(METRICS).unwrap();
        let w = all.matching("weird", &[]).next().unwrap();
        assert_eq!(w.label("a"), Some("x\"y,z}"));
        assert_eq!(w.label("b"), Some("w"));
        assert_eq!(w.value, f64::INFINITY);
        // A malformed line fails the scrape (counted as a failed one), not just that line.
        assert!(RelayMetrics::parse(&format!("{METRICS}not a sample line {{\n")).is_err());
        let m = RelayMetrics::parse(METRICS).unwrap();
        assert_eq!(m.current("handshake"), Some(3));
        assert_eq!(m.current("request"), Some(27));
        assert_eq!(m.current("publish"), Some(1));
        assert_eq!(m.connections_total, Some(912.0));
        assert_eq!(m.dropped_total, 42.5);
        assert_eq!(m.heap_allocations, Some(123456.0));
        assert_eq!(m.datapath.as_deref(), Some("userspace"));
        assert_eq!(m.conns[&1234].data_bytes_sent, 1.5e6);
        assert_eq!(m.conns[&1234].data_packets_retransmitted, 800.0);
        assert_eq!(m.conns[&77].data_packets_sent_kernel, 42.0);
    }

    #[test]
    fn connection_deltas_follow_each_id() {
        let mut d = ConnDeltas::default();
        let m1 = RelayMetrics::parse("srt_connection_data_bytes_sent{id=\"1\"} 100\n").unwrap();
        assert_eq!(d.step(&m1, &[1, 2]).data_bytes_sent, 100.0);
        // 1 grew by 50, 2 appeared with 30, 3 is not asked for.
        let m2 = RelayMetrics::parse(
            "srt_connection_data_bytes_sent{id=\"1\"} 150\nsrt_connection_data_bytes_sent{id=\"2\"} 30\nsrt_connection_data_bytes_sent{id=\"3\"} 999\n",
        )
        .unwrap();
        assert_eq!(d.step(&m2, &[1, 2]).data_bytes_sent, 80.0);
        // 1 is gone (closed): nothing from it, nothing negative.
        let m3 = RelayMetrics::parse("srt_connection_data_bytes_sent{id=\"2\"} 40\n").unwrap();
        assert_eq!(d.step(&m3, &[1, 2]).data_bytes_sent, 10.0);
    }
}
