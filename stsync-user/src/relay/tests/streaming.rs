//! Publishing and viewing: offsets, wraparound, delay, publisher loss, takeover.

use super::*;

#[test]
fn publish_and_view_with_wraparound_and_per_viewer_offsets() {
    let mut w = World::new();
    let mut v1 = Caller::new(1001, 5000);
    let mut v2 = Caller::new(1002, 0x7FFF_FFFE); // this viewer's sequence wraps
    let mut p = Caller::new(2000, 0x7FFF_FFF0); // and so does the publisher's
    v1.join(&mut w, "request");
    w.advance(Duration::from_millis(500));
    v2.join(&mut w, "request");
    p.join(&mut w, "publish");
    w.take(v1.addr);
    w.take(v2.addr);
    // Publisher timestamps start near the 32-bit wrap.
    for i in 0..40u32 {
        p.data(
            &mut w,
            p.isn.add(i),
            (u32::MAX - 50_000).wrapping_add(i * 10_000),
            &[i as u8; 188],
        );
        w.advance(Duration::from_millis(10));
    }
    for (v, joined_ms) in [(&v1, 0u32), (&v2, 500)] {
        let got = w.take(v.addr);
        let seqs: Vec<u32> = data(&got).iter().map(|(s, _)| *s).collect();
        let expect: Vec<u32> = (0..40).map(|i| v.isn.add(i).get()).collect();
        assert_eq!(seqs, expect, "viewer sequence starts at its ISN and wraps");
        let ts: Vec<u32> = got
            .iter()
            .filter_map(|g| match g {
                Got::Data { ts, dest, .. } => {
                    assert_eq!(*dest, v.socket_id);
                    Some(*ts)
                }
                _ => None,
            })
            .collect();
        // The first packet carries the viewer's own clock (µs since its handshake, which
        // starts `CLOCK_HEADROOM` in) and the publisher's spacing is kept across the
        // publisher's timestamp wrap.
        let expected_first = HEADROOM_US + (500 - joined_ms) * 1000;
        assert!(
            ts[0].abs_diff(expected_first) < 1000,
            "{} vs {expected_first}",
            ts[0]
        );
        assert!(ts.windows(2).all(|p| p[1].wrapping_sub(p[0]) == 10_000));
        // Full ACKs from the viewer are answered by ACKACK with the same number.
        v.control(
            &mut w,
            ctrl::ACK,
            77,
            &[v.isn.add(40).get(), 1000, 100, 8192, 0, 0, 0],
        );
        assert_eq!(ctrl(&w.take(v.addr), ctrl::ACKACK)[0].0, 77);
    }
    // The publisher got ACKs that reached the last packet.
    let acks = ctrl(&w.take(p.addr), ctrl::ACK);
    let last = Ack::parse(&acks.last().unwrap().1).unwrap();
    assert_eq!(last.ack_seq, p.isn.add(40));
}

/// Raising a stream's delay moves its viewers' timestamps later by 10 ms per 100 ms until
/// the target, never more at once; a retransmission keeps its original's timestamp; a new
/// viewer starts at the full delay; lowering it walks back the same way.
#[test]
fn stream_delay_moves_timestamps_gradually() {
    let mut w = World::new();
    let mut v = Caller::new(1001, 0);
    let mut p = Caller::new(2000, 0);
    v.join(&mut w, "request");
    p.join(&mut w, "publish");
    let send = |w: &mut World, n: u32, from: u32| -> Vec<u32> {
        let mut ts = Vec::new();
        for i in from..from + n {
            p.data(w, Seq::new(i), i * 2_500, b"x");
            if i % 4 == 0 {
                // Acknowledges with a lag, so the NAK below is for a packet still awaited.
                let ack = i.saturating_sub(100);
                v.control(w, ctrl::ACK, i, &[ack, 1000, 100, 8192, 0, 0, 0]);
                p.control(w, ctrl::KEEPALIVE, 0, &[0]);
            }
            w.advance(Duration::from_micros(2_500));
            // (Its lagging ACK makes the relay resend the packet it stops at: not counted.)
            for g in fresh(w.take(v.addr)) {
                if let Got::Data { ts: t, .. } = g {
                    ts.push(t);
                }
            }
        }
        ts
    };
    let before = send(&mut w, 40, 0);
    assert!(before.windows(2).all(|p| p[1] - p[0] == 2_500));
    w.set_delay(500);
    // 6 s of packets: 50 steps of 10 ms take 5 s.
    let during = send(&mut w, 2_400, 40);
    let steps: Vec<u32> = during.windows(2).map(|p| p[1] - p[0] - 2_500).collect();
    assert!(
        steps.iter().all(|&d| d == 0 || d == 10_000),
        "steps of 10 ms only"
    );
    let first = during[0].wrapping_sub(before[before.len() - 1]) - 2_500;
    assert_eq!(
        first + steps.iter().sum::<u32>(),
        500_000,
        "the whole 500 ms, no more"
    );
    assert_eq!(w.stream().delay_applied_us, 500_000);
    let events: Vec<_> = std::iter::from_fn(|| w.relay.poll_event())
        .filter(|e| matches!(e, RouteEvent::StreamDelay { .. }))
        .collect();
    assert_eq!(events.len(), 50, "the datapath hears of every step");
    let first_ts = |got: &[Got]| {
        got.iter().find_map(|g| match g {
            Got::Data { ts, .. } => Some(*ts),
            _ => None,
        })
    };
    // A viewer joining now gets the full delay at once: its clock + 500 ms.
    let mut late = Caller::new(1002, 0);
    late.join(&mut w, "request");
    p.data(&mut w, Seq::new(2_440), 2_440 * 2_500, b"x");
    let t = first_ts(&w.take(late.addr)).unwrap();
    assert!(
        t.abs_diff(HEADROOM_US + 500_000) < 1_000,
        "late joiner's first timestamp {t}"
    );
    let last = first_ts(&w.take(v.addr)).unwrap();
    // Back to 0: the same walk down. A retransmission of a packet sent before the walk
    // started keeps its 500 ms.
    w.set_delay(0);
    let mut down = send(&mut w, 60, 2_441);
    v.nak(&mut w, 2_440, 2_440);
    assert_eq!(
        first_ts(&w.take(v.addr)),
        Some(last),
        "retransmission's timestamp"
    );
    down.extend(send(&mut w, 2_400, 2_501));
    let gaps: Vec<i64> = std::iter::once(last)
        .chain(down)
        .collect::<Vec<_>>()
        .windows(2)
        .map(|p| 2_500 - i64::from(p[1].wrapping_sub(p[0]) as i32))
        .collect();
    assert!(
        gaps.iter().all(|&g| g == 0 || g == 10_000),
        "{:?}",
        gaps.iter()
            .filter(|&&g| g != 0 && g != 10_000)
            .collect::<Vec<_>>()
    );
    assert_eq!(gaps.iter().sum::<i64>(), 500_000);
    assert_eq!(w.stream().delay_applied_us, 0);
}

