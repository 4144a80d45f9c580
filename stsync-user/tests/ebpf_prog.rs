//! The stsync-ebpf TC program on a real kernel: crafted frames through BPF_PROG_TEST_RUN
//! (aya `test_run`), and the program attached (tcx) on a veth and on `lo` with real UDP
//! sockets. Clones are checked where they land: UDP sockets (and a raw AF_PACKET capture)
//! inside throwaway network namespaces.
//!
//! Needs root and the built object (`cargo xtask build-ebpf`); skips with a reason
//! otherwise, and fails instead when STSYNC_REQUIRE_PRIVILEGED=1.

mod common;
mod ebpf_common;

use aya::programs::{TestRun, TestRunOptions};
use common::*;
use ebpf_common::*;
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;
use stsync_common::maps::{PublisherEntry, Route, ViewerConn, ViewerEntry, FAMILY_V4, MAX_VIEWERS};
use stsync_user::datapath::kernel::{raw_ip, raw_port, Kernel};
use stsync_user::os::clock::monotonic_ns;

const RELAY_IP: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
const VIEW_IP: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 2);
const RELAY_PORT: u16 = 9000;
const PUB_ID: u32 = 0x1234_5678;
const PUB_SRC: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 88, 5, 5), 5000);
const EPOCH: u64 = 7;

/// A relay namespace and a viewer namespace joined by veth0a (relay) / veth0b (viewers).
struct Lab {
    ns: Netns,
    relay_if: (u32, [u8; 6]),
    view_if: (u32, [u8; 6]),
}

impl Lab {
    fn new() -> Lab {
        let mut ns = Netns::create(&["relay", "view"]);
        ns.link("relay", "10.88.0.1/24", "view", "10.88.0.2/24");
        let relay_if = link_info(ns.name("relay"), "veth0a");
        let view_if = link_info(ns.name("view"), "veth0b");
        Lab {
            ns,
            relay_if,
            view_if,
        }
    }

    fn relay(&self) -> String {
        self.ns.name("relay").to_string()
    }

    fn view(&self) -> String {
        self.ns.name("view").to_string()
    }

    /// The route a viewer at VIEW_IP:`port` has, as the program would learn it.
    fn route_to(&self, port: u16) -> Route {
        Route {
            ifindex: self.relay_if.0,
            relay_ip: raw_ip(RELAY_IP),
            viewer_ip: raw_ip(VIEW_IP),
            relay_port: raw_port(RELAY_PORT),
            viewer_port: raw_port(port),
            relay_mac: self.relay_if.1,
            viewer_mac: self.view_if.1,
            family: FAMILY_V4,
        }
    }

    /// A publisher frame as it would arrive at veth0a.
    fn pub_frame(&self, srt: &[u8], csum: Csum) -> Vec<u8> {
        frame(
            &FrameSpec {
                src_mac: [0x02, 0, 0, 0, 0, 0x55],
                dst_mac: self.relay_if.1,
                src: PUB_SRC,
                dst: SocketAddrV4::new(RELAY_IP, RELAY_PORT),
                csum,
            },
            srt,
        )
    }
}

/// Runs the program once on `frame` inside namespace `ns` (clones leave from there), with
/// the skb's device set to `ifindex`. Returns (kernel, verdict, frame after the program).
fn test_run_in(ns: &str, k: Kernel, frame: Vec<u8>, ifindex: u32) -> (Kernel, u32, Vec<u8>) {
    in_netns(ns, move || {
        let mut k = k;
        let mut out = vec![0u8; frame.len() + 256];
        // struct __sk_buff up to and including `ifindex` (offset 40).
        let mut ctx = [0u8; 44];
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let r = k
            .program_mut()
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        (k, r.return_value, out)
    })
}

fn viewer(
    conn: u32,
    peer_id: u32,
    seq_off: u32,
    ts_off: u32,
    epoch: u64,
    active: bool,
    route: Route,
) -> ViewerEntry {
    ViewerEntry {
        epoch,
        conn,
        peer_id,
        seq_off,
        ts_off,
        active: u32::from(active),
        _pad: 0,
        route,
    }
}

fn install_publisher(k: &mut Kernel, stream: u32) {
    k.set_relay(SocketAddr::V4(SocketAddrV4::new(RELAY_IP, RELAY_PORT)))
        .unwrap();
    k.set_publisher(
        PUB_ID,
        PublisherEntry {
            epoch: EPOCH,
            stream,
            src_ip: raw_ip(*PUB_SRC.ip()),
            src_port: raw_port(PUB_SRC.port()),
            _pad: 0,
        },
    )
    .unwrap();
}

fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn control_and_unknown_packets_pass_unmodified() {
    let Some(obj) = object_or_skip("control_and_unknown_packets_pass_unmodified") else {
        return;
    };
    let lab = Lab::new();
    let mut k = load(&obj, 1);
    install_publisher(&mut k, 0);
    // One active viewer, so that any clone would be seen.
    let sock = udp_in(&lab.view(), SocketAddrV4::new(VIEW_IP, 0), None);
    let vport = sock.local_addr().unwrap().port();
    k.set_viewer(
        0,
        &viewer(0x2222, 0x3333, 0, 0, EPOCH, true, lab.route_to(vport)),
    )
    .unwrap();
    k.set_stream_slots(0, 1).unwrap();

    let body = payload(1316, 1);
    let relay = SocketAddrV4::new(RELAY_IP, RELAY_PORT);
    let spec = |src: SocketAddrV4, dst: SocketAddrV4| FrameSpec {
        src_mac: [0x02, 0, 0, 0, 0, 0x55],
        dst_mac: lab.relay_if.1,
        src,
        dst,
        csum: Csum::Valid,
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "ACK from the publisher",
            frame(&spec(PUB_SRC, relay), &srt_control(2, 10, PUB_ID, &[0; 24])),
        ),
        (
            "data to an unknown socket ID",
            frame(
                &spec(PUB_SRC, relay),
                &srt_data(5, 1, false, 10, 0x0BAD, &body),
            ),
        ),
        (
            "data from the wrong source port",
            frame(
                &spec(SocketAddrV4::new(*PUB_SRC.ip(), 5001), relay),
                &srt_data(5, 1, false, 10, PUB_ID, &body),
            ),
        ),
        (
            "data to another UDP port",
            frame(
                &spec(PUB_SRC, SocketAddrV4::new(RELAY_IP, 9001)),
                &srt_data(5, 1, false, 10, PUB_ID, &body),
            ),
        ),
        (
            "data to another local address",
            frame(
                &spec(
                    PUB_SRC,
                    SocketAddrV4::new(Ipv4Addr::new(10, 88, 0, 9), RELAY_PORT),
                ),
                &srt_data(5, 1, false, 10, PUB_ID, &body),
            ),
        ),
        (
            "a truncated SRT header",
            frame(
                &spec(PUB_SRC, relay),
                &srt_data(5, 1, false, 10, PUB_ID, &[])[..10],
            ),
        ),
        (
            "a control packet from a stranger to a viewer connection",
            frame(&spec(PUB_SRC, relay), &srt_control(2, 10, 0x2222, &[0; 24])),
        ),
    ];
    // The relay listens on an IPv4 address, so IPv6 frames are not its socket's: even the
    // publisher's own socket ID over IPv6, with extension headers, fragmented, truncated
    // (inside UDP: BPF_PROG_TEST_RUN refuses a frame shorter than an IPv6 header, EINVAL)
    // pass untouched and uncounted.
    let v6 = |exts: &[(u8, usize)]| {
        let src = "[fd88::5]:5000".parse().unwrap();
        let dst = std::net::SocketAddrV6::new("fd88::1".parse().unwrap(), RELAY_PORT, 0, 0);
        let data = srt_data(5, 1, false, 10, PUB_ID, &body);
        frame6(
            [0x02, 0, 0, 0, 0, 0x55],
            lab.relay_if.1,
            src,
            dst,
            exts,
            &data,
        )
    };
    let mut cases = cases;
    cases.extend([
        ("IPv6 data to the publisher's socket ID", v6(&[])),
        (
            "IPv6 with hop-by-hop and destination options",
            v6(&[(0, 8), (60, 16)]),
        ),
        ("an IPv6 fragment", v6(&[(44, 8)])),
        (
            "IPv6 cut inside its UDP header",
            v6(&[])[..14 + 40 + 4].to_vec(),
        ),
    ]);
    let before = k.counters();
    for (what, f) in cases {
        let (k2, verdict, out) = test_run_in(&lab.relay(), k, f.clone(), lab.relay_if.0);
        k = k2;
        assert_eq!(verdict, 0, "{what}: TC_ACT_OK expected");
        assert_eq!(out, f, "{what}: the frame must pass unmodified");
    }
    let after = k.counters();
    assert_eq!(after.clones, before.clones, "no clone for any of these");
    assert_eq!(after.packets_seen, before.packets_seen);
    assert!(k.route(0x2222).is_none(), "a stranger taught a route");
    assert!(drain(&sock, Duration::from_millis(300)).is_empty());
}

