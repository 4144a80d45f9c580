//! The load generator: one publisher and N viewers over real SRT (HSv5 caller handshakes,
//! ACK/ACKACK/NAK like libsrt), two threads (publisher, viewers), two UDP sockets.
//!
//! The publisher has its own thread because its sends set off the relay's fan-out in the
//! kernel, which runs (as softirq) inside the sending thread: at hundreds of viewers one
//! publisher packet costs milliseconds there, and the viewers' ACKs must not wait for it
//! (nor the publisher's pacing for them).
//!
//! Cheapness: all viewers share one UDP socket. Each viewer has its own source address
//! (`--viewer-ip` + i, picked per datagram with IP_PKTINFO; on loopback any 127/8 address
//! works, in a namespace an AnyIP `local` route), so the relay sees N distinct peers while
//! the generator receives with one `recvmmsg` per batch of up to 256 datagrams from all
//! viewers and sends every ACK, ACKACK answer and NAK of an iteration with one `sendmmsg`.
//! Incoming datagrams are routed to their viewer by the SRT destination socket ID.
//!
//! With `--rx xdp` the viewers' data packets never reach that socket: the kernel sink
//! (stsync-bench-ebpf, see `sink`) records each one in its viewer's slot ring and drops it,
//! and every pass of the loop feeds what arrived since the last pass, in sequence order,
//! to the same receivers (so ACKs, light ACKs and NAKs are what they would be), and to the
//! same delivery and latency bookkeeping. Control packets still come through the socket.

use crate::caller::{self, HsAnswer};
use crate::hist::Hist;
use crate::report::*;
use crate::sink::{Arrived, Attach, Rings, Sink, SinkParams};
use crate::syscalls::{Counter, SyscallReport};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use stsync_bench_common::SinkConfig;
use stsync_common::srt::{ctrl, MSG_REXMIT_FLAG};
use stsync_user::os::mmsg::{RecvBatch, SendBatch};
use stsync_user::os::proc::{self, CpuTimes, Stat};
use stsync_user::os::{clock, in_netns, udp};
use stsync_user::srt::packet::{loss_ranges, write_control, write_data, Ack, Packet};
use stsync_user::srt::receiver::{Arrival, Feedback, Receiver};
use stsync_user::srt::rtt::Rtt;
use stsync_user::srt::seq::Seq;

#[derive(Args, Debug, Clone)]
pub struct Opts {
    /// SRT address the viewers connect to.
    #[arg(long, default_value = "127.0.0.1:9999")]
    pub relay: SocketAddrV4,
    /// SRT address the publisher connects to (default: --relay).
    #[arg(long)]
    pub pub_relay: Option<SocketAddrV4>,
    /// The relay's HTTP API, to mint one session key per connection (stsync-proxy). Without
    /// it, `{key}` in the template is --key.
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// Bearer token of the stream (for --http).
    #[arg(long, default_value = "")]
    pub token: String,
    /// Stream (resource) ID, `{stream}` in the template.
    #[arg(long, default_value = "1")]
    pub stream: String,
    /// Static session key, `{key}` in the template when --http is not given.
    #[arg(long, default_value = "")]
    pub key: String,
    /// Stream ID template: `{stream}`, `{key}` and `{mode}` (publish | request) are filled
    /// in. Any server's syntax works, e.g. `{stream}/{mode}` or `#!::r=live/{stream},m={mode}`.
    #[arg(long, default_value = "#!::r={stream},s={key},m={mode}")]
    pub sid_template: String,
    /// Number of viewers.
    #[arg(long, default_value_t = 1)]
    pub viewers: u32,
    /// Publisher bitrate in bits per second of SRT payload (accepts k/M suffixes).
    #[arg(long, default_value = "4M", value_parser = parse_rate)]
    pub bitrate: u64,
    /// SRT payload bytes per packet.
    #[arg(long, default_value_t = 1316)]
    pub payload: usize,
    /// Latency (TSBPD) announced in HSREQ, ms; also how long a viewer waits for a lost packet.
    #[arg(long, default_value_t = 120)]
    pub latency_ms: u16,
    /// Seconds of streaming after every viewer is connected, before measuring.
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    /// Seconds of measurement.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Milliseconds of streaming after the window, so late retransmissions still count.
    #[arg(long, default_value_t = 600)]
    pub drain_ms: u64,
    /// Source address of viewer 0; viewer i uses this + i.
    #[arg(long, default_value = "127.0.1.1")]
    pub viewer_ip: Ipv4Addr,
    /// UDP port of the viewers' shared socket (0: any).
    #[arg(long, default_value_t = 0)]
    pub viewer_port: u16,
    /// Network namespace of the publisher socket (and of the HTTP requests).
    #[arg(long)]
    pub pub_netns: Option<String>,
    /// Network namespace of the viewers' socket.
    #[arg(long)]
    pub view_netns: Option<String>,
    /// PID of the relay: its CPU and RSS are sampled over the window.
    #[arg(long)]
    pub watch_pid: Option<u32>,
    /// Viewers that start their handshake per millisecond.
    #[arg(long, default_value_t = 20)]
    pub connect_rate: u32,
    /// Longest sleep between two passes of the event loop, µs. The generator does not wake
    /// per datagram: it sleeps until the next publisher packet or this tick, then drains the
    /// sockets with recvmmsg (latency uses kernel receive timestamps, so batching does not
    /// skew it). 0 = wake on every datagram.
    #[arg(long, default_value_t = 1000)]
    pub tick_us: u64,
    /// How the viewers receive data packets: `socket` (recvmmsg on their shared UDP socket)
    /// or `xdp` (the kernel sink stsync-bench-ebpf on --sink-iface records and drops them;
    /// control packets still reach the socket). `xdp` needs root.
    #[arg(long, value_enum, default_value_t = RxMode::Socket)]
    pub rx: RxMode,
    /// The benchmark's eBPF object, with the sink and the syscall counter (default:
    /// target/bpfel-unknown-none/release/stsync-bench-ebpf next to this executable's build
    /// directory).
    #[arg(long)]
    pub sink_object: Option<std::path::PathBuf>,
    /// Interface (in --view-netns) where the relay's packets to the viewers arrive.
    #[arg(long)]
    pub sink_iface: Option<String>,
    /// Hook of the sink: native XDP, generic XDP or TC ingress.
    #[arg(long, value_enum, default_value_t = Attach::Tc)]
    pub sink_attach: Attach,
    /// Count the --watch-pid process's system calls over the window.
    #[arg(long)]
    pub count_syscalls: bool,
    /// How: a raw tracepoint program from the bench eBPF object (--sink-object), or perf.
    #[arg(long, value_enum, default_value_t = crate::syscalls::Method::Bpf)]
    pub syscall_counter: crate::syscalls::Method,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Include one row per viewer in the JSON report.
    #[arg(long)]
    pub per_viewer: bool,
    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxMode {
    Socket,
    Xdp,
}

pub fn parse_rate(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.trim().chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1e3),
        Some('m' | 'M') => (&s[..s.len() - 1], 1e6),
        Some('g' | 'G') => (&s[..s.len() - 1], 1e9),
        _ => (s, 1.0),
    };
    num.trim()
        .parse::<f64>()
        .map(|v| (v * mult) as u64)
        .map_err(|e| format!("{s}: {e}"))
}

