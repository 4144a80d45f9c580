//! The relay: every connection, every stream, the handshake listener and the fan-out. It is
//! sans-IO like the protocol core under it, and data flows one way through it:
//!
//! - in: [`Relay::handle_datagram`], [`Relay::handle_timeout`], [`Relay::handle_kernel`]
//!   (what the kernel fast path did) and [`Relay::handle_command`] (what the HTTP API asks);
//! - out: [`Relay::poll_transmit`] (datagrams to send, lent, not copied),
//!   [`Relay::poll_event`] (route changes for the datapath), [`Relay::poll_timeout`] (when
//!   to call again) and [`Relay::stats`] (a snapshot of its counters).
//!
//! The modules follow a packet: `admit` (handshakes), `stream` (a publisher's data and its
//! fan-out), `acks` (viewers' ACKs, whoever answered them), `retransmit` (viewers' losses).
//!
//! With several workers there is one `Relay` per worker thread ([`Relay::workers`]): each
//! owns the connections whose socket IDs name it, shares the handshake path's state
//! (`shared`), and writes its publishers' packets to its `feed` for the others' viewers
//! (in: [`Relay::handle_feed`]; [`Relay::take_fed`] says when to wake them).

mod acks;
mod admit;
mod budget;
mod encryption;
pub mod feed;
mod ingest;
mod io;
mod keys;
mod outbox;
mod per_address;
mod playout;
mod pull;
mod rates;
mod reconfig;
mod retransmit;
pub mod ring;
mod shared;
mod signed_keys;
mod stats;
mod stream;
mod transmits;
pub mod viewer;

pub use encryption::KeySchedule;
pub use io::{Command, CommandError, KernelAcks, KernelReport, Offsets, Reply, RouteEvent};
pub use keys::{Denied, Minted, SessionKeys, TooMany, MAX_KEYS_PER_STREAM};
pub use per_address::{AddressLimits, PerAddress};
pub use pull::{PullAnswer, PullRequest, PullSnapshot, Pulled};
pub use reconfig::RelayLimits;
pub use shared::{Shared, MAX_STREAMS};
pub use signed_keys::{KeySecret, MIN_SECRET_LEN};
pub use stats::{
    CloseReason, ConnDatapath, ConnMode, ConnSnapshot, ConnStats, Drops, Snapshot, StreamSnapshot,
};
pub use transmits::{Datagram, Transmits};

use crate::srt::cookie::CookieJar;
use crate::srt::loss::LossList;
use crate::srt::packet::{ControlPacket, Packet};
use crate::srt::receiver::{Feedback, Receiver};
use crate::srt::seq::Seq;
use encryption::Encryption;
use outbox::Outbox;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stream::Stream;
use stsync_common::srt::ctrl;
use tracing::{debug, info};
use viewer::ViewerSend;

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
    /// How long a minted session key stays valid.
    pub session_ttl: Duration,
    /// With a secret (config.json `key_secret`), minted keys are signed, and keys signed by
    /// any relay with the same secret are taken (see `signed_keys.rs`).
    pub key_secret: Option<KeySecret>,
    /// Signed keys expire at a wall-clock time, which the relay reads off this anchor.
    pub wall_clock: WallClock,
    /// When encrypted viewers' keys change.
    pub key_schedule: KeySchedule,
}

/// A configured stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    /// Normalised hex, as in stream IDs.
    pub resource: String,
    /// The delay its viewers get from the start, ms.
    pub delay_ms: u64,
    /// The publisher must encrypt with this passphrase; none: it must not encrypt.
    pub publish_passphrase: Option<String>,
    /// Viewers must encrypt with this passphrase; none: they must not.
    pub view_passphrase: Option<String>,
    /// The key length (bytes) encrypting callers must use; none: whatever they offer.
    pub pbkeylen: Option<u8>,
    /// The relays this one pulls the stream from, in order (`host:port`, for logs and
    /// metrics; the driver knows how to reach them): none, it takes a publisher.
    pub upstreams: Vec<String>,
    /// Pull even without viewers.
    pub pull_always: bool,
}

/// The wall clock for a relay that reads no clock: at `at` (on the relay's `Instant`
/// timeline) it was `unix` since the Unix epoch. The driver takes it once at start;
/// CLOCK_MONOTONIC follows NTP's slewing, not a step of the system clock after start.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    pub at: Instant,
    pub unix: Duration,
}

