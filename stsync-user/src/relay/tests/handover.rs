//! The kernel handover driven by the relay's own events, without a kernel.

use super::*;

/// The kernel handover driven by the relay's own events, with the program's viewer table
/// in memory (no kernel): the viewer moves to the kernel once mapped and routed, and the
/// relay stops sending it new data. A NAK for a packet the kernel cloned before the relay
/// read it (the race the kernel path has) is neither answered nor refused with DROPREQ;
/// asked again once the relay has read it, it is resent numbered as the kernel numbered
/// it. A new publisher takes the viewer back to userspace until it is mapped again.
#[test]
fn kernel_handover_and_a_nak_for_a_packet_the_relay_has_not_read_yet() {
    use crate::datapath::handover::{Handover, TestTable};
    use stsync_common::maps::Route;
    let mut w = World::new();
    let mut v = Caller::new(1001, 5000);
    let mut p = Caller::new(2000, 0);
    v.join(&mut w, "request");
    p.join(&mut w, "publish");
    let (mut h, mut table) = (Handover::new(false), TestTable::default());
    const SLOT: u32 = 3;
    // The datapath's side of the seam: route events in, reports back.
    let pump = |w: &mut World, h: &mut Handover, table: &mut TestTable| {
        while let Some(ev) = w.relay.poll_event() {
            match ev {
                RouteEvent::ViewerAdded { conn, peer_id, .. } => h.add(conn, 0, SLOT, peer_id),
                RouteEvent::ViewerMapped { conn, offsets } => h.mapped(w.now, conn, offsets, table),
                RouteEvent::PublisherChanged { publisher, .. } => {
                    h.set_publisher(0, publisher.map(|_| false))
                }
                _ => {}
            }
        }
        while let Some(r) = h.poll_report() {
            w.relay.handle_kernel(r);
        }
    };
    pump(&mut w, &mut h, &mut table);
    // The program learned the viewer's route (from its first packet).
    table.routes.insert(
        v.relay_id,
        Route {
            ifindex: 3,
            ..Default::default()
        },
    );
    for i in 0..10u32 {
        p.data(&mut w, Seq::new(i), i * 1_000, &[i as u8]);
    }
    assert_eq!(
        data(&w.take(v.addr)).len(),
        10,
        "userspace until handed over"
    );
    pump(&mut w, &mut h, &mut table);
    let e = table.entries[&SLOT];
    assert_eq!((e.active, e.epoch, e.seq_off), (1, 1, 5000));
    // The kernel clones 10..20 as they pass; the viewer misses 12 and asks for it before
    // the relay has read any of them.
    v.nak(&mut w, 5012, 5012);
    assert!(
        w.take(v.addr).is_empty(),
        "not answered, not refused: the relay has not read it yet"
    );
    for i in 10..20u32 {
        p.data(&mut w, Seq::new(i), i * 1_000, &[i as u8]);
    }
    assert!(
        data(&w.take(v.addr)).is_empty(),
        "the kernel sends new data"
    );
    v.nak(&mut w, 5012, 5012);
    let got = w.take(v.addr);
    let Some(Got::Data { seq, msg, ts, .. }) = got.first() else {
        panic!("resent: {got:?}")
    };
    assert_ne!(msg & MSG_REXMIT_FLAG, 0);
    assert_eq!(
        (seq.get(), *ts),
        (
            (12 + e.seq_off) & 0x7FFF_FFFF,
            (12_000u32).wrapping_add(e.ts_off)
        ),
        "numbered and timed as the kernel's clone"
    );
    // A takeover: the new publisher's first packet maps the viewer anew and goes from
    // userspace; once handed over again, the kernel sends the rest.
    let mut q = Caller::new(2001, 900);
    q.join(&mut w, "publish");
    q.data(&mut w, Seq::new(900), 50_000, b"q");
    assert_eq!(data(&w.take(v.addr)).len(), 1);
    pump(&mut w, &mut h, &mut table);
    assert_eq!(table.entries[&SLOT].epoch, 2);
    q.data(&mut w, Seq::new(901), 51_000, b"q");
    assert!(data(&w.take(v.addr)).is_empty());
}
