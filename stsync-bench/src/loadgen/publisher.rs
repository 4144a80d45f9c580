//! The publisher: a paced stream of numbered, timestamped payloads over one SRT
//! connection, answering ACKs and NAKs (retransmitting from a ring) on a thread of its own.

use super::conn::{rand_u32, Conn, Hs, KEEPALIVE};
use super::crypto::Crypto;
use super::opts::Media;
use crate::caller;
use crate::report::PublisherReport;
use anyhow::{bail, Result};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stsync_common::srt::{ctrl, MSG_REXMIT_FLAG};
use stsync_user::os::mmsg::{RecvBatch, SendBatch};
use stsync_user::os::udp;
use stsync_user::srt::packet::{loss_ranges, write_data, Ack, Packet};
use stsync_user::srt::seq::Seq;

/// Packets kept for retransmission.
const RING: usize = 8192;

#[derive(Clone, Copy, Default)]
struct Sent {
    seq: u32,
    index: u64,
    sent_ns: u64,
    ts: u32,
    msg: u32,
}

/// What the viewers' loop and the publisher's thread share.
#[derive(Default)]
pub(crate) struct PubShared {
    /// Set once the publisher is connected and pacing.
    pub(crate) publishing: AtomicBool,
    /// Index of the next packet the publisher will send: the window's edges.
    pub(crate) next_index: AtomicU64,
    /// Set by the viewers' loop: close and return.
    pub(crate) stop: AtomicBool,
    /// The publisher thread's TID (its CPU is sampled apart).
    pub(crate) tid: AtomicU32,
}

pub(crate) struct Publisher {
    conn: Conn,
    fd: OwnedFd,
    tx: SendBatch,
    ring: Vec<Sent>,
    next_seq: Seq,
    next_index: u64,
    msgno: u32,
    /// Pacing: packet k of the current run is due at pace_start + k * interval.
    pace_start: Instant,
    pace_k: u64,
    interval: Duration,
    publishing: bool,
    stats: PublisherReport,
    shared: Arc<PubShared>,
}

impl Publisher {
    /// From now on the publisher encrypts (its conclusion carries these keys' KMREQ).
    pub(crate) fn encrypt(&mut self, c: Crypto) {
        self.conn.crypto = Some(Box::new(c));
    }

    fn next_due(&self) -> Instant {
        self.pace_start + self.interval.mul_f64(self.pace_k as f64)
    }

    fn tick(&mut self, now: Instant, now_ns: u64, payload: usize) {
        let fd = self.fd.as_raw_fd();
        if self.conn.state != Hs::Connected {
            return;
        }
        if self.publishing {
            if now.saturating_duration_since(self.next_due()) > Duration::from_millis(200) {
                // The generator stalled: restart pacing instead of bursting (counted).
                self.stats.pace_resets += 1;
                self.pace_start = now;
                self.pace_k = 0;
            }
            let mut n = 0;
            while self.next_due() <= now && n < 256 {
                self.send_new(now, now_ns, payload);
                self.pace_k += 1;
                n += 1;
            }
        } else if now >= self.conn.last_sent + KEEPALIVE {
            self.conn
                .control(now, fd, &mut self.tx, ctrl::KEEPALIVE, 0, &[0]);
        }
    }

    fn send_new(&mut self, now: Instant, now_ns: u64, payload: usize) {
        let s = Sent {
            seq: self.next_seq.get(),
            index: self.next_index,
            sent_ns: now_ns,
            ts: self.conn.ts(now),
            // Solo packet (PP = 11), in order flag clear, message number.
            msg: 0xC000_0000 | (self.msgno & stsync_common::srt::MSGNO_MASK),
        };
        self.ring[s.seq as usize % RING] = s;
        self.next_seq = self.next_seq.next();
        self.next_index += 1;
        self.shared
            .next_index
            .store(self.next_index, Ordering::Release);
        self.msgno = (self.msgno + 1) & stsync_common::srt::MSGNO_MASK;
        if self.msgno == 0 {
            self.msgno = 1;
        }
        self.emit(s, false, payload);
        self.stats.sent += 1;
        self.conn.last_sent = now;
    }

