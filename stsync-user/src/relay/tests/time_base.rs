//! A viewer's time base: late joiners under loss, play-out measured as libsrt plays.

use super::*;

/// What a libsrt viewer makes of what the relay sends it: its zero from the first
/// conclusion answer that reaches it (arrival − timestamp), each data packet's play-out at
/// zero + timestamp + latency (read as libsrt reads timestamps), and the drift of every
/// ACKACK and keepalive against that zero. Data that arrives before the answer is dropped
/// (as captures show libsrt does; it re-requests the handshake). The world has no network
/// delay: a fresh packet plays exactly one latency after it arrives.
#[derive(Default)]
struct SrtView {
    zero: Option<Instant>,
    /// Data packets that came before the answer (dropped).
    early: u32,
    /// (seq, retransmitted, play-out lead µs) of every data packet.
    data: Vec<(Seq, bool, i64)>,
    max_drift_us: i64,
    /// Loss on the viewer's own leg: first transmissions of these are lost, and so are
    /// this many conclusion answers.
    lose: Vec<Seq>,
    lose_answers: u32,
    /// What it acknowledged last (it acknowledges every 10 ms when that moved, as libsrt).
    acked: Option<Seq>,
    last_ack_at: Option<Instant>,
}

impl SrtView {
    /// The first sequence number it lacks, counting from `isn`.
    fn first_missing(&self, isn: Seq) -> Seq {
        let have: HashSet<Seq> = self.data.iter().map(|d| d.0).collect();
        let mut s = isn;
        while have.contains(&s) {
            s = s.next();
        }
        s
    }

    /// Its full ACK, if 10 ms passed and it has something new to acknowledge.
    fn ack_due(&mut self, now: Instant, isn: Seq) -> Option<u32> {
        self.zero?;
        if self
            .last_ack_at
            .is_some_and(|t| now < t + Duration::from_millis(10))
        {
            return None;
        }
        let ack = self.first_missing(isn);
        if self.acked == Some(ack) {
            return None;
        }
        self.acked = Some(ack);
        self.last_ack_at = Some(now);
        Some(ack.get())
    }

    fn take(&mut self, now: Instant, got: &[Got]) {
        for g in got {
            match *g {
                Got::Ctrl {
                    typ: ctrl::HANDSHAKE,
                    ..
                } if self.lose_answers > 0 => self.lose_answers -= 1,
                Got::Ctrl {
                    typ: ctrl::HANDSHAKE,
                    ts,
                    ..
                } if self.zero.is_none() => {
                    self.zero = Some(now - Duration::from_micros(ts.into()));
                }
                Got::Ctrl {
                    typ: ctrl::ACKACK | ctrl::KEEPALIVE,
                    ts,
                    ..
                } => {
                    let clock = self.clock(now);
                    let drift = clock as i64 - playout::unwrap(clock, ts) as i64;
                    self.max_drift_us = self.max_drift_us.max(drift.abs());
                }
                Got::Data { seq, msg, .. }
                    if msg & MSG_REXMIT_FLAG == 0 && self.lose.contains(&seq) => {}
                Got::Data { .. } if self.zero.is_none() => self.early += 1,
                Got::Data { seq, msg, ts, .. } => self.data_at(now, seq, msg, ts),
                _ => {}
            }
        }
    }

    fn clock(&self, at: Instant) -> u64 {
        at.duration_since(self.zero.expect("connected")).as_micros() as u64
    }

    fn data_at(&mut self, at: Instant, seq: Seq, msg: u32, ts: u32) {
        let lead = playout::lead_us(self.clock(at), ts, LATENCY, 0);
        self.data.push((seq, msg & MSG_REXMIT_FLAG != 0, lead));
    }

    /// Every timestamp agrees with the zero the viewer took: no packet plays later than one
    /// latency after it arrives (the first exactly then), control packets carry no drift;
    /// and the viewer's sequence starts at its ISN with nothing missing (what it dropped
    /// before its answer included).
    fn assert_agrees(&self, label: &str, isn: Seq) {
        assert!(self.zero.is_some(), "{label}: never connected");
        assert!(!self.data.is_empty(), "{label}: no data");
        let lat = LATENCY.as_micros() as i64;
        for &(seq, rexmit, lead) in &self.data {
            assert!(
                lead <= lat + 1_000,
                "{label}: seq {} plays {lead} µs after arrival (latency {lat}): time base and timestamp disagree",
                seq.get()
            );
            // Nothing here arrives more than a few packets late (a recovery, a resend).
            assert!(
                lead >= lat - 50_000,
                "{label}: seq {} (resent: {rexmit}) plays {lead} µs after arrival",
                seq.get()
            );
        }
        assert!(
            self.max_drift_us <= 1_000,
            "{label}: control timestamps drift {} µs from the time base",
            self.max_drift_us
        );
        // The first packet plays one latency after it arrives; for a viewer whose answer
        // was lost, the first is the replay of what it dropped, 5 ms later.
        let first = self.data[0];
        assert!(
            first.2.abs_diff(lat) <= 1_000
                || (first.1 && self.early > 0 && first.2 >= lat - 10_000),
            "{label}: starts with {first:?}"
        );
        let mut seqs: Vec<u32> = self.data.iter().map(|d| d.0.diff(isn) as u32).collect();
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(seqs[0], 0, "{label}: first packet is not its ISN");
        assert_eq!(
            seqs.len() as u32,
            seqs[seqs.len() - 1] + 1,
            "{label}: a gap in what it got"
        );
    }
}

