//! An edge's pull: a stream with upstreams (config.json `upstream`) gets its publisher by
//! calling the first upstream relay that answers, as a viewer there (`m=request`).
//!
//! Sans-IO like the rest: the relay asks for a session key (`poll_pull`); the driver mints
//! it over the upstream's API and resolves its SRT address (`handle_pull`); the relay then
//! calls it with `srt::caller`'s handshake. Once connected the connection is the stream's
//! publisher like any other, so viewers, retransmission, delay and the kernel path need
//! nothing new; when it dies the next one is a publisher takeover, and viewers keep one
//! continuous sequence and time base.
//!
//! One worker pulls each stream (its index modulo the workers): its socket ID names that
//! worker, so the upstream's packets reach it.

use super::admit::caller_encryption;
use super::encryption::Encryption;
use super::ingest::IngestLatency;
use super::ring::Ring;
use super::stats::CloseReason;
use super::{Conn, ConnMode, ConnStats, Relay, Role, RouteEvent};
use crate::srt::caller::{self, HsAnswer};
use crate::srt::packet::ControlPacket;
use crate::srt::receiver::Receiver;
use crate::srt::seq::Seq;
use crate::srt::streamid::Mode;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use stsync_common::srt::ctrl;
use tracing::{debug, info, warn};

/// How often an unanswered handshake is sent again (libsrt's caller: 250 ms).
const RESEND: Duration = Duration::from_millis(250);
/// A call that gets no answer for this long failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// A key the driver does not bring within this long failed (its HTTP call has its own,
/// shorter timeout).
const MINT_TIMEOUT: Duration = Duration::from_secs(8);
/// An upstream heard nothing from for this long is gone (it sends at least a keepalive a
/// second), well before the idle timeout, so viewers see a short hole only.
pub const SILENCE: Duration = Duration::from_millis(2500);
/// A pull on demand outlives the stream's last viewer by this much (a viewer reconnecting
/// finds it still running).
const LINGER: Duration = Duration::from_secs(5);
/// Consecutive failures after which the next upstream in the list is tried.
const STAYS_DOWN: u32 = 3;
/// Retries back off from `BACKOFF_MIN`, doubling, to `BACKOFF_MAX`.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The relay wants a session key from upstream `upstream` (its index in the stream's
/// list) of `resource`, and that upstream's SRT address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    pub resource: String,
    pub upstream: usize,
}

/// The driver's answer to a [`PullRequest`], or why there is none.
pub type PullAnswer = Result<Pulled, String>;

/// What the relay needs to call an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// Its SRT address, resolved.
    pub peer: SocketAddr,
    /// The session key it minted.
    pub key: String,
    /// When the upstream's viewers encrypt: the keying material to offer (KMREQ, sealed
    /// with a fresh random key by the driver, which has the randomness) and the
    /// passphrase it was sealed with.
    pub km: Option<(Vec<u8>, String)>,
}

/// What an edge's pull is doing, in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullSnapshot {
    /// The upstream being pulled from or tried (`host:port` as configured).
    pub upstream: String,
    pub state: &'static str,
    /// The connection to it, when connected.
    pub conn: Option<u32>,
    /// Connections to an upstream that ended and were made again.
    pub reconnects: u64,
    /// Attempts that failed (no key, no answer, refused).
    pub failures: u64,
}

pub(super) struct Pull {
    upstreams: Vec<String>,
    always: bool,
    /// The upstream tried now, and how many times in a row it failed.
    current: usize,
    failures: u32,
    failures_total: u64,
    reconnects: u64,
    was_connected: bool,
    state: State,
    /// When the stream was last found without viewers while pulling (on demand).
    unwanted_since: Option<Instant>,
}

enum State {
    Idle,
    Backoff { until: Instant },
    Minting { since: Instant },
    Calling(Call),
    Connected { conn: u32 },
}

struct Call {
    id: u32,
    peer: SocketAddr,
    sid: String,
    km: Option<(Vec<u8>, String)>,
    isn: Seq,
    /// Our clock for the handshake's timestamps.
    start: Instant,
    /// The induction's answer.
    cookie: Option<u32>,
    since: Instant,
    next_send: Instant,
}

/// A call's answer: the connection it makes.
struct Link {
    id: u32,
    peer: SocketAddr,
    peer_id: u32,
    isn: Seq,
    latency: Duration,
    /// The upstream's clock for it (its answer's timestamp).
    start: Instant,
}

