//! Checks of the test harness itself (no relay needed): the TS aligner and run matcher on
//! the generated clip, the continuity check, the Prometheus parser, the netns guard and
//! nft loss rule, and the real clients through libsrt's own srt-live-transmit acting as a
//! stand-in relay.

mod common;

use common::*;
use std::net::UdpSocket;
use std::process::Stdio;
use std::time::Duration;

fn chunks(b: &[u8]) -> Vec<&[u8]> {
    b.chunks(SLT_CHUNK).collect()
}

fn must_fail(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(f);
    std::panic::set_hook(prev);
    match r {
        Ok(()) => panic!("check passed but should have failed"),
        Err(e) => e.downcast_ref::<String>().cloned().unwrap_or_default(),
    }
}

#[test]
fn clip_is_aligned_and_cut_to_whole_chunks() {
    let c = clip();
    assert_eq!(c.bytes.len() % CLIP_QUANTUM, 0);
    assert_eq!(c.bytes.len() % SLT_CHUNK, 0);
    let al = ts_align(&c.bytes);
    assert_eq!(al.packets.len(), c.n_packets());
    assert_eq!((al.resyncs, al.skipped_bytes), (0, 0));
    // No null packets: assert_contiguous ignores them (they only pad `Clip::padded`).
    assert!(al
        .packets
        .iter()
        .all(|p| !(p[1] & 0x1f == 0x1f && p[2] == 0xff)));
    let dir = TempDir::new("selftest-pad");
    let padded = c.padded(&dir, 0.5);
    assert_eq!(padded.bytes.len() % CLIP_QUANTUM, 0);
    assert!(padded.bytes.len() > c.bytes.len());
    assert_contiguous(
        "padded clip",
        &padded.bytes,
        c,
        Expect {
            from_start: true,
            to_end: true,
            min_packets: c.n_packets(),
        },
    );
    eprintln!(
        "clip {} bytes, {} packets, {:.2} s at {} B/s",
        c.bytes.len(),
        c.n_packets(),
        c.secs,
        c.rate
    );
    assert!(c.secs > 10.0 && c.secs < 13.0, "{}", c.secs);
}

#[test]
fn contiguity_check_accepts_suffix_and_rejects_holes() {
    let c = clip();
    let ch = chunks(&c.bytes);
    // A viewer that joined after 37 chunks and got everything after: passes.
    let tail: Vec<u8> = ch[37..].concat();
    let r = assert_contiguous(
        "suffix",
        &tail,
        c,
        Expect {
            from_start: false,
            to_end: true,
            min_packets: 1000,
        },
    );
    assert_eq!(r.src_start + r.len, c.n_packets());
    assert!(r.src_start > 37 * SLT_CHUNK / TS && r.src_start <= 37 * SLT_CHUNK / TS + 1);
    // The whole clip: from start to end.
    assert_contiguous(
        "whole",
        &c.bytes,
        c,
        Expect {
            from_start: true,
            to_end: true,
            min_packets: c.n_packets(),
        },
    );

    // One lost SRT payload in the middle: detected.
    let mut holed: Vec<u8> = ch[..500].concat();
    holed.extend(ch[501..].concat());
    let msg = must_fail(|| {
        assert_contiguous(
            "hole",
            &holed,
            clip(),
            Expect {
                from_start: true,
                to_end: true,
                min_packets: 1,
            },
        );
    });
    assert!(msg.contains("contiguous"), "{msg}");
    let runs = find_runs(&ts_align(&holed).packets, &c.packets());
    assert_eq!(runs.runs.len(), 2, "{}", runs.describe());

    // A payload delivered twice: detected.
    let mut dup: Vec<u8> = ch[..800].concat();
    dup.extend(ch[799..].concat());
    must_fail(|| {
        assert_contiguous(
            "dup",
            &dup,
            clip(),
            Expect {
                from_start: true,
                to_end: true,
                min_packets: 1,
            },
        );
    });

    // A single TS packet lost at an aligned position: detected.
    let mut minus1 = c.bytes[..TS * 5000].to_vec();
    minus1.extend(&c.bytes[TS * 5001..]);
    must_fail(|| {
        assert_contiguous(
            "minus1",
            &minus1,
            clip(),
            Expect {
                from_start: true,
                to_end: true,
                min_packets: 1,
            },
        );
    });

    // Stream ending early: to_end detects it.
    let short: Vec<u8> = ch[..ch.len() - 3].concat();
    must_fail(|| {
        assert_contiguous(
            "short",
            &short,
            clip(),
            Expect {
                from_start: true,
                to_end: true,
                min_packets: 1,
            },
        );
    });

    // Takeover-like: publisher A's first 900 chunks, then B from the start.
    let mut ab: Vec<u8> = ch[..900].concat();
    ab.extend(ch[..700].concat());
    let al = ts_align(&ab);
    let runs = find_runs(&al.packets, &c.packets());
    eprintln!("takeover-like: {}", runs.describe());
    assert_eq!(runs.runs.len(), 2);
    assert_eq!(runs.runs[0].src_start, 0);
    assert!(runs.runs[1].src_start <= 1);
    assert!(runs.unmatched <= 1);
}

