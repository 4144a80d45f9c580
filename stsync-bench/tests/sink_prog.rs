//! The kernel sink (stsync-bench-ebpf) on a real kernel: crafted frames through
//! BPF_PROG_TEST_RUN, under both hooks and in both address families, read back through the
//! generator's mmap view.
//!
//! Needs root and the built object (`cargo xtask build-ebpf`); skips with a reason
//! otherwise, and fails instead when STSYNC_REQUIRE_PRIVILEGED=1.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use stsync_bench::sink::{Attach, Rings, Sink, SinkParams};
use stsync_bench_common::SinkConfig;

const RELAY: Ipv4Addr = Ipv4Addr::new(10, 88, 2, 1);
const RELAY_PORT: u16 = 9999;
const VIEWER0: Ipv4Addr = Ipv4Addr::new(10, 88, 128, 1);
const RELAY6: Ipv6Addr = Ipv6Addr::new(0xfd88, 2, 0, 0, 0, 0, 0, 1);
/// Viewer 0 of IPv6: its low 32 bits count the viewers, across a 16-bit boundary here.
const VIEWER6: Ipv6Addr = Ipv6Addr::new(0xfd88, 0x128, 0, 0, 0, 0, 0, 0xfffe);
const VIEWER_PORT: u16 = 40000;
const ID_BASE: u32 = 0x4000_1000;
const VIEWERS: u32 = 4;
const RING: u32 = 1024;

fn object() -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let p = target.join("bpfel-unknown-none/release/stsync-bench-ebpf");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let why = match (root, p.is_file()) {
        (true, true) => return Some(p),
        (false, _) => "needs root",
        (true, false) => "no sink object (cargo xtask build-ebpf)",
    };
    if std::env::var("STSYNC_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("sink_prog: {why}, and a privileged run is required");
    }
    eprintln!("sink_prog: skipped: {why}");
    None
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn relay(self) -> IpAddr {
        match self {
            Family::V4 => RELAY.into(),
            Family::V6 => RELAY6.into(),
        }
    }

    fn viewer(self, i: u32) -> IpAddr {
        match self {
            Family::V4 => Ipv4Addr::from(u32::from(VIEWER0) + i).into(),
            Family::V6 => Ipv6Addr::from(u128::from(VIEWER6) + u128::from(i)).into(),
        }
    }

    /// The sink's configuration for `VIEWERS` viewers of this family, split at `split`
    /// with `second` as the second relay.
    fn config(self, split: u32, second: Option<IpAddr>) -> SinkConfig {
        SinkConfig {
            relay_ip: words(self.relay()),
            viewer_ip_base: words(self.viewer(0)),
            relay_ip_b: second.map_or([0; 4], words),
            viewers: VIEWERS,
            id_base: ID_BASE,
            ring_mask: RING - 1,
            split,
            relay_port: RELAY_PORT.to_be(),
            viewer_port: VIEWER_PORT.to_be(),
            _pad: 0,
        }
    }
}

/// An address as `SinkConfig` holds it (network-order words, IPv4 mapped).
fn words(ip: IpAddr) -> [u32; 4] {
    let b = match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    };
    std::array::from_fn(|i| u32::from_ne_bytes(b[4 * i..4 * i + 4].try_into().unwrap()))
}

struct Pkt {
    src: (IpAddr, u16),
    dst: IpAddr,
    srt: Vec<u8>,
    /// IPv6: an extension header (this next-header value, 8 bytes) before UDP.
    ext: Option<u8>,
}

/// Ethernet + IPv4 or IPv6 + UDP around `srt` (checksums are not the sink's business).
fn frame(p: &Pkt) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    let udp_len = (8 + p.srt.len()) as u16;
    match (p.src.0, p.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            f.extend_from_slice(&[0x08, 0x00]);
            let total = 20 + udp_len;
            f.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0]);
            f[16..18].copy_from_slice(&total.to_be_bytes());
            f.extend_from_slice(&src.octets());
            f.extend_from_slice(&dst.octets());
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            f.extend_from_slice(&[0x86, 0xDD]);
            let ext_len = if p.ext.is_some() { 8 } else { 0 };
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(udp_len + ext_len).to_be_bytes());
            f.extend_from_slice(&[p.ext.unwrap_or(17), 64]);
            f.extend_from_slice(&src.octets());
            f.extend_from_slice(&dst.octets());
            if p.ext.is_some() {
                // Next header UDP, length 0 (8 bytes), PadN.
                f.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]);
            }
        }
        _ => panic!("one family per packet"),
    }
    f.extend_from_slice(&p.src.1.to_be_bytes());
    f.extend_from_slice(&VIEWER_PORT.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&p.srt);
    f
}

