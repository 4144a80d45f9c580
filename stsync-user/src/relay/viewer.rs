//! The sending half of a viewer connection: maps the publisher's sequence numbers and
//! timestamps onto the viewer's own (one continuous sequence and time base per viewer, across
//! publisher changes), and turns the viewer's loss reports back into publisher packets.

use super::budget::TokenBucket;
use crate::srt::loss::LossList;
use crate::srt::seq::{ts_add, Seq};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How far past what the relay has forwarded a viewer may report a loss: the kernel path
/// delivers packets (and the viewer sees gaps among them) before the relay reads them.
/// Further is a loss the viewer cannot have seen.
pub const NAK_AHEAD_SLACK: i32 = 1024;
/// At most this many separate ranges wait in a viewer's retransmission list (a live
/// receiver has a handful); a report that would add more is counted and dropped.
pub const MAX_LOSS_RANGES: usize = 1024;

/// At most this many resent packets wait to be checked per viewer (the oldest give way).
pub const MAX_RECHECKS: usize = 64;
/// How often a resent packet is sent once more for want of an ACK.
pub const RECHECK_TRIES: u8 = 3;

/// A packet resent on a loss report (last at `at`), `sends` times so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Recheck {
    seq: Seq,
    at: Instant,
    sends: u8,
}

/// A loss report that ends the connection, as libsrt ends it ("BUG or ATTACK").
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NakViolation {
    #[error("loss range ends before it starts")]
    Reversed,
    #[error("loss range reaches past the last packet sent")]
    BeyondSent,
}

impl NakViolation {
    /// The label it is counted under.
    pub fn reason(self) -> &'static str {
        match self {
            NakViolation::Reversed => "nak_reversed",
            NakViolation::BeyondSent => "nak_beyond_sent",
        }
    }
}

/// What became of a reported loss range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Queued {
    /// The part older than anything the relay still holds for this viewer: DROPREQ.
    pub gone: Option<(Seq, Seq)>,
    /// The list was full: the rest was not queued.
    pub overflow: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// The stream's publisher epoch this mapping belongs to.
    pub epoch: u64,
    /// viewer seq = publisher seq + `seq_off` (31-bit wrapping).
    pub seq_off: u32,
    /// viewer timestamp = publisher timestamp + `ts_off` (32-bit wrapping).
    pub ts_off: u32,
    /// The first viewer sequence number of this epoch.
    pub first_vseq: Seq,
}

/// What a viewer's sequence number stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmapped {
    /// This publisher packet (of the current epoch).
    Publisher(Seq),
    /// Beyond what the relay has forwarded so far.
    NotYet,
    /// Before the viewer's mapping, or of an earlier publisher.
    Gone,
}

#[derive(Debug)]
pub struct ViewerSend {
    /// The viewer sequence number the next new packet gets.
    next_vseq: Seq,
    map: Option<Mapping>,
    /// Highest sequence number the viewer acknowledged (exclusive).
    pub last_ack: Seq,
    /// Since when `last_ack` has not moved while packets beyond it were sent.
    stalled_since: Option<Instant>,
    /// Highest sequence number reported lost so far, so repeated NAKs count once.
    nak_high: Option<Seq>,
    /// Reported lost, not yet resent: each number once, nothing already acknowledged.
    pub loss: LossList,
    /// Bytes of retransmission (and DROPREQ) this viewer may still be sent.
    pub budget: TokenBucket,
    /// Packets resent on its loss reports, oldest first.
    rechecks: VecDeque<Recheck>,
    /// The largest payload the viewer takes in: its own MSS less libsrt's headers
    /// (`srt::handshake::max_payload`), 1456 at the default MSS of 1500 over IPv6 as over
    /// IPv4. libsrt sizes its receive buffers from its own MSS before the handshake and
    /// drops a larger datagram unseen (`MSG_TRUNC`), so the relay does not send it one:
    /// the viewer asks for it and gets DROPREQ, as for any packet it cannot have.
    pub max_payload: usize,
    /// A packet too large for it was held back and logged (once per viewer).
    pub oversize_logged: bool,
}

impl ViewerSend {
    /// `isn` is the caller's initial sequence number, which libsrt expects as our first;
    /// the retransmission budget starts with `burst` bytes; `max_payload` is the most the
    /// viewer takes in one packet (see the field).
    pub fn new(isn: Seq, burst: u64, max_payload: usize, now: Instant) -> Self {
        ViewerSend {
            next_vseq: isn,
            map: None,
            last_ack: isn,
            stalled_since: None,
            nak_high: None,
            loss: LossList::default(),
            budget: TokenBucket::new(burst, now),
            rechecks: VecDeque::new(),
            max_payload,
            oversize_logged: false,
        }
    }

