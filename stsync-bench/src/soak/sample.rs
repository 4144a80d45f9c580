//! One sample: a row of samples.csv (and of samples.json), the relay and the load over one
//! interval; the rows as they are written; the progress line printed for each.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::path::Path;

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

fn print_progress(s: &Sample) {
    let f = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |v| format!("{v:.p$}"));
    eprintln!(
        "soak: t={:6.0} s  rss {} KiB  cpu {} %  fds {}  conns req {} hs {}  honest {}/{} on time {}  attacker {} B/s{}{}",
        s.t_s,
        s.rss_kb.map_or("-".into(), |v| v.to_string()),
        f(s.cpu_pct, 1),
        s.fds.map_or("-".into(), |v| v.to_string()),
        s.conns_request.map_or("-".into(), |v| v.to_string()),
        s.conns_handshake.map_or("-".into(), |v| v.to_string()),
        f(s.honest_delivery_min, 4),
        s.honest_connected,
        f(s.honest_on_time_min, 4),
        f(s.attacker_relay_bytes_per_s, 0),
        if s.storm > 0.0 { "  [storm]" } else { "" },
        if s.flood > 0.0 { "  [flood]" } else { "" },
    );
}

/// The rows so far: samples.csv written as it goes, the samples kept for the JSON and the
/// summary.
pub struct Rows {
    csv: File,
    pub samples: Vec<Sample>,
}

impl Rows {
    /// Creates `path` with the CSV header.
    pub fn create(path: &Path) -> std::io::Result<Rows> {
        let mut csv = File::create(path)?;
        writeln!(csv, "{}", Sample::CSV_HEADER)?;
        Ok(Rows {
            csv,
            samples: Vec::new(),
        })
    }

    /// Prints the sample's progress line and writes its row.
    pub fn push(&mut self, s: Sample) -> std::io::Result<()> {
        print_progress(&s);
        writeln!(self.csv, "{}", s.csv_row())?;
        self.samples.push(s);
        Ok(())
    }
}
