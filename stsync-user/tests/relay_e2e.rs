//! End to end through the relay with real libsrt clients: fan-out to mixed clients,
//! viewers held before a publisher, publisher takeover, and per-connection metrics
//! compared with the viewer's own libsrt statistics.

mod common;

use common::*;
use std::net::UdpSocket;
use std::time::Duration;

const LINGER: Duration = Duration::from_millis(1500);

/// One byte-exact publisher, four viewers of three kinds: two srt-live-transmit (one there
/// before the publisher, one joining 3 s in), ffmpeg `-c copy` and a decoding ffmpeg.
#[test]
fn fanout_to_mixed_clients() {
    let c = clip();
    let relay = Relay::start_default();
    let dir = TempDir::new("fanout");

    let mut s1 = SltViewer::start(&dir, "slt-early", &relay.viewer_url("1"));
    let mut fcopy =
        FfmpegViewer::start(&dir, "ff-copy", &relay.viewer_url("1"), FfKind::Copy, None);
    let mut fdec = FfmpegViewer::start(
        &dir,
        "ff-decode",
        &relay.viewer_url("1"),
        FfKind::Decode,
        None,
    );
    sleep_secs(1.0);
    let mut publ = BytePublisher::start(&dir, "pub", &relay.publisher_url("1"), c);
    sleep_secs(3.0);
    let joined = publ.elapsed();
    let mut s2 = SltViewer::start(&dir, "slt-late", &relay.viewer_url("1"));
    assert!(
        s2.wait_bytes(100_000, Duration::from_secs(5)),
        "late viewer got no data within 5 s: {}",
        s2.stderr()
    );
    publ.finish(LINGER);

    s1.assert_running("after the publisher left");
    s2.assert_running("after the publisher left");
    fcopy.assert_running("after the publisher left");
    fdec.assert_running("after the publisher left");
    s1.stop();
    s2.stop();
    fcopy.stop();
    fdec.stop();

    assert_contiguous(
        "slt-early (connected before the publisher)",
        &s1.output(),
        c,
        Expect {
            from_start: true,
            to_end: true,
            min_packets: c.n_packets(),
        },
    );
    assert_contiguous(
        "slt-late (joined mid-stream)",
        &s2.output(),
        c,
        Expect {
            from_start: false,
            to_end: true,
            min_packets: c.packets_after(joined) * 8 / 10,
        },
    );

    // ffmpeg -c copy remuxes: check continuity counters of its output and that it decodes
    // to the source's frames.
    let copied = fcopy.output();
    let al = ts_align(&copied);
    assert!(
        al.packets.len() > c.n_packets() / 2,
        "ff-copy wrote {} packets",
        al.packets.len()
    );
    let breaks = cc_breaks(&al.packets);
    assert!(
        breaks.is_empty(),
        "ff-copy output has CC breaks: {:?}",
        &breaks[..breaks.len().min(10)]
    );
    let nref = c.reference_frames().len();
    assert_frames("ff-copy (decoded)", &fcopy.frames(), c, nref * 95 / 100, 3);
    assert_frames("ff-decode", &fdec.frames(), c, nref * 95 / 100, 3);
}

/// A viewer that connects before anyone publishes is held, gets the stream from its first
/// byte once a publisher starts 2 s later, and stays connected after the publisher leaves.
#[test]
fn viewer_before_publisher() {
    let c = clip();
    let relay = Relay::start_default();
    let dir = TempDir::new("early");
    let mut v = SltViewer::start(&dir, "slt", &relay.viewer_url("1"));
    let mut f = FfmpegViewer::start(
        &dir,
        "ff-decode",
        &relay.viewer_url("1"),
        FfKind::Decode,
        None,
    );
    sleep_secs(2.0);
    v.assert_running("while waiting for a publisher (it must be held, not rejected)");
    f.assert_running("while waiting for a publisher");
    let mut p = BytePublisher::start(&dir, "pub", &relay.publisher_url("1"), c);
    sleep_secs(6.0);
    let published = p.elapsed();
    p.stop();
    sleep_secs(2.0);
    v.assert_running("2 s after the publisher left (viewers are held)");
    f.assert_running("2 s after the publisher left");
    v.stop();
    f.stop();
    let min = (c.packets_per_sec() * (published - 1.0) * 0.9) as usize;
    assert_contiguous(
        "held viewer",
        &v.output(),
        c,
        Expect {
            from_start: true,
            to_end: false,
            min_packets: min,
        },
    );
    assert_frames(
        "held ffmpeg viewer",
        &f.frames(),
        c,
        ((published - 1.0) * 25.0 * 0.8) as usize,
        0,
    );
}

