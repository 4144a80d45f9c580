//! A stream's publisher side: its data in (ACKed and NAKed by the receiver), stored in the
//! stream's ring and fanned out to every viewer the kernel does not serve; its rates and
//! the delay ramp.

use super::encryption::send_announcement;
use super::feed::{self, Kind, Read};
use super::ingest::IngestLatency;
use super::outbox::Payload;
use super::ring::Ring;
use super::stats::CloseReason;
use super::{
    playout, Offsets, Relay, Role, RouteEvent, StreamConfig, StreamSnapshot, CLOCK_HEADROOM,
    FEED_POLL, SWEEP,
};
use crate::srt::crypto::Parity;
use crate::srt::packet::{be32, ControlPacket, DataPacket};
use crate::srt::receiver::{Arrival, Receiver};
use crate::srt::seq::Seq;
use std::time::Instant;
use stsync_common::srt::{ctrl, HEADER_LEN, MAX_PAYLOAD, MSG_KK_MASK, MSG_REXMIT_FLAG};
use tracing::{debug, info, warn};

/// How far back (packets) a new viewer's mapping may start before the packet that maps it.
const MAX_ANCHOR_GAP: i32 = 64;
/// How fast a stream's applied delay moves towards a new target: 10 % of real time (the
/// time since the last step, not a step per sweep, so a late sweep does not slow it), so
/// viewers' players get the stream 10 % slower (delay growing) or faster (shrinking) until
/// it is reached, and nothing is held back, dropped or repeated.
const DELAY_RATE_DIV: u64 = 10;
/// At most this much per step, whatever the time since the last one (a stalled worker).
const DELAY_STEP_MAX_US: u32 = 50_000;
/// At most this much of an upstream's delay is carried to a pulled stream's viewers (the
/// largest delay a relay takes).
const MAX_LEAD_US: u32 = (crate::delay::MAX_DELAY_MS * 1000) as u32;

/// A configured resource and its live state.
pub(super) struct Stream {
    pub resource: String,
    pub publisher: Option<u32>,
    pub viewers: Vec<u32>,
    /// Viewers past their handshake.
    pub viewers_connected: u64,
    /// Bumped on every publisher change: viewers re-anchor their offsets to the new one.
    pub epoch: u64,
    pub ring: Option<Ring>,
    /// Added to every timestamp the stream's viewers get (µs): their play-out is that much
    /// later. Moves towards `delay_target_ms` at `DELAY_RATE_DIV`'s pace.
    pub delay_us: u32,
    /// The delay asked for (config.json or the HTTP API), ms.
    pub delay_target_ms: u64,
    /// When the delay was last moved towards its target (the last sweep).
    pub delay_stepped_at: Option<Instant>,
    /// The current publisher's ingest latency.
    pub ingest: Option<IngestLatency>,
    /// The current publisher is on another worker: what its feed last said of it.
    pub remote: Option<Remote>,
    /// The delay no longer fits viewers' receive buffers at the publisher's rate (warned).
    pub delay_too_big: bool,
    /// What the publisher and the viewers must encrypt with (none: they must not).
    pub publish_passphrase: Option<String>,
    pub view_passphrase: Option<String>,
    pub pbkeylen: Option<u8>,
    /// Its publisher is an upstream relay (config.json `upstream`); this worker's pull,
    /// if it is the one that pulls it.
    pub pulled: bool,
    pub pull: Option<super::pull::Pull>,
    /// Removed by a reload: the slot waits for a stream to reuse it (see `reconfig`).
    pub retired: bool,
    /// As of the last sweep.
    pub bitrate_bps: u64,
    pub packet_rate: u64,
    pub ingest_latency_us: u64,
}