/// A publisher streaming one packet every 5 ms to viewers whose datagrams go through
/// their `SrtView`.
struct Scene {
    w: World,
    p: Caller,
    next: u32,
    views: Vec<(Caller, SrtView)>,
}

impl Scene {
    /// The publisher's clock is 2 s in.
    fn pts(i: u32) -> u32 {
        2_000_000 + i * 5_000
    }

    /// `n` more packets, those in `lost` lost on the publisher leg; viewers in the scene
    /// take what they were sent after each.
    fn publish(&mut self, n: u32, lost: &[u32]) {
        for _ in 0..n {
            let i = self.next;
            if !lost.contains(&i) {
                self.p.data(
                    &mut self.w,
                    self.p.isn.add(i),
                    Self::pts(i),
                    &[i as u8; 188],
                );
            }
            self.next += 1;
            // Taken every millisecond: what the relay sends arrives when it is sent.
            for _ in 0..5 {
                self.deliver();
                self.w.advance(Duration::from_millis(1));
            }
        }
        self.deliver();
    }

    /// Each viewer takes what it was sent.
    fn deliver(&mut self) {
        for (c, v) in self.views.iter_mut() {
            let got = self.w.take(c.addr);
            v.take(self.w.now, &got);
            if let Some(ack) = v.ack_due(self.w.now, c.isn) {
                c.ack(&mut self.w, ack);
                let got = self.w.take(c.addr);
                v.take(self.w.now, &got);
            }
        }
    }

    /// The publisher's retransmission of packet `i`.
    fn resend(&mut self, i: u32) {
        let mut b = Vec::new();
        write_data(
            &mut b,
            self.p.isn.add(i),
            0xC000_0000 | MSG_REXMIT_FLAG | i,
            Self::pts(i),
            self.p.relay_id,
            &[i as u8; 188],
        );
        self.w.send(self.p.addr, &b);
    }

    /// A viewer connects while the stream flows and joins the scene, its conclusion
    /// answer lost `lost` times: data reaches it first, which it drops, repeating its
    /// conclusion at once ("PACKET NOT HANDSHAKE - re-requesting handshake from peer").
    fn connect(&mut self, port: u16, isn: u32, lost: u32) {
        let mut c = Caller::new(port, isn);
        let w = &mut self.w;
        let mut b = Vec::new();
        write_control(
            &mut b,
            ctrl::HANDSHAKE,
            0,
            0,
            0,
            &c.handshake(hs_type::INDUCTION, 4, 0).words(),
        );
        w.send(c.addr, &b);
        let ind = ctrl(&w.take(c.addr), ctrl::HANDSHAKE);
        let cookie = Handshake::parse(&ind[0].1).unwrap().cookie;
        let concl = c.conclusion(cookie, &sid(w, "request"));
        w.send(c.addr, &concl);
        c.relay_id = *w
            .relay
            .by_peer
            .get(&(c.addr, c.socket_id))
            .expect("admitted");
        let view = SrtView {
            lose_answers: lost,
            ..Default::default()
        };
        self.views.push((c, view));
        for _ in 0..lost {
            self.publish(1, &[]);
            self.w.send(self.views.last().unwrap().0.addr, &concl);
        }
        self.deliver();
    }
}

