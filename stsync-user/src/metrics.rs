//! Prometheus metrics: a collector that turns one snapshot of the relay's and the
//! datapath's counters into the exposition, at scrape time. Nothing is kept between
//! scrapes: a closed connection's series are simply not in the next snapshot.

use crate::datapath::DatapathStats;
use crate::relay::{ConnMode, ConnSnapshot, ConnStats, Snapshot};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

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

/// The per-connection counters, in `COUNTER_HELP`'s order.
fn counters(s: &ConnStats) -> [u64; 12] {
    [
        s.ctrl_packets_sent,
        s.ctrl_packets_recv,
        s.ctrl_packets_lost,
        s.ctrl_bytes_sent,
        s.ctrl_bytes_recv,
        s.ctrl_bytes_lost,
        s.data_packets_sent,
        s.data_packets_recv,
        s.data_packets_lost,
        s.data_bytes_sent,
        s.data_bytes_recv,
        s.data_bytes_lost,
    ]
}

/// A per-connection counter's value.
type Count = fn(&ConnStats) -> u64;

/// Per-connection counters beyond `COUNTER_HELP`'s.
const MORE_COUNTERS: [(&str, &str, Count); 5] = [
    (
        "data_packets_retransmitted",
        "Data packets sent again on the peer's NAK.",
        |s| s.data_packets_retrans,
    ),
    (
        "data_packets_sent_kernel",
        "Data packets the kernel fast path cloned to the viewer (not counted in srt_connection_data_packets_sent).",
        |s| s.data_packets_sent_kernel,
    ),
    (
        "data_packets_dropped",
        "Data packets given up on. Publishers: gaps the relay stopped waiting for (too late to play, or dropped by the publisher; libsrt's receiver pktRcvDrop). Viewers: packets the relay told it to drop with DROPREQ (too old for the ring, too late, or too large for it; libsrt's sender pktSndDrop).",
        |s| s.data_packets_dropped,
    ),
    (
        "naks_recv",
        "Loss reports (NAK packets) received from the peer (viewers).",
        |s| s.naks_recv,
    ),
    (
        "naks_sent",
        "Loss reports (NAK packets) sent to the peer (publishers).",
        |s| s.naks_sent,
    ),
];

/// A per-connection gauge's value (none: the series is left out for it).
type Gauge = fn(&ConnSnapshot) -> Option<f64>;

const GAUGES: [(&str, &str, Gauge); 9] = [
    (
        "rtt",
        "Round-trip time to the peer, seconds.",
        |c| Some(c.stats.rtt_us as f64 / 1e6),
    ),
    (
        "rtt_variance",
        "Round-trip time variance, seconds.",
        |c| Some(c.stats.rtt_var_us as f64 / 1e6),
    ),
    (
        "playout_lead",
        "Viewers: how long before its play-out time the newest packet the viewer acknowledged reached it, seconds (about the latency; negative: too late; minutes: its time base and the timestamps disagree).",
        |c| (c.mode == ConnMode::Request).then(|| c.stats.playout_lead_us as f64 / 1e6),
    ),
    (
        "send_rate_bps",
        "SRT bytes sent to the peer over the last second, bit/s (the kernel path's clones at the stream's mean packet size).",
        |c| Some(c.stats.send_rate_bps as f64),
    ),
    (
        "recv_rate_bps",
        "SRT bytes received from the peer over the last second, bit/s.",
        |c| Some(c.stats.recv_rate_bps as f64),
    ),
    (
        "peer_buffer_available",
        "A viewer's free receive buffer, packets, from its latest full or small ACK, read by the relay or the kernel path (libsrt's pktFlowWindow).",
        |c| c.stats.peer_buffer_available.map(f64::from),
    ),
    (
        "peer_buffer_size",
        "The peer's receive buffer, packets, as its handshake announced it.",
        |c| c.stats.peer_buffer_size.map(f64::from),
    ),
    (
        "latency",
        "The TSBPD delay agreed in the handshake (the larger of both directions), seconds.",
        |c| Some(c.latency_ms as f64 / 1e3),
    ),
    (
        "connected_since",
        "When the connection's handshake was accepted, Unix time in seconds.",
        |c| Some(c.since_unix_us as f64 / 1e6),
    ),
];

