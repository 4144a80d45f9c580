//! The hostile sender: garbage datagrams, spoofed and malformed control packets for live
//! connections (from the wrong address), and the handshake flood (`flood`), on one thread.

use super::common::Common;
use super::flood::{catch_up, Flood};
use super::rng::Rng;
use super::shared::{Shared, C};
use crate::soak::schedule::Schedule;
use anyhow::{Context, Result};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stsync_common::srt::ctrl;
use stsync_user::os::mmsg::SendBatch;
use stsync_user::os::udp;
use stsync_user::srt::packet::{write_control, write_data};
use stsync_user::srt::seq::Seq;

pub struct HostileCfg {
    pub common: Common,
    /// Source of garbage and spoofed packets.
    pub garbage_src: Ipv4Addr,
    pub garbage_rate: f64,
    pub spoof_rate: f64,
    /// The one address the handshake flood comes from.
    pub flood_src: Ipv4Addr,
    pub flood: Schedule,
    /// Handshake attempts (induction, then conclusion on the cookie) per second.
    pub flood_rate: f64,
}

/// One datagram of garbage: random bytes, a truncated header, unknown control types, data
/// for sockets that do not exist, oversized datagrams, malformed handshakes.
pub fn garbage(rng: &mut Rng, out: &mut Vec<u8>) {
    out.clear();
    match rng.below(0, 6) {
        0 => {
            out.resize(rng.below(0, 1500) as usize, 0);
            rng.fill(out);
        }
        1 => {
            out.resize(rng.below(0, 16) as usize, 0);
            rng.fill(out);
        }
        2 => {
            let typ = [0x1234u16, 0x7FFE, 9, 10, 0x4000][rng.below(0, 5) as usize];
            let dst = if rng.unit() < 0.5 { 0 } else { rng.next_u32() };
            write_control(out, typ, rng.next_u32(), 0, dst, &[0, 0, 0, 0]);
        }
        3 => {
            let mut p = vec![0u8; 1316];
            rng.fill(&mut p);
            let seq = Seq::new(rng.next_u32());
            write_data(
                out,
                seq,
                0xC000_0001,
                rng.next_u32(),
                rng.next_u32() | 1,
                &p,
            );
        }
        4 => {
            out.resize(rng.below(2000, 9000) as usize, 0);
            rng.fill(out);
        }
        _ => {
            // A handshake with a short or random body, to socket 0 (the listener).
            let n = rng.below(0, 20) as usize;
            let body: Vec<u32> = (0..n).map(|_| rng.next_u32()).collect();
            write_control(out, ctrl::HANDSHAKE, 0, 0, 0, &body);
        }
    }
}

/// One control (or data) packet for a live connection `dst`, sent from the wrong address:
/// none of them may disturb that connection.
pub fn spoof(rng: &mut Rng, dst: u32, out: &mut Vec<u8>) {
    out.clear();
    let s = rng.next_u32() & 0x7FFF_FFFF;
    match rng.below(0, 9) {
        0 => write_control(out, ctrl::SHUTDOWN, 0, 0, dst, &[0]),
        1 => write_control(out, ctrl::KEEPALIVE, 0, 0, dst, &[0]),
        // A NAK for a range it might hold, a reversed one and a lone range start.
        2 => write_control(
            out,
            ctrl::NAK,
            0,
            0,
            dst,
            &[s | 0x8000_0000, s.wrapping_add(100) & 0x7FFF_FFFF],
        ),
        3 => write_control(
            out,
            ctrl::NAK,
            0,
            0,
            dst,
            &[(s + 5) | 0x8000_0000, s, 0xFFFF_FFFF],
        ),
        4 => {
            // ACK truncated to one word.
            write_control(out, ctrl::ACK, 1, 0, dst, &[s]);
        }
        5 => write_control(
            out,
            ctrl::ACK,
            7,
            0,
            dst,
            &[s, 1000, 100, 8192, 380, 500_000, 380],
        ),
        6 => write_control(out, ctrl::ACKACK, rng.next_u32(), 0, dst, &[0]),
        7 => write_control(
            out,
            ctrl::DROPREQ,
            0,
            0,
            dst,
            &[s, s.wrapping_add(1000) & 0x7FFF_FFFF],
        ),
        _ => {
            let mut p = vec![0x47u8; 1316];
            rng.fill(&mut p[1..]);
            write_data(out, Seq::new(s), 0xC000_0001, 0, dst, &p);
        }
    }
}

pub fn hostile_thread(cfg: HostileCfg, sh: Arc<Shared>) -> Result<()> {
    let c = &cfg.common;
    let g_owned = udp::udp_socket(SocketAddrV4::new(cfg.garbage_src, 0), 1 << 20)
        .context("garbage socket")?;
    let f_owned =
        udp::udp_socket(SocketAddrV4::new(cfg.flood_src, 0), 4 << 20).context("flood socket")?;
    let gfd = g_owned.as_raw_fd();
    let mut gtx = SendBatch::new();
    let mut rng = Rng::new(c.seed ^ 0x686f_7374);
    let mut buf = Vec::with_capacity(9000);
    let start = Instant::now();
    let every = |rate: f64| (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
    let (g_every, s_every) = (every(cfg.garbage_rate), every(cfg.spoof_rate));
    let mut flood = Flood::new(f_owned.as_raw_fd(), cfg.flood, every(cfg.flood_rate), start);
    let (mut next_g, mut next_s) = (start, start);
    let mut live: Vec<u32> = Vec::new();
    let mut next_live = start;
    while !sh.stopping() {
        let now = Instant::now();
        if now >= c.hard_deadline {
            anyhow::bail!("the hostile sender ran past its time bound");
        }
        let quiesce = sh.quiesce.load(Relaxed);
        if now >= next_live {
            next_live = now + Duration::from_millis(500);
            live.clone_from(&sh.live_ids.lock().expect("ids"));
        }
        if let (Some(e), false) = (g_every, quiesce) {
            catch_up(now, &mut next_g);
            while now >= next_g {
                next_g += e;
                garbage(&mut rng, &mut buf);
                gtx.push(gfd, c.relay, None, |o| o.extend_from_slice(&buf));
                sh.add(C::GarbageSent, 1);
            }
        }
        if let (Some(e), false) = (s_every, quiesce) {
            catch_up(now, &mut next_s);
            while now >= next_s {
                next_s += e;
                if live.is_empty() {
                    continue;
                }
                let dst = live[rng.below(0, live.len() as u64) as usize];
                spoof(&mut rng, dst, &mut buf);
                gtx.push(gfd, c.relay, None, |o| o.extend_from_slice(&buf));
                sh.add(C::SpoofSent, 1);
            }
        }
        flood.send(now, quiesce, c, &sh, &mut rng);
        flood.answer(c, &sh, &mut rng);
        flood.give_up(now, &sh);
        gtx.flush(gfd);
        flood.flush();
        flood.wait();
    }
    Ok(())
}
