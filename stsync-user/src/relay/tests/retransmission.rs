//! Viewers' losses: NAKs, DROPREQ, the retransmission budget, rechecks by ACK.

use super::*;

#[test]
fn viewer_nak_gets_retransmission_or_dropreq() {
    let mut w = World::new();
    let mut v = Caller::new(1001, 0);
    let mut p = Caller::new(2000, 0);
    v.join(&mut w, "request");
    p.join(&mut w, "publish");
    for i in 0..100u32 {
        p.data(&mut w, Seq::new(i), i * 1000, &[i as u8]);
    }
    let first_sends = w.take(v.addr);
    // 10..=20 fell out of the ring: one DROPREQ for the whole range.
    v.nak(&mut w, 10, 20);
    let drops = ctrl(&w.take(v.addr), ctrl::DROPREQ);
    assert_eq!(drops.len(), 1);
    assert_eq!(
        drops[0].1,
        [10u32.to_be_bytes(), 20u32.to_be_bytes()].concat()
    );
    // 95 is still in the 64-packet ring: resent with the R flag and its original timestamp.
    v.nak(&mut w, 95, 95);
    let got = w.take(v.addr);
    let Got::Data {
        seq,
        msg,
        payload,
        ts,
        ..
    } = &got[0]
    else {
        panic!("{got:?}")
    };
    assert_eq!((seq.get(), payload.as_slice()), (95, &[95u8][..]));
    assert_ne!(msg & MSG_REXMIT_FLAG, 0);
    let original_ts = first_sends.iter().find_map(|g| match g {
        Got::Data { seq, ts, .. } if seq.get() == 95 => Some(*ts),
        _ => None,
    });
    assert_eq!(
        Some(*ts),
        original_ts,
        "a retransmission keeps the original timestamp"
    );
    // The kernel path can get packets to a viewer before the relay reads them: a NAK for
    // what the relay has not forwarded yet is neither answered nor refused with DROPREQ.
    v.nak(&mut w, 100, 101);
    assert!(w.take(v.addr).is_empty());
    // A malformed loss list is counted and ignored.
    let before = w.dropped("malformed");
    v.control(&mut w, ctrl::NAK, 0, &[5 | (1 << 31)]);
    assert_eq!(w.dropped("malformed"), before + 1);
    let text = w.render();
    assert!(text.contains(&format!(
        "srt_connection_data_packets_retransmitted{{id=\"{}\"}} 1",
        v.relay_id
    )));
    assert!(text.contains(&format!(
        "srt_connection_data_packets_lost{{id=\"{}\"}} 14",
        v.relay_id
    )));
}

/// Retransmission bytes (data with the R flag, and DROPREQs) in `got`.
fn rexmit_bytes(got: &[Got]) -> usize {
    got.iter()
        .map(|g| match g {
            Got::Data { msg, payload, .. } if msg & MSG_REXMIT_FLAG != 0 => 16 + payload.len(),
            Got::Ctrl { typ, body, .. } if *typ == ctrl::DROPREQ => 16 + body.len(),
            _ => 0,
        })
        .sum()
}

#[test]
fn nak_storm_is_merged_paced_and_bounded() {
    let mut w = World::new();
    let mut v = Caller::new(1001, 0);
    let mut honest = Caller::new(1002, 0);
    let mut p = Caller::new(2000, 0);
    v.join(&mut w, "request");
    honest.join(&mut w, "request");
    p.join(&mut w, "publish");
    let payload = [0x47u8; 1316];
    // 400 packets/s of 1316 bytes (≈ 4.3 Mbit/s) for 3 s; from the second second on the
    // attacker sends 100 NAKs/s, each one datagram of 182 copies of its whole window.
    let mut sent_to_attacker = 0usize;
    let mut to_honest = 0usize;
    let mut max_outbox = 0usize;
    for i in 0..1200u32 {
        p.data(&mut w, Seq::new(i), i * 2_500, &payload);
        if i % 4 == 0 {
            honest.control(&mut w, ctrl::ACK, i, &[i, 1000, 100, 8192, 0, 0, 0]);
        }
        if i >= 400 && i % 4 == 0 {
            let mut words = Vec::new();
            for _ in 0..182 {
                encode_loss(&mut words, Seq::new(0), Seq::new(i));
            }
            v.control(&mut w, ctrl::NAK, 0, &words);
            v.control(&mut w, ctrl::KEEPALIVE, 0, &[0]);
        }
        max_outbox = max_outbox.max(w.collect());
        w.advance(Duration::from_micros(2_500));
        max_outbox = max_outbox.max(w.collect());
        sent_to_attacker += rexmit_bytes(&w.take(v.addr));
        to_honest += data(&w.take(honest.addr)).len();
        w.take(p.addr);
    }
    assert_eq!(to_honest, 1200, "the honest viewer gets every packet");
    // Budget: the stream's rate again (≈ 533 kB/s here) for 2 s, plus one burst.
    let rate = 400.0 * (16.0 + 1316.0);
    let budget = rate * 2.0 + rate * 0.25;
    assert!(
        (sent_to_attacker as f64) < budget * 1.1,
        "attacker got {sent_to_attacker} bytes of retransmission, budget {budget}"
    );
    assert!(
        sent_to_attacker as f64 > rate,
        "the budget is used, not zero: {sent_to_attacker}"
    );
    assert!(max_outbox < 200, "outbox stays small: {max_outbox}");
    let Role::Viewer(vs) = &w.relay.conns[&v.relay_id].role else {
        panic!()
    };
    assert!(vs.loss.len() <= 2, "one merged range: {}", vs.loss.len());
}