/// Issue 12: late joiners whose libsrt accepted and acknowledged every packet and played
/// none. A viewer mapped while a publisher packet was missing started at that packet, with
/// its clock fixed from a newer one: the old packet's timestamp fell before the viewer's
/// zero, wrapped to 2^32 − x, and libsrt held it (and all behind it) for 71 minutes. Here
/// viewers join around loss on the publisher leg, on their own leg, and with their
/// handshake answer lost once and twice; every timestamp each gets must agree with the
/// time base it took, and each gets its stream from its ISN without a gap.
#[test]
fn late_joiners_keep_one_time_base_whatever_is_lost_around_their_join() {
    let mut w = World::new();
    let mut p = Caller::new(2000, 0x7FFF_FF00); // its sequence wraps during the test
    p.join(&mut w, "publish");
    let mut sc = Scene {
        w,
        p,
        next: 0,
        views: Vec::new(),
    };
    sc.connect(1001, 100, 0);
    sc.publish(300, &[]);

    // Publisher leg: 300 and 301 lost; a viewer joins while they are missing and a fresh
    // packet (303) maps it before their retransmissions come. The old code started this
    // viewer at 300 with the clock of 303: 300's timestamp fell 15 ms before the viewer's
    // zero.
    sc.publish(3, &[300, 301]);
    sc.connect(1002, 7000, 0);
    sc.publish(1, &[]);
    sc.resend(300);
    sc.resend(301);
    // 305 lost; a viewer joins while it is missing, and its retransmission comes first:
    // a recovered packet starts no one.
    sc.publish(3, &[305]);
    sc.connect(1006, 9000, 0);
    sc.resend(305);
    sc.deliver();
    sc.publish(100, &[]);

    // Viewer leg: a viewer whose first 3 packets are lost asks for them; they come back
    // with their own timestamps.
    sc.connect(1003, 0x7FFF_FFFE, 0);
    let (b, bv) = &mut sc.views[3];
    bv.lose = (0..3).map(|i| b.isn.add(i)).collect();
    sc.publish(5, &[]);
    let (b, _) = &sc.views[3];
    b.nak(&mut sc.w, b.isn.get(), b.isn.add(2).get());
    sc.deliver();
    sc.publish(50, &[]);

    // The handshake answer lost once, then twice, while data flows.
    for (port, lost) in [(1004u16, 1u32), (1005, 2)] {
        sc.connect(port, 40_000, lost);
        sc.publish(50, &[]);
    }
    sc.publish(100, &[]);
    // Each viewer acknowledges what it has: ACKACKs on the same clock, and the relay's
    // reading of each viewer's play-out lead is about the latency (its ACKs go every 10 ms,
    // so the newest packet they acknowledge came up to 15 ms before).
    for (c, v) in &sc.views {
        let high = v
            .data
            .iter()
            .map(|d| d.0)
            .reduce(|a, b| if b.gt(a) { b } else { a });
        let ack = high.unwrap().next().get();
        c.ack(&mut sc.w, ack);
        let lead = sc.w.relay.conns[&c.relay_id].stats.playout_lead_us;
        assert!(
            (105_000..=121_000).contains(&lead),
            "viewer {}: play-out lead {lead} µs",
            c.addr.port()
        );
    }
    sc.deliver();
    sc.publish(10, &[]);

    for (c, v) in &sc.views {
        v.assert_agrees(&format!("viewer {}", c.addr.port()), c.isn);
    }
    for (c, v) in &sc.views[1..3] {
        assert!(
            v.data.iter().all(|d| !d.1),
            "viewer {} started on a fresh packet: nothing before it to resend",
            c.addr.port()
        );
    }
    assert!(
        sc.views[3].1.data.iter().filter(|d| d.1).count() == 3,
        "viewer 1003 had its 3 lost packets resent"
    );
    for (c, v) in &sc.views[4..6] {
        assert!(
            v.early > 0,
            "viewer {} got data before its answer (and had it replayed)",
            c.addr.port()
        );
    }
}

/// A viewer that acknowledges a packet long after its play-out time (here: one it was
/// sent 2.5 s before) shows it in its play-out lead, and the relay warns once; an ACK
/// that acknowledges nothing new (a paused stream) measures nothing.
#[test]
fn a_viewer_acknowledging_far_from_its_play_out_is_measured_and_warned() {
    let mut w = World::new();
    let mut v = Caller::new(1001, 100);
    let mut p = Caller::new(2000, 0);
    v.join(&mut w, "request");
    p.join(&mut w, "publish");
    for i in 0..10u32 {
        p.data(&mut w, Seq::new(i), i * 5_000, b"x");
        w.advance(Duration::from_millis(5));
    }
    v.ack(&mut w, 110);
    let lead = |w: &World| w.relay.conns[&v.relay_id].stats.playout_lead_us;
    let warned = |w: &World| w.relay.conns[&v.relay_id].playout_warned;
    assert!((115_000..=120_000).contains(&lead(&w)), "{}", lead(&w));
    w.advance(Duration::from_millis(2_500));
    v.ack(&mut w, 110);
    assert!(
        (115_000..=120_000).contains(&lead(&w)),
        "nothing new acknowledged"
    );
    assert_eq!(warned(&w), None);
    // Packets 10 and 11, then an ACK of 10 only 2.5 s later.
    for i in 10..12u32 {
        p.data(&mut w, Seq::new(i), 2_500_000 + i * 5_000, b"x");
        w.advance(Duration::from_millis(5));
    }
    w.advance(Duration::from_millis(2_500));
    v.ack(&mut w, 111);
    assert!(lead(&w) < -2_000_000, "{}", lead(&w));
    assert_eq!(warned(&w), Some(w.now));
    assert!(w.render().contains(&format!(
        "srt_connection_playout_lead{{id=\"{}\"}} -2.",
        v.relay_id
    )));
}