impl Stream {
    pub fn new(cfg: StreamConfig) -> Self {
        Stream {
            resource: cfg.resource,
            publisher: None,
            viewers: Vec::new(),
            viewers_connected: 0,
            epoch: 0,
            ring: None,
            delay_us: delay_target_us(cfg.delay_ms),
            delay_target_ms: cfg.delay_ms,
            delay_stepped_at: None,
            ingest: None,
            remote: None,
            delay_too_big: false,
            publish_passphrase: cfg.publish_passphrase,
            view_passphrase: cfg.view_passphrase,
            pbkeylen: cfg.pbkeylen,
            pulled: !cfg.upstreams.is_empty(),
            pull: None,
            retired: false,
            bitrate_bps: 0,
            packet_rate: 0,
            ingest_latency_us: 0,
        }
    }

    pub fn snapshot(&self) -> StreamSnapshot {
        StreamSnapshot {
            resource: self.resource.clone(),
            publisher: self.publisher.is_some(),
            viewers: self.viewers_connected,
            bitrate_bps: self.bitrate_bps,
            packet_rate: self.packet_rate,
            delay_target_ms: self.delay_target_ms,
            delay_applied_us: self.delay_us.into(),
            ingest_latency_us: self.ingest_latency_us,
            pull: None,
        }
    }
}

/// What a stream's viewers on this worker know of a publisher on another: its byte rate
/// and the oldest packet it still expects, as of its latest packet.
#[derive(Debug, Clone, Copy)]
pub(super) struct Remote {
    pub byte_rate: u32,
    pub first_missing: Option<Seq>,
}

/// A stream's publisher as its viewers need it, on this worker or another.
#[derive(Clone, Copy)]
pub(super) enum Feeder<'a> {
    Local(&'a Receiver),
    Remote(&'a Remote),
}

impl Feeder<'_> {
    pub fn byte_rate(self) -> u32 {
        match self {
            Feeder::Local(rx) => rx.byte_rate(),
            Feeder::Remote(r) => r.byte_rate,
        }
    }

    /// Packet `p` is still expected from the publisher (forwarded when it comes). Of a
    /// remote one, only the oldest gap is known: anything from it on may still come.
    pub fn is_missing(self, p: Seq) -> bool {
        match self {
            Feeder::Local(rx) => rx.is_missing(p),
            Feeder::Remote(r) => r.first_missing.is_some_and(|m| !p.lt(m)),
        }
    }
}

/// How far the applied delay moves at `now`, the previous sweep having been at `last`.
fn delay_step(last: Option<Instant>, now: Instant) -> u32 {
    let elapsed = last.map_or(SWEEP, |t| now.saturating_duration_since(t));
    ((elapsed.as_micros() as u64 / DELAY_RATE_DIV) as u32).min(DELAY_STEP_MAX_US)
}

/// A delay in ms as the µs added to timestamps.
fn delay_target_us(ms: u64) -> u32 {
    (ms * 1000).min(u64::from(u32::MAX)) as u32
}

/// The payload bytes of a queued data transmit.
pub(super) fn payload(streams: &[Stream], p: Payload) -> &[u8] {
    match p {
        Payload::None => &[],
        Payload::Ring { stream, slot } => streams[stream as usize]
            .ring
            .as_ref()
            .map_or(&[][..], |r| r.payload(slot as usize)),
    }
}