#[test]
fn data_packet_is_cloned_to_each_active_viewer() {
    let Some(obj) = object_or_skip("data_packet_is_cloned_to_each_active_viewer") else {
        return;
    };
    let lab = Lab::new();
    // Stream 1 of 2, so the row offset is exercised.
    let mut k = load(&obj, 2);
    install_publisher(&mut k, 1);
    let base = MAX_VIEWERS;
    // (slot, active, epoch, seq_off, ts_off)
    let layout: [(u32, bool, u64, u32, u32); 7] = [
        (0, true, EPOCH, 0, 0),
        (1, true, EPOCH, 1_000_000, 123_456),
        (2, false, EPOCH, 5, 5),
        (3, true, EPOCH, 0x7FFF_FFFF, 0xFFFF_FFFF),
        (4, true, EPOCH, 0x4000_0000, 0x8000_0000),
        (5, true, EPOCH - 1, 9, 9),
        (6, true, EPOCH, 17, 1),
    ];
    let mut viewers = Vec::new();
    for (i, &(slot, active, epoch, seq_off, ts_off)) in layout.iter().enumerate() {
        let sock = udp_in(&lab.view(), SocketAddrV4::new(VIEW_IP, 0), None);
        let port = sock.local_addr().unwrap().port();
        let peer_id = 0x0100_0000 + i as u32;
        let e = viewer(
            0x5000 + i as u32,
            peer_id,
            seq_off,
            ts_off,
            epoch,
            active,
            lab.route_to(port),
        );
        k.set_viewer(base + slot, &e).unwrap();
        k.reset_viewer(base + slot);
        viewers.push((sock, e, active && epoch == EPOCH));
    }
    k.set_stream_slots(1, 7).unwrap();
    let cap = RawCapture::open(&lab.view(), "veth0b");

    // (seq, ts, R flag, UDP checksum)
    let cases = [
        (1000u32, 5000u32, false, Csum::Valid),
        (0x7FFF_FFF0, 0xFFFF_FF00, true, Csum::Valid),
        (77, 1, false, Csum::Zero),
        (78, 2, false, Csum::Broken),
    ];
    let expected_clones = viewers.iter().filter(|v| v.2).count();
    assert_eq!(expected_clones, 5);
    for (n, &(seq, ts, rexmit, csum)) in cases.iter().enumerate() {
        let body = payload(1316, n as u8);
        let srt = srt_data(seq, 42 + n as u32, rexmit, ts, PUB_ID, &body);
        let f = lab.pub_frame(&srt, csum);
        let (k2, verdict, out) = test_run_in(&lab.relay(), k, f.clone(), lab.relay_if.0);
        k = k2;
        assert_eq!(verdict, 0, "case {n}: TC_ACT_OK");
        assert_eq!(
            out, f,
            "case {n}: the original must be restored byte for byte"
        );

        for (i, (sock, e, served)) in viewers.iter().enumerate() {
            let got = drain(sock, Duration::from_millis(200));
            if !served || csum == Csum::Broken {
                assert!(
                    got.is_empty(),
                    "case {n}: viewer {i} must get nothing, got {}",
                    got.len()
                );
                continue;
            }
            assert_eq!(
                got.len(),
                1,
                "case {n}: viewer {i} must get exactly one clone"
            );
            let (d, from) = &got[0];
            assert_eq!(
                *from,
                SocketAddr::V4(SocketAddrV4::new(RELAY_IP, RELAY_PORT))
            );
            let h = parse_data(d);
            assert_eq!(
                h.seq,
                seq.wrapping_add(e.seq_off) & 0x7FFF_FFFF,
                "case {n} viewer {i}: seq"
            );
            assert_eq!(
                h.ts,
                ts.wrapping_add(e.ts_off),
                "case {n} viewer {i}: timestamp"
            );
            assert_eq!(
                h.dest, e.peer_id,
                "case {n} viewer {i}: destination socket ID"
            );
            assert_eq!(
                h.word1,
                0xC000_0000 | (42 + n as u32),
                "case {n} viewer {i}: R flag cleared, message number kept"
            );
            assert_eq!(&d[16..], &body[..], "case {n} viewer {i}: payload");
        }
        let ports: Vec<u16> = viewers
            .iter()
            .map(|(s, _, _)| s.local_addr().unwrap().port())
            .collect();
        let frames = cap.udp_frames_to(&ports);
        assert_eq!(
            frames.len(),
            expected_clones,
            "case {n}: frames on the wire"
        );
        for fr in &frames {
            assert_eq!(fr[0..6], lab.view_if.1, "destination MAC");
            assert_eq!(fr[6..12], lab.relay_if.1, "source MAC");
            assert_eq!(
                ip_checksum_residue(&fr[ETH_LEN..ETH_LEN + IP_LEN]),
                0,
                "IPv4 checksum"
            );
            let udp = &fr[ETH_LEN + IP_LEN..];
            let field = u16::from_be_bytes([udp[6], udp[7]]);
            let residue = udp_checksum_residue(RELAY_IP, VIEW_IP, udp);
            match csum {
                Csum::Valid => assert!(field != 0 && residue == 0, "case {n}: UDP checksum"),
                Csum::Zero => assert_eq!(field, 0, "case {n}: UDP checksum 0 stays 0"),
                Csum::Broken => assert_ne!(residue, 0, "case {n}: a bad checksum stays bad"),
            }
        }
    }
    let c = k.counters();
    assert_eq!(c.clones, (expected_clones * cases.len()) as u64);
    assert_eq!(c.clone_failures, 0);
    assert_eq!(c.packets_seen, cases.len() as u64);
    for &(slot, active, epoch, _, _) in &layout {
        let want = if active && epoch == EPOCH {
            cases.len() as u64
        } else {
            0
        };
        assert_eq!(
            k.viewer_counts(base + slot).clones,
            want,
            "per-viewer clone count of slot {slot}"
        );
    }
}