impl WallClock {
    /// The wall clock at `now`, as time since the Unix epoch.
    pub fn unix(&self, now: Instant) -> Duration {
        match now.checked_duration_since(self.at) {
            Some(d) => self.unix + d,
            None => self.unix.saturating_sub(self.at - now),
        }
    }
}

const KEEPALIVE: Duration = Duration::from_secs(1);
/// How often a worker that wants no wake-up per batch (see `Shared::wants_prompt_feed`)
/// takes its feeds: the kernel serves its viewers, so this only bounds how late its ring
/// is for a retransmission and how late a viewer given back to userspace gets its data.
const FEED_POLL: Duration = Duration::from_millis(10);
/// A kernel serving report is taken after this long whatever the packets fed say (see
/// `handle_kernel`).
const SERVING_SETTLE_MAX: Duration = Duration::from_millis(200);
const SWEEP: Duration = Duration::from_millis(100);
/// Every connection's clock starts this long before its handshake (the answer says so), so
/// that a packet a little older than the one that maps a viewer still has a timestamp
/// after the viewer's zero. Before it, a timestamp wraps to 2^32 − x, and libsrt holds the
/// packet (and everything behind it) for 71 minutes. It also bounds how old a packet a
/// viewer may start with: only a publisher younger than this lends its first packets.
pub const CLOCK_HEADROOM: Duration = Duration::from_secs(1);
/// SRT bytes of an ACKACK (header + one word), as the relay and the kernel send it.
pub const ACKACK_LEN: u64 = stsync_common::srt::HEADER_LEN as u64 + 4;
/// SRT bytes of a full ACK (header + 7 words): a lost one is counted at this size.
const FULL_ACK_LEN: u64 = stsync_common::srt::HEADER_LEN as u64 + 28;
/// Subtypes of the extended control message (type 0x7FFF) that carry keying material.
const SRT_CMD_KMREQ: u16 = 3;
const SRT_CMD_KMRSP: u16 = 4;
/// Key refreshes a publisher may send per second, and in a burst: libsrt sends two per
/// refresh (the next key announced, the old one retired), every 2^24 packets by default;
/// each costs the relay a 2048-round PBKDF2 (0.2 to 0.4 ms, `examples/crypto_cost.rs`).
const KEY_REFRESHES_PER_SEC: u64 = 2;
const KEY_REFRESH_BURST: u64 = 8;

enum Role {
    Publisher(Box<Receiver>),
    Viewer(ViewerSend),
}

struct Conn {
    peer: SocketAddr,
    peer_id: u32,
    stream: usize,
    mode: ConnMode,
    /// The connection's clock starts here (`CLOCK_HEADROOM` before its handshake): every
    /// timestamp we send it is µs since `start`.
    start: Instant,
    /// The latency agreed in the handshake (the viewer plays a packet this long after its
    /// timestamp).
    latency: Duration,
    /// When its handshake was accepted (or its call answered).
    since: Instant,
    rates: rates::Rates,
    /// SRT bytes the kernel path cloned to this viewer, estimated (see `handle_kernel`).
    kernel_bytes: u64,
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
    /// The kernel serves this viewer for an epoch, cloning what its publisher's worker
    /// read after then; what it read before may still come through the feed (see
    /// `handle_kernel`).
    serving_from: Option<(u64, Instant)>,
    /// An encrypting peer's keys: a publisher's data is decrypted with them, a viewer's is
    /// encrypted with them.
    encryption: Option<Box<Encryption>>,
    stats: ConnStats,
}

