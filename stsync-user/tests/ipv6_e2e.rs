//! IPv6 with real libsrt clients, in network namespaces with IPv4 and IPv6 addresses
//! (root): a relay listening on `[::]` (dual-stack) serves IPv4 and IPv6 callers on one
//! stream, from the kernel fast path whichever family the publisher and each viewer use
//! (the program converts a packet for viewers of the other family), every viewer
//! byte-exact; a publisher whose packets would not fit 1500 bytes converted has its
//! other-family viewers served from userspace; and IPv6 publishers and viewers under loss.

mod common;
mod ebpf_common;

use common::*;
use ebpf_common::object_or_skip;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

const LINGER: Duration = Duration::from_millis(1500);
/// The publishers' message size: 7 TS packets.
const TS_CHUNK: usize = 1316;
const RELAY_V4: Ipv4Addr = Ipv4Addr::new(10, 86, 2, 1);
const RELAY_V6: Ipv6Addr = Ipv6Addr::new(0xfd86, 0, 0, 2, 0, 0, 0, 1);
/// The relay on the publisher's link.
const RELAY_V6_PUB: Ipv6Addr = Ipv6Addr::new(0xfd86, 0, 0, 1, 0, 0, 0, 1);

/// What the relay sent one viewer connection, from its metrics.
struct Served {
    /// Data packets the kernel cloned to it.
    kernel: f64,
    /// New data packets sent from userspace.
    fresh: f64,
    resent: f64,
}

/// Per viewer connection (those that received no data), who served it.
fn served_by(m: &str) -> Vec<Served> {
    prom_samples(m, "srt_connection_data_packets_sent_kernel", &[])
        .iter()
        .filter_map(|s| {
            let id = s.label("id")?;
            let get = |n: &str| prom_value(m, n, &[("id", id)]).unwrap_or(0.0);
            (get("srt_connection_data_packets_recv") == 0.0).then(|| {
                let resent = get("srt_connection_data_packets_retransmitted");
                Served {
                    kernel: s.value,
                    fresh: get("srt_connection_data_packets_sent") - resent,
                    resent,
                }
            })
        })
        .collect()
}

/// `pub` → `relay` → `view`, both links with both families (IPv6 addresses without
/// duplicate-address detection, usable at once).
fn hosts() -> Netns {
    let mut ns = Netns::create(&["pub", "relay", "view"]);
    ns.link("relay", "10.86.1.1/24", "pub", "10.86.1.2/24");
    ns.link("relay", "10.86.2.1/24", "view", "10.86.2.2/24");
    for (tag, dev, addr) in [
        ("relay", "veth0a", "fd86:0:0:1::1/64"),
        ("pub", "veth0b", "fd86:0:0:1::2/64"),
        ("relay", "veth1a", "fd86:0:0:2::1/64"),
        ("view", "veth1b", "fd86:0:0:2::2/64"),
    ] {
        run(
            "ip",
            &["-n", ns.name(tag), "addr", "add", addr, "dev", dev, "nodad"],
        )
        .expect("ip addr add (IPv6)");
    }
    ns
}

