//! The relay target: a [`Relay`] with two streams, four peer addresses and a virtual clock,
//! driven by a list of operations. Peers can speak raw bytes (how the seed corpus replays
//! real libsrt captures) or let the harness build valid handshakes, data and control
//! packets so the fuzzer gets past the SYN cookie and the session keys quickly. The outbox
//! and route events are drained and checked after every step.
//!
//! With configuration bit 7 the relay is two workers: each datagram goes to the worker
//! its destination socket ID names, a handshake to the one its peer's address picks (the
//! flow hash's part), and after every step each worker takes what the other fed it.
//!
//! Input: one configuration byte, then operations, each an op byte (kind in bits 0-2, peer
//! in bits 3-4, flags in bits 5-7) and its arguments (see [`RelayOp::read`]).

use super::{Input, Ops};
use crate::relay::{
    AddressLimits, Command, CommandError, KernelAcks, KernelReport, KeySchedule, Relay,
    RelayConfig, Reply, RouteEvent, StreamConfig, WallClock,
};
use crate::srt::crypto::KeyMaterial;
use crate::srt::handshake::{
    encode_sid, ext, ext_header, hs_type, parse_extensions, srt_flag, Handshake, BODY_LEN, MAGIC,
    SRT_VERSION,
};
use crate::srt::packet::{be_words, write_control, write_data, Packet};
use crate::srt::seq::Seq;
use crate::srt::streamid;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use stsync_common::srt::{ctrl, CONTROL_BIT, HEADER_LEN, MAX_DATAGRAM, MAX_PAYLOAD, SEQ_MASK};

/// The peers' addresses (the op byte picks one): two ports of one host, another host on the
/// same port, and IPv6.
pub const PEERS: [&str; 4] = [
    "127.0.0.1:40001",
    "127.0.0.1:40002",
    "127.0.0.2:40001",
    "[::1]:40001",
];
const RESOURCES: [&str; 2] = ["1", "2"];
/// A fixed cookie secret: runs are reproducible.
pub(super) const SECRET: [u8; 16] = *b"stsync-fuzz-key!";
/// In an encrypted world (configuration bit 6), stream 2's publisher and viewers must
/// encrypt with this, and viewers' keys change every 16 packets.
const PASSPHRASE: &str = "stsync-fuzz-passphrase";
const FUZZ_SCHEDULE: KeySchedule = KeySchedule {
    refresh_rate: 16,
    pre_announce: 4,
};
/// Largest raw datagram an op sends: beyond `MAX_DATAGRAM`, to reach the oversized path.
const MAX_RAW: u16 = 2048;
/// Timer runs per `Advance` (a 6.5 s advance at a 10 ms ACK period needs ~700).
const MAX_TIMER_RUNS: usize = 4096;
/// Control types a `Control` op can send (the last is unknown to SRT).
const CONTROL_TYPES: [u16; 11] = [
    ctrl::KEEPALIVE,
    ctrl::ACK,
    ctrl::NAK,
    ctrl::SHUTDOWN,
    ctrl::ACKACK,
    ctrl::DROPREQ,
    ctrl::HANDSHAKE,
    ctrl::CONGESTION_WARNING,
    ctrl::PEERERROR,
    ctrl::USER_DEFINED,
    9,
];

/// Flags of a [`RelayOp::Raw`] datagram: what the harness fixes up before sending it, so
/// bytes captured from another relay run (its socket IDs, cookies, session keys) work here.
pub struct Flags;

impl Flags {
    /// Destination socket ID := the relay's ID for this peer's latest connection (not for a
    /// handshake to socket 0).
    pub const DEST: u8 = 1;
    /// SYN cookie of a conclusion := the latest one the relay gave this peer (the harness
    /// asks for one first if it has none).
    pub const COOKIE: u8 = 2;
    /// Mint the session key a conclusion's stream ID names, for its resource.
    pub const MINT: u8 = 4;
    pub const ALL: u8 = 7;
}