    pub fn mapping(&self) -> Option<Mapping> {
        self.map
    }

    pub fn next_vseq(&self) -> Seq {
        self.next_vseq
    }

    /// Maps a publisher packet being forwarded for the first time. The first packet of an
    /// epoch that may start the viewer (`start` is `Some`) fixes the offsets: publisher
    /// sequence `start` (this packet, or an older one still missing) continues the viewer's
    /// sequence, and this packet's timestamp becomes the viewer's clock now. `None` for a
    /// packet older than the viewer's mapping (a late recovery from before the viewer
    /// joined), or one that may not start it.
    pub fn map_new(
        &mut self,
        epoch: u64,
        pseq: Seq,
        pts: u32,
        clock_now: u32,
        start: Option<Seq>,
    ) -> Option<(Seq, u32)> {
        let map = match self.map {
            Some(m) if m.epoch == epoch => m,
            _ => {
                let anchor = start?;
                let m = Mapping {
                    epoch,
                    seq_off: Seq::offset_to(anchor, self.next_vseq),
                    ts_off: clock_now.wrapping_sub(pts),
                    first_vseq: self.next_vseq,
                };
                self.map = Some(m);
                m
            }
        };
        let vseq = pseq.add(map.seq_off);
        if vseq.lt(map.first_vseq) {
            return None;
        }
        if !vseq.lt(self.next_vseq) {
            self.next_vseq = vseq.next();
        }
        Some((vseq, ts_add(pts, map.ts_off)))
    }

    /// The publisher packet behind viewer sequence number `vseq`.
    pub fn unmap(&self, epoch: u64, vseq: Seq) -> Unmapped {
        match self.map.filter(|m| m.epoch == epoch) {
            Some(m) if m.first_vseq.le(vseq) && vseq.lt(self.next_vseq) => {
                Unmapped::Publisher(vseq.sub(m.seq_off))
            }
            // The kernel fast path can deliver packets the relay has not read off its
            // socket yet, so a viewer may ask about them first: not gone, just not here yet.
            Some(_) if !vseq.lt(self.next_vseq) && vseq.diff(self.next_vseq) < 1 << 20 => {
                Unmapped::NotYet
            }
            _ => Unmapped::Gone,
        }
    }

    /// The oldest viewer sequence number the relay may still resend, given the stream's
    /// publisher `epoch` and a ring of `capacity` packets: anything older is DROPREQ.
    pub fn oldest_held(&self, epoch: u64, capacity: u32) -> Seq {
        match self.map.filter(|m| m.epoch == epoch) {
            Some(m) => {
                let ring_start = self.next_vseq.sub(capacity);
                if ring_start.gt(m.first_vseq) {
                    ring_start
                } else {
                    m.first_vseq
                }
            }
            None => self.next_vseq,
        }
    }

    /// A loss range ending the connection: reversed, or reaching past what was sent.
    pub fn check_nak(&self, first: Seq, last: Seq) -> Result<(), NakViolation> {
        if last.lt(first) {
            return Err(NakViolation::Reversed);
        }
        if last.diff(self.next_vseq) >= NAK_AHEAD_SLACK {
            return Err(NakViolation::BeyondSent);
        }
        Ok(())
    }

    /// The part of a (checked) loss range not acknowledged yet, if any: every range of a
    /// report then lies within one window, where sequence numbers compare consistently (a
    /// report listing ranges half the number space apart broke the list's order; found by
    /// fuzzing).
    pub fn unacknowledged(&self, first: Seq, last: Seq) -> Option<(Seq, Seq)> {
        let first = if first.lt(self.last_ack) {
            self.last_ack
        } else {
            first
        };
        (!last.lt(first)).then_some((first, last))
    }

    /// Queues what of a (checked) loss range is worth resending: nothing already
    /// acknowledged (libsrt drops that part too), nothing not forwarded yet (the viewer asks
    /// again if it stays missing), and what is older than `oldest` comes back as gone.
    pub fn queue_nak(&mut self, first: Seq, last: Seq, oldest: Seq, now: Instant) -> Queued {
        let first = if first.lt(self.last_ack) {
            self.last_ack
        } else {
            first
        };
        let sent_last = self.next_vseq.sub(1);
        let last = if last.gt(sent_last) { sent_last } else { last };
        let mut q = Queued::default();
        if last.lt(first) {
            return q;
        }
        if first.lt(oldest) {
            let gone_last = if last.lt(oldest) { last } else { oldest.sub(1) };
            q.gone = Some((first, gone_last));
            if last.lt(oldest) {
                return q;
            }
        }
        let first = if first.lt(oldest) { oldest } else { first };
        if self.loss.len() >= MAX_LOSS_RANGES {
            q.overflow = true;
        } else {
            self.loss.insert(first, last, now);
        }
        q
    }