/// One scrape: the snapshot and what the daemon allocated so far.
pub struct Scrape {
    pub relay: Snapshot,
    pub datapath: DatapathStats,
    pub heap_allocations: u64,
    /// Snapshots the workers gave the API since start (`RelayHandle::stats`).
    pub snapshots: u64,
    /// Connections with `srt_connection_*` series of their own (config.json
    /// `metrics_max_connections`).
    pub max_connection_series: usize,
}

fn counter(name: &str, help: &str, v: u64) -> MetricFamily {
    let c = IntCounter::new(name, help).expect("valid metric");
    c.inc_by(v);
    c.collect().remove(0)
}

fn counter_vec(name: &str, help: &str, label: &str) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric")
}

fn gauge_vec(name: &str, help: &str, label: &str) -> GaugeVec {
    GaugeVec::new(Opts::new(name, help), &[label]).expect("valid metric")
}

impl Scrape {
    fn connections(&self, out: &mut Vec<MetricFamily>) {
        let s = &self.relay;
        out.push(counter(
            "srt_connections_total",
            "Connections accepted since start.",
            s.connections_total,
        ));
        let current = IntGaugeVec::new(
            Opts::new(
                "srt_connections_current",
                "Open connections by mode (handshake, request, publish).",
            ),
            &["mode"],
        )
        .expect("valid metric");
        for m in ConnMode::ALL {
            let n = s.conns.iter().filter(|c| c.mode == m).count();
            current.with_label_values(&[m.as_str()]).set(n as i64);
        }
        out.extend(current.collect());
        self.per_connection(out);
    }

    /// The series labelled by connection `id`, for the `max_connection_series` oldest
    /// connections (the newest go without: a scrape stays bounded however many connect);
    /// `srt_connection_series_omitted` counts the others.
    fn per_connection(&self, out: &mut Vec<MetricFamily>) {
        let mut shown: Vec<&ConnSnapshot> = self.relay.conns.iter().collect();
        if shown.len() > self.max_connection_series {
            shown.sort_unstable_by_key(|c| (c.since_unix_us, c.id));
            shown.truncate(self.max_connection_series);
        }
        let omitted = self.relay.conns.len() - shown.len();
        let per_conn: Vec<IntCounterVec> = COUNTER_HELP
            .iter()
            .map(|(name, help)| counter_vec(&format!("srt_connection_{name}"), help, "id"))
            .collect();
        let more: Vec<(IntCounterVec, Count)> = MORE_COUNTERS
            .iter()
            .map(|(name, help, f)| {
                (
                    counter_vec(&format!("srt_connection_{name}"), help, "id"),
                    *f,
                )
            })
            .collect();
        let gauges: Vec<(GaugeVec, Gauge)> = GAUGES
            .iter()
            .map(|(name, help, f)| (gauge_vec(&format!("srt_connection_{name}"), help, "id"), *f))
            .collect();
        let info = IntGaugeVec::new(
            Opts::new(
                "srt_connection_info",
                "1 for each connection with series of its own: its stream, mode (publish, request, handshake), peer address and datapath (kernel: the eBPF program clones the publisher's packets to this viewer; else userspace).",
            ),
            &["id", "stream", "mode", "peer", "datapath"],
        )
        .expect("valid metric");
        for c in shown {
            let id = c.id.to_string();
            let l = [id.as_str()];
            for (series, v) in per_conn.iter().zip(counters(&c.stats)) {
                series.with_label_values(&l).inc_by(v);
            }
            for (series, f) in &more {
                series.with_label_values(&l).inc_by(f(&c.stats));
            }
            for (series, f) in &gauges {
                if let Some(v) = f(c) {
                    series.with_label_values(&l).set(v);
                }
            }
            let peer = c.peer.to_string();
            info.with_label_values(&[
                &id,
                &c.resource,
                c.mode.as_str(),
                &peer,
                c.datapath.as_str(),
            ])
            .set(1);
        }
        for v in per_conn.iter().chain(more.iter().map(|(v, _)| v)) {
            out.extend(v.collect());
        }
        for (v, _) in &gauges {
            out.extend(v.collect());
        }
        out.extend(info.collect());
        let omitted_gauge = IntGauge::new(
            "srt_connection_series_omitted",
            "Open connections without srt_connection_* series of their own: the newest beyond config.json's metrics_max_connections (GET /v1/connections lists every one).",
        )
        .expect("valid metric");
        omitted_gauge.set(omitted as i64);
        out.extend(omitted_gauge.collect());
    }

