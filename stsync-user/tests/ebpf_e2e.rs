//! End to end through the kernel fast path (`--datapath ebpf`) with real libsrt clients in
//! network namespaces made by the tests: publisher, relay and viewers on separate hosts
//! joined by veth; the same with 5 % loss on the viewers' input (nftables); everything on
//! loopback in one namespace; viewers joining, leaving and timing out and a publisher
//! takeover while the stream runs; and the fallback to userspace when the daemon runs
//! without the capabilities BPF needs.
//!
//! The relay's metrics say which path sent what: `srt_connection_data_packets_sent` counts
//! only what userspace sent, `srt_connection_data_packets_sent_kernel` what the kernel
//! cloned, `stsync_kernel_*_total` the program's own counters.
//!
//! Needs root and the built object; skips with a reason otherwise (fails under
//! STSYNC_REQUIRE_PRIVILEGED=1).

mod common;
mod ebpf_common;

use common::*;
use ebpf_common::*;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

const LINGER: Duration = Duration::from_millis(1500);
const LOSS_PCT: u32 = 5;
/// Data packets a viewer may get from userspace that are not retransmissions, per
/// publisher: those the relay had read before the viewer could be handed to the kernel.
/// The relay maps a viewer onto a publisher at the publisher's first packet, and hands it
/// over after that receive batch (at most 64 datagrams; srt-live-transmit's first burst
/// is 1 to 20 packets here); a viewer joining mid-stream waits for its route (its first
/// ACK, ~10 ms).
const HANDOVER_MAX: f64 = 64.0;

/// Kernel counters and per-viewer numbers from one scrape.
#[derive(Debug, Clone, Default)]
struct KernelView {
    seen: f64,
    clones: f64,
    failures: f64,
    /// id → (userspace data sent, retransmitted, kernel clones)
    viewers: HashMap<String, (f64, f64, f64)>,
    publisher_recv: f64,
}

fn kernel_view(m: &str) -> KernelView {
    let get = |n: &str| prom_value(m, n, &[]).unwrap_or(0.0);
    let mut v = KernelView {
        seen: get("stsync_kernel_packets_seen_total"),
        clones: get("stsync_kernel_clones_total"),
        failures: get("stsync_kernel_clone_failures_total"),
        ..Default::default()
    };
    for s in prom_samples(m, "srt_connection_data_packets_sent", &[]) {
        let id = s.label("id").unwrap_or("?").to_string();
        let g = |n: &str| prom_value(m, n, &[("id", &id)]).unwrap_or(0.0);
        let recv = g("srt_connection_data_packets_recv");
        if recv > 0.0 {
            v.publisher_recv += recv;
            continue;
        }
        v.viewers.insert(
            id.clone(),
            (
                g("srt_connection_data_packets_sent"),
                g("srt_connection_data_packets_retransmitted"),
                g("srt_connection_data_packets_sent_kernel"),
            ),
        );
    }
    v
}

/// The kernel served every viewer: userspace sent them only retransmissions (plus the
/// few packets before the handover), the kernel cloned the rest, and the program's clone
/// counter is packets x viewers.
fn assert_kernel_served(label: &str, m: &str, viewers: usize) -> KernelView {
    let k = kernel_view(m);
    let line = format!(
        "ebpf e2e {label}: kernel seen={} clones={} failures={} publisher recv={}; viewers (user sent, retrans, kernel): {:?}",
        k.seen, k.clones, k.failures, k.publisher_recv, k.viewers
    );
    eprintln!("{line}");
    record_result(&line);
    assert_eq!(
        prom_value(m, "stsync_datapath", &[("kind", "ebpf")]),
        Some(1.0),
        "{label}: datapath"
    );
    assert_eq!(k.viewers.len(), viewers, "{label}: viewer connections");
    assert!(
        k.seen > 500.0,
        "{label}: the program saw {} packets",
        k.seen
    );
    assert_eq!(k.failures, 0.0, "{label}: clone failures");
    for (id, &(sent, retrans, kernel)) in &k.viewers {
        let handover = sent - retrans;
        assert!(
            (0.0..=HANDOVER_MAX).contains(&handover),
            "{label}: viewer {id}: userspace sent {sent} data packets, {retrans} of them retransmissions: {handover} new ones (kernel should serve those)"
        );
        // No publisher packet went to the viewer by both paths. A few may have gone by
        // neither and reached it only as a retransmission (the stream checks prove it got
        // everything): usually 0–2 around the handover, but a CI run under load once showed
        // 15 for four of five viewers with no deactivation logged; bounded here, noted as a
        // known gap to explain.
        assert!(
            kernel + handover <= k.seen && kernel + handover >= k.seen - HANDOVER_MAX,
            "{label}: viewer {id}: kernel cloned {kernel} + userspace sent {handover} new, of {} packets",
            k.seen
        );
    }
    let expected = k.seen * viewers as f64;
    assert!(
        k.clones <= expected && k.clones >= expected - HANDOVER_MAX * viewers as f64,
        "{label}: {} clones for {} packets x {viewers} viewers",
        k.clones,
        k.seen
    );
    assert_kernel_acks(label, m, viewers);
    k
}

