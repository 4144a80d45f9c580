//! The viewers: one shared UDP socket, one SRT receiver each (ACKs, light ACKs, NAKs like
//! libsrt), and the delivery and latency bookkeeping of every data packet they get,
//! through the socket or (--rx xdp) from the kernel sink's rings.

use super::conn::{Conn, Hs, HS_RETRY, KEEPALIVE};
use super::crypto::{SRT_CMD_KMREQ, SRT_CMD_KMRSP};
use super::sink_feed::drain_sink;
use crate::caller;
use crate::hist::Hist;
use crate::sink::{Arrived, Rings, Sink};
use std::ops::Range;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};
use stsync_common::srt::{ctrl, MSG_KK_MASK, MSG_REXMIT_FLAG};
use stsync_user::os::mmsg::{Received, RecvBatch, SendBatch};
use stsync_user::os::{clock, udp};
use stsync_user::srt::packet::{ControlPacket, DataPacket, Packet};
use stsync_user::srt::receiver::{Arrival, Feedback, Receiver};
use stsync_user::srt::seq::Seq;

/// Packets a viewer's receiver buffers (libsrt's default receive buffer).
pub(crate) const BUFFER_PKTS: u32 = 8192;

pub(super) struct Viewer {
    pub(super) conn: Conn,
    pub(super) rx: Option<Receiver>,
    pub(super) seen: Vec<u64>,
    pub(super) hist: Hist,
    pub(super) st: ViewerCountersView,
    /// --rx xdp: sequence numbers below this were taken from the sink's ring...
    pub(super) sink_next: Seq,
    /// ...except these, which had not arrived yet (bounded by the ring).
    pub(super) sink_missing: Vec<Seq>,
}

/// What the generator sees per viewer.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ViewerCountersView {
    pub(crate) unique: u64,
    /// Unique window packets whose transit was within the latency.
    pub(crate) on_time: u64,
    pub(crate) received: u64,
    pub(crate) duplicates: u64,
    pub(crate) rexmit_received: u64,
    pub(crate) outside_window: u64,
    pub(crate) bad_payload: u64,
    pub(crate) wrong_source: u64,
    pub(crate) misrouted: u64,
    pub(crate) naks_sent: u64,
    pub(crate) acks_full: u64,
    pub(crate) acks_light: u64,
    pub(crate) keepalives: u64,
    pub(crate) dropreqs: u64,
    /// Encrypted viewers (through the socket): whole payloads decrypted and compared with
    /// what the publisher wrote (every 64th packet); a mismatch counts as `bad_payload`.
    pub(crate) payloads_checked: u64,
    /// Key refreshes (SRT_CMD_KMREQ) the relay sent and this viewer answered.
    pub(crate) key_refreshes: u64,
}

pub(super) struct Window {
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) cap: u64,
    /// A packet whose transit took longer than this (the latency) would reach a libsrt
    /// player too late to be played.
    pub(super) late_ns: u64,
}

/// Where SRT clients on one socket send from: their socket, through one send batch.
pub(crate) struct ViewerIo {
    pub(crate) fd: RawFd,
    pub(crate) tx: SendBatch,
    /// A receiver's ACKs and NAKs, on their way to `tx` (see `send_feedback`).
    pub(crate) fb: Vec<Feedback>,
    /// CLOCK_REALTIME − CLOCK_MONOTONIC, for kernel receive timestamps; refreshed every
    /// second.
    pub(crate) rt_offset: i64,
    next_offset_refresh: Instant,
    /// A payload being decrypted for a check.
    scratch: Vec<u8>,
}

impl ViewerIo {
    pub(crate) fn new(fd: RawFd, now: Instant) -> ViewerIo {
        ViewerIo {
            fd,
            tx: SendBatch::new(),
            fb: Vec::new(),
            rt_offset: clock::realtime_offset_ns(),
            next_offset_refresh: now,
            scratch: Vec::new(),
        }
    }

    pub(crate) fn refresh_rt_offset(&mut self, now: Instant) {
        if now >= self.next_offset_refresh {
            self.rt_offset = clock::realtime_offset_ns();
            self.next_offset_refresh = now + Duration::from_secs(1);
        }
    }

    /// Sends what a receiver put in `fb` (ACKs, light ACKs, NAKs) for `conn`, counted in
    /// `st`.
    pub(crate) fn send_feedback(
        &mut self,
        conn: &mut Conn,
        now: Instant,
        st: &mut ViewerCountersView,
    ) {
        for f in self.fb.drain(..) {
            match f {
                Feedback::Ack { number, ack } => {
                    if ack.full.is_some() {
                        st.acks_full += 1;
                    } else {
                        st.acks_light += 1;
                    }
                    let (w, n) = ack.words();
                    conn.control(now, self.fd, &mut self.tx, ctrl::ACK, number, &w[..n]);
                }
                Feedback::Nak(words) => {
                    st.naks_sent += 1;
                    conn.control(now, self.fd, &mut self.tx, ctrl::NAK, 0, &words);
                }
            }
        }
    }
}