#[test]
fn fan_out_reaches_1024_viewers_of_one_stream() {
    let Some(obj) = object_or_skip("fan_out_reaches_1024_viewers_of_one_stream") else {
        return;
    };
    let lab = Lab::new();
    // 1024 clones of one packet queue on one CPU's backlog (veth): the default limit of
    // 1000 would drop the last ones.
    let _backlog = BacklogAtLeast::new(4096);
    let mut k = load(&obj, 1);
    install_publisher(&mut k, 0);
    let sock = udp_in(&lab.view(), SocketAddrV4::new(VIEW_IP, 0), Some(64 << 20));
    let port = sock.local_addr().unwrap().port();
    for i in 0..MAX_VIEWERS {
        k.set_viewer(
            i,
            &viewer(
                0x9000 + i,
                0x1000 + i,
                i,
                0,
                EPOCH,
                true,
                lab.route_to(port),
            ),
        )
        .unwrap();
    }
    k.set_stream_slots(0, MAX_VIEWERS).unwrap();
    let body = payload(1316, 9);
    let f = lab.pub_frame(&srt_data(500, 1, false, 99, PUB_ID, &body), Csum::Valid);
    let (k2, verdict, out) = test_run_in(&lab.relay(), k, f.clone(), lab.relay_if.0);
    k = k2;
    assert_eq!(verdict, 0);
    assert_eq!(out, f);
    let got = drain(&sock, Duration::from_millis(500));
    let dests: BTreeSet<u32> = got.iter().map(|(d, _)| parse_data(d).dest).collect();
    assert_eq!(got.len(), MAX_VIEWERS as usize, "one clone per viewer");
    assert_eq!(
        dests,
        (0..MAX_VIEWERS)
            .map(|i| 0x1000 + i)
            .collect::<BTreeSet<_>>()
    );
    for (d, _) in &got {
        let h = parse_data(d);
        assert_eq!(h.seq, 500 + (h.dest - 0x1000), "viewer's own offset");
    }
    let c = k.counters();
    assert_eq!((c.clones, c.clone_failures), (u64::from(MAX_VIEWERS), 0));

    // What one publisher packet fanned out to 1024 viewers costs in the kernel: the program,
    // the clones and their transmission (to the viewers' veth: queued on the backlog, whose
    // processing runs later and is not in this figure; to a veth whose peer is down:
    // dropped at once, so that is the program and the clones alone).
    let relay_ns = lab.relay();
    run(
        "ip",
        &[
            "-n", &relay_ns, "link", "add", "sink0", "type", "veth", "peer", "name", "sink1",
        ],
    )
    .expect("sink veth");
    run("ip", &["-n", &relay_ns, "link", "set", "sink0", "up"]).expect("sink up");
    let dummy = link_info(&relay_ns, "sink0").0;
    let (k, veth) = time_fan_out(&relay_ns, k, &f, lab.relay_if.0, 20);
    let port = sock.local_addr().unwrap().port();
    let mut k = k;
    for i in 0..MAX_VIEWERS {
        let mut route = lab.route_to(port);
        route.ifindex = dummy;
        k.set_viewer(i, &viewer(0x9000 + i, 0x1000 + i, i, 0, EPOCH, true, route))
            .unwrap();
    }
    let (_k, dummy_cost) = time_fan_out(&relay_ns, k, &f, lab.relay_if.0, 50);
    for (what, per_run) in [
        ("viewers' veth", veth),
        ("veth whose peer is down", dummy_cost),
    ] {
        let per_clone = per_run.as_nanos() as f64 / f64::from(MAX_VIEWERS);
        let line = format!(
            "ebpf fan-out, 1024 viewers, clones to the {what}: {:.0} us per publisher packet, {per_clone:.0} ns per clone ({:.2} M clones/s per core)",
            per_run.as_secs_f64() * 1e6,
            1e3 / per_clone
        );
        eprintln!("{line}");
        record_result(&line);
    }
}

/// Mean duration of one program run on `frame` (BPF_PROG_TEST_RUN with `repeat`).
fn time_fan_out(
    ns: &str,
    k: Kernel,
    frame: &[u8],
    ifindex: u32,
    repeat: u32,
) -> (Kernel, Duration) {
    let frame = frame.to_vec();
    in_netns(ns, move || {
        let mut k = k;
        let mut ctx = [0u8; 44];
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let r = k
            .program_mut()
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                ctx_in: Some(&ctx),
                repeat,
                ..TestRunOptions::default()
            })
            .expect("test_run repeat");
        (k, r.duration)
    })
}

fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(b[off..off + 4].try_into().unwrap())
}

/// A libsrt full ACK body (7 words): acknowledged sequence, RTT, RTT variance, free
/// buffer, receive rate, link capacity, byte rate.
fn ack_body(words: usize, ack_seq: u32, rtt: u32, var: u32) -> Vec<u8> {
    [ack_seq, rtt, var, 8000, 380, 10_000, 500_000]
        .iter()
        .take(words)
        .flat_map(|w| w.to_be_bytes())
        .collect()
}

