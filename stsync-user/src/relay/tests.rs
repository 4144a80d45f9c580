//! The relay driven over a virtual clock by scripted callers that speak the wire format the
//! way libsrt does: handshakes, publishing, viewing, loss, silence, takeover, garbage.

use super::*;
use crate::srt::handshake::{
    encode_sid, ext, ext_header, hs_type, srt_flag, Handshake, SRT_VERSION,
};
use crate::srt::packet::{encode_loss, write_control, write_data, Ack};
use per_address::PerAddress;
use stsync_common::srt::MSG_REXMIT_FLAG;

const LATENCY: Duration = Duration::from_millis(120);
/// Where a new connection's clock reads at its handshake.
const HEADROOM_US: u32 = CLOCK_HEADROOM.as_micros() as u32;

struct World {
    relay: Relay,
    /// Datagrams the relay sent that no `take` asked for yet.
    sent: Vec<(SocketAddr, Vec<u8>)>,
    now: Instant,
}

/// One datagram the relay sent, decoded.
#[derive(Debug, Clone)]
enum Got {
    Data {
        seq: Seq,
        msg: u32,
        ts: u32,
        dest: u32,
        payload: Vec<u8>,
    },
    Ctrl {
        typ: u16,
        info: u32,
        ts: u32,
        body: Vec<u8>,
    },
}

impl World {
    fn new() -> Self {
        let now = Instant::now();
        let cfg = RelayConfig {
            latency: LATENCY,
            buffer_packets: 64,
            idle_timeout: Duration::from_secs(5),
            max_connections: 16,
            max_viewers_per_stream: 8,
            per_address: AddressLimits {
                max_connections: 12,
                handshakes_per_sec: 50,
            },
            session_ttl: Duration::from_secs(300),
        };
        let streams = vec![StreamConfig {
            resource: "1".to_string(),
            delay_ms: 0,
        }];
        World {
            relay: Relay::new(cfg, streams, [9; 16], now),
            sent: Vec::new(),
            now,
        }
    }

    /// A session key for `resource`, or why not.
    fn try_key(&mut self, resource: &str) -> Result<String, CommandError> {
        let cmd = Command::MintSession {
            resource: resource.to_string(),
            key: rand::random(),
        };
        match self.relay.handle_command(self.now, cmd)? {
            Reply::Session(key) => Ok(key),
            other => panic!("{other:?}"),
        }
    }

    fn key(&mut self, resource: &str) -> String {
        self.try_key(resource).expect("a configured stream")
    }

    /// Asks for a stream delay the way the HTTP API does.
    fn set_delay(&mut self, delay_ms: u64) {
        let cmd = Command::SetDelay {
            resource: "1".to_string(),
            delay_ms,
        };
        self.relay.handle_command(self.now, cmd).unwrap();
    }

    fn stream(&self) -> StreamSnapshot {
        self.relay.stats().streams.remove(0)
    }

    /// The Prometheus exposition of the relay's counters.
    fn render(&self) -> String {
        crate::metrics::Scrape {
            relay: self.relay.stats(),
            datapath: Default::default(),
            heap_allocations: 0,
        }
        .render()
    }

    /// Moves what the relay sent since the last call into `sent`; returns how many.
    fn collect(&mut self) -> usize {
        let Some(batch) = self.relay.poll_transmit() else {
            return 0;
        };
        let n = batch.len();
        self.sent
            .extend(batch.iter().map(|d| (d.dst, [d.head, d.payload].concat())));
        n
    }

    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let t = self.relay.poll_timeout();
            if t > end {
                break;
            }
            self.now = t.max(self.now);
            self.relay.handle_timeout(self.now);
        }
        self.now = end;
    }

    fn send(&mut self, from: SocketAddr, bytes: &[u8]) {
        self.relay.handle_datagram(self.now, from, bytes);
    }

    /// Everything queued for `to` since the last call (others' datagrams stay queued).
    fn take(&mut self, to: SocketAddr) -> Vec<Got> {
        let mut got = Vec::new();
        self.collect();
        let (mine, others) = std::mem::take(&mut self.sent)
            .into_iter()
            .partition(|(dst, _)| *dst == to);
        self.sent = others;
        for (_, bytes) in mine {
            got.push(match Packet::parse(&bytes).unwrap() {
                Packet::Data(d) => Got::Data {
                    seq: d.seq,
                    msg: d.msg,
                    ts: d.ts,
                    dest: d.dest,
                    payload: d.payload.to_vec(),
                },
                Packet::Control(c) => {
                    assert_eq!(
                        c.dest,
                        0x100 + u32::from(to.port()),
                        "addressed to the caller's socket"
                    );
                    Got::Ctrl {
                        typ: c.typ,
                        info: c.info,
                        ts: c.ts,
                        body: c.body.to_vec(),
                    }
                }
            });
        }
        got
    }

    fn dropped(&self, reason: &str) -> u64 {
        self.relay.stats().dropped(reason)
    }
}