#[test]
fn continuity_counters() {
    let c = clip();
    let p = c.packets();
    assert!(
        cc_breaks(&p).is_empty(),
        "{:?}",
        &cc_breaks(&p)[..3.min(cc_breaks(&p).len())]
    );
    // Drop the 10th packet of the video PID.
    let vid: Vec<usize> = p
        .iter()
        .enumerate()
        .filter(|(_, x)| ((x[1] as u16 & 0x1f) << 8 | x[2] as u16) == 0x100)
        .map(|(i, _)| i)
        .collect();
    let mut q = p.clone();
    q.remove(vid[10]);
    let b = cc_breaks(&q);
    assert_eq!(b.len(), 1, "{b:?}");
}

#[test]
fn prometheus_parser() {
    let text = "# HELP srt_connections_total Connections.\n# TYPE srt_connections_total counter\nsrt_connections_total 7\n\
                # HELP srt_connections_current Open.\n# TYPE srt_connections_current gauge\n\
                srt_connections_current{mode=\"handshake\"} 0\nsrt_connections_current{mode=\"request\"} 3\n\
                srt_connection_rtt{id=\"12345\"} 0.000125\nsrt_packets_dropped_total{reason=\"a \\\"b\\\"\",x=\"y\"} 1e3\n";
    assert_eq!(prom_value(text, "srt_connections_total", &[]), Some(7.0));
    assert_eq!(
        prom_value(text, "srt_connections_current", &[("mode", "request")]),
        Some(3.0)
    );
    assert_eq!(
        prom_value(text, "srt_connection_rtt", &[("id", "12345")]),
        Some(0.000125)
    );
    assert_eq!(
        prom_value(text, "srt_packets_dropped_total", &[("reason", "a \"b\"")]),
        Some(1000.0)
    );
    assert_eq!(prom_sum(text, "srt_connections_current"), 3.0);
    assert_eq!(prom_help_type(text, "srt_connections_total"), (true, true));
    assert_eq!(prom_help_type(text, "srt_connection_rtt"), (false, false));
    assert_eq!(readme_metric_names().len(), 2 + 12 + 4);
}

#[test]
fn framecrc_reference_and_matching() {
    let c = clip();
    let f = c.reference_frames();
    eprintln!("reference: {} frames", f.len());
    assert!(f.len() > 250 && f.len() <= 300, "{}", f.len());
    assert_frames("suffix", &f[40..], c, 200, 0);
    let mut bad = f[..150].to_vec();
    bad[100] ^= 1;
    must_fail(|| {
        assert_frames("corrupt", &bad, clip(), 50, 0);
    });
    // Decoding a file copy through the helper gives the same frames.
    let again = decode_frames_of_file(&c.path);
    assert_eq!(again, f);
}

