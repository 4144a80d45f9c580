//! The soak's pure parts: the relay's Prometheus text, /proc fields, the honest viewers'
//! delivery bookkeeping, the NAK-storm datagram, one sample row and the run's summary.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use stsync_user::api::metrics::{ParseError, Scrape};
use stsync_user::srt::packet::encode_loss;
use stsync_user::srt::seq::Seq;

// ---------------------------------------------------------------------------------------
// Prometheus text

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

// ---------------------------------------------------------------------------------------
// Honest viewers' delivery

/// Which payload indices a viewer received, in a ring indexed by payload index (the
/// publisher numbers its payloads, so this does not depend on the relay's sequence mapping
/// or on reconnects). A slot holds `index << 1 | on_time`, or EMPTY.
#[derive(Debug, Clone)]
pub struct Delivered {
    slots: Vec<u64>,
    mask: u64,
}

const EMPTY: u64 = u64::MAX;

/// What one viewer got of a range of payload indices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeStats {
    pub expected: u64,
    pub received: u64,
    /// Received with a transit time within the latency.
    pub on_time: u64,
    /// Runs of consecutive missing indices.
    pub gaps: u64,
    /// The longest run.
    pub max_gap: u64,
}

impl Delivered {
    /// A ring of at least `capacity` indices.
    pub fn new(capacity: usize) -> Delivered {
        let n = capacity.max(16).next_power_of_two();
        Delivered {
            slots: vec![EMPTY; n],
            mask: n as u64 - 1,
        }
    }

    pub fn capacity(&self) -> u64 {
        self.mask + 1
    }

    /// First arrival of payload `index` (later copies are not recorded again by the caller).
    pub fn record(&mut self, index: u64, on_time: bool) {
        self.slots[(index & self.mask) as usize] = (index << 1) | u64::from(on_time);
    }

    /// What arrived of `[from, to)`; indices older than a ring count as missing.
    pub fn range(&self, from: u64, to: u64) -> RangeStats {
        let mut r = RangeStats::default();
        let mut run = 0u64;
        for i in from..to {
            r.expected += 1;
            let v = self.slots[(i & self.mask) as usize];
            if v != EMPTY && v >> 1 == i {
                r.received += 1;
                r.on_time += v & 1;
                run = 0;
            } else {
                if run == 0 {
                    r.gaps += 1;
                }
                run += 1;
                r.max_gap = r.max_gap.max(run);
            }
        }
        r
    }
}

// ---------------------------------------------------------------------------------------
// NAK storm

/// The loss list of one storm NAK: `ranges` contiguous ranges that together cover
/// `[next - span, next)`, i.e. the whole of a viewer's recent window in one datagram
/// (182 two-word ranges are 1456 bytes, the most one SRT control packet carries).
pub fn storm_nak(next: Seq, span: u32, ranges: u32) -> Vec<u32> {
    let ranges = ranges.clamp(1, span.max(1));
    let span = span.max(ranges);
    let base = span / ranges;
    let extra = span % ranges;
    let mut words = Vec::with_capacity(2 * ranges as usize);
    let mut first = next.sub(span);
    for r in 0..ranges {
        let len = base + u32::from(r < extra);
        let last = first.add(len - 1);
        encode_loss(&mut words, first, last);
        first = last.next();
    }
    words
}

// ---------------------------------------------------------------------------------------
// Hostile schedule

/// A periodic window: on during `[first + k·every, first + k·every + secs)` for k ≥ 0, in
/// seconds since the load started.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub enabled: bool,
    pub first: f64,
    pub every: f64,
    pub secs: f64,
}

impl Schedule {
    pub fn active(&self, t: f64) -> bool {
        self.overlap(t, t + 1e-9) > 0.0
    }