/// One step of the relay target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayOp {
    /// A datagram from peer `peer`, fixed up as `flags` ([`Flags`]) say.
    Raw { peer: u8, flags: u8, bytes: Vec<u8> },
    /// An induction (HSv4 as libsrt sends it, HSv5 with flag 1).
    Induction { peer: u8, flags: u8 },
    /// A conclusion from the peer's latest cookie; `sel` bits, all clear for a well-formed
    /// viewer of stream 1 with a fresh key: 0 stream 2, 1 publish, 2 reuse the peer's last
    /// key, 3 wrong cookie, 4 percent-encoded ID, 5 KMREQ (valid keying material under
    /// `PASSPHRASE` in an encrypted world, of the key length `latency % 3` picks; else one
    /// empty word), 6 no HSREQ, 7 unknown resource.
    /// Flag 1: a new caller socket ID (a new connection from the same address).
    Conclusion {
        peer: u8,
        flags: u8,
        sel: u8,
        isn: u32,
        latency: u32,
        hs_flags: u8,
    },
    /// A data packet to the peer's connection: `delta` from its next sequence number, flag 1
    /// marks it retransmitted, flags 2 and 4 are its KK bits (1 even, 2 odd, 3 invalid).
    Data {
        peer: u8,
        flags: u8,
        delta: i8,
        len: u16,
    },
    /// A control packet to the peer's connection; flag 1 makes each body word an offset
    /// from the peer's ISN (bit 31 kept), so ACKs and NAKs land in its sequence space.
    /// An extended one (USER_DEFINED) gets subtype KMREQ with flag 2, KMRSP with flag 4,
    /// and with both, the body is the keying material the relay last announced to the peer
    /// (a viewer's correct answer).
    Control {
        peer: u8,
        flags: u8,
        typ: u8,
        info: u32,
        body: Vec<u8>,
    },
    /// Time passes (100 µs units); every timer due meanwhile runs.
    Advance(u16),
    /// The clock jumps to the next timer, which runs.
    Timer,
    /// What the driver or the HTTP side does: 0 set a stream's delay, 1 kernel fan-out on or
    /// off for the peer's connection, 2 kernel-answered ACKs, 3 graceful shutdown.
    Misc {
        peer: u8,
        flags: u8,
        sub: u8,
        value: u32,
    },
}

impl RelayOp {
    fn head(kind: u8, peer: u8, flags: u8) -> u8 {
        kind | (peer & 3) << 3 | flags << 5
    }

    pub fn read(inp: &mut Input) -> Self {
        let b = inp.u8();
        let (peer, flags) = ((b >> 3) & 3, b >> 5);
        match b & 7 {
            0 => {
                let len = inp.u16() % (MAX_RAW + 1);
                RelayOp::Raw {
                    peer,
                    flags,
                    bytes: inp.bytes(len.into()).to_vec(),
                }
            }
            1 => RelayOp::Induction { peer, flags },
            2 => RelayOp::Conclusion {
                peer,
                flags,
                sel: inp.u8(),
                isn: inp.u32(),
                latency: inp.u32(),
                hs_flags: inp.u8(),
            },
            3 => RelayOp::Data {
                peer,
                flags,
                delta: inp.u8() as i8,
                len: inp.u16(),
            },
            4 => {
                let typ = inp.u8();
                let info = inp.u32();
                let words = usize::from(inp.u8());
                RelayOp::Control {
                    peer,
                    flags,
                    typ,
                    info,
                    body: inp.bytes(words * 4).to_vec(),
                }
            }
            5 => RelayOp::Advance(inp.u16()),
            6 => RelayOp::Timer,
            _ => RelayOp::Misc {
                peer,
                flags,
                sub: inp.u8(),
                value: inp.u32(),
            },
        }
    }