#[test]
fn nak_that_breaks_the_protocol_ends_that_connection_only() {
    let mut w = World::new();
    let mut p = Caller::new(2000, 0);
    let mut viewers: Vec<Caller> = (0..4).map(|i| Caller::new(1001 + i, 0)).collect();
    for v in &mut viewers {
        v.join(&mut w, "request");
    }
    p.join(&mut w, "publish");
    for i in 0..50u32 {
        p.data(&mut w, Seq::new(i), i * 1000, b"x");
    }
    for v in &viewers {
        w.take(v.addr);
    }
    let cases: [(&Caller, Vec<u32>, &str); 2] = [
        // Past the last packet sent (plus the kernel path's slack).
        (
            &viewers[0],
            vec![10 | 1 << 31, 50 + 1024],
            "nak_beyond_sent",
        ),
        // A range that ends before it starts.
        (&viewers[1], vec![30 | 1 << 31, 20], "nak_reversed"),
    ];
    for (v, words, reason) in cases {
        v.control(&mut w, ctrl::NAK, 0, &words);
        assert_eq!(w.dropped(reason), 1, "{reason}");
        assert_eq!(ctrl(&w.take(v.addr), ctrl::SHUTDOWN).len(), 1, "{reason}");
        assert!(!w.relay.conns.contains_key(&v.relay_id), "{reason}");
    }
    // Within the slack: not an error, nothing sent (the viewer will ask again).
    let ok = &viewers[2];
    assert!(w.relay.conns.contains_key(&viewers[3].relay_id));
    ok.control(&mut w, ctrl::NAK, 0, &[50 | 1 << 31, 50 + 1023]);
    assert!(w.take(ok.addr).is_empty());
    p.data(&mut w, Seq::new(50), 50_000, b"y");
    assert_eq!(data(&w.take(ok.addr)), vec![(50, b"y".to_vec())]);
}

#[test]
fn retransmissions_beyond_the_burst_wait_for_the_budget() {
    let mut w = World::new();
    let mut v = Caller::new(1001, 0);
    let mut p = Caller::new(2000, 0);
    v.join(&mut w, "request");
    p.join(&mut w, "publish");
    let payload = [0u8; 1456];
    for i in 0..60u32 {
        p.data(&mut w, Seq::new(i), i * 1000, &payload);
    }
    w.take(v.addr);
    // No publisher rate yet: the floor (125 kB/s) applies, a burst of 250 ms of it.
    v.nak(&mut w, 0, 59);
    let now = data(&w.take(v.addr)).len();
    assert!((21..=22).contains(&now), "one burst at once: {now}");
    w.advance(Duration::from_millis(100));
    let later = data(&w.take(v.addr)).len();
    assert!(
        (7..=10).contains(&later),
        "then 125 kB/s: about 8 packets per 100 ms, got {later}"
    );
    // An ACK past what is still queued cancels it.
    v.control(&mut w, ctrl::ACK, 1, &[60, 1000, 100, 8192, 0, 0, 0]);
    w.advance(Duration::from_secs(1));
    assert!(data(&w.take(v.addr)).is_empty());
}

#[test]
fn reported_packets_that_cannot_be_sent_still_cost_budget() {
    let mut w = World::new();
    w.relay.cfg.buffer_packets = 8192;
    let mut v = Caller::new(1001, 0);
    let mut p = Caller::new(2000, 0);
    v.join(&mut w, "request");
    p.join(&mut w, "publish");
    // The publisher skips 1..=7999: the relay still expects them from it.
    p.data(&mut w, Seq::new(0), 0, b"a");
    p.data(&mut w, Seq::new(8000), 1000, b"b");
    w.take(v.addr);
    v.nak(&mut w, 1, 7999);
    let Role::Viewer(vs) = &w.relay.conns[&v.relay_id].role else {
        panic!()
    };
    // One burst (31,250 bytes at the floor rate) examines about 1,950 of them, not 7,999.
    let left: u32 = vs.loss.ranges().map(|r| r.count()).sum();
    assert!((5_900..6_200).contains(&left), "{left} left for later");
    assert!(
        data(&w.take(v.addr)).is_empty(),
        "nothing to send: all owed by the publisher"
    );
    w.advance(Duration::from_secs(1));
    let Role::Viewer(vs) = &w.relay.conns[&v.relay_id].role else {
        panic!()
    };
    let left: u32 = vs.loss.ranges().map(|r| r.count()).sum();
    assert_eq!(left, 0, "worked through within the budget's pace");
}

