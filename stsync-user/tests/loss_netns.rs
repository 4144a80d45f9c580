//! Packet loss on a real link (root only): the relay and its clients in network namespaces
//! joined by veth pairs, 5 % random loss made with nftables (this kernel has no netem).
//! Every viewer must still get every TS packet: SRT's retransmission must repair the loss
//! within the latency. libsrt's own loss/retransmission counts are printed and appended
//! to target/tmp/stt/results.txt.

mod common;

use common::*;
use std::net::Ipv4Addr;
use std::time::Duration;

fn report_viewer(name: &str, st: Option<SltStats>) {
    let st = st.unwrap_or_else(|| panic!("{name}: no libsrt stats"));
    record_result(&format!(
        "loss: {name}: libsrt recv packets={} unique={} lost={} retransmitted={} dropped(too late)={} belated={} rtt={:.3}ms",
        st.recv_packets, st.recv_unique, st.recv_lost, st.recv_retrans, st.recv_dropped, st.recv_belated, st.rtt_ms
    ));
    assert_eq!(
        st.recv_dropped, 0,
        "{name}: libsrt dropped packets as too late: {st:?}"
    );
}

fn relay_conn_report(m: &str) -> String {
    let mut out = String::new();
    for n in [
        "stsync_kernel_packets_seen_total",
        "stsync_kernel_clones_total",
        "stsync_kernel_clone_failures_total",
    ] {
        if let Some(v) = prom_value(m, n, &[]) {
            out += &format!(" {n}={v}");
        }
    }
    if let Some(d) = prom_samples(m, "stsync_datapath", &[])
        .iter()
        .find(|s| s.value == 1.0)
    {
        out += &format!(" datapath={}", d.label("kind").unwrap_or("?"));
    }
    for s in prom_samples(m, "srt_connection_data_packets_sent", &[]) {
        let id = s.label("id").unwrap_or("?");
        let get = |n: &str| prom_value(m, n, &[("id", id)]).unwrap_or(f64::NAN);
        out += &format!(
            "\n    conn {id}: data sent={} (kernel {}) recv={} lost={} ctrl sent={} recv={} rtt={:.6}s",
            get("srt_connection_data_packets_sent"),
            get("srt_connection_data_packets_sent_kernel"),
            get("srt_connection_data_packets_recv"),
            get("srt_connection_data_packets_lost"),
            get("srt_connection_ctrl_packets_sent"),
            get("srt_connection_ctrl_packets_recv"),
            get("srt_connection_rtt"),
        );
    }
    out
}

/// Relay and publisher in namespace `relay`, three viewers in namespace `view`, 5 % of
/// the relay's datagrams dropped on the viewers' input.
#[test]
fn viewer_leg_loss_is_repaired() {
    if !require_root("viewer_leg_loss_is_repaired") {
        return;
    }
    let _serial = serial();
    let c = clip();
    let mut ns = Netns::create(&["relay", "view"]);
    ns.link("relay", "10.77.1.1/24", "view", "10.77.1.2/24");
    let relay = Relay::start(RelayOpts {
        netns: Some(ns.name("relay").to_string()),
        srt_ip: Ipv4Addr::new(10, 77, 1, 1),
        latency_ms: Some(LOSS_LATENCY_MS),
        // Four workers on two cores: each viewer's losses are repaired by its own worker.
        workers: Some(4),
        ..Default::default()
    });
    ns.add_loss(
        "view",
        "input",
        &format!("udp sport {}", relay.srt.port()),
        LOSS_PCT,
    );
    // SRT control type 7 (DROPREQ) from the relay: "I no longer have these packets".
    // The publisher leg is lossless here, so the relay holds every packet it forwarded.
    ns.add_count(
        "view",
        "input",
        &format!("udp sport {} @th,64,16 0x8007", relay.srt.port()),
        "dropreq",
    );
    // The same kind of counter for ACKACKs (type 6), which must be non-zero: proves that the
    // DROPREQ counter's match expression works.
    ns.add_count(
        "view",
        "input",
        &format!("udp sport {} @th,64,16 0x8006", relay.srt.port()),
        "ackack",
    );
    let dir = TempDir::new("loss-view");
    let padded = c.padded(&dir, 0.5);
    let view_ns = Some(ns.name("view"));
    let mut v1 = SltViewer::start_opts(&dir, "slt1", &relay.viewer_url("1"), view_ns, true);
    let mut v2 = SltViewer::start_opts(&dir, "slt2", &relay.viewer_url("1"), view_ns, true);
    let mut f = FfmpegViewer::start(
        &dir,
        "ff-decode",
        &relay.viewer_url("1"),
        FfKind::Decode,
        view_ns,
    );
    // Their handshakes cross the lossy link too: wait until all three are connected.
    let all_in = wait_until(Duration::from_secs(10), || {
        relay.metric("srt_connections_current", &[("mode", "request")]) == Some(3.0)
    });
    assert!(
        all_in,
        "viewers not connected within 10 s: {}",
        relay.metrics()
    );
    sleep_secs(0.3);
    let mut p = BytePublisher::start_opts(
        &dir,
        "pub",
        &relay.publisher_url("1"),
        &padded,
        Some(ns.name("relay")),
        false,
    );
    p.finish(Duration::from_secs(2));
    let m = relay.metrics();
    v1.assert_running("after the stream");
    v2.assert_running("after the stream");
    f.assert_running("after the stream");
    v1.stop();
    v2.stop();
    f.stop();
    let dropped = ns.loss_counter("view");
    record_result(&format!(
        "loss: viewer leg, {LOSS_PCT} % nft drop on the viewers' input: {dropped} datagrams dropped; relay per connection:{}",
        relay_conn_report(&m)
    ));
    let dropreqs = ns.count("view", "dropreq");
    let ackacks = ns.count("view", "ackack");
    record_result(&format!(
        "loss: viewer leg (latency {LOSS_LATENCY_MS} ms): the viewers received {dropreqs} DROPREQ and {ackacks} ACKACK packets from the relay"
    ));
    assert!(
        ackacks > 100,
        "the nft counter for ACKACKs saw {ackacks}: the counting rule does not work"
    );
    assert_eq!(
        dropreqs, 0,
        "the relay told viewers to give up on packets (DROPREQ) although it had forwarded them moments before"
    );
    report_viewer("viewer-leg slt1", v1.last_stats());
    report_viewer("viewer-leg slt2", v2.last_stats());
    // 3 viewers x ~2540 data packets: 5 % is ~380 before retransmissions.
    assert!(
        dropped > 150,
        "the loss rule dropped only {dropped} datagrams"
    );
    for v in [&v1, &v2] {
        assert_contiguous(
            &format!("{} behind {LOSS_PCT} % loss", v.name),
            &v.output(),
            c,
            Expect {
                from_start: true,
                to_end: true,
                min_packets: c.n_packets(),
            },
        );
    }
    let nref = c.reference_frames().len();
    assert_frames("ffmpeg behind 5 % loss", &f.frames(), c, nref - 6, 0);
}