/// Publisher A streams; B (fresh key) takes over: A's srt-live-transmit is disconnected
/// (SHUTDOWN) and exits, viewers stay connected and get B's data; B stops, C publishes,
/// viewers continue. A, B and C publish different parts of the clip, so the viewer's
/// stream must be exactly three runs: A's from the start, B's from 4.5 s, C's from 9.3 s.
#[test]
fn publisher_takeover_keeps_viewers() {
    let c = clip();
    let relay = Relay::start_default();
    let dir = TempDir::new("takeover");
    let (off_b, off_c) = (4.5, 9.3);
    let clip_b = c.suffix(&dir, off_b);
    let clip_c = c.suffix(&dir, off_c);

    let mut v1 = SltViewer::start(&dir, "slt1", &relay.viewer_url("1"));
    let mut v2 = SltViewer::start(&dir, "slt2", &relay.viewer_url("1"));
    let mut fd = FfmpegViewer::start(
        &dir,
        "ff-decode",
        &relay.viewer_url("1"),
        FfKind::Decode,
        None,
    );
    sleep_secs(1.0);

    let mut a = BytePublisher::start(&dir, "pubA", &relay.publisher_url("1"), c);
    sleep_secs(4.0);
    let a_secs = a.elapsed();
    let mut b = BytePublisher::start(&dir, "pubB", &relay.publisher_url("1"), &clip_b);
    let a_exit = a.wait_slt_exit(Duration::from_secs(5));
    assert!(
        a_exit.is_some(),
        "publisher A's srt-live-transmit still running 5 s after B took over (no SHUTDOWN?)"
    );
    eprintln!(
        "A exited after takeover: {:?}; stderr: {}",
        a_exit,
        a.stderr().trim()
    );
    sleep_secs(4.0);
    let b_secs = b.elapsed();
    for v in [&mut v1, &mut v2] {
        v.assert_running("after publisher B took over");
    }
    fd.assert_running("after publisher B took over");
    assert!(b.slt_running(), "publisher B exited: {}", b.stderr());
    b.stop();
    sleep_secs(1.5);
    for v in [&mut v1, &mut v2] {
        v.assert_running("after publisher B left");
    }
    let mut cc = BytePublisher::start(&dir, "pubC", &relay.publisher_url("1"), &clip_c);
    sleep_secs(2.5);
    let c_secs = cc.elapsed().min(clip_c.secs);
    assert!(cc.slt_running(), "publisher C exited: {}", cc.stderr());
    cc.stop();
    sleep_secs(1.5);
    for v in [&mut v1, &mut v2] {
        v.assert_running("after publisher C left");
    }
    fd.assert_running("after publisher C left");
    v1.stop();
    v2.stop();
    fd.stop();

    let pps = c.packets_per_sec();
    let starts = [0, c.packet_at(off_b), c.packet_at(off_c)];
    let durations = [a_secs, b_secs, c_secs];
    let src = c.packets();
    for v in [&v1, &v2] {
        let out = v.output();
        let al = ts_align(&out);
        let runs = find_runs(&al.packets, &src);
        let ctx = format!("{}: {} (resyncs {})", v.name, runs.describe(), al.resyncs);
        assert_eq!(
            runs.runs.len(),
            3,
            "{ctx}\n  expected exactly A's, B's and C's runs"
        );
        assert!(
            runs.unmatched <= 4,
            "{ctx}\n  foreign packets besides the two publisher switches"
        );
        for (k, r) in runs.runs.iter().enumerate() {
            assert!(
                r.src_start >= starts[k] && r.src_start <= starts[k] + pps as usize,
                "{ctx}\n  run {k} should start within a second of source packet {}",
                starts[k]
            );
            let min = (pps * (durations[k] - 1.0) * 0.8) as usize;
            assert!(r.len >= min, "{ctx}\n  run {k}: {} packets < {min}", r.len);
        }
        eprintln!("[check] {}: OK, A/B/C runs {ctx}", v.name);
    }
    let frames = fd.frames();
    let runs = find_runs(&frames, c.reference_frames());
    let long = runs.runs.iter().filter(|r| r.len >= 25).count();
    assert!(
        long >= 3,
        "ffmpeg viewer should decode each publisher's frames (3 runs of >= 1 s): {}",
        runs.describe()
    );
}