impl Relay {
    pub(super) fn on_data(&mut self, now: Instant, id: u32, d: DataPacket) {
        let conn = self.conns.get_mut(&id).expect("caller checked");
        let stream = conn.stream;
        if self.streams[stream].publisher == Some(id)
            && self.shared.epoch(stream) != self.streams[stream].epoch
        {
            info!(conn = id, "publisher taken over on another worker");
            return self.close(now, id, CloseReason::TakenOver);
        }
        conn.stats.data_packets_recv += 1;
        conn.stats.data_bytes_recv += (HEADER_LEN + d.payload.len()) as u64;
        // The publisher's clock started `CLOCK_HEADROOM` before its handshake.
        let publisher_young = conn.clock64(now) < 2 * CLOCK_HEADROOM.as_micros() as u64;
        let Role::Publisher(rx) = &mut conn.role else {
            return self.drops.drop_packet("data_from_viewer");
        };
        let mut fb = std::mem::take(&mut self.feedback);
        let arrival = rx.on_data(now, d.seq, d.payload.len(), &mut fb);
        conn.stats.data_packets_lost = rx.stats.lost;
        conn.stats.data_bytes_lost = rx.stats.lost * MAX_PAYLOAD as u64;
        conn.stats.data_packets_dropped = rx.stats.dropped;
        // Where a viewer that this packet maps starts. Only a fresh packet starts one: a
        // recovered packet's timing is its recovery's, and the viewer's time base follows
        // the packet that starts it. A late joiner starts at that packet: an older one
        // would reach it too late to play (libsrt drops it, or waits for it). While the
        // publisher is young, a viewer that waited for it starts at the oldest packet still
        // missing (say, the very first was lost) and gets the whole stream; its clock's
        // headroom keeps such a packet after its zero.
        let start = (arrival == Arrival::New).then(|| {
            rx.first_missing()
                .filter(|m| publisher_young && m.lt(d.seq) && d.seq.diff(*m) <= MAX_ANCHOR_GAP)
                .unwrap_or(d.seq)
        });
        let feeder = Remote {
            byte_rate: rx.byte_rate(),
            first_missing: rx.first_missing(),
        };
        let arrival_us = conn.clock64(now);
        // A pulled stream's upstream stamps its packets ahead of its clock by its own
        // delay: viewers here start that far ahead too, so the delay reaches them (a
        // change of it later is in the timestamps themselves).
        let lead = if self.streams[stream].pulled {
            let ahead = d.ts.wrapping_sub(arrival_us as u32) as i32;
            (ahead.max(0) as u32).min(MAX_LEAD_US)
        } else {
            0
        };
        self.send_feedback(now, id, &mut fb);
        self.feedback = fb;
        if arrival == Arrival::Duplicate {
            return;
        }
        if d.msg & MSG_REXMIT_FLAG == 0 {
            if let Some(l) = &mut self.streams[stream].ingest {
                l.on_packet(now, arrival_us, d.ts);
            }
        }
        // An encrypted publisher's packet is decrypted once; its viewers get it in clear or
        // under their own keys.
        let mut plain = std::mem::take(&mut self.plain);
        let keys = self
            .conns
            .get(&id)
            .and_then(|c| Some(&c.encryption.as_deref()?.keys));
        let payload = match (keys, Parity::of_msg(d.msg)) {
            (Some(keys), Some(parity)) => {
                plain.clear();
                plain.extend_from_slice(d.payload);
                if !keys.crypt(parity, d.seq, &mut plain) {
                    self.plain = plain;
                    return self.drops.drop_packet("no_key_for_packet");
                }
                &plain[..]
            }
            _ => d.payload,
        };
        let msg = d.msg & !MSG_KK_MASK;
        let d = DataPacket { payload, msg, ..d };
        // Read after this: the packet reached the socket since (see `handle_kernel`).
        let drained = self.shared.drained(self.worker);
        let _ = self.fan_out(now, stream, d, start, lead, drained);
        self.feed_out(stream, &d, start, lead, feeder, drained);
        self.plain = plain;
    }

    /// Writes a local publisher's packet to this worker's feed when other workers have
    /// viewers of its stream.
    fn feed_out(
        &mut self,
        stream: usize,
        d: &DataPacket,
        start: Option<Seq>,
        lead: u32,
        r: Remote,
        drained: u64,
    ) {
        let s = &self.streams[stream];
        let Some(f) = &mut self.feed else {
            return;
        };
        if self.shared.viewers(stream) <= s.viewers.len() {
            return;
        }
        let h = feed::Header {
            kind: Kind::Data,
            stream: stream as u32,
            epoch: s.epoch,
            seq: d.seq.get(),
            msg: d.msg,
            ts: d.ts,
            delay: s.delay_us,
            start: start.map(Seq::get),
            first_missing: r.first_missing.map(Seq::get),
            byte_rate: r.byte_rate,
            lead,
            drained,
        };
        f.push(&h, d.payload);
        self.fed = true;
    }

