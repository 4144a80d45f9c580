//! The NAK attacker: a proper viewer that, during each storm, NAKs its whole recent window
//! over and over, and counts what the relay sends it for that.

use super::common::{client_timers, new_socket_id, receive_control, receive_data, Common};
use super::keys::KeyPool;
use super::shared::{Shared, C};
use crate::loadgen::{Conn, Hs, ViewerCountersView, ViewerIo, BUFFER_PKTS};
use crate::soak::schedule::Schedule;
use anyhow::{Context, Result};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stsync_common::srt::{ctrl, MSG_REXMIT_FLAG};
use stsync_user::os::mmsg::RecvBatch;
use stsync_user::os::udp;
use stsync_user::srt::packet::{encode_loss, Packet};
use stsync_user::srt::receiver::Receiver;
use stsync_user::srt::seq::Seq;

pub struct AttackerCfg {
    pub common: Common,
    pub src: Ipv4Addr,
    pub storms: Schedule,
    pub nak_rate: f64,
    pub nak_ranges: u32,
    pub nak_span: u32,
}

/// A viewer that joins properly and behaves (ACKs, keepalives) except during storms, when
/// it sends `nak_rate` NAKs per second, each one datagram asking for its whole recent window
/// again. Counts what the relay sends it.
pub fn attacker_thread(cfg: AttackerCfg, keys: Arc<KeyPool>, sh: Arc<Shared>) -> Result<()> {
    let c = &cfg.common;
    // A modest receive buffer: what overflows it is dropped by the kernel, cheaply; the
    // relay's own count of what it sent is in its metrics.
    let fd_owned =
        udp::udp_socket(SocketAddrV4::new(cfg.src, 0), 4 << 20).context("attacker's socket")?;
    let fd = fd_owned.as_raw_fd();
    let mut io = ViewerIo::new(fd, Instant::now());
    let mut recv = RecvBatch::new(256);
    let mut st = ViewerCountersView::default();
    let mut conn: Option<Conn> = None;
    let mut rx: Option<Receiver> = None;
    let mut reconnect_at = Instant::now();
    let mut storm = Storm {
        on: false,
        next_nak: Instant::now(),
        every: Duration::from_secs_f64(1.0 / cfg.nak_rate.max(0.001)),
    };
    let latency = c.latency_ms;
    while !sh.stopping() {
        let now = Instant::now();
        if now >= c.hard_deadline {
            anyhow::bail!("the attacker ran past its time bound");
        }
        if conn.is_none() && now >= reconnect_at {
            match keys.take() {
                Some(key) => {
                    let mut cn = Conn::new(
                        new_socket_id(|_| false),
                        c.relay,
                        None,
                        c.sid(&key, "request"),
                        now,
                    );
                    cn.start(now, latency, fd, &mut io.tx);
                    conn = Some(cn);
                    rx = None;
                }
                None => reconnect_at = now + Duration::from_millis(100),
            }
        }
        recv.drain(fd, 64, |now, batch| {
            for d in batch.received() {
                let Some(cn) = conn.as_mut() else { continue };
                let Ok(p) = Packet::parse(d.data) else {
                    continue;
                };
                if p.dest() != cn.id || d.src != cn.relay {
                    continue;
                }
                match p {
                    Packet::Data(dp) => {
                        sh.add(C::AttackerRxBytes, d.data.len() as u64);
                        sh.add(C::AttackerRxPackets, 1);
                        if dp.msg & MSG_REXMIT_FLAG != 0 {
                            sh.add(C::AttackerRexmitPackets, 1);
                        }
                        if let Some(r) = rx.as_mut() {
                            receive_data(cn, r, &mut st, now, dp.seq, dp.payload.len(), &mut io);
                        }
                    }
                    Packet::Control(pc) if pc.typ == ctrl::HANDSHAKE => {
                        if cn.on_hs(now, pc.body, latency, fd, &mut io.tx) {
                            rx = Some(Receiver::new(cn.isn, c.latency(), BUFFER_PKTS, now));
                            sh.attacker_ids.lock().expect("ids").push(cn.peer_id);
                        }
                    }
                    Packet::Control(pc) => {
                        receive_control(cn, rx.as_mut(), now, pc.typ, pc.info, pc.body)
                    }
                }
            }
        });
        let now = Instant::now();
        if let Some(cn) = conn.as_mut() {
            match cn.state {
                Hs::Connected => {
                    let r = rx.as_mut().expect("connected");
                    client_timers(cn, r, &mut st, now, &mut io);
                    storm.pass(&cfg, &sh, cn, r, now, &mut io);
                }
                Hs::Induction | Hs::Conclusion(_) => {
                    cn.hs_timer(now, latency, fd, &mut io.tx);
                }
                Hs::Waiting => {}
                Hs::Rejected(_) | Hs::KeyRefused | Hs::TimedOut | Hs::Closed => {
                    sh.event(format!("NAK attacker: {:?}; reconnecting in 1 s", cn.state));
                    sh.add(C::AttackerReconnects, 1);
                    conn = None;
                    rx = None;
                    reconnect_at = now + Duration::from_secs(1);
                }
            }
        }
        io.tx.flush(fd);
        udp::wait_readable(&[fd], 1_000_000);
    }
    if let Some(cn) = conn.as_mut().filter(|c| c.state == Hs::Connected) {
        cn.control(Instant::now(), fd, &mut io.tx, ctrl::SHUTDOWN, 0, &[0]);
        io.tx.flush(fd);
    }
    Ok(())
}