const RING: usize = 8192;
pub(crate) const HS_RETRY: Duration = Duration::from_millis(250);
const HS_TIMEOUT: Duration = Duration::from_secs(5);
pub(crate) const KEEPALIVE: Duration = Duration::from_secs(1);
pub(crate) const BUFFER_PKTS: u32 = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hs {
    Waiting,
    Induction,
    Conclusion(u32),
    Connected,
    Rejected(u32),
    TimedOut,
    Closed,
}

/// Caller handshake state shared by the publisher and the viewers.
pub(crate) struct Conn {
    pub(crate) id: u32,
    pub(crate) peer_id: u32,
    pub(crate) relay: SocketAddrV4,
    pub(crate) src: Option<Ipv4Addr>,
    pub(crate) isn: Seq,
    sid: String,
    pub(crate) state: Hs,
    clock0: Instant,
    hs_deadline: Instant,
    pub(crate) last_sent: Instant,
}

impl Conn {
    pub(crate) fn new(
        id: u32,
        relay: SocketAddrV4,
        src: Option<Ipv4Addr>,
        sid: String,
        now: Instant,
    ) -> Self {
        Conn {
            id,
            peer_id: 0,
            relay,
            src,
            isn: Seq::new(rand_u32()),
            sid,
            state: Hs::Waiting,
            clock0: now,
            hs_deadline: now,
            last_sent: now,
        }
    }

