//! The soak's SRT clients, each on a thread of its own: the viewers (honest ones that stay
//! the whole run, churn that joins and leaves), the NAK attacker, and the hostile sender
//! (garbage, spoofed and malformed control packets, a reconnecting handshake flood).
//! The publisher is the load generator's (`loadgen::spawn_publisher`).

use super::stats::{storm_nak, Delivered, RangeStats, Rng, Schedule};
use crate::caller::{self, HsAnswer};
use crate::loadgen::{rand_u32, Conn, Hs, ViewerCountersView, ViewerIo, BUFFER_PKTS, KEEPALIVE};
use anyhow::{Context, Result};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use stsync_common::srt::{ctrl, MSG_REXMIT_FLAG};
use stsync_user::os::mmsg::{RecvBatch, SendBatch};
use stsync_user::os::{clock, udp};
use stsync_user::srt::packet::{write_control, write_data, Packet};
use stsync_user::srt::receiver::{Arrival, Receiver};
use stsync_user::srt::seq::Seq;

/// Event counters shared by the client threads and read by the sampler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum C {
    HonestRxBytes,
    HonestRxPackets,
    HonestReconnects,
    ChurnJoined,
    ChurnLeft,
    ChurnDied,
    ChurnFailed,
    ChurnClosedByRelay,
    ChurnNoKey,
    ToDeadBytes,
    WrongSource,
    Stray,
    AttackerRxBytes,
    AttackerRxPackets,
    AttackerRexmitPackets,
    NaksSent,
    AttackerReconnects,
    GarbageSent,
    SpoofSent,
    FloodAttempts,
    FloodCookies,
    FloodRejected,
    FloodAccepted,
    FloodUnanswered,
    KeysMinted,
    KeyFailures,
    /// Churn viewers that died silently and were still being sent data 30 s later.
    DeadNotClosed,
}

pub const NAMES: [&str; 27] = [
    "honest_rx_bytes",
    "honest_rx_packets",
    "honest_reconnects",
    "churn_joined",
    "churn_left",
    "churn_died",
    "churn_failed",
    "churn_closed_by_relay",
    "churn_no_key",
    "to_dead_bytes",
    "wrong_source",
    "stray",
    "attacker_rx_bytes",
    "attacker_rx_packets",
    "attacker_rexmit_packets",
    "naks_sent",
    "attacker_reconnects",
    "garbage_sent",
    "spoof_sent",
    "flood_attempts",
    "flood_cookies",
    "flood_rejected",
    "flood_accepted",
    "flood_unanswered",
    "keys_minted",
    "key_failures",
    "dead_not_closed",
];

pub type Snapshot = [u64; NAMES.len()];

pub struct Shared {
    counters: [AtomicU64; NAMES.len()],
    pub honest_connected: AtomicU32,
    pub churn_alive: AtomicU32,
    /// The longest the relay kept sending to a churn viewer after it died silently (ms).
    pub dead_linger_max_ms: AtomicU64,
    /// The relay's socket IDs of the attacker's connections, oldest first.
    pub attacker_ids: Mutex<Vec<u32>>,
    /// The relay's socket IDs of every live client connection (targets for spoofing).
    pub live_ids: Mutex<Vec<u32>>,
    /// The relay's socket IDs of the honest viewers' connections.
    pub honest_ids: Mutex<Vec<u32>>,
    /// Handshake flood rejections by code.
    pub flood_codes: Mutex<BTreeMap<u32, u64>>,
    /// Notable happenings, with seconds since `t0`.
    pub events: Mutex<Vec<(f64, String)>>,
    pub t0: Instant,
    pub stop: AtomicBool,
    /// Set at the end of the run: no more joins, leaves or hostile traffic.
    pub quiesce: AtomicBool,
}

impl Shared {
    pub fn new(t0: Instant) -> Shared {
        Shared {
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
            honest_connected: AtomicU32::new(0),
            churn_alive: AtomicU32::new(0),
            dead_linger_max_ms: AtomicU64::new(0),
            attacker_ids: Mutex::new(Vec::new()),
            live_ids: Mutex::new(Vec::new()),
            honest_ids: Mutex::new(Vec::new()),
            flood_codes: Mutex::new(BTreeMap::new()),
            events: Mutex::new(Vec::new()),
            t0,
            stop: AtomicBool::new(false),
            quiesce: AtomicBool::new(false),
        }
    }