#[test]
fn viewer_ack_becomes_an_exact_ackack_and_nak_passes() {
    let Some(obj) = object_or_skip("viewer_ack_becomes_an_exact_ackack_and_nak_passes") else {
        return;
    };
    let lab = Lab::new();
    let mut k = load(&obj, 1);
    k.set_relay(SocketAddr::V4(SocketAddrV4::new(RELAY_IP, RELAY_PORT)))
        .unwrap();
    let (conn, peer_id, slot) = (0x00AB_CDEF, 0x0000_7777, 5);
    let vaddr = SocketAddrV4::new(VIEW_IP, 40_000);
    // The connection's clock started 3 s ago.
    let start_ns = monotonic_ns() - 3_000_000_000;
    k.set_viewer_conn(
        conn,
        ViewerConn {
            start_ns,
            slot,
            peer_ip: raw_ip(VIEW_IP),
            peer_port: raw_port(vaddr.port()),
            ..ViewerConn::default()
        },
    )
    .unwrap();
    let route = lab.route_to(vaddr.port());
    let install = |k: &mut Kernel, active: bool| {
        k.set_viewer(slot, &viewer(conn, peer_id, 0, 0, EPOCH, active, route))
            .unwrap()
    };
    let from_viewer = |src: SocketAddrV4, srt: &[u8], csum: Csum| {
        frame(
            &FrameSpec {
                src_mac: lab.view_if.1,
                dst_mac: lab.relay_if.1,
                src,
                dst: SocketAddrV4::new(RELAY_IP, RELAY_PORT),
                csum,
            },
            srt,
        )
    };
    let full = |csum| {
        from_viewer(
            vaddr,
            &srt_control_info(2, 42, 123_456, conn, &ack_body(7, 1000, 2500, 400)),
            csum,
        )
    };
    let run = |k: Kernel, f: Vec<u8>| test_run_in(&lab.relay(), k, f, lab.relay_if.0);

    // Not served by the kernel yet: the daemon answers, the packet passes untouched.
    install(&mut k, false);
    let f = full(Csum::Valid);
    let (k2, v, out) = run(k, f.clone());
    k = k2;
    assert_eq!((v, out), (0, f));
    assert_eq!(k.viewer_acks(slot).last_ns, 0, "nothing recorded");

    install(&mut k, true);
    for (csum, words) in [
        (Csum::Valid, 7),
        (Csum::Zero, 7),
        (Csum::Valid, 4),
        (Csum::Valid, 6),
    ] {
        let before = monotonic_ns();
        let f = from_viewer(
            vaddr,
            &srt_control_info(2, 42, 123_456, conn, &ack_body(words, 1000, 2500, 400)),
            csum,
        );
        let (k2, v, out) = run(k, f);
        k = k2;
        let after = monotonic_ns();
        assert_eq!(v, 7, "TC_ACT_REDIRECT ({csum:?}, {words} words)");
        assert_eq!(out.len(), 14 + 20 + 8 + 20, "trimmed to an ACKACK");
        assert_eq!(&out[..6], &lab.view_if.1, "to the viewer's MAC");
        assert_eq!(&out[6..12], &lab.relay_if.1, "from the relay's MAC");
        let ip = &out[14..34];
        assert_eq!(ip_checksum_residue(ip), 0, "IPv4 checksum");
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 48, "IPv4 total length");
        assert_eq!((ip[8], ip[9]), (64, 17), "TTL, protocol");
        assert_eq!(&ip[12..16], &RELAY_IP.octets());
        assert_eq!(&ip[16..20], &VIEW_IP.octets());
        let udp = &out[34..];
        let times = (start_ns, before, after);
        assert_ackack(udp, vaddr.port(), peer_id, times);
        if csum == Csum::Zero {
            assert_eq!(&udp[6..8], &[0, 0], "no checksum stays no checksum");
        } else {
            assert_eq!(
                udp_checksum_residue(RELAY_IP, VIEW_IP, udp),
                0,
                "UDP checksum"
            );
        }
    }
    let a = k.viewer_acks(slot);
    assert_eq!(
        (a.ack_seq, a.ack_no, a.rtt_us, a.rtt_var_us, a.avail_buf),
        (1000, 42, 2500, 400, 8000)
    );
    assert_eq!(
        (a.recv_rate_pps, a.link_cap_pps, a.recv_rate_bps),
        (380, 10_000, 500_000)
    );
    let n = k.viewer_counts(slot);
    assert_eq!((n.acks, n.light_acks), (4, 0));
    assert_eq!(
        n.ack_bytes,
        2 * (16 + 28) + (16 + 16) + (16 + 24),
        "SRT bytes of the four ACKs"
    );

    // A light ACK is recorded and consumed, nothing answered; figures stay.
    let light = from_viewer(
        vaddr,
        &srt_control_info(2, 0, 1, conn, &ack_body(1, 1064, 0, 0)),
        Csum::Valid,
    );
    let (k2, v, _) = run(k, light);
    k = k2;
    assert_eq!(v, 2, "TC_ACT_SHOT");
    let a = k.viewer_acks(slot);
    assert_eq!((a.ack_seq, a.ack_no, a.rtt_us), (1064, 42, 2500));
    assert_eq!(k.viewer_counts(slot).light_acks, 1);

    // Everything else from the viewer goes to the daemon untouched: NAK, keepalive,
    // SHUTDOWN, an ACK of a size libsrt never sends, an ACK from another port.
    let others = [
        from_viewer(vaddr, &srt_control(3, 1, conn, &[0, 0, 0, 9]), Csum::Valid),
        from_viewer(vaddr, &srt_control(1, 1, conn, &[0; 4]), Csum::Valid),
        from_viewer(vaddr, &srt_control(5, 1, conn, &[0; 4]), Csum::Valid),
        from_viewer(vaddr, &srt_control(2, 1, conn, &[0; 8]), Csum::Valid),
        from_viewer(
            SocketAddrV4::new(VIEW_IP, 40_001),
            &srt_control_info(2, 43, 1, conn, &ack_body(7, 2000, 1, 1)),
            Csum::Valid,
        ),
    ];
    for f in others {
        let (k2, v, out) = run(k, f.clone());
        k = k2;
        assert_eq!((v, out), (0, f));
    }
    let c = k.counters();
    assert_eq!((c.acks_answered, c.light_acks, c.ack_failures), (4, 1, 0));
    assert_eq!(
        k.viewer_acks(slot).ack_seq,
        1064,
        "the stranger's ACK recorded nothing"
    );
}

/// The UDP datagram of an ACKACK the program made from ACK number 42 of the viewer at
/// port `vport` (socket `peer_id`), between `before` and `after` on the connection's clock
/// (`times`: its start, before, after, CLOCK_MONOTONIC ns): ports swapped, 28 bytes,
/// control type 6, the ACK number echoed, a timestamp in the viewer's time base.
fn assert_ackack(udp: &[u8], vport: u16, peer_id: u32, (start_ns, before, after): (u64, u64, u64)) {
    assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), RELAY_PORT);
    assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), vport);
    assert_eq!(u16::from_be_bytes([udp[4], udp[5]]), 28, "UDP length");
    let srt = &udp[8..];
    assert_eq!(be32(srt, 0), 0x8006_0000, "control type 6");
    assert_eq!(be32(srt, 4), 42, "ACK number echoed");
    let ts = u64::from(be32(srt, 8));
    let (lo, hi) = ((before - start_ns) / 1000, (after - start_ns) / 1000);
    assert!(
        (lo..=hi).contains(&ts),
        "timestamp {ts} in the viewer's time base [{lo}, {hi}]"
    );
    assert_eq!(be32(srt, 12), peer_id, "to the viewer's socket");
    assert_eq!(be32(srt, 16), 0);
}

#[test]
fn route_is_learned_from_the_viewers_own_packets() {
    let Some(obj) = object_or_skip("route_is_learned_from_the_viewers_own_packets") else {
        return;
    };
    let lab = Lab::new();
    let mut k = load(&obj, 1);
    install_publisher(&mut k, 0);
    let sock = udp_in(&lab.view(), SocketAddrV4::new(VIEW_IP, 0), None);
    let vaddr = match sock.local_addr().unwrap() {
        SocketAddr::V4(a) => a,
        _ => unreachable!(),
    };
    let conn = 0x00AB_CDEF;
    k.set_viewer_conn(
        conn,
        ViewerConn {
            slot: 0,
            peer_ip: raw_ip(*vaddr.ip()),
            peer_port: raw_port(vaddr.port()),
            ..ViewerConn::default()
        },
    )
    .unwrap();
    let ack = |src: SocketAddrV4| {
        frame(
            &FrameSpec {
                src_mac: lab.view_if.1,
                dst_mac: lab.relay_if.1,
                src,
                dst: SocketAddrV4::new(RELAY_IP, RELAY_PORT),
                csum: Csum::Valid,
            },
            &srt_control(2, 1, conn, &[0; 24]),
        )
    };
    // From another port of the same host: not this viewer.
    let stranger = ack(SocketAddrV4::new(VIEW_IP, vaddr.port().wrapping_add(1)));
    let (k2, v, out) = test_run_in(&lab.relay(), k, stranger.clone(), lab.relay_if.0);
    k = k2;
    assert_eq!((v, out), (0, stranger));
    assert!(k.route(conn).is_none());
    let own = ack(vaddr);
    let (k2, v, out) = test_run_in(&lab.relay(), k, own.clone(), lab.relay_if.0);
    k = k2;
    assert_eq!(
        (v, out),
        (0, own),
        "a viewer's control packet passes untouched"
    );
    let route = k.route(conn).expect("route learned");
    assert_eq!(route, lab.route_to(vaddr.port()));

    // The learned route carries a clone to the viewer.
    k.set_viewer(0, &viewer(conn, 0x77, 3, 4, EPOCH, true, route))
        .unwrap();
    k.set_stream_slots(0, 1).unwrap();
    let f = lab.pub_frame(
        &srt_data(10, 1, false, 20, PUB_ID, &payload(188, 3)),
        Csum::Valid,
    );
    let (_k, v, out) = test_run_in(&lab.relay(), k, f.clone(), lab.relay_if.0);
    assert_eq!((v, out), (0, f));
    let got = drain(&sock, Duration::from_millis(300));
    assert_eq!(got.len(), 1);
    assert_eq!(
        parse_data(&got[0].0),
        DataHdr {
            seq: 13,
            word1: 0xC000_0001,
            ts: 24,
            dest: 0x77
        }
    );
}