impl Pull {
    pub fn new(upstreams: Vec<String>, always: bool) -> Self {
        Pull {
            upstreams,
            always,
            current: 0,
            failures: 0,
            failures_total: 0,
            reconnects: 0,
            was_connected: false,
            state: State::Idle,
            unwanted_since: None,
        }
    }

    pub fn snapshot(&self) -> PullSnapshot {
        let (state, conn) = match self.state {
            State::Idle => ("idle", None),
            State::Backoff { .. } => ("waiting", None),
            State::Minting { .. } => ("minting", None),
            State::Calling(_) => ("calling", None),
            State::Connected { conn } => ("connected", Some(conn)),
        };
        PullSnapshot {
            upstream: self.upstreams[self.current].clone(),
            state,
            conn,
            reconnects: self.reconnects,
            failures: self.failures_total,
        }
    }

    fn calling(&self, id: u32) -> bool {
        matches!(&self.state, State::Calling(c) if c.id == id)
    }

    pub fn connected(&self) -> Option<u32> {
        match self.state {
            State::Connected { conn } => Some(conn),
            _ => None,
        }
    }

    /// An attempt failed: back off, and after `STAYS_DOWN` in a row try the next upstream.
    fn fail(&mut self, now: Instant) {
        self.failures += 1;
        self.failures_total += 1;
        let wait = BACKOFF_MIN
            .saturating_mul(1 << self.failures.min(8))
            .min(BACKOFF_MAX);
        if self.failures >= STAYS_DOWN && self.upstreams.len() > 1 {
            self.current = (self.current + 1) % self.upstreams.len();
            self.failures = 0;
        }
        self.state = State::Backoff { until: now + wait };
    }