    fn streams(&self, out: &mut Vec<MetricFamily>) {
        let delay = gauge_vec(
            "stsync_stream_delay_seconds",
            "The delay configured for the stream (config.json or PUT /v1/streams/:id/delay); viewers reach it gradually.",
            "stream",
        );
        let delay_applied = gauge_vec(
            "stsync_stream_delay_applied_seconds",
            "The delay viewers of the stream get now (it moves towards stsync_stream_delay_seconds gradually).",
            "stream",
        );
        let ingest = gauge_vec(
            "stsync_stream_ingest_latency_seconds",
            "The relay's estimate of how late the publisher's packets arrive after it sent them (RTT/2 plus queueing beyond the best seen in the last 10 s); 0 without a publisher.",
            "stream",
        );
        let publisher = gauge_vec(
            "stsync_stream_publisher",
            "1 while the stream has a publisher (or an edge's pull from its upstream is up), else 0.",
            "stream",
        );
        let viewers = gauge_vec(
            "stsync_stream_viewers",
            "Viewers of the stream past their handshake, on either datapath.",
            "stream",
        );
        let bitrate = gauge_vec(
            "stsync_stream_bitrate_bits_per_second",
            "The publisher's data rate over the relay's last measurement interval (SRT payload and headers), bit/s.",
            "stream",
        );
        for s in &self.relay.streams {
            let l = [s.resource.as_str()];
            delay
                .with_label_values(&l)
                .set(s.delay_target_ms as f64 / 1e3);
            delay_applied
                .with_label_values(&l)
                .set(s.delay_applied_us as f64 / 1e6);
            ingest
                .with_label_values(&l)
                .set(s.ingest_latency_us as f64 / 1e6);
            publisher
                .with_label_values(&l)
                .set(if s.publisher { 1.0 } else { 0.0 });
            viewers.with_label_values(&l).set(s.viewers as f64);
            bitrate.with_label_values(&l).set(s.bitrate_bps as f64);
        }
        for f in [delay, delay_applied, ingest, publisher, viewers, bitrate] {
            out.extend(f.collect());
        }
        self.pulls(out);
    }