/// Publisher in namespace `pub` with 5 % of its datagrams to the relay port dropped on
/// its output; viewers (no loss) in namespace `view` (ffmpeg and srt-live-transmit) and
/// one srt-live-transmit on the relay's own host (namespace `relay`). The relay listens on
/// 0.0.0.0 and is reached as 10.77.2.1 (publisher), 10.77.1.1 (viewers).
#[test]
fn publisher_leg_loss_is_repaired() {
    if !require_root("publisher_leg_loss_is_repaired") {
        return;
    }
    let _serial = serial();
    let c = clip();
    let (ns, pub_side, view_side) = two_legs(77);
    // Four workers: viewers on other workers than the publisher's wait for what it still
    // expects (the feed says what) instead of being told it is gone.
    let opts = RelayOpts {
        workers: Some(4),
        ..RelayOpts::default()
    };
    let relay = Relay::start(two_legs_relay(&ns, view_side, opts));
    ns.add_loss(
        "pub",
        "output",
        &format!("udp dport {}", relay.srt.port()),
        LOSS_PCT,
    );
    let dir = TempDir::new("loss-pub");
    let padded = c.padded(&dir, 0.5);
    let vurl = || relay.url_at(view_side, "1", &relay.session("1"), "request");
    let mut v1 = SltViewer::start_opts(&dir, "slt-remote", &vurl(), Some(ns.name("view")), true);
    let mut v2 = SltViewer::start_opts(&dir, "slt-local", &vurl(), Some(ns.name("relay")), true);
    let mut f = FfmpegViewer::start(
        &dir,
        "ff-decode-remote",
        &vurl(),
        FfKind::Decode,
        Some(ns.name("view")),
    );
    sleep_secs(1.0);
    let purl = relay.url_at(pub_side, "1", &relay.session("1"), "publish");
    let publishing =
        || relay.metric("srt_connections_current", &[("mode", "publish")]) == Some(1.0);
    let mut p = BytePublisher::start_when(
        &dir,
        "pub",
        &purl,
        &padded,
        Some(ns.name("pub")),
        true,
        Some(&publishing),
    );

    p.finish(Duration::from_secs(2));
    let m = relay.metrics();
    v1.stop();
    v2.stop();
    f.stop();
    let dropped = ns.loss_counter("pub");
    let ps = p.last_stats().expect("publisher libsrt stats");
    record_result(&format!(
        "loss: publisher leg (latency {LOSS_LATENCY_MS} ms), {LOSS_PCT} % nft drop on the publisher's output: {dropped} datagrams dropped; publisher libsrt sent={} unique={} lost(reported by relay)={} retransmitted={} dropped={}; relay per connection:{}",
        ps.send_packets, ps.send_unique, ps.send_lost, ps.send_retrans, ps.send_dropped, relay_conn_report(&m)
    ));
    report_viewer("publisher-leg slt-remote", v1.last_stats());
    report_viewer("publisher-leg slt-local", v2.last_stats());
    assert!(
        dropped > 50,
        "the loss rule dropped only {dropped} datagrams"
    );
    assert!(
        ps.send_retrans > 0,
        "the publisher never retransmitted: the relay did not ask (NAK)? {ps:?}"
    );
    for v in [&v1, &v2] {
        assert_contiguous(
            &format!("{} behind a lossy publisher", v.name),
            &v.output(),
            c,
            Expect {
                from_start: true,
                to_end: true,
                min_packets: c.n_packets(),
            },
        );
    }
    let nref = c.reference_frames().len();
    assert_frames(
        "ffmpeg behind a lossy publisher",
        &f.frames(),
        c,
        nref - 6,
        0,
    );
}
