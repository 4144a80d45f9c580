//! The viewers' thread: the honest viewers (`honest`) and the churn (`churn`) on one UDP
//! socket, each from its own source address; what arrives goes to its viewer by SRT socket
//! ID, and each connected viewer ACKs, NAKs and keeps alive like a player.

use super::churn::{self, Churn};
use super::common::{client_timers, receive_control, receive_data, Common};
use super::honest::{EvalRequest, Honest};
use super::keys::KeyPool;
use super::shared::{Shared, C};
use super::viewer::{Life, Pool, Role};
use crate::caller;
use crate::loadgen::{Hs, ViewerIo, BUFFER_PKTS};
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use stsync_common::srt::ctrl;
use stsync_user::os::mmsg::RecvBatch;
use stsync_user::os::{clock, udp};
use stsync_user::srt::packet::Packet;
use stsync_user::srt::receiver::{Arrival, Receiver};

pub struct ViewersCfg {
    pub common: Common,
    pub honest: u32,
    /// Source address of honest viewer 0 (viewer i: + i).
    pub honest_ip: Ipv4Addr,
    /// Churn viewers take source addresses from here on, `churn_ips` of them, in turn.
    pub churn_ip: Ipv4Addr,
    pub churn_ips: u32,
    /// Joins per second (0: none).
    pub churn_rate: f64,
    /// Each churn viewer stays connected this long (uniform, seconds)...
    pub churn_life: (f64, f64),
    /// ...then dies without a word with this probability, else leaves with SHUTDOWN.
    pub churn_silent: f64,
    /// Payload indices each honest viewer remembers (a few sample intervals' worth).
    pub ring: usize,
}

/// The viewers' thread's state.
struct Viewers<'a> {
    c: &'a Common,
    sh: &'a Shared,
    pool: Pool,
    recv: RecvBatch,
    honest: Honest,
    churn: Churn,
    /// A packet later than this (the latency) is not on time.
    late_ns: u64,
    next_gauges: Instant,
    gone: Vec<u32>,
}

pub fn viewers_thread(
    cfg: ViewersCfg,
    keys: Arc<KeyPool>,
    sh: Arc<Shared>,
    evals: mpsc::Receiver<EvalRequest>,
) -> Result<()> {
    let c = &cfg.common;
    let fd_owned = udp::udp_socket(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0), 64 << 20)
        .context("viewers' socket")?;
    let fd = fd_owned.as_raw_fd();
    let mut vs = Viewers {
        c,
        sh: &sh,
        pool: Pool {
            map: HashMap::new(),
            io: ViewerIo::new(fd, Instant::now()),
        },
        recv: RecvBatch::new(256),
        honest: Honest::new(cfg.honest, cfg.ring, cfg.honest_ip, sh.t0),
        churn: Churn::new(
            cfg.churn_rate,
            cfg.churn_ip,
            cfg.churn_ips,
            cfg.churn_life,
            cfg.churn_silent,
            c.seed,
            sh.t0,
        ),
        late_ns: u64::from(c.latency_ms) * 1_000_000,
        next_gauges: Instant::now(),
        gone: Vec::new(),
    };

    while !sh.stopping() {
        let now = Instant::now();
        if now >= c.hard_deadline {
            anyhow::bail!("the viewers ran past their time bound");
        }
        let quiesce = sh.quiesce.load(Relaxed);

        // The sampler's questions.
        while let Ok(req) = evals.try_recv() {
            let _ = req.reply.send(vs.honest.answer(&req, &vs.pool.map));
        }

        // Honest viewers (re)connect.
        vs.honest.reconnect(now, &mut vs.pool, &keys, &sh, c);

        // Churn joins.
        vs.churn.join(now, quiesce, &mut vs.pool, &keys, &sh, c);

        // Receive.
        vs.receive();

        // Timers, leaves, deaths.
        let now = Instant::now();
        vs.timers(now, quiesce);
        vs.pool.io.tx.flush(fd);

        if now >= vs.next_gauges {
            vs.next_gauges = now + Duration::from_millis(500);
            vs.gauges();
        }
        udp::wait_readable(&[fd], 1_000_000);
    }
    vs.close();
    Ok(())
}

