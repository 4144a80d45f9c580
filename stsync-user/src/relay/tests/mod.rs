//! The relay driven over a virtual clock by scripted callers that speak the wire format the
//! way libsrt does: handshakes, publishing, viewing, loss, silence, takeover, garbage.

use super::*;
use crate::srt::handshake::{
    encode_sid, ext, ext_header, hs_type, srt_flag, Handshake, SRT_VERSION,
};
use crate::srt::packet::{be_words, encode_loss, write_control, write_data, Ack};
use per_address::PerAddress;
use stsync_common::srt::MSG_REXMIT_FLAG;

const LATENCY: Duration = Duration::from_millis(120);
/// The wall clock at a test relay's start, unix seconds (2027).
const UNIX_START: u64 = 1_800_000_000;
/// Where a new connection's clock reads at its handshake.
const HEADROOM_US: u32 = CLOCK_HEADROOM.as_micros() as u32;

struct World {
    relay: Relay,
    /// Workers 1.. when the world has several (worker 0 is `relay`).
    others: Vec<Relay>,
    /// The worker that gets handshakes (destination 0): the kernel's flow hash, chosen.
    hs_worker: usize,
    /// Datagrams the relay sent that no `take` asked for yet.
    sent: Vec<(SocketAddr, Vec<u8>)>,
    now: Instant,
}

/// One datagram the relay sent, decoded.
#[derive(Debug, Clone)]
enum Got {
    Data {
        seq: Seq,
        msg: u32,
        ts: u32,
        dest: u32,
        payload: Vec<u8>,
    },
    Ctrl {
        typ: u16,
        /// The extended type's subtype (SRT_CMD_*).
        subtype: u16,
        info: u32,
        ts: u32,
        body: Vec<u8>,
    },
}

impl World {
    fn new() -> Self {
        Self::with_passphrases(None, None)
    }

    /// A world whose stream "1" wants its publisher and its viewers to encrypt with these.
    fn with_passphrases(publish: Option<&str>, view: Option<&str>) -> Self {
        Self::build(publish, view, 1)
    }

    /// A world of `n` workers (each datagram to the one its destination names).
    fn with_workers(n: u32) -> Self {
        Self::build(None, None, n)
    }

    fn build(publish: Option<&str>, view: Option<&str>, workers: u32) -> Self {
        Self::build_with(
            publish,
            view,
            workers,
            None,
            Duration::from_secs(UNIX_START),
        )
    }

    /// A relay of its own with this `key_secret`, whose wall clock reads `unix` (since the
    /// Unix epoch) at its start.
    fn with_key_secret(secret: Option<&[u8]>, unix: Duration) -> Self {
        Self::build_with(None, None, 1, secret, unix)
    }

    /// An edge: stream 1 is pulled from `upstreams` (on demand, or `always`).
    fn edge(upstreams: &[&str], always: bool) -> Self {
        let mut w = Self::build(None, None, 1);
        let streams = vec![StreamConfig {
            upstreams: upstreams.iter().map(|u| u.to_string()).collect(),
            pull_always: always,
            ..Self::stream_config(None, None)
        }];
        w.relay = Relay::workers(w.relay.cfg.clone(), streams, [7; 16], w.now, 1)
            .pop()
            .unwrap();
        w
    }

    /// Stream 1, whose publisher and viewers must encrypt with these.
    fn stream_config(publish: Option<&str>, view: Option<&str>) -> StreamConfig {
        StreamConfig {
            resource: "1".to_string(),
            delay_ms: 0,
            publish_passphrase: publish.map(str::to_string),
            view_passphrase: view.map(str::to_string),
            pbkeylen: None,
            upstreams: Vec::new(),
            pull_always: false,
        }
    }

    fn build_with(
        publish: Option<&str>,
        view: Option<&str>,
        workers: u32,
        key_secret: Option<&[u8]>,
        unix: Duration,
    ) -> Self {
        let now = Instant::now();
        let cfg = RelayConfig {
            latency: LATENCY,
            buffer_packets: 64,
            idle_timeout: Duration::from_secs(5),
            max_connections: 16,
            max_viewers_per_stream: 8,
            per_address: AddressLimits {
                max_connections: 12,
                handshakes_per_sec: 50,
            },
            session_ttl: Duration::from_secs(300),
            key_secret: key_secret.map(KeySecret::new),
            wall_clock: WallClock { at: now, unix },
            key_schedule: Default::default(),
        };
        let streams = vec![Self::stream_config(publish, view)];
        let mut relays = Relay::workers(cfg, streams, [9; 16], now, workers).into_iter();
        World {
            relay: relays.next().unwrap(),
            others: relays.collect(),
            hs_worker: 0,
            sent: Vec::new(),
            now,
        }
    }

