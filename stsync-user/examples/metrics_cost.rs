//! What a scrape of /v1/metrics costs with many connections, measured:
//! `cargo run --release --example metrics_cost`. Renders a snapshot of 10,000 connections
//! with the default `metrics_max_connections` (1000) and with the cap lifted.

use std::time::Instant;
use stsync_user::datapath::DatapathStats;
use stsync_user::metrics::Scrape;
use stsync_user::relay::{ConnDatapath, ConnMode, ConnSnapshot, ConnStats, Snapshot};

const CONNECTIONS: u32 = 10_000;

fn main() {
    let mut relay = Snapshot::default();
    for id in 1..=CONNECTIONS {
        // Numbers of realistic width: a viewer some minutes into a 4 Mbit/s stream.
        let stats = ConnStats {
            data_packets_sent: 100_000 + u64::from(id),
            data_bytes_sent: 133_000_000 + u64::from(id),
            ctrl_packets_recv: 30_000,
            rtt_us: 1_234,
            send_rate_bps: 4_100_000,
            peer_buffer_available: Some(8_000),
            peer_buffer_size: Some(8_192),
            ..ConnStats::default()
        };
        relay.conns.push(ConnSnapshot {
            id: 0x1000_0000 + id * 7,
            mode: ConnMode::Request,
            resource: "1".into(),
            peer: format!("198.51.100.{}:{}", id % 250, 10_000 + id)
                .parse()
                .unwrap(),
            since_unix_us: 1_800_000_000_000_000 + u64::from(id) * 1000,
            latency_ms: 120,
            datapath: ConnDatapath::Kernel,
            stats,
        });
    }
    for cap in [1000, CONNECTIONS as usize] {
        let scrape = Scrape {
            relay: relay.clone(),
            datapath: DatapathStats {
                kind: "ebpf",
                ..Default::default()
            },
            heap_allocations: 0,
            snapshots: 0,
            max_connection_series: cap,
        };
        let t = Instant::now();
        let text = scrape.render();
        let took = t.elapsed();
        println!(
            "{CONNECTIONS} connections, metrics_max_connections {cap}: {} lines, {} bytes, rendered in {took:.2?}",
            text.lines().count(),
            text.len()
        );
    }
}