    fn emit(&mut self, s: Sent, rexmit: bool, payload: usize) {
        let dest = self.conn.peer_id;
        let msg = if rexmit {
            s.msg | MSG_REXMIT_FLAG
        } else {
            s.msg
        };
        let crypto = self.conn.crypto.as_deref();
        self.tx
            .push(self.fd.as_raw_fd(), self.conn.relay, None, |out| {
                let start = out.len();
                write_data(out, Seq::new(s.seq), msg, s.ts, dest, &[]);
                caller::write_payload(out, payload, s.index, s.sent_ns);
                if let Some(c) = crypto {
                    // A retransmission is sealed again to the same ciphertext (same seq).
                    let body = start + stsync_common::srt::HEADER_LEN;
                    let kk = c.seal(Seq::new(s.seq), &mut out[body..]);
                    out[start + 4..start + 8].copy_from_slice(&(msg | kk).to_be_bytes());
                }
            });
    }

    fn on_datagram(&mut self, now: Instant, buf: &[u8], latency: u16, payload: usize) {
        let fd = self.fd.as_raw_fd();
        let Ok(Packet::Control(c)) = Packet::parse(buf) else {
            self.stats.unexpected += 1;
            return;
        };
        if c.dest != self.conn.id {
            self.stats.unexpected += 1;
            return;
        }
        match c.typ {
            ctrl::HANDSHAKE => {
                if self.conn.on_hs(now, c.body, latency, fd, &mut self.tx) {
                    self.next_seq = self.conn.isn;
                }
            }
            ctrl::ACK => {
                if let Ok(ack) = Ack::parse(c.body) {
                    if ack.full.is_some() {
                        self.stats.acks_full += 1;
                        self.conn
                            .control(now, fd, &mut self.tx, ctrl::ACKACK, c.info, &[0]);
                        if let Some(f) = ack.full {
                            self.stats.rtt_us = f.rtt_us;
                        }
                    } else {
                        self.stats.acks_light += 1;
                    }
                }
            }
            ctrl::NAK => {
                self.stats.naks += 1;
                for r in loss_ranges(c.body) {
                    let Ok((first, last)) = r else { break };
                    let count = last.diff(first);
                    if !(0..RING as i32).contains(&count) {
                        continue;
                    }
                    let mut missing = false;
                    for k in 0..=count as u32 {
                        let seq = first.add(k);
                        let s = self.ring[seq.get() as usize % RING];
                        if s.seq == seq.get() && seq.lt(self.next_seq) && s.sent_ns != 0 {
                            self.emit(s, true, payload);
                            self.stats.retransmitted += 1;
                        } else {
                            missing = true;
                        }
                    }
                    if missing {
                        self.stats.dropreqs += 1;
                        self.conn.control(
                            now,
                            fd,
                            &mut self.tx,
                            ctrl::DROPREQ,
                            0,
                            &[first.get(), last.get()],
                        );
                    }
                }
                self.conn.last_sent = now;
            }
            ctrl::SHUTDOWN => self.conn.state = Hs::Closed,
            ctrl::KEEPALIVE | ctrl::ACKACK => {}
            _ => self.stats.unexpected += 1,
        }
    }
}

