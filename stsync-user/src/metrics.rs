//! Prometheus metrics. Connections count into plain atomics on their own `ConnStats` (no
//! lock, no label lookup per packet); a scrape copies them into the labelled series.

use prometheus::{
    Encoder, GaugeVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// What a connection is doing, as the `mode` label of `srt_connections_current`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnMode {
    Handshake = 0,
    Request = 1,
    Publish = 2,
}

const MODES: [&str; 3] = ["handshake", "request", "publish"];

/// Per-connection counters, written by the relay, read by scrapes.
#[derive(Default)]
pub struct ConnStats {
    mode: AtomicU8,
    pub ctrl_packets_sent: AtomicU64,
    pub ctrl_packets_recv: AtomicU64,
    pub ctrl_packets_lost: AtomicU64,
    pub ctrl_bytes_sent: AtomicU64,
    pub ctrl_bytes_recv: AtomicU64,
    pub ctrl_bytes_lost: AtomicU64,
    pub data_packets_sent: AtomicU64,
    pub data_packets_recv: AtomicU64,
    pub data_packets_lost: AtomicU64,
    pub data_bytes_sent: AtomicU64,
    pub data_bytes_recv: AtomicU64,
    pub data_bytes_lost: AtomicU64,
    /// Data packets sent again (NAK answers), a subset of `data_packets_sent`.
    pub data_packets_retrans: AtomicU64,
    /// Data packets the kernel fast path cloned to this viewer (not in `data_packets_sent`).
    pub data_packets_sent_kernel: AtomicU64,
    pub rtt_us: AtomicU64,
    pub rtt_var_us: AtomicU64,
    /// A viewer's play-out lead (µs) for the newest packet it acknowledged: how long before
    /// its play-out time it had it (see `relay::playout`).
    pub playout_lead_us: AtomicI64,
}

impl ConnStats {
    pub fn set_mode(&self, m: ConnMode) {
        self.mode.store(m as u8, Relaxed);
    }