    pub fn add(&self, c: C, n: u64) {
        self.counters[c as usize].fetch_add(n, Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        std::array::from_fn(|i| self.counters[i].load(Relaxed))
    }

    pub fn event(&self, what: impl Into<String>) {
        let t = self.t0.elapsed().as_secs_f64();
        let what = what.into();
        eprintln!("soak: [{t:7.1} s] {what}");
        self.events.lock().expect("events").push((t, what));
    }

    fn stopping(&self) -> bool {
        self.stop.load(Relaxed)
    }

    fn t(&self, now: Instant) -> f64 {
        now.saturating_duration_since(self.t0).as_secs_f64()
    }
}

// ---------------------------------------------------------------------------------------
// Session keys

/// Session keys minted ahead by a thread of their own, so no SRT loop waits on HTTP (which a
/// busy relay may answer slowly). A key lives 300 s on the relay; older ones are thrown away.
pub struct KeyPool {
    q: Mutex<VecDeque<(String, Instant)>>,
}

const KEY_MAX_AGE: Duration = Duration::from_secs(200);

impl KeyPool {
    pub fn new() -> KeyPool {
        KeyPool {
            q: Mutex::new(VecDeque::new()),
        }
    }

    pub fn take(&self) -> Option<String> {
        let mut q = self.q.lock().expect("keys");
        while let Some((k, t)) = q.pop_front() {
            if t.elapsed() < KEY_MAX_AGE {
                return Some(k);
            }
        }
        None
    }

