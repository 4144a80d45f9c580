//! What one load run reports (JSON) and its human table.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub config: RunConfig,
    pub connected: u32,
    /// Viewers that did not connect, by outcome (e.g. "rejected 2402").
    pub not_connected: BTreeMap<String, u32>,
    /// Packet indices `[first, end)` published during the window: what every viewer should get.
    pub window_first_index: u64,
    pub window_end_index: u64,
    pub delivery: DeliveryReport,
    /// Transit latency (arrival at the viewer socket minus the send time in the payload), all
    /// viewers, first arrival of each window packet.
    pub latency_us: LatencyReport,
    pub viewer_totals: ViewerTotals,
    pub publisher: PublisherReport,
    pub cpu: CpuReport,
    pub generator: GeneratorReport,
    /// Window packets delivered to all viewers per second.
    pub delivered_pps: f64,
    /// Full ACKs each viewer sent per second of the window: a libsrt receiver sends one every
    /// 10 ms while data flows; fewer means the generator could not keep that pace.
    #[serde(default)]
    pub full_acks_per_viewer_s: Option<f64>,
    /// The relay's (--watch-pid) system calls over the window (--count-syscalls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_syscalls: Option<crate::syscalls::SyscallReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_syscalls_error: Option<String>,
    /// --rx xdp: the kernel sink's own counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<crate::sink::SinkReport>,
    /// --watch-more: the further relays' cost over the window (the tree's edges).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_relays: Vec<RelayCost>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub per_viewer: Option<Vec<ViewerRow>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunConfig {
    pub relay: String,
    pub viewers: u32,
    pub bitrate_bps: u64,
    pub payload: usize,
    pub latency_ms: u16,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub sid_template: String,
    /// How the viewers received data: "socket" or "xdp" (the kernel sink).
    #[serde(default)]
    pub rx: String,
    /// Key length (bytes) the publisher encrypted with; None: clear.
    #[serde(default)]
    pub publish_key_len: Option<usize>,
    /// Key length (bytes) the viewers encrypted with; None: clear.
    #[serde(default)]
    pub view_key_len: Option<usize>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeliveryReport {
    pub expected_per_viewer: u64,
    /// Unique window packets received / expected, over viewers (not connected = 0).
    pub min: f64,
    pub mean: f64,
    pub max: f64,
    /// As min and mean, counting only packets whose transit was within the latency
    /// (later ones a libsrt player would drop as too late).
    #[serde(default)]
    pub on_time_min: f64,
    #[serde(default)]
    pub on_time_mean: f64,
    pub viewers_complete: u32,
    pub total_delivered: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LatencyReport {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    pub samples: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ViewerTotals {
    pub received: u64,
    pub duplicates: u64,
    pub rexmit_received: u64,
    pub outside_window: u64,
    pub bad_payload: u64,
    pub wrong_source: u64,
    pub misrouted: u64,
    /// Gaps found by the viewers' receivers (packets).
    pub lost: u64,
    /// Missing packets given up (not recovered within the latency, or DROPREQ).
    pub given_up: u64,
    pub naks_sent: u64,
    pub acks_full: u64,
    pub acks_light: u64,
    pub acks_unanswered: u64,
    pub keepalives: u64,
    pub dropreqs: u64,
    /// Encrypted viewers, socket receive: whole payloads decrypted and checked.
    #[serde(default)]
    pub payloads_checked: u64,
    /// Key refreshes from the relay that viewers answered (KMRSP).
    #[serde(default)]
    pub key_refreshes: u64,
}

impl ViewerTotals {
    pub(crate) fn add(
        &mut self,
        c: &crate::loadgen::viewers::ViewerCountersView,
        lost: u64,
        given_up: u64,
        unanswered: u64,
    ) {
        self.received += c.received;
        self.duplicates += c.duplicates;
        self.rexmit_received += c.rexmit_received;
        self.outside_window += c.outside_window;
        self.bad_payload += c.bad_payload;
        self.wrong_source += c.wrong_source;
        self.misrouted += c.misrouted;
        self.lost += lost;
        self.given_up += given_up;
        self.naks_sent += c.naks_sent;
        self.acks_full += c.acks_full;
        self.acks_light += c.acks_light;
        self.acks_unanswered += unanswered;
        self.keepalives += c.keepalives;
        self.dropreqs += c.dropreqs;
        self.payloads_checked += c.payloads_checked;
        self.key_refreshes += c.key_refreshes;
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct PublisherReport {
    pub sent: u64,
    pub retransmitted: u64,
    pub naks: u64,
    pub acks_full: u64,
    pub acks_light: u64,
    pub dropreqs: u64,
    pub rtt_us: u32,
    pub pace_resets: u64,
    pub unexpected: u64,
}

/// One --watch-more relay over the window: CPU in % of one core.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RelayCost {
    pub pid: u32,
    /// None: the process was gone at an edge of the window.
    pub cpu_pct: Option<f64>,
    pub user_pct: Option<f64>,
    pub sys_pct: Option<f64>,
    pub rss_kb_end: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syscalls: Option<crate::syscalls::SyscallReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syscalls_error: Option<String>,
}

/// CPU over the window, in % of one core (200 % = both cores of a 2-CPU machine).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CpuReport {
    pub seconds: f64,
    /// This generator process (utime + stime from /proc/self/stat).
    pub generator_pct: f64,
    /// Its utime and stime apart: stime includes the kernel's packet work (softirq) that
    /// runs in its context, e.g. the relay's fan-out set off by the publisher's sends.
    #[serde(default)]
    pub generator_user_pct: Option<f64>,
    #[serde(default)]
    pub generator_sys_pct: Option<f64>,
    /// The generator's publisher thread (part of generator_pct): its sends set off the
    /// relay's fan-out, which runs as softirq in its context and is mostly what this is.
    #[serde(default)]
    pub generator_publisher_pct: Option<f64>,
    /// The relay's utime and stime apart (same caveat).
    #[serde(default)]
    pub relay_user_pct: Option<f64>,
    #[serde(default)]
    pub relay_sys_pct: Option<f64>,
    /// The relay process (utime + stime from /proc/<pid>/stat, all threads).
    pub relay_pct: Option<f64>,
    /// Whole machine, from /proc/stat: everything but idle and iowait.
    pub system_busy_pct: f64,
    pub softirq_pct: f64,
    pub irq_pct: f64,
    /// All other user-space processes alive at both ends of the window (builds, editors...).
    pub other_processes_pct: f64,
    /// system_busy − generator − other processes: the relay process plus all kernel work
    /// not charged to a process (softirq, irq, kernel threads), on both sides of the relay.
    pub attributed_pct: f64,
    /// relay process + softirq + irq: the relay's own work plus the kernel's packet work
    /// (where kernel clones run); includes the viewers' side of the veth receive path.
    pub relay_total_pct: Option<f64>,
    /// Packets dropped machine-wide at full input backlogs during the window
    /// (/proc/net/softnet_stat): e.g. fan-out bursts larger than netdev_max_backlog.
    #[serde(default)]
    pub softnet_dropped: Option<u64>,
    pub relay_rss_kb_start: Option<u64>,
    pub relay_rss_kb_end: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GeneratorReport {
    pub cpu_total_s: f64,
    pub run_s: f64,
    pub send_syscalls: u64,
    pub recv_syscalls: u64,
    pub datagrams_sent: u64,
    pub send_failed: u64,
    /// Datagrams for no known viewer, or unparsable.
    pub stray: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ViewerRow {
    pub viewer: u32,
    pub addr: String,
    pub state: String,
    pub unique: u64,
    pub delivery: f64,
    #[serde(default)]
    pub on_time: f64,
    pub latency_p50_us: f64,
    pub latency_p99_us: f64,
    pub latency_max_us: f64,
    pub losses: u64,
    pub rexmit_received: u64,
    pub rtt_us: u32,
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

impl Report {
    pub fn print(&self) {
        let c = &self.config;
        let d = &self.delivery;
        let l = &self.latency_us;
        let u = &self.cpu;
        println!(
            "stsync-loadgen: {} viewers of {:.2} Mbit/s ({} B payload) via {}, window {:.1} s",
            c.viewers,
            c.bitrate_bps as f64 / 1e6,
            c.payload,
            c.relay,
            u.seconds
        );
        println!(
            "  connected            {}/{} {:?}",
            self.connected, c.viewers, self.not_connected
        );
        println!(
            "  delivered/expected   min {:.4}  mean {:.4}  max {:.4}  ({} packets per viewer, {} viewers complete)",
            d.min, d.mean, d.max, d.expected_per_viewer, d.viewers_complete
        );
        println!(
            "  on time (≤ latency)  min {:.4}  mean {:.4}",
            d.on_time_min, d.on_time_mean
        );
        if let Some(a) = self.full_acks_per_viewer_s {
            println!("  full ACKs            {a:.1}/s per viewer in the window");
        }
        println!(
            "  delivered            {:.0} packets/s to all viewers",
            self.delivered_pps
        );
        println!(
            "  transit latency      p50 {:.0} µs  p99 {:.0} µs  p99.9 {:.0} µs  max {:.0} µs  ({} samples)",
            l.p50, l.p99, l.p999, l.max, l.samples
        );
        let t = &self.viewer_totals;
        println!(
            "  viewers              lost {}  retransmitted {}  given up {}  dup {}  NAKs {}  ACKs {} full / {} light  wrong src {}  misrouted {}",
            t.lost, t.rexmit_received, t.given_up, t.duplicates, t.naks_sent, t.acks_full, t.acks_light, t.wrong_source, t.misrouted
        );
        let p = &self.publisher;
        println!(
            "  publisher            sent {}  retransmitted {}  NAKs {}  ACKs {} full / {} light  RTT {} µs",
            p.sent, p.retransmitted, p.naks, p.acks_full, p.acks_light, p.rtt_us
        );
        println!(
            "  CPU (% of a core)    relay {}  softirq+irq {:.1}  relay+softirq {}  generator {:.1}  system busy {:.1}  other procs {:.1}  busy-gen-other {:.1}",
            opt(u.relay_pct), u.softirq_pct + u.irq_pct, opt(u.relay_total_pct), u.generator_pct, u.system_busy_pct, u.other_processes_pct, u.attributed_pct
        );
        if let (Some(gu), Some(gs)) = (u.generator_user_pct, u.generator_sys_pct) {
            println!(
                "  CPU user/sys         generator {gu:.1}/{gs:.1} (publisher thread {})  relay {}/{}",
                opt(u.generator_publisher_pct),
                opt(u.relay_user_pct),
                opt(u.relay_sys_pct)
            );
        }
        if let (Some(a), Some(b)) = (u.relay_rss_kb_start, u.relay_rss_kb_end) {
            println!("  relay RSS            {a} KiB -> {b} KiB");
        }
        if let Some(s) = &self.relay_syscalls {
            let top: Vec<String> = s
                .by_name
                .iter()
                .filter(|(_, &n)| n > 0)
                .map(|(k, n)| format!("{k} {:.0}/s", *n as f64 / s.seconds.max(1e-6)))
                .collect();
            println!(
                "  relay syscalls       {:.0}/s ({})",
                s.per_second,
                top.join(", ")
            );
        }
        if let Some(s) = &self.sink {
            println!(
                "  kernel sink          {:?} on {}: {} recorded, {} duplicates, {} control, {} others and {} IPv6 with extension headers passed",
                s.attach, s.interface, s.recorded, s.duplicates, s.control_passed, s.unmatched_passed, s.v6_ext_headers_passed
            );
        }
        let g = &self.generator;
        println!(
            "  generator            {:.2} s CPU over {:.1} s; {} sendmmsg, {} recvmmsg, {} send failures, {} stray",
            g.cpu_total_s, g.run_s, g.send_syscalls, g.recv_syscalls, g.send_failed, g.stray
        );
    }
}