    fn ts(&self, now: Instant) -> u32 {
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
        let peer = SocketAddr::V4(self.relay);
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
        self.tx
            .push(self.fd.as_raw_fd(), self.conn.relay, None, |out| {
                write_data(out, Seq::new(s.seq), msg, s.ts, dest, &[]);
                caller::write_payload(out, payload, s.index, s.sent_ns);
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
/// then pace `bitrate` bit/s of `payload`-byte packets whose payload indices start at
/// `first_index`. Returns it with what its thread shares.
#[allow(clippy::too_many_arguments)]
pub(crate) fn new_publisher(
    fd: OwnedFd,
    relay: SocketAddrV4,
    sid: String,
    bitrate: u64,
    payload: usize,
    first_index: u64,
    now: Instant,
) -> (Publisher, Arc<PubShared>) {
    let pkts_per_sec = bitrate as f64 / (payload as f64 * 8.0);
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
        interval: Duration::from_secs_f64(1.0 / pkts_per_sec),
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
            Hs::TimedOut => bail!(
                "publisher handshake timed out (no answer from {})",
                publ.conn.relay
            ),
            Hs::Closed => bail!("relay closed the publisher"),
            _ => {}
        }
        for _ in 0..16 {
            let k = recv.recv(fd);
            if k == 0 {
                break;
            }
            let now = Instant::now();
            for i in 0..k {
                publ.on_datagram(now, recv.get(i).data, latency, payload);
            }
        }
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

struct Viewer {
    conn: Conn,
    rx: Option<Receiver>,
    seen: Vec<u64>,
    hist: Hist,
    st: ViewerCountersView,
    /// --rx xdp: sequence numbers below this were taken from the sink's ring...
    sink_next: Seq,
    /// ...except these, which had not arrived yet (bounded by the ring).
    sink_missing: Vec<Seq>,
}

/// What the generator sees per viewer.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ViewerCountersView {
    pub(crate) unique: u64,
    /// Unique window packets whose transit was within the latency.
    pub(crate) on_time: u64,
    pub(crate) received: u64,
    pub(crate) duplicates: u64,
    pub(crate) rexmit_received: u64,
    pub(crate) outside_window: u64,
    pub(crate) bad_payload: u64,
    pub(crate) wrong_source: u64,
    pub(crate) misrouted: u64,
    pub(crate) naks_sent: u64,
    pub(crate) acks_full: u64,
    pub(crate) acks_light: u64,
    pub(crate) keepalives: u64,
    pub(crate) dropreqs: u64,
}

struct Window {
    start: u64,
    end: u64,
    cap: u64,
    /// A packet whose transit took longer than this (the latency) would reach a libsrt
    /// player too late to be played.
    late_ns: u64,
}

/// Where a viewer's feedback goes.
struct ViewerIo<'a> {
    fd: RawFd,
    tx: &'a mut SendBatch,
    fb: &'a mut Vec<Feedback>,
    /// CLOCK_REALTIME − CLOCK_MONOTONIC, for kernel receive timestamps.
    rt_offset: i64,
}

/// One data packet reached viewer `v` (through its socket or the sink): its receiver sees
/// it (and may ACK or NAK), then delivery and latency count its first arrival in the window.
fn on_data(v: &mut Viewer, now: Instant, seq: Seq, a: &Arrived, win: &Window, io: &mut ViewerIo) {
    let Some(rx) = v.rx.as_mut() else { return };
    let arrival = rx.on_data(now, seq, a.len, io.fb);
    if !io.fb.is_empty() {
        send_feedback(&mut v.conn, now, io.fd, io.tx, io.fb, &mut v.st);
    }
    if arrival == Arrival::Duplicate {
        v.st.duplicates += 1;
        return;
    }
    if a.rexmit {
        v.st.rexmit_received += 1;
    }
    let rx_ns = if a.rx_realtime {
        (a.rx_ns as i64 - io.rt_offset) as u64
    } else {
        a.rx_ns
    };
    match a.payload {
        Some((pi, sent)) if pi >= win.start && pi < win.end => {
            let off = pi - win.start;
            if off < win.cap {
                let (w, b) = ((off / 64) as usize, off % 64);
                if v.seen[w] & (1 << b) == 0 {
                    v.seen[w] |= 1 << b;
                    v.st.unique += 1;
                    let transit = rx_ns.saturating_sub(sent);
                    v.hist.record(transit);
                    if transit <= win.late_ns {
                        v.st.on_time += 1;
                    }
                } else {
                    v.st.duplicates += 1;
                }
            }
        }
        Some(_) => v.st.outside_window += 1,
        None => v.st.bad_payload += 1,
    }
}

/// --rx xdp: feeds viewer `i`'s receiver what the sink recorded since the last pass, in
/// sequence order: first the gaps it has been waiting for, then everything new.
fn drain_sink<R: Rings>(
    sink: &R,
    i: u32,
    v: &mut Viewer,
    now: Instant,
    win: &Window,
    io: &mut ViewerIo,
) {
    if v.rx.is_none() {
        return;
    }
    if !v.sink_missing.is_empty() {
        let mut missing = std::mem::take(&mut v.sink_missing);
        missing.retain(|&s| {
            let rx = v.rx.as_ref().expect("checked above");
            if s.lt(rx.next_seq()) && !rx.is_missing(s) {
                return false; // received meanwhile, or given up
            }
            match sink.slot(i, s.get()) {
                Some(a) => {
                    on_data(v, now, s, &a, win, io);
                    false
                }
                None => true,
            }
        });
        v.sink_missing = missing;
    }
    let Some(next) = sink.next(i) else { return };
    let next = Seq::new(next);
    let ahead = next.diff(v.sink_next);
    if ahead <= 0 {
        return;
    }
    // More than a ring behind: the older slots are overwritten; the receiver sees a gap.
    let span = (ahead as u32).min(sink.ring());
    let from = next.sub(span);
    for k in 0..span {
        let s = from.add(k);
        match sink.slot(i, s.get()) {
            Some(a) => on_data(v, now, s, &a, win, io),
            None if v.sink_missing.len() < sink.ring() as usize => v.sink_missing.push(s),
            None => {}
        }
    }
    v.sink_next = next;
}

pub(crate) fn send_feedback(
    conn: &mut Conn,
    now: Instant,
    fd: RawFd,
    tx: &mut SendBatch,
    fb: &mut Vec<Feedback>,
    st: &mut ViewerCountersView,
) {
    for f in fb.drain(..) {
        match f {
            Feedback::Ack { number, ack } => {
                if ack.full.is_some() {
                    st.acks_full += 1;
                } else {
                    st.acks_light += 1;
                }
                let (w, n) = ack.words();
                conn.control(now, fd, tx, ctrl::ACK, number, &w[..n]);
            }
            Feedback::Nak(words) => {
                st.naks_sent += 1;
                conn.control(now, fd, tx, ctrl::NAK, 0, &words);
            }
        }
    }
}

/// One relay-side sample for the window's CPU and memory figures.
struct Sample {
    t: Instant,
    self_ticks: u64,
    /// (utime, stime) of this process and of the relay.
    self_us: (u64, u64),
    /// (utime, stime) of the publisher thread.
    pub_us: Option<(u64, u64)>,
    relay_us: Option<(u64, u64)>,
    relay_ticks: Option<u64>,
    relay_rss_kb: Option<u64>,
    cpu: CpuTimes,
    procs: std::collections::HashMap<(u32, u64), u64>,
    softnet_dropped: u64,
}

impl Sample {
    fn take(watch: Option<u32>, pub_tid: u32) -> Sample {
        let me = Stat::read("self").unwrap_or_default();
        let relay = watch.and_then(Stat::read);
        Sample {
            t: Instant::now(),
            self_ticks: me.cpu_ticks(),
            self_us: me.user_sys(),
            pub_us: (pub_tid != 0)
                .then(|| Stat::read(format!("self/task/{pub_tid}")))
                .flatten()
                .map(|s| s.user_sys()),
            relay_us: relay.map(|s| s.user_sys()),
            relay_ticks: relay.map(|s| s.cpu_ticks()),
            relay_rss_kb: watch.and_then(proc::rss_kb),
            cpu: CpuTimes::read(),
            procs: proc::user_process_ticks(),
            softnet_dropped: proc::softnet_dropped(),
        }
    }
}

fn self_cpu_ticks() -> u64 {
    Stat::read("self").map_or(0, |s| s.cpu_ticks())
}

fn cpu_report(a: &Sample, b: &Sample, watch: Option<u32>) -> CpuReport {
    let secs = b.t.duration_since(a.t).as_secs_f64().max(1e-6);
    let tck = proc::clk_tck() as f64;
    let pct = |ticks: u64| ticks as f64 / tck / secs * 100.0;
    let me = std::process::id();
    let gen = b.self_ticks.saturating_sub(a.self_ticks);
    let relay = match (a.relay_ticks, b.relay_ticks) {
        (Some(x), Some(y)) => Some(y.saturating_sub(x)),
        _ => None,
    };
    let other: u64 = b
        .procs
        .iter()
        .filter(|((pid, _), _)| *pid != me && Some(*pid) != watch)
        .filter_map(|(k, v)| a.procs.get(k).map(|old| v.saturating_sub(*old)))
        .sum();
    let busy = b.cpu.busy().saturating_sub(a.cpu.busy());
    let relay_us = match (a.relay_us, b.relay_us) {
        (Some(x), Some(y)) => Some((y.0.saturating_sub(x.0), y.1.saturating_sub(x.1))),
        _ => None,
    };
    CpuReport {
        seconds: secs,
        generator_pct: pct(gen),
        generator_user_pct: Some(pct(b.self_us.0.saturating_sub(a.self_us.0))),
        generator_sys_pct: Some(pct(b.self_us.1.saturating_sub(a.self_us.1))),
        generator_publisher_pct: match (a.pub_us, b.pub_us) {
            (Some(x), Some(y)) => Some(pct((y.0 + y.1).saturating_sub(x.0 + x.1))),
            _ => None,
        },
        relay_user_pct: relay_us.map(|r| pct(r.0)),
        relay_sys_pct: relay_us.map(|r| pct(r.1)),
        relay_pct: relay.map(pct),
        system_busy_pct: pct(busy),
        softirq_pct: pct(b.cpu.softirq.saturating_sub(a.cpu.softirq)),
        irq_pct: pct(b.cpu.irq.saturating_sub(a.cpu.irq)),
        other_processes_pct: pct(other),
        attributed_pct: pct(busy.saturating_sub(gen).saturating_sub(other)),
        relay_total_pct: relay.map(|r| {
            pct(r + (b.cpu.softirq + b.cpu.irq).saturating_sub(a.cpu.softirq + a.cpu.irq))
        }),
        softnet_dropped: Some(b.softnet_dropped.saturating_sub(a.softnet_dropped)),
        relay_rss_kb_start: a.relay_rss_kb,
        relay_rss_kb_end: b.relay_rss_kb,
    }
}

pub fn run(o: &Opts) -> Result<Report> {
    if o.payload < caller::MIN_PAYLOAD || o.payload > stsync_common::srt::MAX_PAYLOAD {
        bail!(
            "--payload must be {}..={} bytes",
            caller::MIN_PAYLOAD,
            stsync_common::srt::MAX_PAYLOAD
        );
    }
    if o.bitrate == 0 {
        bail!("--bitrate must be positive");
    }
    let n = o.viewers as usize;
    let latency = o.latency_ms;
    let pub_relay = o.pub_relay.unwrap_or(o.relay);
    let log = |s: String| {
        if !o.quiet {
            eprintln!("loadgen: {s}");
        }
    };

    // Session keys: one per connection.
    let keys: Vec<String> = match o.http {
        Some(http) => (0..=n)
            .map(|_| crate::http::mint_session(o.pub_netns.as_deref(), http, &o.stream, &o.token))
            .collect::<Result<_>>()?,
        None => vec![o.key.clone(); n + 1],
    };
    let sid = |i: usize, mode: &str| caller::stream_id(&o.sid_template, &o.stream, &keys[i], mode);

    let pub_fd = in_netns(o.pub_netns.as_deref(), || {
        udp::udp_socket(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0), 4 << 20)
    })
    .context("publisher socket")?;
    let view_fd = in_netns(o.view_netns.as_deref(), || {
        udp::udp_socket(
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, o.viewer_port),
            64 << 20,
        )
    })
    .context("viewer socket")?;
    let vfd = view_fd.as_raw_fd();