/// Attached for real (tcx) on `iface` in `ns`: a viewer socket teaches the route with its
/// own control packet, a publisher socket sends data; the viewer gets the clone and the
/// relay's socket gets the original, unchanged.
/// Where a client socket lives: namespace and address.
#[derive(Clone, Copy)]
struct At<'a> {
    ns: &'a str,
    ip: Ipv4Addr,
}

#[allow(clippy::too_many_arguments)]
fn attached_round_trip(
    ns_relay: &str,
    ifaces: &[&str],
    relay: SocketAddrV4,
    viewer_at: At<'_>,
    publisher_at: At<'_>,
    lo_accept_local: bool,
    expect_clones: bool,
    obj: &std::path::Path,
) {
    let k = load(obj, 1);
    let mut k = in_netns(ns_relay, {
        let ifaces: Vec<String> = ifaces.iter().map(|s| s.to_string()).collect();
        move || {
            let mut k = k;
            for iface in &ifaces {
                k.attach(iface).expect("tcx attach");
            }
            k
        }
    });
    let iface = ifaces.join("+");
    let relay_sock = udp_in(ns_relay, relay, None);
    let view = udp_in(viewer_at.ns, SocketAddrV4::new(viewer_at.ip, 0), None);
    let publ = udp_in(publisher_at.ns, SocketAddrV4::new(publisher_at.ip, 0), None);
    let addr = |s: &UdpSocket| match s.local_addr().unwrap() {
        SocketAddr::V4(a) => a,
        _ => unreachable!(),
    };
    let (vaddr, paddr) = (addr(&view), addr(&publ));
    k.set_relay(SocketAddr::V4(relay)).unwrap();
    k.set_lo_accept_local(lo_accept_local).unwrap();
    let pub_id = 0x0001_0001;
    k.set_publisher(
        pub_id,
        PublisherEntry {
            epoch: 1,
            stream: 0,
            src_ip: raw_ip(*paddr.ip()),
            src_port: raw_port(paddr.port()),
            _pad: 0,
        },
    )
    .unwrap();
    let conn = 0x0002_0002;
    k.set_viewer_conn(
        conn,
        ViewerConn {
            slot: 0,
            peer_ip: raw_ip(*vaddr.ip()),
            peer_port: raw_port(vaddr.port()),
            ..ViewerConn::default()
        },
    )
    .unwrap();
    view.send_to(&srt_control(2, 5, conn, &[0; 24]), relay)
        .unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = relay_sock
        .recv_from(&mut buf)
        .expect("relay socket gets the ACK");
    assert_eq!((n, from), (40, SocketAddr::V4(vaddr)));
    let mut route = None;
    assert!(wait_until(Duration::from_secs(2), || {
        route = k.route(conn);
        route.is_some()
    }));
    let route = route.unwrap();
    eprintln!("{iface}: learned route {route:?}");
    k.set_viewer(0, &viewer(conn, 0x4242, 100, 1000, 1, true, route))
        .unwrap();
    k.set_stream_slots(0, 1).unwrap();

    let body = payload(1316, 5);
    for seq in 0..20u32 {
        let pkt = srt_data(seq, seq + 1, false, seq * 10, pub_id, &body);
        publ.send_to(&pkt, relay).unwrap();
        let (n, from) = relay_sock
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("the original reaches the relay: {e}; {:?}", k.counters()));
        assert_eq!(from, SocketAddr::V4(paddr));
        assert_eq!(&buf[..n], &pkt[..], "original unchanged");
        if !expect_clones {
            view.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            assert!(view.recv_from(&mut buf).is_err(), "no clone expected");
            continue;
        }
        let (n, from) = view
            .recv_from(&mut buf)
            .expect("the clone reaches the viewer");
        assert_eq!(
            from,
            SocketAddr::V4(relay),
            "clone comes from the relay's address"
        );
        assert_eq!(
            parse_data(&buf[..n]),
            DataHdr {
                seq: seq + 100,
                word1: 0xC000_0000 | (seq + 1),
                ts: seq * 10 + 1000,
                dest: 0x4242
            }
        );
        assert_eq!(&buf[16..n], &body[..]);
    }
    let c = k.counters();
    let clones = if expect_clones { 20 } else { 0 };
    assert_eq!(
        (c.packets_seen, c.clones, c.clone_failures),
        (20, clones, 0)
    );
    assert_eq!(c.loopback_skipped, 20 - clones);

    // The viewer is served by the kernel now: its full ACK comes back as the ACKACK, from
    // the relay's address, and never reaches the relay's socket; its NAK does.
    let ack = srt_control_info(2, 77, 9, conn, &ack_body(7, 130, 1200, 300));
    view.send_to(&ack, relay).unwrap();
    view.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let (n, from) = view
        .recv_from(&mut buf)
        .expect("the viewer gets the ACKACK");
    assert_eq!(from, SocketAddr::V4(relay));
    assert_eq!(n, 20);
    assert_eq!(be32(&buf, 0), 0x8006_0000, "ACKACK");
    assert_eq!(be32(&buf, 4), 77, "ACK number echoed");
    assert_eq!((be32(&buf, 12), be32(&buf, 16)), (0x4242, 0));
    let nak = srt_control(3, 10, conn, &[0, 0, 0, 5]);
    view.send_to(&nak, relay).unwrap();
    let (n, _) = relay_sock
        .recv_from(&mut buf)
        .expect("the NAK reaches the relay");
    assert_eq!(&buf[..n], &nak[..], "only the NAK reached the relay socket");
    let c = k.counters();
    assert_eq!((c.acks_answered, c.ack_failures), (1, 0));
    drop(k);
    // Detached on drop: nothing of ours stays on the interfaces.
    let left: usize = in_netns(ns_relay, {
        let ifaces: Vec<String> = ifaces.iter().map(|s| s.to_string()).collect();
        move || {
            ifaces
                .iter()
                .map(|i| {
                    aya::programs::SchedClassifier::query_tcx(
                        i,
                        aya::programs::TcAttachType::Ingress,
                    )
                    .map(|(_, progs)| progs.len())
                    .unwrap_or(0)
                })
                .sum()
        }
    });
    assert_eq!(left, 0, "program still attached to {iface} after drop");
}

