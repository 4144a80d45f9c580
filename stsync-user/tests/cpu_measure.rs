//! CPU cost of fan-out (a measurement, not a pass/fail test):
//!
//! ```sh
//! cargo test -p stsync-user --release --test cpu_measure -- --ignored --nocapture
//! STSYNC_DATAPATH=userspace cargo test -p stsync-user --release --test cpu_measure -- --ignored --nocapture
//! ```
//!
//! One byte-exact publisher at 4 Mbps on loopback; the relay's CPU time (utime + stime
//! from /proc/<pid>/stat) over a phase with the publisher alone, then over a phase with
//! ten srt-live-transmit viewers. Prints the relay's share of one core in each phase and
//! the cost per added viewer. For comparison (REAL-CLIENTS.md): Streamsync and
//! srt-live-server spent about 0.22 % and 0.38 % of a core per added viewer.

mod common;

use common::*;
use std::time::Instant;

const VIEWERS: usize = 10;

fn measure(relay: &Relay, secs: f64) -> f64 {
    let c0 = relay.cpu_seconds();
    let t0 = Instant::now();
    sleep_secs(secs);
    let c1 = relay.cpu_seconds();
    100.0 * (c1 - c0) / t0.elapsed().as_secs_f64()
}

#[test]
#[ignore = "measurement; run explicitly with --ignored --nocapture"]
fn cpu_per_viewer() {
    let c = clip_4m();
    let relay = Relay::start_default();
    let dir = TempDir::new("cpu");
    let datapath = relay
        .log()
        .lines()
        .find_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("datapath="))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "datapath=?".into());
    let mut p = BytePublisher::start(&dir, "pub", &relay.publisher_url("1"), c);
    sleep_secs(2.0);
    let base = measure(&relay, 6.0);
    let mut viewers: Vec<SltViewer> = (0..VIEWERS)
        .map(|i| SltViewer::start_discard(&dir, &format!("v{i}"), &relay.viewer_url("1")))
        .collect();
    sleep_secs(2.0);
    let m = relay.metrics();
    assert_eq!(
        prom_value(&m, "srt_connections_current", &[("mode", "request")]),
        Some(VIEWERS as f64),
        "not all viewers connected"
    );
    let loaded = measure(&relay, 15.0);
    for v in viewers.iter_mut() {
        v.assert_running("during the measurement");
    }
    let elapsed_ok = p.feeding();
    for v in viewers.iter_mut() {
        v.stop();
    }
    p.stop();
    let build = if cfg!(debug_assertions) {
        "debug build"
    } else {
        "release build"
    };
    record_result(&format!(
        "cpu ({build}, {datapath}, {:.1} Mbit/s publisher): relay {base:.2} % of a core with the publisher alone, {loaded:.2} % with {VIEWERS} viewers: {:.3} % per added viewer{}",
        c.rate as f64 * 8.0 / 1e6,
        (loaded - base) / VIEWERS as f64,
        if elapsed_ok { "" } else { " (the clip ended during the measurement!)" }
    ));
}