    /// Seconds of `[a, b)` inside the windows.
    pub fn overlap(&self, a: f64, b: f64) -> f64 {
        if !self.enabled || b <= a || self.secs <= 0.0 {
            return 0.0;
        }
        let every = if self.every > 0.0 {
            self.every
        } else {
            f64::INFINITY
        };
        let mut total = 0.0;
        let mut k = if every.is_finite() {
            ((a - self.first - self.secs) / every).floor().max(0.0)
        } else {
            0.0
        };
        loop {
            let start = self.first + k * every;
            if start >= b || !start.is_finite() {
                break;
            }
            let end = start + self.secs;
            total += (end.min(b) - start.max(a)).max(0.0);
            if !every.is_finite() {
                break;
            }
            k += 1.0;
        }
        total
    }
}

// ---------------------------------------------------------------------------------------
// Pseudo-random numbers (no dependency): SplitMix64.

#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)` (lo when the range is empty).
    pub fn below(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.next_u64() % (hi - lo)
        }
    }

    pub fn fill(&mut self, b: &mut [u8]) {
        for chunk in b.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Samples and summary

/// One row of samples.csv: the relay and the load over the `interval_s` before `t_s`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the load started.
    pub t_s: f64,
    pub interval_s: f64,
    /// Relay VmRSS (KiB).
    pub rss_kb: Option<u64>,
    /// Relay utime+stime over the interval, % of one core; and apart.
    pub cpu_pct: Option<f64>,
    pub cpu_user_pct: Option<f64>,
    pub cpu_sys_pct: Option<f64>,
    /// Entries of /proc/PID/fd.
    pub fds: Option<u64>,
    pub threads: Option<u64>,
    /// The metrics scrape answered (and how long it took).
    pub metrics_ok: bool,
    pub metrics_ms: f64,
    /// `srt_connections_current` by mode.
    pub conns_handshake: Option<u64>,
    pub conns_request: Option<u64>,
    pub conns_publish: Option<u64>,
    /// `srt_connections_total` (accepted since start).
    pub conns_total: Option<u64>,
    /// `srt_packets_dropped_total` growth per second.
    pub dropped_per_s: Option<f64>,
    pub heap_allocs_per_s: Option<f64>,
    /// Data bytes the relay counted as sent to the NAK attacker's connection(s), per second
    /// (its retransmissions are always sent by the daemon, on either datapath).
    pub attacker_relay_bytes_per_s: Option<f64>,
    pub attacker_retrans_per_s: Option<f64>,
    /// Bytes (whole datagrams) the attacker's socket received, per second.
    pub attacker_rx_bytes_per_s: f64,
    /// Bytes (whole datagrams) each honest viewer received per second, mean over viewers.
    pub honest_rx_bytes_per_s: f64,
    /// Data packets each honest viewer received per second, and what the relay counted as
    /// sent to them (daemon + kernel clones), mean over viewers: a cross-check.
    pub honest_rx_pkts_per_s: f64,
    pub honest_relay_pkts_per_s: Option<f64>,
    pub honest_connected: u32,
    /// The payload indices `[from, to)` judged in this row: those published in the
    /// interval before the previous sample (so every packet had a whole interval to arrive).
    pub delivery_from: u64,
    pub delivery_to: u64,
    /// When that range was published: seconds since the start, from and to.
    pub delivery_from_s: Option<f64>,
    pub delivery_to_s: Option<f64>,
    /// Received / published over that range: worst honest viewer and mean.
    pub honest_delivery_min: Option<f64>,
    pub honest_delivery_mean: Option<f64>,
    /// As min, counting only packets whose transit was within the latency.
    pub honest_on_time_min: Option<f64>,
    /// Runs of missing packets (all honest viewers) and the longest.
    pub honest_gaps: u64,
    pub honest_max_gap: u64,
    /// Packets the honest viewers' receivers found missing (recovered or not) / gave up on.
    pub honest_lost: u64,
    pub honest_given_up: u64,
    /// Fraction of the interval a NAK storm / handshake flood was on.
    pub storm: f64,
    pub flood: f64,
    pub naks_sent: u64,
    pub churn_joined: u64,
    pub churn_left: u64,
    pub churn_died: u64,
    pub churn_failed: u64,
    pub churn_closed_by_relay: u64,
    pub churn_alive: u32,
    /// Bytes the relay kept sending to churn viewers that died without SHUTDOWN, per second.
    pub to_dead_bytes_per_s: f64,
    pub flood_attempts: u64,
    pub flood_rejected: u64,
    pub flood_unanswered: u64,
    pub garbage_sent: u64,
    pub spoof_sent: u64,
    pub publisher_sent: u64,
    /// Machine: all busy CPU and softirq (% of one core), and this tool's own CPU.
    pub system_busy_pct: f64,
    pub softirq_pct: f64,
    pub soak_cpu_pct: f64,
}

