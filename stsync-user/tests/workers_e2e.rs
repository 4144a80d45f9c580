//! Several workers (`--workers N`, 2 and 4 on a 2-core machine to shake out races) with
//! real libsrt clients on the userspace datapath: connections spread over the workers by
//! the kernel's flow hash, and a stream's viewers on every worker served from the
//! publisher's feed, byte-exact, early and late; a publisher taken over from another
//! worker; SIGTERM reaching every worker's peers; a handshake flood on one worker while the
//! others serve. The kernel path with workers is in `ebpf_e2e`; every other end-to-end
//! test runs with the daemon's default (one worker per core).

mod common;

use common::*;
use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

const LINGER: Duration = Duration::from_millis(1500);

fn relay(workers: u32) -> Relay {
    Relay::start(RelayOpts {
        workers: Some(workers),
        datapath: Some("userspace".into()),
        ..RelayOpts::default()
    })
}

/// `n` srt-live-transmit viewers of stream 1, `v0`...
fn slt_viewers(n: usize, dir: &TempDir, relay: &Relay) -> Vec<SltViewer> {
    (0..n)
        .map(|i| SltViewer::start(dir, &format!("v{i}"), &relay.viewer_url("1")))
        .collect()
}

/// The workers the publisher and the viewers landed on.
fn landed(relay: &Relay) -> (Vec<u32>, BTreeSet<u32>) {
    let acc = relay.accepted();
    let publisher = acc.iter().filter(|(m, _)| m == "publish").map(|a| a.1);
    let viewers = acc.iter().filter(|(m, _)| m == "request").map(|a| a.1);
    (publisher.collect(), viewers.collect())
}

fn viewers_on_every_worker(workers: u32) {
    let c = clip();
    let relay = relay(workers);
    let dir = TempDir::new(&format!("workers-{workers}"));
    let mut early = slt_viewers(2 * workers as usize, &dir, &relay);
    // The kernel's flow hash places handshakes: with 2 workers, 2N viewers all land on one
    // of them 1 time in 2^(2N-1). More join (at most 16) until they span two workers, so
    // that one is on another worker than the publisher's, whichever that will be.
    while early.len() < 16 {
        let n = early.len();
        let accepted = wait_until(Duration::from_secs(5), || {
            landed(&relay).1.len() >= 2 || relay.accepted().len() >= n
        });
        assert!(accepted, "viewers not accepted: {}", relay.log());
        if landed(&relay).1.len() >= 2 {
            break;
        }
        let name = format!("v{n}");
        early.push(SltViewer::start(&dir, &name, &relay.viewer_url("1")));
    }
    let n = early.len();
    sleep_secs(1.0);
    let mut publ = BytePublisher::start(&dir, "pub", &relay.publisher_url("1"), c);
    sleep_secs(3.0);
    let joined = publ.elapsed();
    let mut late = SltViewer::start(&dir, "late", &relay.viewer_url("1"));
    assert!(
        late.wait_bytes(100_000, Duration::from_secs(5)),
        "late viewer got no data within 5 s: {}",
        late.stderr()
    );
    // Every worker's counters in one scrape.
    let m = relay.metrics();
    assert_eq!(
        prom_value(&m, "srt_connections_current", &[("mode", "request")]),
        Some(n as f64 + 1.0),
        "viewers counted over all workers"
    );
    assert_eq!(
        prom_value(&m, "srt_connections_current", &[("mode", "publish")]),
        Some(1.0)
    );
    publ.finish(LINGER);
    for v in early.iter_mut().chain([&mut late]) {
        v.assert_running("after the publisher left");
        v.stop();
    }

    let (publisher, viewers) = landed(&relay);
    let line = format!(
        "workers={workers}: publisher on worker {publisher:?}, viewers on workers {viewers:?}"
    );
    eprintln!("{line}");
    record_result(&line);
    assert!(
        viewers.iter().any(|w| !publisher.contains(w)),
        "{line}: no viewer on another worker than the publisher's"
    );
    assert!(viewers.len() >= 2, "{line}: viewers all on one worker");
    for v in &early {
        assert_whole(&v.name, &v.output(), c);
    }
    assert_contiguous(
        "late (joined mid-stream)",
        &late.output(),
        c,
        Expect {
            from_start: false,
            to_end: true,
            min_packets: c.packets_after(joined) * 8 / 10,
        },
    );
}

#[test]
fn two_workers_serve_one_streams_viewers_byte_exact() {
    viewers_on_every_worker(2);
}

#[test]
fn four_workers_on_two_cores_serve_one_streams_viewers_byte_exact() {
    viewers_on_every_worker(4);
}

