//! Viewers' losses: their loss reports (NAKs), ACKs that stop short, and resent packets
//! checked by the next ACK, all answered from the stream's ring within a budget per viewer.

use super::outbox::{Outbox, Payload};
use super::stats::CloseReason;
use super::stream::Feeder;
use super::viewer::{Unmapped, ViewerSend};
use super::{playout, ConnStats, Relay, Role};
use crate::srt::crypto::Parity;
use crate::srt::packet::loss_ranges;
use crate::srt::seq::Seq;
use std::time::{Duration, Instant};
use stsync_common::srt::{ctrl, HEADER_LEN, MAX_DATAGRAM, MAX_PAYLOAD, MSG_REXMIT_FLAG};
use tracing::info;

/// A viewer's retransmissions (and DROPREQs) may take the stream's own byte rate again, but
/// at least this much (bytes/s, 1 Mbit/s): a viewer at 10 % loss needs a tenth of it.
pub(super) const REXMIT_FLOOR_BPS: u64 = 125_000;
/// The burst a viewer's retransmission budget allows, as time at its rate.
const REXMIT_BURST: Duration = Duration::from_millis(250);
/// A viewer's ACK that stops at a packet sent more than its RTT + 4·RTTVar and this ago
/// shows that packet lost (the ACK would include it otherwise; this much for libsrt's own
/// processing).
const ACK_GAP_SLACK: Duration = Duration::from_millis(10);
/// A packet resent on a viewer's loss report is checked (and sent once more if the viewer's
/// ACK still stops at it) after the viewer's RTT + 4·RTTVar and this: libsrt acknowledges
/// on a 10 ms timer its receive loop checks about every 10 ms (captured: 10–20 ms), and a
/// lossless viewer should never get a packet twice.
const RECHECK_SLACK: Duration = Duration::from_millis(30);
/// How stale the relay's view of a kernel-served viewer's ACKs may be: the eBPF datapath
/// reads them every 20 ms (`ACK_READ` in `datapath/ebpf.rs`), plus its poll's jitter.
const KERNEL_ACK_LAG: Duration = Duration::from_millis(25);

/// Bytes per second of retransmission a viewer of a stream fed by `publisher` may take.
fn rexmit_rate(publisher: Option<Feeder>) -> u64 {
    publisher
        .map_or(0, |f| u64::from(f.byte_rate()))
        .max(REXMIT_FLOOR_BPS)
}

/// A viewer's RTT + 4·RTTVar as it reports them. libsrt reports 100 ms ± 50 ms, its
/// initial guess, until its first ACKACK; that guess is no RTT (its 300 ms would be past a
/// 120 ms latency), so it counts as 0.
pub(super) fn viewer_rtt(stats: &ConnStats) -> Duration {
    let (rtt, var) = (stats.rtt_us, stats.rtt_var_us);
    if (rtt, var) == (100_000, 50_000) {
        Duration::ZERO
    } else {
        Duration::from_micros(rtt + 4 * var)
    }
}

/// How long after resending a packet on a viewer's loss report the relay checks (by the
/// viewer's ACK) that it arrived; `kernel`: the kernel answers its ACKs, which the relay
/// reads later.
pub(super) fn recheck_after(stats: &ConnStats, kernel: bool) -> Duration {
    let lag = if kernel {
        KERNEL_ACK_LAG
    } else {
        Duration::ZERO
    };
    viewer_rtt(stats) + RECHECK_SLACK + lag
}

/// The burst for `rate`: `REXMIT_BURST` of it, at least 16 full packets.
pub(super) fn rexmit_burst(rate: u64) -> u64 {
    (rate * REXMIT_BURST.as_millis() as u64 / 1000).max(16 * (HEADER_LEN + MAX_PAYLOAD) as u64)
}

impl Relay {
    /// Takes a viewer's loss report into its retransmission list, then resends what the
    /// budget allows. A report that breaks the protocol ends the connection, as in libsrt.
    pub(super) fn on_viewer_nak(&mut self, now: Instant, id: u32, body: &[u8]) {
        // A report is at most one datagram (the parser refuses larger): 182 ranges.
        let conn = self.conns.get_mut(&id).expect("caller checked");
        let Role::Viewer(v) = &mut conn.role else {
            return;
        };
        // The report's ranges, checked, then merged: each number once however often listed.
        let reported = &mut self.nak_scratch;
        reported.clear();
        for range in loss_ranges(body) {
            let (first, last) = match range {
                Ok(r) => r,
                Err(e) => return self.drops.drop_packet(e.reason()),
            };
            if let Err(e) = v.check_nak(first, last) {
                return self.end_for_nak(now, id, e.reason(), &e.to_string());
            }
            if let Some((first, last)) = v.unacknowledged(first, last) {
                reported.insert(first, last, now);
            }
        }
        let s = &self.streams[conn.stream];
        let oldest = v.oldest_held(s.epoch, self.cfg.buffer_packets);
        let mut gone = Vec::new();
        let mut overflow = false;
        for r in reported.ranges() {
            let lost = u64::from(v.note_nak(r.first, r.last));
            conn.stats.data_packets_lost += lost;
            conn.stats.data_bytes_lost += lost * MAX_PAYLOAD as u64;
            let q = v.queue_nak(r.first, r.last, oldest, now);
            gone.extend(q.gone);
            overflow |= q.overflow;
        }
        if overflow {
            self.drops.drop_packet("loss_list_full");
        }
        self.retransmit(now, id, &gone);
    }

