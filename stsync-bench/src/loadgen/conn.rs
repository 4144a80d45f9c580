//! The caller side of an SRT connection (HSv5 induction and conclusion, retries, control
//! packets), shared by the publisher and the viewers.

use super::crypto::Crypto;
use crate::caller::{self, HsAnswer};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};
use stsync_common::srt::ctrl::USER_DEFINED;
use stsync_user::os::mmsg::SendBatch;
use stsync_user::srt::packet::write_control;
use stsync_user::srt::seq::Seq;

pub(crate) const HS_RETRY: Duration = Duration::from_millis(250);
const HS_TIMEOUT: Duration = Duration::from_secs(5);
pub(crate) const KEEPALIVE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hs {
    Waiting,
    Induction,
    Conclusion(u32),
    Connected,
    Rejected(u32),
    /// Accepted, but the answer's KMRSP is missing or is not our KMREQ.
    KeyRefused,
    TimedOut,
    Closed,
}

/// Caller handshake state shared by the publisher and the viewers.
pub(crate) struct Conn {
    pub(crate) id: u32,
    pub(crate) peer_id: u32,
    pub(crate) relay: SocketAddr,
    pub(crate) src: Option<IpAddr>,
    pub(crate) isn: Seq,
    sid: String,
    pub(crate) state: Hs,
    clock0: Instant,
    hs_deadline: Instant,
    pub(crate) last_sent: Instant,
    /// An encrypting caller's keys (its conclusion carries their KMREQ).
    pub(crate) crypto: Option<Box<Crypto>>,
}

impl Conn {
    pub(crate) fn new(
        id: u32,
        relay: impl Into<SocketAddr>,
        src: Option<IpAddr>,
        sid: String,
        now: Instant,
    ) -> Self {
        Conn {
            id,
            peer_id: 0,
            relay: relay.into(),
            src,
            isn: Seq::new(rand_u32()),
            sid,
            state: Hs::Waiting,
            clock0: now,
            hs_deadline: now,
            last_sent: now,
            crypto: None,
        }
    }

    pub(crate) fn ts(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.clock0).as_micros() as u32
    }

    pub(crate) fn start(&mut self, now: Instant, latency: u16, fd: RawFd, tx: &mut SendBatch) {
        self.clock0 = now;
        self.state = Hs::Induction;
        self.hs_deadline = now + HS_TIMEOUT;
        self.send_hs(now, latency, fd, tx);
    }

    fn send_hs(&mut self, now: Instant, latency: u16, fd: RawFd, tx: &mut SendBatch) {
        let ts = self.ts(now);
        let peer = self.relay;
        match self.state {
            Hs::Induction => tx.push(fd, self.relay, self.src, |out| {
                caller::induction(out, self.id, self.isn, ts, peer)
            }),
            Hs::Conclusion(cookie) => tx.push(fd, self.relay, self.src, |out| {
                caller::conclusion(
                    out,
                    self.id,
                    self.isn,
                    ts,
                    peer,
                    cookie,
                    latency,
                    self.sid.as_bytes(),
                    self.crypto.as_ref().map(|c| &c.km[..]),
                )
            }),
            _ => return,
        }
        self.last_sent = now;
    }

    /// Handles a handshake answer; true when it completed the connection.
    pub(crate) fn on_hs(
        &mut self,
        now: Instant,
        body: &[u8],
        latency: u16,
        fd: RawFd,
        tx: &mut SendBatch,
    ) -> bool {
        match (caller::answer(body), self.state) {
            (HsAnswer::Cookie(c), Hs::Induction) => {
                self.state = Hs::Conclusion(c);
                self.send_hs(now, latency, fd, tx);
                false
            }
            (HsAnswer::Accepted(peer), Hs::Conclusion(_)) => {
                self.peer_id = peer;
                // An encrypting caller needs its keying material back (libsrt's KMRSP);
                // a clear one must not get any.
                let want = self.crypto.as_ref().map(|c| &c.km[..]);
                if caller::kmrsp(body) != want {
                    self.state = Hs::KeyRefused;
                    return false;
                }
                self.state = Hs::Connected;
                true
            }
            (HsAnswer::Rejected(code), Hs::Induction | Hs::Conclusion(_)) => {
                self.state = Hs::Rejected(code);
                false
            }
            _ => false,
        }
    }

    /// Handshake retries and give-up; returns the next due time while handshaking.
    pub(crate) fn hs_timer(
        &mut self,
        now: Instant,
        latency: u16,
        fd: RawFd,
        tx: &mut SendBatch,
    ) -> Option<Instant> {
        match self.state {
            Hs::Induction | Hs::Conclusion(_) => {
                if now >= self.hs_deadline {
                    self.state = Hs::TimedOut;
                    return None;
                }
                if now >= self.last_sent + HS_RETRY {
                    self.send_hs(now, latency, fd, tx);
                }
                Some(self.last_sent + HS_RETRY)
            }
            _ => None,
        }
    }

    /// Sends an extended control message (type 0x7FFF) of `subtype`.
    pub(crate) fn control_ext(
        &mut self,
        now: Instant,
        fd: RawFd,
        tx: &mut SendBatch,
        subtype: u16,
        body: &[u32],
    ) {
        let ts = self.ts(now);
        let dest = self.peer_id;
        tx.push(fd, self.relay, self.src, |out| {
            let start = out.len();
            write_control(out, USER_DEFINED, 0, ts, dest, body);
            // The subtype is the first word's low half.
            out[start + 2..start + 4].copy_from_slice(&subtype.to_be_bytes());
        });
        self.last_sent = now;
    }

    pub(crate) fn control(
        &mut self,
        now: Instant,
        fd: RawFd,
        tx: &mut SendBatch,
        typ: u16,
        info: u32,
        body: &[u32],
    ) {
        let ts = self.ts(now);
        let dest = self.peer_id;
        tx.push(fd, self.relay, self.src, |out| {
            write_control(out, typ, info, ts, dest, body)
        });
        self.last_sent = now;
    }
}

pub(crate) fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom into a 4-byte buffer.
    unsafe { libc::getrandom(b.as_mut_ptr() as *mut _, 4, 0) };
    u32::from_ne_bytes(b)
}