/// One data packet reached viewer `v` (through its socket or the sink): its receiver sees
/// it (and may ACK or NAK), then delivery and latency count its first arrival in the window.
pub(super) fn on_data(
    v: &mut Viewer,
    now: Instant,
    seq: Seq,
    a: &Arrived,
    win: &Window,
    io: &mut ViewerIo,
) {
    let Some(rx) = v.rx.as_mut() else { return };
    let arrival = rx.on_data(now, seq, a.len, &mut io.fb);
    io.send_feedback(&mut v.conn, now, &mut v.st);
    if arrival == Arrival::Duplicate {
        v.st.duplicates += 1;
        return;
    }
    if a.rexmit {
        v.st.rexmit_received += 1;
    }
    let rx_ns = if a.rx_realtime {
        (a.rx_ns as i64 - io.rt_offset) as u64
    } else {
        a.rx_ns
    };
    match payload_of(v, seq, a) {
        Some((pi, sent)) if pi >= win.start && pi < win.end => {
            let off = pi - win.start;
            if off < win.cap {
                let (w, b) = ((off / 64) as usize, off % 64);
                if v.seen[w] & (1 << b) == 0 {
                    v.seen[w] |= 1 << b;
                    v.st.unique += 1;
                    let transit = rx_ns.saturating_sub(sent);
                    v.hist.record(transit);
                    if transit <= win.late_ns {
                        v.st.on_time += 1;
                    }
                } else {
                    v.st.duplicates += 1;
                }
            }
        }
        Some(_) => v.st.outside_window += 1,
        None => v.st.bad_payload += 1,
    }
}

/// The (packet index, send time) of what reached viewer `v`: its first bytes decrypted
/// with the viewer's own keys when it encrypts. None: not the generator's payload, or not
/// encrypted as the viewer's connection must be (or the other way round).
fn payload_of(v: &Viewer, seq: Seq, a: &Arrived) -> Option<(u64, u64)> {
    let mut peek = a.peek?;
    match (&v.conn.crypto, a.kk) {
        (None, 0) => {}
        (Some(c), kk) if kk != 0 => {
            if !c.open(kk << 27, seq, &mut peek) {
                return None;
            }
        }
        _ => return None,
    }
    caller::read_payload(&peek)
}

impl Viewer {
    pub(super) fn new(conn: Conn) -> Viewer {
        Viewer {
            conn,
            rx: None,
            seen: Vec::new(),
            hist: Hist::new(),
            st: ViewerCountersView::default(),
            sink_next: Seq::new(0),
            sink_missing: Vec::new(),
        }
    }
}

/// All the viewers, on their one socket, with what their loop keeps between passes.
pub(super) struct Viewers {
    pub(super) list: Vec<Viewer>,
    pub(super) io: ViewerIo,
    /// Viewer i's SRT socket ID is id_base + i: datagrams are routed by it.
    id_base: u32,
    latency: u16,
    /// When each viewer's timers are due next, and the earliest of those.
    due: Vec<Instant>,
    min_due: Instant,
    pub(super) recv: RecvBatch,
    /// Datagrams for none of the viewers (or not SRT).
    pub(super) stray: u64,
    pub(super) win: Window,
}

impl Viewers {
    pub(super) fn new(
        list: Vec<Viewer>,
        fd: RawFd,
        id_base: u32,
        latency: u16,
        t0: Instant,
    ) -> Self {
        Viewers {
            due: vec![t0 + Duration::from_secs(3600); list.len()],
            list,
            io: ViewerIo::new(fd, t0),
            id_base,
            latency,
            min_due: t0,
            recv: RecvBatch::new(256),
            stray: 0,
            win: Window {
                start: u64::MAX,
                end: u64::MAX,
                cap: 0,
                late_ns: u64::from(latency) * 1_000_000,
            },
        }
    }

    /// Viewers `range` start their handshakes.
    pub(super) fn start(&mut self, range: Range<usize>, now: Instant) {
        for i in range {
            self.list[i]
                .conn
                .start(now, self.latency, self.io.fd, &mut self.io.tx);
            self.due[i] = now + HS_RETRY;
            self.min_due = self.min_due.min(self.due[i]);
        }
    }