fn data(got: &[Got]) -> Vec<(u32, Vec<u8>)> {
    got.iter()
        .filter_map(|g| match g {
            Got::Data { seq, payload, .. } => Some((seq.get(), payload.clone())),
            _ => None,
        })
        .collect()
}

/// The sequence numbers of the retransmissions in `got`.
fn rexmits(got: &[Got]) -> Vec<u32> {
    got.iter()
        .filter_map(|g| match g {
            Got::Data { seq, msg, .. } if msg & MSG_REXMIT_FLAG != 0 => Some(seq.get()),
            _ => None,
        })
        .collect()
}

/// `got` without retransmissions.
fn fresh(got: Vec<Got>) -> Vec<Got> {
    got.into_iter()
        .filter(|g| !matches!(g, Got::Data { msg, .. } if msg & MSG_REXMIT_FLAG != 0))
        .collect()
}

fn ctrl(got: &[Got], typ: u16) -> Vec<(u32, Vec<u8>)> {
    got.iter()
        .filter_map(|g| match g {
            Got::Ctrl {
                typ: t, info, body, ..
            } if *t == typ => Some((*info, body.clone())),
            _ => None,
        })
        .collect()
}

/// A scripted libsrt-like caller.
struct Caller {
    addr: SocketAddr,
    socket_id: u32,
    isn: Seq,
    relay_id: u32,
}

impl Caller {
    fn new(port: u16, isn: u32) -> Self {
        Caller {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            socket_id: 0x100 + u32::from(port),
            isn: Seq::new(isn),
            relay_id: 0,
        }
    }

    fn handshake(&self, typ: u32, version: u32, cookie: u32) -> Handshake {
        crate::srt::handshake::caller(typ, version, cookie, self.isn, self.socket_id)
    }

    /// Induction then conclusion; returns the relay's final answer (type, body).
    fn connect(&mut self, w: &mut World, sid: &str) -> Result<(), u32> {
        let mut b = Vec::new();
        write_control(
            &mut b,
            ctrl::HANDSHAKE,
            0,
            0,
            0,
            &self.handshake(hs_type::INDUCTION, 4, 0).words(),
        );
        w.send(self.addr, &b);
        let ind = ctrl(&w.take(self.addr), ctrl::HANDSHAKE);
        let cookie = Handshake::parse(&ind[0].1).unwrap().cookie;
        let concl = self.conclusion(cookie, sid);
        w.send(self.addr, &concl);
        let ans = ctrl(&w.take(self.addr), ctrl::HANDSHAKE);
        let hs = Handshake::parse(&ans[0].1).unwrap();
        if hs.hs_type != hs_type::CONCLUSION {
            return Err(hs.hs_type);
        }
        assert_eq!(hs.isn, self.isn, "listener answers with the caller's ISN");
        self.relay_id = hs.socket_id;
        Ok(())
    }

    fn conclusion(&self, cookie: u32, sid: &str) -> Vec<u8> {
        let mut words = self
            .handshake(hs_type::CONCLUSION, 5, cookie)
            .words()
            .to_vec();
        let flags = srt_flag::TSBPDSND
            | srt_flag::TSBPDRCV
            | srt_flag::CRYPT
            | srt_flag::TLPKTDROP
            | srt_flag::REXMITFLG;
        words.extend([
            ext_header(ext::HSREQ, 3),
            SRT_VERSION,
            flags,
            (120 << 16) | 120,
        ]);
        let sid = encode_sid(sid.as_bytes());
        words.push(ext_header(ext::SID, sid.len()));
        words.extend(sid);
        let mut b = Vec::new();
        write_control(&mut b, ctrl::HANDSHAKE, 0, 0, 0, &words);
        b
    }