/// Publisher (over `pub_ip`'s family, messages of `chunk` bytes) → relay on `[::]` → two
/// IPv4 and two IPv6 srt-live-transmit viewers. With the kernel path the kernel serves the
/// viewers of the publisher's family, and those of the other family too when the
/// publisher's packets fit 1500 bytes in that family (else userspace does).
fn dual_stack(datapath: &str, pub_ip: IpAddr, chunk: usize) {
    let c = clip();
    let ns = hosts();
    let relay = Relay::start(RelayOpts {
        netns: Some(ns.name("relay").into()),
        srt_ip: Ipv4Addr::new(10, 86, 1, 1),
        srt_listen_ip: Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        datapath: Some(datapath.into()),
        ..RelayOpts::default()
    });
    assert!(
        relay.log().contains(&format!("datapath={datapath}")),
        "{}",
        relay.log()
    );
    let family = if pub_ip.is_ipv4() { "ipv4" } else { "ipv6" };
    let dir = TempDir::new(&format!("ipv6-dual-{datapath}-{family}-{chunk}"));
    let view_ns = Some(ns.name("view"));
    let mut viewers = Vec::new();
    for (name, ip) in [
        ("v4a", IpAddr::V4(RELAY_V4)),
        ("v4b", IpAddr::V4(RELAY_V4)),
        ("v6a", IpAddr::V6(RELAY_V6)),
        ("v6b", IpAddr::V6(RELAY_V6)),
    ] {
        let url = relay.url_at(ip, "1", &relay.session("1"), "request");
        viewers.push(SltViewer::start_opts(&dir, name, &url, view_ns, true));
    }
    assert!(
        relay.wait_connections("request", 4, Duration::from_secs(10)),
        "{datapath}: viewers not connected: {}",
        tail_lines(&relay.log(), 20)
    );
    sleep_secs(0.5);
    let pub_url = relay.url_at(pub_ip, "1", &relay.session("1"), "publish");
    let mut p = BytePublisher::start_chunked(&dir, "pub", &pub_url, c, Some(ns.name("pub")), chunk);
    p.finish(LINGER);
    let m = relay.metrics();
    for v in &mut viewers {
        v.assert_running("after the stream");
        v.stop();
    }
    for v in &viewers {
        assert_whole(&format!("{datapath}: {}", v.name), &v.output(), c);
    }
    // IPv4 callers of a dual-stack socket are logged as IPv4.
    let log = relay.log();
    assert!(log.contains("peer=10.86.2.2:"), "{log}");
    assert!(!log.contains("::ffff:"), "{log}");
    assert!(log.contains("peer=[fd86:0:0:2::2]:"), "{log}");
    // Who served whom: per viewer connection, (userspace new packets, kernel clones).
    let mut served: Vec<(f64, f64)> = served_by(&m).iter().map(|v| (v.fresh, v.kernel)).collect();
    served.sort_by(|a, b| a.1.total_cmp(&b.1));
    let line = format!(
        "ipv6 {datapath}: dual-stack [::], {family} publisher, {chunk}-byte messages, per viewer (userspace new, kernel clones): {served:?}"
    );
    eprintln!("{line}");
    record_result(&line);
    assert_eq!(served.len(), 4, "{line}");
    let packets = (c.bytes.len() / chunk) as f64;
    if datapath == "ebpf" {
        // IPv4 → IPv6 adds 20 bytes of header: a 1456-byte message does not fit.
        let fits = pub_ip.is_ipv6() || chunk + 16 + 8 + 40 <= 1500;
        let userspace = if fits { 0 } else { 2 };
        for &(fresh, kernel) in &served[..userspace] {
            assert_eq!(kernel, 0.0, "{line}");
            assert!(fresh >= 0.95 * packets, "{line}");
        }
        for &(_, kernel) in &served[userspace..] {
            assert!(kernel >= 0.9 * packets, "{line}: the kernel served them");
        }
        let k = |reason: &str| {
            prom_value(&m, "stsync_kernel_skipped_total", &[("reason", reason)]).unwrap_or(0.0)
        };
        assert_eq!(k("restore_failed"), 0.0, "{line}");
        if fits {
            assert_eq!(k("cross_family"), 0.0, "{line}: every packet converted");
        } else {
            assert!(
                k("cross_family") >= 1.0,
                "{line}: the oversize packet counted"
            );
            assert!(
                relay.log().contains("too large for the other IP family"),
                "{line}"
            );
        }
        assert_eq!(
            prom_value(&m, "stsync_kernel_clone_failures_total", &[]),
            Some(0.0),
            "{line}"
        );
    } else {
        assert!(served.iter().all(|&(_, k)| k == 0.0), "{line}");
    }
}