fn o<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or(String::new(), |v| v.to_string())
}

fn of(v: Option<f64>, prec: usize) -> String {
    v.map_or(String::new(), |v| format!("{v:.prec$}"))
}

impl Sample {
    pub const CSV_HEADER: &'static str = "t_s,interval_s,rss_kb,cpu_pct,cpu_user_pct,cpu_sys_pct,fds,threads,metrics_ok,metrics_ms,conns_handshake,conns_request,conns_publish,conns_total,dropped_per_s,heap_allocs_per_s,attacker_relay_bytes_per_s,attacker_retrans_per_s,attacker_rx_bytes_per_s,honest_rx_bytes_per_s,honest_rx_pkts_per_s,honest_relay_pkts_per_s,honest_connected,delivery_from,delivery_to,delivery_from_s,delivery_to_s,honest_delivery_min,honest_delivery_mean,honest_on_time_min,honest_gaps,honest_max_gap,honest_lost,honest_given_up,storm,flood,naks_sent,churn_joined,churn_left,churn_died,churn_failed,churn_closed_by_relay,churn_alive,to_dead_bytes_per_s,flood_attempts,flood_rejected,flood_unanswered,garbage_sent,spoof_sent,publisher_sent,system_busy_pct,softirq_pct,soak_cpu_pct";

    pub fn csv_row(&self) -> String {
        [
            format!("{:.3}", self.t_s),
            format!("{:.3}", self.interval_s),
            o(self.rss_kb),
            of(self.cpu_pct, 2),
            of(self.cpu_user_pct, 2),
            of(self.cpu_sys_pct, 2),
            o(self.fds),
            o(self.threads),
            u8::from(self.metrics_ok).to_string(),
            format!("{:.1}", self.metrics_ms),
            o(self.conns_handshake),
            o(self.conns_request),
            o(self.conns_publish),
            o(self.conns_total),
            of(self.dropped_per_s, 1),
            of(self.heap_allocs_per_s, 1),
            of(self.attacker_relay_bytes_per_s, 0),
            of(self.attacker_retrans_per_s, 1),
            format!("{:.0}", self.attacker_rx_bytes_per_s),
            format!("{:.0}", self.honest_rx_bytes_per_s),
            format!("{:.1}", self.honest_rx_pkts_per_s),
            of(self.honest_relay_pkts_per_s, 1),
            self.honest_connected.to_string(),
            self.delivery_from.to_string(),
            self.delivery_to.to_string(),
            of(self.delivery_from_s, 3),
            of(self.delivery_to_s, 3),
            of(self.honest_delivery_min, 6),
            of(self.honest_delivery_mean, 6),
            of(self.honest_on_time_min, 6),
            self.honest_gaps.to_string(),
            self.honest_max_gap.to_string(),
            self.honest_lost.to_string(),
            self.honest_given_up.to_string(),
            format!("{:.2}", self.storm),
            format!("{:.2}", self.flood),
            self.naks_sent.to_string(),
            self.churn_joined.to_string(),
            self.churn_left.to_string(),
            self.churn_died.to_string(),
            self.churn_failed.to_string(),
            self.churn_closed_by_relay.to_string(),
            self.churn_alive.to_string(),
            format!("{:.0}", self.to_dead_bytes_per_s),
            self.flood_attempts.to_string(),
            self.flood_rejected.to_string(),
            self.flood_unanswered.to_string(),
            self.garbage_sent.to_string(),
            self.spoof_sent.to_string(),
            self.publisher_sent.to_string(),
            format!("{:.1}", self.system_busy_pct),
            format!("{:.1}", self.softirq_pct),
            format!("{:.1}", self.soak_cpu_pct),
        ]
        .join(",")
    }
}