    /// Whether this relay wrote to its feed since the last call (its driver then wakes
    /// the other workers).
    pub fn take_fed(&mut self) -> bool {
        std::mem::take(&mut self.fed)
    }

    /// Whether this relay's driver should wake worker `w` for what it just fed (see
    /// `Shared::wants_prompt_feed`).
    pub fn wants_prompt_feed(&self, w: u32) -> bool {
        self.shared.wants_prompt_feed(w)
    }

    /// Takes in what the other workers' feeds hold: their publishers' packets for this
    /// worker's viewers, and their publishers' comings and goings.
    pub fn handle_feed(&mut self, now: Instant) {
        self.next_feed_poll = now + FEED_POLL;
        let (mut fanned, mut sent) = (0, 0);
        let mut buf = std::mem::take(&mut self.plain);
        for k in 0..self.upstream.len() {
            // At most a feed's worth each: a busy feed cannot hold this worker for ever.
            for _ in 0..feed::FEED_SLOTS {
                let streams = &self.streams;
                let want = |i: u32| {
                    streams
                        .get(i as usize)
                        .is_some_and(|s| !s.viewers.is_empty())
                };
                match self.upstream[k].next(&mut buf, want) {
                    None => break,
                    Some(Read::Lost(n)) => {
                        *self.drops.dropped.entry("feed_overrun").or_default() += n;
                    }
                    Some(Read::Entry(h)) => {
                        if let Some(n) = self.on_feed_entry(now, &h, &buf) {
                            fanned += 1;
                            sent += n;
                        }
                    }
                }
            }
        }
        self.plain = buf;
        if fanned > 0 {
            self.shared.set_prompt_feed(self.worker, sent > 0);
        }
    }

    /// Records that this worker found its socket empty at `t`, after handling all it read
    /// before (the driver calls it).
    pub fn note_drained(&mut self, t: Instant) {
        if !self.upstream.is_empty() {
            self.shared.set_drained(self.worker, t);
        }
    }

    /// Takes one feed entry; for a packet fanned out to viewers here, how many of them got
    /// it from userspace.
    fn on_feed_entry(&mut self, now: Instant, h: &feed::Header, payload: &[u8]) -> Option<usize> {
        let i = h.stream as usize;
        let s = self.streams.get_mut(i)?;
        // A removed stream's last packets (its slot's epoch moved on, see `Shared::retire`).
        if s.retired || h.epoch < s.epoch {
            return None; // from a publisher since replaced
        }
        if h.epoch > s.epoch {
            // A new publisher, on another worker: it ends one here, and the ring starts
            // again (as for a new publisher here).
            if let Some(old) = s.publisher {
                info!(conn = old, "publisher taken over on another worker");
                self.close(now, old, CloseReason::TakenOver);
            }
            let s = &mut self.streams[i];
            s.epoch = h.epoch;
            s.ingest = None;
            if let Some(r) = &mut s.ring {
                r.clear();
            }
        }
        let s = &mut self.streams[i];
        if h.kind == Kind::Gone {
            s.remote = None;
            return None;
        }
        s.remote = Some(Remote {
            byte_rate: h.byte_rate,
            first_missing: h.first_missing.map(Seq::new),
        });
        // Kept in step with the publisher's worker also without viewers here: when the
        // publisher leaves, every worker moves on from the same delay.
        s.delay_us = h.delay;
        if s.viewers.is_empty() {
            return None;
        }
        let d = DataPacket {
            seq: Seq::new(h.seq),
            msg: h.msg,
            ts: h.ts,
            dest: 0,
            payload,
        };
        Some(self.fan_out(now, i, d, h.start.map(Seq::new), h.lead, h.drained))
    }

