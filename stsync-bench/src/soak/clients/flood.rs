//! The handshake flood: bursts of handshakes from one address during the flood windows,
//! each concluded on its cookie with a stream ID the relay must refuse.

use super::common::{new_socket_id, Common};
use super::rng::Rng;
use super::shared::{Shared, C};
use crate::caller::{self, HsAnswer};
use crate::soak::schedule::Schedule;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};
use stsync_common::srt::ctrl;
use stsync_user::os::mmsg::{RecvBatch, SendBatch};
use stsync_user::os::udp;
use stsync_user::srt::packet::{write_control, Packet};
use stsync_user::srt::seq::Seq;

/// A sender that fell more than a second behind (a stall) starts again from `now` rather
/// than bursting.
pub fn catch_up(now: Instant, next: &mut Instant) {
    if now >= *next + Duration::from_secs(1) {
        *next = now;
    }
}

/// The flood's socket, its schedule and the attempts waiting for an answer.
pub struct Flood {
    fd: RawFd,
    tx: SendBatch,
    recv: RecvBatch,
    schedule: Schedule,
    /// Time between two attempts (None: no flood).
    every: Option<Duration>,
    next: Instant,
    /// Flood attempts waiting for an answer: our socket ID -> when.
    pending: HashMap<u32, Instant>,
    flooding: bool,
}

impl Flood {
    pub fn new(fd: RawFd, schedule: Schedule, every: Option<Duration>, start: Instant) -> Flood {
        Flood {
            fd,
            tx: SendBatch::new(),
            recv: RecvBatch::new(256),
            schedule,
            every,
            next: start,
            pending: HashMap::new(),
            flooding: false,
        }
    }

    /// Follows the schedule and, while a flood is on, starts the handshakes due by `now`.
    pub fn send(&mut self, now: Instant, quiesce: bool, c: &Common, sh: &Shared, rng: &mut Rng) {
        let relay = SocketAddr::V4(c.relay);
        let on = self.schedule.active(sh.t(now)) && !quiesce;
        if sh.window("handshake flood", on, &mut self.flooding) {
            self.next = now;
        }
        if let (Some(e), true) = (self.every, on) {
            catch_up(now, &mut self.next);
            while now >= self.next {
                self.next += e;
                let id = new_socket_id(|x| self.pending.contains_key(&x));
                self.pending.insert(id, now);
                self.tx.push(self.fd, c.relay, None, |o| {
                    caller::induction(o, id, Seq::new(rng.next_u32() & 0x7FFF_FFFF), 0, relay)
                });
                sh.add(C::FloodAttempts, 1);
            }
        }
    }

    /// Answers to the flood: conclude on every cookie with a stream ID the relay must
    /// refuse (unknown key, malformed ID, unknown resource), like a client that keeps
    /// reconnecting after each rejection.
    pub fn answer(&mut self, c: &Common, sh: &Shared, rng: &mut Rng) {
        let latency = c.latency_ms;
        let relay = SocketAddr::V4(c.relay);
        let (fd, tx, pending) = (self.fd, &mut self.tx, &mut self.pending);
        self.recv.drain(fd, 16, |_, batch| {
            for d in batch.received() {
                let Ok(Packet::Control(pc)) = Packet::parse(d.data) else {
                    continue;
                };
                if pc.typ != ctrl::HANDSHAKE || !pending.contains_key(&pc.dest) {
                    continue;
                }
                match caller::answer(pc.body) {
                    HsAnswer::Cookie(cookie) => {
                        sh.add(C::FloodCookies, 1);
                        let key = format!("{:016x}", rng.next_u64());
                        let sid = match rng.below(0, 3) {
                            0 => c.sid(&key, "request"),
                            1 => "#!::r=1,garbage".to_string(),
                            _ => caller::stream_id(&c.sid_template, "dead", &key, "request"),
                        };
                        let id = pc.dest;
                        tx.push(fd, c.relay, None, |o| {
                            caller::conclusion(
                                o,
                                id,
                                Seq::new(rng.next_u32() & 0x7FFF_FFFF),
                                0,
                                relay,
                                cookie,
                                latency,
                                sid.as_bytes(),
                                None,
                            )
                        });
                    }
                    HsAnswer::Rejected(code) => {
                        pending.remove(&pc.dest);
                        sh.add(C::FloodRejected, 1);
                        *sh.flood_codes
                            .lock()
                            .expect("codes")
                            .entry(code)
                            .or_default() += 1;
                    }
                    HsAnswer::Accepted(peer) => {
                        pending.remove(&pc.dest);
                        sh.add(C::FloodAccepted, 1);
                        tx.push(fd, c.relay, None, |o| {
                            write_control(o, ctrl::SHUTDOWN, 0, 0, peer, &[0])
                        });
                    }
                    HsAnswer::Other => {}
                }
            }
        });
    }

    /// Attempts unanswered for 2 s are counted and forgotten.
    pub fn give_up(&mut self, now: Instant, sh: &Shared) {
        let before = self.pending.len();
        self.pending
            .retain(|_, t| now.saturating_duration_since(*t) < Duration::from_secs(2));
        sh.add(C::FloodUnanswered, (before - self.pending.len()) as u64);
    }

    pub fn flush(&mut self) {
        self.tx.flush(self.fd);
    }

    /// Sleeps until the flood's socket has something, 1 s at most.
    pub fn wait(&self) {
        udp::wait_readable(&[self.fd], 1_000_000);
    }
}
