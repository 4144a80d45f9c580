//! The receiver target: [`Receiver`] (the relay's side of a publisher) driven by data
//! arrivals, ACKACKs, DROPREQs and a virtual clock, checking after every step that its
//! loss list stays sorted and bounded, that it never acknowledges past a gap, that NAKs
//! decode, and that every packet found missing is accounted for exactly once.
//!
//! Input: ISN (u32), latency (u8, × 4 ms), ring size selector (u8), then [`ReceiverOp`]s.

use super::{Input, Ops};
use crate::srt::packet::loss_ranges;
use crate::srt::receiver::{Arrival, Feedback, Receiver};
use crate::srt::seq::Seq;
use std::time::{Duration, Instant};
use stsync_common::srt::MAX_PAYLOAD;

/// Ring sizes the input picks from (config.json allows 16..=65536).
const BUFFERS: [u32; 4] = [16, 64, 1024, 8192];
/// Full ACK numbers remembered for `AckAckRecent`.
const RECENT_ACKS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiverOp {
    /// A data packet `delta` from the next expected sequence number, `len` payload bytes.
    Data { delta: i16, len: u16 },
    /// A data packet with any sequence number.
    DataAt { seq: u32, len: u16 },
    /// An ACKACK with any number.
    AckAck(u32),
    /// An ACKACK answering the `k`-th most recent full ACK.
    AckAckRecent(u8),
    /// A DROPREQ for `first..=last`, both relative to the next expected sequence number.
    DropReq { first: i16, last: i16 },
    /// Time passes (20 µs units), then the timers run.
    Advance(u16),
    /// The clock jumps to the next timer, which runs.
    Timer,
}

impl ReceiverOp {
    pub fn read(inp: &mut Input) -> Self {
        match inp.u8() % 7 {
            0 => ReceiverOp::Data {
                delta: inp.u16() as i16,
                len: inp.u16(),
            },
            1 => ReceiverOp::DataAt {
                seq: inp.u32(),
                len: inp.u16(),
            },
            2 => ReceiverOp::AckAck(inp.u32()),
            3 => ReceiverOp::AckAckRecent(inp.u8()),
            4 => ReceiverOp::DropReq {
                first: inp.u16() as i16,
                last: inp.u16() as i16,
            },
            5 => ReceiverOp::Advance(inp.u16()),
            _ => ReceiverOp::Timer,
        }
    }

    pub fn write(&self, o: &mut Ops) {
        match *self {
            ReceiverOp::Data { delta, len } => o.u8(0).u16(delta as u16).u16(len),
            ReceiverOp::DataAt { seq, len } => o.u8(1).u32(seq).u16(len),
            ReceiverOp::AckAck(n) => o.u8(2).u32(n),
            ReceiverOp::AckAckRecent(k) => o.u8(3).u8(k),
            ReceiverOp::DropReq { first, last } => o.u8(4).u16(first as u16).u16(last as u16),
            ReceiverOp::Advance(units) => o.u8(5).u16(units),
            ReceiverOp::Timer => o.u8(6),
        };
    }

    /// The input header: ISN, latency in 4 ms units, ring size selector.
    pub fn header(o: &mut Ops, isn: u32, latency_4ms: u8, buffer_sel: u8) {
        o.u32(isn).u8(latency_4ms).u8(buffer_sel);
    }
}

struct Harness {
    rx: Receiver,
    buffer: u32,
    now: Instant,
    out: Vec<Feedback>,
    acks: Vec<u32>,
    recovered: u64,
}

impl Harness {
    fn apply(&mut self, op: ReceiverOp) {
        match op {
            ReceiverOp::Data { delta, len } => {
                let seq = self.rx.next_seq().add(i32::from(delta) as u32);
                self.data(seq, len);
            }
            ReceiverOp::DataAt { seq, len } => self.data(Seq::new(seq), len),
            ReceiverOp::AckAck(n) => self.rx.on_ackack(self.now, n),
            ReceiverOp::AckAckRecent(k) => {
                if let Some(&n) = self.acks.iter().rev().nth(usize::from(k)) {
                    self.rx.on_ackack(self.now, n);
                }
            }
            ReceiverOp::DropReq { first, last } => {
                let next = self.rx.next_seq();
                let at = |d: i16| next.add(i32::from(d) as u32);
                self.rx.on_dropreq(at(first), at(last));
            }
            ReceiverOp::Advance(units) => {
                self.now += Duration::from_micros(u64::from(units) * 20);
                self.rx.handle_timeout(self.now, &mut self.out);
            }
            ReceiverOp::Timer => {
                self.now = self.now.max(self.rx.poll_timeout());
                self.rx.handle_timeout(self.now, &mut self.out);
                assert!(
                    self.rx.poll_timeout() > self.now,
                    "a timer run left its timer due"
                );
            }
        }
        self.check();
    }