/// The run in a few figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub samples: usize,
    pub duration_s: f64,
    pub rss_kb_start: Option<u64>,
    pub rss_kb_end: Option<u64>,
    pub rss_kb_max: Option<u64>,
    /// Time-weighted mean and the highest sample of the relay's CPU (% of one core).
    pub cpu_pct_mean: Option<f64>,
    pub cpu_pct_max: Option<f64>,
    pub fds_start: Option<u64>,
    pub fds_end: Option<u64>,
    pub fds_min: Option<u64>,
    pub fds_max: Option<u64>,
    pub threads_max: Option<u64>,
    pub conns_request_max: Option<u64>,
    pub conns_handshake_max: Option<u64>,
    pub conns_request_end: Option<u64>,
    pub conns_handshake_end: Option<u64>,
    /// Worst honest viewer over every judged range, and the packet-weighted mean.
    pub honest_delivery_min: Option<f64>,
    pub honest_on_time_min: Option<f64>,
    pub honest_delivery_mean: Option<f64>,
    pub honest_packets_judged: u64,
    pub honest_gaps: u64,
    pub honest_max_gap: u64,
    /// Bytes to the NAK attacker per second over the whole run (relay's count; the
    /// attacker's socket's count), the highest sample, and per second of NAK storm.
    pub attacker_bytes_per_s_mean: Option<f64>,
    pub attacker_bytes_per_s_max: Option<f64>,
    pub attacker_rx_bytes_per_s_mean: f64,
    pub storm_seconds: f64,
    pub attacker_bytes_per_storm_s: Option<f64>,
    /// Bytes each honest viewer received per second, mean.
    pub honest_bytes_per_s_mean: f64,
    pub metrics_failures: usize,
}

fn wmean(v: impl Iterator<Item = (f64, f64)>) -> Option<f64> {
    let (mut sum, mut w) = (0.0, 0.0);
    for (x, dt) in v {
        sum += x * dt;
        w += dt;
    }
    (w > 0.0).then(|| sum / w)
}