#[test]
fn dual_stack_listener_serves_both_families_userspace() {
    if !require_root("dual_stack_listener_serves_both_families_userspace") {
        return;
    }
    dual_stack(
        "userspace",
        IpAddr::V4(Ipv4Addr::new(10, 86, 1, 1)),
        TS_CHUNK,
    );
}

/// An IPv4 publisher sending 7 TS packets a message (as ffmpeg and OBS do): the kernel
/// serves its IPv4 viewers, and its IPv6 viewers with converted clones.
#[test]
fn kernel_path_ipv4_publisher_viewers_of_both_families() {
    if object_or_skip("kernel_path_ipv4_publisher_viewers_of_both_families").is_none() {
        return;
    }
    let _serial = serial();
    dual_stack("ebpf", IpAddr::V4(Ipv4Addr::new(10, 86, 1, 1)), TS_CHUNK);
}

/// An IPv6 publisher: the kernel serves its IPv6 viewers (IPv6 parsing, rewrite, UDP
/// checksum, route learning and ACKs in the program) and its IPv4 viewers (converted).
#[test]
fn kernel_path_ipv6_publisher_viewers_of_both_families() {
    if object_or_skip("kernel_path_ipv6_publisher_viewers_of_both_families").is_none() {
        return;
    }
    let _serial = serial();
    dual_stack("ebpf", IpAddr::V6(RELAY_V6_PUB), TS_CHUNK);
}

/// An IPv4 publisher at libsrt's largest payload (1456 bytes): converted to IPv6 a packet
/// would be 1520 bytes, more than the link takes, so its IPv6 viewers go back to userspace
/// after its first packet, and still get the stream whole.
#[test]
fn kernel_path_leaves_too_large_packets_of_the_other_family_to_userspace() {
    if object_or_skip("kernel_path_leaves_too_large_packets_of_the_other_family_to_userspace")
        .is_none()
    {
        return;
    }
    let _serial = serial();
    dual_stack("ebpf", IpAddr::V4(Ipv4Addr::new(10, 86, 1, 1)), SLT_CHUNK);
}

/// Everything over IPv6, userspace datapath, 5 % loss on both legs (nftables, `inet`).
/// The srt-live-transmit publisher sends libsrt's largest messages, fragmented over IPv6.
#[test]
fn ipv6_publishers_and_viewers_with_loss_on_both_legs() {
    if !require_root("ipv6_publishers_and_viewers_with_loss_on_both_legs") {
        return;
    }
    let _serial = serial();
    ipv6_with_loss("userspace", SLT_CHUNK);
}

/// The same on the kernel path, publishers sending 7 TS packets a message: the kernel
/// serves every viewer (its clone counters say so) and the relay repairs both legs.
#[test]
fn ipv6_kernel_path_with_loss_on_both_legs() {
    if object_or_skip("ipv6_kernel_path_with_loss_on_both_legs").is_none() {
        return;
    }
    let _serial = serial();
    ipv6_with_loss("ebpf", TS_CHUNK);
}