    let t0 = Instant::now();
    let base_ns = clock::monotonic_ns();
    let ns_of = move |i: Instant| base_ns + i.saturating_duration_since(t0).as_nanos() as u64;
    let cpu_start = self_cpu_ticks();

    let pkts_per_sec = o.bitrate as f64 / (o.payload as f64 * 8.0);
    let (publ, shared) = new_publisher(
        pub_fd,
        pub_relay,
        sid(0, "publish"),
        o.bitrate,
        o.payload,
        0,
        t0,
    );
    let id_base = (rand_u32() & 0x3FFF_FFFF) | 0x4000_0000;
    let id_base = if id_base.checked_add(o.viewers).is_none() {
        0x4000_0000
    } else {
        id_base
    };
    let mut viewers: Vec<Viewer> = (0..n)
        .map(|i| Viewer {
            conn: Conn::new(
                id_base + i as u32,
                o.relay,
                Some(Ipv4Addr::from(u32::from(o.viewer_ip) + i as u32)),
                sid(i + 1, "request"),
                t0,
            ),
            rx: None,
            seen: Vec::new(),
            hist: Hist::new(),
            st: ViewerCountersView::default(),
            sink_next: Seq::new(0),
            sink_missing: Vec::new(),
        })
        .collect();
    let sink = match o.rx {
        RxMode::Socket => None,
        RxMode::Xdp if n == 0 => None,
        RxMode::Xdp => {
            let iface = o
                .sink_iface
                .as_deref()
                .context("--rx xdp needs --sink-iface (where the relay's packets arrive)")?;
            let object = o
                .sink_object
                .clone()
                .unwrap_or_else(crate::sink::default_object_path);
            // Two seconds of packets per viewer: the loop drains every millisecond or so; a
            // retransmission is only useful within the latency.
            let ring = ((pkts_per_sec * 2.0) as u32)
                .clamp(1024, 1 << 16)
                .next_power_of_two();
            let port = udp::local_addr(&view_fd)
                .context("viewer socket address")?
                .port();
            let mut sink = Sink::load(&SinkParams {
                object: &object,
                attach: o.sink_attach,
                config: SinkConfig {
                    relay_ip: u32::from_ne_bytes(o.relay.ip().octets()),
                    viewer_ip_base: u32::from(o.viewer_ip),
                    viewers: o.viewers,
                    id_base,
                    ring_mask: ring - 1,
                    relay_port: o.relay.port().to_be(),
                    viewer_port: port.to_be(),
                },
                ring,
            })?;
            sink.attach(o.view_netns.as_deref(), iface)?;
            log(format!(
                "kernel sink ({:?}) on {iface}: {ring} slots per viewer",
                o.sink_attach
            ));
            Some(sink)
        }
    };
    // --count-syscalls: perf runs from the warm-up on, counts only over the window.
    let mut perf_ctl: Option<mpsc::Sender<()>> = None;
    let mut perf_thread: Option<std::thread::JoinHandle<Result<SyscallReport>>> = None;
    let mut due: Vec<Instant> = vec![t0 + Duration::from_secs(3600); n];
    let mut vtx = SendBatch::new();
    let mut vrecv = RecvBatch::new(256);
    let mut fb: Vec<Feedback> = Vec::new();
    let mut stray = 0u64;
    let lat = Duration::from_millis(u64::from(latency));

