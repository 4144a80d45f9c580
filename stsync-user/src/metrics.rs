//! Prometheus metrics: a collector that turns one snapshot of the relay's and the
//! datapath's counters into the exposition, at scrape time. Nothing is kept between
//! scrapes: a closed connection's series are simply not in the next snapshot.

use crate::datapath::DatapathStats;
use crate::relay::{ConnMode, ConnStats, Snapshot};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, GaugeVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
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

/// One scrape: the snapshot and what the daemon allocated so far.
pub struct Scrape {
    pub relay: Snapshot,
    pub datapath: DatapathStats,
    pub heap_allocations: u64,
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
        let per_conn: Vec<IntCounterVec> = COUNTER_HELP
            .iter()
            .map(|(name, help)| counter_vec(&format!("srt_connection_{name}"), help, "id"))
            .collect();
        let retrans = counter_vec(
            "srt_connection_data_packets_retransmitted",
            "Data packets sent again on the peer's NAK.",
            "id",
        );
        let kernel_sent = counter_vec(
            "srt_connection_data_packets_sent_kernel",
            "Data packets the kernel fast path cloned to the viewer (not counted in srt_connection_data_packets_sent).",
            "id",
        );
        let rtt = gauge_vec(
            "srt_connection_rtt",
            "Round-trip time to the peer, seconds.",
            "id",
        );
        let rtt_var = gauge_vec(
            "srt_connection_rtt_variance",
            "Round-trip time variance, seconds.",
            "id",
        );
        let playout_lead = gauge_vec(
            "srt_connection_playout_lead",
            "Viewers: how long before its play-out time the newest packet the viewer acknowledged reached it, seconds (about the latency; negative: too late; minutes: its time base and the timestamps disagree).",
            "id",
        );
        for c in &s.conns {
            let id = c.id.to_string();
            let l = [id.as_str()];
            for (series, v) in per_conn.iter().zip(counters(&c.stats)) {
                series.with_label_values(&l).inc_by(v);
            }
            retrans
                .with_label_values(&l)
                .inc_by(c.stats.data_packets_retrans);
            kernel_sent
                .with_label_values(&l)
                .inc_by(c.stats.data_packets_sent_kernel);
            rtt.with_label_values(&l).set(c.stats.rtt_us as f64 / 1e6);
            rtt_var
                .with_label_values(&l)
                .set(c.stats.rtt_var_us as f64 / 1e6);
            if c.mode == ConnMode::Request {
                playout_lead
                    .with_label_values(&l)
                    .set(c.stats.playout_lead_us as f64 / 1e6);
            }
        }
        for v in per_conn.iter().chain([&retrans, &kernel_sent]) {
            out.extend(v.collect());
        }
        for v in [&rtt, &rtt_var, &playout_lead] {
            out.extend(v.collect());
        }
    }

    fn streams(&self, out: &mut Vec<MetricFamily>) {
        let delay = gauge_vec(
            "stsync_stream_delay_seconds",
            "The delay configured for the stream (config.json or PUT /v1/streams/:id/delay); viewers reach it gradually.",
            "stream",
        );
        let ingest = gauge_vec(
            "stsync_stream_ingest_latency_seconds",
            "The relay's estimate of how late the publisher's packets arrive after it sent them (RTT/2 plus queueing beyond the best seen in the last 10 s); 0 without a publisher.",
            "stream",
        );
        for s in &self.relay.streams {
            let l = [s.resource.as_str()];
            delay
                .with_label_values(&l)
                .set(s.delay_target_ms as f64 / 1e3);
            ingest
                .with_label_values(&l)
                .set(s.ingest_latency_us as f64 / 1e6);
        }
        out.extend(delay.collect());
        out.extend(ingest.collect());
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
        out.extend(dropped.collect());
        out.extend(rejections.collect());
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
    use crate::relay::{ConnSnapshot, StreamSnapshot};

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
        relay.conns.push(ConnSnapshot {
            id: 42,
            mode: ConnMode::Request,
            stats,
        });
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
        let scrape = |relay: Snapshot| Scrape {
            relay,
            datapath: DatapathStats {
                kind: "userspace",
                ..Default::default()
            },
            heap_allocations: 0,
        };
        let text = scrape(relay.clone()).render();
        for line in [
            "srt_connection_data_packets_sent{id=\"42\"} 5",
            "srt_connection_rtt{id=\"42\"} 0.0015",
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
