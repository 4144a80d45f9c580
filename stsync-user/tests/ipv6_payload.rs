//! IPv6 and the payload size, with real libsrt clients (Debian's libsrt 1.5.1) on loopback:
//! a relay listening on `[::]` (dual-stack, userspace datapath), an srt-live-transmit
//! publisher over IPv4 sending the largest payloads there are (its `-chunk` default, 1456
//! bytes: MSS 1500 less libsrt's 28 + 16 header bytes), and srt-live-transmit viewers over
//! IPv6 on `[::1]`.
//!
//! libsrt 1.5 computes the payload size the same for both families (`CPacket::UDP_HDR_SIZE`
//! is 28, IPv4's, for IPv6 too) and sizes a receiver's buffers from its own MSS before the
//! handshake, so an IPv6 viewer at the default MSS takes 1456-byte payloads, and one whose
//! MSS is smaller drops larger datagrams unseen (`MSG_TRUNC` in `CChannel::recvfrom`). The
//! relay sends the first everything and holds back from the second what it would drop.

mod common;
mod ebpf_common;

use common::*;
use ebpf_common::object_or_skip;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

const LINGER: Duration = Duration::from_millis(1500);
const DROP_REASON: &str = "payload_over_viewer_mss";

fn relay() -> Relay {
    Relay::start(RelayOpts {
        srt_ip: Ipv4Addr::LOCALHOST,
        srt_listen_ip: Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        datapath: Some("userspace".into()),
        ..RelayOpts::default()
    })
}

/// What libsrt 1.5 adds to each packet's payload in its byte counts (`CUDT::bstats`:
/// `pktHdrSize = CPacket::HDR_SIZE + CPacket::UDP_HDR_SIZE`, 16 + 28), over IPv6 as over
/// IPv4.
const LIBSRT_HEADERS: f64 = 44.0;

/// Payload bytes per packet a srt-live-transmit viewer's libsrt counted.
fn mean_payload(v: &SltViewer) -> f64 {
    let recs = read_stats(v.stats.as_deref().expect("stats"));
    let last = recs.last().expect("a stats record");
    let (bytes, packets) = (
        last["recv"]["bytes"].as_f64(),
        last["recv"]["packets"].as_f64(),
    );
    match (bytes, packets) {
        (Some(b), Some(p)) if p > 0.0 => b / p - LIBSRT_HEADERS,
        _ => 0.0,
    }
}

/// Publishes the clip over IPv4 (a `::ffff:127.0.0.1` caller of the `[::]` socket) once the
/// viewers are in.
fn publish(relay: &Relay, dir: &TempDir, c: &Clip) -> BytePublisher {
    let url = relay.url_at(Ipv4Addr::LOCALHOST, "1", &relay.session("1"), "publish");
    let mut p = BytePublisher::start_opts(dir, "pub", &url, c, None, false);
    p.finish(LINGER);
    p
}