    /// `vseq` was resent at `now` for the `sends`-th time: to be checked.
    pub fn resent(&mut self, vseq: Seq, sends: u8, now: Instant) {
        if sends > RECHECK_TRIES {
            return;
        }
        if self.rechecks.len() >= MAX_RECHECKS {
            self.rechecks.pop_front();
        }
        self.rechecks.push_back(Recheck {
            seq: vseq,
            at: now,
            sends,
        });
    }

    /// Resent packets whose check is due at `now` (resent `rto` ago or more) and that the
    /// viewer still lacks first of all (its ACK stops right there), with how often each was
    /// sent: to send once more. `rto` is evaluated now, so a viewer whose RTT estimate
    /// settles after the resend is checked on its new one.
    ///
    /// Why: libsrt reports a loss at once, then again only on its periodic NAK timer, and
    /// that timer runs at 300 ms until its first periodic report (`checkNAKTimer`), so at
    /// the start of a connection a lost retransmission is asked for again only after the
    /// packet's play-out time (captured: every libsrt "RCV-DROPPED" of issue 12's runs).
    /// The relay sees the viewer's ACK instead. A packet it acknowledged is done; one
    /// behind another gap waits (`rto` more) for that gap's own check.
    pub fn due_rechecks(&mut self, now: Instant, rto: Duration, out: &mut Vec<(Seq, u8)>) {
        while let Some(&r) = self.rechecks.front() {
            if r.at + rto > now {
                break;
            }
            self.rechecks.pop_front();
            if r.seq.lt(self.last_ack) {
                continue;
            }
            if r.seq == self.last_ack {
                out.push((r.seq, r.sends));
            } else {
                self.rechecks.push_back(Recheck { at: now, ..r });
            }
        }
    }

    /// Whether `vseq` was resent and waits for its check.
    pub fn rechecking(&self, vseq: Seq) -> bool {
        self.rechecks.iter().any(|r| r.seq == vseq)
    }

    /// When the next resent packet is due for a check.
    pub fn next_recheck(&self, rto: Duration) -> Option<Instant> {
        self.rechecks.front().map(|r| r.at + rto)
    }

    pub fn ts(&self, pts: u32) -> u32 {
        ts_add(pts, self.map.map_or(0, |m| m.ts_off))
    }

    /// An ACK (received at `now`) up to `ack`, exclusive; whether it acknowledged anything new.
    pub fn on_ack(&mut self, ack: Seq, now: Instant) -> bool {
        // The kernel path can deliver (and the viewer acknowledge) packets the relay has not
        // read yet, so an ACK a little beyond `next_vseq` is not an error; it counts once the
        // relay catches up.
        if ack.gt(self.last_ack) && !ack.gt(self.next_vseq) {
            self.last_ack = ack;
            self.stalled_since = self.outstanding().then_some(now);
            self.loss.remove_before(ack);
            return true;
        }
        false
    }

    fn outstanding(&self) -> bool {
        self.last_ack.lt(self.next_vseq)
    }

    /// How long the viewer has acknowledged nothing new while packets beyond its last ACK
    /// were sent: a live viewer acknowledges (or gives up on) every packet within its
    /// latency, so seconds of this means it is stuck.
    pub fn stalled_for(&mut self, now: Instant) -> Duration {
        if !self.outstanding() {
            self.stalled_since = None;
            return Duration::ZERO;
        }
        now.saturating_duration_since(*self.stalled_since.get_or_insert(now))
    }