/// When the storm NAKs go: on and off with the schedule, `nak_rate` per second while on.
struct Storm {
    on: bool,
    next_nak: Instant,
    every: Duration,
}

impl Storm {
    /// Follows the schedule and, while a storm is on, sends the NAKs due by `now` on the
    /// connection `cn`, whose receiver is `r`.
    fn pass(
        &mut self,
        cfg: &AttackerCfg,
        sh: &Shared,
        cn: &mut Conn,
        r: &Receiver,
        now: Instant,
        io: &mut ViewerIo,
    ) {
        let on = cfg.storms.active(sh.t(now)) && !sh.quiesce.load(Relaxed);
        if sh.window("NAK storm", on, &mut self.on) {
            self.next_nak = now;
        }
        if on {
            if now >= self.next_nak + Duration::from_secs(1) {
                self.next_nak = now;
            }
            // The whole window the attacker has seen, at most --nak-span.
            let seen = r.next_seq().diff(cn.isn).max(0) as u32;
            let span = cfg.nak_span.min(seen);
            while now >= self.next_nak {
                self.next_nak += self.every;
                if span == 0 {
                    continue;
                }
                let words = storm_nak(r.next_seq(), span, cfg.nak_ranges);
                cn.control(now, io.fd, &mut io.tx, ctrl::NAK, 0, &words);
                sh.add(C::NaksSent, 1);
            }
        }
    }
}

/// The loss list of one storm NAK: `ranges` contiguous ranges that together cover
/// `[next - span, next)`, i.e. the whole of a viewer's recent window in one datagram
/// (182 two-word ranges are 1456 bytes, the most one SRT control packet carries).
pub fn storm_nak(next: Seq, span: u32, ranges: u32) -> Vec<u32> {
    let ranges = ranges.clamp(1, span.max(1));
    let span = span.max(ranges);
    let base = span / ranges;
    let extra = span % ranges;
    let mut words = Vec::with_capacity(2 * ranges as usize);
    let mut first = next.sub(span);
    for r in 0..ranges {
        let len = base + u32::from(r < extra);
        let last = first.add(len - 1);
        encode_loss(&mut words, first, last);
        first = last.next();
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;
    use stsync_user::srt::packet::loss_ranges;

    #[test]
    fn storm_nak_covers_the_window_in_one_datagram() {
        for next in [100_000u32, 5, 0x7FFF_FFF0] {
            let words = storm_nak(Seq::new(next), 8192, 182);
            assert_eq!(words.len(), 364);
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
            assert_eq!(
                bytes.len(),
                1456,
                "one 1472-byte UDP payload with the header"
            );
            let ranges: Vec<(Seq, Seq)> = loss_ranges(&bytes).map(Result::unwrap).collect();
            assert_eq!(ranges.len(), 182);
            assert_eq!(ranges[0].0, Seq::new(next).sub(8192));
            assert_eq!(ranges[181].1, Seq::new(next).sub(1));
            let mut covered = 0;
            for w in ranges.windows(2) {
                assert_eq!(w[0].1.next(), w[1].0, "contiguous");
            }
            for (a, b) in &ranges {
                covered += b.diff(*a) + 1;
            }
            assert_eq!(covered, 8192);
        }
    }
}