    /// Whether any viewer is still handshaking.
    pub(super) fn handshaking(&self) -> bool {
        self.list
            .iter()
            .any(|v| matches!(v.conn.state, Hs::Induction | Hs::Conclusion(_)))
    }

    pub(super) fn connected(&self) -> usize {
        self.list
            .iter()
            .filter(|v| v.conn.state == Hs::Connected)
            .count()
    }

    /// Full ACKs sent so far, all viewers.
    pub(super) fn acks_full(&self) -> u64 {
        self.list.iter().map(|v| v.st.acks_full).sum()
    }

    /// From now on, delivery counts payload indices from `start`, at most `cap` of them.
    pub(super) fn open_window(&mut self, start: u64, cap: u64) {
        self.win.start = start;
        self.win.cap = cap;
        for v in self.list.iter_mut() {
            v.seen = vec![0; cap.div_ceil(64) as usize];
        }
    }

    /// Reads what the socket holds (up to 64 batches) and hands each datagram to its
    /// viewer; `ns_of` maps an instant to the payloads' clock.
    pub(super) fn receive(&mut self, ns_of: &impl Fn(Instant) -> u64) {
        self.recv.drain(self.io.fd, 64, |now, batch| {
            let now_ns = ns_of(now);
            self.io.refresh_rt_offset(now);
            for d in batch.received() {
                let rx_ns = d
                    .rx_realtime_ns
                    .map_or(now_ns, |t| (t as i64 - self.io.rt_offset) as u64);
                let Ok(p) = Packet::parse(d.data) else {
                    self.stray += 1;
                    continue;
                };
                let idx = p.dest().wrapping_sub(self.id_base) as usize;
                let Some(v) = self.list.get_mut(idx) else {
                    self.stray += 1;
                    continue;
                };
                if !accepts(v, &d) {
                    continue;
                }
                match p {
                    Packet::Data(dp) => on_socket_data(v, now, &dp, rx_ns, &self.win, &mut self.io),
                    Packet::Control(c) => {
                        if on_control(v, now, &c, self.latency, &mut self.io) {
                            self.due[idx] = now + Duration::from_millis(10);
                            self.min_due = self.min_due.min(self.due[idx]);
                        }
                    }
                }
            }
        });
    }

    /// --rx xdp: what the sink recorded since the last pass, to every viewer.
    pub(super) fn take_from_sink(&mut self, sink: &impl Rings) {
        let now = Instant::now();
        self.io.refresh_rt_offset(now);
        for (i, v) in self.list.iter_mut().enumerate() {
            drain_sink(sink, i as u32, v, now, &self.win, &mut self.io);
        }
    }

    /// Runs the timers that are due (receivers' ACK and NAK timers, keepalives, handshake
    /// retries), then sends what all this queued.
    pub(super) fn timers(&mut self, now: Instant) {
        if now >= self.min_due {
            let mut next = now + Duration::from_secs(1);
            for (v, due) in self.list.iter_mut().zip(self.due.iter_mut()) {
                if *due <= now {
                    *due = viewer_timers(v, now, self.latency, &mut self.io);
                }
                next = next.min(*due);
            }
            self.min_due = next;
        }
        self.io.tx.flush(self.io.fd);
    }

    /// Sleeps until the next timer, or a tick (see --tick-us), or (with `tick_us` 0) the
    /// next datagram; at most a millisecond while viewers are still to start.
    pub(super) fn sleep(&self, now: Instant, tick_us: u64, starting: bool) {
        let mut wake = if tick_us == 0 {
            self.min_due.min(now + Duration::from_millis(5))
        } else {
            self.min_due.max(now + Duration::from_micros(tick_us / 2))
        };
        if starting {
            wake = wake.min(now + Duration::from_millis(1));
        }
        let timeout = wake.saturating_duration_since(Instant::now());
        if !timeout.is_zero() {
            if tick_us == 0 {
                udp::wait_readable(&[self.io.fd], timeout.as_nanos() as u64);
            } else {
                // Sleep, not poll: what arrives meanwhile is read in one batch.
                let t = timeout.min(Duration::from_micros(tick_us));
                udp::wait_readable(&[], t.as_nanos() as u64);
            }
        }
    }

    /// --rx xdp: what the sink counted and dropped never reached the socket's counters.
    pub(super) fn add_sink_counts(&mut self, sink: &Sink) {
        for (i, v) in self.list.iter_mut().enumerate() {
            let h = sink.head(i as u32);
            v.st.received += h.data;
            v.st.duplicates += h.duplicates + h.stale;
        }
    }

    /// Closes every connection politely.
    pub(super) fn close(&mut self, now: Instant) {
        for v in self.list.iter_mut() {
            if v.conn.state == Hs::Connected {
                v.conn
                    .control(now, self.io.fd, &mut self.io.tx, ctrl::SHUTDOWN, 0, &[0]);
            }
        }
        self.io.tx.flush(self.io.fd);
    }
}