#[test]
fn netns_guard_veth_and_nft_loss() {
    if !require_root("netns_guard_veth_and_nft_loss") {
        return;
    }
    let names;
    {
        let mut ns = Netns::create(&["a", "b"]);
        names = ns.names();
        ns.link("a", "10.77.1.1/24", "b", "10.77.1.2/24");
        ns.add_loss("b", "input", "udp sport 9999", 5);
        // B listens; A sends 4000 datagrams from port 9999 (the rule matches) and 1000
        // from port 9998 (it does not).
        let recv = in_netns(ns.name("b"), || {
            let s = UdpSocket::bind("10.77.1.2:5000").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            s
        });
        let (s1, s2) = in_netns(ns.name("a"), || {
            (
                UdpSocket::bind("10.77.1.1:9999").unwrap(),
                UdpSocket::bind("10.77.1.1:9998").unwrap(),
            )
        });
        let mut from = std::collections::HashMap::new();
        let mut buf = [0u8; 64];
        for i in 0..5000u32 {
            let s = if i % 5 == 4 { &s2 } else { &s1 };
            s.send_to(&i.to_be_bytes(), "10.77.1.2:5000").unwrap();
            if i % 50 == 49 {
                std::thread::sleep(Duration::from_millis(2));
            }
            while let Ok((_n, a)) = {
                recv.set_nonblocking(true).unwrap();
                recv.recv_from(&mut buf)
            } {
                *from.entry(a.port()).or_insert(0u32) += 1;
            }
        }
        recv.set_nonblocking(false).unwrap();
        while let Ok((_n, a)) = recv.recv_from(&mut buf) {
            *from.entry(a.port()).or_insert(0u32) += 1;
        }
        let got9999 = from.get(&9999).copied().unwrap_or(0);
        let got9998 = from.get(&9998).copied().unwrap_or(0);
        let dropped = ns.loss_counter("b");
        eprintln!("sport 9999: {got9999}/4000 received, nft dropped {dropped}; sport 9998: {got9998}/1000");
        assert_eq!(got9998, 1000);
        assert_eq!(got9999 as u64 + dropped, 4000);
        assert!(
            (100..=320).contains(&dropped),
            "5 % of 4000 should be ~200, got {dropped}"
        );
    }
    let list = run("ip", &["netns", "list"]).unwrap();
    for n in names {
        assert!(!list.contains(&n), "namespace {n} left behind: {list}");
    }
}

/// libsrt's srt-live-transmit as a one-viewer stand-in relay (listener in, listener out).
fn standin(dir: &TempDir, name: &str) -> (Proc, u16, u16) {
    let pi = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let po = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = dir.file(&format!("{name}.stderr"));
    let mut c = command(None, "srt-live-transmit");
    c.args([
        "-a:no",
        &format!("srt://127.0.0.1:{pi}?mode=listener"),
        &format!("srt://127.0.0.1:{po}?mode=listener"),
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&err).unwrap());
    (Proc::spawn(name, c, libc::SIGINT, Some(err)), pi, po)
}

#[test]
fn clients_through_standin_relay() {
    let dir = TempDir::new("selftest-clients");
    let c = clip();
    let (_r1, in1, out1) = standin(&dir, "standin1");
    let (_r2, in2, out2) = standin(&dir, "standin2");
    sleep_secs(0.3);
    let sid = "#!::r=1,s=0123456789abcdef,m=request";
    let mut v = SltViewer::start_opts(
        &dir,
        "slt-viewer",
        &format!("srt://127.0.0.1:{out1}?streamid={sid}"),
        None,
        true,
    );
    let mut f = FfmpegViewer::start(
        &dir,
        "ff-decode",
        &format!("srt://127.0.0.1:{out2}?streamid={sid}"),
        FfKind::Decode,
        None,
    );
    sleep_secs(1.0);
    let mut p1 = BytePublisher::start_opts(
        &dir,
        "pub1",
        &format!("srt://127.0.0.1:{in1}"),
        c,
        None,
        true,
    );
    let mut p2 = BytePublisher::start(&dir, "pub2", &format!("srt://127.0.0.1:{in2}"), c);
    p1.finish(Duration::from_millis(1500));
    p2.finish(Duration::from_millis(1500));
    sleep_secs(0.5);
    v.stop();
    f.stop();
    // The stand-in drops what arrives before both its sides are up; the rest is exact.
    assert_contiguous(
        "slt via stand-in",
        &v.output(),
        c,
        Expect {
            from_start: false,
            to_end: true,
            min_packets: c.n_packets() * 8 / 10,
        },
    );
    let frames = f.frames();
    assert_frames(
        "ffmpeg via stand-in",
        &frames,
        c,
        c.reference_frames().len() * 8 / 10,
        30,
    );
    let st = v.last_stats().expect("viewer stats");
    let ps = p1.last_stats().expect("publisher stats");
    eprintln!("viewer stats {st:?}\npublisher stats {ps:?}");
    assert!(st.recv_packets > 1000 && ps.send_packets > 1000);
}