    /// Each edge's pull from its upstream, labelled by stream and upstream (`host:port`);
    /// the connection itself also has the per-connection series under its `id`.
    fn pulls(&self, out: &mut Vec<MetricFamily>) {
        let labels = ["stream", "upstream"];
        let gauge = |name: &str, help: &str| {
            GaugeVec::new(Opts::new(name, help), &labels).expect("valid metric")
        };
        let counter = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), &labels).expect("valid metric")
        };
        let connected = gauge(
            "srt_upstream_connected",
            "1 while the edge's connection to its upstream is up, else 0.",
        );
        let rtt = gauge(
            "srt_upstream_rtt",
            "Round-trip time to the upstream, seconds (as srt_connection_rtt).",
        );
        let reconnects = counter(
            "srt_upstream_reconnects_total",
            "Connections to an upstream that ended and were made again.",
        );
        let failures = counter(
            "srt_upstream_failures_total",
            "Attempts to connect to an upstream that failed (no key, no answer, refused).",
        );
        let recv = counter(
            "srt_upstream_data_packets_recv",
            "Data packets received from the upstream on the current connection.",
        );
        let lost = counter(
            "srt_upstream_data_packets_lost",
            "Data packets found missing from the upstream on the current connection.",
        );
        for s in &self.relay.streams {
            let Some(p) = &s.pull else {
                continue;
            };
            let l = [s.resource.as_str(), p.upstream.as_str()];
            let c = p
                .conn
                .and_then(|id| self.relay.conns.iter().find(|c| c.id == id));
            let st = c.map(|c| c.stats).unwrap_or_default();
            connected
                .with_label_values(&l)
                .set(if c.is_some() { 1.0 } else { 0.0 });
            rtt.with_label_values(&l).set(st.rtt_us as f64 / 1e6);
            reconnects.with_label_values(&l).inc_by(p.reconnects);
            failures.with_label_values(&l).inc_by(p.failures);
            recv.with_label_values(&l).inc_by(st.data_packets_recv);
            lost.with_label_values(&l).inc_by(st.data_packets_lost);
        }
        for f in [connected, rtt] {
            out.extend(f.collect());
        }
        for f in [reconnects, failures, recv, lost] {
            out.extend(f.collect());
        }
    }

    fn drops(&self, out: &mut Vec<MetricFamily>) {
        let dropped = counter_vec(
            "srt_packets_dropped_total",
            "Datagrams dropped without effect, by reason.",
            "reason",
        );
        for (reason, n) in &self.relay.drops.dropped {
            dropped.with_label_values(&[reason]).inc_by(*n);
        }
        if self.datapath.send_failures > 0 {
            dropped
                .with_label_values(&["send_failed"])
                .inc_by(self.datapath.send_failures);
        }
        let rejections = counter_vec(
            "srt_handshake_rejections_total",
            "Handshakes refused, by the rejection code sent (see the README's table).",
            "code",
        );
        for (code, n) in &self.relay.drops.rejections {
            rejections
                .with_label_values(&[&code.to_string()])
                .inc_by(*n);
        }
        let closed = counter_vec(
            "srt_connections_closed_total",
            "Connections the relay ended, by reason: peer_shutdown (the peer sent SHUTDOWN), idle_timeout (nothing heard), stuck (a viewer acknowledging nothing new while data waited), taken_over (a publisher replaced), protocol_violation, pull_ended (an edge's upstream connection stopped or silent), relay_shutdown, kicked (DELETE /v1/connections/{id}), stream_removed (a reload removed its stream).",
            "reason",
        );
        for (reason, n) in &self.relay.drops.closed {
            closed.with_label_values(&[reason]).inc_by(*n);
        }
        out.extend(dropped.collect());
        out.extend(rejections.collect());
        out.extend(closed.collect());
    }

    fn datapath(&self, out: &mut Vec<MetricFamily>) {
        let kind = IntGaugeVec::new(
            Opts::new(
                "stsync_datapath",
                "The datapath serving viewers' data (1 = active).",
            ),
            &["kind"],
        )
        .expect("valid metric");
        kind.with_label_values(&[self.datapath.kind]).set(1);
        out.extend(kind.collect());
        if self.datapath.kernel.is_some() {
            let no_row = prometheus::IntGauge::new(
                "stsync_kernel_streams_without_row",
                "Streams the kernel path has no row for (config.json `kernel_streams`): their viewers are served from userspace.",
            )
            .expect("valid metric");
            no_row.set(self.datapath.streams_without_kernel_row as i64);
            out.extend(no_row.collect());
        }
        let k = self.datapath.kernel.unwrap_or_default();
        out.push(counter(
            "stsync_kernel_packets_seen_total",
            "Publisher data packets the eBPF program matched.",
            k.packets_seen,
        ));
        out.push(counter(
            "stsync_kernel_clones_total",
            "Packets the eBPF program cloned to viewers.",
            k.clones,
        ));
        out.push(counter(
            "stsync_kernel_clone_failures_total",
            "Clones the eBPF program failed to rewrite or send.",
            k.clone_failures,
        ));
        let skipped = counter_vec(
            "stsync_kernel_skipped_total",
            "Fan-out the eBPF program left undone, by reason: gso_or_rewrite, restore_failed and cross_family (not converted for viewers of the other IP family) count publisher packets, loopback counts viewer clones left to the daemon.",
            "reason",
        );
        let acks = counter_vec(
            "stsync_kernel_acks_total",
            "Viewers' ACKs the eBPF program handled instead of the daemon, by kind: answered (full or small ACK turned into an ACKACK), light (recorded), failed (could not be answered; dropped, the viewer's next ACK follows).",
            "kind",
        );
        let passed = counter_vec(
            "stsync_kernel_passed_total",
            "Datagrams for the relay's port the eBPF program left to the daemon unparsed, by reason: ipv6_extension_headers (an IPv6 extension header before UDP), fragment (first fragments, either family).",
            "reason",
        );
        // Only what happened: a label appears with its first count.
        for (v, label, n) in [
            (&skipped, "gso_or_rewrite", k.skipped),
            (&skipped, "cross_family", k.cross_family_skipped),
            (&passed, "ipv6_extension_headers", k.v6_ext_headers),
            (&passed, "fragment", k.fragments),
            (&skipped, "loopback", k.loopback_skipped),
            (&skipped, "restore_failed", k.restore_failures),
            (&acks, "answered", k.acks_answered),
            (&acks, "light", k.light_acks),
            (&acks, "failed", k.ack_failures),
        ] {
            if n > 0 {
                v.with_label_values(&[label]).inc_by(n);
            }
        }
        out.extend(skipped.collect());
        out.extend(passed.collect());
        out.extend(acks.collect());
        out.push(counter(
            "stsync_heap_allocations_total",
            "Heap allocations by the daemon since start (0 unless its counting allocator is installed).",
            self.heap_allocations,
        ));
        out.push(counter(
            "stsync_api_snapshots_total",
            "Copies of the workers' counters taken for the API (metrics, streams, connections): at most 10 a second, however many requests ask.",
            self.snapshots,
        ));
    }

    /// The text exposition, as a registry gathers it (empty families left out, series
    /// sorted by name and label values).
    pub fn render(self) -> String {
        let registry = Registry::new();
        registry
            .register(Box::new(self))
            .expect("a fresh registry takes one collector");
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Collector for Scrape {
    /// A snapshot's series are known only once it is taken: nothing to describe ahead.
    fn desc(&self) -> Vec<&Desc> {
        Vec::new()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut out = Vec::new();
        self.connections(&mut out);
        self.streams(&mut out);
        self.drops(&mut out);
        self.datapath(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::{ConnDatapath, ConnSnapshot, StreamSnapshot};

    fn conn(id: u32, mode: ConnMode, stats: ConnStats) -> ConnSnapshot {
        ConnSnapshot {
            id,
            mode,
            resource: "1".into(),
            peer: "192.0.2.1:5000".parse().unwrap(),
            since_unix_us: 1_800_000_000_500_000 + u64::from(id),
            latency_ms: 120,
            datapath: ConnDatapath::Kernel,
            stats,
        }
    }

    fn scrape(relay: Snapshot, cap: usize) -> Scrape {
        Scrape {
            relay,
            datapath: DatapathStats {
                kind: "userspace",
                ..Default::default()
            },
            heap_allocations: 0,
            snapshots: 0,
            max_connection_series: cap,
        }
    }

    /// Connections beyond the cap (the newest) have no series, whatever their number; the
    /// omitted gauge says how many. (`examples/metrics_cost.rs` measures the render.)
    #[test]
    fn per_connection_series_are_capped() {
        let mut relay = Snapshot::default();
        for id in 1..=10_000 {
            relay
                .conns
                .push(conn(id, ConnMode::Request, ConnStats::default()));
        }
        for cap in [1000, 0] {
            let text = scrape(relay.clone(), cap).render();
            let ids = |name: &str| {
                let prefix = format!("{name}{{");
                text.lines().filter(|l| l.starts_with(&prefix)).count()
            };
            let omitted = 10_000 - cap;
            assert_eq!(ids("srt_connection_data_packets_sent"), cap);
            assert_eq!(ids("srt_connection_info"), cap);
            assert!(text.contains(&format!("\nsrt_connection_series_omitted {omitted}\n")));
            // The oldest keep theirs: the first `cap` ids (connected in id order here).
            let has = |id: usize| text.contains(&format!("srt_connection_rtt{{id=\"{id}\"}}"));
            assert_eq!(has(cap), cap > 0);
            assert!(!has(cap + 1));
            // 25 series per viewer shown (27 with both peer buffer figures), and the
            // omitted gauge.
            let series = text
                .lines()
                .filter(|l| l.starts_with("srt_connection_"))
                .count();
            assert_eq!(series, 25 * cap + 1);
        }
    }

    #[test]
    fn a_snapshot_becomes_the_exposition() {
        let mut relay = Snapshot {
            connections_total: 1,
            ..Default::default()
        };
        let mut stats = ConnStats {
            data_packets_sent: 5,
            rtt_us: 1500,
            ..Default::default()
        };
        relay.conns.push(conn(42, ConnMode::Request, stats));
        relay.streams.push(StreamSnapshot {
            resource: "1".into(),
            publisher: false,
            viewers: 1,
            bitrate_bps: 0,
            packet_rate: 0,
            delay_target_ms: 500,
            delay_applied_us: 0,
            ingest_latency_us: 0,
            // An edge pulling over connection 42 (a viewer would not, but the numbers
            // are joined by id all the same).
            pull: Some(crate::relay::PullSnapshot {
                upstream: "origin:9999".into(),
                state: "connected",
                conn: Some(42),
                reconnects: 2,
                failures: 1,
            }),
        });
        relay.drops.drop_packet("malformed");
        let scrape = |relay: Snapshot| scrape(relay, 1000);
        let text = scrape(relay.clone()).render();
        for line in [
            "srt_connection_data_packets_sent{id=\"42\"} 5",
            "srt_connection_rtt{id=\"42\"} 0.0015",
            "srt_connection_latency{id=\"42\"} 0.12",
            "srt_connection_connected_since{id=\"42\"} 1800000000.5",
            "srt_connection_info{datapath=\"kernel\",id=\"42\",mode=\"request\",peer=\"192.0.2.1:5000\",stream=\"1\"} 1",
            "srt_connection_series_omitted 0",
            "srt_connections_current{mode=\"request\"} 1",
            "srt_upstream_connected{stream=\"1\",upstream=\"origin:9999\"} 1",
            "srt_upstream_rtt{stream=\"1\",upstream=\"origin:9999\"} 0.0015",
            "srt_upstream_reconnects_total{stream=\"1\",upstream=\"origin:9999\"} 2",
            "srt_upstream_failures_total{stream=\"1\",upstream=\"origin:9999\"} 1",
            "srt_connections_current{mode=\"publish\"} 0",
            "srt_connections_total 1",
            "# TYPE srt_connection_ctrl_bytes_lost counter",
            "srt_packets_dropped_total{reason=\"malformed\"} 1",
            "stsync_datapath{kind=\"userspace\"} 1",
            "stsync_stream_delay_seconds{stream=\"1\"} 0.5",
            "stsync_stream_viewers{stream=\"1\"} 1",
            "stsync_stream_publisher{stream=\"1\"} 0",
            "stsync_kernel_clones_total 0",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        stats.data_packets_sent = 7;
        relay.conns[0].stats = stats;
        assert!(scrape(relay.clone())
            .render()
            .contains("srt_connection_data_packets_sent{id=\"42\"} 7"));
        // As a registry gathers: series sorted by label values.
        let modes: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("srt_connections_current{"))
            .collect();
        assert_eq!(
            modes,
            [
                "srt_connections_current{mode=\"handshake\"} 0",
                "srt_connections_current{mode=\"publish\"} 0",
                "srt_connections_current{mode=\"request\"} 1",
            ]
        );
        relay.conns.clear();
        let text = scrape(relay).render();
        assert!(!text.contains("id=\"42\""), "{text}");
        assert!(text.contains("srt_connections_current{mode=\"request\"} 0"));
    }
}