    /// A session key for `resource`, or why not.
    fn try_key(&mut self, resource: &str) -> Result<String, CommandError> {
        let cmd = Command::MintSession {
            resource: resource.to_string(),
            key: rand::random(),
            passphrase: None,
            mode: None,
        };
        match self.relay.handle_command(self.now, cmd)? {
            Reply::Session(minted) => Ok(minted.key),
            other => panic!("{other:?}"),
        }
    }

    fn key(&mut self, resource: &str) -> String {
        self.try_key(resource).expect("a configured stream")
    }

    /// Asks for a stream delay the way the HTTP API does.
    fn set_delay(&mut self, delay_ms: u64) {
        let cmd = Command::SetDelay {
            resource: "1".to_string(),
            delay_ms,
        };
        let now = self.now;
        for r in self.relays_mut() {
            r.handle_command(now, cmd.clone()).unwrap();
        }
    }

    fn relays_mut(&mut self) -> impl Iterator<Item = &mut Relay> {
        std::iter::once(&mut self.relay).chain(&mut self.others)
    }

    fn worker(&mut self, i: usize) -> &mut Relay {
        match i {
            0 => &mut self.relay,
            i => &mut self.others[i - 1],
        }
    }

    /// Every worker's counters, merged as the HTTP side does.
    fn stats(&self) -> Snapshot {
        let mut s = self.relay.stats();
        for r in &self.others {
            s.merge(r.stats());
        }
        s
    }

    fn stream(&self) -> StreamSnapshot {
        self.stats().streams.remove(0)
    }

    /// The Prometheus exposition of the relay's counters.
    fn render(&self) -> String {
        crate::metrics::Scrape {
            relay: self.relay.stats(),
            datapath: Default::default(),
            heap_allocations: 0,
            snapshots: 0,
            max_connection_series: 1000,
        }
        .render()
    }

    /// Moves what the relay sent since the last call into `sent`; returns how many.
    fn collect(&mut self) -> usize {
        let mut n = 0;
        let now = self.now;
        let World {
            relay,
            others,
            sent,
            ..
        } = self;
        for r in std::iter::once(relay).chain(others) {
            // What the other workers fed this one, as its driver takes it when woken.
            r.handle_feed(now);
            if let Some(batch) = r.poll_transmit() {
                n += batch.len();
                sent.extend(batch.iter().map(|d| (d.dst, [d.head, d.payload].concat())));
            }
        }
        n
    }

    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let t = self.relays_mut().map(|r| r.poll_timeout()).min().unwrap();
            if t > end {
                break;
            }
            self.now = t.max(self.now);
            let now = self.now;
            for r in self.relays_mut() {
                r.handle_feed(now);
                if now >= r.poll_timeout() {
                    r.handle_timeout(now);
                }
            }
        }
        self.now = end;
    }

    /// Delivers a datagram to the worker its destination socket ID names, as the
    /// reuseport program does (a handshake: to `hs_worker`).
    fn send(&mut self, from: SocketAddr, bytes: &[u8]) {
        let n = 1 + self.others.len() as u32;
        let dest = bytes
            .get(12..16)
            .map_or(0, |b| u32::from_be_bytes(b.try_into().unwrap()));
        let w = crate::os::reuseport::worker_of(dest, n).map_or(self.hs_worker, |w| w as usize);
        let now = self.now;
        let r = self.worker(w);
        r.handle_datagram(now, from, bytes);
        // As the driver says once the socket is read dry.
        r.note_drained(now);
    }

    /// Everything queued for `to` since the last call (others' datagrams stay queued).
    fn take(&mut self, to: SocketAddr) -> Vec<Got> {
        let mut got = Vec::new();
        self.collect();
        let (mine, others) = std::mem::take(&mut self.sent)
            .into_iter()
            .partition(|(dst, _)| *dst == to);
        self.sent = others;
        for (_, bytes) in mine {
            got.push(match Packet::parse(&bytes).unwrap() {
                Packet::Data(d) => Got::Data {
                    seq: d.seq,
                    msg: d.msg,
                    ts: d.ts,
                    dest: d.dest,
                    payload: d.payload.to_vec(),
                },
                Packet::Control(c) => {
                    assert_eq!(
                        c.dest,
                        0x100 + u32::from(to.port()),
                        "addressed to the caller's socket"
                    );
                    Got::Ctrl {
                        typ: c.typ,
                        subtype: c.subtype,
                        info: c.info,
                        ts: c.ts,
                        body: c.body.to_vec(),
                    }
                }
            });
        }
        got
    }

    fn dropped(&self, reason: &str) -> u64 {
        self.stats().dropped(reason)
    }
}