    // Phases.
    let mut next_to_start = 0usize;
    let mut all_settled_at: Option<Instant> = None;
    let mut win = Window {
        start: u64::MAX,
        end: u64::MAX,
        cap: 0,
        late_ns: u64::from(latency) * 1_000_000,
    };
    let mut sample_a: Option<std::thread::JoinHandle<Sample>> = None;
    let mut sample_b: Option<std::thread::JoinHandle<Sample>> = None;
    let mut window_started: Option<Instant> = None;
    // Full ACKs the viewers sent during the window (realism check: libsrt sends ~100/s).
    let mut acks_in_window = 0u64;
    let mut window_ended: Option<Instant> = None;
    let watch = o.watch_pid;
    let hard_deadline = t0
        + Duration::from_secs_f64(60.0 + o.warmup + o.duration)
        + Duration::from_millis(o.drain_ms);
    let mut min_due = t0;
    let mut last_connect_ms = 0u64;
    let mut rt_offset = clock::realtime_offset_ns();
    let mut next_offset_refresh = t0;

    let publisher = {
        let payload = o.payload;
        let deadline = hard_deadline + Duration::from_secs(1);
        spawn_publisher(publ, latency, payload, ns_of, deadline)
            .context("starting the publisher thread")?
    };
    let mut publishing = false;
    log(format!(
        "publishing to {pub_relay} at {} bit/s ({pkts_per_sec:.0} packets/s of {} bytes), {n} viewers to {}",
        o.bitrate, o.payload, o.relay
    ));