/// The publisher's very first packet is lost: viewers are mapped from it anyway, so its
/// recovery reaches them in its place (the gap at their start is theirs to NAK meanwhile).
#[test]
fn a_lost_first_packet_still_reaches_viewers() {
    let mut w = World::new();
    let mut v = Caller::new(1001, 300);
    let mut p = Caller::new(2000, 7000);
    v.join(&mut w, "request");
    p.join(&mut w, "publish");
    for i in 1..5u32 {
        p.data(&mut w, p.isn.add(i), i * 10_000, &[i as u8; 188]);
    }
    w.advance(Duration::from_millis(20));
    p.data(&mut w, p.isn, 0, &[0; 188]);
    let got = data(&w.take(v.addr));
    let seqs: Vec<u32> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        [301, 302, 303, 304, 300],
        "first packet forwarded late, in its place"
    );
    assert_eq!(got[4].1, vec![0; 188]);
}

#[test]
fn publisher_loss_is_naked_recovered_and_forwarded_late() {
    let mut w = World::new();
    let mut v = Caller::new(1001, 100);
    let mut p = Caller::new(2000, 1000);
    v.join(&mut w, "request");
    p.join(&mut w, "publish");
    p.data(&mut w, Seq::new(1000), 0, b"a");
    p.data(&mut w, Seq::new(1002), 10, b"c"); // 1001 lost on the publisher leg
    let naks = ctrl(&w.take(p.addr), ctrl::NAK);
    assert_eq!(naks.len(), 1, "NAK at once");
    assert_eq!(naks[0].1, 1001u32.to_be_bytes());
    // The viewer saw the same gap (101) and asks for it: the relay waits for the publisher.
    assert_eq!(
        data(&w.take(v.addr))
            .iter()
            .map(|d| d.0)
            .collect::<Vec<_>>(),
        vec![100, 102]
    );
    v.nak(&mut w, 101, 101);
    assert!(
        w.take(v.addr).is_empty(),
        "no DROPREQ while the publisher may still resend"
    );
    // The publisher's retransmission is forwarded once; a duplicate is not.
    p.data(&mut w, Seq::new(1001), 5, b"b");
    p.data(&mut w, Seq::new(1001), 5, b"b");
    assert_eq!(data(&w.take(v.addr)), vec![(101, b"b".to_vec())]);
    // Reordered duplicate of an old packet: nothing forwarded.
    p.data(&mut w, Seq::new(1000), 0, b"a");
    assert!(data(&w.take(v.addr)).is_empty());
}

#[test]
fn takeover_shuts_down_old_publisher_and_viewer_sequence_continues() {
    let mut w = World::new();
    let mut v = Caller::new(1001, 50);
    let mut a = Caller::new(2000, 7000);
    let mut b = Caller::new(2001, 123);
    v.join(&mut w, "request");
    a.join(&mut w, "publish");
    for i in 0..5 {
        a.data(&mut w, a.isn.add(i), 1_000_000 + i * 100, b"a");
    }
    w.advance(Duration::from_millis(300));
    b.join(&mut w, "publish");
    assert_eq!(
        ctrl(&w.take(a.addr), ctrl::SHUTDOWN).len(),
        1,
        "old publisher gets SHUTDOWN"
    );
    a.data(&mut w, a.isn.add(5), 0, b"late"); // the old publisher is gone
    assert_eq!(w.dropped("unknown_socket"), 1);
    for i in 0..5 {
        b.data(&mut w, b.isn.add(i), 40 + i * 100, b"b");
    }
    let got = w.take(v.addr);
    let seqs: Vec<u32> = data(&got).iter().map(|d| d.0).collect();
    assert_eq!(seqs, (50..60).collect::<Vec<_>>());
    let ts: Vec<u32> = got
        .iter()
        .filter_map(|g| {
            if let Got::Data { ts, .. } = g {
                Some(*ts)
            } else {
                None
            }
        })
        .collect();
    assert!(ts[5] > ts[4] + 250_000, "time base continues: {ts:?}");
    // NAKs for the first publisher's packets get DROPREQ (its buffer is gone).
    v.nak(&mut w, 52, 52);
    assert_eq!(ctrl(&w.take(v.addr), ctrl::DROPREQ).len(), 1);
}
