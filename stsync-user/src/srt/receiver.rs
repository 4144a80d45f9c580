//! Receiving half of a live SRT connection (the relay's side of a publisher): tracks what
//! arrived, reports losses (NAK at once and periodically), acknowledges (full ACK every 10 ms,
//! light ACK every 64 packets, never past a gap), measures RTT from ACKACKs and gives up on
//! packets that cannot arrive in time to be played.

use super::loss::LossList;
use super::packet::{encode_loss, Ack, AckFigures};
use super::rtt::Rtt;
use super::seq::Seq;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub const FULL_ACK_PERIOD: Duration = Duration::from_millis(10);
pub const LIGHT_ACK_PACKETS: u32 = 64;
/// Loss-list words that fit in one NAK (1456-byte payload).
const MAX_NAK_WORDS: usize = 360;
/// Outstanding full ACKs remembered for RTT samples.
const ACK_HISTORY: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next packet, or one past a gap (the gap is now in the loss list).
    New,
    /// A packet that filled a gap.
    Recovered,
    /// Already received, or given up on: not forwarded again.
    Duplicate,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feedback {
    Ack { number: u32, ack: Ack },
    Nak(Vec<u32>),
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReceiverStats {
    /// Packets found missing (each counted once).
    pub lost: u64,
    /// Missing packets given up on (not recovered within the latency, or dropped by the sender).
    pub dropped: u64,
    /// Full ACKs never answered by ACKACK.
    pub acks_unanswered: u64,
}

pub struct Receiver {
    /// One past the highest sequence number received.
    next: Seq,
    loss: LossList,
    latency: Duration,
    buffer: u32,
    ack_number: u32,
    acks_sent: VecDeque<(u32, Instant)>,
    last_ack: Seq,
    since_ack: u32,
    arrived_since_full_ack: bool,
    next_full_ack: Instant,
    next_nak: Instant,
    pub rtt: Rtt,
    window_start: Instant,
    window_pkts: u32,
    window_bytes: u64,
    rate_pkts: u32,
    rate_bytes: u32,
    pub stats: ReceiverStats,
}

impl Receiver {
    pub fn new(isn: Seq, latency: Duration, buffer: u32, now: Instant) -> Self {
        Receiver {
            next: isn,
            loss: LossList::default(),
            latency,
            buffer,
            ack_number: 0,
            acks_sent: VecDeque::new(),
            last_ack: isn,
            since_ack: 0,
            arrived_since_full_ack: false,
            next_full_ack: now + FULL_ACK_PERIOD,
            next_nak: now + FULL_ACK_PERIOD,
            rtt: Rtt::default(),
            window_start: now,
            window_pkts: 0,
            window_bytes: 0,
            rate_pkts: 0,
            rate_bytes: 0,
            stats: ReceiverStats::default(),
        }
    }

    /// Everything before this sequence number is received or given up.
    pub fn ack_seq(&self) -> Seq {
        self.loss.first().unwrap_or(self.next)
    }

    /// Whether `s` is still expected (missing and not given up).
    pub fn is_missing(&self, s: Seq) -> bool {
        self.loss.contains(s)
    }

    /// The oldest packet still expected to fill a gap.
    pub fn first_missing(&self) -> Option<Seq> {
        self.loss.first()
    }

    pub fn next_seq(&self) -> Seq {
        self.next
    }

    /// The packets still expected, in sequence order.
    pub fn loss(&self) -> &LossList {
        &self.loss
    }

    pub fn on_data(
        &mut self,
        now: Instant,
        seq: Seq,
        len: usize,
        out: &mut Vec<Feedback>,
    ) -> Arrival {
        let ahead = seq.diff(self.next);
        let arrival = if ahead >= 0 {
            if ahead as u32 >= self.buffer {
                // Further ahead than any buffer could hold: the sender jumped; start over there.
                // (Counted range by range: `seq` may be more than 2^30 past the oldest loss,
                // where serial comparison of the two no longer says which is older.)
                self.stats.dropped += u64::from(self.loss.clear());
            } else {
                // The ring holds `buffer` packets up to this one: an older gap could only be
                // filled by evicting a newer packet (that viewers may still need), so it is
                // given up, as libsrt drops what does not fit its receive buffer.
                let oldest = seq.sub(self.buffer.saturating_sub(1));
                if let Some(first) = self.loss.first().filter(|f| f.lt(oldest)) {
                    self.stats.dropped += u64::from(self.loss.remove_range(first, oldest.sub(1)));
                }
                if ahead > 0 {
                    let (first, last) = (self.next, seq.sub(1));
                    self.loss.push(first, last, now);
                    self.stats.lost += ahead as u64;
                    let mut words = Vec::with_capacity(2);
                    encode_loss(&mut words, first, last);
                    out.push(Feedback::Nak(words));
                }
            }
            self.next = seq.next();
            Arrival::New
        } else if self.loss.remove(seq) {
            Arrival::Recovered
        } else {
            return Arrival::Duplicate;
        };
        self.window_pkts += 1;
        self.window_bytes += len as u64;
        self.arrived_since_full_ack = true;
        self.since_ack += 1;
        if self.since_ack >= LIGHT_ACK_PACKETS {
            self.since_ack = 0;
            self.last_ack = self.ack_seq();
            out.push(Feedback::Ack {
                number: 0,
                ack: Ack {
                    ack_seq: self.last_ack,
                    full: None,
                },
            });
        }
        arrival
    }

    pub fn on_ackack(&mut self, now: Instant, number: u32) {
        while let Some(&(n, sent)) = self.acks_sent.front() {
            self.acks_sent.pop_front();
            if n == number {
                let sample = now
                    .saturating_duration_since(sent)
                    .as_micros()
                    .min(u32::MAX as u128);
                self.rtt.sample(sample as u32);
                return;
            }
            self.stats.acks_unanswered += 1;
        }
    }

    /// The sender will not retransmit `first..=last` any more.
    pub fn on_dropreq(&mut self, first: Seq, last: Seq) {
        self.stats.dropped += u64::from(self.loss.remove_range(first, last));
    }

    pub fn poll_timeout(&self) -> Instant {
        if self.loss.is_empty() {
            self.next_full_ack
        } else {
            self.next_full_ack.min(self.next_nak)
        }
    }

    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Feedback>) {
        // A gap older than the latency would be played late anyway: give it up so the ACK
        // (and the viewers) move on.
        if let Some(deadline) = now.checked_sub(self.latency) {
            self.stats.dropped += u64::from(self.loss.expire(deadline));
        }
        if now >= self.next_full_ack {
            self.next_full_ack = now + FULL_ACK_PERIOD;
            self.update_rates(now);
            if self.arrived_since_full_ack || self.ack_seq() != self.last_ack {
                out.push(self.full_ack(now));
            }
        }
        if !self.loss.is_empty() && now >= self.next_nak {
            let mut words = Vec::new();
            for r in self.loss.ranges() {
                if words.len() + 2 > MAX_NAK_WORDS {
                    break;
                }
                encode_loss(&mut words, r.first, r.last);
            }
            out.push(Feedback::Nak(words));
        }
        if now >= self.next_nak {
            self.next_nak = now + Duration::from_micros(self.rtt.nak_period_us());
        }
    }

    fn full_ack(&mut self, now: Instant) -> Feedback {
        self.ack_number = self.ack_number.wrapping_add(1).max(1);
        if self.acks_sent.len() == ACK_HISTORY {
            self.acks_sent.pop_front();
            self.stats.acks_unanswered += 1;
        }
        self.acks_sent.push_back((self.ack_number, now));
        self.arrived_since_full_ack = false;
        self.since_ack = 0;
        self.last_ack = self.ack_seq();
        let in_flight = self.next.diff(self.last_ack).max(0) as u32;
        Feedback::Ack {
            number: self.ack_number,
            ack: Ack {
                ack_seq: self.last_ack,
                full: Some(AckFigures {
                    rtt_us: self.rtt.rtt_us,
                    rtt_var_us: self.rtt.var_us,
                    avail_buf: self.buffer.saturating_sub(in_flight).max(2),
                    pkt_rate: self.rate_pkts,
                    capacity: self.rate_pkts.max(1000),
                    recv_rate_bps: self.rate_bytes,
                }),
            },
        }
    }

    fn update_rates(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= Duration::from_secs(1) {
            let secs = elapsed.as_secs_f64();
            self.rate_pkts = (f64::from(self.window_pkts) / secs) as u32;
            self.rate_bytes = (self.window_bytes as f64 / secs).min(f64::from(u32::MAX)) as u32;
            self.window_start = now;
            self.window_pkts = 0;
            self.window_bytes = 0;
        }
    }

    /// Received payload bytes per second over the last full second.
    pub fn byte_rate(&self) -> u32 {
        self.rate_bytes
    }

    pub fn packet_rate(&self) -> u32 {
        self.rate_pkts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::srt::packet::loss_ranges;

    fn naks(out: &[Feedback]) -> Vec<(u32, u32)> {
        out.iter()
            .filter_map(|f| match f {
                Feedback::Nak(w) => Some(w),
                _ => None,
            })
            .flat_map(|w| {
                let b: Vec<u8> = w.iter().flat_map(|w| w.to_be_bytes()).collect();
                loss_ranges(&b)
                    .map(|r| r.unwrap())
                    .map(|(a, b)| (a.get(), b.get()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn full_acks(out: &[Feedback]) -> Vec<u32> {
        out.iter()
            .filter_map(|f| match f {
                Feedback::Ack { ack, .. } if ack.full.is_some() => Some(ack.ack_seq.get()),
                _ => None,
            })
            .collect()
    }

    const LAT: Duration = Duration::from_millis(120);

    #[test]
    fn gap_is_naked_at_once_and_ack_stops_at_it() {
        let t = Instant::now();
        let mut r = Receiver::new(Seq::new(100), LAT, 8192, t);
        let mut out = Vec::new();
        for s in [100, 101, 104, 105] {
            r.on_data(t, Seq::new(s), 1316, &mut out);
        }
        assert_eq!(naks(&out), vec![(102, 103)]);
        out.clear();
        r.handle_timeout(t + FULL_ACK_PERIOD, &mut out);
        assert_eq!(full_acks(&out), vec![102], "never ack past a gap");
        // Reordered arrival fills the gap; a duplicate is recognised.
        assert_eq!(
            r.on_data(t, Seq::new(103), 1316, &mut out),
            Arrival::Recovered
        );
        assert_eq!(
            r.on_data(t, Seq::new(102), 1316, &mut out),
            Arrival::Recovered
        );
        assert_eq!(
            r.on_data(t, Seq::new(102), 1316, &mut out),
            Arrival::Duplicate
        );
        assert_eq!(
            r.on_data(t, Seq::new(105), 1316, &mut out),
            Arrival::Duplicate
        );
        out.clear();
        r.handle_timeout(t + 2 * FULL_ACK_PERIOD, &mut out);
        assert_eq!(full_acks(&out), vec![106]);
        assert_eq!(r.stats.lost, 2);
    }

    #[test]
    fn periodic_nak_repeats_until_recovered_then_gives_up_after_latency() {
        let t = Instant::now();
        let mut r = Receiver::new(Seq::new(0), LAT, 8192, t);
        let mut out = Vec::new();
        r.on_data(t, Seq::new(0), 10, &mut out);
        r.on_data(t, Seq::new(3), 10, &mut out);
        out.clear();
        let mut now = t;
        let mut nak_rounds = 0;
        while now < t + Duration::from_millis(100) {
            now += Duration::from_millis(5);
            r.handle_timeout(now, &mut out);
            if !naks(&out).is_empty() {
                nak_rounds += 1;
            }
            out.clear();
        }
        // Periodic NAK at max((RTT + 4 RTTVar)/2, 20 ms) = 150 ms for the default RTT.
        assert!(nak_rounds >= 1, "periodic NAK");
        assert!(r.is_missing(Seq::new(1)));
        r.handle_timeout(t + LAT + Duration::from_millis(1), &mut out);
        assert!(!r.is_missing(Seq::new(1)), "given up after the latency");
        assert_eq!(r.ack_seq(), Seq::new(4));
        assert_eq!(r.stats.dropped, 2);
    }

    #[test]
    fn light_ack_every_64_packets_and_wraparound() {
        let t = Instant::now();
        let start = Seq::new(0x7FFF_FFF0);
        let mut r = Receiver::new(start, LAT, 8192, t);
        let mut out = Vec::new();
        for i in 0..64 {
            r.on_data(t, start.add(i), 10, &mut out);
        }
        assert_eq!(
            out,
            vec![Feedback::Ack {
                number: 0,
                ack: Ack {
                    ack_seq: start.add(64),
                    full: None
                }
            }]
        );
        assert_eq!(r.ack_seq(), Seq::new(48));
    }

    #[test]
    fn rtt_from_ackack_and_unanswered_acks() {
        let t = Instant::now();
        let mut r = Receiver::new(Seq::new(0), LAT, 8192, t);
        let mut out = Vec::new();
        r.on_data(t, Seq::new(0), 10, &mut out);
        r.handle_timeout(t + FULL_ACK_PERIOD, &mut out);
        let Some(Feedback::Ack { number, .. }) = out.pop() else {
            panic!()
        };
        r.on_ackack(t + FULL_ACK_PERIOD + Duration::from_millis(2), number);
        assert!(r.rtt.rtt_us < 100_000);
        // A peer that stops answering: ACKs are counted as unanswered, memory stays bounded.
        for i in 0..200u64 {
            r.on_data(t, Seq::new(1 + i as u32), 10, &mut out);
            r.handle_timeout(t + FULL_ACK_PERIOD * (2 + i as u32), &mut out);
        }
        assert!(r.stats.acks_unanswered > 100);
        assert!(r.acks_sent.len() <= ACK_HISTORY);
    }

    #[test]
    fn dropreq_and_jumps() {
        let t = Instant::now();
        let mut r = Receiver::new(Seq::new(0), LAT, 100, t);
        let mut out = Vec::new();
        r.on_data(t, Seq::new(0), 10, &mut out);
        r.on_data(t, Seq::new(10), 10, &mut out);
        r.on_dropreq(Seq::new(1), Seq::new(5));
        assert_eq!(r.ack_seq(), Seq::new(6));
        // A jump beyond the buffer restarts the window instead of NAKing millions.
        r.on_data(t, Seq::new(5000), 10, &mut out);
        assert_eq!(r.ack_seq(), Seq::new(5001));
    }

    /// Found by the receiver fuzz target: in-order packets after a gap moved the ACK window
    /// past the ring's size (the gap could only be refilled by evicting newer packets).
    #[test]
    fn losses_older_than_the_ring_are_given_up() {
        let t = Instant::now();
        let mut r = Receiver::new(Seq::new(0), LAT, 16, t);
        let mut out = Vec::new();
        r.on_data(t, Seq::new(0), 10, &mut out);
        r.on_data(t, Seq::new(3), 10, &mut out); // 1 and 2 missing
        for s in 4..=17 {
            r.on_data(t, Seq::new(s), 10, &mut out);
        }
        assert_eq!(
            r.ack_seq(),
            Seq::new(2),
            "16 packets up to 17: 1 no longer fits"
        );
        assert_eq!((r.stats.lost, r.stats.dropped), (2, 1));
        r.on_data(t, Seq::new(30), 10, &mut out);
        assert_eq!(
            r.ack_seq(),
            Seq::new(18),
            "the gap 18..=29 fits, 2 does not"
        );
        assert_eq!(r.stats.dropped, 2);
    }

    /// Found by the receiver fuzz target: a jump of 2^30 - 1 from the ISN left the gap it
    /// had out of the `dropped` count (the range to remove wrapped the wrong way).
    #[test]
    fn a_jump_gives_up_every_loss_whatever_its_distance() {
        let t = Instant::now();
        let isn = Seq::new(0x3FFF_FFFF);
        let mut r = Receiver::new(isn, LAT, 1024, t);
        let mut out = Vec::new();
        r.on_data(t, isn.add(1), 10, &mut out);
        r.on_data(t, Seq::new(0), 10, &mut out);
        assert_eq!((r.stats.lost, r.stats.dropped), (1, 1));
        assert_eq!(r.ack_seq(), Seq::new(1));
    }
}