/// The program answered the viewers' ACKs (none failed), and what it handled shows in
/// every viewer's metrics: control packets both ways and an RTT.
fn assert_kernel_acks(label: &str, m: &str, viewers: usize) -> f64 {
    let kind = |k: &str| prom_value(m, "stsync_kernel_acks_total", &[("kind", k)]).unwrap_or(0.0);
    let answered = kind("answered");
    record_result(&format!(
        "ebpf e2e {label}: kernel answered {answered} viewer ACKs, recorded {} light ones",
        kind("light")
    ));
    assert!(
        answered > 20.0 * viewers as f64,
        "{label}: the kernel answered only {answered} ACKs of {viewers} viewers"
    );
    assert_eq!(
        kind("failed"),
        0.0,
        "{label}: ACKs the kernel failed to answer"
    );
    for s in prom_samples(m, "srt_connection_data_packets_sent_kernel", &[]) {
        let id = s.label("id").unwrap_or("?");
        let g = |n: &str| prom_value(m, n, &[("id", id)]).unwrap_or(0.0);
        let (recv, sent, rtt) = (
            g("srt_connection_ctrl_packets_recv"),
            g("srt_connection_ctrl_packets_sent"),
            g("srt_connection_rtt"),
        );
        assert!(
            recv >= 20.0 && sent >= 20.0,
            "{label}: viewer {id}: ctrl packets recv {recv}, sent {sent}: the kernel's ACK/ACKACK missing"
        );
        assert!(
            rtt > 0.0 && rtt < 0.05,
            "{label}: viewer {id}: RTT {rtt} s from its ACKs"
        );
    }
    answered
}

fn expect_whole(c: &Clip) -> Expect {
    Expect {
        from_start: true,
        to_end: true,
        min_packets: c.n_packets(),
    }
}

/// Publisher, relay and viewers in three namespaces: pub —veth— relay —veth— view.
struct Topo {
    ns: Netns,
    relay_ip: Ipv4Addr,
}

fn three_hosts() -> Topo {
    let mut ns = Netns::create(&["pub", "relay", "view"]);
    ns.link("relay", "10.79.1.1/24", "pub", "10.79.1.2/24");
    link_viewers(&mut ns);
    Topo {
        ns,
        relay_ip: Ipv4Addr::new(10, 79, 1, 1),
    }
}

/// The viewers' link (relay's `veth1a`); viewers reach the relay's address (on the
/// publisher side) through the relay host.
fn link_viewers(ns: &mut Netns) {
    ns.link("relay", "10.79.2.1/24", "view", "10.79.2.2/24");
    run(
        "ip",
        &[
            "-n",
            ns.name("view"),
            "route",
            "add",
            "default",
            "via",
            "10.79.2.1",
        ],
    )
    .expect("route");
}

fn start_relay(ns: &str, ip: Ipv4Addr, opts: RelayOpts) -> Relay {
    Relay::start(RelayOpts {
        netns: Some(ns.to_string()),
        srt_ip: ip,
        datapath: Some("ebpf".into()),
        ..opts
    })
}

/// Five viewers (three srt-live-transmit with libsrt stats, ffmpeg -c copy, decoding
/// ffmpeg) of one byte-exact publisher; `once_flowing` runs 1 s into the stream. Returns
/// the scrape taken after the stream.
fn five_viewers(
    label: &str,
    relay: &Relay,
    view_ns: &str,
    pub_ns: &str,
    dir: &TempDir,
    once_flowing: impl FnOnce(),
) -> String {
    let c = clip();
    let mut slts: Vec<SltViewer> = (0..3)
        .map(|i| {
            SltViewer::start_opts(
                dir,
                &format!("slt{i}"),
                &relay.viewer_url("1"),
                Some(view_ns),
                true,
            )
        })
        .collect();
    let mut fcopy = FfmpegViewer::start(
        dir,
        "ff-copy",
        &relay.viewer_url("1"),
        FfKind::Copy,
        Some(view_ns),
    );
    let mut fdec = FfmpegViewer::start(
        dir,
        "ff-decode",
        &relay.viewer_url("1"),
        FfKind::Decode,
        Some(view_ns),
    );
    sleep_secs(1.5);
    // Null packets after the clip, as in loss_netns: a lost last datagram is only noticed
    // (and repaired) when something follows it.
    let padded = c.padded(dir, 0.5);
    let mut p = BytePublisher::start_opts(
        dir,
        "pub",
        &relay.publisher_url("1"),
        &padded,
        Some(pub_ns),
        false,
    );
    sleep_secs(1.0);
    once_flowing();
    p.finish(LINGER);
    let m = relay.metrics();
    for v in slts.iter_mut() {
        v.assert_running("after the stream");
    }
    fcopy.assert_running("after the stream");
    fdec.assert_running("after the stream");
    for v in slts.iter_mut() {
        v.stop();
    }
    fcopy.stop();
    fdec.stop();
    for v in &slts {
        if let Some(st) = v.last_stats() {
            record_result(&format!(
                "ebpf e2e {label}: {}: libsrt recv packets={} unique={} lost={} retransmitted={} dropped={} belated={}",
                v.name, st.recv_packets, st.recv_unique, st.recv_lost, st.recv_retrans, st.recv_dropped, st.recv_belated
            ));
        }
        assert_contiguous(
            &format!("{label}: {}", v.name),
            &v.output(),
            c,
            expect_whole(c),
        );
    }
    let copied = fcopy.output();
    let al = ts_align(&copied);
    let breaks = cc_breaks(&al.packets);
    assert!(
        breaks.is_empty(),
        "{label}: ff-copy output has CC breaks: {:?}",
        &breaks[..breaks.len().min(10)]
    );
    let nref = c.reference_frames().len();
    assert_frames(
        &format!("{label}: ff-copy"),
        &fcopy.frames(),
        c,
        nref * 95 / 100,
        3,
    );
    assert_frames(
        &format!("{label}: ff-decode"),
        &fdec.frames(),
        c,
        nref * 95 / 100,
        3,
    );
    m
}