    /// A viewer's loss report broke the protocol: counted, logged once (the connection
    /// ends with it), SHUTDOWN.
    fn end_for_nak(&mut self, now: Instant, id: u32, reason: &'static str, why: &str) {
        self.drops.drop_packet(reason);
        info!(conn = id, "closing viewer: {why}");
        self.close(now, id, CloseReason::ProtocolViolation);
    }

    /// Resends to viewer `id` what it awaits (and DROPREQs `gone` first), as far as its
    /// budget allows: the stream's own byte rate (at least `REXMIT_FLOOR_BPS`), bursts of
    /// `REXMIT_BURST` of it. What does not fit waits in its list for the budget to refill.
    pub(super) fn retransmit(&mut self, now: Instant, id: u32, gone: &[(Seq, Seq)]) {
        let Some(mut conn) = self.conns.remove(&id) else {
            return;
        };
        let s = &self.streams[conn.stream];
        let publisher = match s
            .publisher
            .and_then(|p| self.conns.get(&p))
            .map(|c| &c.role)
        {
            Some(Role::Publisher(rx)) => Some(Feeder::Local(rx)),
            _ => s.remote.as_ref().map(Feeder::Remote),
        };
        let rate = rexmit_rate(publisher);
        let burst = rexmit_burst(rate);
        let clock = conn.clock64(now);
        let ts = clock as u32;
        let stream = conn.stream as u32;
        let rto = recheck_after(&conn.stats, conn.kernel_epoch == Some(s.epoch));
        let (peer, peer_id) = (conn.peer, conn.peer_id);
        // An encrypted viewer's retransmission is encrypted as its original was: same key,
        // same sequence number, so the same ciphertext.
        let enc = conn.encryption.as_deref();
        let Role::Viewer(v) = &mut conn.role else {
            self.conns.insert(id, conn);
            return;
        };
        let stats = &mut conn.stats;
        v.budget.refill(now, rate, burst);
        let again = &mut self.recheck_scratch;
        again.clear();
        v.due_rechecks(now, rto, again);
        // Sent from the back: the oldest first.
        again.reverse();
        let mut drop_run: Option<(Seq, Seq)> = None;
        let mut sent_any = false;
        let dropreq =
            |out: &mut Outbox, v: &mut ViewerSend, stats: &mut ConnStats, run: (Seq, Seq)| {
                let body = [run.0.get(), run.1.get()];
                let len = out.push_control(peer, ctrl::DROPREQ, 0, ts, peer_id, &body);
                v.budget.spend(len as u64);
                stats.sent_control(len);
                stats.data_packets_dropped += run.1.diff(run.0).max(0) as u64 + 1;
            };
        for &run in gone {
            if !v.budget.available() {
                break; // the viewer asks again
            }
            dropreq(&mut self.out, v, stats, run);
        }
        while v.budget.available() {
            let Some((vseq, sends)) = again.pop().or_else(|| v.loss.pop_first().map(|s| (s, 0)))
            else {
                break;
            };
            let held = match v.unmap(s.epoch, vseq) {
                Unmapped::Publisher(p) => match s.ring.as_ref().and_then(|r| r.get(p)) {
                    // A timestamp before the viewer's zero would stall it (see `fan_out`).
                    Some((_, pkt))
                        if playout::before_zero(clock, v.ts(pkt.ts).wrapping_add(pkt.delay)) =>
                    {
                        None
                    }
                    // Larger than the viewer takes in (see `fan_out`).
                    Some((_, pkt)) if pkt.payload.len() > v.max_payload => None,
                    // Sent under a key since retired: the viewer could not decrypt it.
                    Some(_) if enc.is_some_and(|e| e.parity_of(vseq).is_none()) => None,
                    Some((slot, pkt)) => Some(Some((slot, pkt))),
                    // Still expected from the publisher: forwarded when it comes.
                    None if publisher.is_some_and(|f| f.is_missing(p)) => Some(None),
                    None => None,
                },
                // Not forwarded yet: the viewer asks again if it stays missing.
                Unmapped::NotYet => Some(None),
                Unmapped::Gone => None,
            };
            let Some(Some((slot, pkt))) = held else {
                // Nothing sent for it still costs a header's worth, so a report of what
                // cannot be sent does not buy unbounded work either (found by fuzzing: 1.5 s
                // of one relay's time for a 6 KB input).
                v.budget.spend(HEADER_LEN as u64);
                if held.is_none() {
                    drop_run = match drop_run {
                        Some((a, b)) if b.next() == vseq => Some((a, vseq)),
                        Some(run) => {
                            dropreq(&mut self.out, v, stats, run);
                            Some((vseq, vseq))
                        }
                        None => Some((vseq, vseq)),
                    };
                }
                continue;
            };
            // The key it went under first: the same ciphertext again.
            let parity = enc.and_then(|e| e.parity_of(vseq));
            self.out.push_data(
                peer,
                vseq,
                pkt.msg | MSG_REXMIT_FLAG | parity.map_or(0, Parity::msg_bits),
                v.ts(pkt.ts).wrapping_add(pkt.delay),
                peer_id,
                Payload::Ring {
                    stream,
                    slot: slot as u32,
                },
            );
            if let (Some(e), Some(parity)) = (enc, parity) {
                self.out
                    .own_payload(&pkt.payload, |p| e.seal(parity, vseq, p));
            }
            let len = (HEADER_LEN + pkt.payload.len()) as u64;
            v.budget.spend(len);
            stats.sent_data(len as usize);
            stats.data_packets_retrans += 1;
            sent_any = true;
            v.resent(vseq, sends + 1, now);
        }
        // Due rechecks the budget did not allow: the viewer asks again, or the next check.
        for &(vseq, sends) in again.iter().rev() {
            v.resent(vseq, sends, now);
        }
        if let Some(run) = drop_run {
            dropreq(&mut self.out, v, stats, run);
        }
        // Wake when a full datagram's worth is there (not for every byte), or for the next
        // recheck.
        let at = [
            (!v.loss.is_empty()).then(|| v.budget.ready_at(rate, MAX_DATAGRAM as u64)),
            v.next_recheck(rto),
        ]
        .into_iter()
        .flatten()
        .min();
        if sent_any {
            conn.last_sent = now;
        }
        if let Some(at) = at {
            self.wake_rexmit(id, at);
        }
        self.conns.insert(id, conn);
    }