/// A peer's address as logs and the API show it: an IPv4 caller on a dual-stack socket
/// (`::ffff:a.b.c.d`) as the IPv4 address it is.
pub fn shown(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
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

pub struct Relay {
    cfg: RelayConfig,
    cookies: CookieJar,
    /// What all workers share (the handshake path's state).
    shared: Arc<Shared>,
    /// This relay's worker index (its socket IDs say so: `id % workers`).
    worker: u32,
    /// Its publishers' data for the other workers, and theirs for it.
    feed: Option<feed::Writer>,
    upstream: Vec<feed::Reader>,
    /// Something was written to `feed` since `take_fed`.
    fed: bool,
    drops: Drops,
    connections_total: u64,
    streams: Vec<Stream>,
    by_resource: HashMap<String, usize>,
    conns: HashMap<u32, Conn>,
    /// (peer address, peer socket ID) → our socket ID, to recognise repeated conclusions.
    by_peer: HashMap<(SocketAddr, u32), u32>,
    out: Outbox,
    events: VecDeque<RouteEvent>,
    feedback: Vec<Feedback>,
    /// The loss report being handled (kept for its allocation).
    nak_scratch: LossList,
    /// Resent packets due to be sent once more (kept for its allocation).
    recheck_scratch: Vec<(Seq, u8)>,
    /// An encrypted publisher's packet, decrypted; a feed entry's payload (kept for its
    /// allocation).
    plain: Vec<u8>,
    /// Viewers whose retransmission list waits for budget, and when the first can go on.
    rexmit_pending: HashSet<u32>,
    rexmit_wake: Option<Instant>,
    next_sweep: Instant,
    /// When the feeds are taken next if no other worker wakes this one for them.
    next_feed_poll: Instant,
    /// Source of socket IDs; the driver seeds it randomly.
    id_state: u64,
    /// Session keys wanted from upstreams, for the driver (`poll_pull`).
    pull_requests: VecDeque<PullRequest>,
}

impl Relay {
    /// A relay that is the only worker.
    pub fn new(
        cfg: RelayConfig,
        streams: Vec<StreamConfig>,
        secret: [u8; 16],
        now: Instant,
    ) -> Self {
        Relay::workers(cfg, streams, secret, now, 1)
            .pop()
            .expect("one worker")
    }

    /// `n` relays, one per worker, sharing the handshake path's state, each fed the others'
    /// publishers' data.
    pub fn workers(
        cfg: RelayConfig,
        streams: Vec<StreamConfig>,
        secret: [u8; 16],
        now: Instant,
        n: u32,
    ) -> Vec<Relay> {
        let n = n.max(1);
        let keys = SessionKeys::with_secret(cfg.session_ttl, cfg.key_secret.clone());
        let shared = Arc::new(Shared::new(n, keys, cfg.per_address, now));
        let (writers, sources): (Vec<_>, Vec<_>) = (0..n)
            .map(|_| feed::feed(if n > 1 { feed::FEED_SLOTS } else { 1 }))
            .unzip();
        writers
            .into_iter()
            .enumerate()
            .map(|(w, writer)| {
                let mut r = Relay::one(cfg.clone(), streams.clone(), secret, now, shared.clone());
                r.worker = w as u32;
                // One worker pulls each pulled stream; the others are fed.
                for (i, (s, c)) in r.streams.iter_mut().zip(&streams).enumerate() {
                    if !c.upstreams.is_empty() && i % n as usize == w {
                        s.pull = Some(pull::Pull::new(c.upstreams.clone(), c.pull_always));
                    }
                }
                if n > 1 {
                    r.feed = Some(writer);
                    r.upstream = (0..n as usize)
                        .filter(|&o| o != w)
                        .map(|o| sources[o].reader())
                        .collect();
                }
                r
            })
            .collect()
    }

    fn one(
        cfg: RelayConfig,
        streams: Vec<StreamConfig>,
        secret: [u8; 16],
        now: Instant,
        shared: Arc<Shared>,
    ) -> Self {
        let by_resource = streams
            .iter()
            .enumerate()
            .map(|(i, s)| (s.resource.clone(), i))
            .collect();
        let streams: Vec<Stream> = streams.into_iter().map(Stream::new).collect();
        // The configured delay holds from the start (no viewer to move yet).
        let events = streams
            .iter()
            .filter(|s| s.delay_us > 0)
            .map(|s| RouteEvent::StreamDelay {
                resource: s.resource.clone(),
                delay_us: s.delay_us,
            })
            .collect();
        Relay {
            cookies: CookieJar::new(secret, now),
            shared,
            worker: 0,
            feed: None,
            upstream: Vec::new(),
            fed: false,
            drops: Drops::default(),
            connections_total: 0,
            streams,
            by_resource,
            conns: HashMap::new(),
            by_peer: HashMap::new(),
            out: Outbox::default(),
            events,
            feedback: Vec::new(),
            nak_scratch: LossList::default(),
            recheck_scratch: Vec::new(),
            plain: Vec::new(),
            rexmit_pending: HashSet::new(),
            rexmit_wake: None,
            next_sweep: now + SWEEP,
            next_feed_poll: now + FEED_POLL,
            id_state: u64::from_le_bytes(secret[..8].try_into().unwrap()) | 1,
            pull_requests: VecDeque::new(),
            cfg,
        }
    }

    /// The datagrams queued since the last call, lent until the returned batch is dropped
    /// (then they are gone); `None` when there are none.
    pub fn poll_transmit(&mut self) -> Option<Transmits<'_>> {
        if self.out.is_empty() {
            return None;
        }
        Some(Transmits::new(&mut self.out, &self.streams))
    }

    /// The next route change for the datapath.
    pub fn poll_event(&mut self) -> Option<RouteEvent> {
        self.events.pop_front()
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Everything the relay counts, copied.
    pub fn stats(&self) -> Snapshot {
        let mut conns: Vec<ConnSnapshot> = self
            .conns
            .iter()
            .map(|(&id, c)| ConnSnapshot {
                id,
                mode: c.mode,
                resource: self.streams[c.stream].resource.clone(),
                peer: shown(c.peer),
                since_unix_us: self.cfg.wall_clock.unix(c.since).as_micros() as u64,
                latency_ms: c.latency.as_millis() as u64,
                datapath: self.datapath_of(c),
                stats: c.stats,
            })
            .collect();
        conns.sort_by_key(|c| c.id);
        Snapshot {
            connections_total: self.connections_total,
            conns,
            streams: self
                .streams
                .iter()
                .filter(|s| !s.retired)
                .map(|s| StreamSnapshot {
                    pull: s.pull.as_ref().map(pull::Pull::snapshot),
                    ..s.snapshot()
                })
                .collect(),
            drops: self.drops.clone(),
        }
    }

    /// Takes in what the kernel fast path did.
    ///
    /// With several workers, the publisher's worker moves a viewer onto the kernel path
    /// right after it read its socket dry (`since`): the packets it read before may still
    /// be on their way through its feed, and this relay sends them; from the first one
    /// read after `since`, the kernel serves the viewer (`fan_out`). One worker reads its
    /// socket dry before the kernel path's poll (see `driver`), so it has none of them.
    pub fn handle_kernel(&mut self, report: KernelReport) {
        match report {
            KernelReport::Serving { conn, epoch, since } => {
                let Some(c) = self.conns.get_mut(&conn) else {
                    return;
                };
                match (epoch, since) {
                    (Some(e), Some(t)) => c.serving_from = Some((e, t)),
                    _ => {
                        c.serving_from = None;
                        c.kernel_epoch = epoch;
                    }
                }
                if epoch.is_none() {
                    // Served from userspace again: each packet as soon as it is fed.
                    self.shared.set_prompt_feed(self.worker, true);
                }
            }
            KernelReport::Acks { conn, acks } => self.on_kernel_acks(conn, &acks),
            KernelReport::Clones { conn, total } => {
                // The kernel counts packets, not bytes: its clones count at the stream's
                // mean packet size, for the viewer's send rate.
                let Some(stream) = self.conns.get(&conn).map(|c| c.stream) else {
                    return;
                };
                let len = self.mean_packet_len(stream);
                if let Some(c) = self.conns.get_mut(&conn) {
                    let new = total.saturating_sub(c.stats.data_packets_sent_kernel);
                    c.kernel_bytes += new * len;
                    c.stats.data_packets_sent_kernel = total;
                }
            }
        }
    }

    /// Does what the HTTP API asks.
    pub fn handle_command(&mut self, now: Instant, cmd: Command) -> Result<Reply, CommandError> {
        let stream = |r: &str| self.by_resource.get(r).copied();
        match cmd {
            Command::MintSession {
                resource,
                key,
                passphrase,
                mode,
            } => {
                stream(&resource).ok_or(CommandError::UnknownStream)?;
                if passphrase
                    .as_ref()
                    .is_some_and(|p| !crate::srt::crypto::PASSPHRASE_LEN.contains(&p.len()))
                {
                    return Err(CommandError::Passphrase);
                }
                let unix = self.cfg.wall_clock.unix(now);
                let minted = self.shared.keys().mint(
                    &resource,
                    key,
                    passphrase,
                    mode,
                    now,
                    unix,
                    MAX_KEYS_PER_STREAM,
                )?;
                // Per request, so not at info: a client could flood the log.
                debug!(resource = %resource, "session key issued");
                Ok(Reply::Session(minted))
            }
            Command::AddStream(cfg) => self.add_stream(cfg),
            Command::RemoveStream { resource } => self.remove_stream(now, &resource),
            Command::UpdateStream(cfg) => self.update_stream(cfg),
            Command::SetLimits(limits) => {
                self.set_limits(limits);
                Ok(Reply::Done)
            }
            Command::SetDelay { resource, delay_ms } => {
                let i = stream(&resource).ok_or(CommandError::UnknownStream)?;
                let s = &mut self.streams[i];
                // The publisher's rate wherever it is: every worker decides alike.
                let rate = self.shared.packet_rate(i);
                crate::delay::check(delay_ms, rate, self.cfg.latency.as_millis() as u64)
                    .map_err(CommandError::Delay)?;
                s.delay_target_ms = delay_ms;
                debug!(resource = %resource, delay_ms, "stream delay set");
                Ok(Reply::Stream(s.snapshot()))
            }
            Command::Close { conn } => {
                if !self.conns.contains_key(&conn) {
                    return Err(CommandError::UnknownConnection);
                }
                info!(conn, "closing the connection as the HTTP API asked");
                self.close(now, conn, CloseReason::Kicked);
                Ok(Reply::Closed)
            }
        }
    }

    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, buf: &[u8]) {
        let pkt = match Packet::parse(buf) {
            Ok(p) => p,
            Err(e) => return self.drops.drop_packet(e.reason()),
        };
        match pkt {
            Packet::Control(c) if c.typ == ctrl::HANDSHAKE && c.dest == 0 => {
                self.on_handshake(now, from, c)
            }
            _ => {
                let id = pkt.dest();
                let Some(conn) = self.conns.get_mut(&id) else {
                    if let Packet::Control(c) = &pkt {
                        if c.typ == ctrl::HANDSHAKE && self.on_pull_answer(now, from, id, c) {
                            return;
                        }
                    }
                    return self.drops.drop_packet("unknown_socket");
                };
                if conn.peer != from {
                    return self.drops.drop_packet("wrong_peer");
                }
                conn.last_recv = now;
                if conn.mode == ConnMode::Handshake {
                    // The caller took our answer: the connection counts from here on.
                    conn.mode = match conn.role {
                        Role::Publisher(_) => ConnMode::Publish,
                        Role::Viewer(_) => {
                            self.streams[conn.stream].viewers_connected += 1;
                            ConnMode::Request
                        }
                    };
                }
                match pkt {
                    Packet::Data(d) => self.on_data(now, id, d),
                    Packet::Control(c) => self.on_control(now, id, c, buf.len()),
                }
            }
        }
    }

    fn on_control(&mut self, now: Instant, id: u32, c: ControlPacket, len: usize) {
        let conn = self.conns.get_mut(&id).expect("caller checked");
        conn.stats.received_control(len);
        match (c.typ, &mut conn.role) {
            (ctrl::KEEPALIVE, _) => {}
            (ctrl::SHUTDOWN, _) => {
                info!(conn = id, "peer sent SHUTDOWN");
                self.close(now, id, CloseReason::PeerShutdown);
            }
            (ctrl::ACKACK | ctrl::DROPREQ, Role::Publisher(_)) => {
                self.on_publisher_control(now, id, c)
            }
            (ctrl::USER_DEFINED, Role::Publisher(_)) if c.subtype == SRT_CMD_KMREQ => {
                self.on_key_refresh(now, id, c.body)
            }
            (ctrl::USER_DEFINED, Role::Viewer(_)) if c.subtype == SRT_CMD_KMRSP => {
                self.on_key_answer(now, id, c.body)
            }
            (ctrl::ACK, Role::Viewer(_)) => self.on_viewer_ack(now, id, c),
            (ctrl::NAK, Role::Viewer(_)) => {
                conn.stats.naks_recv += 1;
                self.on_viewer_nak(now, id, c.body)
            }
            (ctrl::HANDSHAKE, _) => {
                // A conclusion repeated to our socket ID: the answer was lost.
                if !self.answer_again(now, id, len) {
                    self.drops.drop_packet("short_handshake");
                }
            }
            (ctrl::CONGESTION_WARNING | ctrl::PEERERROR | ctrl::USER_DEFINED, _) => {
                debug!(conn = id, typ = c.typ, "ignored control packet");
            }
            _ => self.drops.drop_packet("unexpected_control"),
        }
    }

    fn send_feedback(&mut self, now: Instant, id: u32, fb: &mut Vec<Feedback>) {
        for f in fb.drain(..) {
            match f {
                Feedback::Ack { number, ack } => {
                    let (w, n) = ack.words();
                    self.send_control(now, id, ctrl::ACK, number, &w[..n]);
                }
                Feedback::Nak(words) => {
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.stats.naks_sent += 1;
                    }
                    self.send_control(now, id, ctrl::NAK, 0, &words)
                }
            }
        }
    }

    /// Sends an extended control message (type 0x7FFF) of `subtype`.
    fn send_ext(&mut self, now: Instant, id: u32, subtype: u16, body: &[u32]) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let (peer, ts, dest) = (conn.peer, conn.clock(now), conn.peer_id);
        let len = self.out.push_control_ext(peer, subtype, ts, dest, body);
        conn.last_sent = now;
        conn.stats.sent_control(len);
    }

    fn send_control(&mut self, now: Instant, id: u32, typ: u16, info: u32, body: &[u32]) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let len = self
            .out
            .push_control(conn.peer, typ, info, conn.clock(now), conn.peer_id, body);
        conn.last_sent = now;
        conn.stats.sent_control(len);
    }

    /// Closes a connection, counted by `reason`; the peer gets a SHUTDOWN unless it sent
    /// one.
    fn close(&mut self, now: Instant, id: u32, reason: CloseReason) {
        if reason != CloseReason::PeerShutdown {
            self.send_control(now, id, ctrl::SHUTDOWN, 0, &[0]);
        }
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        self.drops.close(reason);
        self.by_peer.remove(&(conn.peer, conn.peer_id));
        self.shared.addresses().closed(conn.peer.ip());
        self.rexmit_pending.remove(&id);
        let s = &mut self.streams[conn.stream];
        match conn.role {
            Role::Publisher(_) => {
                if s.publisher == Some(id) {
                    s.publisher = None;
                    s.bitrate_bps = 0;
                    if self.shared.epoch(conn.stream) == s.epoch {
                        self.shared.set_packet_rate(conn.stream, 0);
                    }
                    self.events.push_back(RouteEvent::PublisherChanged {
                        resource: s.resource.clone(),
                        publisher: None,
                        epoch: s.epoch,
                        encrypted: false,
                    });
                    if let Some(f) = &mut self.feed {
                        f.push(&feed::Header::gone(conn.stream as u32, s.epoch), &[]);
                        self.fed = true;
                    }
                }
                self.pull_closed(now, conn.stream, id);
            }
            Role::Viewer(_) => {
                s.viewers.retain(|&v| v != id);
                self.shared.remove_viewer(conn.stream);
                if conn.mode != ConnMode::Handshake {
                    s.viewers_connected -= 1;
                }
                self.events
                    .push_back(RouteEvent::ViewerRemoved { conn: id });
            }
        }
        info!(conn = id, peer = %shown(conn.peer), reason = reason.as_str(), "connection closed");
    }

    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.next_sweep;
        // Fed by another worker without being woken: polled.
        let fed_lazily = !self.shared.wants_prompt_feed(self.worker)
            && self
                .streams
                .iter()
                .any(|s| s.remote.is_some() && !s.viewers.is_empty());
        if fed_lazily {
            t = t.min(self.next_feed_poll);
        }
        if let Some(w) = self.rexmit_wake {
            t = t.min(w);
        }
        if let Some(p) = self.pull_timeout() {
            t = t.min(p);
        }
        for s in &self.streams {
            if let Some(rx) = self.publisher_rx(s) {
                t = t.min(rx.poll_timeout());
            }
        }
        t
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.upstream.is_empty() && now >= self.next_feed_poll {
            self.handle_feed(now);
        }
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
                conn.stats.ctrl_packets_lost = rx.stats.acks_unanswered;
                conn.stats.ctrl_bytes_lost = rx.stats.acks_unanswered * FULL_ACK_LEN;
                conn.stats.data_packets_dropped = rx.stats.dropped;
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
        self.drive_pulls(now);
    }

    /// Keepalives, idle timeouts, streams' rates and delays, expired session keys.
    fn sweep(&mut self, now: Instant) {
        let mut idle = Vec::new();
        let mut stuck = Vec::new();
        let mut quiet = Vec::new();
        let mut announcing = Vec::new();
        for (&id, c) in &mut self.conns {
            // A publisher's worker that read nothing since has nothing more to feed.
            if let Some((e, at)) = c.serving_from {
                if now.saturating_duration_since(at) >= SERVING_SETTLE_MAX {
                    c.kernel_epoch = Some(e);
                    c.serving_from = None;
                }
            }
            let s = &c.stats;
            let sent = s.data_bytes_sent + s.ctrl_bytes_sent + c.kernel_bytes;
            let recv = s.data_bytes_recv + s.ctrl_bytes_recv;
            c.rates.update(now, sent, recv, &mut c.stats);
            // Usually none: the sweep allocates nothing in steady state.
            if c.encryption.as_deref().is_some_and(Encryption::announcing) {
                announcing.push(id);
            }
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
            self.close(now, id, CloseReason::IdleTimeout);
        }
        for id in stuck {
            info!(
                conn = id,
                "viewer acknowledged nothing new for {:?} while data waited: closed as stuck",
                self.cfg.idle_timeout
            );
            self.close(now, id, CloseReason::Stuck);
        }
        for id in quiet {
            self.send_control(now, id, ctrl::KEEPALIVE, 0, &[0]);
        }
        // Announcements not answered yet (also resent as data flows, see `fan_out`).
        for id in announcing {
            self.announce_keys(now, id);
        }
        for i in 0..self.streams.len() {
            if self.streams[i].retired {
                continue;
            }
            // A publisher taken over on another worker that has not sent since (or whose
            // successor fed nothing here): closed now.
            if let Some(old) = self.streams[i].publisher {
                if self.shared.epoch(i) != self.streams[i].epoch {
                    info!(conn = old, "publisher taken over on another worker");
                    self.close(now, old, CloseReason::TakenOver);
                }
            }
            self.sweep_stream(now, i);
        }
        // Every worker's sweep runs these; once would do, but they are cheap.
        self.shared.keys().purge(now, self.cfg.wall_clock.unix(now));
        self.shared.addresses().sweep(now);
    }

    /// The receiver of the stream's current publisher.
    fn publisher_rx(&self, s: &Stream) -> Option<&Receiver> {
        match &self.conns.get(&s.publisher?)?.role {
            Role::Publisher(rx) => Some(rx),
            Role::Viewer(_) => None,
        }
    }

    /// Which path sends connection `c` its data now.
    fn datapath_of(&self, c: &Conn) -> ConnDatapath {
        let epoch = self.streams[c.stream].epoch;
        let serving = c.serving_from.map(|(e, _)| e);
        if c.kernel_epoch == Some(epoch) || serving == Some(epoch) {
            ConnDatapath::Kernel
        } else {
            ConnDatapath::Userspace
        }
    }

    /// SRT bytes of the stream's mean data packet now (a full one while it has no rate).
    fn mean_packet_len(&self, stream: usize) -> u64 {
        let s = &self.streams[stream];
        let feeder = match self.publisher_rx(s) {
            Some(rx) => Some((rx.byte_rate(), rx.packet_rate())),
            None => s
                .remote
                .as_ref()
                .map(|r| (r.byte_rate, self.shared.packet_rate(stream) as u32)),
        };
        let payload = match feeder {
            Some((bytes, pkts)) if pkts > 0 => u64::from(bytes / pkts),
            _ => stsync_common::srt::MAX_PAYLOAD as u64,
        };
        stsync_common::srt::HEADER_LEN as u64 + payload
    }

    /// Graceful stop: every peer gets SHUTDOWN.
    pub fn shutdown(&mut self, now: Instant) {
        let ids: Vec<u32> = self.conns.keys().copied().collect();
        for id in ids {
            self.close(now, id, CloseReason::RelayShutdown);
        }
    }
}

#[cfg(test)]
mod tests;