    /// When the pull next has something to do by itself.
    pub fn timeout(&self) -> Option<Instant> {
        let linger = self.unwanted_since.map(|t| t + LINGER);
        let own = match &self.state {
            State::Idle | State::Connected { .. } => None,
            State::Backoff { until } => Some(*until),
            State::Minting { since } => Some(*since + MINT_TIMEOUT),
            State::Calling(c) => Some(c.next_send.min(c.since + CALL_TIMEOUT)),
        };
        match (own, linger) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Relay {
    /// The next session key this relay needs from an upstream, for the driver to mint.
    pub fn poll_pull(&mut self) -> Option<PullRequest> {
        self.pull_requests.pop_front()
    }

    /// The driver's answer to a [`PullRequest`]: the relay calls the upstream with the key.
    pub fn handle_pull(&mut self, now: Instant, req: PullRequest, answer: PullAnswer) {
        let Some(&i) = self.by_resource.get(&req.resource) else {
            return;
        };
        let Some(p) = self.streams[i].pull.as_mut() else {
            return;
        };
        if !matches!(p.state, State::Minting { .. }) || p.current != req.upstream {
            return; // given up on meanwhile
        }
        let Pulled { peer, key, km } = match answer {
            Ok(a) => a,
            Err(why) => {
                warn!(resource = %req.resource, upstream = %p.upstreams[p.current], "pull: no session key: {why}");
                return p.fail(now);
            }
        };
        let id = self.new_socket_id();
        let isn = Seq::new((self.next_random() >> 32) as u32 & 0x7FFF_FFFF);
        let p = self.streams[i].pull.as_mut().expect("checked");
        p.state = State::Calling(Call {
            id,
            peer,
            sid: format!("#!::r={},s={key},m=request", req.resource),
            km,
            isn,
            start: now,
            cookie: None,
            since: now,
            next_send: now,
        });
        debug!(resource = %req.resource, %peer, conn = id, "pull: calling upstream");
        self.drive_pull(now, i);
    }

    /// A handshake answer to socket `id`, which is no connection: an upstream answering
    /// one of this relay's calls, if it is. Returns whether it was.
    pub(super) fn on_pull_answer(
        &mut self,
        now: Instant,
        from: SocketAddr,
        id: u32,
        c: &ControlPacket,
    ) -> bool {
        let Some(i) = self
            .streams
            .iter()
            .position(|s| s.pull.as_ref().is_some_and(|p| p.calling(id)))
        else {
            return false;
        };
        let s = &mut self.streams[i];
        let p = s.pull.as_mut().expect("found");
        let State::Calling(call) = &mut p.state else {
            unreachable!("found calling")
        };
        if call.peer != from {
            self.drops.drop_packet("wrong_peer");
            return true;
        }
        match caller::answer(c.body) {
            HsAnswer::Cookie(cookie) if call.cookie.is_none() => {
                call.cookie = Some(cookie);
                call.next_send = now;
                self.drive_pull(now, i);
            }
            HsAnswer::Accepted(_)
                if call.km.as_ref().map(|k| &k.0[..]) != caller::kmrsp(c.body) =>
            {
                // libsrt's listener answers a KMREQ it took with it as KMRSP, else refuses.
                let upstream = &p.upstreams[p.current];
                warn!(resource = %s.resource, upstream = %upstream, "pull: the upstream did not take our keys");
                p.fail(now);
            }
            HsAnswer::Accepted(peer_id) if call.cookie.is_some() => {
                let latency = caller::agreed_latency_ms(c.body)
                    .map_or(self.cfg.latency, |ms| Duration::from_millis(ms.into()))
                    .max(self.cfg.latency);
                // The upstream's clock for this connection, as its answer's timestamp says:
                // our ACKs carry it, and its packets' lead over it is its delay.
                let start = now
                    .checked_sub(Duration::from_micros(c.ts.into()))
                    .unwrap_or(now);
                let (id, isn, km) = (call.id, call.isn, call.km.take());
                let encryption = match km {
                    None => None,
                    Some((km, pass)) => {
                        match caller_encryption(Some(&pass), Some(&km), Mode::Publish, now) {
                            Ok(e) => e,
                            Err(rej) => {
                                warn!(reason = %rej, "pull: our own keying material did not open");
                                p.fail(now);
                                return true;
                            }
                        }
                    }
                };
                let link = Link {
                    id,
                    peer: from,
                    peer_id,
                    isn,
                    latency,
                    start,
                };
                self.pull_connected(now, i, link, encryption);
            }
            HsAnswer::Rejected(code) => {
                let upstream = &p.upstreams[p.current];
                warn!(resource = %s.resource, upstream = %upstream, code, "pull: upstream refused the call");
                p.fail(now);
            }
            _ => self.drops.drop_packet("unexpected_handshake"),
        }
        true
    }

    fn pull_connected(
        &mut self,
        now: Instant,
        stream: usize,
        link: Link,
        encryption: Option<Encryption>,
    ) {
        let Link {
            id,
            peer,
            peer_id,
            isn,
            latency,
            start,
        } = link;
        let encrypted = encryption.is_some();
        let rx = Receiver::new(isn, latency, self.cfg.buffer_packets, now);
        let conn = Conn {
            peer,
            peer_id,
            stream,
            mode: ConnMode::Publish,
            start,
            latency,
            since: now,
            rates: super::rates::Rates::new(now),
            kernel_bytes: 0,
            playout_warned: None,
            last_recv: now,
            last_sent: now,
            response: Vec::new(),
            role: Role::Publisher(Box::new(rx)),
            kernel_epoch: None,
            serving_from: None,
            encryption: encryption.map(Box::new),
            stats: ConnStats::default(),
        };
        self.conns.insert(id, conn);
        self.connections_total += 1;
        self.by_peer.insert((peer, peer_id), id);
        self.shared.addresses().opened(peer.ip());
        let s = &mut self.streams[stream];
        let p = s.pull.as_mut().expect("pulling");
        if p.was_connected {
            p.reconnects += 1;
        }
        p.was_connected = true;
        p.failures = 0;
        p.state = State::Connected { conn: id };
        info!(
            conn = id,
            peer = %super::shown(peer),
            resource = %s.resource,
            upstream = %p.upstreams[p.current],
            latency_ms = latency.as_millis() as u64,
            encrypted,
            worker = self.worker,
            "pulling from upstream"
        );
        self.take_publisher(now, stream, id, peer, encrypted);
        // Tells the upstream its answer arrived (it counts a viewer from its first packet,
        // and its kernel path learns the route from it) before any ACK is due.
        self.send_control(now, id, ctrl::KEEPALIVE, 0, &[0]);
    }

    /// Makes connection `id` (from `peer`) the publisher of `stream`; the one before it, if
    /// any, is closed.
    pub(super) fn take_publisher(
        &mut self,
        now: Instant,
        stream: usize,
        id: u32,
        peer: SocketAddr,
        encrypted: bool,
    ) {
        let s = &mut self.streams[stream];
        let old = s.publisher.replace(id);
        s.epoch = self.shared.new_epoch(stream, self.worker);
        s.remote = None;
        s.ingest = Some(IngestLatency::new(now));
        match &mut s.ring {
            Some(r) => r.clear(),
            None => s.ring = Some(Ring::new(self.cfg.buffer_packets)),
        }
        self.events.push_back(RouteEvent::PublisherChanged {
            resource: s.resource.clone(),
            publisher: Some((peer, id)),
            epoch: s.epoch,
            encrypted,
        });
        if let Some(old) = old {
            info!(conn = old, "publisher taken over by conn {id}");
            self.close(now, old, CloseReason::TakenOver);
        }
    }

    /// The pull's connection `id` of `stream` closed (silent, shut down by the upstream,
    /// or by this relay): it is made again at once, then with backoff.
    pub(super) fn pull_closed(&mut self, now: Instant, stream: usize, id: u32) {
        let Some(p) = self.streams[stream].pull.as_mut() else {
            return;
        };
        if p.connected() == Some(id) {
            p.failures = 0;
            p.state = State::Backoff { until: now };
        }
    }

    /// Runs every pulled stream's state machine (from `handle_timeout`).
    pub(super) fn drive_pulls(&mut self, now: Instant) {
        for i in 0..self.streams.len() {
            if self.streams[i].pull.is_some() {
                self.drive_pull(now, i);
            }
        }
    }

    pub(super) fn drive_pull(&mut self, now: Instant, i: usize) {
        let latency_ms = self.cfg.latency.as_millis().min(u16::MAX.into()) as u16;
        let viewers = self.shared.viewers(i);
        let s = &mut self.streams[i];
        let Some(p) = s.pull.as_mut() else {
            return;
        };
        let resource = &s.resource;
        let upstream = &p.upstreams[p.current];
        if p.always || viewers > 0 {
            p.unwanted_since = None;
        } else if matches!(p.state, State::Idle) {
            return;
        } else if now >= *p.unwanted_since.get_or_insert(now) + LINGER {
            p.unwanted_since = None;
            let conn = p.connected();
            p.state = State::Idle;
            debug!(resource = %resource, "pull: no viewers: stopped");
            if let Some(conn) = conn {
                self.close(now, conn, CloseReason::PullEnded);
            }
            return;
        }
        match &mut p.state {
            State::Idle => {
                p.state = State::Minting { since: now };
                let req = PullRequest {
                    resource: resource.clone(),
                    upstream: p.current,
                };
                self.pull_requests.push_back(req);
            }
            State::Backoff { until } if now >= *until => {
                p.state = State::Minting { since: now };
                let req = PullRequest {
                    resource: resource.clone(),
                    upstream: p.current,
                };
                self.pull_requests.push_back(req);
            }
            State::Minting { since } if now >= *since + MINT_TIMEOUT => {
                warn!(resource = %resource, upstream = %upstream, "pull: no session key in {MINT_TIMEOUT:?}");
                p.fail(now);
            }
            State::Calling(c) if now >= c.since + CALL_TIMEOUT => {
                warn!(resource = %resource, upstream = %upstream, peer = %super::shown(c.peer), "pull: upstream did not answer in {CALL_TIMEOUT:?}");
                p.fail(now);
            }
            State::Calling(c) if now >= c.next_send => {
                c.next_send = now + RESEND;
                let ts = now.saturating_duration_since(c.start).as_micros() as u32;
                let mut out = Vec::new();
                match c.cookie {
                    None => caller::induction(&mut out, c.id, c.isn, ts, c.peer),
                    Some(cookie) => {
                        let sid = c.sid.as_bytes();
                        let (id, isn, peer) = (c.id, c.isn, c.peer);
                        let km = c.km.as_ref().map(|k| &k.0[..]);
                        caller::conclusion(&mut out, id, isn, ts, peer, cookie, latency_ms, sid, km)
                    }
                }
                self.out.push_bytes(c.peer, &out);
            }
            State::Connected { conn } => {
                let conn = *conn;
                let silent = self
                    .conns
                    .get(&conn)
                    .is_some_and(|c| now.saturating_duration_since(c.last_recv) >= SILENCE);
                if silent {
                    info!(conn, resource = %resource, "pull: upstream silent for {SILENCE:?}: calling again");
                    self.close(now, conn, CloseReason::PullEnded);
                }
            }
            _ => {}
        }
    }

    /// The earliest time a pull has something to do.
    pub(super) fn pull_timeout(&self) -> Option<Instant> {
        self.streams
            .iter()
            .filter_map(|s| s.pull.as_ref()?.timeout())
            .min()
    }
}