#[test]
fn kernel_fanout_across_namespaces() {
    if object_or_skip("kernel_fanout_across_namespaces").is_none() {
        return;
    }
    let t = three_hosts();
    let opts = RelayOpts {
        rust_log: Some("info,stsync_ebpf=debug".into()),
        ..Default::default()
    };
    let relay = start_relay(t.ns.name("relay"), t.relay_ip, opts);
    assert!(relay.log().contains("datapath=ebpf"), "{}", relay.log());
    let dir = TempDir::new("ebpf-ns");
    let m = five_viewers(
        "3 namespaces",
        &relay,
        t.ns.name("view"),
        t.ns.name("pub"),
        &dir,
        || {},
    );
    assert_kernel_served("3 namespaces", &m, 5);
    // The program's own log lines reach the daemon's log (aya-log), one per route learned.
    let log = relay.log();
    let learned = log.matches(": route learned, ").count();
    assert!(
        (5..=10).contains(&learned),
        "{learned} route-learned lines from the kernel program:\n{}",
        tail_lines(&log, 40)
    );
}

/// An interface that comes up after the relay started (a container's veth, a VPN) gets the
/// program too (rtnetlink): the viewers behind it are the kernel's.
#[test]
fn an_interface_that_comes_up_later_gets_the_kernel_path() {
    if object_or_skip("an_interface_that_comes_up_later_gets_the_kernel_path").is_none() {
        return;
    }
    let mut ns = Netns::create(&["pub", "relay", "view"]);
    ns.link("relay", "10.79.1.1/24", "pub", "10.79.1.2/24");
    let relay = start_relay(
        ns.name("relay"),
        Ipv4Addr::new(10, 79, 1, 1),
        RelayOpts::default(),
    );
    assert!(relay.log().contains("datapath=ebpf"), "{}", relay.log());
    assert!(!relay.log().contains("veth1a"), "{}", relay.log());
    // The viewers' link, made after the start.
    link_viewers(&mut ns);
    assert!(
        wait_until(Duration::from_secs(5), || relay.log().contains(
            "interface up: eBPF fan-out attached interface=\"veth1a\""
        )),
        "the new interface was not attached:\n{}",
        tail_lines(&relay.log(), 20)
    );
    let dir = TempDir::new("ebpf-later-link");
    let m = five_viewers(
        "a link made after the start",
        &relay,
        ns.name("view"),
        ns.name("pub"),
        &dir,
        || {},
    );
    assert_kernel_served("a link made after the start", &m, 5);
}