fn data(got: &[Got]) -> Vec<(u32, Vec<u8>)> {
    got.iter()
        .filter_map(|g| match g {
            Got::Data { seq, payload, .. } => Some((seq.get(), payload.clone())),
            _ => None,
        })
        .collect()
}

/// The sequence numbers of the retransmissions in `got`.
fn rexmits(got: &[Got]) -> Vec<u32> {
    got.iter()
        .filter_map(|g| match g {
            Got::Data { seq, msg, .. } if msg & MSG_REXMIT_FLAG != 0 => Some(seq.get()),
            _ => None,
        })
        .collect()
}

/// `got` without retransmissions.
fn fresh(got: Vec<Got>) -> Vec<Got> {
    got.into_iter()
        .filter(|g| !matches!(g, Got::Data { msg, .. } if msg & MSG_REXMIT_FLAG != 0))
        .collect()
}

fn ctrl(got: &[Got], typ: u16) -> Vec<(u32, Vec<u8>)> {
    got.iter()
        .filter_map(|g| match g {
            Got::Ctrl {
                typ: t, info, body, ..
            } if *t == typ => Some((*info, body.clone())),
            _ => None,
        })
        .collect()
}

/// A scripted libsrt-like caller.
struct Caller {
    addr: SocketAddr,
    socket_id: u32,
    isn: Seq,
    relay_id: u32,
    /// An encrypting caller's keying material (sent in its conclusion) and keys.
    km: Option<(Vec<u8>, crate::srt::crypto::StreamKeys)>,
    /// The MSS its handshake says (libsrt's default 1500).
    mss: u32,
    /// The relay's conclusion answer, once connected.
    answer: Option<Handshake>,
}

impl Caller {
    fn new(port: u16, isn: u32) -> Self {
        Caller {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            socket_id: 0x100 + u32::from(port),
            isn: Seq::new(isn),
            relay_id: 0,
            km: None,
            mss: 1500,
            answer: None,
        }
    }

    /// A caller from `ip` (an IPv6 one, or an IPv4 caller of a dual-stack socket as
    /// `::ffff:a.b.c.d`).
    fn at(ip: &str, port: u16, isn: u32) -> Self {
        Caller {
            addr: SocketAddr::new(ip.parse().unwrap(), port),
            ..Caller::new(port, isn)
        }
    }

    /// A caller that encrypts with `passphrase`, as libsrt does: a fresh even key of
    /// `key_len` bytes under a fresh salt, sent as KMREQ in its conclusion.
    fn encrypting(port: u16, isn: u32, passphrase: &str, key_len: usize) -> Self {
        use crate::srt::crypto::KeyMaterial;
        let salt: [u8; 16] = rand::random();
        let key: Vec<u8> = (0..key_len).map(|_| rand::random()).collect();
        let km = KeyMaterial::seal(passphrase.as_bytes(), salt, Some(&key), None).unwrap();
        let mut bytes = Vec::new();
        km.encode(&mut bytes);
        let keys = km.open(passphrase.as_bytes()).unwrap();
        Caller {
            km: Some((bytes, keys)),
            ..Caller::new(port, isn)
        }
    }

    /// Its keys (an encrypting caller's).
    fn keys(&self) -> &crate::srt::crypto::StreamKeys {
        &self.km.as_ref().expect("an encrypting caller").1
    }