#[test]
fn attached_program_clones_on_veth_and_on_loopback() {
    let Some(obj) = object_or_skip("attached_program_clones_on_veth_and_on_loopback") else {
        return;
    };
    let lab = Lab::new();
    let (relay_ns, view_ns) = (lab.relay(), lab.view());
    let remote = At {
        ns: &view_ns,
        ip: VIEW_IP,
    };
    let local = At {
        ns: &relay_ns,
        ip: RELAY_IP,
    };
    let relay = SocketAddrV4::new(RELAY_IP, RELAY_PORT);
    // Viewer and publisher behind the veth.
    attached_round_trip(
        &relay_ns,
        &["veth0a"],
        relay,
        remote,
        remote,
        false,
        true,
        &obj,
    );
    // Publisher behind the veth, viewer on the relay's host (its packets come in on `lo`).
    // A clone of a packet that came in on the veth carries no route, and `lo` drops a
    // packet with a local source and no route as a martian (IP_LOCAL_SOURCE): the program
    // leaves such viewers alone...
    attached_round_trip(
        &relay_ns,
        &["veth0a", "lo"],
        relay,
        local,
        remote,
        false,
        false,
        &obj,
    );
    // ...unless `lo` accepts local sources.
    run(
        "ip",
        &[
            "netns",
            "exec",
            &relay_ns,
            "sysctl",
            "-qw",
            "net.ipv4.conf.lo.accept_local=1",
        ],
    )
    .expect("sysctl");
    attached_round_trip(
        &relay_ns,
        &["veth0a", "lo"],
        relay,
        local,
        remote,
        true,
        true,
        &obj,
    );
    // Everything on one host: the clone goes out of `lo` (egress) and comes back in to
    // the viewer's socket.
    let solo = Netns::create(&["solo"]);
    let here = At {
        ns: solo.name("solo"),
        ip: Ipv4Addr::LOCALHOST,
    };
    attached_round_trip(
        solo.name("solo"),
        &["lo"],
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, RELAY_PORT),
        here,
        here,
        false,
        true,
        &obj,
    );
}

const RELAY_IP6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xfd88, 0, 0, 0, 0, 0, 0, 1);
const VIEW_IP6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xfd88, 0, 0, 0, 0, 0, 0, 2);
const PUB_SRC6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xfd88, 0, 0, 5, 0, 0, 0, 5);

impl Lab {
    /// The lab with IPv6 addresses on both ends of its link.
    fn new6() -> Lab {
        let lab = Lab::new();
        for (ns, dev, addr) in [
            (lab.relay(), "veth0a", "fd88::1/64"),
            (lab.view(), "veth0b", "fd88::2/64"),
        ] {
            run("ip", &["-n", &ns, "addr", "add", addr, "dev", dev, "nodad"]).expect("ip addr");
        }
        lab
    }

    /// The route an IPv6 viewer at [VIEW_IP6]:`port` has, as the program would learn it.
    fn route6_to(&self, port: u16) -> Route {
        Route {
            ifindex: self.relay_if.0,
            family: stsync_common::maps::FAMILY_V6,
            relay_ip: raw_ip(RELAY_IP6),
            viewer_ip: raw_ip(VIEW_IP6),
            relay_port: raw_port(RELAY_PORT),
            viewer_port: raw_port(port),
            relay_mac: self.relay_if.1,
            viewer_mac: self.view_if.1,
        }
    }
}

/// The relay on `[::]`: both families.
fn set_relay_dual_stack(k: &mut Kernel) {
    let any = std::net::SocketAddrV6::new(std::net::Ipv6Addr::UNSPECIFIED, RELAY_PORT, 0, 0);
    k.set_relay(SocketAddr::V6(any)).unwrap();
}

/// The IPv6 publisher at [PUB_SRC6]:5000, stream 0.
fn install_publisher6(k: &mut Kernel) {
    k.set_publisher(
        PUB_ID,
        PublisherEntry {
            epoch: EPOCH,
            stream: 0,
            src_ip: raw_ip(PUB_SRC6),
            src_port: raw_port(5000),
            _pad: 0,
        },
    )
    .unwrap();
}

/// A UDP socket on [`ip`]:0 inside namespace `ns`.
fn udp6_in(ns: &str, ip: std::net::Ipv6Addr) -> UdpSocket {
    let sock = in_netns(ns, move || {
        UdpSocket::bind((ip, 0)).expect("bind UDP (IPv6) in netns")
    });
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    sock
}

/// An IPv6 publisher's data packet: cloned to each active IPv6 viewer, rewritten (MACs,
/// addresses, ports, SRT fields) with a valid UDP checksum, which IPv6 requires, and to
/// the IPv4 viewer converted (a fresh IPv4 header with a valid checksum, the UDP checksum
/// moved to the IPv4 pseudo header); the original restored byte for byte.
#[test]
fn ipv6_data_packet_is_cloned_to_each_ipv6_viewer() {
    let Some(obj) = object_or_skip("ipv6_data_packet_is_cloned_to_each_ipv6_viewer") else {
        return;
    };
    let lab = Lab::new6();
    let mut k = load(&obj, 1);
    set_relay_dual_stack(&mut k);
    let pub_src = std::net::SocketAddrV6::new(PUB_SRC6, 5000, 0, 0);
    install_publisher6(&mut k);
    // (active, family): three IPv6 viewers, one inactive, one IPv4 viewer.
    let layout = [(true, 6), (true, 6), (false, 6), (true, 4), (true, 6)];
    let mut viewers = Vec::new();
    for (i, &(active, family)) in layout.iter().enumerate() {
        let (sock, route) = if family == 6 {
            let sock = udp6_in(&lab.view(), VIEW_IP6);
            let port = sock.local_addr().unwrap().port();
            (sock, lab.route6_to(port))
        } else {
            let sock = udp_in(&lab.view(), SocketAddrV4::new(VIEW_IP, 0), None);
            let port = sock.local_addr().unwrap().port();
            (sock, lab.route_to(port))
        };
        let e = viewer(
            0x6000 + i as u32,
            0x0200_0000 + i as u32,
            1000 * i as u32,
            77 * i as u32,
            EPOCH,
            active,
            route,
        );
        k.set_viewer(i as u32, &e).unwrap();
        k.reset_viewer(i as u32);
        viewers.push((sock, e, active));
    }
    k.set_stream(
        0,
        stsync_common::maps::StreamEntry {
            slots: layout.len() as u32,
            delay_us: 0,
            families: stsync_common::maps::FAMILY_V4 | stsync_common::maps::FAMILY_V6,
            _pad: 0,
        },
    )
    .unwrap();
    let cap = RawCapture::open(&lab.view(), "veth0b");
    let dst = std::net::SocketAddrV6::new(RELAY_IP6, RELAY_PORT, 0, 0);
    for (n, &(seq, ts, rexmit)) in [(500u32, 9000u32, false), (0x7FFF_FFFE, 3, true)]
        .iter()
        .enumerate()
    {
        let body = payload(1316, n as u8);
        let srt = srt_data(seq, 7 + n as u32, rexmit, ts, PUB_ID, &body);
        let f = frame6(
            [0x02, 0, 0, 0, 0, 0x55],
            lab.relay_if.1,
            pub_src,
            dst,
            &[],
            &srt,
        );
        let (k2, verdict, out) = test_run_in(&lab.relay(), k, f.clone(), lab.relay_if.0);
        k = k2;
        assert_eq!(verdict, 0, "case {n}: TC_ACT_OK");
        assert_eq!(out, f, "case {n}: the original restored byte for byte");
        for (i, (sock, e, served)) in viewers.iter().enumerate() {
            let got = drain(sock, Duration::from_millis(200));
            if !served {
                assert!(got.is_empty(), "case {n}: viewer {i} must get nothing");
                continue;
            }
            assert_eq!(
                got.len(),
                1,
                "case {n}: viewer {i}: one clone, {:?}",
                k.counters()
            );
            let (d, from) = &got[0];
            let relay = if layout[i].1 == 6 {
                SocketAddr::V6(std::net::SocketAddrV6::new(RELAY_IP6, RELAY_PORT, 0, 0))
            } else {
                SocketAddr::V4(SocketAddrV4::new(RELAY_IP, RELAY_PORT))
            };
            assert_eq!(*from, relay, "case {n} viewer {i}: source");
            let h = parse_data(d);
            assert_eq!(
                h.seq,
                seq.wrapping_add(e.seq_off) & 0x7FFF_FFFF,
                "case {n} viewer {i}: seq"
            );
            assert_eq!(
                h.ts,
                ts.wrapping_add(e.ts_off),
                "case {n} viewer {i}: timestamp"
            );
            assert_eq!(h.dest, e.peer_id, "case {n} viewer {i}: destination");
            assert_eq!(
                h.word1,
                0xC000_0000 | (7 + n as u32),
                "case {n} viewer {i}: R flag cleared"
            );
            assert_eq!(&d[16..], &body[..], "case {n} viewer {i}: payload");
        }
        let ports: Vec<u16> = viewers
            .iter()
            .map(|(s, _, _)| s.local_addr().unwrap().port())
            .collect();
        let (frames4, frames) = cap.udp46_frames_to(&ports);
        assert_eq!(frames.len(), 3, "case {n}: IPv6 frames on the wire");
        assert_eq!(
            frames4.len(),
            1,
            "case {n}: the converted IPv4 frame on the wire"
        );
        for fr in &frames4 {
            assert_eq!(
                ip_checksum_residue(&fr[ETH_LEN..ETH_LEN + IP_LEN]),
                0,
                "IPv4 header checksum"
            );
            assert_eq!(fr[ETH_LEN + 8], 64, "TTL");
            let udp = &fr[ETH_LEN + IP_LEN..];
            assert_ne!(
                u16::from_be_bytes([udp[6], udp[7]]),
                0,
                "case {n}: UDP checksum kept"
            );
            assert_eq!(
                udp_checksum_residue(RELAY_IP, VIEW_IP, udp),
                0,
                "case {n}: UDP checksum"
            );
        }
        for fr in &frames {
            assert_eq!(fr[0..6], lab.view_if.1, "destination MAC");
            assert_eq!(fr[6..12], lab.relay_if.1, "source MAC");
            let (src, dst): ([u8; 16], [u8; 16]) = (
                fr[22..38].try_into().unwrap(),
                fr[38..54].try_into().unwrap(),
            );
            assert_eq!((src, dst), (RELAY_IP6.octets(), VIEW_IP6.octets()));
            let udp = &fr[54..];
            assert_eq!(
                u16::from_be_bytes([fr[18], fr[19]]) as usize,
                udp.len(),
                "payload length"
            );
            assert_ne!(
                u16::from_be_bytes([udp[6], udp[7]]),
                0,
                "case {n}: IPv6 UDP checksum set"
            );
            assert_eq!(
                udp6_checksum_residue(&src, &dst, udp),
                0,
                "case {n}: IPv6 UDP checksum"
            );
        }
    }
    let c = k.counters();
    assert_eq!(
        (c.clones, c.clone_failures, c.packets_seen),
        (8, 0, 2),
        "{c:?}"
    );
}