    pub fn len(&self) -> usize {
        self.q.lock().expect("keys").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps `target` keys ready until `shared.stop`.
    pub fn run(&self, http: SocketAddr, stream: &str, token: &str, target: usize, sh: &Shared) {
        let mut failing = false;
        while !sh.stopping() {
            if self.len() >= target {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            match crate::http::mint_session(None, http, stream, token) {
                Ok(k) => {
                    sh.add(C::KeysMinted, 1);
                    self.q.lock().expect("keys").push_back((k, Instant::now()));
                    if failing {
                        sh.event("minting session keys works again");
                        failing = false;
                    }
                }
                Err(e) => {
                    sh.add(C::KeyFailures, 1);
                    if !failing {
                        sh.event(format!("minting a session key failed: {e:#}"));
                        failing = true;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
}

impl Default for KeyPool {
    fn default() -> Self {
        Self::new()
    }
}

/// What every SRT client thread needs to know.
#[derive(Clone)]
pub struct Common {
    pub relay: SocketAddrV4,
    pub stream: String,
    pub sid_template: String,
    pub latency_ms: u16,
    pub seed: u64,
    /// Nothing may run past this.
    pub hard_deadline: Instant,
}

impl Common {
    fn sid(&self, key: &str, mode: &str) -> String {
        caller::stream_id(&self.sid_template, &self.stream, key, mode)
    }

    fn latency(&self) -> Duration {
        Duration::from_millis(u64::from(self.latency_ms))
    }
}

fn new_socket_id(taken: impl Fn(u32) -> bool) -> u32 {
    loop {
        let id = (rand_u32() & 0x3FFF_FFFF) | 1;
        if !taken(id) {
            return id;
        }
    }
}

/// Feeds one received data packet to a connected client's receiver (which may ACK or NAK
/// at once) and says whether it was new.
fn receive_data(
    conn: &mut Conn,
    rx: &mut Receiver,
    st: &mut ViewerCountersView,
    now: Instant,
    seq: Seq,
    len: usize,
    out: &mut ViewerIo,
) -> Arrival {
    st.received += 1;
    let a = rx.on_data(now, seq, len, &mut out.fb);
    out.send_feedback(conn, now, st);
    a
}

/// Control packets a connected client answers: ACKACK, DROPREQ, SHUTDOWN.
fn receive_control(
    conn: &mut Conn,
    rx: Option<&mut Receiver>,
    now: Instant,
    typ: u16,
    info: u32,
    body: &[u8],
) {
    match typ {
        ctrl::ACKACK => {
            if let Some(rx) = rx {
                rx.on_ackack(now, info);
            }
        }
        ctrl::DROPREQ => {
            if let (Some(rx), Some(a), Some(b)) = (rx, body.get(0..4), body.get(4..8)) {
                let w = |x: &[u8]| Seq::new(u32::from_be_bytes(x.try_into().expect("4 bytes")));
                rx.on_dropreq(w(a), w(b));
            }
        }
        ctrl::SHUTDOWN => conn.state = Hs::Closed,
        _ => {}
    }
}

/// Timers of a connected client: its receiver's ACKs and NAKs, keepalives. Returns nothing;
/// sends what is due.
fn client_timers(
    conn: &mut Conn,
    rx: &mut Receiver,
    st: &mut ViewerCountersView,
    now: Instant,
    out: &mut ViewerIo,
) {
    if now >= rx.poll_timeout() {
        rx.handle_timeout(now, &mut out.fb);
        out.send_feedback(conn, now, st);
    }
    if now >= conn.last_sent + KEEPALIVE {
        st.keepalives += 1;
        conn.control(now, out.fd, &mut out.tx, ctrl::KEEPALIVE, 0, &[0]);
    }
}

// ---------------------------------------------------------------------------------------
// Viewers: honest and churn

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

/// A request from the sampler: what each honest viewer got of payload indices `[from, to)`.
pub struct EvalRequest {
    pub from: u64,
    pub to: u64,
    pub reply: mpsc::Sender<EvalReply>,
}

#[derive(Debug, Clone, Default)]
pub struct EvalReply {
    pub per_viewer: Vec<RangeStats>,
    /// Packets the honest viewers' receivers found missing, and gave up on, since the start.
    pub lost: u64,
    pub given_up: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    Honest(usize),
    Churn,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Life {
    Active,
    /// Left with SHUTDOWN; forgotten at the instant.
    Left(Instant),
    /// Died silently at the first instant: what still arrives for it is counted (the
    /// last arrival kept) until the second.
    Dead(Instant, Instant),
}

struct V {
    conn: Conn,
    rx: Option<Receiver>,
    st: ViewerCountersView,
    role: Role,
    life: Life,
    leave_at: Option<Instant>,
    silent: bool,
    /// The last datagram that came for it.
    last_rx: Instant,
}

impl V {
    /// A viewer that has just started its handshake.
    fn new(conn: Conn, role: Role, silent: bool, now: Instant) -> V {
        V {
            conn,
            rx: None,
            st: ViewerCountersView::default(),
            role,
            life: Life::Active,
            leave_at: None,
            silent,
            last_rx: now,
        }
    }
}

struct HonestSlot {
    delivered: Delivered,
    /// Our socket ID of its current connection.
    id: Option<u32>,
    reconnect_at: Option<Instant>,
    /// Receiver figures of its earlier connections.
    lost: u64,
    given_up: u64,
    ever_connected: bool,
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
    let mut io = ViewerIo::new(fd, Instant::now());
    let mut recv = RecvBatch::new(256);
    let mut rng = Rng::new(c.seed ^ 0x7669_6577);
    let mut map: HashMap<u32, V> = HashMap::new();
    let mut honest: Vec<HonestSlot> = (0..cfg.honest)
        .map(|_| HonestSlot {
            delivered: Delivered::new(cfg.ring),
            id: None,
            reconnect_at: Some(sh.t0),
            lost: 0,
            given_up: 0,
            ever_connected: false,
        })
        .collect();
    let late_ns = u64::from(c.latency_ms) * 1_000_000;
    let join_every = (cfg.churn_rate > 0.0).then(|| Duration::from_secs_f64(1.0 / cfg.churn_rate));
    let mut next_join = sh.t0 + join_every.unwrap_or_default();
    let mut churn_ip_next = 0u32;
    let mut next_gauges = Instant::now();
    let mut gone: Vec<u32> = Vec::new();
    let latency = c.latency_ms;

    while !sh.stopping() {
        let now = Instant::now();
        if now >= c.hard_deadline {
            anyhow::bail!("the viewers ran past their time bound");
        }
        let quiesce = sh.quiesce.load(Relaxed);

        // The sampler's questions.
        while let Ok(req) = evals.try_recv() {
            let mut r = EvalReply::default();
            for h in &honest {
                r.per_viewer.push(h.delivered.range(req.from, req.to));
                r.lost += h.lost;
                r.given_up += h.given_up;
                if let Some(v) = h.id.and_then(|id| map.get(&id)) {
                    if let Some(rx) = &v.rx {
                        r.lost += rx.stats.lost;
                        r.given_up += rx.stats.dropped;
                    }
                }
            }
            let _ = req.reply.send(r);
        }

        // Honest viewers (re)connect.
        for (i, h) in honest.iter_mut().enumerate() {
            if h.reconnect_at.is_some_and(|t| now >= t) {
                let Some(key) = keys.take() else {
                    h.reconnect_at = Some(now + Duration::from_millis(100));
                    continue;
                };
                if let Some(old) = h.id.take() {
                    map.remove(&old);
                }
                if h.ever_connected {
                    sh.add(C::HonestReconnects, 1);
                    sh.event(format!("honest viewer {i} reconnects"));
                }
                let id = new_socket_id(|x| map.contains_key(&x));
                let src = Ipv4Addr::from(u32::from(cfg.honest_ip) + i as u32);
                let mut conn = Conn::new(id, c.relay, Some(src), c.sid(&key, "request"), now);
                conn.start(now, latency, fd, &mut io.tx);
                map.insert(id, V::new(conn, Role::Honest(i), false, now));
                h.id = Some(id);
                h.reconnect_at = None;
            }
        }

        // Churn joins.
        if let Some(every) = join_every {
            if now >= next_join + Duration::from_secs(2) {
                next_join = now; // we fell behind (a stall): do not burst
            }
            while now >= next_join && !quiesce {
                next_join += every;
                let Some(key) = keys.take() else {
                    sh.add(C::ChurnNoKey, 1);
                    continue;
                };
                let id = new_socket_id(|x| map.contains_key(&x));
                let src = Ipv4Addr::from(u32::from(cfg.churn_ip) + churn_ip_next);
                churn_ip_next = (churn_ip_next + 1) % cfg.churn_ips.max(1);
                let mut conn = Conn::new(id, c.relay, Some(src), c.sid(&key, "request"), now);
                conn.start(now, latency, fd, &mut io.tx);
                sh.add(C::ChurnJoined, 1);
                let silent = rng.unit() < cfg.churn_silent;
                map.insert(id, V::new(conn, Role::Churn, silent, now));
            }
        }

        // Receive.
        recv.drain(fd, 64, |now, batch| {
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
                            &mut io,
                        );
                        if let (Role::Honest(h), false) = (v.role, a == Arrival::Duplicate) {
                            if let Some((index, sent_ns)) = caller::read_payload(dp.payload) {
                                let rx_ns = d
                                    .rx_realtime_ns
                                    .map_or(now_ns, |t| (t as i64 - io.rt_offset) as u64);
                                let on_time = rx_ns.saturating_sub(sent_ns) <= late_ns;
                                honest[h].delivered.record(index, on_time);
                            }
                        }
                    }
                    Packet::Control(pc) => {
                        if pc.typ == ctrl::HANDSHAKE {
                            if v.conn.on_hs(now, pc.body, latency, fd, &mut io.tx) {
                                v.rx =
                                    Some(Receiver::new(v.conn.isn, c.latency(), BUFFER_PKTS, now));
                                match v.role {
                                    Role::Honest(h) => honest[h].ever_connected = true,
                                    Role::Churn => {
                                        let (lo, hi) = cfg.churn_life;
                                        let life = lo + rng.unit() * (hi - lo).max(0.0);
                                        v.leave_at = Some(now + Duration::from_secs_f64(life));
                                    }
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

        // Timers, leaves, deaths.
        let now = Instant::now();
        for (id, v) in map.iter_mut() {
            match v.life {
                Life::Left(until) => {
                    if now >= until {
                        gone.push(*id);
                    }
                    continue;
                }
                Life::Dead(died, until) => {
                    if now >= until {
                        let linger = v.last_rx.saturating_duration_since(died);
                        sh.dead_linger_max_ms
                            .fetch_max(linger.as_millis() as u64, Relaxed);
                        if now.saturating_duration_since(v.last_rx) < Duration::from_secs(2) {
                            sh.add(C::DeadNotClosed, 1);
                        }
                        gone.push(*id);
                    }
                    continue;
                }
                Life::Active => {}
            }
            match v.conn.state {
                Hs::Connected => {
                    if let (Some(at), false) = (v.leave_at, quiesce) {
                        if now >= at {
                            if v.silent {
                                sh.add(C::ChurnDied, 1);
                                // The relay's idle timeout (5 s by default) should close it;
                                // count what still comes for a while longer.
                                v.life = Life::Dead(now, now + Duration::from_secs(30));
                            } else {
                                sh.add(C::ChurnLeft, 1);
                                v.conn.control(now, fd, &mut io.tx, ctrl::SHUTDOWN, 0, &[0]);
                                v.life = Life::Left(now + Duration::from_secs(2));
                            }
                            continue;
                        }
                    }
                    let rx = v.rx.as_mut().expect("connected viewers have a receiver");
                    client_timers(&mut v.conn, rx, &mut v.st, now, &mut io);
                }
                Hs::Induction | Hs::Conclusion(_) => {
                    v.conn.hs_timer(now, latency, fd, &mut io.tx);
                }
                Hs::Waiting => {}
                Hs::Rejected(_) | Hs::TimedOut | Hs::Closed => {
                    let what = match v.conn.state {
                        Hs::Rejected(code) => format!("rejected {code}"),
                        Hs::TimedOut => "handshake timed out".to_string(),
                        _ => "closed by the relay".to_string(),
                    };
                    match v.role {
                        Role::Honest(h) => {
                            sh.event(format!("honest viewer {h}: {what}"));
                            if let Some(rx) = &v.rx {
                                honest[h].lost += rx.stats.lost;
                                honest[h].given_up += rx.stats.dropped;
                            }
                            honest[h].id = None;
                            honest[h].reconnect_at = Some(now + Duration::from_secs(1));
                        }
                        Role::Churn if v.conn.state == Hs::Closed => {
                            sh.add(C::ChurnClosedByRelay, 1)
                        }
                        Role::Churn => sh.add(C::ChurnFailed, 1),
                    }
                    gone.push(*id);
                }
            }
        }
        for id in gone.drain(..) {
            map.remove(&id);
        }
        io.tx.flush(fd);

        if now >= next_gauges {
            next_gauges = now + Duration::from_millis(500);
            let connected = |r: fn(&Role) -> bool| {
                map.values()
                    .filter(|v| {
                        r(&v.role) && v.life == Life::Active && v.conn.state == Hs::Connected
                    })
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
        udp::wait_readable(&[fd], 1_000_000);
    }
    // Polite end: every connected viewer says goodbye.
    let now = Instant::now();
    for v in map.values_mut() {
        if v.life == Life::Active && v.conn.state == Hs::Connected {
            v.conn.control(now, fd, &mut io.tx, ctrl::SHUTDOWN, 0, &[0]);
        }
    }
    io.tx.flush(fd);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The NAK attacker

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
    let mut next_nak = Instant::now();
    let nak_every = Duration::from_secs_f64(1.0 / cfg.nak_rate.max(0.001));
    let mut storming = false;
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
                    let on = cfg.storms.active(sh.t(now)) && !sh.quiesce.load(Relaxed);
                    if on != storming {
                        storming = on;
                        sh.event(if on {
                            "NAK storm starts"
                        } else {
                            "NAK storm ends"
                        });
                        next_nak = now;
                    }
                    if on {
                        if now >= next_nak + Duration::from_secs(1) {
                            next_nak = now;
                        }
                        // The whole window the attacker has seen, at most --nak-span.
                        let seen = r.next_seq().diff(cn.isn).max(0) as u32;
                        let span = cfg.nak_span.min(seen);
                        while now >= next_nak {
                            next_nak += nak_every;
                            if span == 0 {
                                continue;
                            }
                            let words = storm_nak(r.next_seq(), span, cfg.nak_ranges);
                            cn.control(now, fd, &mut io.tx, ctrl::NAK, 0, &words);
                            sh.add(C::NaksSent, 1);
                        }
                    }
                }
                Hs::Induction | Hs::Conclusion(_) => {
                    cn.hs_timer(now, latency, fd, &mut io.tx);
                }
                Hs::Waiting => {}
                Hs::Rejected(_) | Hs::TimedOut | Hs::Closed => {
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

// ---------------------------------------------------------------------------------------
// Garbage, spoofed control packets, handshake flood

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
    let (gfd, ffd) = (g_owned.as_raw_fd(), f_owned.as_raw_fd());
    let mut gtx = SendBatch::new();
    let mut ftx = SendBatch::new();
    let mut recv = RecvBatch::new(256);
    let mut rng = Rng::new(c.seed ^ 0x686f_7374);
    let mut buf = Vec::with_capacity(9000);
    let start = Instant::now();
    let every = |rate: f64| (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
    let (g_every, s_every, f_every) = (
        every(cfg.garbage_rate),
        every(cfg.spoof_rate),
        every(cfg.flood_rate),
    );
    let (mut next_g, mut next_s, mut next_f) = (start, start, start);
    let mut live: Vec<u32> = Vec::new();
    let mut next_live = start;
    // Flood attempts waiting for an answer: our socket ID -> when.
    let mut pending: HashMap<u32, Instant> = HashMap::new();
    let mut flooding = false;
    let latency = c.latency_ms;
    let relay = SocketAddr::V4(c.relay);
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
        let catch_up = |next: &mut Instant| {
            if now >= *next + Duration::from_secs(1) {
                *next = now;
            }
        };
        if let (Some(e), false) = (g_every, quiesce) {
            catch_up(&mut next_g);
            while now >= next_g {
                next_g += e;
                garbage(&mut rng, &mut buf);
                gtx.push(gfd, c.relay, None, |o| o.extend_from_slice(&buf));
                sh.add(C::GarbageSent, 1);
            }
        }
        if let (Some(e), false) = (s_every, quiesce) {
            catch_up(&mut next_s);
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
        let on = cfg.flood.active(sh.t(now)) && !quiesce;
        if on != flooding {
            flooding = on;
            sh.event(if on {
                "handshake flood starts"
            } else {
                "handshake flood ends"
            });
            next_f = now;
        }
        if let (Some(e), true) = (f_every, on) {
            catch_up(&mut next_f);
            while now >= next_f {
                next_f += e;
                let id = new_socket_id(|x| pending.contains_key(&x));
                pending.insert(id, now);
                ftx.push(ffd, c.relay, None, |o| {
                    caller::induction(o, id, Seq::new(rng.next_u32() & 0x7FFF_FFFF), 0, relay)
                });
                sh.add(C::FloodAttempts, 1);
            }
        }
        // Answers to the flood: conclude on every cookie with a stream ID the relay must
        // refuse (unknown key, malformed ID, unknown resource), like a client that keeps
        // reconnecting after each rejection.
        recv.drain(ffd, 16, |_, batch| {
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
                        ftx.push(ffd, c.relay, None, |o| {
                            caller::conclusion(
                                o,
                                id,
                                Seq::new(rng.next_u32() & 0x7FFF_FFFF),
                                0,
                                relay,
                                cookie,
                                latency,
                                sid.as_bytes(),
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
                        ftx.push(ffd, c.relay, None, |o| {
                            write_control(o, ctrl::SHUTDOWN, 0, 0, peer, &[0])
                        });
                    }
                    HsAnswer::Other => {}
                }
            }
        });
        let before = pending.len();
        pending.retain(|_, t| now.saturating_duration_since(*t) < Duration::from_secs(2));
        sh.add(C::FloodUnanswered, (before - pending.len()) as u64);
        gtx.flush(gfd);
        ftx.flush(ffd);
        udp::wait_readable(&[ffd], 1_000_000);
    }
    Ok(())
}
