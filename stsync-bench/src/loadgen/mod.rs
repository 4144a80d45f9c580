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
//!
//! Files: `setup` (options checked, keys, sockets, sink), `conn` (the caller handshake),
//! `publisher` (its thread), `viewers` (their loop's work), `sink_feed` (--rx xdp),
//! `window` (the phases, and what is measured at the window's edges), `report` (the
//! figures).

mod conn;
mod publisher;
mod report;
mod setup;
mod sink_feed;
mod viewers;
mod window;

pub(crate) use conn::{rand_u32, Conn, Hs, KEEPALIVE};
pub(crate) use publisher::{new_publisher, spawn_publisher, PubShared, PublisherOutcome};
pub(crate) use viewers::{ViewerCountersView, ViewerIo, BUFFER_PKTS};

use crate::report::{GeneratorReport, Report};
use crate::sink::{Attach, Sink};
use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use stsync_user::os::proc;
use viewers::Viewers;
use window::{self_cpu_ticks, Phases};

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
    #[command(flatten)]
    pub media: Media,
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
/// The stream the publisher sends, and the latency every client announces.
#[derive(Args, Debug, Clone, Serialize)]
pub struct Media {
    /// Publisher bitrate in bits per second of SRT payload (accepts k/M suffixes).
    #[arg(long, default_value = "4M", value_parser = parse_rate)]
    pub bitrate: u64,
    /// SRT payload bytes per packet.
    #[arg(long, default_value_t = 1316)]
    pub payload: usize,
    /// Latency (TSBPD) announced in HSREQ, ms: how long a viewer waits for a lost packet,
    /// and a packet later than this is not on time.
    #[arg(long, default_value_t = 120)]
    pub latency_ms: u16,
}

impl Media {
    pub fn check(&self) -> Result<()> {
        if self.payload < crate::caller::MIN_PAYLOAD
            || self.payload > stsync_common::srt::MAX_PAYLOAD
        {
            bail!(
                "--payload must be {}..={} bytes",
                crate::caller::MIN_PAYLOAD,
                stsync_common::srt::MAX_PAYLOAD
            );
        }
        if self.bitrate == 0 {
            bail!("--bitrate must be positive");
        }
        Ok(())
    }

    /// Packets per second the publisher sends.
    pub fn pkts_per_sec(&self) -> f64 {
        self.bitrate as f64 / (self.payload as f64 * 8.0)
    }
}

impl RxMode {
    /// As the option is spelled.
    pub fn name(self) -> &'static str {
        match self {
            RxMode::Socket => "socket",
            RxMode::Xdp => "xdp",
        }
    }
}

/// One run: the publisher streams, the viewers connect, and after the warm-up the window
/// is measured; then everything closes and the figures are put together.
pub fn run(o: &Opts) -> Result<Report> {
    let log = |s: String| {
        if !o.quiet {
            eprintln!("loadgen: {s}");
        }
    };
    let s = setup::Setup::new(o, &log)?;
    let ns_of = s.ns_of();
    let (t0, shared, sink) = (s.t0, s.shared, s.sink);
    let n = s.viewers.len();
    let mut vs = Viewers::new(
        s.viewers,
        s.view_fd.as_raw_fd(),
        s.id_base,
        o.media.latency_ms,
        t0,
    );
    let hard_deadline = t0
        + Duration::from_secs_f64(60.0 + o.warmup + o.duration)
        + Duration::from_millis(o.drain_ms);
    let publisher = {
        let deadline = hard_deadline + Duration::from_secs(1);
        spawn_publisher(
            s.publisher,
            o.media.latency_ms,
            o.media.payload,
            ns_of,
            deadline,
        )
        .context("starting the publisher thread")?
    };
    log(format!(
        "publishing to {} at {} bit/s ({:.0} packets/s of {} bytes), {n} viewers to {}",
        o.pub_relay.unwrap_or(o.relay),
        o.media.bitrate,
        o.media.pkts_per_sec(),
        o.media.payload,
        o.relay
    ));

    let mut phases = Phases::new(t0, n);
    loop {
        let now = Instant::now();
        if now >= hard_deadline {
            bail!("run exceeded its time bound ({:?})", hard_deadline - t0);
        }
        if publisher.is_finished() {
            shared.stop.store(true, Ordering::Release);
            return match publisher.join() {
                Ok(Err(e)) => Err(e),
                Ok(Ok(_)) => bail!("the publisher stopped early"),
                Err(_) => bail!("the publisher thread panicked"),
            };
        }
        if phases.advance(o, now, &shared, &mut vs, &log) {
            break;
        }
        vs.receive(&ns_of);
        if let Some(sink) = &sink {
            vs.take_from_sink(sink);
        }
        let now = Instant::now();
        vs.timers(now);
        vs.sleep(now, o.tick_us, phases.starting());
    }

    // Done: close everything politely.
    shared.stop.store(true, Ordering::Release);
    vs.close(Instant::now());
    let (pub_stats, pub_tx, pub_recv_syscalls) = match publisher.join() {
        Ok(r) => r?,
        Err(_) => bail!("the publisher thread panicked"),
    };
    let cpu_total_secs = (self_cpu_ticks() - s.cpu_start) as f64 / proc::clk_tck() as f64;
    let acks_in_window = phases.acks_in_window;
    let (cpu, relay_syscalls, relay_syscalls_error) = phases.finish(o.watch_pid, &log)?;
    if let Some(sink) = &sink {
        vs.add_sink_counts(sink);
    }
    let sink_report = sink.as_ref().map(Sink::report);
    drop(sink);
    let generator = GeneratorReport {
        cpu_total_s: cpu_total_secs,
        run_s: t0.elapsed().as_secs_f64(),
        send_syscalls: vs.io.tx.syscalls + pub_tx.syscalls,
        recv_syscalls: vs.recv.syscalls + pub_recv_syscalls,
        datagrams_sent: vs.io.tx.sent + pub_tx.sent,
        send_failed: vs.io.tx.failed + pub_tx.failed,
        stray: vs.stray,
    };
    Ok(report::build(
        o,
        &vs.list,
        &vs.win,
        report::Measured {
            cpu,
            publisher: pub_stats,
            generator,
            acks_in_window,
            relay_syscalls,
            relay_syscalls_error,
            sink: sink_report,
        },
    ))
}