    /// A publisher's ACKACK (its RTT) or DROPREQ (what it gave up sending).
    pub(super) fn on_publisher_control(&mut self, now: Instant, id: u32, c: ControlPacket) {
        let conn = self.conns.get_mut(&id).expect("caller checked");
        let Role::Publisher(rx) = &mut conn.role else {
            return;
        };
        if c.typ == ctrl::ACKACK {
            rx.on_ackack(now, c.info);
            conn.stats.rtt_us = rx.rtt.rtt_us.into();
            conn.stats.rtt_var_us = rx.rtt.var_us.into();
            return;
        }
        match (be32(c.body, 0), be32(c.body, 4)) {
            (Ok(a), Ok(b)) => {
                rx.on_dropreq(Seq::new(a), Seq::new(b));
                conn.stats.data_packets_dropped = rx.stats.dropped;
            }
            _ => self.drops.drop_packet("malformed"),
        }
    }

    /// Stores a publisher packet and sends it to every viewer the kernel does not serve;
    /// a viewer not mapped yet starts at `start`, if any (see `on_data`), `lead` µs ahead of
    /// its clock (a pulled stream's upstream delay); `drained`: when its
    /// publisher's worker last found its socket empty before it read it. Returns how many
    /// it sent it to.
    fn fan_out(
        &mut self,
        now: Instant,
        stream: usize,
        d: DataPacket,
        start: Option<Seq>,
        lead: u32,
        drained: u64,
    ) -> usize {
        let mut sent = 0;
        let s = &mut self.streams[stream];
        let msg = d.msg & !MSG_REXMIT_FLAG;
        let delay = s.delay_us;
        let slot = s
            .ring
            .get_or_insert_with(|| Ring::new(self.cfg.buffer_packets))
            .insert(now, d.seq, msg, d.ts, delay, d.payload);
        let epoch = s.epoch;
        for &vid in &s.viewers {
            let Some(conn) = self.conns.get_mut(&vid) else {
                continue;
            };
            let clock = conn.clock64(now);
            let Role::Viewer(v) = &mut conn.role else {
                continue;
            };
            let before = v.mapping();
            let anchor = (clock as u32).wrapping_add(lead);
            let Some((vseq, vts)) = v.map_new(epoch, d.seq, d.ts, anchor, start) else {
                continue;
            };
            if let Some(m) = v.mapping().filter(|m| Some(*m) != before) {
                let offsets = Offsets {
                    epoch,
                    seq_off: m.seq_off,
                    ts_off: m.ts_off,
                };
                self.events
                    .push_back(RouteEvent::ViewerMapped { conn: vid, offsets });
            }
            // Read after the kernel took the viewer: cloned.
            if let Some((e, at)) = conn.serving_from {
                if drained >= self.shared.clock_ns(at) {
                    conn.kernel_epoch = Some(e);
                    conn.serving_from = None;
                }
            }
            if conn.kernel_epoch == Some(epoch) {
                continue;
            }
            if d.payload.len() > v.max_payload {
                // libsrt would drop it unseen (its receive buffers are sized from its own
                // MSS; see `ViewerSend::max_payload`). DROPREQ for it at once: libsrt's
                // `processCtrlDropReq` moves its receive sequence past it, so its ACKs go
                // on even when nothing after it comes (a stream of nothing but such
                // packets). Should it ask anyway (the DROPREQ lost), it gets another.
                let body = [vseq.get(), vseq.get()];
                let len = self.out.push_control(
                    conn.peer,
                    ctrl::DROPREQ,
                    0,
                    clock as u32,
                    conn.peer_id,
                    &body,
                );
                conn.stats.sent_control(len);
                conn.last_sent = now;
                self.drops.drop_packet("payload_over_viewer_mss");
                if !v.oversize_logged {
                    v.oversize_logged = true;
                    info!(
                        conn = vid,
                        payload = d.payload.len(),
                        viewer_max = v.max_payload,
                        "viewer's MSS is too small for this stream's packets: those are not \
                         sent to it (counted as dropped payload_over_viewer_mss)"
                    );
                }
                continue;
            }
            let vts = vts.wrapping_add(delay);
            if playout::before_zero(clock, vts) {
                // Only a publisher whose timestamps run backwards gets here: libsrt would
                // hold this packet for 71 minutes. The viewer asks for it; DROPREQ.
                debug!(
                    conn = vid,
                    "not sent: timestamp before the viewer's clock started"
                );
                continue;
            }
            let schedule = self.cfg.key_schedule;
            let parity = conn
                .encryption
                .as_deref_mut()
                .map(|e| e.next_packet(vseq, schedule));
            self.out.push_data(
                conn.peer,
                vseq,
                msg | parity.map_or(0, Parity::msg_bits),
                vts,
                conn.peer_id,
                Payload::Ring {
                    stream: stream as u32,
                    slot: slot as u32,
                },
            );
            if let (Some(e), Some(parity)) = (conn.encryption.as_deref(), parity) {
                self.out.own_payload(d.payload, |p| e.seal(parity, vseq, p));
            }
            conn.last_sent = now;
            conn.stats.sent_data(HEADER_LEN + d.payload.len());
            send_announcement(&mut self.out, conn, now);
            sent += 1;
        }
        sent
    }