    pub fn mode(&self) -> ConnMode {
        match self.mode.load(Relaxed) {
            1 => ConnMode::Request,
            2 => ConnMode::Publish,
            _ => ConnMode::Handshake,
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    fn counters(&self) -> [(&'static str, &AtomicU64); 12] {
        [
            ("ctrl_packets_sent", &self.ctrl_packets_sent),
            ("ctrl_packets_recv", &self.ctrl_packets_recv),
            ("ctrl_packets_lost", &self.ctrl_packets_lost),
            ("ctrl_bytes_sent", &self.ctrl_bytes_sent),
            ("ctrl_bytes_recv", &self.ctrl_bytes_recv),
            ("ctrl_bytes_lost", &self.ctrl_bytes_lost),
            ("data_packets_sent", &self.data_packets_sent),
            ("data_packets_recv", &self.data_packets_recv),
            ("data_packets_lost", &self.data_packets_lost),
            ("data_bytes_sent", &self.data_bytes_sent),
            ("data_bytes_recv", &self.data_bytes_recv),
            ("data_bytes_lost", &self.data_bytes_lost),
        ]
    }
}

/// Live state of one configured stream, for `GET /v1/streams`.
#[derive(Default)]
pub struct StreamStats {
    pub publisher: AtomicBool,
    pub viewers: AtomicU64,
    pub bitrate_bps: AtomicU64,
    /// The publisher's packet rate (packets/s), for the delay headroom check.
    pub packet_rate: AtomicU64,
    /// The delay the operator asked for (config.json or the HTTP API), ms.
    pub delay_target_ms: AtomicU64,
    /// The delay the relay applies now (it moves towards the target gradually), µs.
    pub delay_applied_us: AtomicU64,
    /// The relay's estimate of the publisher's ingest latency, µs (0: no publisher).
    pub ingest_latency_us: AtomicU64,
}

pub struct Metrics {
    registry: Registry,
    heap_allocations: IntCounter,
    kernel_skipped: IntCounterVec,
    kernel_acks: IntCounterVec,
    stream_delay: GaugeVec,
    stream_ingest: GaugeVec,
    streams: Mutex<Vec<(String, Arc<StreamStats>)>>,
    pub connections_total: IntCounter,
    connections_current: IntGaugeVec,
    conn_counters: Vec<IntCounterVec>,
    retrans: IntCounterVec,
    kernel_sent: IntCounterVec,
    rtt: GaugeVec,
    rtt_var: GaugeVec,
    playout_lead: GaugeVec,
    pub dropped: IntCounterVec,
    rejections: IntCounterVec,
    pub datapath: IntGaugeVec,
    pub kernel_packets_seen: IntCounter,
    pub kernel_clones: IntCounter,
    pub kernel_clone_failures: IntCounter,
    conns: Mutex<HashMap<u32, Arc<ConnStats>>>,
    exported: Mutex<HashSet<u32>>,
}

const COUNTER_HELP: [(&str, &str); 12] = [
    ("ctrl_packets_sent", "Control packets sent to the peer."),
    (
        "ctrl_packets_recv",
        "Control packets received from the peer.",
    ),
    (
        "ctrl_packets_lost",
        "Control packets lost (estimate: full ACKs never answered by ACKACK).",
    ),
    (
        "ctrl_bytes_sent",
        "Bytes sent to the peer in control packets.",
    ),
    (
        "ctrl_bytes_recv",
        "Bytes received from the peer in control packets.",
    ),
    (
        "ctrl_bytes_lost",
        "Bytes lost in control packets (estimate).",
    ),
    (
        "data_packets_sent",
        "Data packets sent to the peer, retransmissions included.",
    ),
    ("data_packets_recv", "Data packets received from the peer."),
    (
        "data_packets_lost",
        "Data packets lost: reported missing by a viewer, or found missing from a publisher.",
    ),
    ("data_bytes_sent", "Bytes sent to the peer in data packets."),
    (
        "data_bytes_recv",
        "Bytes received from the peer in data packets.",
    ),
    (
        "data_bytes_lost",
        "Bytes lost in data packets (estimate: lost packets times the payload size).",
    ),
];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let connections_total =
            IntCounter::new("srt_connections_total", "Connections accepted since start.").unwrap();
        let connections_current = IntGaugeVec::new(
            Opts::new(
                "srt_connections_current",
                "Open connections by mode (handshake, request, publish).",
            ),
            &["mode"],
        )
        .unwrap();
        let conn_counters: Vec<IntCounterVec> = COUNTER_HELP
            .iter()
            .map(|(name, help)| {
                IntCounterVec::new(Opts::new(format!("srt_connection_{name}"), *help), &["id"])
                    .unwrap()
            })
            .collect();
        let retrans = IntCounterVec::new(
            Opts::new(
                "srt_connection_data_packets_retransmitted",
                "Data packets sent again on the peer's NAK.",
            ),
            &["id"],
        )
        .unwrap();
        let kernel_sent = IntCounterVec::new(
            Opts::new(
                "srt_connection_data_packets_sent_kernel",
                "Data packets the kernel fast path cloned to the viewer (not counted in srt_connection_data_packets_sent).",
            ),
            &["id"],
        )
        .unwrap();
        let kernel_packets_seen = IntCounter::new(
            "stsync_kernel_packets_seen_total",
            "Publisher data packets the eBPF program matched.",
        )
        .unwrap();
        let kernel_clones = IntCounter::new(
            "stsync_kernel_clones_total",
            "Packets the eBPF program cloned to viewers.",
        )
        .unwrap();
        let kernel_clone_failures = IntCounter::new(
            "stsync_kernel_clone_failures_total",
            "Clones the eBPF program failed to rewrite or send.",
        )
        .unwrap();
        let rtt = GaugeVec::new(
            Opts::new(
                "srt_connection_rtt",
                "Round-trip time to the peer, seconds.",
            ),
            &["id"],
        )
        .unwrap();
        let rtt_var = GaugeVec::new(
            Opts::new(
                "srt_connection_rtt_variance",
                "Round-trip time variance, seconds.",
            ),
            &["id"],
        )
        .unwrap();
        let playout_lead = GaugeVec::new(
            Opts::new(
                "srt_connection_playout_lead",
                "Viewers: how long before its play-out time the newest packet the viewer acknowledged reached it, seconds (about the latency; negative: too late; minutes: its time base and the timestamps disagree).",
            ),
            &["id"],
        )
        .unwrap();
        let dropped = IntCounterVec::new(
            Opts::new(
                "srt_packets_dropped_total",
                "Datagrams dropped without effect, by reason.",
            ),
            &["reason"],
        )
        .unwrap();
        let rejections = IntCounterVec::new(
            Opts::new(
                "srt_handshake_rejections_total",
                "Handshakes refused, by the rejection code sent (see the README's table).",
            ),
            &["code"],
        )
        .unwrap();
        let datapath = IntGaugeVec::new(
            Opts::new(
                "stsync_datapath",
                "The datapath serving viewers' data (1 = active).",
            ),
            &["kind"],
        )
        .unwrap();
        registry
            .register(Box::new(connections_total.clone()))
            .unwrap();
        registry
            .register(Box::new(connections_current.clone()))
            .unwrap();
        for c in &conn_counters {
            registry.register(Box::new(c.clone())).unwrap();
        }
        for c in [&retrans, &kernel_sent, &dropped, &rejections] {
            registry.register(Box::new(c.clone())).unwrap();
        }
        registry.register(Box::new(rtt.clone())).unwrap();
        registry.register(Box::new(rtt_var.clone())).unwrap();
        registry.register(Box::new(playout_lead.clone())).unwrap();
        registry.register(Box::new(datapath.clone())).unwrap();
        let kernel_skipped = IntCounterVec::new(
            Opts::new(
                "stsync_kernel_skipped_total",
                "Fan-out the eBPF program left undone, by reason: gso_or_rewrite and restore_failed count publisher packets, loopback counts viewer clones left to the daemon.",
            ),
            &["reason"],
        )
        .unwrap();
        registry.register(Box::new(kernel_skipped.clone())).unwrap();
        let kernel_acks = IntCounterVec::new(
            Opts::new(
                "stsync_kernel_acks_total",
                "Viewers' ACKs the eBPF program handled instead of the daemon, by kind: answered (full or small ACK turned into an ACKACK), light (recorded), failed (could not be answered; dropped, the viewer's next ACK follows).",
            ),
            &["kind"],
        )
        .unwrap();
        registry.register(Box::new(kernel_acks.clone())).unwrap();
        let stream_delay = GaugeVec::new(
            Opts::new(
                "stsync_stream_delay_seconds",
                "The delay configured for the stream (config.json or PUT /v1/streams/:id/delay); viewers reach it gradually.",
            ),
            &["stream"],
        )
        .unwrap();
        let stream_ingest = GaugeVec::new(
            Opts::new(
                "stsync_stream_ingest_latency_seconds",
                "The relay's estimate of how late the publisher's packets arrive after it sent them (RTT/2 plus queueing beyond the best seen in the last 10 s); 0 without a publisher.",
            ),
            &["stream"],
        )
        .unwrap();
        registry.register(Box::new(stream_delay.clone())).unwrap();
        registry.register(Box::new(stream_ingest.clone())).unwrap();
        let heap_allocations = IntCounter::new(
            "stsync_heap_allocations_total",
            "Heap allocations by the daemon since start (0 unless its counting allocator is installed).",
        )
        .unwrap();
        registry
            .register(Box::new(heap_allocations.clone()))
            .unwrap();
        for c in [&kernel_packets_seen, &kernel_clones, &kernel_clone_failures] {
            registry.register(Box::new(c.clone())).unwrap();
        }
        for m in MODES {
            connections_current.with_label_values(&[m]).set(0);
        }
        Metrics {
            registry,
            heap_allocations,
            kernel_skipped,
            kernel_acks,
            stream_delay,
            stream_ingest,
            streams: Mutex::new(Vec::new()),
            connections_total,
            connections_current,
            conn_counters,
            retrans,
            kernel_sent,
            rtt,
            rtt_var,
            playout_lead,
            dropped,
            rejections,
            datapath,
            kernel_packets_seen,
            kernel_clones,
            kernel_clone_failures,
            conns: Mutex::new(HashMap::new()),
            exported: Mutex::new(HashSet::new()),
        }
    }

    pub fn open_connection(&self, id: u32, mode: ConnMode) -> Arc<ConnStats> {
        let stats = Arc::new(ConnStats::default());
        stats.set_mode(mode);
        self.conns.lock().unwrap().insert(id, stats.clone());
        self.connections_total.inc();
        stats
    }

    pub fn close_connection(&self, id: u32) {
        self.conns.lock().unwrap().remove(&id);
    }

    pub fn drop_packet(&self, reason: &str) {
        self.dropped.with_label_values(&[reason]).inc();
    }

    pub fn reject(&self, code: u32) {
        self.rejections
            .with_label_values(&[&code.to_string()])
            .inc();
    }

    pub fn set_datapath(&self, kind: &str) {
        self.datapath.reset();
        self.datapath.with_label_values(&[kind]).set(1);
    }

    /// Adds to the kernel fast path's totals (deltas of the program's per-CPU counters).
    /// Publisher packets the program matched but did not fan out, by reason.
    pub fn add_kernel_skipped(&self, reason: &str, n: u64) {
        if n > 0 {
            self.kernel_skipped.with_label_values(&[reason]).inc_by(n);
        }
    }

    /// Exports stream `id`'s delay and ingest latency.
    pub fn register_stream(&self, id: &str, stats: Arc<StreamStats>) {
        self.streams.lock().unwrap().push((id.to_string(), stats));
    }

    pub fn add_kernel_acks(&self, kind: &str, n: u64) {
        if n > 0 {
            self.kernel_acks.with_label_values(&[kind]).inc_by(n);
        }
    }

    pub fn add_kernel_counters(&self, seen: u64, clones: u64, failures: u64) {
        self.kernel_packets_seen.inc_by(seen);
        self.kernel_clones.inc_by(clones);
        self.kernel_clone_failures.inc_by(failures);
    }

    /// Sets how many data packets the kernel cloned to connection `id` so far.
    pub fn set_kernel_sent(&self, id: u32, n: u64) {
        if let Some(s) = self.conns.lock().unwrap().get(&id) {
            s.data_packets_sent_kernel.store(n, Relaxed);
        }
    }

    /// Copies the connections' counters into the labelled series and encodes everything.
    pub fn render(&self) -> String {
        let allocs = crate::alloc_count::allocations();
        self.heap_allocations
            .inc_by(allocs.saturating_sub(self.heap_allocations.get()));
        let conns: Vec<(u32, Arc<ConnStats>)> = self
            .conns
            .lock()
            .unwrap()
            .iter()
            .map(|(id, s)| (*id, s.clone()))
            .collect();
        let mut exported = self.exported.lock().unwrap();
        let live: HashSet<u32> = conns.iter().map(|(id, _)| *id).collect();
        for gone in exported.difference(&live) {
            let label = gone.to_string();
            for c in &self.conn_counters {
                let _ = c.remove_label_values(&[&label]);
            }
            let _ = self.retrans.remove_label_values(&[&label]);
            let _ = self.kernel_sent.remove_label_values(&[&label]);
            let _ = self.rtt.remove_label_values(&[&label]);
            let _ = self.rtt_var.remove_label_values(&[&label]);
            let _ = self.playout_lead.remove_label_values(&[&label]);
        }
        let mut by_mode = [0i64; 3];
        for (id, s) in &conns {
            by_mode[s.mode() as usize] += 1;
            let label = id.to_string();
            for (series, (_, v)) in self.conn_counters.iter().zip(s.counters()) {
                let c = series.with_label_values(&[&label]);
                c.inc_by(v.load(Relaxed).saturating_sub(c.get()));
            }
            let c = self.retrans.with_label_values(&[&label]);
            c.inc_by(s.data_packets_retrans.load(Relaxed).saturating_sub(c.get()));
            let c = self.kernel_sent.with_label_values(&[&label]);
            c.inc_by(
                s.data_packets_sent_kernel
                    .load(Relaxed)
                    .saturating_sub(c.get()),
            );
            self.rtt
                .with_label_values(&[&label])
                .set(s.rtt_us.load(Relaxed) as f64 / 1e6);
            self.rtt_var
                .with_label_values(&[&label])
                .set(s.rtt_var_us.load(Relaxed) as f64 / 1e6);
            if s.mode() == ConnMode::Request {
                self.playout_lead
                    .with_label_values(&[&label])
                    .set(s.playout_lead_us.load(Relaxed) as f64 / 1e6);
            }
        }
        *exported = live;
        for (id, st) in self.streams.lock().unwrap().iter() {
            self.stream_delay
                .with_label_values(&[id])
                .set(st.delay_target_ms.load(Relaxed) as f64 / 1e3);
            self.stream_ingest
                .with_label_values(&[id])
                .set(st.ingest_latency_us.load(Relaxed) as f64 / 1e6);
        }
        for (m, n) in MODES.iter().zip(by_mode) {
            self.connections_current.with_label_values(&[m]).set(n);
        }
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_series_follow_open_and_close() {
        let m = Metrics::new();
        let s = m.open_connection(42, ConnMode::Handshake);
        ConnStats::add(&s.data_packets_sent, 5);
        s.rtt_us.store(1500, Relaxed);
        s.set_mode(ConnMode::Request);
        let text = m.render();
        assert!(
            text.contains("srt_connection_data_packets_sent{id=\"42\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("srt_connection_rtt{id=\"42\"} 0.0015"),
            "{text}"
        );
        assert!(text.contains("srt_connections_current{mode=\"request\"} 1"));
        assert!(text.contains("srt_connections_total 1"));
        assert!(text.contains("# TYPE srt_connection_ctrl_bytes_lost counter"));
        ConnStats::add(&s.data_packets_sent, 2);
        assert!(m
            .render()
            .contains("srt_connection_data_packets_sent{id=\"42\"} 7"));
        m.close_connection(42);
        let text = m.render();
        assert!(!text.contains("id=\"42\""), "{text}");
        assert!(text.contains("srt_connections_current{mode=\"request\"} 0"));
    }
}