    fn data(&self, w: &mut World, seq: Seq, ts: u32, payload: &[u8]) {
        let mut b = Vec::new();
        write_data(
            &mut b,
            seq,
            0xC000_0000 | seq.get() & 0x3FF_FFFF,
            ts,
            self.relay_id,
            payload,
        );
        w.send(self.addr, &b);
    }

    fn control(&self, w: &mut World, typ: u16, info: u32, body: &[u32]) {
        let mut b = Vec::new();
        write_control(&mut b, typ, info, 0, self.relay_id, body);
        w.send(self.addr, &b);
    }

    /// A full ACK up to `n` (also its ACK number), reporting RTT 1 ms ± 0.1 ms.
    fn ack(&self, w: &mut World, n: u32) {
        self.control(w, ctrl::ACK, n, &[n, 1_000, 100, 8192, 0, 0, 0]);
    }

    fn nak(&self, w: &mut World, first: u32, last: u32) {
        let mut words = Vec::new();
        encode_loss(&mut words, Seq::new(first), Seq::new(last));
        self.control(w, ctrl::NAK, 0, &words);
    }
}

fn sid(w: &mut World, mode: &str) -> String {
    format!("#!::r=1,s={},m={mode}", w.key("1"))
}

impl Caller {
    /// Connects to resource 1 in `mode` with a fresh key; panics on rejection.
    fn join(&mut self, w: &mut World, mode: &str) {
        let s = sid(w, mode);
        self.connect(w, &s).unwrap();
    }
}

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

#[test]
fn silent_viewer_times_out_without_disturbing_others() {
    let mut w = World::new();
    let mut quiet = Caller::new(1001, 0);
    let mut live = Caller::new(1002, 0);
    let mut p = Caller::new(2000, 0);
    quiet.join(&mut w, "request");
    live.join(&mut w, "request");
    p.join(&mut w, "publish");
    let mut live_got = 0;
    for i in 0..700u32 {
        p.data(&mut w, Seq::new(i), i * 10_000, b"x");
        if i % 10 == 0 {
            live.control(&mut w, ctrl::ACK, i, &[i, 1000, 100, 8192, 0, 0, 0]);
            p.control(&mut w, ctrl::KEEPALIVE, 0, &[0]);
        }
        w.advance(Duration::from_millis(10));
        live_got += data(&w.take(live.addr)).len();
        let q = w.take(quiet.addr);
        if !ctrl(&q, ctrl::SHUTDOWN).is_empty() {
            assert!(
                i >= 490,
                "timed out after 5 s of silence, not before (i = {i})"
            );
        }
    }
    assert_eq!(live_got, 700, "the live viewer got every packet");
    assert_eq!(w.relay.streams[0].viewers, vec![live.relay_id]);
    assert!(!w.render().contains(&format!("id=\"{}\"", quiet.relay_id)));
    assert!(w.take(p.addr).iter().all(|g| !matches!(
        g,
        Got::Ctrl {
            typ: ctrl::SHUTDOWN,
            ..
        }
    )));
}