    /// Stream `i`'s rates and ingest latency from its publisher, and one step of its delay
    /// towards the target.
    pub(super) fn sweep_stream(&mut self, now: Instant, i: usize) {
        let latency_ms = self.cfg.latency.as_millis() as u64;
        let s = &self.streams[i];
        // The publisher's rates on its own worker only: another's copy of them may be
        // stale (its feed stops when no viewer here needs it), and the merged snapshot
        // takes the publisher's worker's anyway.
        let rx = self.publisher_rx(s);
        let bitrate_bps = rx.map_or(0, |rx| u64::from(rx.byte_rate()) * 8);
        let packet_rate = rx.map_or(0, |rx| rx.packet_rate().into());
        let remote = s.remote.is_some();
        let ingest = match (rx, &s.ingest) {
            (Some(rx), Some(l)) => l.estimate_us(rx.rtt.rtt_us),
            _ => 0,
        };
        if rx.is_some() || self.shared.workers == 1 {
            self.shared.set_packet_rate(i, packet_rate);
        }
        let s = &mut self.streams[i];
        s.bitrate_bps = bitrate_bps;
        s.packet_rate = packet_rate;
        s.ingest_latency_us = ingest;
        // A delay accepted at a lower rate may not fit once a faster publisher arrives:
        // say so (viewers' buffers overflow and libsrt drops), once per episode.
        match crate::delay::check(s.delay_target_ms, packet_rate, latency_ms) {
            Err(why) if !s.delay_too_big => {
                warn!(resource = %s.resource, "stream delay too large for its rate: {why}");
                s.delay_too_big = true;
            }
            Ok(()) => s.delay_too_big = false,
            Err(_) => {}
        }
        let target = delay_target_us(s.delay_target_ms);
        let stepped_at = s.delay_stepped_at.replace(now);
        // A remote publisher's worker moves the delay; its feed brings it.
        if s.delay_us != target && !remote {
            s.delay_us = if self.shared.viewers(i) == 0 {
                target
            } else if target > s.delay_us {
                target.min(s.delay_us + delay_step(stepped_at, now))
            } else {
                target.max(s.delay_us.saturating_sub(delay_step(stepped_at, now)))
            };
            self.events.push_back(RouteEvent::StreamDelay {
                resource: s.resource.clone(),
                delay_us: s.delay_us,
            });
        }
    }
}
