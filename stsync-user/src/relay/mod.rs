//! The relay: every connection, every stream, the handshake listener and the fan-out. It is
//! sans-IO like the protocol core under it: datagrams and `now` go in through
//! [`Relay::handle_datagram`] and [`Relay::handle_timeout`], datagrams to send come out of
//! [`Relay::outbox`], and [`Relay::poll_timeout`] says when to call again.

mod admission;
mod budget;
mod handshake;
mod ingest;
mod outbox;
mod playout;
pub mod ring;
pub mod viewer;

pub use outbox::{Outbox, Payload, Transmit};

use crate::access::{Denied, Sessions};
use crate::metrics::{ConnMode, ConnStats, Metrics, StreamStats};
use crate::srt::cookie::CookieJar;
use crate::srt::loss::LossList;
use crate::srt::packet::{be32, loss_ranges, Ack, ControlPacket, DataPacket, Packet};
use crate::srt::receiver::{Arrival, Feedback, Receiver};
use crate::srt::seq::Seq;
use crate::srt::streamid::Mode;
pub use admission::AddressLimits;
use admission::PerAddress;
use handshake::{Conclusion, HandshakeOutcome};
use ingest::IngestLatency;
use ring::Ring;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stsync_common::srt::{ctrl, HEADER_LEN, MAX_DATAGRAM, MAX_PAYLOAD, MSG_REXMIT_FLAG};
use tracing::{debug, info, warn};
use viewer::{Unmapped, ViewerSend};

/// Settings the relay core needs (a subset of config.json).
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub latency: Duration,
    pub buffer_packets: u32,
    pub idle_timeout: Duration,
    /// Viewers in all (publishers, one per stream, never count against it).
    pub max_connections: usize,
    pub max_viewers_per_stream: usize,
    pub per_address: AddressLimits,
}

const KEEPALIVE: Duration = Duration::from_secs(1);
const SWEEP: Duration = Duration::from_millis(100);
/// How far a stream's applied delay moves towards a new target per sweep: 10 % of real
/// time, so viewers' players get the stream 10 % slower (delay growing) or faster
/// (shrinking) until it is reached, and nothing is held back, dropped or repeated.
const DELAY_STEP_US: u32 = 10_000;
/// How far back (packets) a new viewer's mapping may start before the packet that maps it.
const MAX_ANCHOR_GAP: i32 = 64;
/// Every connection's clock starts this long before its handshake (the answer says so), so
/// that a packet a little older than the one that maps a viewer still has a timestamp
/// after the viewer's zero. Before it, a timestamp wraps to 2^32 − x, and libsrt holds the
/// packet (and everything behind it) for 71 minutes. It also bounds how old a packet a
/// viewer may start with: only a publisher younger than this lends its first packets.
pub const CLOCK_HEADROOM: Duration = Duration::from_secs(1);
/// A viewer's retransmissions (and DROPREQs) may take the stream's own byte rate again, but
/// at least this much (bytes/s, 1 Mbit/s): a viewer at 10 % loss needs a tenth of it.
const REXMIT_FLOOR_BPS: u64 = 125_000;
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
fn rexmit_rate(publisher: Option<&Receiver>) -> u64 {
    publisher
        .map_or(0, |rx| u64::from(rx.byte_rate()))
        .max(REXMIT_FLOOR_BPS)
}

/// A viewer's RTT + 4·RTTVar as it reports them. libsrt reports 100 ms ± 50 ms, its
/// initial guess, until its first ACKACK; that guess is no RTT (its 300 ms would be past a
/// 120 ms latency), so it counts as 0.
fn viewer_rtt(stats: &ConnStats) -> Duration {
    let (rtt, var) = (stats.rtt_us.load(Relaxed), stats.rtt_var_us.load(Relaxed));
    if (rtt, var) == (100_000, 50_000) {
        Duration::ZERO
    } else {
        Duration::from_micros(rtt + 4 * var)
    }
}

/// How long after resending a packet on a viewer's loss report the relay checks (by the
/// viewer's ACK) that it arrived; `kernel`: the kernel answers its ACKs, which the relay
/// reads later.
fn recheck_after(stats: &ConnStats, kernel: bool) -> Duration {
    let lag = if kernel {
        KERNEL_ACK_LAG
    } else {
        Duration::ZERO
    };
    viewer_rtt(stats) + RECHECK_SLACK + lag
}

/// The burst for `rate`: `REXMIT_BURST` of it, at least 16 full packets.
fn rexmit_burst(rate: u64) -> u64 {
    (rate * REXMIT_BURST.as_millis() as u64 / 1000).max(16 * (HEADER_LEN + MAX_PAYLOAD) as u64)
}

/// A configured resource and its live state.
struct Stream {
    resource: String,
    publisher: Option<u32>,
    viewers: Vec<u32>,
    /// Bumped on every publisher change: viewers re-anchor their offsets to the new one.
    epoch: u64,
    ring: Option<Ring>,
    stats: Arc<StreamStats>,
    /// Added to every timestamp the stream's viewers get (µs): their play-out is that much
    /// later. Moves towards `stats.delay_target_ms` by `DELAY_STEP_US` per sweep.
    delay_us: u32,
    /// The current publisher's ingest latency.
    ingest: Option<IngestLatency>,
    /// The delay no longer fits viewers' receive buffers at the publisher's rate (warned).
    delay_too_big: bool,
}