/// A srt-live-transmit publisher's stream (messages of `chunk` bytes) reaches a
/// srt-live-transmit viewer byte-exact and a decoding ffmpeg viewer whole; an ffmpeg
/// publisher's stream (stream 2, at the same time) reaches a srt-live-transmit viewer with
/// no continuity break; all over IPv6 with 5 % loss on both legs.
fn ipv6_with_loss(datapath: &str, chunk: usize) {
    let c = clip();
    let ns = hosts();
    let relay = Relay::start(RelayOpts {
        netns: Some(ns.name("relay").into()),
        srt_ip: Ipv4Addr::new(10, 86, 1, 1),
        srt_listen_ip: Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        datapath: Some(datapath.into()),
        latency_ms: Some(LOSS_LATENCY_MS),
        ..RelayOpts::default()
    });
    let port = relay.srt.port();
    let dir = TempDir::new(&format!("ipv6-loss-{datapath}"));
    let (view_ns, pub_ns) = (Some(ns.name("view")), Some(ns.name("pub")));
    let url = |ip: Ipv6Addr, stream: &str, mode: &str| {
        relay.url_at(ip, stream, &relay.session(stream), mode)
    };
    let mut v1 = SltViewer::start_opts(&dir, "slt1", &url(RELAY_V6, "1", "request"), view_ns, true);
    let mut f1 = FfmpegViewer::start(
        &dir,
        "ff1",
        &url(RELAY_V6, "1", "request"),
        FfKind::Decode,
        view_ns,
    );
    let mut v2 = SltViewer::start_opts(&dir, "slt2", &url(RELAY_V6, "2", "request"), view_ns, true);
    assert!(
        relay.wait_connections("request", 3, Duration::from_secs(10)),
        "viewers not connected over IPv6: {}",
        tail_lines(&relay.log(), 20)
    );
    ns.add_loss("pub", "output", &format!("udp dport {port}"), LOSS_PCT);
    ns.add_loss("view", "input", &format!("udp sport {port}"), LOSS_PCT);
    let padded = c.padded(&dir, 0.5);
    let mut p1 = BytePublisher::start_chunked(
        &dir,
        "pub1",
        &url(RELAY_V6_PUB, "1", "publish"),
        &padded,
        pub_ns,
        chunk,
    );
    let mut p2 =
        FfmpegPublisher::start(&dir, "pub2", &url(RELAY_V6_PUB, "2", "publish"), c, pub_ns);
    p1.finish(LINGER);
    let st = p2.proc.wait_exit(secs(c.secs + 10.0));
    assert!(
        st.is_some_and(|s| s.success()),
        "ffmpeg publisher: {st:?}\n{}",
        p2.proc.stderr_text()
    );
    sleep_secs(1.0);
    let m = relay.metrics();
    for v in [&mut v1, &mut v2] {
        v.assert_running("after the stream");
        v.stop();
    }
    f1.assert_running("after the stream");
    f1.stop();
    let dropped = (ns.loss_counter("pub"), ns.loss_counter("view"));
    // Per viewer connection: (kernel clones, userspace new packets, retransmitted).
    let served: Vec<(f64, f64, f64)> = served_by(&m)
        .iter()
        .map(|v| (v.kernel, v.fresh, v.resent))
        .collect();
    let line = format!(
        "ipv6 loss {datapath}: nft dropped {dropped:?} (publisher leg, viewer leg); per viewer (kernel clones, userspace new, retransmitted): {served:?}"
    );
    eprintln!("{line}");
    record_result(&line);
    assert_eq!(served.len(), 3, "{line}");
    for &(kernel, fresh, re) in &served {
        assert!(re > 0.0, "{line}: the viewer leg's loss repaired");
        if datapath == "ebpf" {
            assert!(
                kernel > 10.0 * fresh,
                "{line}: the kernel served the viewer"
            );
        } else {
            assert_eq!(kernel, 0.0, "{line}");
        }
    }
    assert!(dropped.0 > 20 && dropped.1 > 20, "{dropped:?}");
    assert_whole(&v1.name, &v1.output(), c);
    let nref = c.reference_frames().len();
    assert_frames_tail(
        "ffmpeg viewer over IPv6",
        &f1.frames(),
        c,
        nref * 95 / 100,
        3,
        1,
    );
    let out = v2.output();
    let al = ts_align(&out);
    assert!(
        al.packets.len() > c.n_packets() * 9 / 10,
        "{} TS packets",
        al.packets.len()
    );
    let breaks = cc_breaks(&al.packets);
    assert!(
        breaks.is_empty(),
        "continuity breaks in ffmpeg's stream over IPv6: {breaks:?}"
    );
    let log = relay.log();
    assert!(
        log.contains("peer=[fd86:0:0:1::2]:") && log.contains("peer=[fd86:0:0:2::2]:"),
        "{log}"
    );
}