#[test]
fn kernel_fanout_repairs_loss_on_the_viewer_leg() {
    if object_or_skip("kernel_fanout_repairs_loss_on_the_viewer_leg").is_none() {
        return;
    }
    let t = three_hosts();
    // 500 ms latency as in loss_netns: at the 120 ms default a libsrt receiver sometimes
    // gives up a packet whose retransmission was lost too (seen with libsrt's own
    // srt-live-transmit as the relay); this test is about the kernel path repairing loss.
    let relay = start_relay(
        t.ns.name("relay"),
        t.relay_ip,
        RelayOpts {
            latency_ms: Some(500),
            ..RelayOpts::default()
        },
    );
    let dir = TempDir::new("ebpf-loss");
    // Clones cross the viewer namespace's input hook like any datagram: they are lost
    // too, and the daemon's retransmissions repair them. The loss starts 1 s into the
    // stream: until a libsrt receiver has its first RTT sample its periodic NAK interval
    // is 150 ms, more than the 120 ms latency, so a packet lost twice in the first
    // milliseconds is lost for good whatever the relay does.
    let port = relay.srt.port();
    let m = five_viewers(
        "5% loss",
        &relay,
        t.ns.name("view"),
        t.ns.name("pub"),
        &dir,
        || {
            t.ns.add_loss("view", "input", &format!("udp sport {port}"), LOSS_PCT)
        },
    );
    let dropped = t.ns.loss_counter("view");
    let k = assert_kernel_served("5% loss", &m, 5);
    let retrans: f64 = k.viewers.values().map(|v| v.1).sum();
    record_result(&format!(
        "ebpf e2e 5% loss: nft dropped {dropped} datagrams; relay retransmitted {retrans}"
    ));
    assert!(dropped > 200, "the loss rule dropped only {dropped}");
    assert!(
        retrans >= dropped as f64 * 0.5,
        "retransmissions {retrans} for {dropped} drops"
    );
}

#[test]
fn kernel_fanout_on_loopback() {
    if object_or_skip("kernel_fanout_on_loopback").is_none() {
        return;
    }
    let ns = Netns::create(&["solo"]);
    let solo = ns.name("solo");
    let relay = start_relay(solo, Ipv4Addr::LOCALHOST, RelayOpts::default());
    let dir = TempDir::new("ebpf-lo");
    let m = five_viewers("loopback", &relay, solo, solo, &dir, || {});
    assert_kernel_served("loopback", &m, 5);
}

/// The kernel path with four workers on two cores: whichever worker holds a viewer, the
/// one owner of the program's maps hands it to the kernel, and its reports (ACKs, clone
/// counts) reach that worker.
#[test]
fn kernel_fanout_with_four_workers() {
    if object_or_skip("kernel_fanout_with_four_workers").is_none() {
        return;
    }
    let ns = Netns::create(&["wk"]);
    let solo = ns.name("wk");
    let opts = RelayOpts {
        workers: Some(4),
        ..RelayOpts::default()
    };
    let relay = start_relay(solo, Ipv4Addr::LOCALHOST, opts);
    let dir = TempDir::new("ebpf-workers");
    let m = five_viewers("four workers", &relay, solo, solo, &dir, || {});
    assert_kernel_served("four workers", &m, 5);
    let acc = relay.accepted();
    let viewers: std::collections::BTreeSet<u32> = acc
        .iter()
        .filter(|(m, _)| m == "request")
        .map(|(_, w)| *w)
        .collect();
    eprintln!("kernel path, four workers: connections on workers {acc:?}");
    assert!(viewers.len() >= 2, "viewers all on one worker: {acc:?}");
}

/// The 130 s clip of the long run.
fn long_clip() -> &'static Clip {
    static C: std::sync::OnceLock<Clip> = std::sync::OnceLock::new();
    C.get_or_init(|| make_clip("testsrc-2m-130s", 2000, 130))
}