/// Publishers take over one after the other (each sends the clip from its start for 2 s)
/// until one lands on another worker than the one it replaces: the old one is closed by
/// its own worker, and the viewers (on any worker) see each publisher's run in turn.
#[test]
fn a_publisher_on_another_worker_takes_over() {
    let c = clip();
    let relay = relay(4);
    let dir = TempDir::new("workers-takeover");
    let mut viewers = slt_viewers(4, &dir, &relay);
    sleep_secs(1.0);
    let mut publishers = vec![BytePublisher::start(
        &dir,
        "pub0",
        &relay.publisher_url("1"),
        c,
    )];
    let crossed = loop {
        sleep_secs(2.0);
        let k = publishers.len();
        publishers.push(BytePublisher::start(
            &dir,
            &format!("pub{k}"),
            &relay.publisher_url("1"),
            c,
        ));
        let old = &mut publishers[k - 1];
        assert!(
            old.wait_slt_exit(Duration::from_secs(5)).is_some(),
            "publisher {} still running 5 s after it was taken over: {}",
            k - 1,
            old.stderr()
        );
        let (on, _) = landed(&relay);
        if on.len() == k + 1 && on[k] != on[k - 1] {
            break on;
        }
        assert!(k < 8, "eight takeovers all on one worker: {on:?}");
    };
    sleep_secs(2.0);
    let last = publishers.len();
    publishers.last_mut().unwrap().stop();
    sleep_secs(1.0);
    for v in &mut viewers {
        v.assert_running("after the takeovers");
        v.stop();
    }
    eprintln!("takeover: publishers on workers {crossed:?}");
    let src = c.packets();
    let pps = c.packets_per_sec();
    for v in &viewers {
        let out = v.output();
        let al = ts_align(&out);
        let runs = find_runs(&al.packets, &src);
        let ctx = format!("{}: {}", v.name, runs.describe());
        assert_eq!(runs.runs.len(), last, "{ctx}\n  one run per publisher");
        for (k, r) in runs.runs.iter().enumerate() {
            assert!(
                r.src_start <= pps as usize,
                "{ctx}\n  run {k} should start within a second of the clip's start"
            );
            assert!(r.len as f64 >= pps, "{ctx}\n  run {k} shorter than 1 s");
        }
    }
}

/// SIGTERM: every worker sends SHUTDOWN to its own peers before the relay exits.
#[test]
fn sigterm_reaches_the_peers_of_every_worker() {
    let c = clip();
    let mut relay = relay(4);
    let dir = TempDir::new("workers-sigterm");
    let mut viewers = slt_viewers(8, &dir, &relay);
    let mut p = BytePublisher::start(&dir, "pub", &relay.publisher_url("1"), c);
    for v in &mut viewers {
        assert!(
            v.wait_bytes(100_000, Duration::from_secs(5)),
            "{}: no data",
            v.name
        );
    }
    let (_, on) = landed(&relay);
    let st = relay.terminate(Duration::from_secs(3)).unwrap_or_else(|| {
        panic!(
            "relay still running 3 s after SIGTERM:\n{}",
            tail_lines(&relay.log(), 20)
        )
    });
    assert!(st.success(), "relay exit status after SIGTERM: {st}");
    for v in &mut viewers {
        assert!(
            v.proc.wait_exit(Duration::from_secs(4)).is_some(),
            "{} (viewers on workers {on:?}) did not notice the relay shutting down: {}",
            v.name,
            v.stderr()
        );
    }
    assert!(
        p.wait_slt_exit(Duration::from_secs(4)).is_some(),
        "the publisher did not notice the relay shutting down"
    );
}

/// A handshake flood (inductions and conclusions with forged cookies, as fast as one
/// socket sends for 4 s) lands on one worker by the flow hash; the viewers, wherever they
/// are, get every byte.
#[test]
fn a_handshake_flood_on_one_worker_stalls_no_viewer() {
    let c = clip();
    let relay = relay(2);
    let dir = TempDir::new("workers-flood");
    let mut viewers = slt_viewers(4, &dir, &relay);
    sleep_secs(1.0);
    let mut p = BytePublisher::start(&dir, "pub", &relay.publisher_url("1"), c);
    sleep_secs(2.0);
    let flood = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = std::net::SocketAddr::V4(relay.srt);
    let (t0, mut sent) = (Instant::now(), 0u64);
    while t0.elapsed() < Duration::from_secs(4) {
        for i in 0..64u32 {
            // Handshake header (control type 0, destination 0), HSv5 body: induction, or a
            // conclusion whose cookie is made up.
            let (kind, cookie) = if i % 2 == 0 {
                (1u32, 0)
            } else {
                (-1i32 as u32, i)
            };
            let mut b = Vec::with_capacity(64);
            for w in [
                0x8000_0000u32,
                0,
                0,
                0,
                4,
                2,
                0x1234,
                1500,
                8192,
                kind,
                i | 1,
                cookie,
            ] {
                b.extend(w.to_be_bytes());
            }
            b.extend([0u8; 16]);
            let _ = flood.send_to(&b, to);
            sent += 1;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let m = relay.metrics();
    p.finish(LINGER);
    for v in &mut viewers {
        v.assert_running("after the flood");
        v.stop();
    }
    let (_, on) = landed(&relay);
    let line = format!("handshake flood: {sent} datagrams in 4 s; viewers on workers {on:?}");
    eprintln!("{line}");
    record_result(&line);
    assert!(
        prom_sum(&m, "srt_packets_dropped_total") > 0.0,
        "the flood was not counted"
    );
    for v in &viewers {
        assert_whole(&v.name, &v.output(), c);
    }
}