/// `"http_listen": "[::]:PORT"` serves the API to both families (IPv6 and IPv4 loopback,
/// in the test's own namespace): health, and a session key minted over IPv6.
#[test]
fn the_api_listens_on_both_families() {
    if !require_root("the_api_listens_on_both_families") {
        return;
    }
    let ns = Netns::create(&["api"]);
    let relay = Relay::start(RelayOpts {
        netns: Some(ns.name("api").into()),
        srt_listen_ip: Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        http_listen_ip: Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        datapath: Some("userspace".into()),
        ..RelayOpts::default()
    });
    let port = relay.http.port();
    let token = format!("Bearer {}", relay.token("1"));
    let (health6, health4, minted) = in_netns(ns.name("api"), move || {
        let get = |host: &str| http("GET", &format!("http://{host}:{port}/v1/health"), &[]);
        let minted = http(
            "POST",
            &format!("http://[::1]:{port}/v1/streams/1/sessions"),
            &[("Authorization", &token)],
        );
        (get("[::1]"), get("127.0.0.1"), minted)
    });
    assert_eq!(health6.map(|r| r.status), Ok(200));
    assert_eq!(health4.map(|r| r.status), Ok(200));
    let minted = minted.expect("POST over IPv6");
    assert_eq!(minted.status, 201, "{}", minted.body);
    assert!(relay.log().contains("api=http://[::]:"), "{}", relay.log());
}

/// Over IPv6, callers get the answers IPv4 callers get: the documented rejection codes for
/// a malformed stream ID, an unknown resource, a key of another resource, a bad mode, a key
/// in use and a full stream; and an admitted IPv6 viewer is counted and shown like any.
#[test]
fn ipv6_callers_get_the_same_answers() {
    let relay = Relay::start(RelayOpts {
        srt_listen_ip: Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        max_viewers_per_stream: Some(1),
        ..RelayOpts::default()
    });
    let dir = TempDir::new("ipv6-answers");
    let at = |resource: &str, key: &str, mode: &str| {
        relay.url_at(Ipv6Addr::LOCALHOST, resource, key, mode)
    };
    let k1 = relay.session("1");
    let k2 = relay.session("2");
    let sid = format!("srt://[::1]:{}?streamid=hello", relay.srt.port());
    expect_reject(
        &relay,
        &dir,
        "IPv6: malformed stream ID",
        &sid,
        ROGUE_TEXT,
        1004,
    );
    expect_reject(
        &relay,
        &dir,
        "IPv6: unknown resource",
        &at("abc", &k1, "request"),
        APP_TEXT,
        2404,
    );
    expect_reject(
        &relay,
        &dir,
        "IPv6: key of another resource",
        &at("1", &k2, "request"),
        APP_TEXT,
        2401,
    );
    expect_reject(
        &relay,
        &dir,
        "IPv6: bad mode",
        &at("1", &k1, "foo"),
        APP_TEXT,
        2405,
    );
    let url = at("1", &k1, "request");
    let mut v = SltViewer::start(&dir, "v6", &url);
    assert!(
        relay.wait_connections("request", 1, Duration::from_secs(5)),
        "IPv6 viewer not connected: {}",
        tail_lines(&relay.log(), 10)
    );
    // (As a viewer it would meet the full stream first: 2402 below.)
    expect_reject(
        &relay,
        &dir,
        "IPv6: key in use, as publisher",
        &at("1", &k1, "publish"),
        APP_TEXT,
        2403,
    );
    let k3 = relay.session("1");
    expect_reject(
        &relay,
        &dir,
        "IPv6: over max_viewers_per_stream=1",
        &at("1", &k3, "request"),
        APP_TEXT,
        2402,
    );
    v.assert_running("while other IPv6 callers were refused");
    assert_eq!(
        relay.metric("srt_connections_current", &[("mode", "request")]),
        Some(1.0)
    );
    assert!(relay.log().contains("peer=[::1]:"), "shown as IPv6");
    v.stop();
}