fn data_of(family: Family, viewer: u32, seq: u32, rexmit: bool, payload: &[u8]) -> Pkt {
    let mut srt = Vec::new();
    srt.extend_from_slice(&seq.to_be_bytes());
    let msg: u32 = 0xC000_0001 | if rexmit { 1 << 26 } else { 0 };
    srt.extend_from_slice(&msg.to_be_bytes());
    srt.extend_from_slice(&0u32.to_be_bytes());
    srt.extend_from_slice(&(ID_BASE + viewer).to_be_bytes());
    srt.extend_from_slice(payload);
    Pkt {
        src: (family.relay(), RELAY_PORT),
        dst: family.viewer(viewer),
        srt,
        ext: None,
    }
}

/// Bytes like an encrypted payload's: nothing the sink could read as the generator's.
fn encrypted() -> Vec<u8> {
    (0..1316u32).map(|i| (i * 131 + 7) as u8).collect()
}

fn payload(index: u64, sent: u64) -> Vec<u8> {
    let mut p = Vec::new();
    stsync_bench::caller::write_payload(&mut p, 1316, index, sent);
    p
}

fn check(attach: Attach, obj: &std::path::Path, family: Family) {
    let data = |viewer, seq, rexmit, payload: &[u8]| data_of(family, viewer, seq, rexmit, payload);
    let mut sink = Sink::load(&SinkParams {
        object: obj,
        attach,
        config: family.config(VIEWERS, None),
        ring: RING,
    })
    .expect("load the sink");
    let (pass, drop) = match attach {
        Attach::Tc => (0, 2),
        _ => (2, 1),
    };
    let mut run = |p: &Pkt| sink.test_run(&frame(p)).expect("test_run");

    assert_eq!(run(&data(1, 5, false, &payload(42, 1_000))), drop);
    assert_eq!(
        run(&data(1, 5, false, &payload(42, 1_000))),
        drop,
        "duplicate"
    );
    assert_eq!(
        run(&data(1, 3, true, &payload(40, 900))),
        drop,
        "late rexmit"
    );
    assert_eq!(
        run(&data(
            1,
            5u32.wrapping_sub(RING) & 0x7FFF_FFFF,
            false,
            &payload(1, 1)
        )),
        drop,
        "stale"
    );
    assert_eq!(
        run(&data(2, 0x7FFF_FFFF, false, &[0xAB; 8])),
        drop,
        "bad payload"
    );
    let mut enc = data(3, 9, false, &encrypted());
    enc.srt[4..8].copy_from_slice(&(0xC000_0001u32 | 1 << 27).to_be_bytes());
    assert_eq!(run(&enc), drop, "encrypted payload");
    // Passed to the socket: control, wrong source, wrong socket ID, unknown viewer.
    let mut ackack = data(1, 0, false, &[0; 4]);
    ackack.srt[0..4].copy_from_slice(&0x8006_0000u32.to_be_bytes());
    assert_eq!(run(&ackack), pass, "control");
    let mut stranger = data(1, 6, false, &payload(43, 1));
    stranger.src.1 = 1234;
    assert_eq!(run(&stranger), pass, "wrong source port");
    let mut wrong_id = data(1, 6, false, &payload(43, 1));
    wrong_id.srt[12..16].copy_from_slice(&(ID_BASE + 2).to_be_bytes());
    assert_eq!(run(&wrong_id), pass, "socket ID of another viewer");
    assert_eq!(
        run(&data(VIEWERS, 6, false, &payload(43, 1))),
        pass,
        "no such viewer"
    );
    // The other family's packet to the same viewer passes (its addresses are not this
    // configuration's).
    let other = match family {
        Family::V4 => Family::V6,
        Family::V6 => Family::V4,
    };
    assert_eq!(
        run(&data_of(other, 1, 6, false, &payload(43, 1))),
        pass,
        "the other family"
    );
    // IPv6 with an extension header before UDP: passed unread, counted.
    let mut ext = data_of(Family::V6, 1, 6, false, &payload(43, 1));
    ext.ext = Some(0); // hop-by-hop options
    assert_eq!(run(&ext), pass, "IPv6 extension header");

    assert_eq!(sink.next(0), None);
    assert_eq!(sink.next(1), Some(6));
    let a = sink.slot(1, 5).expect("seq 5 recorded");
    assert_eq!(
        (a.len, a.rexmit, a.payload()),
        (1316, false, Some((42, 1_000)))
    );
    assert!(a.rx_ns > 0);
    let b = sink.slot(1, 3).expect("seq 3 recorded");
    assert_eq!((b.rexmit, b.payload()), (true, Some((40, 900))));
    assert!(sink.slot(1, 4).is_none());
    assert!(
        sink.slot(1, 5 + RING).is_none(),
        "another lap of the same slot"
    );
    let h = sink.head(1);
    assert_eq!((h.data, h.duplicates, h.stale), (4, 1, 1));
    // 31-bit wrap: one past 0x7FFF_FFFF is 0.
    assert_eq!(sink.next(2), Some(0));
    let c = sink.slot(2, 0x7FFF_FFFF).expect("recorded");
    assert_eq!((c.len, c.payload(), c.peek), (8, None, None));
    // An encrypted payload (KK = even key) is recorded as it came, for the generator to
    // decrypt.
    let e = sink.slot(3, 9).expect("recorded");
    assert_eq!((e.kk, e.payload()), (1, None));
    assert_eq!(e.peek.map(|p| p.to_vec()), Some(encrypted()[..20].to_vec()));
    let r = sink.report();
    assert_eq!(
        (
            r.recorded,
            r.duplicates,
            r.control_passed,
            r.unmatched_passed,
            r.v6_ext_headers_passed
        ),
        // The other family's packet is unmatched from its port on.
        (4, 2, 1, 4, 1)
    );
    // What one packet costs the program itself (a duplicate: the common path minus the
    // slot writes), for the docs.
    let (_, per_run) = sink
        .test_run_repeat(&frame(&data(1, 5, false, &payload(42, 1_000))), 100_000)
        .expect("test_run");
    eprintln!(
        "sink_prog: {attach:?}, {family:?}: {} ns per run",
        per_run.as_nanos()
    );
}