    fn handshake(&self, typ: u32, version: u32, cookie: u32) -> Handshake {
        Handshake {
            mtu: self.mss,
            ..crate::srt::handshake::caller(typ, version, cookie, self.isn, self.socket_id)
        }
    }

    /// Induction then conclusion; returns the relay's final answer (type, body).
    fn connect(&mut self, w: &mut World, sid: &str) -> Result<(), u32> {
        let mut b = Vec::new();
        write_control(
            &mut b,
            ctrl::HANDSHAKE,
            0,
            0,
            0,
            &self.handshake(hs_type::INDUCTION, 4, 0).words(),
        );
        w.send(self.addr, &b);
        let ind = ctrl(&w.take(self.addr), ctrl::HANDSHAKE);
        let cookie = Handshake::parse(&ind[0].1).unwrap().cookie;
        let concl = self.conclusion(cookie, sid);
        w.send(self.addr, &concl);
        let ans = ctrl(&w.take(self.addr), ctrl::HANDSHAKE);
        let hs = Handshake::parse(&ans[0].1).unwrap();
        if hs.hs_type != hs_type::CONCLUSION {
            return Err(hs.hs_type);
        }
        assert_eq!(hs.isn, self.isn, "listener answers with the caller's ISN");
        self.relay_id = hs.socket_id;
        self.answer = Some(hs);
        Ok(())
    }

    fn conclusion(&self, cookie: u32, sid: &str) -> Vec<u8> {
        let mut words = self
            .handshake(hs_type::CONCLUSION, 5, cookie)
            .words()
            .to_vec();
        let flags = srt_flag::TSBPDSND
            | srt_flag::TSBPDRCV
            | srt_flag::CRYPT
            | srt_flag::TLPKTDROP
            | srt_flag::REXMITFLG;
        words.extend([
            ext_header(ext::HSREQ, 3),
            SRT_VERSION,
            flags,
            (120 << 16) | 120,
        ]);
        if let Some((km, _)) = &self.km {
            words.push(ext_header(ext::KMREQ, km.len() / 4));
            words.extend(be_words(km));
        }
        let sid = encode_sid(sid.as_bytes());
        words.push(ext_header(ext::SID, sid.len()));
        words.extend(sid);
        let mut b = Vec::new();
        write_control(&mut b, ctrl::HANDSHAKE, 0, 0, 0, &words);
        b
    }

    /// Sends a data packet, encrypted under its even key if it encrypts.
    fn data(&self, w: &mut World, seq: Seq, ts: u32, payload: &[u8]) {
        let mut payload = payload.to_vec();
        let mut msg = 0xC000_0000 | seq.get() & 0x3FF_FFFF;
        if let Some((_, keys)) = &self.km {
            keys.seal(seq, &mut payload);
            msg |= keys.send_parity().msg_bits();
        }
        let mut b = Vec::new();
        write_data(&mut b, seq, msg, ts, self.relay_id, &payload);
        w.send(self.addr, &b);
    }

    fn control(&self, w: &mut World, typ: u16, info: u32, body: &[u32]) {
        let mut b = Vec::new();
        write_control(&mut b, typ, info, 0, self.relay_id, body);
        w.send(self.addr, &b);
    }

    /// A full ACK up to `n` (also its ACK number), reporting RTT 1 ms ± 0.1 ms.
    fn ack(&self, w: &mut World, n: u32) {
        self.control(w, ctrl::ACK, n, &[n, 1_000, 100, 8192, 0, 0, 0]);
    }

    fn nak(&self, w: &mut World, first: u32, last: u32) {
        let mut words = Vec::new();
        encode_loss(&mut words, Seq::new(first), Seq::new(last));
        self.control(w, ctrl::NAK, 0, &words);
    }
}

fn sid(w: &mut World, mode: &str) -> String {
    format!("#!::r=1,s={},m={mode}", w.key("1"))
}

impl Caller {
    /// Connects to resource 1 in `mode` with a fresh key; panics on rejection.
    fn join(&mut self, w: &mut World, mode: &str) {
        let s = sid(w, mode);
        self.connect(w, &s).unwrap();
    }
}

mod conn_stats;
mod connections;
mod encryption;
mod handover;
mod payload_size;
mod pull;
mod reconfig;
mod retransmission;
mod signed_keys;
mod streaming;
mod time_base;
mod workers;