/// The relay's per-connection counters against the viewer's libsrt statistics, the
/// connection gauges and totals, and HELP/TYPE for every metric in the README.
#[test]
fn metrics_match_viewer_libsrt_stats() {
    let c = clip();
    let relay = Relay::start_default();
    let dir = TempDir::new("metrics");
    let m0 = relay.metrics();
    let total0 = prom_value(&m0, "srt_connections_total", &[]).unwrap_or(0.0);
    assert_eq!(total0, 0.0, "srt_connections_total before any connection");

    // One datagram too short to be SRT, so srt_packets_dropped_total has a sample.
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.send_to(&[0x80, 0, 0, 1, 2], relay.srt).unwrap();

    let mut v = SltViewer::start_opts(&dir, "slt-stats", &relay.viewer_url("1"), None, true);
    let mut p = BytePublisher::start(&dir, "pub", &relay.publisher_url("1"), c);
    assert!(
        v.wait_bytes(200_000, Duration::from_secs(5)),
        "viewer got no data: {}",
        v.stderr()
    );
    sleep_secs(4.0);
    let m = relay.metrics();
    assert_eq!(
        prom_value(&m, "srt_connections_total", &[]),
        Some(2.0),
        "after viewer + publisher"
    );
    assert_eq!(
        prom_value(&m, "srt_connections_current", &[("mode", "publish")]),
        Some(1.0)
    );
    assert_eq!(
        prom_value(&m, "srt_connections_current", &[("mode", "request")]),
        Some(1.0)
    );

    p.stop();
    sleep_secs(2.0); // nothing in flight any more; the viewer is held
    v.assert_running("with the stream idle");
    let m = relay.metrics();
    assert_eq!(
        prom_value(&m, "srt_connections_current", &[("mode", "request")]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        prom_value(&m, "srt_connections_current", &[("mode", "publish")]),
        Some(0.0),
        "{m}"
    );

    let sent: Vec<Sample> = prom_samples(&m, "srt_connection_data_packets_sent", &[])
        .into_iter()
        .filter(|s| s.value > 0.0)
        .collect();
    assert_eq!(
        sent.len(),
        1,
        "exactly one connection (the viewer) sends data: {sent:?}"
    );
    let id = sent[0].label("id").expect("id label").to_string();
    // Userspace sends plus, with the kernel fast path, the kernel's clones.
    let kernel_sent = prom_value(
        &m,
        "srt_connection_data_packets_sent_kernel",
        &[("id", &id)],
    )
    .unwrap_or(0.0);
    let relay_sent = sent[0].value + kernel_sent;
    let user_sent = sent[0].value;
    let datapath = prom_samples(&m, "stsync_datapath", &[])
        .iter()
        .find(|s| s.value == 1.0)
        .and_then(|s| s.label("kind").map(str::to_string))
        .unwrap_or_else(|| "datapath unknown".into());
    let get = |name: &str| {
        prom_value(&m, name, &[("id", &id)]).unwrap_or_else(|| panic!("{name}{{id={id}}} missing"))
    };
    let bytes_sent = get("srt_connection_data_bytes_sent");
    let lost = get("srt_connection_data_packets_lost");
    let rtt = get("srt_connection_rtt");
    let rttvar = get("srt_connection_rtt_variance");
    let ctrl_recv = get("srt_connection_ctrl_packets_recv");
    let ctrl_sent = get("srt_connection_ctrl_packets_sent");

    let st = v.last_stats().expect("viewer libsrt stats");
    let recv = st.recv_packets as f64;
    let tol = 0.02 * recv + st.recv_retrans as f64 + 2.0;
    record_result(&format!(
        "metrics ({}): relay data_packets_sent(+_kernel)={relay_sent} (kernel {kernel_sent}) bytes={bytes_sent} lost={lost} rtt={rtt}s rttvar={rttvar}s ctrl_sent={ctrl_sent} ctrl_recv={ctrl_recv}; viewer libsrt recv={} unique={} retrans={} lost={} dropped={} rtt={}ms",
        datapath, st.recv_packets, st.recv_unique, st.recv_retrans, st.recv_lost, st.recv_dropped, st.rtt_ms
    ));
    assert!(
        (relay_sent - recv).abs() <= tol,
        "relay says it sent {relay_sent} data packets to the viewer, the viewer's libsrt received {recv} (tolerance {tol})"
    );
    let per = bytes_sent / user_sent;
    assert!(
        (1456.0..=1500.0).contains(&per),
        "data bytes per packet {per} (every payload is 1456 bytes)"
    );
    assert!((0.0..0.05).contains(&rtt), "loopback RTT {rtt} s");
    assert!(
        ctrl_recv > 0.0 && ctrl_sent > 0.0,
        "control traffic counted: sent {ctrl_sent} recv {ctrl_recv}"
    );
    assert!(
        prom_sum(&m, "srt_packets_dropped_total") >= 1.0,
        "the short datagram was not counted"
    );

    let mut names = readme_metric_names();
    names.push("stsync_datapath".into());
    if datapath == "ebpf" {
        for n in [
            "srt_connection_data_packets_sent_kernel",
            "stsync_kernel_packets_seen_total",
            "stsync_kernel_clones_total",
            "stsync_kernel_clone_failures_total",
        ] {
            names.push(n.into());
        }
    }
    for name in names {
        let (help, ty) = prom_help_type(&m, &name);
        assert!(help && ty, "metric {name}: HELP {help}, TYPE {ty}\n{m}");
        assert!(
            !prom_samples(&m, &name, &[]).is_empty(),
            "metric {name} has no sample\n{m}"
        );
    }

    // A further connection counts.
    let mut v2 = SltViewer::start(&dir, "slt2", &relay.viewer_url("1"));
    assert!(
        wait_until(Duration::from_secs(5), || relay
            .metric("srt_connections_current", &[("mode", "request")])
            == Some(2.0)),
        "second viewer not counted: {}",
        relay.metrics()
    );
    assert_eq!(relay.metric("srt_connections_total", &[]), Some(3.0));
    v2.stop();
    v.stop();
}

/// An ffmpeg publisher (remuxes, 1316-byte payloads): a srt-live-transmit viewer's stream
/// has no continuity-counter break on any PID and decodes to the source's frames; so does
/// a decoding ffmpeg viewer.
#[test]
fn ffmpeg_publisher_to_viewers() {
    let c = clip();
    let relay = Relay::start_default();
    let dir = TempDir::new("ffpub");
    let mut v = SltViewer::start(&dir, "slt", &relay.viewer_url("1"));
    let mut fd = FfmpegViewer::start(
        &dir,
        "ff-decode",
        &relay.viewer_url("1"),
        FfKind::Decode,
        None,
    );
    sleep_secs(1.0);
    let mut p = FfmpegPublisher::start(&dir, "ff-pub", &relay.publisher_url("1"), c, None);
    let st = p.proc.wait_exit(secs(c.secs + 10.0));
    assert!(
        st.is_some_and(|s| s.success()),
        "ffmpeg publisher: {st:?}\n{}",
        p.proc.stderr_text()
    );
    sleep_secs(1.5);
    v.assert_running("after the ffmpeg publisher finished");
    fd.assert_running("after the ffmpeg publisher finished");
    v.stop();
    fd.stop();
    let out = v.output();
    let al = ts_align(&out);
    assert_eq!(al.resyncs, 0, "TS sync lost in the relayed ffmpeg stream");
    assert!(
        al.packets.len() > c.n_packets() * 9 / 10,
        "{} TS packets received",
        al.packets.len()
    );
    let breaks = cc_breaks(&al.packets);
    assert!(
        breaks.is_empty(),
        "continuity-counter breaks in the relayed ffmpeg stream: {:?}",
        &breaks[..breaks.len().min(10)]
    );
    let path = dir.file("slt-received.ts");
    std::fs::write(&path, &out).unwrap();
    let nref = c.reference_frames().len();
    assert_frames_tail(
        "slt viewer of ffmpeg (decoded)",
        &decode_frames_of_file(&path),
        c,
        nref * 95 / 100,
        3,
        1,
    );
    assert_frames_tail(
        "ffmpeg viewer of ffmpeg",
        &fd.frames(),
        c,
        nref * 95 / 100,
        3,
        1,
    );
}