    loop {
        let now = Instant::now();
        if now >= hard_deadline {
            bail!("run exceeded its time bound ({:?})", hard_deadline - t0);
        }
        // Phase transitions.
        if publisher.is_finished() {
            shared.stop.store(true, Ordering::Release);
            return match publisher.join() {
                Ok(Err(e)) => Err(e),
                Ok(Ok(_)) => bail!("the publisher stopped early"),
                Err(_) => bail!("the publisher thread panicked"),
            };
        }
        if !publishing && shared.publishing.load(Ordering::Acquire) {
            publishing = true;
            log(format!("publisher connected after {:?}", now - t0));
        }
        if publishing && next_to_start < n {
            let ms = now.duration_since(t0).as_millis() as u64;
            if ms != last_connect_ms {
                last_connect_ms = ms;
                let end = (next_to_start + o.connect_rate.max(1) as usize).min(n);
                for i in next_to_start..end {
                    viewers[i].conn.start(now, latency, vfd, &mut vtx);
                    due[i] = now + HS_RETRY;
                    min_due = min_due.min(due[i]);
                }
                next_to_start = end;
            }
        }
        if all_settled_at.is_none()
            && next_to_start == n
            && viewers
                .iter()
                .all(|v| !matches!(v.conn.state, Hs::Induction | Hs::Conclusion(_)))
        {
            all_settled_at = Some(now);
            if let (true, Some(pid)) = (o.count_syscalls, o.watch_pid) {
                let (tx, rx) = mpsc::channel::<()>();
                perf_ctl = Some(tx);
                let method = o.syscall_counter;
                let object = o
                    .sink_object
                    .clone()
                    .unwrap_or_else(crate::sink::default_object_path);
                perf_thread = Some(std::thread::spawn(move || -> Result<SyscallReport> {
                    let mut c = Counter::start(method, pid, &object)?;
                    rx.recv().context("the window never started")?;
                    c.enable()?;
                    rx.recv().context("the window never ended")?;
                    c.disable()?;
                    c.finish()
                }));
            }
            let ok = viewers
                .iter()
                .filter(|v| v.conn.state == Hs::Connected)
                .count();
            log(format!("{ok}/{n} viewers connected after {:?}", now - t0));
        }
        if let Some(settled) = all_settled_at {
            let wstart = settled + Duration::from_secs_f64(o.warmup);
            if window_started.is_none() && now >= wstart {
                window_started = Some(now);
                acks_in_window = viewers.iter().map(|v| v.st.acks_full).sum::<u64>();
                win.start = shared.next_index.load(Ordering::Acquire);
                win.cap = (pkts_per_sec * (o.duration + 5.0)) as u64 + 1024;
                for v in viewers.iter_mut() {
                    v.seen = vec![0; win.cap.div_ceil(64) as usize];
                }
                let tid = shared.tid.load(Ordering::Acquire);
                sample_a = Some(std::thread::spawn(move || Sample::take(watch, tid)));
                if let Some(c) = &perf_ctl {
                    let _ = c.send(());
                }
            }
            if let Some(ws) = window_started {
                if window_ended.is_none() && now >= ws + Duration::from_secs_f64(o.duration) {
                    window_ended = Some(now);
                    acks_in_window =
                        viewers.iter().map(|v| v.st.acks_full).sum::<u64>() - acks_in_window;
                    win.end = shared.next_index.load(Ordering::Acquire);
                    let tid = shared.tid.load(Ordering::Acquire);
                    sample_b = Some(std::thread::spawn(move || Sample::take(watch, tid)));
                    if let Some(c) = &perf_ctl {
                        let _ = c.send(());
                    }
                }
            }
            if let Some(we) = window_ended {
                if now >= we + Duration::from_millis(o.drain_ms) {
                    break;
                }
            }
        }

        // Receive.
        for _ in 0..64 {
            let k = vrecv.recv(vfd);
            if k == 0 {
                break;
            }
            let now = Instant::now();
            let now_ns = ns_of(now);
            if now >= next_offset_refresh {
                rt_offset = clock::realtime_offset_ns();
                next_offset_refresh = now + Duration::from_secs(1);
            }
            for i in 0..k {
                let d = vrecv.get(i);
                let rx_ns = d
                    .rx_realtime_ns
                    .map_or(now_ns, |t| (t as i64 - rt_offset) as u64);
                let Ok(p) = Packet::parse(d.data) else {
                    stray += 1;
                    continue;
                };
                let idx = p.dest().wrapping_sub(id_base) as usize;
                let Some(v) = viewers.get_mut(idx) else {
                    stray += 1;
                    continue;
                };
                if d.src != v.conn.relay {
                    // libsrt drops what does not come from its peer.
                    v.st.wrong_source += 1;
                    continue;
                }
                if d.dst.is_some() && d.dst != v.conn.src {
                    v.st.misrouted += 1;
                    continue;
                }
                if d.truncated {
                    v.st.bad_payload += 1;
                    continue;
                }
                match p {
                    Packet::Data(dp) => {
                        if v.rx.is_none() {
                            continue;
                        }
                        v.st.received += 1;
                        let a = Arrived {
                            len: dp.payload.len(),
                            rexmit: dp.msg & MSG_REXMIT_FLAG != 0,
                            payload: caller::read_payload(dp.payload),
                            rx_ns,
                            rx_realtime: false,
                        };
                        let mut io = ViewerIo {
                            fd: vfd,
                            tx: &mut vtx,
                            fb: &mut fb,
                            rt_offset,
                        };
                        on_data(v, now, dp.seq, &a, &win, &mut io);
                    }
                    Packet::Control(c) => match c.typ {
                        ctrl::HANDSHAKE if v.conn.on_hs(now, c.body, latency, vfd, &mut vtx) => {
                            v.rx = Some(Receiver::new(v.conn.isn, lat, BUFFER_PKTS, now));
                            v.sink_next = v.conn.isn;
                            due[idx] = now + Duration::from_millis(10);
                            min_due = min_due.min(due[idx]);
                        }
                        ctrl::ACKACK => {
                            if let Some(rx) = v.rx.as_mut() {
                                rx.on_ackack(now, c.info);
                            }
                        }
                        ctrl::DROPREQ => {
                            v.st.dropreqs += 1;
                            if let (Some(rx), Some(a), Some(b)) =
                                (v.rx.as_mut(), c.body.get(0..4), c.body.get(4..8))
                            {
                                let w =
                                    |x: &[u8]| Seq::new(u32::from_be_bytes(x.try_into().unwrap()));
                                rx.on_dropreq(w(a), w(b));
                            }
                        }
                        ctrl::SHUTDOWN => v.conn.state = Hs::Closed,
                        _ => {}
                    },
                }
            }
        }
        if let Some(sink) = &sink {
            let now = Instant::now();
            if now >= next_offset_refresh {
                rt_offset = clock::realtime_offset_ns();
                next_offset_refresh = now + Duration::from_secs(1);
            }
            let mut io = ViewerIo {
                fd: vfd,
                tx: &mut vtx,
                fb: &mut fb,
                rt_offset,
            };
            for (i, v) in viewers.iter_mut().enumerate() {
                drain_sink(sink, i as u32, v, now, &win, &mut io);
            }
        }

        // Timers.
        let now = Instant::now();
        if now >= min_due {
            let mut next = now + Duration::from_secs(1);
            for (i, v) in viewers.iter_mut().enumerate() {
                if due[i] > now {
                    next = next.min(due[i]);
                    continue;
                }
                let d = match v.conn.state {
                    Hs::Connected => {
                        let rx = v.rx.as_mut().expect("connected viewers have a receiver");
                        rx.handle_timeout(now, &mut fb);
                        let rx_due = rx.poll_timeout();
                        if !fb.is_empty() {
                            send_feedback(&mut v.conn, now, vfd, &mut vtx, &mut fb, &mut v.st);
                        }
                        if now >= v.conn.last_sent + KEEPALIVE {
                            v.st.keepalives += 1;
                            v.conn.control(now, vfd, &mut vtx, ctrl::KEEPALIVE, 0, &[0]);
                        }
                        rx_due.min(v.conn.last_sent + KEEPALIVE)
                    }
                    _ => v
                        .conn
                        .hs_timer(now, latency, vfd, &mut vtx)
                        .unwrap_or(now + Duration::from_secs(3600)),
                };
                due[i] = d;
                next = next.min(d);
            }
            min_due = next;
        }
        vtx.flush(vfd);

        // Sleep until the next timer or datagram.
        let mut wake = if o.tick_us == 0 {
            min_due.min(now + Duration::from_millis(5))
        } else {
            min_due.max(now + Duration::from_micros(o.tick_us / 2))
        };
        if n > 0 && next_to_start < n {
            wake = wake.min(now + Duration::from_millis(1));
        }
        let timeout = wake.saturating_duration_since(Instant::now());
        if !timeout.is_zero() {
            if o.tick_us == 0 {
                udp::wait_readable(&[vfd], timeout.as_nanos() as u64);
            } else {
                // Sleep, not poll: what arrives meanwhile is read in one batch.
                let t = timeout.min(Duration::from_micros(o.tick_us));
                udp::wait_readable(&[], t.as_nanos() as u64);
            }
        }
    }