/// An IPv4 publisher's packet to an IPv4 and an IPv6 viewer: the IPv6 viewer's clone is
/// converted with a valid UDP checksum. Not converted (counted, the original intact): a
/// packet without a UDP checksum (IPv6 requires one) and one that would exceed 1500
/// bytes as IPv6, which also marks the stream for the daemon.
#[test]
fn ipv4_publisher_packet_is_converted_for_an_ipv6_viewer() {
    let Some(obj) = object_or_skip("ipv4_publisher_packet_is_converted_for_an_ipv6_viewer") else {
        return;
    };
    let lab = Lab::new6();
    let mut k = load(&obj, 1);
    set_relay_dual_stack(&mut k);
    install_publisher_at(&mut k, 0);
    let s4 = udp_in(&lab.view(), SocketAddrV4::new(VIEW_IP, 0), None);
    let s6 = udp6_in(&lab.view(), VIEW_IP6);
    let (p4, p6) = (
        s4.local_addr().unwrap().port(),
        s6.local_addr().unwrap().port(),
    );
    k.set_viewer(
        0,
        &viewer(0x7000, 0x100, 5, 6, EPOCH, true, lab.route_to(p4)),
    )
    .unwrap();
    k.set_viewer(
        1,
        &viewer(0x7001, 0x101, 7, 8, EPOCH, true, lab.route6_to(p6)),
    )
    .unwrap();
    k.set_stream_slots(0, 2).unwrap();
    let cap = RawCapture::open(&lab.view(), "veth0b");
    // (SRT payload bytes, UDP checksum, the IPv6 viewer gets it): 1436 makes exactly 1500
    // bytes of IPv6.
    let cases = [
        (1316, Csum::Valid, true),
        (1316, Csum::Zero, false),
        (1436, Csum::Valid, true),
        (1437, Csum::Valid, false),
    ];
    let mut skipped = 0;
    for (n, &(len, csum, v6_served)) in cases.iter().enumerate() {
        let body = payload(len, n as u8);
        let srt = srt_data(100 + n as u32, 1, false, 50, PUB_ID, &body);
        let f = lab.pub_frame(&srt, csum);
        let (k2, verdict, out) = test_run_in(&lab.relay(), k, f.clone(), lab.relay_if.0);
        k = k2;
        assert_eq!(verdict, 0, "case {n}");
        assert_eq!(out, f, "case {n}: the original restored byte for byte");
        assert_eq!(
            drain(&s4, Duration::from_millis(200)).len(),
            1,
            "case {n}: IPv4 viewer"
        );
        let got6 = drain(&s6, Duration::from_millis(200));
        let (_, frames6) = cap.udp46_frames_to(&[p4, p6]);
        if !v6_served {
            skipped += 1;
            assert!(got6.is_empty(), "case {n}: the IPv6 viewer gets nothing");
            continue;
        }
        assert_eq!(got6.len(), 1, "case {n}: the IPv6 viewer's clone");
        assert_eq!(&got6[0].0[16..], &body[..], "case {n}: payload");
        assert_eq!(frames6.len(), 1, "case {n}");
        let fr = &frames6[0];
        let (src, dst): ([u8; 16], [u8; 16]) = (
            fr[22..38].try_into().unwrap(),
            fr[38..54].try_into().unwrap(),
        );
        assert_eq!(
            udp6_checksum_residue(&src, &dst, &fr[54..]),
            0,
            "case {n}: checksum"
        );
        assert_eq!(fr.len() - 14, 40 + 8 + 16 + len, "case {n}: IPv6 length");
    }
    let c = k.counters();
    assert_eq!(c.cross_family_skipped, skipped, "{c:?}");
    assert_eq!(c.restore_failures, 0, "{c:?}");
    assert!(k.cross_blocked(0), "the oversize packet marks the stream");
    k.clear_cross_blocked(0);
    assert!(!k.cross_blocked(0));
}

fn install_publisher_at(k: &mut Kernel, stream: u32) {
    k.set_publisher(
        PUB_ID,
        PublisherEntry {
            epoch: EPOCH,
            stream,
            src_ip: raw_ip(*PUB_SRC.ip()),
            src_port: raw_port(PUB_SRC.port()),
            _pad: 0,
        },
    )
    .unwrap();
}