    pub fn write(&self, o: &mut Ops) {
        match self {
            RelayOp::Raw { peer, flags, bytes } => {
                o.u8(Self::head(0, *peer, *flags))
                    .u16(bytes.len() as u16)
                    .bytes(bytes);
            }
            RelayOp::Induction { peer, flags } => {
                o.u8(Self::head(1, *peer, *flags));
            }
            RelayOp::Conclusion {
                peer,
                flags,
                sel,
                isn,
                latency,
                hs_flags,
            } => {
                o.u8(Self::head(2, *peer, *flags))
                    .u8(*sel)
                    .u32(*isn)
                    .u32(*latency)
                    .u8(*hs_flags);
            }
            RelayOp::Data {
                peer,
                flags,
                delta,
                len,
            } => {
                o.u8(Self::head(3, *peer, *flags))
                    .u8(*delta as u8)
                    .u16(*len);
            }
            RelayOp::Control {
                peer,
                flags,
                typ,
                info,
                body,
            } => {
                o.u8(Self::head(4, *peer, *flags))
                    .u8(*typ)
                    .u32(*info)
                    .u8((body.len() / 4) as u8)
                    .bytes(body);
            }
            RelayOp::Advance(units) => {
                o.u8(5).u16(*units);
            }
            RelayOp::Timer => {
                o.u8(6);
            }
            RelayOp::Misc {
                peer,
                flags,
                sub,
                value,
            } => {
                o.u8(Self::head(7, *peer, *flags)).u8(*sub).u32(*value);
            }
        }
    }
}

/// What a run reached, for tests that check a seed gets deep (the fuzz target ignores it).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayRun {
    /// Conclusion answers the relay sent (connections accepted, and repeats).
    pub conclusions: usize,
    pub rejections: usize,
    /// Data packets the relay sent (fan-out and retransmissions).
    pub data_sent: usize,
    pub transmits: usize,
    /// Most datagrams the relay queued in one step.
    pub max_step: usize,
}

/// What the harness knows about one peer, learned from what it sent and what the relay
/// answered.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    socket_id: u32,
    cookie: Option<u32>,
    relay_id: Option<u32>,
    isn: Seq,
    next: Seq,
    key: Option<String>,
    /// The keying material the relay last announced to this peer (SRT_CMD_KMREQ).
    announced: Vec<u8>,
}

pub(super) struct World {
    /// Worker 0.
    pub relay: Relay,
    /// Worker 1 in a two-worker world.
    others: Vec<Relay>,
    cfg: RelayConfig,
    pub now: Instant,
    t0: Instant,
    pub peers: Vec<Peer>,
    viewers: HashSet<u32>,
    epochs: HashMap<String, u64>,
    keys: u64,
    /// Stream 2 wants encryption (configuration bit 6).
    encrypted: bool,
    pub run: RelayRun,
}

const SRT_CMD_KMREQ: u16 = 3;
const SRT_CMD_KMRSP: u16 = 4;

/// Keying material under `PASSPHRASE` with a 16-, 24- or 32-byte key (`pick % 3`), sealed
/// once per length (PBKDF2 is slow for a fuzzer).
fn keying_material(pick: u32) -> Vec<u8> {
    static KM: std::sync::OnceLock<[Vec<u8>; 3]> = std::sync::OnceLock::new();
    let all = KM.get_or_init(|| {
        [16, 24, 32].map(|len| {
            let key = vec![0x5A; len];
            let km = KeyMaterial::seal(PASSPHRASE.as_bytes(), [7; 16], Some(&key), None)
                .expect("sealable");
            let mut b = Vec::new();
            km.encode(&mut b);
            b
        })
    });
    all[pick as usize % 3].clone()
}