/// The long run: for over two minutes, with 5 % loss on the viewers' input, the
/// kernel answers every ACK of three kernel-served viewers (two srt-live-transmit, one
/// ffmpeg) while the daemon sees only their NAKs and keepalives. No viewer times out or
/// is taken for stuck, every byte arrives, and libsrt's RTT stays that of a LAN.
#[test]
fn kernel_acked_viewers_live_two_minutes_under_loss() {
    if object_or_skip("kernel_acked_viewers_live_two_minutes_under_loss").is_none() {
        return;
    }
    let c = long_clip();
    let t = three_hosts();
    let relay = start_relay(
        t.ns.name("relay"),
        t.relay_ip,
        RelayOpts {
            latency_ms: Some(500),
            ..RelayOpts::default()
        },
    );
    let dir = TempDir::new("ebpf-long");
    let view_ns = t.ns.name("view");
    let mut slts: Vec<SltViewer> = (0..2)
        .map(|i| {
            SltViewer::start_opts(
                &dir,
                &format!("slt{i}"),
                &relay.viewer_url("1"),
                Some(view_ns),
                true,
            )
        })
        .collect();
    let mut ff = FfmpegViewer::start(
        &dir,
        "ff-copy",
        &relay.viewer_url("1"),
        FfKind::Copy,
        Some(view_ns),
    );
    sleep_secs(1.5);
    let padded = c.padded(&dir, 0.5);
    let mut p = BytePublisher::start_opts(
        &dir,
        "pub",
        &relay.publisher_url("1"),
        &padded,
        Some(t.ns.name("pub")),
        false,
    );
    sleep_secs(1.0);
    let port = relay.srt.port();
    t.ns.add_loss("view", "input", &format!("udp sport {port}"), LOSS_PCT);
    // Halfway: the kernel is answering, and has been for every viewer.
    sleep_secs(c.secs / 2.0);
    let mid = relay.metrics();
    let answered_mid = assert_kernel_acks("long run, halfway", &mid, 3);
    p.finish(LINGER);
    let m = relay.metrics();
    for v in slts.iter_mut() {
        v.assert_running("after two minutes");
    }
    ff.assert_running("after two minutes");
    for v in slts.iter_mut() {
        v.stop();
    }
    ff.stop();
    let log = relay.log();
    assert!(
        !log.contains("timed out") && !log.contains("stuck"),
        "a viewer was timed out or closed as stuck during the run:\n{}",
        tail_lines(&log, 40)
    );
    let dropped = t.ns.loss_counter("view");
    let k = assert_kernel_served("long run", &m, 3);
    let answered = assert_kernel_acks("long run", &m, 3);
    let retrans: f64 = k.viewers.values().map(|v| v.1).sum();
    record_result(&format!(
        "ebpf e2e long run: {:.0} s; kernel answered {answered} ACKs ({answered_mid} halfway); nft dropped {dropped}; relay retransmitted {retrans}",
        c.secs
    ));
    // libsrt sends a full ACK at most every 10 ms, and only when something new arrived
    // and its previous ACK was answered: srt-live-transmit viewers of this 2 Mbit/s stream
    // send 13-25 a second here.
    assert!(
        answered > 3.0 * 5.0 * c.secs,
        "kernel answered {answered} ACKs of 3 viewers in {:.0} s",
        c.secs
    );
    assert!(dropped > 1000, "the loss rule dropped only {dropped}");
    assert!(
        retrans >= dropped as f64 * 0.5,
        "retransmissions {retrans} for {dropped} drops"
    );
    for v in &slts {
        let st = v.last_stats().expect("libsrt stats");
        record_result(&format!(
            "ebpf e2e long run: {}: libsrt rtt={} ms recv={} lost={} retransmitted={} dropped={}",
            v.name, st.rtt_ms, st.recv_packets, st.recv_lost, st.recv_retrans, st.recv_dropped
        ));
        assert!(
            st.rtt_ms > 0.0 && st.rtt_ms < 20.0,
            "{}: libsrt RTT {} ms",
            v.name,
            st.rtt_ms
        );
        assert_contiguous(
            &format!("long run: {}", v.name),
            &v.output(),
            c,
            expect_whole(c),
        );
    }
    let breaks = cc_breaks(&ts_align(&ff.output()).packets);
    assert!(
        breaks.is_empty(),
        "long run: ff-copy output has CC breaks: {:?}",
        &breaks[..breaks.len().min(10)]
    );
}