/// A viewer whose ACKs the kernel handles sends the relay nothing, yet stays alive and
/// keeps its metrics from what the datapath reports; a viewer that keeps ACKing the same
/// position while data waits is closed as stuck after the idle timeout, not before.
#[test]
fn kernel_handled_acks_keep_a_viewer_alive_and_a_stuck_viewer_is_closed() {
    let mut w = World::new();
    let mut kern = Caller::new(1001, 0);
    let mut stuck = Caller::new(1002, 0);
    let mut p = Caller::new(2000, 0);
    kern.join(&mut w, "request");
    stuck.join(&mut w, "request");
    p.join(&mut w, "publish");
    let mut closed_at = None;
    for i in 0..800u32 {
        p.data(&mut w, Seq::new(i), i * 10_000, b"x");
        if i % 10 == 0 {
            let report = KernelAcks {
                last: w.now,
                ack_seq: Seq::new(i),
                rtt: Some((500, 100)),
                answered: 1,
                light: 2,
                bytes: 44 + 2 * 20,
            };
            w.relay.handle_kernel(KernelReport::Acks {
                conn: kern.relay_id,
                acks: report,
            });
            stuck.control(&mut w, ctrl::ACK, i, &[5, 1000, 100, 8192, 0, 0, 0]);
            p.control(&mut w, ctrl::KEEPALIVE, 0, &[0]);
        }
        w.advance(Duration::from_millis(10));
        assert!(
            ctrl(&w.take(kern.addr), ctrl::SHUTDOWN).is_empty(),
            "the kernel-acked viewer was closed at i = {i}"
        );
        if !ctrl(&w.take(stuck.addr), ctrl::SHUTDOWN).is_empty() {
            closed_at.get_or_insert(i);
        }
    }
    // Its ACK to 5 arrived at i = 0; packets beyond it waited from then on.
    let at = closed_at.expect("the stuck viewer was closed");
    assert!((495..=520).contains(&at), "closed as stuck at i = {at}");
    assert_eq!(w.relay.streams[0].viewers, vec![kern.relay_id]);
    let m = w.render();
    let id = kern.relay_id.to_string();
    let metric = |name: &str| {
        m.lines()
            .find(|l| l.starts_with(&format!("{name}{{id=\"{id}\"")))
            .and_then(|l| l.rsplit(' ').next())
            .map(|v| v.parse::<f64>().unwrap())
    };
    // 80 reports: 80 ACKs answered (ACKACKs sent) and 160 light ACKs.
    assert_eq!(metric("srt_connection_ctrl_packets_recv"), Some(240.0));
    assert_eq!(
        metric("srt_connection_ctrl_bytes_recv").map(|b| b >= 80.0 * 84.0),
        Some(true)
    );
    assert_eq!(metric("srt_connection_rtt"), Some(0.0005));
    assert!(metric("srt_connection_ctrl_packets_sent").unwrap() >= 80.0);
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

#[test]
fn rejections_and_repeated_conclusions() {
    let mut w = World::new();
    let mut c = Caller::new(1001, 0);
    assert_eq!(c.connect(&mut w, "#!::r=2,s=1,m=request"), Err(2404));
    assert_eq!(c.connect(&mut w, "#!::r=1,s=abc,m=request"), Err(2401));
    assert_eq!(c.connect(&mut w, "#!::r=1,m=request"), Err(1004));
    assert_eq!(c.connect(&mut w, "#!::r=1,s=1,m=play"), Err(2405));
    let key = w.key("1");
    let ok = format!("#!::r=1,s={key},m=request");
    c.connect(&mut w, &ok).unwrap();
    let first_id = c.relay_id;
    // The answer was lost: the same conclusion again gets the same answer, no new connection.
    let concl = c.conclusion(0, &ok);
    w.send(c.addr, &concl);
    let again = ctrl(&w.take(c.addr), ctrl::HANDSHAKE);
    assert_eq!(Handshake::parse(&again[0].1).unwrap().socket_id, first_id);
    assert_eq!(w.relay.connection_count(), 1);
    // A handshake shorter than the answer is not answered: no amplification.
    c.control(&mut w, ctrl::HANDSHAKE, 0, &[0; 4]);
    assert!(w.take(c.addr).is_empty());
    assert_eq!(w.dropped("short_handshake"), 1);
    // The same key from another caller is used up.
    let mut d = Caller::new(1002, 0);
    assert_eq!(d.connect(&mut w, &ok), Err(2403));
    // An expired key.
    let key = w.key("1");
    w.advance(Duration::from_secs(301));
    assert_eq!(
        d.connect(&mut w, &format!("#!::r=1,s={key},m=request")),
        Err(2424)
    );
    // A conclusion with a forged cookie is dropped, not answered.
    let forged = d.conclusion(12345, &ok);
    w.send(d.addr, &forged);
    assert!(w.take(d.addr).is_empty());
    assert_eq!(w.dropped("bad_cookie"), 1);
}

#[test]
fn garbage_is_counted_and_never_panics() {
    let mut w = World::new();
    let mut v = Caller::new(1001, 0);
    let mut p = Caller::new(2000, 0);
    v.join(&mut w, "request");
    p.join(&mut w, "publish");
    let evil = SocketAddr::from(([127, 0, 0, 1], 6666));
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for i in 0..20_000u32 {
        let len = (next() % 200) as usize;
        let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Aim a third at live sockets, with every control type, from the right and wrong address.
        if b.len() >= 16 && i % 3 == 0 {
            b[12..16]
                .copy_from_slice(&[v.relay_id, p.relay_id][(i as usize / 2) % 2].to_be_bytes());
            b[0] = 0x80;
            b[1] = (i % 9) as u8;
        }
        // From the peers' own addresses, anything but a (valid) SHUTDOWN or a NAK (one that
        // breaks the protocol ends the connection: see `nak_that_breaks_the_protocol_...`).
        let from = if i % 2 == 0 || (b.len() >= 2 && b[0] == 0x80 && (b[1] == 5 || b[1] == 3)) {
            evil
        } else {
            [v.addr, p.addr][(i as usize / 2) % 2]
        };
        w.send(from, &b);
        if i % 1000 == 0 {
            v.control(&mut w, ctrl::KEEPALIVE, 0, &[0]);
            p.control(&mut w, ctrl::KEEPALIVE, 0, &[0]);
        }
        w.advance(Duration::from_micros(300));
    }
    w.send(evil, &vec![0u8; 70_000]);
    assert!(w.dropped("oversized") >= 1);
    assert!(w.dropped("truncated") > 1000);
    // The stream still works end to end.
    w.take(v.addr);
    let seq = match &w.relay.conns[&p.relay_id].role {
        Role::Publisher(rx) => rx.next_seq(),
        _ => unreachable!(),
    };
    assert!(w.relay.conns.contains_key(&v.relay_id));
    p.data(&mut w, seq, 0, b"still here");
    assert!(data(&w.take(v.addr)).iter().any(|d| d.1 == b"still here"));
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
fn publishers_have_their_own_budget_and_viewers_count_once_connected() {
    let mut w = World::new();
    w.relay.cfg.max_connections = 2;
    let mut viewers: Vec<Caller> = (0..3).map(|i| Caller::new(1001 + i, 0)).collect();
    viewers[0].join(&mut w, "request");
    assert_eq!(
        w.stream().viewers,
        0,
        "a viewer counts once it answers, not at its conclusion"
    );
    viewers[0].control(&mut w, ctrl::KEEPALIVE, 0, &[0]);
    assert_eq!(w.stream().viewers, 1);
    viewers[1].join(&mut w, "request");
    let key = sid(&mut w, "request");
    assert_eq!(viewers[2].connect(&mut w, &key), Err(2402), "viewers full");
    // The stream's publisher, and a takeover, still get in.
    let mut a = Caller::new(2000, 0);
    let mut b = Caller::new(2001, 0);
    a.join(&mut w, "publish");
    b.join(&mut w, "publish");
    assert_eq!(ctrl(&w.take(a.addr), ctrl::SHUTDOWN).len(), 1);
    // A viewer that never completed leaves without having counted.
    w.advance(Duration::from_secs(6));
    assert_eq!(w.stream().viewers, 0);
}

#[test]
fn per_address_limits_on_connections_and_handshakes() {
    let mut w = World::new();
    w.relay.addresses = PerAddress::new(AddressLimits {
        max_connections: 2,
        handshakes_per_sec: 2,
    });
    let mut c: Vec<Caller> = (0..3).map(|i| Caller::new(1001 + i, 0)).collect();
    c[0].join(&mut w, "request");
    c[1].join(&mut w, "request");
    let key = sid(&mut w, "request");
    assert_eq!(c[2].connect(&mut w, &key), Err(2402), "2 per address");
    // Another host is not affected.
    let mut other = Caller::new(1004, 0);
    other.addr = SocketAddr::from(([127, 0, 0, 2], 1004));
    other.join(&mut w, "request");
    // Handshakes: a burst of 4, then 2/s; over it, REJ_BACKLOG.
    assert_eq!(c[2].connect(&mut w, &key), Err(2402), "the 4th");
    assert_eq!(c[2].connect(&mut w, &key), Err(1005), "burst spent");
    w.advance(Duration::from_secs(1));
    c[0].control(&mut w, ctrl::SHUTDOWN, 0, &[0]);
    let key = sid(&mut w, "publish");
    c[2].connect(&mut w, &key)
        .expect("budget refilled, a connection free");
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
    });
    let kernel_ack = |w: &mut World| {
        let report = KernelAcks {
            last: w.now,
            ack_seq: Seq::new(125),
            rtt: Some((500, 100)),
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