/// A retransmission that is lost too: libsrt asks again only on its periodic NAK timer,
/// which starts at 300 ms, so the relay checks the viewer's ACK instead. A resent packet the
/// viewer's ACK still stops at after its RTT + 4·RTTVar + 30 ms goes once more (at most 3
/// times); one it acknowledged does not; one behind an earlier gap waits for that gap; and
/// for a viewer the kernel serves the check allows for its ACKs being read every 20 ms.
#[test]
fn a_lost_retransmission_is_sent_again_while_the_ack_stops_at_it() {
    let mut w = World::new();
    let mut v = Caller::new(1001, 100);
    let mut p = Caller::new(2000, 0);
    v.join(&mut w, "request");
    p.join(&mut w, "publish");
    for i in 0..20u32 {
        p.data(&mut w, Seq::new(i), i * 1_000, b"x");
    }
    w.take(v.addr);
    // 105 and 110 lost; the viewer reports both, and its ACK stops at 105 (RTT 1 ms, var 0.1).
    v.ack(&mut w, 105);
    v.nak(&mut w, 105, 105);
    v.nak(&mut w, 110, 110);
    assert_eq!(rexmits(&w.take(v.addr)), vec![105, 110]);
    // Both resends lost. At 31.4 ms: 105 again; 110 waits behind 105.
    w.advance(Duration::from_millis(31));
    assert!(rexmits(&w.take(v.addr)).is_empty(), "not before 31.4 ms");
    w.advance(Duration::from_millis(1));
    assert_eq!(rexmits(&w.take(v.addr)), vec![105]);
    // 105 arrives: the ACK moves to 110, whose check (waiting) sends it once more.
    v.ack(&mut w, 110);
    w.advance(Duration::from_millis(40));
    assert_eq!(rexmits(&w.take(v.addr)), vec![110]);
    // 110 never arrives: twice more (3 in all after the first resend), then no more.
    w.advance(Duration::from_millis(200));
    assert_eq!(rexmits(&w.take(v.addr)), vec![110, 110]);
    // Acknowledged: nothing more, ever.
    v.ack(&mut w, 120);
    v.nak(&mut w, 115, 115);
    assert_eq!(
        rexmits(&w.take(v.addr)),
        Vec::<u32>::new(),
        "acknowledged already"
    );
    w.advance(Duration::from_millis(200));
    assert!(rexmits(&w.take(v.addr)).is_empty());
    // Served by the kernel, whose ACK reports the relay reads later: checked 25 ms later
    // (RTT 0.5 ms ± 0.1 ms here: 0.9 + 30 + 25 ms).
    for i in 20..30u32 {
        p.data(&mut w, Seq::new(i), i * 1_000, b"x");
    }
    w.take(v.addr);
    w.relay.handle_kernel(KernelReport::Serving {
        conn: v.relay_id,
        epoch: Some(1),
        since: None,
    });
    let kernel_ack = |w: &mut World| {
        let report = KernelAcks {
            last: w.now,
            ack_seq: Seq::new(125),
            rtt: Some((500, 100)),
            avail_buf: None,
            answered: 1,
            light: 0,
            bytes: 44,
        };
        w.relay.handle_kernel(KernelReport::Acks {
            conn: v.relay_id,
            acks: report,
        });
    };
    kernel_ack(&mut w);
    v.nak(&mut w, 125, 125);
    assert_eq!(rexmits(&w.take(v.addr)), vec![125]);
    w.advance(Duration::from_millis(55));
    kernel_ack(&mut w);
    assert!(rexmits(&w.take(v.addr)).is_empty(), "not before 55.9 ms");
    w.advance(Duration::from_millis(1));
    assert_eq!(rexmits(&w.take(v.addr)), vec![125]);
}

/// A burst's last packet lost: the viewer cannot report it until the next burst, but its
/// ACK stops at it. An ACK that stops at a packet sent more than the viewer's RTT + 4·RTTVar
/// + 10 ms before is a loss report: resent at once, once. One sent just now is in flight.
#[test]
fn an_ack_that_stops_at_an_old_packet_gets_it_resent() {
    let mut w = World::new();
    let mut v = Caller::new(1001, 100);
    let mut p = Caller::new(2000, 0);
    v.join(&mut w, "request");
    p.join(&mut w, "publish");
    for i in 0..5u32 {
        p.data(&mut w, Seq::new(i), i * 1_000, b"x");
    }
    w.take(v.addr);
    // 2 ms later: 104 may be in flight.
    w.advance(Duration::from_millis(2));
    v.ack(&mut w, 104);
    assert!(rexmits(&w.take(v.addr)).is_empty());
    // 12 ms later (> 1.4 ms + 10 ms): lost.
    w.advance(Duration::from_millis(10));
    v.ack(&mut w, 104);
    assert_eq!(rexmits(&w.take(v.addr)), vec![104]);
    v.ack(&mut w, 104);
    assert!(
        rexmits(&w.take(v.addr)).is_empty(),
        "once; its recheck follows"
    );
}