    /// A viewer's ACK that stops at a packet the relay sent it long enough ago that the ACK
    /// would include it had it arrived: that packet is lost, and libsrt may not say so in
    /// time (a burst's last packet is noticed only at the next burst; a lost loss report is
    /// repeated on a timer that starts at 300 ms). It is resent now, once; its recheck
    /// follows. libsrt sends no further ACK while its ACK point stays (it was ACKACKed), so
    /// this happens once per stall. For a kernel-served viewer `now` is the ACK's own
    /// arrival, read from the kernel's maps.
    pub(super) fn on_ack_gap(&mut self, now: Instant, id: u32, ack: Seq) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let s = &self.streams[conn.stream];
        let after = viewer_rtt(&conn.stats) + ACK_GAP_SLACK;
        let Role::Viewer(v) = &mut conn.role else {
            return;
        };
        if !ack.lt(v.next_vseq()) || v.rechecking(ack) {
            return;
        }
        let Unmapped::Publisher(p) = v.unmap(s.epoch, ack) else {
            return;
        };
        let sent = s
            .ring
            .as_ref()
            .and_then(|r| r.get(p))
            .and_then(|(_, pkt)| pkt.arrived);
        if sent.is_some_and(|t| now >= t + after) {
            v.loss.insert(ack, ack, now);
            self.retransmit(now, id, &[]);
        }
    }

    /// Wakes for viewer `id`'s next recheck on its current RTT (which its ACKs update).
    pub(super) fn arm_recheck(&mut self, id: u32) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let Role::Viewer(v) = &conn.role else {
            return;
        };
        let kernel = conn.kernel_epoch == Some(self.streams[conn.stream].epoch);
        if let Some(at) = v.next_recheck(recheck_after(&conn.stats, kernel)) {
            self.wake_rexmit(id, at);
        }
    }

    /// Runs viewer `id`'s retransmission pass again at `at` (or earlier, for another's).
    fn wake_rexmit(&mut self, id: u32, at: Instant) {
        self.rexmit_wake = Some(self.rexmit_wake.map_or(at, |w| w.min(at)));
        self.rexmit_pending.insert(id);
    }
}
