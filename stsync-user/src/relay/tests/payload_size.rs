//! IPv6 callers and payload sizes, as libsrt 1.5 has them: the handshake names each caller's
//! address in libsrt's form, every family takes 1456-byte payloads at the default MSS, and a
//! viewer whose own MSS is smaller is not sent what it would drop.

use super::*;
use stsync_common::srt::MAX_PAYLOAD;

fn payload(i: u32, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i as usize * 7 + j) as u8).collect()
}

/// An IPv4 publisher's largest payloads (1456 bytes) reach an IPv6 viewer and an IPv4
/// viewer of the dual-stack socket unchanged: libsrt 1.5 sizes its receive buffers for
/// 1456 whatever the family. Each conclusion answer names its caller as libsrt's listener
/// does.
#[test]
fn ipv6_and_mapped_viewers_get_full_payloads() {
    let mut w = World::new();
    let mut v6 = Caller::at("::1", 1001, 0);
    let mut mapped = Caller::at("::ffff:127.0.0.1", 1002, 0);
    let mut p = Caller::at("::ffff:127.0.0.1", 2000, 0);
    v6.join(&mut w, "request");
    mapped.join(&mut w, "request");
    p.join(&mut w, "publish");
    let ip = |c: &Caller| c.answer.as_ref().unwrap().peer_ip;
    let mut want = [0u8; 16];
    want[12] = 1;
    assert_eq!(ip(&v6), want, "::1 in libsrt's IPv6 form");
    want[8..].copy_from_slice(&[0xff, 0xff, 0, 0, 1, 0, 0, 127]);
    assert_eq!(
        ip(&mapped),
        want,
        "libsrt's form of an AF_INET6 peer ::ffff:127.0.0.1"
    );
    assert_eq!(ip(&p), want);
    for c in [&v6, &mapped, &p] {
        assert_eq!(c.answer.as_ref().unwrap().mtu, 1500);
    }
    let sent: Vec<Vec<u8>> = (0..20).map(|i| payload(i, MAX_PAYLOAD)).collect();
    for (i, pl) in sent.iter().enumerate() {
        p.data(&mut w, Seq::new(i as u32), i as u32 * 1000, pl);
    }
    for v in [&v6, &mapped] {
        let got: Vec<Vec<u8>> = data(&w.take(v.addr)).into_iter().map(|d| d.1).collect();
        assert_eq!(got, sent, "{}", v.addr);
    }
    assert_eq!(w.dropped("payload_over_viewer_mss"), 0);
}

/// A viewer whose own MSS is 1360 takes at most 1316 bytes (libsrt drops a larger datagram
/// on MSG_TRUNC): the relay holds back what is larger, counts it, answers the viewer's NAK
/// for it with DROPREQ, and keeps the viewer off the kernel's clones. Everything else it
/// gets.
#[test]
fn viewer_with_a_small_mss_is_not_sent_what_it_would_drop() {
    let mut w = World::new();
    let mut small = Caller::at("::1", 1001, 0);
    small.mss = 1360;
    let mut full = Caller::at("::1", 1002, 0);
    let mut p = Caller::new(2000, 0);
    small.join(&mut w, "request");
    full.join(&mut w, "request");
    p.join(&mut w, "publish");
    assert_eq!(small.answer.as_ref().unwrap().mtu, 1360);
    let mut userspace = Vec::new();
    while let Some(ev) = w.relay.poll_event() {
        if let RouteEvent::ViewerAdded {
            conn,
            userspace_only,
            ..
        } = ev
        {
            userspace.push((conn, userspace_only));
        }
    }
    userspace.sort();
    let mut want = vec![(small.relay_id, true), (full.relay_id, false)];
    want.sort();
    assert_eq!(userspace, want, "the small-MSS viewer stays in userspace");

    let lens = [1316, 1456, 1316, 1317, 188];
    for (i, &len) in lens.iter().enumerate() {
        p.data(
            &mut w,
            Seq::new(i as u32),
            i as u32 * 1000,
            &payload(i as u32, len),
        );
    }
    let got = w.take(small.addr);
    let seqs: Vec<u32> = data(&got).iter().map(|d| d.0).collect();
    assert_eq!(seqs, [0, 2, 4], "1456 and 1317 bytes are more than 1316");
    // In their place, DROPREQ at once: libsrt moves its receive sequence past them.
    let drops: Vec<Vec<u8>> = ctrl(&got, ctrl::DROPREQ).into_iter().map(|d| d.1).collect();
    let range = |a: u32, b: u32| [a.to_be_bytes(), b.to_be_bytes()].concat();
    assert_eq!(drops, [range(1, 1), range(3, 3)]);
    assert_eq!(data(&w.take(full.addr)).len(), lens.len());
    assert_eq!(w.dropped("payload_over_viewer_mss"), 2);
    // Its loss report for them (had a DROPREQ been lost): DROPREQ again, not the packets.
    small.nak(&mut w, 1, 1);
    small.nak(&mut w, 3, 3);
    let got = w.take(small.addr);
    assert!(data(&got).is_empty(), "{got:?}");
    let drops: Vec<Vec<u8>> = ctrl(&got, ctrl::DROPREQ).into_iter().map(|d| d.1).collect();
    assert_eq!(drops, [range(1, 1), range(3, 3)]);
}