    /// Records a loss report; returns how many of its packets were not reported before.
    pub fn note_nak(&mut self, first: Seq, last: Seq) -> u32 {
        let from = match self.nak_high {
            Some(h) if !h.lt(first) => h.next(),
            _ => first,
        };
        if from.gt(last) {
            return 0;
        }
        self.nak_high = Some(last);
        last.diff(from) as u32 + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stsync_common::srt::MAX_PAYLOAD;

    fn viewer(isn: u32) -> ViewerSend {
        ViewerSend::new(Seq::new(isn), 100_000, MAX_PAYLOAD, Instant::now())
    }

    #[test]
    fn loss_reports_are_checked_clipped_and_merged() {
        let t = Instant::now();
        let mut v = viewer(0);
        for i in 0..200 {
            v.map_new(1, Seq::new(1000 + i), 0, 0, Some(Seq::new(1000 + i)));
        }
        v.on_ack(Seq::new(50), t);
        let s = Seq::new;
        assert_eq!(v.check_nak(s(10), s(5)), Err(NakViolation::Reversed));
        assert_eq!(v.check_nak(s(10), s(200 + 1023)), Ok(()), "kernel slack");
        assert_eq!(
            v.check_nak(s(10), s(200 + 1024)),
            Err(NakViolation::BeyondSent)
        );
        // A ring of 128 holds viewer seqs 72..200.
        let oldest = v.oldest_held(1, 128);
        assert_eq!(oldest, s(72));
        assert_eq!(
            v.oldest_held(2, 128),
            s(200),
            "another publisher's: all gone"
        );
        // Acknowledged part dropped, unsent part dropped, too old part gone.
        let q = v.queue_nak(s(0), s(500), oldest, t);
        assert_eq!(q.gone, Some((s(50), s(71))));
        let r: Vec<_> = v
            .loss
            .ranges()
            .map(|r| (r.first.get(), r.last.get()))
            .collect();
        assert_eq!(r, vec![(72, 199)]);
        // The same report again queues nothing new; an ACK prunes.
        v.queue_nak(s(0), s(500), oldest, t);
        assert_eq!(v.loss.len(), 1);
        v.on_ack(Seq::new(150), t);
        assert_eq!(v.loss.pop_first(), Some(s(150)));
        // Entirely acknowledged: nothing at all.
        assert_eq!(v.queue_nak(s(0), s(100), oldest, t), Queued::default());
    }

    #[test]
    fn sequence_and_time_continue_across_publishers() {
        let mut v = viewer(500);
        // Publisher A starts at 9000 with timestamps around 1 s; the viewer's clock reads 2 ms.
        assert_eq!(
            v.map_new(1, Seq::new(9000), 1_000_000, 2_000, Some(Seq::new(9000))),
            Some((Seq::new(500), 2_000))
        );
        assert_eq!(
            v.map_new(1, Seq::new(9001), 1_010_000, 12_000, Some(Seq::new(9001))),
            Some((Seq::new(501), 12_000))
        );
        // Gap on the publisher leg: 9002 missing, 9003 forwarded, 9002 recovered later.
        assert_eq!(
            v.map_new(1, Seq::new(9003), 1_030_000, 0, Some(Seq::new(9003)))
                .unwrap()
                .0,
            Seq::new(503)
        );
        assert_eq!(
            v.map_new(1, Seq::new(9002), 1_020_000, 0, Some(Seq::new(9002)))
                .unwrap()
                .0,
            Seq::new(502)
        );
        assert_eq!(
            v.unmap(1, Seq::new(502)),
            Unmapped::Publisher(Seq::new(9002))
        );
        assert_eq!(
            v.unmap(1, Seq::new(504)),
            Unmapped::NotYet,
            "not forwarded yet"
        );
        // Publisher B: wrapped sequence numbers, a fresh clock of its own.
        let b = Seq::new(0x7FFF_FFFF);
        assert_eq!(
            v.map_new(2, b, 10, 5_000_000, Some(b)),
            Some((Seq::new(504), 5_000_000))
        );
        assert_eq!(
            v.map_new(2, b.next(), u32::MAX, 0, Some(b.next())),
            Some((Seq::new(505), 4_999_989))
        );
        assert_eq!(v.unmap(2, Seq::new(505)), Unmapped::Publisher(Seq::new(0)));
        assert_eq!(
            v.unmap(2, Seq::new(503)),
            Unmapped::Gone,
            "previous publisher's packets are gone"
        );
        assert_eq!(v.unmap(1, Seq::new(505)), Unmapped::Gone);
    }

    #[test]
    fn mapping_anchored_at_a_missing_first_packet_takes_it_when_recovered() {
        let mut v = viewer(500);
        // Publisher packet 100 was lost; 101 maps the viewer with 100 as its anchor.
        assert_eq!(
            v.map_new(1, Seq::new(101), 0, 0, Some(Seq::new(100)))
                .unwrap()
                .0,
            Seq::new(501)
        );
        assert_eq!(
            v.unmap(1, Seq::new(500)),
            Unmapped::Publisher(Seq::new(100))
        );
        assert_eq!(
            v.map_new(1, Seq::new(100), 0, 0, Some(Seq::new(100)))
                .unwrap()
                .0,
            Seq::new(500),
            "the recovered first packet is forwarded"
        );
    }

    #[test]
    fn late_joiner_skips_older_recoveries() {
        let mut v = viewer(0);
        v.map_new(1, Seq::new(100), 0, 0, Some(Seq::new(100)));
        assert_eq!(v.map_new(1, Seq::new(99), 0, 0, Some(Seq::new(99))), None);
    }

    #[test]
    fn nak_counts_each_loss_once() {
        let mut v = viewer(0);
        assert_eq!(v.note_nak(Seq::new(5), Seq::new(7)), 3);
        assert_eq!(v.note_nak(Seq::new(5), Seq::new(7)), 0);
        assert_eq!(v.note_nak(Seq::new(6), Seq::new(9)), 2);
    }
}