    // Done: close everything politely.
    let now = Instant::now();
    shared.stop.store(true, Ordering::Release);
    for v in viewers.iter_mut() {
        if v.conn.state == Hs::Connected {
            v.conn.control(now, vfd, &mut vtx, ctrl::SHUTDOWN, 0, &[0]);
        }
    }
    vtx.flush(vfd);
    let (pub_stats, pub_tx, pub_recv_syscalls) = match publisher.join() {
        Ok(r) => r?,
        Err(_) => bail!("the publisher thread panicked"),
    };
    let cpu_total_secs = (self_cpu_ticks() - cpu_start) as f64 / proc::clk_tck() as f64;

    let (Some(a), Some(b)) = (sample_a, sample_b) else {
        bail!("the measurement window never ran");
    };
    let (a, b) = (a.join().expect("sampler"), b.join().expect("sampler"));
    let cpu = cpu_report(&a, &b, watch);
    drop(perf_ctl);
    let (relay_syscalls, relay_syscalls_error) = match perf_thread.map(|t| t.join()) {
        None => (None, None),
        Some(Ok(Ok(r))) => (Some(r), None),
        Some(Ok(Err(e))) => (None, Some(format!("{e:#}"))),
        Some(Err(_)) => (None, Some("the perf thread panicked".to_string())),
    };
    if let Some(e) = &relay_syscalls_error {
        log(format!("relay syscalls not counted: {e}"));
    }
    if let Some(sink) = &sink {
        // What the sink counted and dropped never reached the socket counters.
        for (i, v) in viewers.iter_mut().enumerate() {
            let h = sink.head(i as u32);
            v.st.received += h.data;
            v.st.duplicates += h.duplicates + h.stale;
        }
    }
    let sink_report = sink.as_ref().map(Sink::report);
    drop(sink);
    let expected = win.end - win.start;

    let mut all = Hist::new();
    let mut rows = Vec::with_capacity(n);
    let mut totals = ViewerTotals::default();
    let mut rejections: std::collections::BTreeMap<String, u32> = Default::default();
    for (i, v) in viewers.iter().enumerate() {
        all.merge(&v.hist);
        let state = match v.conn.state {
            Hs::Connected | Hs::Closed if v.rx.is_some() => "connected".to_string(),
            Hs::Rejected(code) => format!("rejected {code}"),
            Hs::TimedOut => "timed out".to_string(),
            s => format!("{s:?}"),
        };
        if state != "connected" {
            *rejections.entry(state.clone()).or_default() += 1;
        }
        let rs = v.rx.as_ref().map(|r| r.stats).unwrap_or_default();
        let rtt = v.rx.as_ref().map(|r| r.rtt).unwrap_or_else(Rtt::default);
        totals.add(&v.st, rs.lost, rs.dropped, rs.acks_unanswered);
        rows.push(ViewerRow {
            viewer: i as u32,
            addr: v.conn.src.map(|a| a.to_string()).unwrap_or_default(),
            state,
            unique: v.st.unique,
            delivery: if expected > 0 {
                v.st.unique as f64 / expected as f64
            } else {
                0.0
            },
            on_time: if expected > 0 {
                v.st.on_time as f64 / expected as f64
            } else {
                0.0
            },
            latency_p50_us: v.hist.quantile(0.5) as f64 / 1e3,
            latency_p99_us: v.hist.quantile(0.99) as f64 / 1e3,
            latency_max_us: v.hist.max as f64 / 1e3,
            losses: rs.lost,
            rexmit_received: v.st.rexmit_received,
            rtt_us: rtt.rtt_us,
        });
    }
    let ratios: Vec<f64> = rows.iter().map(|r| r.delivery).collect();
    let on_time: Vec<f64> = rows.iter().map(|r| r.on_time).collect();
    let delivery = DeliveryReport {
        expected_per_viewer: expected,
        min: ratios
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
            .min(1e9),
        mean: if n > 0 {
            ratios.iter().sum::<f64>() / n as f64
        } else {
            0.0
        },
        max: ratios.iter().copied().fold(0.0, f64::max),
        on_time_min: on_time
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
            .min(1e9),
        on_time_mean: if n > 0 {
            on_time.iter().sum::<f64>() / n as f64
        } else {
            0.0
        },
        viewers_complete: rows.iter().filter(|r| r.unique == expected).count() as u32,
        total_delivered: rows.iter().map(|r| r.unique).sum(),
    };
    let window_secs = cpu.seconds;
    let report = Report {
        config: RunConfig {
            relay: o.relay.to_string(),
            viewers: o.viewers,
            bitrate_bps: o.bitrate,
            payload: o.payload,
            latency_ms: o.latency_ms,
            warmup_s: o.warmup,
            duration_s: o.duration,
            sid_template: o.sid_template.clone(),
            rx: match o.rx {
                RxMode::Socket => "socket".into(),
                RxMode::Xdp => "xdp".into(),
            },
        },
        connected: rows.iter().filter(|r| r.state == "connected").count() as u32,
        not_connected: rejections,
        window_first_index: win.start,
        window_end_index: win.end,
        delivery,
        latency_us: LatencyReport {
            p50: all.quantile(0.5) as f64 / 1e3,
            p99: all.quantile(0.99) as f64 / 1e3,
            p999: all.quantile(0.999) as f64 / 1e3,
            max: all.max as f64 / 1e3,
            mean: all.mean() as f64 / 1e3,
            samples: all.count,
        },
        viewer_totals: totals,
        publisher: pub_stats,
        cpu,
        generator: GeneratorReport {
            cpu_total_s: cpu_total_secs,
            run_s: t0.elapsed().as_secs_f64(),
            send_syscalls: vtx.syscalls + pub_tx.syscalls,
            recv_syscalls: vrecv.syscalls + pub_recv_syscalls,
            datagrams_sent: vtx.sent + pub_tx.sent,
            send_failed: vtx.failed + pub_tx.failed,
            stray,
        },
        delivered_pps: 0.0,
        full_acks_per_viewer_s: None,
        relay_syscalls,
        relay_syscalls_error,
        sink: sink_report,
        per_viewer: if o.per_viewer { Some(rows) } else { None },
    };
    let mut report = report;
    report.delivered_pps = report.delivery.total_delivered as f64 / window_secs.max(1e-6);
    report.full_acks_per_viewer_s = if n > 0 {
        Some(acks_in_window as f64 / window_secs.max(1e-6) / n as f64)
    } else {
        None
    };
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    /// The sink's rings without a kernel: one viewer.
    #[derive(Default)]
    struct FakeRings {
        next: Option<u32>,
        slots: RefCell<HashMap<u32, Arrived>>,
    }