/// libsrt's RTT estimate of a kernel-answered viewer (ACKACKs from the program) is that of
/// a userspace-answered one: same topology, same stream, both datapaths.
#[test]
fn viewer_rtt_matches_the_userspace_path() {
    if object_or_skip("viewer_rtt_matches_the_userspace_path").is_none() {
        return;
    }
    let c = clip();
    let mut rtts = Vec::new();
    for datapath in ["ebpf", "userspace"] {
        let t = three_hosts();
        let relay = Relay::start(RelayOpts {
            netns: Some(t.ns.name("relay").to_string()),
            srt_ip: t.relay_ip,
            datapath: Some(datapath.into()),
            ..RelayOpts::default()
        });
        let dir = TempDir::new(&format!("ebpf-rtt-{datapath}"));
        let mut slts: Vec<SltViewer> = (0..2)
            .map(|i| {
                SltViewer::start_opts(
                    &dir,
                    &format!("slt{i}"),
                    &relay.viewer_url("1"),
                    Some(t.ns.name("view")),
                    true,
                )
            })
            .collect();
        sleep_secs(1.5);
        let mut p = BytePublisher::start_opts(
            &dir,
            "pub",
            &relay.publisher_url("1"),
            c,
            Some(t.ns.name("pub")),
            false,
        );
        p.finish(LINGER);
        let m = relay.metrics();
        if datapath == "ebpf" {
            assert_kernel_acks("rtt", &m, 2);
        } else {
            assert_eq!(
                prom_value(&m, "stsync_kernel_acks_total", &[("kind", "answered")]),
                None
            );
        }
        for v in slts.iter_mut() {
            v.stop();
            // The mean over the run's records: the last one alone is one sample.
            let recs = v.stats_records();
            let vals: Vec<f64> = recs
                .iter()
                .map(|r| stats_summary(r).rtt_ms)
                .filter(|&r| r > 0.0)
                .collect();
            assert!(
                !vals.is_empty(),
                "{datapath}: {}: no RTT in libsrt stats",
                v.name
            );
            let mean = vals.iter().sum::<f64>() / vals.len() as f64;
            record_result(&format!(
                "ebpf e2e rtt: {datapath}: {}: libsrt mean msRTT {mean:.3} over {} records",
                v.name,
                vals.len()
            ));
            rtts.push((datapath, mean));
        }
    }
    let mean = |d: &str| {
        let v: Vec<f64> = rtts.iter().filter(|r| r.0 == d).map(|r| r.1).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let (k, u) = (mean("ebpf"), mean("userspace"));
    assert!(k > 0.0 && k < 20.0, "kernel path libsrt RTT {k} ms");
    assert!(
        k <= u + 2.0,
        "kernel path libsrt RTT {k:.3} ms vs userspace {u:.3} ms"
    );
}

/// (seen, clones) growth between two scrapes `secs` apart: clones per publisher packet is
/// the number of viewers the kernel serves.
fn clones_per_packet(relay: &Relay, secs: f64) -> f64 {
    let a = kernel_view(&relay.metrics());
    sleep_secs(secs);
    let b = kernel_view(&relay.metrics());
    let seen = b.seen - a.seen;
    assert!(seen > 50.0, "only {seen} publisher packets in {secs} s");
    (b.clones - a.clones) / seen
}

/// `n` is `viewers` clones per packet. The program counts a packet as seen before it clones
/// it, so a scrape that falls in between counts that packet's clones in the next interval:
/// each end may be off by one packet's clones (a fresh-machine CI run measured 4.018 for 4).
fn is_viewers(n: f64, viewers: u32) -> bool {
    let v = f64::from(viewers);
    (v - 0.1..=v + 0.05).contains(&n)
}

/// Waits (up to 5 s) until the relay has `n` viewer connections.
fn wait_viewers(relay: &Relay, n: usize) {
    let ok = wait_until(Duration::from_secs(5), || {
        relay.metric("srt_connections_current", &[("mode", "request")]) == Some(n as f64)
    });
    assert!(ok, "the relay did not get to {n} viewers");
    // The kernel counters reach the metrics every 50 ms: let a scrape pass the change.
    sleep_secs(0.2);
}

/// Viewers join, leave (SHUTDOWN) and vanish (timeout) while the stream runs, then a second
/// publisher takes over: the kernel's viewer set follows each change, and the viewers that
/// stay see each publisher's run without a hole.
#[test]
fn viewers_come_and_go_and_publisher_takeover() {
    if object_or_skip("viewers_come_and_go_and_publisher_takeover").is_none() {
        return;
    }
    let c = clip();
    let t = three_hosts();
    let relay = start_relay(
        t.ns.name("relay"),
        t.relay_ip,
        RelayOpts {
            idle_timeout_ms: Some(1500),
            ..Default::default()
        },
    );
    let (view, publ) = (t.ns.name("view"), t.ns.name("pub"));
    let dir = TempDir::new("ebpf-churn");
    let off_b = 6.5;
    let clip_b = c.suffix(&dir, off_b);
    let mut stay: Vec<SltViewer> = ["a", "c"]
        .iter()
        .map(|n| SltViewer::start_opts(&dir, n, &relay.viewer_url("1"), Some(view), false))
        .collect();
    let mut leaver =
        SltViewer::start_opts(&dir, "b-leaves", &relay.viewer_url("1"), Some(view), false);
    let mut vanisher = SltViewer::start_opts(
        &dir,
        "e-vanishes",
        &relay.viewer_url("1"),
        Some(view),
        false,
    );
    sleep_secs(1.5);
    let mut pa = BytePublisher::start_opts(
        &dir,
        "pubA",
        &relay.publisher_url("1"),
        c,
        Some(publ),
        false,
    );
    // Past the start of the stream (its first packets go out before the handover).
    sleep_secs(2.0);
    let n = clones_per_packet(&relay, 1.0);
    assert!(
        is_viewers(n, 4),
        "4 viewers on the kernel path, {n} clones per packet"
    );

    // A late joiner is taken over by the kernel too.
    let mut late =
        SltViewer::start_opts(&dir, "d-joins", &relay.viewer_url("1"), Some(view), false);
    assert!(
        late.wait_bytes(50_000, Duration::from_secs(5)),
        "late joiner got nothing"
    );
    let n = clones_per_packet(&relay, 1.0);
    assert!(is_viewers(n, 5), "5 viewers, {n} clones per packet");

    // A viewer that says goodbye leaves the kernel's set at once...
    leaver.stop();
    wait_viewers(&relay, 4);
    let n = clones_per_packet(&relay, 1.0);
    assert!(is_viewers(n, 4), "after a SHUTDOWN: {n} clones per packet");
    // ...one that vanishes, when the relay times it out (1.5 s of silence).
    vanisher.proc.signal(libc::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(5), || relay.log().contains("timed out")),
        "the vanished viewer was not timed out"
    );
    wait_viewers(&relay, 3);
    let n = clones_per_packet(&relay, 1.0);
    assert!(is_viewers(n, 3), "after a timeout: {n} clones per packet");

    // Takeover: B (the clip from 6.5 s on) replaces A; the viewers are re-anchored on B
    // and the kernel serves them again.
    let a_secs = pa.elapsed();
    let mut pb = BytePublisher::start_opts(
        &dir,
        "pubB",
        &relay.publisher_url("1"),
        &clip_b,
        Some(publ),
        false,
    );
    assert!(
        pa.wait_slt_exit(Duration::from_secs(5)).is_some(),
        "A not disconnected"
    );
    sleep_secs(1.0);
    let n = clones_per_packet(&relay, 1.0);
    assert!(
        is_viewers(n, 3),
        "after the takeover: {n} clones per packet"
    );
    pb.finish(LINGER);
    let m = relay.metrics();
    let k = kernel_view(&m);
    record_result(&format!("ebpf e2e churn: {k:?}"));
    for (id, &(sent, retrans, _)) in &k.viewers {
        // Two handovers per viewer here (publisher A, then B).
        assert!(
            sent - retrans <= 2.0 * HANDOVER_MAX,
            "viewer {id}: {sent} userspace sends, {retrans} retransmissions"
        );
    }
    for v in stay.iter_mut().chain([&mut late]) {
        v.assert_running("after the takeover");
        v.stop();
    }
    let pps = c.packets_per_sec();
    let src = c.packets();
    let start_b = c.packet_at(off_b);
    for v in stay.iter().chain([&late]) {
        let out = v.output();
        let al = ts_align(&out);
        let runs = find_runs(&al.packets, &src);
        let ctx = format!("{}: {} (resyncs {})", v.name, runs.describe(), al.resyncs);
        assert_eq!(runs.runs.len(), 2, "{ctx}\n  expected A's run and B's run");
        assert!(runs.unmatched <= 2, "{ctx}\n  foreign packets");
        let (ra, rb) = (runs.runs[0], runs.runs[1]);
        if v.name != "d-joins" {
            assert_eq!(ra.src_start, 0, "{ctx}\n  A's run from the first packet");
        }
        let min_a = (pps * (a_secs - 1.0) * 0.8) as usize;
        assert!(
            v.name == "d-joins" || ra.len >= min_a,
            "{ctx}\n  A's run: {} < {min_a}",
            ra.len
        );
        assert!(
            rb.src_start >= start_b && rb.src_start <= start_b + pps as usize,
            "{ctx}\n  B's run should start within a second of packet {start_b}"
        );
        // srt-live-transmit does not send a final partial 1456-byte chunk: B's clip (a
        // suffix) may end up to 7 TS packets short.
        let end = rb.src_start + rb.len;
        assert!(
            end + SLT_CHUNK / TS >= c.n_packets(),
            "{ctx}\n  B's run must reach the clip's end without a hole (ends at {end})"
        );
    }
}