impl World {
    /// Configuration byte: bits 0-1 ring size (32, 64, 256, 8192 packets), bits 2-3 latency
    /// (20, 120, 500, 1000 ms), bit 4 a single viewer per stream, bit 5 a 1 s idle timeout,
    /// bit 6 stream 2 encrypted (`PASSPHRASE`), bit 7 two workers.
    pub fn new(conf: u8) -> Self {
        let t0 = Instant::now();
        let cfg = RelayConfig {
            latency: Duration::from_millis([20, 120, 500, 1000][usize::from(conf >> 2 & 3)]),
            buffer_packets: [32, 64, 256, 8192][usize::from(conf & 3)],
            idle_timeout: Duration::from_secs(if conf & 0x20 != 0 { 1 } else { 5 }),
            max_connections: 8,
            max_viewers_per_stream: if conf & 0x10 != 0 { 1 } else { 4 },
            per_address: AddressLimits {
                max_connections: 6,
                handshakes_per_sec: 1000,
            },
            session_ttl: Duration::from_secs(300),
            key_secret: None,
            wall_clock: WallClock {
                at: t0,
                unix: Duration::from_secs(1_800_000_000),
            },
            key_schedule: FUZZ_SCHEDULE,
        };
        let encrypted = conf & 0x40 != 0;
        let streams = RESOURCES
            .iter()
            .map(|r| {
                let secret = (encrypted && *r == "2").then(|| PASSPHRASE.to_string());
                StreamConfig {
                    resource: r.to_string(),
                    delay_ms: 0,
                    publish_passphrase: secret.clone(),
                    view_passphrase: secret,
                    pbkeylen: None,
                    upstreams: Vec::new(),
                    pull_always: false,
                }
            })
            .collect();
        let workers = if conf & 0x80 != 0 { 2 } else { 1 };
        let mut relays = Relay::workers(cfg.clone(), streams, SECRET, t0, workers).into_iter();
        let relay = relays.next().expect("one worker");
        let peers = PEERS
            .iter()
            .enumerate()
            .map(|(i, a)| Peer {
                addr: a.parse().unwrap(),
                socket_id: 0x0100_0000 * (i as u32 + 1),
                cookie: None,
                relay_id: None,
                isn: Seq::new(0),
                next: Seq::new(0),
                key: None,
                announced: Vec::new(),
            })
            .collect();
        World {
            relay,
            others: relays.collect(),
            cfg,
            now: t0,
            t0,
            peers,
            viewers: HashSet::new(),
            epochs: HashMap::new(),
            keys: 0,
            encrypted,
            run: RelayRun::default(),
        }
    }

    /// Most datagrams one input datagram may make the relay send: a NAK answered from the
    /// whole ring plus a DROPREQ per loss-list word, or a data packet fanned out to every
    /// connection, with room for feedback and a takeover's SHUTDOWN.
    fn datagram_limit(&self) -> usize {
        self.cfg.buffer_packets as usize + MAX_DATAGRAM / 4 + 4 * self.cfg.max_connections + 8
    }

    /// Most datagrams one timer run may send: keepalive or SHUTDOWN to each connection, ACK
    /// and NAK to each publisher.
    fn timer_limit(&self) -> usize {
        4 * self.cfg.max_connections + 8
    }

    fn workers(&mut self) -> impl Iterator<Item = &mut Relay> {
        std::iter::once(&mut self.relay).chain(&mut self.others)
    }

    /// Worker `i`'s relay.
    fn worker(&mut self, i: usize) -> &mut Relay {
        match i {
            0 => &mut self.relay,
            i => &mut self.others[i - 1],
        }
    }

    /// The worker connection `conn` belongs to (its ID says).
    fn owner(&mut self, conn: u32) -> &mut Relay {
        let n = 1 + self.others.len() as u32;
        let w = crate::os::reuseport::worker_of(conn, n).unwrap_or(0);
        self.worker(w as usize)
    }

    fn connection_count(&self) -> usize {
        let others: usize = self.others.iter().map(Relay::connection_count).sum();
        self.relay.connection_count() + others
    }

    /// Delivers `bytes` to the worker the reuseport program would: by destination socket
    /// ID, or for a handshake (or a datagram too short to say) by the peer's address.
    pub fn send(&mut self, from: SocketAddr, bytes: &[u8]) {
        let n = 1 + self.others.len() as u32;
        let dest = bytes
            .get(12..16)
            .map_or(0, |b| u32::from_be_bytes(b.try_into().expect("4 bytes")));
        let by_address = PEERS
            .iter()
            .position(|p| p.parse() == Ok(from))
            .unwrap_or(0) as u32;
        let w = crate::os::reuseport::worker_of(dest, n).unwrap_or(by_address % n);
        let now = self.now;
        let r = self.worker(w as usize);
        r.handle_datagram(now, from, bytes);
        // As the driver says once the socket is read dry.
        r.note_drained(now);
        self.drain(self.datagram_limit(), "one datagram");
    }