/// An IPv4 publisher's 1456-byte payloads reach an IPv6 viewer whole, as they reach an IPv4
/// viewer: libsrt over IPv6 takes them (its statistics count 1456 payload bytes a packet,
/// and 44 header bytes, IPv4's, on top for both families).
#[test]
fn ipv4_publishers_full_payloads_reach_ipv6_viewers_whole() {
    let c = clip();
    let relay = relay();
    let dir = TempDir::new("ipv6-payload-full");
    let mut viewers = Vec::new();
    for (name, ip) in [
        ("v6", IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ("v4", IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ] {
        let url = relay.url_at(ip, "1", &relay.session("1"), "request");
        viewers.push(SltViewer::start_opts(&dir, name, &url, None, true));
    }
    assert!(
        relay.wait_connections("request", 2, Duration::from_secs(10)),
        "viewers not connected: {}",
        tail_lines(&relay.log(), 20)
    );
    sleep_secs(0.5);
    publish(&relay, &dir, c);
    let dropped = relay
        .metric("srt_packets_dropped_total", &[("reason", DROP_REASON)])
        .unwrap_or(0.0);
    for v in &mut viewers {
        v.assert_running("after the stream");
        v.stop();
    }
    let means: Vec<f64> = viewers.iter().map(mean_payload).collect();
    let line = format!(
        "ipv6_payload: IPv4 publisher at {SLT_CHUNK} bytes a packet; libsrt's bytes a packet \
         at the IPv6 viewer {:.1}, at the IPv4 viewer {:.1}; held back {dropped}",
        means[0], means[1]
    );
    eprintln!("{line}");
    record_result(&line);
    for v in &viewers {
        assert_whole(&v.name, &v.output(), c);
    }
    for m in means {
        assert!((m - SLT_CHUNK as f64).abs() < 1.0, "{line}");
    }
    assert_eq!(dropped, 0.0, "{line}");
    let log = relay.log();
    assert!(log.contains("peer=[::1]:"), "{log}");
    assert!(log.contains("peer=127.0.0.1:"), "{log}");
}

/// An IPv6 viewer whose own MSS is 1360 takes at most 1316 bytes a packet: the relay holds
/// the publisher's 1456-byte packets back from it (counted, logged once) instead of sending
/// what libsrt would drop; the viewer stays connected, and an IPv6 viewer at the default
/// MSS next to it gets the stream whole.
#[test]
fn ipv6_viewer_with_a_smaller_mss_is_not_sent_what_it_would_drop() {
    let c = clip();
    let relay = relay();
    let dir = TempDir::new("ipv6-payload-mss");
    let full_url = relay.url_at(Ipv6Addr::LOCALHOST, "1", &relay.session("1"), "request");
    let small_url = format!(
        "{}&mss=1360",
        relay.url_at(Ipv6Addr::LOCALHOST, "1", &relay.session("1"), "request")
    );
    let mut full = SltViewer::start_opts(&dir, "full", &full_url, None, true);
    let mut small = SltViewer::start_opts(&dir, "small", &small_url, None, true);
    assert!(
        relay.wait_connections("request", 2, Duration::from_secs(10)),
        "viewers not connected: {}",
        tail_lines(&relay.log(), 20)
    );
    sleep_secs(0.5);
    publish(&relay, &dir, c);
    let dropped = relay
        .metric("srt_packets_dropped_total", &[("reason", DROP_REASON)])
        .unwrap_or(0.0);
    full.assert_running("after the stream");
    small.assert_running("after the stream (held back from, not disconnected)");
    full.stop();
    small.stop();
    let packets = (c.bytes.len() / SLT_CHUNK) as f64;
    let line = format!(
        "ipv6_payload: IPv6 viewer at MSS 1360: {dropped} of {packets} packets of \
         {SLT_CHUNK} bytes held back, {} bytes received",
        small.output().len()
    );
    eprintln!("{line}");
    record_result(&line);
    assert_whole("full", &full.output(), c);
    assert!(dropped >= 0.95 * packets, "{line}");
    assert!(small.output().is_empty(), "{line}");
    let log = relay.log();
    let warned = log.matches("viewer's MSS is too small").count();
    assert_eq!(warned, 1, "logged once: {}", tail_lines(&log, 20));
}

/// The same held-back rule on the kernel fast path (root, eBPF object): the kernel's clones
/// do not check sizes, so an IPv4 viewer whose MSS is 1360 stays in userspace (nothing
/// cloned to it, its 1456-byte packets held back), while an IPv4 viewer at the default MSS
/// next to it is the kernel's and gets the stream whole.
#[test]
fn small_mss_viewer_stays_off_the_kernel_path() {
    let test = "small_mss_viewer_stays_off_the_kernel_path";
    if object_or_skip(test).is_none() {
        return;
    }
    let c = clip();
    let mut ns = Netns::create(&["pub", "relay", "view"]);
    ns.link("relay", "10.86.1.1/24", "pub", "10.86.1.2/24");
    ns.link("relay", "10.86.2.1/24", "view", "10.86.2.2/24");
    let relay = Relay::start(RelayOpts {
        netns: Some(ns.name("relay").into()),
        srt_ip: Ipv4Addr::new(10, 86, 1, 1),
        srt_listen_ip: Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        datapath: Some("ebpf".into()),
        ..RelayOpts::default()
    });
    assert!(relay.log().contains("datapath=ebpf"), "{}", relay.log());
    let dir = TempDir::new("ipv6-payload-ebpf");
    let at = Ipv4Addr::new(10, 86, 2, 1);
    let full_url = relay.url_at(at, "1", &relay.session("1"), "request");
    let small_url = format!(
        "{}&mss=1360",
        relay.url_at(at, "1", &relay.session("1"), "request")
    );
    let view = Some(ns.name("view"));
    let mut full = SltViewer::start_opts(&dir, "full", &full_url, view, false);
    let mut small = SltViewer::start_opts(&dir, "small", &small_url, view, false);
    assert!(
        relay.wait_connections("request", 2, Duration::from_secs(10)),
        "viewers not connected: {}",
        tail_lines(&relay.log(), 20)
    );
    sleep_secs(0.5);
    let url = relay.publisher_url("1");
    let mut p = BytePublisher::start_opts(&dir, "pub", &url, c, Some(ns.name("pub")), false);
    p.finish(LINGER);
    let m = relay.metrics();
    full.assert_running("after the stream");
    small.assert_running("after the stream (held back from, not disconnected)");
    full.stop();
    small.stop();
    let dropped =
        prom_value(&m, "srt_packets_dropped_total", &[("reason", DROP_REASON)]).unwrap_or(0.0);
    // Per viewer connection: kernel clones.
    let mut kernel: Vec<f64> = prom_samples(&m, "srt_connection_data_packets_sent_kernel", &[])
        .iter()
        .filter(|s| {
            s.label("id").is_some_and(|id| {
                prom_value(&m, "srt_connection_data_packets_recv", &[("id", id)]) == Some(0.0)
            })
        })
        .map(|s| s.value)
        .collect();
    kernel.sort_by(f64::total_cmp);
    let packets = (c.bytes.len() / SLT_CHUNK) as f64;
    let line = format!(
        "ipv6_payload ebpf: viewers' kernel clones {kernel:?} of {packets} packets; held \
         back from the MSS-1360 viewer {dropped}; it received {} bytes",
        small.output().len()
    );
    eprintln!("{line}");
    record_result(&line);
    assert_whole("full", &full.output(), c);
    assert_eq!(kernel.len(), 2, "{line}");
    assert_eq!(
        kernel[0], 0.0,
        "{line}: nothing cloned to the small-MSS viewer"
    );
    assert!(
        kernel[1] >= 0.9 * packets,
        "{line}: the kernel served the other"
    );
    assert!(dropped >= 0.95 * packets, "{line}");
    assert!(small.output().is_empty(), "{line}");
}