/// A relay started without the capabilities eBPF needs (capsh), in a namespace of its own.
struct CapRelay {
    proc: Proc,
    ns: String,
    srt: SocketAddrV4,
    http: SocketAddrV4,
    token: String,
    log: PathBuf,
}

impl CapRelay {
    fn start(ns: &str, dir: &TempDir, datapath: &str) -> CapRelay {
        // The namespace is the test's own: fixed ports are free.
        let srt = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9999);
        let http = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9998);
        let token = format!("tok-{:016x}", std::process::id());
        let cfg = serde_json::json!({
            "srt_listen": srt.to_string(),
            "http_listen": http.to_string(),
            "streams": [{ "id": "1", "name": "one", "token": token }],
        });
        let config = dir.file(&format!("config-{datapath}.json"));
        std::fs::write(&config, cfg.to_string()).unwrap();
        let log = dir.file(&format!("relay-{datapath}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = command(Some(ns), "capsh");
        cmd.arg("--drop=cap_bpf,cap_sys_admin,cap_net_admin,cap_perfmon")
            .arg("--")
            .arg("-c")
            .arg(format!(
                "exec {} --config {} --datapath {datapath}",
                tool("relay").display(),
                config.display()
            ))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let proc = Proc::spawn("relay-capsh", cmd, libc::SIGTERM, Some(log.clone()));
        CapRelay {
            proc,
            ns: ns.to_string(),
            srt,
            http,
            token,
            log,
        }
    }

    fn log(&self) -> String {
        strip_ansi(&read_lossy(&self.log))
    }

    fn request(&self, method: &str, path: &str, auth: bool) -> Result<HttpResp, String> {
        let url = format!("http://{}{path}", self.http);
        let method = method.to_string();
        let bearer = format!("Bearer {}", self.token);
        in_netns(&self.ns, move || {
            let h: Vec<(&str, &str)> = if auth {
                vec![("Authorization", bearer.as_str())]
            } else {
                vec![]
            };
            http(&method, &url, &h)
        })
    }

    fn wait_healthy(&mut self) {
        let ok = wait_until(Duration::from_secs(10), || {
            !self.proc.running()
                || matches!(self.request("GET", "/v1/health", false), Ok(r) if r.status == 200)
        });
        assert!(
            ok && self.proc.running(),
            "relay did not come up: {}",
            self.log()
        );
    }

    fn url(&self, mode: &str) -> String {
        let r = self
            .request("POST", "/v1/streams/1/sessions", true)
            .expect("POST sessions");
        assert_eq!(r.status, 201, "{r:?}");
        let key = r.json()["session_id"].as_str().unwrap().to_string();
        format!("srt://{}?streamid=#!::r=1,s={key},m={mode}", self.srt)
    }
}