/// Whether viewer `v` takes datagram `d` as libsrt would: from its peer, to its own
/// address, whole. Counts what it refuses.
fn accepts(v: &mut Viewer, d: &Received) -> bool {
    if d.src != v.conn.relay {
        // libsrt drops what does not come from its peer.
        v.st.wrong_source += 1;
        return false;
    }
    if d.dst.is_some() && d.dst != v.conn.src {
        v.st.misrouted += 1;
        return false;
    }
    if d.truncated {
        v.st.bad_payload += 1;
        return false;
    }
    true
}

/// A data packet through the socket, received at `rx_ns` (payload clock).
fn on_socket_data(
    v: &mut Viewer,
    now: Instant,
    dp: &DataPacket,
    rx_ns: u64,
    win: &Window,
    io: &mut ViewerIo,
) {
    if v.rx.is_none() {
        return;
    }
    v.st.received += 1;
    if let Some(c) = &v.conn.crypto {
        // Every 64th: the whole payload decrypts to exactly what was published.
        if v.st.received % 64 == 1 {
            v.st.payloads_checked += 1;
            io.scratch.clear();
            io.scratch.extend_from_slice(dp.payload);
            if !c.open(dp.msg, dp.seq, &mut io.scratch) || !caller::payload_intact(&io.scratch) {
                v.st.bad_payload += 1;
            }
        }
    }
    let a = Arrived {
        len: dp.payload.len(),
        rexmit: dp.msg & MSG_REXMIT_FLAG != 0,
        kk: (dp.msg & MSG_KK_MASK) >> 27,
        peek: Arrived::peek_of(dp.payload),
        rx_ns,
        rx_realtime: false,
    };
    on_data(v, now, dp.seq, &a, win, io);
}

/// A control packet for viewer `v`; true when it completed the viewer's handshake.
fn on_control(
    v: &mut Viewer,
    now: Instant,
    c: &ControlPacket,
    latency: u16,
    io: &mut ViewerIo,
) -> bool {
    match c.typ {
        ctrl::HANDSHAKE if v.conn.on_hs(now, c.body, latency, io.fd, &mut io.tx) => {
            let lat = Duration::from_millis(u64::from(latency));
            v.rx = Some(Receiver::new(v.conn.isn, lat, BUFFER_PKTS, now));
            v.sink_next = v.conn.isn;
            return true;
        }
        ctrl::ACKACK => {
            if let Some(rx) = v.rx.as_mut() {
                rx.on_ackack(now, c.info);
            }
        }
        ctrl::DROPREQ => {
            v.st.dropreqs += 1;
            if let (Some(rx), Some(a), Some(b)) =
                (v.rx.as_mut(), c.body.get(0..4), c.body.get(4..8))
            {
                let w = |x: &[u8]| Seq::new(u32::from_be_bytes(x.try_into().unwrap()));
                rx.on_dropreq(w(a), w(b));
            }
        }
        ctrl::SHUTDOWN => v.conn.state = Hs::Closed,
        ctrl::USER_DEFINED if c.subtype == SRT_CMD_KMREQ => {
            // The relay's key refresh: taken and answered with the same bytes, as libsrt
            // does; one that does not open goes unanswered (the relay asks again).
            if let Some(words) = v.conn.crypto.as_mut().and_then(|k| k.refresh(c.body)) {
                v.st.key_refreshes += 1;
                v.conn
                    .control_ext(now, io.fd, &mut io.tx, SRT_CMD_KMRSP, &words);
            }
        }
        _ => {}
    }
    false
}

/// Viewer `v`'s due timers; when they are due next.
fn viewer_timers(v: &mut Viewer, now: Instant, latency: u16, io: &mut ViewerIo) -> Instant {
    match v.conn.state {
        Hs::Connected => {
            let rx = v.rx.as_mut().expect("connected viewers have a receiver");
            rx.handle_timeout(now, &mut io.fb);
            let rx_due = rx.poll_timeout();
            io.send_feedback(&mut v.conn, now, &mut v.st);
            if now >= v.conn.last_sent + KEEPALIVE {
                v.st.keepalives += 1;
                v.conn
                    .control(now, io.fd, &mut io.tx, ctrl::KEEPALIVE, 0, &[0]);
            }
            rx_due.min(v.conn.last_sent + KEEPALIVE)
        }
        _ => v
            .conn
            .hs_timer(now, latency, io.fd, &mut io.tx)
            .unwrap_or(now + Duration::from_secs(3600)),
    }
}