impl Viewers<'_> {
    /// Receive: every datagram to its viewer; data to its receiver (and, for an honest
    /// viewer, to its delivery record), handshakes and control packets to its connection.
    fn receive(&mut self) {
        let (c, sh, late_ns) = (self.c, self.sh, self.late_ns);
        let latency = c.latency_ms;
        let fd = self.pool.io.fd;
        let (map, io) = (&mut self.pool.map, &mut self.pool.io);
        let (honest, churn) = (&mut self.honest, &mut self.churn);
        self.recv.drain(fd, 64, |now, batch| {
            io.refresh_rt_offset(now);
            let now_ns = clock::monotonic_ns();
            for d in batch.received() {
                let len = d.data.len() as u64;
                let Ok(p) = Packet::parse(d.data) else {
                    sh.add(C::Stray, 1);
                    continue;
                };
                let Some(v) = map.get_mut(&p.dest()) else {
                    sh.add(C::Stray, 1);
                    continue;
                };
                if d.src != v.conn.relay {
                    sh.add(C::WrongSource, 1);
                    continue;
                }
                match v.life {
                    Life::Active => {}
                    Life::Dead(..) => {
                        sh.add(C::ToDeadBytes, len);
                        v.last_rx = now;
                        continue;
                    }
                    Life::Left(_) => continue,
                }
                match p {
                    Packet::Data(dp) => {
                        if let Role::Honest(_) = v.role {
                            sh.add(C::HonestRxBytes, len);
                            sh.add(C::HonestRxPackets, 1);
                        }
                        let Some(rx) = v.rx.as_mut() else { continue };
                        let a = receive_data(
                            &mut v.conn,
                            rx,
                            &mut v.st,
                            now,
                            dp.seq,
                            dp.payload.len(),
                            io,
                        );
                        if let (Role::Honest(h), false) = (v.role, a == Arrival::Duplicate) {
                            if let Some((index, sent_ns)) = caller::read_payload(dp.payload) {
                                let rx_ns = d
                                    .rx_realtime_ns
                                    .map_or(now_ns, |t| (t as i64 - io.rt_offset) as u64);
                                let on_time = rx_ns.saturating_sub(sent_ns) <= late_ns;
                                honest.record(h, index, on_time);
                            }
                        }
                    }
                    Packet::Control(pc) => {
                        if pc.typ == ctrl::HANDSHAKE {
                            if v.conn.on_hs(now, pc.body, latency, fd, &mut io.tx) {
                                v.rx =
                                    Some(Receiver::new(v.conn.isn, c.latency(), BUFFER_PKTS, now));
                                match v.role {
                                    Role::Honest(h) => honest.connected(h),
                                    Role::Churn => churn.connected(v, now),
                                }
                            }
                        } else {
                            receive_control(
                                &mut v.conn,
                                v.rx.as_mut(),
                                now,
                                pc.typ,
                                pc.info,
                                pc.body,
                            );
                        }
                    }
                }
            }
        });
    }

    /// Timers, leaves, deaths: each viewer's ACKs, NAKs and keepalives, churn viewers that
    /// go, and connections that ended (an honest viewer then reconnects).
    fn timers(&mut self, now: Instant, quiesce: bool) {
        let sh = self.sh;
        let latency = self.c.latency_ms;
        let io = &mut self.pool.io;
        let fd = io.fd;
        for (id, v) in self.pool.map.iter_mut() {
            if let Some(forget) = churn::ended(v, now, sh) {
                if forget {
                    self.gone.push(*id);
                }
                continue;
            }
            match v.conn.state {
                Hs::Connected => {
                    if !quiesce && churn::leave_if_due(v, now, sh, io) {
                        continue;
                    }
                    let rx = v.rx.as_mut().expect("connected viewers have a receiver");
                    client_timers(&mut v.conn, rx, &mut v.st, now, io);
                }
                Hs::Induction | Hs::Conclusion(_) => {
                    v.conn.hs_timer(now, latency, fd, &mut io.tx);
                }
                Hs::Waiting => {}
                Hs::Rejected(_) | Hs::KeyRefused | Hs::TimedOut | Hs::Closed => {
                    let what = match v.conn.state {
                        Hs::Rejected(code) => format!("rejected {code}"),
                        Hs::TimedOut => "handshake timed out".to_string(),
                        _ => "closed by the relay".to_string(),
                    };
                    match v.role {
                        Role::Honest(h) => self.honest.lost(h, v.rx.as_ref(), &what, now, sh),
                        Role::Churn if v.conn.state == Hs::Closed => {
                            sh.add(C::ChurnClosedByRelay, 1)
                        }
                        Role::Churn => sh.add(C::ChurnFailed, 1),
                    }
                    self.gone.push(*id);
                }
            }
        }
        for id in self.gone.drain(..) {
            self.pool.map.remove(&id);
        }
    }

    /// The gauges the sampler reads: viewers connected, and the relay's socket IDs of the
    /// honest viewers' and of every live connection.
    fn gauges(&self) {
        let (map, sh) = (&self.pool.map, self.sh);
        let connected = |r: fn(&Role) -> bool| {
            map.values()
                .filter(|v| r(&v.role) && v.life == Life::Active && v.conn.state == Hs::Connected)
                .count() as u32
        };
        sh.honest_connected
            .store(connected(|r| matches!(r, Role::Honest(_))), Relaxed);
        sh.churn_alive
            .store(connected(|r| matches!(r, Role::Churn)), Relaxed);
        let mut ids = sh.honest_ids.lock().expect("ids");
        ids.clear();
        ids.extend(
            map.values()
                .filter(|v| matches!(v.role, Role::Honest(_)) && v.conn.state == Hs::Connected)
                .map(|v| v.conn.peer_id),
        );
        drop(ids);
        let mut live = sh.live_ids.lock().expect("ids");
        live.clear();
        live.extend(
            map.values()
                .filter(|v| v.life == Life::Active && v.conn.state == Hs::Connected)
                .map(|v| v.conn.peer_id),
        );
    }

    /// Polite end: every connected viewer says goodbye.
    fn close(&mut self) {
        let now = Instant::now();
        let io = &mut self.pool.io;
        for v in self.pool.map.values_mut() {
            if v.life == Life::Active && v.conn.state == Hs::Connected {
                v.conn
                    .control(now, io.fd, &mut io.tx, ctrl::SHUTDOWN, 0, &[0]);
            }
        }
        io.tx.flush(io.fd);
    }
}