enum Role {
    Publisher(Box<Receiver>),
    Viewer(ViewerSend),
}

struct Conn {
    peer: SocketAddr,
    peer_id: u32,
    stream: usize,
    /// The connection's clock starts here (`CLOCK_HEADROOM` before its handshake): every
    /// timestamp we send it is µs since `start`.
    start: Instant,
    /// The latency agreed in the handshake (the viewer plays a packet this long after its
    /// timestamp).
    latency: Duration,
    /// When a viewer's play-out was last found far off (warned at most every 10 s).
    playout_warned: Option<Instant>,
    last_recv: Instant,
    last_sent: Instant,
    /// The conclusion answer, sent again if the caller repeats its conclusion.
    response: Vec<u8>,
    role: Role,
    /// The kernel fans this publisher epoch's data out to this viewer (its offsets are
    /// installed there); the relay only retransmits. Any other epoch goes through userspace.
    kernel_epoch: Option<u64>,
    stats: Arc<ConnStats>,
}

impl Conn {
    /// The connection's clock as its timestamps carry it (wrapping every 71.6 minutes).
    fn clock(&self, now: Instant) -> u32 {
        self.clock64(now) as u32
    }

    /// µs since `start`, not wrapped.
    fn clock64(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_micros() as u64
    }
}

/// What the datapath must learn about viewers (the kernel fast path keeps maps in step).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteEvent {
    ViewerAdded {
        conn: u32,
        resource: String,
        peer: SocketAddr,
        peer_id: u32,
        /// The connection's clock starts here (the time base of its timestamps).
        start: Instant,
    },
    /// The viewer's offsets for the stream's current publisher.
    ViewerMapped {
        conn: u32,
        epoch: u64,
        seq_off: u32,
        ts_off: u32,
    },
    ViewerRemoved {
        conn: u32,
    },
    PublisherChanged {
        resource: String,
        publisher: Option<(SocketAddr, u32)>,
        epoch: u64,
    },
    /// The stream's viewers get timestamps `delay_us` later from now on.
    StreamDelay {
        resource: String,
        delay_us: u32,
    },
}

/// A viewer's ACKs that the kernel fast path handled (recorded, and answered with ACKACKs)
/// instead of the relay, as the datapath read them from the program's maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelAcks {
    /// When the latest of them arrived.
    pub last: Instant,
    /// The latest acknowledged sequence number.
    pub ack_seq: Seq,
    /// The viewer's RTT and RTT variance (µs) from its latest full or small ACK.
    pub rtt: Option<(u32, u32)>,
    /// Since the previous report: ACKs answered with an ACKACK, light ACKs, and the SRT
    /// bytes of both.
    pub answered: u64,
    pub light: u64,
    pub bytes: u64,
}

/// The delay asked for stream `stats`, µs.
fn delay_target_us(stats: &StreamStats) -> u32 {
    (stats.delay_target_ms.load(Relaxed) * 1000).min(u64::from(u32::MAX)) as u32
}

/// SRT bytes of an ACKACK (header + one word), as the relay and the kernel send it.
pub const ACKACK_LEN: u64 = HEADER_LEN as u64 + 4;

pub struct Relay {
    cfg: RelayConfig,
    cookies: CookieJar,
    sessions: Arc<Sessions>,
    metrics: Arc<Metrics>,
    streams: Vec<Stream>,
    by_resource: HashMap<String, usize>,
    conns: HashMap<u32, Conn>,
    /// (peer address, peer socket ID) → our socket ID, to recognise repeated conclusions.
    by_peer: HashMap<(SocketAddr, u32), u32>,
    addresses: PerAddress,
    viewer_count: usize,
    out: Outbox,
    events: Vec<RouteEvent>,
    feedback: Vec<Feedback>,
    /// The loss report being handled (kept for its allocation).
    nak_scratch: LossList,
    /// Resent packets due to be sent once more (kept for its allocation).
    recheck_scratch: Vec<(Seq, u8)>,
    /// Viewers whose retransmission list waits for budget, and when the first can go on.
    rexmit_pending: HashSet<u32>,
    rexmit_wake: Option<Instant>,
    next_sweep: Instant,
    /// Source of socket IDs; the driver seeds it randomly.
    id_state: u64,
}

impl Relay {
    /// `streams` pairs each resource (normalised hex) with the stats the HTTP side reads.
    pub fn new(
        cfg: RelayConfig,
        streams: Vec<(String, Arc<StreamStats>)>,
        sessions: Arc<Sessions>,
        metrics: Arc<Metrics>,
        secret: [u8; 16],
        now: Instant,
    ) -> Self {
        let per_address = cfg.per_address;
        let by_resource = streams
            .iter()
            .enumerate()
            .map(|(i, (r, _))| (r.clone(), i))
            .collect();
        let mut events = Vec::new();
        let streams = streams
            .into_iter()
            .map(|(resource, stats)| {
                // The configured delay holds from the start (no viewer to move yet).
                let delay_us = delay_target_us(&stats);
                stats.delay_applied_us.store(delay_us.into(), Relaxed);
                if delay_us > 0 {
                    events.push(RouteEvent::StreamDelay {
                        resource: resource.clone(),
                        delay_us,
                    });
                }
                Stream {
                    resource,
                    publisher: None,
                    viewers: Vec::new(),
                    epoch: 0,
                    ring: None,
                    stats,
                    delay_us,
                    ingest: None,
                    delay_too_big: false,
                }
            })
            .collect();
        Relay {
            cfg,
            cookies: CookieJar::new(secret, now),
            sessions,
            metrics,
            streams,
            by_resource,
            conns: HashMap::new(),
            by_peer: HashMap::new(),
            addresses: PerAddress::new(per_address),
            viewer_count: 0,
            out: Outbox::default(),
            events,
            feedback: Vec::new(),
            nak_scratch: LossList::default(),
            recheck_scratch: Vec::new(),
            rexmit_pending: HashSet::new(),
            rexmit_wake: None,
            next_sweep: now + SWEEP,
            id_state: u64::from_le_bytes(secret[..8].try_into().unwrap()) | 1,
        }
    }

