//! What a sweep keeps: the machine, the raw UDP baseline, and one flattened row per point
//! (results.json, read back by `replot`).

use crate::report::Report;
use serde::{Deserialize, Serialize};
use std::path::Path;
use stsync_user::os::proc;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub clk_tck: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Baseline {
    pub seconds: f64,
    pub payload: usize,
    pub sent_pps: f64,
    pub received_pps: f64,
    pub system_busy_pct: f64,
    pub softirq_pct: f64,
    /// Whole-machine busy CPU per received datagram (send syscall + veth + receive).
    pub busy_ns_per_packet: f64,
}

/// One point of the sweep, flattened for the table, the plot and the docs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Point {
    pub datapath: String,
    /// Who encrypted (`--crypto`'s spelling: clear, aes128, pub-aes128...).
    #[serde(default = "clear")]
    pub crypto: String,
    /// The relay's --workers (None: not passed, the relay's default).
    #[serde(default)]
    pub workers: Option<u32>,
    /// `single` (publisher → relay → viewers) or `tree` (publisher → origin → two edges,
    /// `viewers` split between them; the `relay_*` figures are then the origin's).
    #[serde(default = "single")]
    pub topology: String,
    /// `ipv4` or `ipv6`: the family the publisher and the viewers called the relays over.
    #[serde(default = "ipv4")]
    pub family: String,
    /// The relay's kernel counters at the end of the point (its whole life, warm-up and
    /// drain included; the tree: the origin's): clones made, clones that failed, publisher
    /// packets the program saw. None without the kernel path (or its metrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_clones: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_clone_failures: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_packets_seen: Option<u64>,
    /// All the viewers (the tree: both edges').
    pub viewers: u32,
    pub bitrate_mbps: f64,
    /// How the generator received: "socket" or "xdp" (kernel sink).
    #[serde(default)]
    pub rx: String,
    pub error: Option<String>,
    pub connected: u32,
    pub delivery_min: f64,
    pub delivery_mean: f64,
    /// Delivery counting only packets whose transit was within the latency.
    /// (None in results from before it was measured.)
    #[serde(default)]
    pub on_time_min: Option<f64>,
    #[serde(default)]
    pub on_time_mean: Option<f64>,
    pub relay_pct: f64,
    pub softirq_pct: f64,
    pub relay_total_pct: f64,
    pub attributed_pct: f64,
    pub generator_pct: f64,
    /// The generator's utime alone (its stime holds softirq work run in its context).
    #[serde(default)]
    pub generator_user_pct: Option<f64>,
    pub other_pct: f64,
    pub busy_pct: f64,
    pub latency_p50_us: f64,
    pub latency_p99_us: f64,
    pub latency_max_us: f64,
    pub relay_rss_kb: u64,
    pub delivered_pps: f64,
    /// (relay + softirq + irq) CPU time per delivered packet.
    pub ns_per_delivered: f64,
    /// The relay process's system calls per second over the window (perf), if counted.
    #[serde(default)]
    pub relay_syscalls_per_s: Option<f64>,
    /// relay_syscalls_per_s / viewers.
    #[serde(default)]
    pub syscalls_per_viewer_s: Option<f64>,
    /// relay_pct / viewers: the daemon's own CPU per viewer (% of one core).
    #[serde(default)]
    pub relay_pct_per_viewer: f64,
    /// Packets the publisher sent in the window / what its bitrate asks for: below 1 the
    /// offered load fell short (the generator could not keep pace).
    #[serde(default)]
    pub offered: f64,
    /// Packets dropped at full kernel input backlogs during the window (machine-wide).
    #[serde(default)]
    pub backlog_drops: Option<u64>,
    /// Full ACKs per viewer per second in the window (libsrt: ~100).
    #[serde(default)]
    pub acks_per_viewer_s: Option<f64>,
    /// --wait-quiet: the machine's busy % in the second before the point started.
    #[serde(default)]
    pub busy_before_pct: Option<f64>,
    /// The tree: each edge's CPU (% of one core) and system calls per second over the
    /// window (empty for the single relay).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edge_pct: Vec<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edge_syscalls_per_s: Vec<f64>,
    /// The tree: the edges' CPU per viewer each serves (their mean / (viewers / 2)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_pct_per_viewer: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_syscalls_per_viewer_s: Option<f64>,
    pub report: Option<String>,
}

impl Point {
    /// The point carried its nominal load (offered ≥ 0.99) and every viewer got at least
    /// 99.9 % of the window's packets within the latency.
    pub fn holds(&self) -> bool {
        self.error.is_none() && self.offered >= 0.99 && self.on_time_min.is_some_and(|d| d >= 0.999)
    }

    pub(super) fn failed(
        datapath: &str,
        rx: &str,
        viewers: u32,
        bitrate: u64,
        error: String,
    ) -> Point {
        Point {
            datapath: datapath.into(),
            crypto: "clear".into(),
            workers: None,
            topology: single(),
            family: ipv4(),
            kernel_clones: None,
            kernel_clone_failures: None,
            kernel_packets_seen: None,
            viewers,
            bitrate_mbps: bitrate as f64 / 1e6,
            rx: rx.into(),
            error: Some(error),
            connected: 0,
            delivery_min: 0.0,
            delivery_mean: 0.0,
            on_time_min: None,
            on_time_mean: None,
            relay_pct: 0.0,
            softirq_pct: 0.0,
            relay_total_pct: 0.0,
            attributed_pct: 0.0,
            generator_pct: 0.0,
            generator_user_pct: None,
            other_pct: 0.0,
            busy_pct: 0.0,
            latency_p50_us: 0.0,
            latency_p99_us: 0.0,
            latency_max_us: 0.0,
            relay_rss_kb: 0,
            delivered_pps: 0.0,
            ns_per_delivered: 0.0,
            relay_syscalls_per_s: None,
            syscalls_per_viewer_s: None,
            relay_pct_per_viewer: 0.0,
            offered: 0.0,
            backlog_drops: None,
            acks_per_viewer_s: None,
            busy_before_pct: None,
            edge_pct: Vec::new(),
            edge_syscalls_per_s: Vec::new(),
            edge_pct_per_viewer: None,
            edge_syscalls_per_viewer_s: None,
            report: None,
        }
    }