    impl FakeRings {
        fn arrive(&mut self, seq: u32, rexmit: bool, index: u64) {
            self.slots.borrow_mut().insert(
                seq,
                Arrived {
                    len: 1316,
                    rexmit,
                    payload: Some((index, 1_000)),
                    rx_ns: 1_000 + 50_000,
                    rx_realtime: false,
                },
            );
            let n = Seq::new(seq).next();
            if self.next.is_none_or(|x| Seq::new(x).le(Seq::new(seq))) {
                self.next = Some(n.get());
            }
        }
    }

    impl Rings for FakeRings {
        fn ring(&self) -> u32 {
            16
        }
        fn next(&self, _: u32) -> Option<u32> {
            self.next
        }
        fn slot(&self, _: u32, seq: u32) -> Option<Arrived> {
            let n = self.next?;
            // What a 16-slot ring still holds.
            if Seq::new(n).diff(Seq::new(seq)) > 16 {
                return None;
            }
            self.slots.borrow().get(&seq).copied()
        }
    }

    fn viewer(isn: u32, now: Instant) -> Viewer {
        let mut conn = Conn::new(7, "10.0.0.1:9".parse().unwrap(), None, String::new(), now);
        conn.isn = Seq::new(isn);
        conn.state = Hs::Connected;
        Viewer {
            conn,
            rx: Some(Receiver::new(
                Seq::new(isn),
                Duration::from_millis(120),
                8192,
                now,
            )),
            seen: vec![0; 4],
            hist: Hist::new(),
            st: ViewerCountersView::default(),
            sink_next: Seq::new(isn),
            sink_missing: Vec::new(),
        }
    }

    #[test]
    fn sink_arrivals_drive_the_receiver_like_socket_arrivals() {
        let now = Instant::now();
        let win = Window {
            start: 0,
            end: 1000,
            cap: 256,
            late_ns: 120_000_000,
        };
        let mut tx = SendBatch::new();
        let mut fb = Vec::new();
        let mut io = ViewerIo {
            fd: -1,
            tx: &mut tx,
            fb: &mut fb,
            rt_offset: 0,
        };
        let isn = SEQ_MAX - 2; // crosses the 31-bit wrap
        let seq = |k: u32| Seq::new(isn).add(k).get();
        let mut rings = FakeRings::default();
        let mut v = viewer(isn, now);
        // Nothing yet.
        drain_sink(&rings, 0, &mut v, now, &win, &mut io);
        assert_eq!(v.st.unique, 0);
        // 0, 1, 3, 4 arrive: 2 is NAKed at once.
        for k in [0, 1, 3, 4] {
            rings.arrive(seq(k), false, u64::from(k));
        }
        drain_sink(&rings, 0, &mut v, now, &win, &mut io);
        assert_eq!(v.st.unique, 4);
        assert_eq!(v.st.naks_sent, 1);
        let rx = v.rx.as_ref().unwrap();
        assert!(rx.is_missing(Seq::new(seq(2))));
        assert_eq!(rx.ack_seq(), Seq::new(seq(2)));
        assert_eq!(v.sink_missing, vec![Seq::new(seq(2))]);
        // The retransmission fills the gap; the ACK moves past it.
        rings.arrive(seq(2), true, 2);
        drain_sink(&rings, 0, &mut v, now, &win, &mut io);
        assert_eq!((v.st.unique, v.st.rexmit_received), (5, 1));
        assert_eq!(v.rx.as_ref().unwrap().ack_seq(), Seq::new(seq(5)));
        assert!(v.sink_missing.is_empty());
        assert_eq!(v.hist.count, 5);
        assert_eq!(v.hist.max, 50_000);
        // A jump of more than a ring: the receiver sees the skipped packets as lost.
        for k in 5..40 {
            if k != 30 {
                rings.arrive(seq(k), false, u64::from(k));
            }
        }
        drain_sink(&rings, 0, &mut v, now, &win, &mut io);
        let rx = v.rx.as_ref().unwrap();
        assert_eq!(rx.next_seq(), Seq::new(seq(40)));
        assert!(rx.is_missing(Seq::new(seq(5))), "older than the ring");
        assert!(rx.is_missing(Seq::new(seq(30))));
        assert_eq!(v.sink_missing, vec![Seq::new(seq(30))]);
        assert_eq!(v.st.unique, 5 + 40 - 24 - 1);
        // Light ACK after 64 packets, counted like a socket arrival would be.
        for k in 40..140 {
            rings.arrive(seq(k), false, u64::from(k));
            drain_sink(&rings, 0, &mut v, now, &win, &mut io);
        }
        assert!(v.st.acks_light >= 1);
    }

    const SEQ_MAX: u32 = 0x7FFF_FFFF;
}