    /// Checks and empties every worker's outbox and route events, after each has taken
    /// what the others fed it.
    fn drain(&mut self, limit: usize, what: &str) {
        for i in 0..=self.others.len() {
            let now = self.now;
            self.worker(i).handle_feed(now);
        }
        for i in 0..=self.others.len() {
            self.drain_worker(i, limit, what);
        }
        self.drain_events();
    }

    fn drain_worker(&mut self, i: usize, limit: usize, what: &str) {
        let relay = match i {
            0 => &mut self.relay,
            i => &mut self.others[i - 1],
        };
        let Some(batch) = relay.poll_transmit() else {
            return;
        };
        assert!(
            batch.len() <= limit,
            "{what} made the relay queue {} datagrams (limit {limit})",
            batch.len()
        );
        self.run.max_step = self.run.max_step.max(batch.len());
        self.run.transmits += batch.len();
        for t in batch.iter() {
            let bytes = [t.head, t.payload].concat();
            assert!(bytes.len() <= MAX_DATAGRAM, "sent {} bytes", bytes.len());
            let pkt = Packet::parse(&bytes).expect("the relay sends only what it can parse");
            let peer = self
                .peers
                .iter_mut()
                .find(|p| p.addr == t.dst)
                .expect("the relay sends only to addresses that spoke to it");
            match pkt {
                Packet::Data(_) => self.run.data_sent += 1,
                Packet::Control(c) if c.typ == ctrl::HANDSHAKE => {
                    let hs = Handshake::parse(c.body).expect("a handshake answer parses");
                    match hs.hs_type {
                        hs_type::INDUCTION => {
                            assert_eq!(hs.ext_field, MAGIC);
                            peer.cookie = Some(hs.cookie);
                        }
                        hs_type::CONCLUSION => {
                            peer.relay_id = Some(hs.socket_id);
                            self.run.conclusions += 1;
                        }
                        t => {
                            assert!((1000..3000).contains(&t), "handshake type {t}");
                            self.run.rejections += 1;
                        }
                    }
                }
                Packet::Control(c) if c.typ == ctrl::USER_DEFINED && c.subtype == SRT_CMD_KMREQ => {
                    KeyMaterial::parse(c.body).expect("the relay announces keys that parse");
                    peer.announced = c.body.to_vec();
                }
                Packet::Control(_) => {}
            }
        }
    }

    /// Checks and empties the route events.
    fn drain_events(&mut self) {
        let mut events = Vec::new();
        for r in self.workers() {
            events.extend(std::iter::from_fn(|| r.poll_event()));
        }
        for ev in events {
            match ev {
                RouteEvent::ViewerAdded { conn, .. } => {
                    assert!(self.viewers.insert(conn), "viewer {conn} added twice")
                }
                RouteEvent::ViewerRemoved { conn } => {
                    assert!(self.viewers.remove(&conn), "viewer {conn} removed unadded")
                }
                RouteEvent::ViewerMapped { conn, .. } => {
                    assert!(self.viewers.contains(&conn), "unknown viewer {conn} mapped")
                }
                RouteEvent::PublisherChanged {
                    resource,
                    epoch,
                    publisher,
                    ..
                } => {
                    let e = self.epochs.entry(resource).or_default();
                    // With workers, the end of a publisher taken over on another worker
                    // may come after its successor's start (the kernel path ignores it).
                    let stale_end = publisher.is_none() && !self.others.is_empty();
                    assert!(epoch >= *e || stale_end, "publisher epoch went back");
                    *e = (*e).max(epoch);
                }
                RouteEvent::StreamDelay { delay_us, .. } => {
                    assert!(delay_us <= 30_000_000, "delay {delay_us} µs")
                }
                RouteEvent::StreamRemoved { .. } => {}
            }
        }
        // Viewers within max_connections, plus at most one publisher per stream.
        assert!(self.connection_count() <= self.cfg.max_connections + RESOURCES.len());
    }

    /// When the next timer of any worker is due.
    fn poll_timeout(&self) -> Instant {
        let others = self.others.iter().map(Relay::poll_timeout);
        others.fold(self.relay.poll_timeout(), Instant::min)
    }