/// A publisher not yet started: it will connect to `relay` with stream ID `sid` from `fd`,
/// then pace `media`'s packets, whose payload indices start at `first_index`. Returns it
/// with what its thread shares.
pub(crate) fn new_publisher(
    fd: OwnedFd,
    relay: SocketAddr,
    sid: String,
    media: &Media,
    first_index: u64,
    now: Instant,
) -> (Publisher, Arc<PubShared>) {
    let shared = Arc::new(PubShared::default());
    shared.next_index.store(first_index, Ordering::Release);
    let publ = Publisher {
        conn: Conn::new(rand_u32() | 1, relay, None, sid, now),
        fd,
        tx: SendBatch::new(),
        ring: vec![Sent::default(); RING],
        next_seq: Seq::new(0),
        next_index: first_index,
        msgno: 1,
        pace_start: now,
        pace_k: 0,
        interval: Duration::from_secs_f64(1.0 / media.pkts_per_sec()),
        publishing: false,
        stats: PublisherReport::default(),
        shared: shared.clone(),
    };
    (publ, shared)
}

/// What the publisher's thread returns: its counters, its send batch (syscall and datagram
/// counts) and its receive syscalls.
pub(crate) type PublisherOutcome = Result<(PublisherReport, SendBatch, u64)>;

/// Runs `publ` on a thread of its own until its `stop` flag is set (or `deadline` passes,
/// which is an error); `ns_of` maps an instant to the CLOCK_MONOTONIC ns put in payloads.
pub(crate) fn spawn_publisher(
    publ: Publisher,
    latency: u16,
    payload: usize,
    ns_of: impl Fn(Instant) -> u64 + Send + 'static,
    deadline: Instant,
) -> std::io::Result<std::thread::JoinHandle<PublisherOutcome>> {
    std::thread::Builder::new()
        .name("publisher".into())
        .spawn(move || publisher_loop(publ, latency, payload, ns_of, deadline))
}

/// The publisher's own loop: connect, pace, answer ACKs and NAKs, until told to stop.
fn publisher_loop(
    mut publ: Publisher,
    latency: u16,
    payload: usize,
    ns_of: impl Fn(Instant) -> u64,
    deadline: Instant,
) -> PublisherOutcome {
    // SAFETY: gettid has no preconditions.
    publ.shared
        .tid
        .store(unsafe { libc::gettid() } as u32, Ordering::Release);
    let fd = publ.fd.as_raw_fd();
    let mut recv = RecvBatch::new(64);
    let now = Instant::now();
    publ.conn.start(now, latency, fd, &mut publ.tx);
    publ.tx.flush(fd);
    while !publ.shared.stop.load(Ordering::Acquire) {
        let now = Instant::now();
        if now >= deadline {
            bail!("the publisher ran past its time bound");
        }
        match publ.conn.state {
            Hs::Connected if !publ.publishing => {
                publ.publishing = true;
                publ.pace_start = now;
                publ.pace_k = 0;
                publ.shared.publishing.store(true, Ordering::Release);
            }
            Hs::Rejected(code) => bail!("publisher rejected: handshake code {code}"),
            Hs::KeyRefused => bail!("publisher accepted without its keying material (KMRSP)"),
            Hs::TimedOut => bail!(
                "publisher handshake timed out (no answer from {})",
                publ.conn.relay
            ),
            Hs::Closed => bail!("relay closed the publisher"),
            _ => {}
        }
        recv.drain(fd, 16, |now, batch| {
            for d in batch.received() {
                publ.on_datagram(now, d.data, latency, payload);
            }
        });
        let now = Instant::now();
        publ.tick(now, ns_of(now), payload);
        let mut wake = now + Duration::from_millis(5);
        if publ.publishing {
            wake = wake.min(publ.next_due());
        } else if let Some(d) = publ.conn.hs_timer(now, latency, fd, &mut publ.tx) {
            wake = wake.min(d);
        }
        publ.tx.flush(fd);
        let timeout = wake.saturating_duration_since(Instant::now());
        if !timeout.is_zero() {
            udp::wait_readable(&[fd], timeout.as_nanos() as u64);
        }
    }
    if publ.conn.state == Hs::Connected {
        publ.conn
            .control(Instant::now(), fd, &mut publ.tx, ctrl::SHUTDOWN, 0, &[0]);
        publ.tx.flush(fd);
    }
    Ok((publ.stats, publ.tx, recv.syscalls))
}