#[test]
fn sink_records_data_and_passes_the_rest() {
    let Some(obj) = object() else { return };
    check(Attach::Xdp, &obj, Family::V4);
    check(Attach::Tc, &obj, Family::V4);
}

#[test]
fn sink_records_ipv6_data_and_passes_the_rest() {
    let Some(obj) = object() else { return };
    check(Attach::Xdp, &obj, Family::V6);
    check(Attach::Tc, &obj, Family::V6);
}

/// The tree topology: viewers from `split` on take their clones from a second relay's
/// address (same port); each half's packets from the other relay pass to the socket.
#[test]
fn viewers_from_split_on_take_the_second_relay() {
    let Some(obj) = object() else { return };
    let second4: IpAddr = Ipv4Addr::new(10, 88, 3, 1).into();
    let second6: IpAddr = Ipv6Addr::new(0xfd88, 3, 0, 0, 0, 0, 0, 1).into();
    for (family, second) in [(Family::V4, second4), (Family::V6, second6)] {
        let mut sink = Sink::load(&SinkParams {
            object: &obj,
            attach: Attach::Xdp,
            config: family.config(2, Some(second)),
            ring: RING,
        })
        .expect("load the sink");
        let (pass, drop) = (2, 1);
        let mut run = |p: &Pkt| sink.test_run(&frame(p)).expect("test_run");
        let from = |viewer: u32, ip: IpAddr| {
            let mut p = data_of(family, viewer, 5, false, &payload(42, 1_000));
            p.src.0 = ip;
            p
        };
        let first = family.relay();
        assert_eq!(run(&from(1, first)), drop, "first half, first relay");
        assert_eq!(run(&from(2, second)), drop, "second half, second relay");
        assert_eq!(run(&from(3, second)), drop, "second half, second relay");
        assert_eq!(run(&from(0, second)), pass, "first half, second relay");
        assert_eq!(run(&from(2, first)), pass, "second half, first relay");
        assert_eq!(sink.next(0), None);
        assert_eq!(sink.next(1), Some(6));
        assert_eq!(sink.next(2), Some(6));
        assert_eq!(sink.next(3), Some(6));
    }
}