    fn data(&mut self, seq: Seq, len: u16) {
        let len = usize::from(len) % (MAX_PAYLOAD + 1);
        let ahead = seq.diff(self.rx.next_seq());
        let was_missing = self.rx.is_missing(seq);
        let arrival = self.rx.on_data(self.now, seq, len, &mut self.out);
        let expected = if ahead >= 0 {
            Arrival::New
        } else if was_missing {
            Arrival::Recovered
        } else {
            Arrival::Duplicate
        };
        assert_eq!(arrival, expected, "seq {seq:?}, {ahead} ahead");
        assert!(
            !self.rx.is_missing(seq),
            "{seq:?} arrived but is still missing"
        );
        if ahead >= 0 {
            assert_eq!(self.rx.next_seq(), seq.next());
        }
        if arrival == Arrival::Recovered {
            self.recovered += 1;
        }
    }

    fn check(&mut self) {
        let rx = &self.rx;
        let next = rx.next_seq();
        let ack = rx.ack_seq();
        // The loss list: sorted, disjoint, between the ACK position and the next expected
        // packet, and no wider than the ring that could hold its packets.
        let mut prev: Option<Seq> = None;
        let mut missing = 0u64;
        for r in rx.loss().ranges() {
            assert!(r.first.le(r.last), "range {:?}..{:?}", r.first, r.last);
            if let Some(p) = prev {
                assert!(p.lt(r.first), "loss list out of order at {:?}", r.first);
            }
            assert!(
                !r.first.lt(ack),
                "loss {:?} before the ACK {ack:?}",
                r.first
            );
            assert!(
                r.last.lt(next),
                "loss {:?} at or past next {next:?}",
                r.last
            );
            prev = Some(r.last);
            missing += u64::from(r.count());
        }
        let span = next.diff(ack);
        assert!(
            (0..=self.buffer as i32).contains(&span),
            "ACK {ack:?} to next {next:?}: {span} packets, ring {}",
            self.buffer
        );
        // Every packet found missing is still missing, recovered or given up, once.
        let s = rx.stats;
        assert_eq!(
            s.lost,
            s.dropped + self.recovered + missing,
            "lost = dropped + recovered + missing ({:?}, recovered {}, missing {missing})",
            s,
            self.recovered
        );
        for f in self.out.drain(..) {
            match f {
                Feedback::Ack { number, ack: a } => {
                    // Never past a gap: the ACK is exactly the first packet still expected.
                    assert_eq!(a.ack_seq, ack, "ACK position");
                    if a.full.is_some() {
                        assert_ne!(number, 0, "full ACK number 0");
                        self.acks.push(number);
                        if self.acks.len() > RECENT_ACKS {
                            self.acks.remove(0);
                        }
                    }
                }
                Feedback::Nak(words) => {
                    assert!(!words.is_empty(), "empty NAK");
                    assert!(
                        words.len() * 4 <= MAX_PAYLOAD,
                        "NAK of {} words",
                        words.len()
                    );
                    let body: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
                    for r in loss_ranges(&body) {
                        let (a, b) = r.expect("a NAK the receiver wrote decodes");
                        assert!(a.le(b), "NAK range {a:?}..{b:?}");
                    }
                }
            }
        }
    }
}

/// The receiver target.
pub fn receiver(data: &[u8]) {
    let mut inp = Input::new(data);
    let isn = Seq::new(inp.u32());
    let latency = Duration::from_millis(u64::from(inp.u8()) * 4);
    let buffer = BUFFERS[usize::from(inp.u8() % 4)];
    let now = Instant::now();
    let mut h = Harness {
        rx: Receiver::new(isn, latency, buffer, now),
        buffer,
        now,
        out: Vec::new(),
        acks: Vec::new(),
        recovered: 0,
    };
    while !inp.is_empty() {
        let op = ReceiverOp::read(&mut inp);
        h.apply(op);
    }
}