    /// Datagrams queued for sending; the driver sends and clears them.
    pub fn outbox(&mut self) -> &mut Outbox {
        &mut self.out
    }

    pub fn outbox_ref(&self) -> &Outbox {
        &self.out
    }

    /// The payload bytes of a queued data transmit.
    pub fn payload(&self, p: Payload) -> &[u8] {
        match p {
            Payload::None => &[],
            Payload::Ring { stream, slot } => self.streams[stream as usize]
                .ring
                .as_ref()
                .map_or(&[][..], |r| r.payload(slot as usize)),
        }
    }

    pub fn take_events(&mut self) -> Vec<RouteEvent> {
        std::mem::take(&mut self.events)
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Marks a viewer as served by the kernel for publisher epoch `epoch` (the relay then
    /// sends it only retransmissions while that epoch lasts); `None` hands it back.
    pub fn set_kernel_fanout(&mut self, conn: u32, epoch: Option<u64>) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.kernel_epoch = epoch;
        }
    }

    /// Takes in what the kernel fast path did with viewer `conn`'s ACKs: liveness, the
    /// acknowledged position, RTT and the control packet counters, as if the relay had
    /// handled those ACKs itself.
    pub fn on_kernel_acks(&mut self, conn: u32, k: &KernelAcks) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Role::Viewer(v) = &mut c.role else {
            return;
        };
        c.last_recv = c.last_recv.max(k.last);
        let advanced = v.on_ack(k.ack_seq, k.last);
        if let Some((rtt, var)) = k.rtt {
            c.stats.rtt_us.store(rtt.into(), Relaxed);
            c.stats.rtt_var_us.store(var.into(), Relaxed);
        }
        if k.answered > 0 {
            c.last_sent = c.last_sent.max(k.last);
        }
        ConnStats::add(&c.stats.ctrl_packets_recv, k.answered + k.light);
        ConnStats::add(&c.stats.ctrl_bytes_recv, k.bytes);
        ConnStats::add(&c.stats.ctrl_packets_sent, k.answered);
        ConnStats::add(&c.stats.ctrl_bytes_sent, k.answered * ACKACK_LEN);
        if advanced {
            self.check_playout(k.last, conn, k.ack_seq);
        }
        // Judged at the ACK's own arrival: the packet's ring time is when the relay read it,
        // after the kernel had sent it, so this errs late.
        self.on_ack_gap(k.last, conn, k.ack_seq);
        self.arm_recheck(conn);
    }

    /// Where the packet viewer `id` newly acknowledged (up to `ack`, exclusive, at `at`)
    /// fell against its play-out, read as libsrt reads it: kept as the viewer's play-out
    /// lead, and warned about (at most every 10 s) when far off. A viewer whose time base
    /// disagrees with its timestamps acknowledges everything and plays nothing, and says
    /// nothing about it; this is where it shows.
    fn check_playout(&mut self, at: Instant, id: u32, ack: Seq) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Role::Viewer(v) = &conn.role else {
            return;
        };
        let s = &self.streams[conn.stream];
        let Unmapped::Publisher(p) = v.unmap(s.epoch, ack.sub(1)) else {
            return;
        };
        let Some((_, pkt)) = s.ring.as_ref().and_then(|r| r.get(p)) else {
            return;
        };
        let ts = v.ts(pkt.ts).wrapping_add(pkt.delay);
        let rtt = conn.stats.rtt_us.load(Relaxed);
        let lead = playout::lead_us(conn.clock64(at), ts, conn.latency, rtt);
        conn.stats.playout_lead_us.store(lead, Relaxed);
        let quiet = conn
            .playout_warned
            .is_some_and(|t| at.saturating_duration_since(t) < Duration::from_secs(10));
        if playout::far_off(lead, conn.latency, pkt.delay) && !quiet {
            conn.playout_warned = Some(at);
            warn!(
                conn = id,
                peer = %conn.peer,
                lead_ms = lead / 1000,
                latency_ms = conn.latency.as_millis() as u64,
                delay_ms = pkt.delay / 1000,
                "viewer acknowledged a packet it plays {:.3} s from now (latency {} ms): its time base and the timestamps it is sent disagree",
                lead as f64 / 1e6,
                conn.latency.as_millis()
            );
        }
    }

    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, buf: &[u8]) {
        let pkt = match Packet::parse(buf) {
            Ok(p) => p,
            Err(e) => return self.metrics.drop_packet(e.reason()),
        };
        match pkt {
            Packet::Control(c) if c.typ == ctrl::HANDSHAKE && c.dest == 0 => {
                self.on_handshake(now, from, c)
            }
            _ => {
                let id = pkt.dest();
                let Some(conn) = self.conns.get_mut(&id) else {
                    return self.metrics.drop_packet("unknown_socket");
                };
                if conn.peer != from {
                    return self.metrics.drop_packet("wrong_peer");
                }
                conn.last_recv = now;
                if conn.stats.mode() == ConnMode::Handshake {
                    // The caller took our answer: the connection counts from here on.
                    conn.stats.set_mode(match conn.role {
                        Role::Publisher(_) => ConnMode::Publish,
                        Role::Viewer(_) => {
                            self.streams[conn.stream]
                                .stats
                                .viewers
                                .fetch_add(1, Relaxed);
                            ConnMode::Request
                        }
                    });
                }
                match pkt {
                    Packet::Data(d) => self.on_data(now, id, d),
                    Packet::Control(c) => self.on_control(now, id, c, buf.len()),
                }
            }
        }
    }

    fn on_handshake(&mut self, now: Instant, from: SocketAddr, c: ControlPacket) {
        let existing = |peer_id| self.by_peer.get(&(from, peer_id)).copied();
        let outcome = handshake::process(&self.cookies, now, from, c.body, existing);
        let (req, result) = match outcome {
            HandshakeOutcome::Reply(bytes) => return self.out.push_bytes(from, &bytes),
            HandshakeOutcome::Repeat(id) => {
                if !self.answer_again(now, id, HEADER_LEN + c.body.len()) {
                    self.metrics.drop_packet("short_handshake");
                }
                return;
            }
            HandshakeOutcome::Ignore(reason) => return self.metrics.drop_packet(reason),
            HandshakeOutcome::Reject(req, rej) => (req, Err(rej)),
            HandshakeOutcome::Conclusion(hs) => (hs.hs.clone(), Ok(hs)),
        };
        // Both are conclusions with a valid cookie: the address is the caller's own, so its
        // per-address budget applies before any further work.
        let result = if self.addresses.handshake(from.ip(), now) {
            result.and_then(|hs| self.admit(now, from, &hs))
        } else {
            Err(handshake::Rejection::Backlog)
        };
        if let Err(rej) = result {
            self.metrics.reject(rej.code());
            if self.addresses.should_log(from.ip(), now) {
                info!(peer = %from, code = rej.code(), reason = %rej, "reject code={} (this address's next rejections for 10 s at debug)", rej.code());
            } else {
                debug!(peer = %from, code = rej.code(), reason = %rej, "reject code={}", rej.code());
            }
            self.out
                .push_bytes(from, &handshake::rejection(&req, rej.code()));
        }
    }

    /// Sends connection `id`'s conclusion answer again for a repeated conclusion of `len`
    /// bytes; never more bytes than asked with (libsrt's conclusion, with its HSREQ and
    /// stream ID, is longer than our answer), so it cannot be used to amplify.
    fn answer_again(&mut self, now: Instant, id: u32, len: usize) -> bool {
        match self.conns.get(&id) {
            Some(conn) if conn.response.len() > len => false,
            Some(_) => {
                self.send_answer(now, id);
                self.replay_unconfirmed(now, id);
                true
            }
            None => true,
        }
    }

    /// A viewer that repeats its conclusion did not get our answer, so it dropped whatever
    /// data came before it (libsrt re-requests on the first one: "PACKET NOT HANDSHAKE"),
    /// and would ask for it only after its first loss report round, too late at 120 ms
    /// (captured). Everything it was sent so far follows the answer, within its budget.
    /// Only until the viewer is heard from: then it reports its own losses.
    fn replay_unconfirmed(&mut self, now: Instant, id: u32) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.stats.mode() != ConnMode::Handshake {
            return;
        }
        let Role::Viewer(v) = &mut conn.role else {
            return;
        };
        if v.mapping().is_none() || !v.last_ack.lt(v.next_vseq()) {
            return;
        }
        let (first, last) = (v.last_ack, v.next_vseq().sub(1));
        v.loss.insert(first, last, now);
        self.retransmit(now, id, &[]);
    }

    /// Sends connection `id` its conclusion answer, stamped with its clock now: the caller
    /// takes its time base from the answer it gets, whichever one that is.
    fn send_answer(&mut self, now: Instant, id: u32) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let ts = conn.clock(now);
        handshake::stamp(&mut conn.response, ts);
        self.out.push_bytes(conn.peer, &conn.response);
    }

    /// Checks a proven conclusion against the resource, limits and session key, then opens
    /// the connection and answers.
    fn admit(
        &mut self,
        now: Instant,
        from: SocketAddr,
        hs: &Conclusion,
    ) -> Result<(), handshake::Rejection> {
        use handshake::Rejection as R;
        let sid = &hs.stream_id;
        let &stream = self.by_resource.get(&sid.resource).ok_or(R::NotFound)?;
        // Publishers have a budget of their own (one per stream; a takeover closes the old
        // one), so viewers filling the relay never keep a stream's publisher out.
        if sid.mode == Mode::Request
            && (self.viewer_count >= self.cfg.max_connections
                || self.streams[stream].viewers.len() >= self.cfg.max_viewers_per_stream)
        {
            return Err(R::Overload);
        }
        if !self.addresses.may_connect(from.ip()) {
            return Err(R::AddressOverload);
        }
        self.sessions
            .redeem(&sid.resource, &sid.session, now)
            .map_err(|d| match d {
                Denied::Unknown => R::Unauthorized,
                Denied::Used => R::Forbidden,
                Denied::Expired => R::Expired,
            })?;

        let id = self.new_socket_id();
        let (rcv_latency, snd_latency) = hs.latencies(self.cfg.latency);
        let response = handshake::accept(&hs.hs, id, from, rcv_latency, snd_latency);
        let stats = self.metrics.open_connection(id, ConnMode::Handshake);
        let role = match sid.mode {
            Mode::Publish => Role::Publisher(Box::new(Receiver::new(
                hs.hs.isn,
                Duration::from_millis(rcv_latency.into()),
                self.cfg.buffer_packets,
                now,
            ))),
            Mode::Request => Role::Viewer(ViewerSend::new(
                hs.hs.isn,
                rexmit_burst(REXMIT_FLOOR_BPS),
                now,
            )),
        };
        info!(
            conn = id,
            peer = %from,
            resource = %sid.resource,
            mode = sid.mode.as_str(),
            latency_ms = rcv_latency.max(snd_latency),
            "connection accepted"
        );
        let conn = Conn {
            peer: from,
            peer_id: hs.hs.socket_id,
            stream,
            start: now.checked_sub(CLOCK_HEADROOM).unwrap_or(now),
            latency: Duration::from_millis(rcv_latency.max(snd_latency).into()),
            playout_warned: None,
            last_recv: now,
            last_sent: now,
            response,
            role,
            kernel_epoch: None,
            stats,
        };
        let start = conn.start;
        self.conns.insert(id, conn);
        self.send_answer(now, id);
        self.by_peer.insert((from, hs.hs.socket_id), id);
        self.addresses.opened(from.ip());
        let s = &mut self.streams[stream];
        match sid.mode {
            Mode::Publish => {
                let old = s.publisher.replace(id);
                s.epoch += 1;
                s.ingest = Some(IngestLatency::new(now));
                match &mut s.ring {
                    Some(r) => r.clear(),
                    None => s.ring = Some(Ring::new(self.cfg.buffer_packets)),
                }
                s.stats.publisher.store(true, Relaxed);
                self.events.push(RouteEvent::PublisherChanged {
                    resource: s.resource.clone(),
                    publisher: Some((from, id)),
                    epoch: s.epoch,
                });
                if let Some(old) = old {
                    info!(conn = old, "publisher taken over by conn {id}");
                    self.close(now, old, true);
                }
            }
            Mode::Request => {
                s.viewers.push(id);
                self.viewer_count += 1;
                self.events.push(RouteEvent::ViewerAdded {
                    conn: id,
                    resource: s.resource.clone(),
                    peer: from,
                    peer_id: hs.hs.socket_id,
                    start,
                });
            }
        }
        Ok(())
    }

    fn new_socket_id(&mut self) -> u32 {
        loop {
            // splitmix64: well spread, and unpredictable enough with a random seed.
            self.id_state = self.id_state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.id_state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            let id = ((z ^ (z >> 31)) as u32) & 0x3FFF_FFFF;
            if id != 0 && !self.conns.contains_key(&id) {
                return id;
            }
        }
    }

    fn on_data(&mut self, now: Instant, id: u32, d: DataPacket) {
        let conn = self.conns.get_mut(&id).expect("caller checked");
        ConnStats::add(&conn.stats.data_packets_recv, 1);
        ConnStats::add(
            &conn.stats.data_bytes_recv,
            (HEADER_LEN + d.payload.len()) as u64,
        );
        // The publisher's clock started `CLOCK_HEADROOM` before its handshake.
        let publisher_young = conn.clock64(now) < 2 * CLOCK_HEADROOM.as_micros() as u64;
        let Role::Publisher(rx) = &mut conn.role else {
            return self.metrics.drop_packet("data_from_viewer");
        };
        let mut fb = std::mem::take(&mut self.feedback);
        let arrival = rx.on_data(now, d.seq, d.payload.len(), &mut fb);
        ConnStats::add(
            &conn.stats.data_packets_lost,
            rx.stats.lost - conn.stats.data_packets_lost.load(Relaxed),
        );
        conn.stats.data_bytes_lost.store(
            conn.stats.data_packets_lost.load(Relaxed) * MAX_PAYLOAD as u64,
            Relaxed,
        );
        let stream = conn.stream;
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
        let arrival_us = now.saturating_duration_since(conn.start).as_micros() as u64;
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
        self.fan_out(now, stream, d, start);
    }

    /// Stores a publisher packet and sends it to every viewer the kernel does not serve;
    /// a viewer not mapped yet starts at `start`, if any (see `on_data`).
    fn fan_out(&mut self, now: Instant, stream: usize, d: DataPacket, start: Option<Seq>) {
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
            let Some((vseq, vts)) = v.map_new(epoch, d.seq, d.ts, clock as u32, start) else {
                continue;
            };
            if let Some(m) = v.mapping().filter(|m| Some(*m) != before) {
                self.events.push(RouteEvent::ViewerMapped {
                    conn: vid,
                    epoch,
                    seq_off: m.seq_off,
                    ts_off: m.ts_off,
                });
            }
            if conn.kernel_epoch == Some(epoch) {
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
            self.out.push_data(
                conn.peer,
                vseq,
                msg,
                vts,
                conn.peer_id,
                Payload::Ring {
                    stream: stream as u32,
                    slot: slot as u32,
                },
            );
            conn.last_sent = now;
            ConnStats::add(&conn.stats.data_packets_sent, 1);
            ConnStats::add(
                &conn.stats.data_bytes_sent,
                (HEADER_LEN + d.payload.len()) as u64,
            );
        }
    }

    fn send_feedback(&mut self, now: Instant, id: u32, fb: &mut Vec<Feedback>) {
        for f in fb.drain(..) {
            match f {
                Feedback::Ack { number, ack } => {
                    let (w, n) = ack.words();
                    self.send_control(now, id, ctrl::ACK, number, &w[..n]);
                }
                Feedback::Nak(words) => self.send_control(now, id, ctrl::NAK, 0, &words),
            }
        }
    }

    fn send_control(&mut self, now: Instant, id: u32, typ: u16, info: u32, body: &[u32]) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let len = self
            .out
            .push_control(conn.peer, typ, info, conn.clock(now), conn.peer_id, body);
        conn.last_sent = now;
        ConnStats::add(&conn.stats.ctrl_packets_sent, 1);
        ConnStats::add(&conn.stats.ctrl_bytes_sent, len as u64);
    }

    fn on_control(&mut self, now: Instant, id: u32, c: ControlPacket, len: usize) {
        let conn = self.conns.get_mut(&id).expect("caller checked");
        ConnStats::add(&conn.stats.ctrl_packets_recv, 1);
        ConnStats::add(&conn.stats.ctrl_bytes_recv, len as u64);
        match (c.typ, &mut conn.role) {
            (ctrl::KEEPALIVE, _) => {}
            (ctrl::SHUTDOWN, _) => {
                info!(conn = id, "peer sent SHUTDOWN");
                self.close(now, id, false);
            }
            (ctrl::ACKACK, Role::Publisher(rx)) => {
                rx.on_ackack(now, c.info);
                conn.stats.rtt_us.store(rx.rtt.rtt_us.into(), Relaxed);
                conn.stats.rtt_var_us.store(rx.rtt.var_us.into(), Relaxed);
            }
            (ctrl::DROPREQ, Role::Publisher(rx)) => match (be32(c.body, 0), be32(c.body, 4)) {
                (Ok(a), Ok(b)) => rx.on_dropreq(Seq::new(a), Seq::new(b)),
                _ => self.metrics.drop_packet("malformed"),
            },
            (ctrl::ACK, Role::Viewer(v)) => match Ack::parse(c.body) {
                Ok(ack) => {
                    let advanced = v.on_ack(ack.ack_seq, now);
                    if let Some(f) = ack.full {
                        conn.stats.rtt_us.store(f.rtt_us.into(), Relaxed);
                        conn.stats.rtt_var_us.store(f.rtt_var_us.into(), Relaxed);
                        self.send_control(now, id, ctrl::ACKACK, c.info, &[0]);
                    }
                    if advanced {
                        self.check_playout(now, id, ack.ack_seq);
                    }
                    self.on_ack_gap(now, id, ack.ack_seq);
                    self.arm_recheck(id);
                }
                Err(e) => self.metrics.drop_packet(e.reason()),
            },
            (ctrl::NAK, Role::Viewer(_)) => self.on_viewer_nak(now, id, c.body),
            (ctrl::HANDSHAKE, _) => {
                // A conclusion repeated to our socket ID: the answer was lost.
                if !self.answer_again(now, id, len) {
                    self.metrics.drop_packet("short_handshake");
                }
            }
            (ctrl::CONGESTION_WARNING | ctrl::PEERERROR | ctrl::USER_DEFINED, _) => {
                debug!(conn = id, typ = c.typ, "ignored control packet");
            }
            _ => self.metrics.drop_packet("unexpected_control"),
        }
    }

    /// Takes a viewer's loss report into its retransmission list, then resends what the
    /// budget allows. A report that breaks the protocol ends the connection, as in libsrt.
    fn on_viewer_nak(&mut self, now: Instant, id: u32, body: &[u8]) {
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
                Err(e) => return self.metrics.drop_packet(e.reason()),
            };
            if let Err(e) = v.check_nak(first, last) {
                return self.end_for_nak(now, id, e.reason(), &e.to_string());
            }
            reported.insert(first, last, now);
        }
        let s = &self.streams[conn.stream];
        let oldest = v.oldest_held(s.epoch, self.cfg.buffer_packets);
        let mut gone = Vec::new();
        let mut overflow = false;
        for r in reported.ranges() {
            let lost = u64::from(v.note_nak(r.first, r.last));
            ConnStats::add(&conn.stats.data_packets_lost, lost);
            ConnStats::add(&conn.stats.data_bytes_lost, lost * MAX_PAYLOAD as u64);
            let q = v.queue_nak(r.first, r.last, oldest, now);
            gone.extend(q.gone);
            overflow |= q.overflow;
        }
        if overflow {
            self.metrics.drop_packet("loss_list_full");
        }
        self.retransmit(now, id, &gone);
    }

    /// A viewer's loss report broke the protocol: counted, logged once (the connection
    /// ends with it), SHUTDOWN.
    fn end_for_nak(&mut self, now: Instant, id: u32, reason: &str, why: &str) {
        self.metrics.drop_packet(reason);
        info!(conn = id, "closing viewer: {why}");
        self.close(now, id, true);
    }

    /// Resends to viewer `id` what it awaits (and DROPREQs `gone` first), as far as its
    /// budget allows: the stream's own byte rate (at least `REXMIT_FLOOR_BPS`), bursts of
    /// `REXMIT_BURST` of it. What does not fit waits in its list for the budget to refill.
    fn retransmit(&mut self, now: Instant, id: u32, gone: &[(Seq, Seq)]) {
        let Some(mut conn) = self.conns.remove(&id) else {
            return;
        };
        let s = &self.streams[conn.stream];
        let publisher_rx = s.publisher.and_then(|p| match &self.conns.get(&p)?.role {
            Role::Publisher(rx) => Some(rx.as_ref()),
            _ => None,
        });
        let rate = rexmit_rate(publisher_rx);
        let burst = rexmit_burst(rate);
        let clock = conn.clock64(now);
        let ts = clock as u32;
        let stream = conn.stream as u32;
        let rto = recheck_after(&conn.stats, conn.kernel_epoch == Some(s.epoch));
        let Role::Viewer(v) = &mut conn.role else {
            self.conns.insert(id, conn);
            return;
        };
        v.budget.refill(now, rate, burst);
        let again = &mut self.recheck_scratch;
        again.clear();
        v.due_rechecks(now, rto, again);
        // Sent from the back: the oldest first.
        again.reverse();
        let mut drop_run: Option<(Seq, Seq)> = None;
        let dropreq = |out: &mut Outbox, v: &mut ViewerSend, run: (Seq, Seq)| {
            let len = out.push_control(
                conn.peer,
                ctrl::DROPREQ,
                0,
                ts,
                conn.peer_id,
                &[run.0.get(), run.1.get()],
            );
            v.budget.spend(len as u64);
            ConnStats::add(&conn.stats.ctrl_packets_sent, 1);
            ConnStats::add(&conn.stats.ctrl_bytes_sent, len as u64);
        };
        for &run in gone {
            if !v.budget.available() {
                break; // the viewer asks again
            }
            dropreq(&mut self.out, v, run);
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
                    Some((slot, pkt)) => Some(Some((slot, pkt))),
                    // Still expected from the publisher: forwarded when it comes.
                    None if publisher_rx.is_some_and(|rx| rx.is_missing(p)) => Some(None),
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
                            dropreq(&mut self.out, v, run);
                            Some((vseq, vseq))
                        }
                        None => Some((vseq, vseq)),
                    };
                }
                continue;
            };
            self.out.push_data(
                conn.peer,
                vseq,
                pkt.msg | MSG_REXMIT_FLAG,
                v.ts(pkt.ts).wrapping_add(pkt.delay),
                conn.peer_id,
                Payload::Ring {
                    stream,
                    slot: slot as u32,
                },
            );
            let len = (HEADER_LEN + pkt.payload.len()) as u64;
            v.budget.spend(len);
            ConnStats::add(&conn.stats.data_packets_sent, 1);
            ConnStats::add(&conn.stats.data_packets_retrans, 1);
            ConnStats::add(&conn.stats.data_bytes_sent, len);
            conn.last_sent = now;
            v.resent(vseq, sends + 1, now);
        }
        // Due rechecks the budget did not allow: the viewer asks again, or the next check.
        for &(vseq, sends) in again.iter().rev() {
            v.resent(vseq, sends, now);
        }
        if let Some(run) = drop_run {
            dropreq(&mut self.out, v, run);
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
    fn on_ack_gap(&mut self, now: Instant, id: u32, ack: Seq) {
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
    fn arm_recheck(&mut self, id: u32) {
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

    /// Closes a connection; `notify` sends the peer a SHUTDOWN first.
    fn close(&mut self, now: Instant, id: u32, notify: bool) {
        if notify {
            self.send_control(now, id, ctrl::SHUTDOWN, 0, &[0]);
        }
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        self.by_peer.remove(&(conn.peer, conn.peer_id));
        self.addresses.closed(conn.peer.ip());
        self.rexmit_pending.remove(&id);
        let completed = conn.stats.mode() != ConnMode::Handshake;
        self.metrics.close_connection(id);
        let s = &mut self.streams[conn.stream];
        match conn.role {
            Role::Publisher(_) => {
                if s.publisher == Some(id) {
                    s.publisher = None;
                    s.stats.publisher.store(false, Relaxed);
                    s.stats.bitrate_bps.store(0, Relaxed);
                    self.events.push(RouteEvent::PublisherChanged {
                        resource: s.resource.clone(),
                        publisher: None,
                        epoch: s.epoch,
                    });
                }
            }
            Role::Viewer(_) => {
                s.viewers.retain(|&v| v != id);
                self.viewer_count -= 1;
                if completed {
                    s.stats.viewers.fetch_sub(1, Relaxed);
                }
                self.events.push(RouteEvent::ViewerRemoved { conn: id });
            }
        }
        info!(conn = id, peer = %conn.peer, "connection closed");
    }

    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.next_sweep;
        if let Some(w) = self.rexmit_wake {
            t = t.min(w);
        }
        for s in &self.streams {
            if let Some(Role::Publisher(rx)) = s
                .publisher
                .and_then(|p| self.conns.get(&p))
                .map(|c| &c.role)
            {
                t = t.min(rx.poll_timeout());
            }
        }
        t
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let mut fb = std::mem::take(&mut self.feedback);
        for i in 0..self.streams.len() {
            let Some(pid) = self.streams[i].publisher else {
                continue;
            };
            let Some(conn) = self.conns.get_mut(&pid) else {
                continue;
            };
            let Role::Publisher(rx) = &mut conn.role else {
                continue;
            };
            if now >= rx.poll_timeout() {
                rx.handle_timeout(now, &mut fb);
                conn.stats
                    .ctrl_packets_lost
                    .store(rx.stats.acks_unanswered, Relaxed);
                conn.stats
                    .ctrl_bytes_lost
                    .store(rx.stats.acks_unanswered * 44, Relaxed);
                self.send_feedback(now, pid, &mut fb);
            }
        }
        self.feedback = fb;
        if self.rexmit_wake.is_some_and(|w| now >= w) {
            self.rexmit_wake = None;
            let pending: Vec<u32> = self.rexmit_pending.drain().collect();
            for id in pending {
                self.retransmit(now, id, &[]);
            }
        }
        if now >= self.next_sweep {
            self.next_sweep = now + SWEEP;
            self.sweep(now);
        }
    }

    /// Keepalives, idle timeouts, stream bitrates and expired session keys.
    fn sweep(&mut self, now: Instant) {
        let mut idle = Vec::new();
        let mut stuck = Vec::new();
        let mut quiet = Vec::new();
        for (&id, c) in &mut self.conns {
            let stalled = match &mut c.role {
                Role::Viewer(v) => v.stalled_for(now),
                Role::Publisher(_) => Duration::ZERO,
            };
            if now.saturating_duration_since(c.last_recv) >= self.cfg.idle_timeout {
                idle.push(id);
            } else if stalled >= self.cfg.idle_timeout {
                stuck.push(id);
            } else if now.saturating_duration_since(c.last_sent) >= KEEPALIVE {
                quiet.push(id);
            }
        }
        for id in idle {
            info!(
                conn = id,
                "peer silent for {:?}: timed out", self.cfg.idle_timeout
            );
            self.close(now, id, true);
        }
        for id in stuck {
            info!(
                conn = id,
                "viewer acknowledged nothing new for {:?} while data waited: closed as stuck",
                self.cfg.idle_timeout
            );
            self.close(now, id, true);
        }
        for id in quiet {
            self.send_control(now, id, ctrl::KEEPALIVE, 0, &[0]);
        }
        for s in &mut self.streams {
            let rx = match s
                .publisher
                .and_then(|p| self.conns.get(&p))
                .map(|c| &c.role)
            {
                Some(Role::Publisher(rx)) => Some(rx),
                _ => None,
            };
            s.stats
                .bitrate_bps
                .store(rx.map_or(0, |rx| u64::from(rx.byte_rate()) * 8), Relaxed);
            s.stats
                .packet_rate
                .store(rx.map_or(0, |rx| rx.packet_rate().into()), Relaxed);
            let ingest = match (rx, &s.ingest) {
                (Some(rx), Some(l)) => l.estimate_us(rx.rtt.rtt_us),
                _ => 0,
            };
            s.stats.ingest_latency_us.store(ingest, Relaxed);
            // A delay accepted at a lower rate may not fit once a faster publisher arrives:
            // say so (viewers' buffers overflow and libsrt drops), once per episode.
            let rate = s.stats.packet_rate.load(Relaxed);
            let latency_ms = self.cfg.latency.as_millis() as u64;
            let fits = crate::delay::check(s.stats.delay_target_ms.load(Relaxed), rate, latency_ms);
            match fits {
                Err(why) if !s.delay_too_big => {
                    warn!(resource = %s.resource, "stream delay too large for its rate: {why}");
                    s.delay_too_big = true;
                }
                Ok(()) => s.delay_too_big = false,
                Err(_) => {}
            }
            let target = delay_target_us(&s.stats);
            if s.delay_us != target {
                s.delay_us = if s.viewers.is_empty() {
                    target
                } else if target > s.delay_us {
                    target.min(s.delay_us + DELAY_STEP_US)
                } else {
                    target.max(s.delay_us.saturating_sub(DELAY_STEP_US))
                };
                s.stats.delay_applied_us.store(s.delay_us.into(), Relaxed);
                self.events.push(RouteEvent::StreamDelay {
                    resource: s.resource.clone(),
                    delay_us: s.delay_us,
                });
            }
        }
        self.sessions.purge(now);
        self.addresses.sweep(now);
    }

    /// Graceful stop: every peer gets SHUTDOWN.
    pub fn shutdown(&mut self, now: Instant) {
        let ids: Vec<u32> = self.conns.keys().copied().collect();
        for id in ids {
            self.close(now, id, true);
        }
    }
}

#[cfg(test)]
mod tests;
