//! The kernel sink (stsync-bench-ebpf) on a real kernel: crafted frames through
//! BPF_PROG_TEST_RUN, under both hooks, read back through the generator's mmap view.
//!
//! Needs root and the built object (`cargo xtask build-ebpf`); skips with a reason
//! otherwise, and fails instead when STSYNC_REQUIRE_PRIVILEGED=1.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use stsync_bench::sink::{Attach, Rings, Sink, SinkParams};
use stsync_bench_common::SinkConfig;

const RELAY: Ipv4Addr = Ipv4Addr::new(10, 88, 2, 1);
const RELAY_PORT: u16 = 9999;
const VIEWER0: Ipv4Addr = Ipv4Addr::new(10, 88, 128, 1);
const VIEWER_PORT: u16 = 40000;
const ID_BASE: u32 = 0x4000_1000;
const VIEWERS: u32 = 4;
const RING: u32 = 1024;

fn object() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/bpfel-unknown-none/release/stsync-bench-ebpf");
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

struct Pkt {
    src: (Ipv4Addr, u16),
    dst: Ipv4Addr,
    srt: Vec<u8>,
}

/// Ethernet + IPv4 + UDP around `srt` (checksums are not the sink's business).
fn frame(p: &Pkt) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + p.srt.len()) as u16;
    f.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    f[16..18].copy_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&p.src.0.octets());
    f.extend_from_slice(&p.dst.octets());
    f.extend_from_slice(&p.src.1.to_be_bytes());
    f.extend_from_slice(&VIEWER_PORT.to_be_bytes());
    f.extend_from_slice(&(total - 20).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&p.srt);
    f
}

fn data(viewer: u32, seq: u32, rexmit: bool, payload: &[u8]) -> Pkt {
    let mut srt = Vec::new();
    srt.extend_from_slice(&seq.to_be_bytes());
    let msg: u32 = 0xC000_0001 | if rexmit { 1 << 26 } else { 0 };
    srt.extend_from_slice(&msg.to_be_bytes());
    srt.extend_from_slice(&0u32.to_be_bytes());
    srt.extend_from_slice(&(ID_BASE + viewer).to_be_bytes());
    srt.extend_from_slice(payload);
    Pkt {
        src: (RELAY, RELAY_PORT),
        dst: Ipv4Addr::from(u32::from(VIEWER0) + viewer),
        srt,
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

fn check(attach: Attach, obj: &std::path::Path) {
    let mut sink = Sink::load(&SinkParams {
        object: obj,
        attach,
        config: SinkConfig {
            relay_ip: u32::from_ne_bytes(RELAY.octets()),
            viewer_ip_base: u32::from(VIEWER0),
            viewers: VIEWERS,
            id_base: ID_BASE,
            ring_mask: RING - 1,
            split: VIEWERS,
            relay_ip_b: 0,
            relay_port: RELAY_PORT.to_be(),
            viewer_port: VIEWER_PORT.to_be(),
        },
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
            r.unmatched_passed
        ),
        (4, 2, 1, 3)
    );
    // What one packet costs the program itself (a duplicate: the common path minus the
    // slot writes), for the docs.
    let (_, per_run) = sink
        .test_run_repeat(&frame(&data(1, 5, false, &payload(42, 1_000))), 100_000)
        .expect("test_run");
    eprintln!("sink_prog: {attach:?}: {} ns per run", per_run.as_nanos());
}

#[test]
fn sink_records_data_and_passes_the_rest() {
    let Some(obj) = object() else { return };
    check(Attach::Xdp, &obj);
    check(Attach::Tc, &obj);
}

/// The tree topology: viewers from `split` on take their clones from a second relay's
/// address (same port); each half's packets from the other relay pass to the socket.
#[test]
fn viewers_from_split_on_take_the_second_relay() {
    let Some(obj) = object() else { return };
    const SECOND: Ipv4Addr = Ipv4Addr::new(10, 88, 3, 1);
    let mut sink = Sink::load(&SinkParams {
        object: &obj,
        attach: Attach::Xdp,
        config: SinkConfig {
            relay_ip: u32::from_ne_bytes(RELAY.octets()),
            viewer_ip_base: u32::from(VIEWER0),
            viewers: VIEWERS,
            id_base: ID_BASE,
            ring_mask: RING - 1,
            split: 2,
            relay_ip_b: u32::from_ne_bytes(SECOND.octets()),
            relay_port: RELAY_PORT.to_be(),
            viewer_port: VIEWER_PORT.to_be(),
        },
        ring: RING,
    })
    .expect("load the sink");
    let (pass, drop) = (2, 1);
    let mut run = |p: &Pkt| sink.test_run(&frame(p)).expect("test_run");
    let from = |viewer: u32, ip: Ipv4Addr| {
        let mut p = data(viewer, 5, false, &payload(42, 1_000));
        p.src.0 = ip;
        p
    };
    assert_eq!(run(&from(1, RELAY)), drop, "first half, first relay");
    assert_eq!(run(&from(2, SECOND)), drop, "second half, second relay");
    assert_eq!(run(&from(3, SECOND)), drop, "second half, second relay");
    assert_eq!(run(&from(0, SECOND)), pass, "first half, second relay");
    assert_eq!(run(&from(2, RELAY)), pass, "second half, first relay");
    assert_eq!(sink.next(0), None);
    assert_eq!(sink.next(1), Some(6));
    assert_eq!(sink.next(2), Some(6));
    assert_eq!(sink.next(3), Some(6));
}
