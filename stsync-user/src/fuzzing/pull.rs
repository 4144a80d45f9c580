//! The pull target: an edge relay whose stream 1 is always pulled from an upstream the
//! input plays, hostile or not. The upstream answers the edge's calls with arbitrary
//! datagrams (addressed to the call or to the connection it made, or not), or with the
//! right answers (induction, then a conclusion as a relay's listener writes it), then
//! sends data and control packets on the connection; keys come or fail as the input says.
//! Checked after every step: nothing panics, the edge holds at most one upstream
//! connection, and its pull is in a state it can leave.
//!
//! Input: [`PullOp`]s.

use super::Input;
use crate::relay::{
    AddressLimits, KeySchedule, Pulled, Relay, RelayConfig, StreamConfig, WallClock,
};
use crate::srt::handshake::{hs_type, Handshake, MAGIC, VERSION_5};
use crate::srt::listener;
use crate::srt::packet::{write_control, Packet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use stsync_common::srt::ctrl;

const UPSTREAM: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)),
    9999,
);
const STRANGER: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)),
    9999,
);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullOp {
    /// Time passes (ms), then the timers run; a key asked for is given (`ok`) or not.
    Advance { ms: u16, ok: bool },
    /// A datagram from the upstream (or a stranger), its destination socket ID set to
    /// the edge's call or connection (`to`: 0 as is, 1 the call, 2 the connection).
    Datagram {
        stranger: bool,
        to: u8,
        bytes: Vec<u8>,
    },
    /// The right answer to the call's last handshake.
    Answer,
}

impl PullOp {
    pub fn read(inp: &mut Input) -> Self {
        match inp.u8() % 3 {
            0 => {
                let ms = inp.u16();
                PullOp::Advance {
                    ms,
                    ok: inp.u8() & 1 == 0,
                }
            }
            1 => {
                let flags = inp.u8();
                let len = usize::from(inp.u16() % 1500);
                PullOp::Datagram {
                    stranger: flags & 0x80 != 0,
                    to: flags % 3,
                    bytes: inp.bytes(len).to_vec(),
                }
            }
            _ => PullOp::Answer,
        }
    }
}

struct Harness {
    edge: Relay,
    now: Instant,
    /// The edge's call (its socket ID, ISN and whether the induction was answered).
    call: Option<(u32, Handshake)>,
    /// The connection the last conclusion answer made (its socket ID on the edge).
    conn: Option<u32>,
    cookie: u32,
}

impl Harness {
    fn new() -> Self {
        let now = Instant::now();
        let cfg = RelayConfig {
            latency: Duration::from_millis(120),
            buffer_packets: 64,
            idle_timeout: Duration::from_secs(5),
            max_connections: 16,
            max_viewers_per_stream: 8,
            per_address: AddressLimits {
                max_connections: 8,
                handshakes_per_sec: 20,
            },
            session_ttl: Duration::from_secs(300),
            key_secret: None,
            wall_clock: WallClock {
                at: now,
                unix: Duration::from_secs(1_800_000_000),
            },
            key_schedule: KeySchedule::default(),
        };
        let streams = vec![StreamConfig {
            resource: "1".into(),
            delay_ms: 0,
            publish_passphrase: None,
            view_passphrase: None,
            pbkeylen: None,
            upstreams: vec!["upstream:9999".into()],
            pull_always: true,
        }];
        Harness {
            edge: Relay::new(cfg, streams, [5; 16], now),
            now,
            call: None,
            conn: None,
            cookie: 0x5eed,
        }
    }

    /// Takes what the edge sent: its handshakes name its call.
    fn drain(&mut self) {
        let Some(batch) = self.edge.poll_transmit() else {
            return;
        };
        for d in batch.iter() {
            let bytes = [d.head, d.payload].concat();
            if let Ok(Packet::Control(c)) = Packet::parse(&bytes) {
                if c.typ == ctrl::HANDSHAKE && d.dst == UPSTREAM {
                    if let Ok(hs) = Handshake::parse(c.body) {
                        self.call = Some((hs.socket_id, hs));
                    }
                }
            }
        }
    }

    fn step(&mut self, op: PullOp) {
        match op {
            PullOp::Advance { ms, ok } => {
                self.now += Duration::from_millis(ms.into());
                self.edge.handle_timeout(self.now);
                while let Some(req) = self.edge.poll_pull() {
                    let answer = ok
                        .then(|| Pulled {
                            peer: UPSTREAM,
                            key: "0123456789abcdef".into(),
                            km: None,
                        })
                        .ok_or_else(|| "refused".to_string());
                    self.edge.handle_pull(self.now, req, answer);
                }
            }
            PullOp::Datagram {
                stranger,
                to,
                mut bytes,
            } => {
                let dest = match to {
                    1 => self.call.as_ref().map(|c| c.0),
                    2 => self.conn,
                    _ => None,
                };
                if let (Some(d), true) = (dest, bytes.len() >= 16) {
                    bytes[12..16].copy_from_slice(&d.to_be_bytes());
                }
                let from = if stranger { STRANGER } else { UPSTREAM };
                self.edge.handle_datagram(self.now, from, &bytes);
            }
            PullOp::Answer => {
                let Some((id, hs)) = self.call.clone() else {
                    return;
                };
                let answer = if hs.hs_type == hs_type::INDUCTION {
                    let a = Handshake {
                        version: VERSION_5,
                        ext_field: MAGIC,
                        cookie: self.cookie,
                        ..hs.clone()
                    };
                    let mut b = Vec::new();
                    write_control(&mut b, ctrl::HANDSHAKE, 0, 0, id, &a.words());
                    b
                } else {
                    let conn = 0x4000_0000 | (self.cookie & 0xFFFF);
                    self.conn = Some(id);
                    listener::accept(&hs, conn, UPSTREAM, (120, 120), None)
                };
                self.edge.handle_datagram(self.now, UPSTREAM, &answer);
            }
        }
        self.drain();
        let s = self.edge.stats();
        let publishers = s
            .conns
            .iter()
            .filter(|c| c.mode == crate::relay::ConnMode::Publish)
            .count();
        assert!(publishers <= 1, "one upstream connection at most: {s:?}");
        let pull = s.streams[0].pull.as_ref().expect("pulled");
        assert!(
            pull.conn.is_none() || pull.state == "connected",
            "a connection only while connected: {pull:?}"
        );
    }
}

/// Runs the pull target on `data`.
pub fn pull(data: &[u8]) {
    let mut inp = Input::new(data);
    let mut h = Harness::new();
    let mut steps = 0;
    while !inp.is_empty() && steps < 2000 {
        h.step(PullOp::read(&mut inp));
        steps += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed corpus's path works: answered right, the call connects and data arrives
    /// on the connection (so the fuzzer starts from a connected pull, not a dead end).
    #[test]
    fn a_scripted_upstream_connects_and_its_data_arrives() {
        let seed = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fuzz/corpus/pull/seed-0"
        ))
        .expect("the seed");
        let mut inp = Input::new(&seed);
        let mut h = Harness::new();
        while !inp.is_empty() {
            h.step(PullOp::read(&mut inp));
        }
        let s = h.edge.stats();
        let pull = s.streams[0].pull.clone().unwrap();
        assert_eq!(pull.state, "connected", "{pull:?}");
        let c = s.conns.iter().find(|c| Some(c.id) == pull.conn).unwrap();
        assert_eq!(c.stats.data_packets_recv, 25);
    }
}