pub fn summarize(samples: &[Sample]) -> Summary {
    let min_u = |f: &dyn Fn(&Sample) -> Option<u64>| samples.iter().filter_map(f).min();
    let max_u = |f: &dyn Fn(&Sample) -> Option<u64>| samples.iter().filter_map(f).max();
    let first = |f: &dyn Fn(&Sample) -> Option<u64>| samples.iter().find_map(f);
    let last = |f: &dyn Fn(&Sample) -> Option<u64>| samples.iter().rev().find_map(f);
    let max_f = |f: &dyn Fn(&Sample) -> Option<f64>| {
        samples
            .iter()
            .filter_map(f)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
    };
    let min_f = |f: &dyn Fn(&Sample) -> Option<f64>| {
        samples
            .iter()
            .filter_map(f)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.min(v))))
    };
    let judged: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.honest_delivery_mean.is_some())
        .collect();
    let packets: u64 = judged.iter().map(|s| s.delivery_to - s.delivery_from).sum();
    let attacker_bytes: Option<f64> = {
        let v: Vec<f64> = samples
            .iter()
            .filter_map(|s| s.attacker_relay_bytes_per_s.map(|b| b * s.interval_s))
            .collect();
        (!v.is_empty()).then(|| v.iter().sum())
    };
    let total_s: f64 = samples.iter().map(|s| s.interval_s).sum();
    let storm_seconds: f64 = samples.iter().map(|s| s.storm * s.interval_s).sum();
    Summary {
        samples: samples.len(),
        duration_s: samples.last().map_or(0.0, |s| s.t_s),
        rss_kb_start: first(&|s| s.rss_kb),
        rss_kb_end: last(&|s| s.rss_kb),
        rss_kb_max: max_u(&|s| s.rss_kb),
        cpu_pct_mean: wmean(
            samples
                .iter()
                .filter_map(|s| s.cpu_pct.map(|c| (c, s.interval_s))),
        ),
        cpu_pct_max: max_f(&|s| s.cpu_pct),
        fds_start: first(&|s| s.fds),
        fds_end: last(&|s| s.fds),
        fds_min: min_u(&|s| s.fds),
        fds_max: max_u(&|s| s.fds),
        threads_max: max_u(&|s| s.threads),
        conns_request_max: max_u(&|s| s.conns_request),
        conns_handshake_max: max_u(&|s| s.conns_handshake),
        conns_request_end: last(&|s| s.conns_request),
        conns_handshake_end: last(&|s| s.conns_handshake),
        honest_delivery_min: min_f(&|s| s.honest_delivery_min),
        honest_on_time_min: min_f(&|s| s.honest_on_time_min),
        honest_delivery_mean: (packets > 0).then(|| {
            judged
                .iter()
                .map(|s| {
                    s.honest_delivery_mean.unwrap_or(0.0) * (s.delivery_to - s.delivery_from) as f64
                })
                .sum::<f64>()
                / packets as f64
        }),
        honest_packets_judged: packets,
        honest_gaps: samples.iter().map(|s| s.honest_gaps).sum(),
        honest_max_gap: samples.iter().map(|s| s.honest_max_gap).max().unwrap_or(0),
        attacker_bytes_per_s_mean: attacker_bytes.map(|b| b / total_s.max(1e-9)),
        attacker_bytes_per_s_max: max_f(&|s| s.attacker_relay_bytes_per_s),
        attacker_rx_bytes_per_s_mean: wmean(
            samples
                .iter()
                .map(|s| (s.attacker_rx_bytes_per_s, s.interval_s)),
        )
        .unwrap_or(0.0),
        storm_seconds,
        attacker_bytes_per_storm_s: match attacker_bytes {
            Some(b) if storm_seconds > 0.0 => Some(b / storm_seconds),
            _ => None,
        },
        honest_bytes_per_s_mean: wmean(
            samples
                .iter()
                .map(|s| (s.honest_rx_bytes_per_s, s.interval_s)),
        )
        .unwrap_or(0.0),
        metrics_failures: samples.iter().filter(|s| !s.metrics_ok).count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stsync_user::srt::packet::loss_ranges;

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

    #[test]
    fn delivery_ranges_count_gaps_and_lateness() {
        let mut d = Delivered::new(100);
        assert_eq!(d.capacity(), 128);
        for i in 1000..1100u64 {
            if !(1010..1013).contains(&i) && i != 1050 && i != 1099 {
                d.record(i, i % 10 != 0);
            }
        }
        let r = d.range(1000, 1100);
        assert_eq!(r.expected, 100);
        assert_eq!(r.received, 95);
        // 1000, 1020, 1030, 1040, 1060, 1070, 1080, 1090 came late (1010 and 1050 not at all).
        assert_eq!(r.on_time, 95 - 8);
        assert_eq!((r.gaps, r.max_gap), (3, 3));
        // A slot reused by a later index does not count for the earlier one.
        d.record(1000 + 128, true);
        assert_eq!(d.range(1000, 1001).received, 0);
        assert_eq!(d.range(1128, 1129).received, 1);
    }

    #[test]
    fn storm_nak_covers_the_window_in_one_datagram() {
        for next in [100_000u32, 5, 0x7FFF_FFF0] {
            let words = storm_nak(Seq::new(next), 8192, 182);
            assert_eq!(words.len(), 364);
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
            assert_eq!(
                bytes.len(),
                1456,
                "one 1472-byte UDP payload with the header"
            );
            let ranges: Vec<(Seq, Seq)> = loss_ranges(&bytes).map(Result::unwrap).collect();
            assert_eq!(ranges.len(), 182);
            assert_eq!(ranges[0].0, Seq::new(next).sub(8192));
            assert_eq!(ranges[181].1, Seq::new(next).sub(1));
            let mut covered = 0;
            for w in ranges.windows(2) {
                assert_eq!(w[0].1.next(), w[1].0, "contiguous");
            }
            for (a, b) in &ranges {
                covered += b.diff(*a) + 1;
            }
            assert_eq!(covered, 8192);
        }
    }

    #[test]
    fn schedule_windows() {
        let s = Schedule {
            enabled: true,
            first: 20.0,
            every: 60.0,
            secs: 5.0,
        };
        assert!(!s.active(19.9));
        assert!(s.active(20.0));
        assert!(s.active(24.9));
        assert!(!s.active(25.0));
        assert!(s.active(82.0));
        assert_eq!(s.overlap(0.0, 20.0), 0.0);
        assert_eq!(s.overlap(18.0, 23.0), 3.0);
        assert_eq!(s.overlap(0.0, 180.0), 15.0);
        assert_eq!(s.overlap(84.0, 141.0), 2.0);
        let off = Schedule {
            enabled: false,
            ..s
        };
        assert!(!off.active(21.0));
        assert_eq!(off.overlap(0.0, 180.0), 0.0);
    }

    fn sample(t: f64, rss: u64, cpu: f64, fds: u64) -> Sample {
        Sample {
            t_s: t,
            interval_s: 5.0,
            rss_kb: Some(rss),
            cpu_pct: Some(cpu),
            fds: Some(fds),
            metrics_ok: true,
            ..Default::default()
        }
    }

    #[test]
    fn summary_of_samples() {
        let mut s = vec![
            sample(5.0, 10_000, 10.0, 12),
            sample(10.0, 12_000, 50.0, 14),
            sample(15.0, 11_000, 30.0, 11),
        ];
        s[1].storm = 0.5;
        s[1].attacker_relay_bytes_per_s = Some(2e6);
        s[2].attacker_relay_bytes_per_s = Some(1e5);
        s[0].attacker_relay_bytes_per_s = Some(1e5);
        s[1].honest_delivery_min = Some(0.9);
        s[1].honest_delivery_mean = Some(0.95);
        s[1].honest_on_time_min = Some(0.8);
        (s[1].delivery_from, s[1].delivery_to) = (0, 100);
        s[2].honest_delivery_min = Some(1.0);
        s[2].honest_delivery_mean = Some(1.0);
        s[2].honest_on_time_min = Some(1.0);
        (s[2].delivery_from, s[2].delivery_to) = (100, 400);
        s[2].honest_gaps = 2;
        s[2].honest_max_gap = 7;
        s[2].metrics_ok = false;
        let m = summarize(&s);
        assert_eq!(m.samples, 3);
        assert_eq!(m.duration_s, 15.0);
        assert_eq!(
            (m.rss_kb_start, m.rss_kb_end, m.rss_kb_max),
            (Some(10_000), Some(11_000), Some(12_000))
        );
        assert_eq!(m.cpu_pct_mean, Some(30.0));
        assert_eq!(m.cpu_pct_max, Some(50.0));
        assert_eq!((m.fds_min, m.fds_max), (Some(11), Some(14)));
        assert_eq!((m.fds_start, m.fds_end), (Some(12), Some(11)));
        assert_eq!(m.honest_delivery_min, Some(0.9));
        assert_eq!(m.honest_on_time_min, Some(0.8));
        assert_eq!(m.honest_packets_judged, 400);
        assert!((m.honest_delivery_mean.unwrap() - (95.0 + 300.0) / 400.0).abs() < 1e-12);
        assert_eq!((m.honest_gaps, m.honest_max_gap), (2, 7));
        // (1e5 + 2e6 + 1e5) * 5 s over 15 s.
        assert!((m.attacker_bytes_per_s_mean.unwrap() - 2.2e6 / 3.0).abs() < 1e-6);
        assert_eq!(m.attacker_bytes_per_s_max, Some(2e6));
        assert_eq!(m.storm_seconds, 2.5);
        assert!((m.attacker_bytes_per_storm_s.unwrap() - 2.2e6 * 5.0 / 2.5).abs() < 1e-6);
        assert_eq!(m.metrics_failures, 1);
        assert_eq!(
            Sample::CSV_HEADER.split(',').count(),
            s[0].csv_row().split(',').count()
        );
    }
}