/// A kernel-served IPv6 viewer's full ACK becomes its ACKACK in place: addresses and
/// ports swapped, payload length 28, hop limit 64, a valid UDP checksum; its light ACK
/// is recorded and dropped; a NAK passes to the daemon.
#[test]
fn ipv6_viewer_ack_becomes_an_exact_ackack() {
    let Some(obj) = object_or_skip("ipv6_viewer_ack_becomes_an_exact_ackack") else {
        return;
    };
    let lab = Lab::new6();
    let mut k = load(&obj, 1);
    set_relay_dual_stack(&mut k);
    let (conn, peer_id, slot, vport) = (0x00AB_0006, 0x0000_6666, 3, 40_006);
    let start_ns = monotonic_ns() - 2_000_000_000;
    k.set_viewer_conn(
        conn,
        ViewerConn {
            start_ns,
            slot,
            peer_ip: raw_ip(VIEW_IP6),
            peer_port: raw_port(vport),
            ..ViewerConn::default()
        },
    )
    .unwrap();
    let route = lab.route6_to(vport);
    k.set_viewer(slot, &viewer(conn, peer_id, 0, 0, EPOCH, true, route))
        .unwrap();
    let from_viewer = |srt: &[u8]| {
        frame6(
            lab.view_if.1,
            lab.relay_if.1,
            std::net::SocketAddrV6::new(VIEW_IP6, vport, 0, 0),
            std::net::SocketAddrV6::new(RELAY_IP6, RELAY_PORT, 0, 0),
            &[],
            srt,
        )
    };
    let run = |k: Kernel, f: Vec<u8>| test_run_in(&lab.relay(), k, f, lab.relay_if.0);
    for words in [7, 4] {
        let before = monotonic_ns();
        let f = from_viewer(&srt_control_info(
            2,
            42,
            9,
            conn,
            &ack_body(words, 1000, 2500, 400),
        ));
        let (k2, v, out) = run(k, f);
        k = k2;
        let after = monotonic_ns();
        assert_eq!(v, 7, "TC_ACT_REDIRECT ({words} words)");
        assert_eq!(out.len(), 14 + 40 + 8 + 20, "trimmed to an ACKACK");
        assert_eq!(&out[..6], &lab.view_if.1, "to the viewer's MAC");
        assert_eq!(&out[6..12], &lab.relay_if.1, "from the relay's MAC");
        assert_eq!(&out[12..14], &[0x86, 0xDD]);
        let ip = &out[14..54];
        assert_eq!(u16::from_be_bytes([ip[4], ip[5]]), 28, "payload length");
        assert_eq!((ip[6], ip[7]), (17, 64), "next header, hop limit");
        assert_eq!(&ip[8..24], &RELAY_IP6.octets());
        assert_eq!(&ip[24..40], &VIEW_IP6.octets());
        let udp = &out[54..];
        assert_ackack(udp, vport, peer_id, (start_ns, before, after));
        assert_eq!(
            udp6_checksum_residue(&RELAY_IP6.octets(), &VIEW_IP6.octets(), udp),
            0,
            "UDP checksum"
        );
    }
    let a = k.viewer_acks(slot);
    assert_eq!((a.ack_seq, a.ack_no, a.rtt_us), (1000, 42, 2500));
    let (k2, v, _) = run(
        k,
        from_viewer(&srt_control_info(2, 0, 1, conn, &ack_body(1, 1064, 0, 0))),
    );
    k = k2;
    assert_eq!(v, 2, "a light ACK: TC_ACT_SHOT");
    assert_eq!(k.viewer_acks(slot).ack_seq, 1064);
    let nak = from_viewer(&srt_control(3, 1, conn, &[0, 0, 0, 9]));
    let (k2, v, out) = run(k, nak.clone());
    k = k2;
    assert_eq!((v, out), (0, nak), "a NAK goes to the daemon untouched");
    let c = k.counters();
    assert_eq!((c.acks_answered, c.light_acks, c.ack_failures), (2, 1, 0));
}

/// IPv6 datagrams for the relay with extension headers before UDP, and first fragments of
/// either family, go to the daemon unmodified, counted by reason; a frame cut inside its
/// UDP header passes uncounted; none is cloned.
#[test]
fn ipv6_extension_headers_and_fragments_pass_counted_by_reason() {
    let Some(obj) = object_or_skip("ipv6_extension_headers_and_fragments_pass_counted_by_reason")
    else {
        return;
    };
    let lab = Lab::new6();
    let mut k = load(&obj, 1);
    set_relay_dual_stack(&mut k);
    install_publisher6(&mut k);
    let s6 = udp6_in(&lab.view(), VIEW_IP6);
    let p6 = s6.local_addr().unwrap().port();
    k.set_viewer(
        0,
        &viewer(0x8000, 0x1, 0, 0, EPOCH, true, lab.route6_to(p6)),
    )
    .unwrap();
    k.set_stream_slots(0, 1).unwrap();
    let body = payload(1316, 3);
    let data = srt_data(5, 1, false, 10, PUB_ID, &body);
    let v6 = |exts: &[(u8, usize)]| {
        frame6(
            [0x02, 0, 0, 0, 0, 0x55],
            lab.relay_if.1,
            std::net::SocketAddrV6::new(PUB_SRC6, 5000, 0, 0),
            std::net::SocketAddrV6::new(RELAY_IP6, RELAY_PORT, 0, 0),
            exts,
            &data,
        )
    };
    // An IPv4 first fragment (more fragments follow) to the relay's port.
    let mut frag4 = lab.pub_frame(&data, Csum::Valid);
    frag4[ETH_LEN + 6] |= 0x20;
    frag4[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&[0, 0]);
    let c = !ip_checksum_residue(&frag4[ETH_LEN..ETH_LEN + IP_LEN]);
    frag4[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&c.to_be_bytes());
    // (what, frame, extension-header count, fragment count)
    let cases = [
        (
            "hop-by-hop + destination options",
            v6(&[(0, 8), (60, 16)]),
            1,
            0,
        ),
        ("a routing header", v6(&[(43, 24)]), 1, 0),
        ("an IPv6 first fragment", v6(&[(44, 8)]), 0, 1),
        ("hop-by-hop, then a fragment", v6(&[(0, 8), (44, 8)]), 0, 1),
        (
            "cut inside its UDP header",
            v6(&[])[..14 + 40 + 4].to_vec(),
            0,
            0,
        ),
        ("an IPv4 first fragment", frag4, 0, 1),
    ];
    for (what, f, ext, frag) in cases {
        let before = k.counters();
        let (k2, verdict, out) = test_run_in(&lab.relay(), k, f.clone(), lab.relay_if.0);
        k = k2;
        assert_eq!(verdict, 0, "{what}");
        assert_eq!(out, f, "{what}: unmodified");
        let after = k.counters();
        assert_eq!(after.v6_ext_headers - before.v6_ext_headers, ext, "{what}");
        assert_eq!(after.fragments - before.fragments, frag, "{what}");
        assert_eq!(after.clones, before.clones, "{what}: no clone");
    }
    assert!(drain(&s6, Duration::from_millis(200)).is_empty());
    // The same datagram without extension headers is the kernel's.
    let (k2, _, _) = test_run_in(&lab.relay(), k, v6(&[]), lab.relay_if.0);
    assert_eq!(k2.counters().clones, 1);
    assert_eq!(drain(&s6, Duration::from_millis(200)).len(), 1);
}