    pub(super) fn from_report(datapath: &str, r: &Report, path: &Path) -> Point {
        let c = &r.cpu;
        let total = c.relay_total_pct.unwrap_or(0.0);
        let viewers = r.config.viewers.max(1) as f64;
        let syscalls = r.relay_syscalls.as_ref().map(|s| s.per_second);
        let edge_pct: Vec<f64> = r
            .more_relays
            .iter()
            .map(|e| e.cpu_pct.unwrap_or(0.0))
            .collect();
        let edge_syscalls_per_s: Vec<f64> = r
            .more_relays
            .iter()
            .filter_map(|e| e.syscalls.as_ref().map(|s| s.per_second))
            .collect();
        // Viewers each edge serves (the generator splits them evenly).
        let per_edge = viewers / r.more_relays.len().max(1) as f64;
        let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        Point {
            datapath: datapath.into(),
            crypto: super::Encryption {
                publish: r.config.publish_key_len,
                view: r.config.view_key_len,
            }
            .name(),
            workers: None,
            topology: if r.more_relays.is_empty() {
                single()
            } else {
                "tree".into()
            },
            family: if r.config.relay.starts_with('[') {
                "ipv6".into()
            } else {
                ipv4()
            },
            kernel_clones: None,
            kernel_clone_failures: None,
            kernel_packets_seen: None,
            viewers: r.config.viewers,
            bitrate_mbps: r.config.bitrate_bps as f64 / 1e6,
            rx: r.config.rx.clone(),
            error: None,
            connected: r.connected,
            delivery_min: r.delivery.min,
            delivery_mean: r.delivery.mean,
            on_time_min: Some(r.delivery.on_time_min),
            on_time_mean: Some(r.delivery.on_time_mean),
            relay_pct: c.relay_pct.unwrap_or(0.0),
            softirq_pct: c.softirq_pct + c.irq_pct,
            relay_total_pct: total,
            attributed_pct: c.attributed_pct,
            generator_pct: c.generator_pct,
            generator_user_pct: c.generator_user_pct,
            other_pct: c.other_processes_pct,
            busy_pct: c.system_busy_pct,
            latency_p50_us: r.latency_us.p50,
            latency_p99_us: r.latency_us.p99,
            latency_max_us: r.latency_us.max,
            relay_rss_kb: c.relay_rss_kb_end.unwrap_or(0),
            delivered_pps: r.delivered_pps,
            ns_per_delivered: if r.delivered_pps > 0.0 {
                total / 100.0 * 1e9 / r.delivered_pps
            } else {
                0.0
            },
            relay_syscalls_per_s: syscalls,
            syscalls_per_viewer_s: syscalls.map(|s| s / viewers),
            relay_pct_per_viewer: c.relay_pct.unwrap_or(0.0) / viewers,
            offered: {
                let pps = r.config.bitrate_bps as f64 / (r.config.payload as f64 * 8.0);
                r.delivery.expected_per_viewer as f64 / (pps * c.seconds).max(1e-9)
            },
            backlog_drops: c.softnet_dropped,
            acks_per_viewer_s: r.full_acks_per_viewer_s,
            busy_before_pct: None,
            edge_pct_per_viewer: mean(&edge_pct).map(|m| m / per_edge),
            edge_syscalls_per_viewer_s: mean(&edge_syscalls_per_s).map(|m| m / per_edge),
            edge_pct,
            edge_syscalls_per_s,
            report: Some(path.display().to_string()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepResults {
    pub machine: Machine,
    pub started_unix: u64,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Why a datapath could not run at all (e.g. the kernel path not built).
    pub datapath_errors: Vec<(String, String)>,
    /// What was measured: the relay binary and eBPF object (as given; default if empty),
    /// how the generator received, and /proc/loadavg at the start and end of the sweep.
    #[serde(default)]
    pub relay_bin: String,
    #[serde(default)]
    pub ebpf_object: String,
    #[serde(default)]
    pub rx: String,
    #[serde(default)]
    pub loadavg_start: String,
    #[serde(default)]
    pub loadavg_end: String,
    pub baseline: Option<Baseline>,
    pub points: Vec<Point>,
    /// --find-max: the most viewers each datapath, encryption and worker count held.
    #[serde(default)]
    pub max_viewers: Vec<MaxViewers>,
}

/// --find-max's answer for one datapath, encryption and worker count.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MaxViewers {
    pub datapath: String,
    pub crypto: String,
    #[serde(default = "ipv4")]
    pub family: String,
    /// The relay's --workers (None: not passed).
    #[serde(default)]
    pub workers: Option<u32>,
    /// The most viewers tried that held (None: not even the lowest).
    pub holds_at: Option<u32>,
    /// The fewest tried that did not (None: not even the highest failed).
    pub fails_at: Option<u32>,
}

fn clear() -> String {
    "clear".into()
}

fn single() -> String {
    "single".into()
}

fn ipv4() -> String {
    "ipv4".into()
}

pub fn machine() -> Machine {
    Machine {
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model: proc::cpu_model(),
        kernel: proc::kernel_release(),
        clk_tck: proc::clk_tck(),
    }
}