    /// Runs the relay's next timer if it is due by `end`; false when none is.
    fn timer_until(&mut self, end: Instant) -> bool {
        let t = self.poll_timeout();
        if t > end {
            return false;
        }
        self.now = self.now.max(t);
        let now = self.now;
        for r in self.workers() {
            if r.poll_timeout() <= now {
                r.handle_timeout(now);
            }
        }
        self.drain(self.timer_limit(), "one timer run");
        // Else the driver spins: it sleeps until `poll_timeout` and calls again.
        assert!(
            self.poll_timeout() > self.now,
            "a timer run left a timer due"
        );
        true
    }

    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        for _ in 0..MAX_TIMER_RUNS {
            if !self.timer_until(end) {
                break;
            }
        }
        self.now = self.now.max(end);
    }

    fn clock(&self) -> u32 {
        self.now.saturating_duration_since(self.t0).as_micros() as u32
    }

    fn induction(&mut self, p: usize, v5: bool) {
        let peer = &self.peers[p];
        let hs = Handshake {
            version: if v5 { 5 } else { 4 },
            encryption: 0,
            ext_field: 2,
            isn: peer.isn,
            mtu: 1500,
            flow_window: 8192,
            hs_type: hs_type::INDUCTION,
            socket_id: peer.socket_id,
            cookie: 0,
            peer_ip: [0; 16],
        };
        let mut b = Vec::new();
        write_control(&mut b, ctrl::HANDSHAKE, 0, self.clock(), 0, &hs.words());
        let addr = peer.addr;
        self.send(addr, &b);
    }

    fn cookie(&mut self, p: usize) -> u32 {
        if self.peers[p].cookie.is_none() {
            self.induction(p, false);
        }
        self.peers[p].cookie.unwrap_or(0)
    }

    fn mint(&mut self, resource: &str) -> String {
        self.keys += 1;
        let key = 0xF0_0000_0000 | self.keys;
        let cmd = Command::MintSession {
            resource: resource.to_string(),
            key,
            passphrase: None,
            mode: None,
        };
        match self.relay.handle_command(self.now, cmd) {
            Ok(Reply::Session(minted)) => minted.key,
            // An unconfigured stream has no keys: the handshake with this one is refused.
            Err(CommandError::UnknownStream) => format!("{key:016x}"),
            other => panic!("minting for a stream: {other:?}"),
        }
    }

    fn conclusion(&mut self, p: usize, flags: u8, sel: u8, isn: u32, latency: u32, hs_fl: u8) {
        if flags & 1 != 0 {
            self.peers[p].socket_id = self.peers[p].socket_id.wrapping_add(1);
        }
        let resource = if sel & 0x80 != 0 {
            "3"
        } else {
            RESOURCES[usize::from(sel & 1)]
        };
        let key = match self.peers[p].key.clone() {
            Some(k) if sel & 4 != 0 => k,
            _ => self.mint(resource),
        };
        self.peers[p].key = Some(key.clone());
        let mode = if sel & 2 != 0 { "publish" } else { "request" };
        let hash = if sel & 0x10 != 0 { "%23" } else { "#" };
        let sid = format!("{hash}!::r={resource},s={key},m={mode}");
        let cookie = self.cookie(p) ^ u32::from(sel >> 3 & 1);
        let clock = self.clock();
        let peer = &mut self.peers[p];
        peer.isn = Seq::new(isn);
        peer.next = peer.isn;
        let mut words = Handshake {
            version: 5,
            encryption: 0,
            ext_field: 5,
            isn: peer.isn,
            mtu: 1500,
            flow_window: 8192,
            hs_type: hs_type::CONCLUSION,
            socket_id: peer.socket_id,
            cookie,
            peer_ip: [0; 16],
        }
        .words()
        .to_vec();
        if sel & 0x40 == 0 {
            let base = srt_flag::TSBPDSND
                | srt_flag::TSBPDRCV
                | srt_flag::CRYPT
                | srt_flag::TLPKTDROP
                | srt_flag::PERIODICNAK
                | srt_flag::REXMITFLG;
            words.extend([
                ext_header(ext::HSREQ, 3),
                SRT_VERSION,
                base ^ u32::from(hs_fl),
                latency,
            ]);
        }
        if sel & 0x20 != 0 {
            let km = self.encrypted.then(|| keying_material(latency));
            let km = km.unwrap_or_else(|| vec![0; 4]);
            words.push(ext_header(ext::KMREQ, km.len() / 4));
            words.extend(be_words(&km));
        }
        let sid = encode_sid(sid.as_bytes());
        words.push(ext_header(ext::SID, sid.len()));
        words.extend(sid);
        let mut b = Vec::new();
        write_control(&mut b, ctrl::HANDSHAKE, 0, clock, 0, &words);
        let addr = peer.addr;
        self.send(addr, &b);
    }

    fn data(&mut self, p: usize, flags: u8, delta: i8, len: u16) {
        let clock = self.clock();
        let peer = &mut self.peers[p];
        let seq = peer.next.add(i32::from(delta) as u32);
        if !seq.lt(peer.next) {
            peer.next = seq.next();
        }
        let msg = 0xC000_0000
            | (seq.get() & 0x03FF_FFFF)
            | u32::from(flags & 1) << 26
            | u32::from(flags >> 1 & 3) << 27;
        let payload = vec![0x47; usize::from(len) % (MAX_PAYLOAD + 1)];
        let (addr, dest) = (peer.addr, peer.relay_id.unwrap_or(0));
        let mut b = Vec::new();
        write_data(&mut b, seq, msg, clock, dest, &payload);
        self.send(addr, &b);
    }

    fn control(&mut self, p: usize, flags: u8, typ: u8, info: u32, body: &[u8]) {
        let peer = &self.peers[p];
        let words: Vec<u32> = body
            .chunks_exact(4)
            .map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
            .map(|w| {
                if flags & 1 != 0 {
                    w & CONTROL_BIT | peer.isn.add(w & SEQ_MASK).get()
                } else {
                    w
                }
            })
            .collect();
        let typ = CONTROL_TYPES[usize::from(typ) % CONTROL_TYPES.len()];
        let (addr, dest) = (peer.addr, peer.relay_id.unwrap_or(0));
        let (subtype, words) = match (typ, flags >> 1 & 3) {
            (ctrl::USER_DEFINED, 1) => (SRT_CMD_KMREQ, words),
            (ctrl::USER_DEFINED, 2) => (SRT_CMD_KMRSP, words),
            (ctrl::USER_DEFINED, 3) => (SRT_CMD_KMRSP, be_words(&peer.announced).collect()),
            _ => (0, words),
        };
        let mut b = Vec::new();
        write_control(&mut b, typ, info, self.clock(), dest, &words);
        b[2..4].copy_from_slice(&subtype.to_be_bytes());
        self.send(addr, &b);
    }

    pub fn raw(&mut self, p: usize, flags: u8, mut bytes: Vec<u8>) {
        let is_hs = bytes.len() >= HEADER_LEN
            && bytes[..4] == (CONTROL_BIT | u32::from(ctrl::HANDSHAKE) << 16).to_be_bytes()[..]
            && bytes[12..16] == [0; 4];
        let body = HEADER_LEN..HEADER_LEN + BODY_LEN;
        let conclusion = is_hs
            && bytes
                .get(body.clone())
                .and_then(|b| Handshake::parse(b).ok())
                .is_some_and(|hs| hs.hs_type == hs_type::CONCLUSION);
        if flags & Flags::DEST != 0 && bytes.len() >= HEADER_LEN && !is_hs {
            if let Some(id) = self.peers[p].relay_id {
                bytes[12..16].copy_from_slice(&id.to_be_bytes());
            }
        }
        if conclusion {
            if flags & Flags::COOKIE != 0 {
                let c = self.cookie(p);
                bytes[HEADER_LEN + 28..HEADER_LEN + 32].copy_from_slice(&c.to_be_bytes());
            }
            let hs = Handshake::parse(&bytes[body]).expect("checked");
            self.peers[p].isn = hs.isn;
            self.peers[p].next = hs.isn;
            let sid = parse_extensions(&bytes[HEADER_LEN + BODY_LEN..])
                .ok()
                .and_then(|e| e.sid)
                .and_then(|s| streamid::parse(&s).ok());
            if let Some(id) = sid.filter(|_| flags & Flags::MINT != 0) {
                if let Ok(key) = u64::from_str_radix(&id.session, 16) {
                    let cmd = Command::MintSession {
                        resource: id.resource,
                        key,
                        passphrase: None,
                        mode: None,
                    };
                    // An unconfigured resource has no keys: the handshake is refused.
                    let _ = self.relay.handle_command(self.now, cmd);
                }
            }
        }
        let addr = self.peers[p].addr;
        self.send(addr, &bytes);
    }

    fn misc(&mut self, p: usize, flags: u8, sub: u8, value: u32) {
        let stream = usize::from(flags & 1);
        let conn = self.peers[p].relay_id.unwrap_or(0);
        match sub % 4 {
            0 => {
                let cmd = Command::SetDelay {
                    resource: RESOURCES[stream].to_string(),
                    delay_ms: u64::from(value % 30_001),
                };
                // Refused when it does not fit the stream's rate, as over HTTP; on every
                // worker, as the HTTP side asks.
                let now = self.now;
                for r in self.workers() {
                    let _ = r.handle_command(now, cmd.clone());
                }
            }
            1 => {
                let epoch = self.epochs.get(RESOURCES[stream]).copied().unwrap_or(0);
                let on = flags & 2 == 0;
                let epoch = on.then_some(epoch + u64::from(flags >> 2));
                let now = self.now;
                self.owner(conn).handle_kernel(KernelReport::Serving {
                    conn,
                    epoch,
                    since: (flags & 0x20 != 0).then_some(now),
                });
            }
            2 => {
                let acks = KernelAcks {
                    last: self.now,
                    ack_seq: self.peers[p].isn.add(value & 0xFFFF),
                    rtt: (flags & 2 != 0).then_some((value >> 8, value >> 16)),
                    avail_buf: (flags & 2 != 0).then_some(value >> 4),
                    answered: u64::from(value >> 24),
                    light: u64::from(value >> 28),
                    bytes: u64::from(value >> 16),
                };
                self.owner(conn)
                    .handle_kernel(KernelReport::Acks { conn, acks });
                // Like a viewer's own ACK: one that stops at a packet sent long ago has it
                // resent (and the retransmission pass sends what else is due).
                self.drain(self.datagram_limit(), "kernel ACKs");
            }
            _ => {
                let now = self.now;
                for r in self.workers() {
                    r.shutdown(now);
                }
                self.drain(self.cfg.max_connections, "a shutdown");
                assert_eq!(self.connection_count(), 0);
            }
        }
    }

    pub fn apply(&mut self, op: RelayOp) {
        match op {
            RelayOp::Raw { peer, flags, bytes } => self.raw(peer.into(), flags, bytes),
            RelayOp::Induction { peer, flags } => self.induction(peer.into(), flags & 1 != 0),
            RelayOp::Conclusion {
                peer,
                flags,
                sel,
                isn,
                latency,
                hs_flags,
            } => self.conclusion(peer.into(), flags, sel, isn, latency, hs_flags),
            RelayOp::Data {
                peer,
                flags,
                delta,
                len,
            } => self.data(peer.into(), flags, delta, len),
            RelayOp::Control {
                peer,
                flags,
                typ,
                info,
                body,
            } => self.control(peer.into(), flags, typ, info, &body),
            RelayOp::Advance(units) => self.advance(Duration::from_micros(u64::from(units) * 100)),
            RelayOp::Timer => {
                let t = self.poll_timeout();
                self.timer_until(t);
            }
            RelayOp::Misc {
                peer,
                flags,
                sub,
                value,
            } => self.misc(peer.into(), flags, sub, value),
        }
    }
}

/// The relay target: a configuration byte, then [`RelayOp`]s.
pub fn relay(data: &[u8]) -> RelayRun {
    let mut inp = Input::new(data);
    let mut w = World::new(inp.u8());
    while !inp.is_empty() {
        let op = RelayOp::read(&mut inp);
        w.apply(op);
    }
    w.run
}