#[test]
fn falls_back_to_userspace_without_capabilities() {
    if object_or_skip("falls_back_to_userspace_without_capabilities").is_none() {
        return;
    }
    let c = clip();
    let ns = Netns::create(&["nocap"]);
    let dir = TempDir::new("ebpf-fallback");

    // --datapath ebpf refuses to start, saying why.
    let mut strict = CapRelay::start(ns.name("nocap"), &dir, "ebpf");
    let st = strict.proc.wait_exit(Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| !s.success()),
        "--datapath ebpf without capabilities must exit non-zero: {st:?}\n{}",
        strict.log()
    );
    let log = strict.log();
    assert!(log.contains("permission denied"), "reason missing: {log}");

    // auto: one line with the reason, then the same service from userspace.
    let mut relay = CapRelay::start(ns.name("nocap"), &dir, "auto");
    relay.wait_healthy();
    let log = relay.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("eBPF datapath unavailable"))
        .collect();
    assert_eq!(lines.len(), 1, "one fallback line expected:\n{log}");
    assert!(lines[0].contains("permission denied"), "{}", lines[0]);
    assert!(log.contains("datapath=userspace"), "{log}");
    eprintln!("fallback line: {}", lines[0]);

    let solo = Some(ns.name("nocap"));
    let mut v1 = SltViewer::start_opts(&dir, "slt1", &relay.url("request"), solo, false);
    let mut v2 = SltViewer::start_opts(&dir, "slt2", &relay.url("request"), solo, false);
    sleep_secs(1.5);
    let mut p = BytePublisher::start_opts(&dir, "pub", &relay.url("publish"), c, solo, false);
    p.finish(LINGER);
    let m = relay
        .request("GET", "/metrics", false)
        .expect("metrics")
        .body;
    v1.assert_running("after the stream");
    v2.assert_running("after the stream");
    v1.stop();
    v2.stop();
    assert_eq!(
        prom_value(&m, "stsync_datapath", &[("kind", "userspace")]),
        Some(1.0)
    );
    assert_eq!(prom_value(&m, "stsync_kernel_clones_total", &[]), Some(0.0));
    for v in [&v1, &v2] {
        assert_contiguous(
            &format!("fallback {}", v.name),
            &v.output(),
            c,
            expect_whole(c),
        );
    }
    let k = kernel_view(&m);
    let packets = (c.bytes.len() / SLT_CHUNK) as f64;
    for (id, &(sent, _, kernel)) in &k.viewers {
        assert!(
            sent >= packets,
            "viewer {id}: userspace sent {sent} of {packets}"
        );
        assert_eq!(kernel, 0.0);
    }
    relay.proc.stop();
}

/// Programs attached on each interface of `ns`.
fn attached_programs(ns: &str) -> usize {
    let out = run("ip", &["-n", ns, "-j", "link", "show"]).expect("ip link");
    let links: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<String> = links
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect();
    in_netns(ns, move || {
        names
            .iter()
            .map(|n| {
                aya::programs::SchedClassifier::query_tcx(n, aya::programs::TcAttachType::Ingress)
                    .map_or(0, |(_, p)| p.len())
            })
            .sum()
    })
}

/// A daemon killed with SIGKILL leaves no program attached (its tcx links die with it),
/// and the next one attaches and serves as usual.
#[test]
fn nothing_stays_attached_after_a_crash() {
    if object_or_skip("nothing_stays_attached_after_a_crash").is_none() {
        return;
    }
    let t = three_hosts();
    let relay_ns = t.ns.name("relay").to_string();
    let mut relay = start_relay(&relay_ns, t.relay_ip, RelayOpts::default());
    // lo, veth0a, veth1a
    assert_eq!(attached_programs(&relay_ns), 3, "{}", relay.log());
    // SAFETY: signalling the relay process this test started.
    unsafe { libc::kill(relay.pid(), libc::SIGKILL) };
    assert!(wait_until(Duration::from_secs(5), || !relay.running()));
    assert!(
        wait_until(Duration::from_secs(2), || attached_programs(&relay_ns) == 0),
        "programs left attached after the daemon was killed: {}",
        attached_programs(&relay_ns)
    );
    let again = start_relay(&relay_ns, t.relay_ip, RelayOpts::default());
    assert_eq!(attached_programs(&relay_ns), 3, "{}", again.log());
}
