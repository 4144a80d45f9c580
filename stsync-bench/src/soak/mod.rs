//! `stsync-bench soak`: the relay under a long, realistic and partly hostile load, sampled
//! every few seconds for leaks and degradation (memory, CPU, file descriptors, connections,
//! honest viewers' delivery, what an abusive viewer gets out of it).
//!
//! Everything runs on loopback (127/8): the relay is started with a config written here, on
//! free ports of 127.0.0.1; clients use their own 127.0.x.y source addresses so the relay
//! sees distinct peers:
//!
//! ```text
//! publisher       127.0.5.1        one paced stream for the whole run (the load generator's)
//! honest viewers  127.0.2.1 + i    connected the whole run; delivery judged per interval
//! churn viewers   127.0.4.0/22     join at --churn-rate, leave with SHUTDOWN or die silently
//! NAK attacker    127.0.3.1        a proper viewer that sends NAK storms
//! flood           127.0.3.2        bursts of handshakes that are always refused
//! garbage, spoofs 127.0.3.3        random datagrams; control packets for live connections
//! ```
//!
//! The relay runs in its own process group (Ctrl-C reaches only this tool, which then
//! stops it and writes what it has) and dies with this process (PR_SET_PDEATHSIG).

pub mod clients;
pub mod stats;

use crate::loadgen::{new_publisher, spawn_publisher, Media, PubShared, PublisherOutcome};
use crate::plot::{draw_time_series, TimePanel};
use crate::sweep::{exe_sibling, fingerprint, machine, Machine, RelayProc};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use clients::{Common, EvalRequest, KeyPool, Shared, C, NAMES};
use serde::Serialize;
use stats::{ConnDeltas, RelayMetrics, Sample, Schedule, Summary};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use stsync_user::os::proc::{self, loadavg, CpuTimes, Stat, Status};
use stsync_user::os::{clock, udp};

const TOKEN: &str = "stsync-soak-token-5b1e0d";
const PUBLISHER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 5, 1);
const HONEST_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 2, 1);
const CHURN_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 4, 1);
const CHURN_IPS: u32 = 1000;
const ATTACKER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 3, 1);
const FLOOD_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 3, 2);
const GARBAGE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 3, 3);

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Datapath {
    Userspace,
    Ebpf,
    Auto,
}

impl Datapath {
    fn arg(self) -> &'static str {
        match self {
            Datapath::Userspace => "userspace",
            Datapath::Ebpf => "ebpf",
            Datapath::Auto => "auto",
        }
    }
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct SoakOpts {
    /// How long the load runs, minutes (fractions allowed).
    #[arg(long, default_value_t = 30.0)]
    pub minutes: f64,
    /// Output directory: samples.csv, samples.json, soak.svg, summary.txt, relay.log.
    #[arg(long, default_value = "target/soak")]
    pub out: PathBuf,
    /// The relay binary (default: stsync-proxy next to this executable).
    #[arg(long)]
    pub relay_bin: Option<PathBuf>,
    /// The relay's --datapath. On loopback its eBPF program attaches to `lo` only.
    #[arg(long, value_enum, default_value_t = Datapath::Auto)]
    pub datapath: Datapath,
    /// The relay's --ebpf-object (default: its own default).
    #[arg(long)]
    pub ebpf_object: Option<PathBuf>,
    /// Seconds between samples.
    #[arg(long, default_value_t = 5.0)]
    pub sample_secs: f64,
    #[command(flatten)]
    #[serde(flatten)]
    pub media: Media,
    /// Honest viewers, connected for the whole run.
    #[arg(long, default_value_t = 5)]
    pub viewers: u32,
    /// Churn viewers joining per second (0: no churn).
    #[arg(long, default_value_t = 2.0)]
    pub churn_rate: f64,
    /// Shortest and longest life of a churn viewer, seconds (uniform in between).
    #[arg(long, default_value_t = 2.0)]
    pub churn_life_min: f64,
    #[arg(long, default_value_t = 20.0)]
    pub churn_life_max: f64,
    /// Fraction of churn viewers that die without SHUTDOWN (stop answering) instead of
    /// leaving politely.
    #[arg(long, default_value_t = 0.5)]
    pub churn_silent: f64,
    /// Garbage datagrams per second (0: none).
    #[arg(long, default_value_t = 50.0)]
    pub garbage_rate: f64,
    /// Spoofed/malformed control packets for live connections per second (0: none).
    #[arg(long, default_value_t = 20.0)]
    pub spoof_rate: f64,
    /// No NAK attacker at all.
    #[arg(long)]
    pub no_nak_storm: bool,
    /// NAKs per second during a storm.
    #[arg(long, default_value_t = 100.0)]
    pub nak_rate: f64,
    /// Loss ranges in each storm NAK (182 two-word ranges fill one 1472-byte datagram).
    #[arg(long, default_value_t = 182)]
    pub nak_ranges: u32,
    /// Packets each storm NAK covers, back from the attacker's newest (at most what it saw).
    #[arg(long, default_value_t = 8192)]
    pub nak_span: u32,
    /// Hostile period (s): a NAK storm and a handshake flood each happen once per period.
    #[arg(long, default_value_t = 60.0)]
    pub hostile_every: f64,
    /// Storm start within each period (s) and length (s).
    #[arg(long, default_value_t = 20.0)]
    pub storm_at: f64,
    #[arg(long, default_value_t = 5.0)]
    pub storm_secs: f64,
    /// No handshake flood.
    #[arg(long)]
    pub no_hs_flood: bool,
    /// Flood start within each period (s), length (s) and handshake attempts per second.
    #[arg(long, default_value_t = 40.0)]
    pub flood_at: f64,
    #[arg(long, default_value_t = 5.0)]
    pub flood_secs: f64,
    #[arg(long, default_value_t = 200.0)]
    pub flood_rate: f64,
    /// No hostile traffic of any kind (garbage, spoofs, NAK storms, flood).
    #[arg(long)]
    pub no_hostile: bool,
    /// Seed of the garbage, spoofs and churn (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// RUST_LOG for the relay.
    #[arg(long, default_value = "info")]
    pub relay_log: String,
}

/// How a soak ended when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Completed,
    Interrupted,
}

#[derive(Debug, Serialize)]
struct RunInfo {
    opts: SoakOpts,
    seed: u64,
    machine: Machine,
    started_unix: u64,
    relay_bin: String,
    relay_pid: u32,
    srt: String,
    http: String,
    /// The datapath the relay reported (stsync_datapath).
    datapath: Option<String>,
    loadavg_start: String,
    loadavg_end: String,
    rss_kb_idle: Option<u64>,
    fds_idle: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Results<'a> {
    run: &'a RunInfo,
    /// Why the soak did not complete (relay died, interrupted), if so.
    outcome: String,
    summary: Summary,
    totals: BTreeMap<&'static str, u64>,
    flood_rejections: BTreeMap<u32, u64>,
    events: Vec<(f64, String)>,
    samples: &'a [Sample],
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Relaxed);
}

fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// A free port on 127.0.0.1 for `kind` (UDP or TCP), found by binding port 0.
fn free_port(udp: bool) -> Result<u16> {
    let port = if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    };
    Ok(port)
}

fn log_tail(path: &Path, lines: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(lines).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

fn exit_reason(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

fn start_relay(
    o: &SoakOpts,
    bin: &Path,
    cfg: &Path,
    log_path: &Path,
    http: SocketAddr,
) -> Result<RelayProc> {
    let log = std::fs::File::create(log_path)?;
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
        .arg(cfg)
        .args(["--datapath", o.datapath.arg()]);
    if o.datapath != Datapath::Userspace {
        cmd.args(["--ebpf-interfaces", "lo"]);
    }
    if let Some(obj) = &o.ebpf_object {
        cmd.arg("--ebpf-object").arg(obj);
    }
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .env("RUST_LOG", &o.relay_log)
        .process_group(0);
    // SAFETY: prctl is async-signal-safe; it only sets this child's parent-death signal.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut relay = RelayProc { child };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = relay.child.try_wait()? {
            bail!(
                "the relay exited at start ({}):\n{}",
                exit_reason(status),
                log_tail(log_path, 10)
            );
        }
        if crate::http::healthy(None, http) {
            return Ok(relay);
        }
        if Instant::now() > deadline {
            bail!(
                "the relay did not answer /v1/health within 15 s:\n{}",
                log_tail(log_path, 10)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn self_cpu_ticks() -> u64 {
    Stat::read("self").map_or(0, |s| s.cpu_ticks())
}

fn scrape(http: SocketAddr) -> (Option<RelayMetrics>, f64) {
    let t = Instant::now();
    let m = crate::http::metrics(None, http)
        .ok()
        .and_then(|body| RelayMetrics::parse(&body).ok());
    (m, t.elapsed().as_secs_f64() * 1e3)
}

/// The publisher of the moment: restarted (with a fresh key, continuing the payload
/// numbering) if the relay drops it.
struct Pub {
    shared: Arc<PubShared>,
    thread: Option<JoinHandle<PublisherOutcome>>,
    restarts: u32,
}

struct PubCfg {
    relay: SocketAddrV4,
    sid_template: String,
    media: Media,
    deadline: Instant,
    t0: Instant,
    base_ns: u64,
}

impl PubCfg {
    fn spawn(
        &self,
        key: &str,
        first_index: u64,
    ) -> Result<(Arc<PubShared>, JoinHandle<PublisherOutcome>)> {
        let fd = udp::udp_socket(SocketAddrV4::new(PUBLISHER_IP, 0), 4 << 20)
            .context("publisher socket")?;
        let sid = crate::caller::stream_id(&self.sid_template, "1", key, "publish");
        let (publ, shared) = new_publisher(
            fd,
            self.relay,
            sid,
            &self.media,
            first_index,
            Instant::now(),
        );
        let (t0, base_ns) = (self.t0, self.base_ns);
        let ns_of = move |i: Instant| base_ns + i.saturating_duration_since(t0).as_nanos() as u64;
        let h = spawn_publisher(
            publ,
            self.media.latency_ms,
            self.media.payload,
            ns_of,
            self.deadline,
        )
        .context("starting the publisher thread")?;
        Ok((shared, h))
    }
}

impl Pub {
    fn next_index(&self) -> u64 {
        self.shared.next_index.load(Relaxed)
    }
}

/// State carried from one sample to the next.
struct Sampler {
    pid: u32,
    http: SocketAddr,
    last_t: Instant,
    last_cpu: Option<(u64, u64)>,
    last_sys: CpuTimes,
    last_self: u64,
    last_counters: clients::Snapshot,
    last_dropped: Option<f64>,
    last_heap: Option<f64>,
    deltas: ConnDeltas,
    honest_deltas: ConnDeltas,
    /// Publisher payload index at each sample, and when (seconds since the start); the
    /// first at the start of the judged run.
    marks: Vec<(u64, f64)>,
    last_lost: u64,
    last_given_up: u64,
}

impl Sampler {
    #[allow(clippy::too_many_arguments)]
    fn take(
        &mut self,
        t0: Instant,
        sh: &Shared,
        evals: &mpsc::Sender<EvalRequest>,
        judge: Option<((u64, f64), (u64, f64))>,
        pub_next: u64,
        storms: &Schedule,
        flood: &Schedule,
    ) -> Sample {
        let now = Instant::now();
        let dt = now.duration_since(self.last_t).as_secs_f64().max(1e-6);
        let tck = proc::clk_tck() as f64;
        let pct = |ticks: u64| ticks as f64 / tck / dt * 100.0;
        let pid = self.pid;
        let status = Status::read(pid).unwrap_or_default();
        let cpu = Stat::read(pid).map(|s| s.user_sys());
        let (cpu_pct, cpu_user_pct, cpu_sys_pct) = match (self.last_cpu, cpu) {
            (Some(a), Some(b)) => (
                Some(pct((b.0 + b.1).saturating_sub(a.0 + a.1))),
                Some(pct(b.0.saturating_sub(a.0))),
                Some(pct(b.1.saturating_sub(a.1))),
            ),
            _ => (None, None, None),
        };
        self.last_cpu = cpu;
        let machine = CpuTimes::read();
        let me = self_cpu_ticks();
        let (m, metrics_ms) = scrape(self.http);
        let counters = sh.snapshot();
        let d = |c: C| counters[c as usize].saturating_sub(self.last_counters[c as usize]);
        let attacker_ids = sh.attacker_ids.lock().expect("ids").clone();
        let honest_ids = sh.honest_ids.lock().expect("ids").clone();
        let mut s = Sample {
            t_s: now.duration_since(t0).as_secs_f64(),
            interval_s: dt,
            rss_kb: status.field("VmRSS"),
            cpu_pct,
            cpu_user_pct,
            cpu_sys_pct,
            fds: proc::fd_count(pid),
            threads: status.field("Threads"),
            metrics_ok: m.is_some(),
            metrics_ms,
            attacker_rx_bytes_per_s: d(C::AttackerRxBytes) as f64 / dt,
            honest_connected: sh.honest_connected.load(Relaxed),
            storm: storms.overlap(
                self.last_t.duration_since(t0).as_secs_f64(),
                now.duration_since(t0).as_secs_f64(),
            ) / dt,
            flood: flood.overlap(
                self.last_t.duration_since(t0).as_secs_f64(),
                now.duration_since(t0).as_secs_f64(),
            ) / dt,
            naks_sent: d(C::NaksSent),
            churn_joined: d(C::ChurnJoined),
            churn_left: d(C::ChurnLeft),
            churn_died: d(C::ChurnDied),
            churn_failed: d(C::ChurnFailed),
            churn_closed_by_relay: d(C::ChurnClosedByRelay),
            churn_alive: sh.churn_alive.load(Relaxed),
            to_dead_bytes_per_s: d(C::ToDeadBytes) as f64 / dt,
            flood_attempts: d(C::FloodAttempts),
            flood_rejected: d(C::FloodRejected),
            flood_unanswered: d(C::FloodUnanswered),
            garbage_sent: d(C::GarbageSent),
            spoof_sent: d(C::SpoofSent),
            publisher_sent: pub_next.saturating_sub(self.marks.last().map_or(0, |m| m.0)),
            system_busy_pct: pct(machine.busy().saturating_sub(self.last_sys.busy())),
            softirq_pct: pct((machine.softirq + machine.irq)
                .saturating_sub(self.last_sys.softirq + self.last_sys.irq)),
            soak_cpu_pct: pct(me.saturating_sub(self.last_self)),
            ..Default::default()
        };
        let honest_n = sh.honest_connected.load(Relaxed).max(1);
        s.honest_rx_bytes_per_s = d(C::HonestRxBytes) as f64 / dt / f64::from(honest_n);
        s.honest_rx_pkts_per_s = d(C::HonestRxPackets) as f64 / dt / f64::from(honest_n);
        if let Some(m) = &m {
            s.conns_handshake = m.current("handshake");
            s.conns_request = m.current("request");
            s.conns_publish = m.current("publish");
            s.conns_total = m.connections_total.map(|v| v as u64);
            s.dropped_per_s = self
                .last_dropped
                .map(|l| (m.dropped_total - l).max(0.0) / dt);
            s.heap_allocs_per_s = match (self.last_heap, m.heap_allocations) {
                (Some(a), Some(b)) => Some((b - a).max(0.0) / dt),
                _ => None,
            };
            self.last_dropped = Some(m.dropped_total);
            self.last_heap = m.heap_allocations;
            if !honest_ids.is_empty() {
                let h = self.honest_deltas.step(m, &honest_ids);
                s.honest_relay_pkts_per_s = Some(
                    (h.data_packets_sent + h.data_packets_sent_kernel)
                        / dt
                        / honest_ids.len() as f64,
                );
            }
            if !attacker_ids.is_empty() {
                let a = self.deltas.step(m, &attacker_ids);
                s.attacker_relay_bytes_per_s = Some(a.data_bytes_sent / dt);
                s.attacker_retrans_per_s = Some(a.data_packets_retransmitted / dt);
            }
        }
        // Delivery of the judged range.
        let (tx, rx) = mpsc::channel();
        let reply = judge.and_then(|((from, _), (to, _))| {
            evals
                .send(EvalRequest {
                    from,
                    to,
                    reply: tx,
                })
                .ok()?;
            rx.recv_timeout(Duration::from_secs(5)).ok()
        });
        if let (Some(((from, from_s), (to, to_s))), Some(r)) = (judge, reply) {
            s.delivery_from = from;
            s.delivery_to = to;
            s.delivery_from_s = Some(from_s);
            s.delivery_to_s = Some(to_s);
            if to > from && !r.per_viewer.is_empty() {
                let n = (to - from) as f64;
                let ratios: Vec<f64> = r.per_viewer.iter().map(|v| v.received as f64 / n).collect();
                s.honest_delivery_min = ratios.iter().copied().reduce(f64::min);
                s.honest_delivery_mean = Some(ratios.iter().sum::<f64>() / ratios.len() as f64);
                s.honest_on_time_min = r
                    .per_viewer
                    .iter()
                    .map(|v| v.on_time as f64 / n)
                    .reduce(f64::min);
                s.honest_gaps = r.per_viewer.iter().map(|v| v.gaps).sum();
                s.honest_max_gap = r.per_viewer.iter().map(|v| v.max_gap).max().unwrap_or(0);
            }
            s.honest_lost = r.lost.saturating_sub(self.last_lost);
            s.honest_given_up = r.given_up.saturating_sub(self.last_given_up);
            self.last_lost = r.lost;
            self.last_given_up = r.given_up;
        }
        self.last_t = now;
        self.last_sys = machine;
        self.last_self = me;
        self.last_counters = counters;
        self.marks.push((pub_next, s.t_s));
        s
    }
}

fn print_progress(s: &Sample) {
    let f = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |v| format!("{v:.p$}"));
    eprintln!(
        "soak: t={:6.0} s  rss {} KiB  cpu {} %  fds {}  conns req {} hs {}  honest {}/{} on time {}  attacker {} B/s{}{}",
        s.t_s,
        s.rss_kb.map_or("-".into(), |v| v.to_string()),
        f(s.cpu_pct, 1),
        s.fds.map_or("-".into(), |v| v.to_string()),
        s.conns_request.map_or("-".into(), |v| v.to_string()),
        s.conns_handshake.map_or("-".into(), |v| v.to_string()),
        f(s.honest_delivery_min, 4),
        s.honest_connected,
        f(s.honest_on_time_min, 4),
        f(s.attacker_relay_bytes_per_s, 0),
        if s.storm > 0.0 { "  [storm]" } else { "" },
        if s.flood > 0.0 { "  [flood]" } else { "" },
    );
}

/// The summary as printed and written to summary.txt.
pub fn summary_text(m: &Summary, run_line: &str, outcome: &str, extra: &[String]) -> String {
    let mib = |v: Option<u64>| v.map_or("-".into(), |v| format!("{:.1} MiB", v as f64 / 1024.0));
    let f = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |v| format!("{v:.p$}"));
    let u = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let mbs = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.2} MB/s", v / 1e6));
    let mut s = String::new();
    s += &format!("{run_line}\n");
    s += &format!("  outcome          {outcome}\n");
    s += &format!(
        "  relay RSS        start {}, end {}, max {}\n",
        mib(m.rss_kb_start),
        mib(m.rss_kb_end),
        mib(m.rss_kb_max)
    );
    s += &format!(
        "  relay CPU        mean {} %, max {} % of one core (the busiest sample interval)\n",
        f(m.cpu_pct_mean, 1),
        f(m.cpu_pct_max, 1),
    );
    s += &format!(
        "  open fds         min {}, max {} (start {}, end {}); threads max {}\n",
        u(m.fds_min),
        u(m.fds_max),
        u(m.fds_start),
        u(m.fds_end),
        u(m.threads_max)
    );
    s += &format!(
        "  connections      request max {} (end {}), handshake max {} (end {})\n",
        u(m.conns_request_max),
        u(m.conns_request_end),
        u(m.conns_handshake_max),
        u(m.conns_handshake_end)
    );
    s += &format!(
        "  honest viewers   delivery min {} (on time min {}), mean {} over {} packets; {} gaps, longest {} packets\n",
        f(m.honest_delivery_min, 4),
        f(m.honest_on_time_min, 4),
        f(m.honest_delivery_mean, 5),
        m.honest_packets_judged,
        m.honest_gaps,
        m.honest_max_gap
    );
    s += &format!(
        "  NAK attacker     relay sent it {} on average, {} at most (a sample), {} per storm second ({:.0} s of storms); its socket got {}\n",
        mbs(m.attacker_bytes_per_s_mean),
        mbs(m.attacker_bytes_per_s_max),
        mbs(m.attacker_bytes_per_storm_s),
        m.storm_seconds,
        mbs(Some(m.attacker_rx_bytes_per_s_mean))
    );
    s += &format!(
        "  honest bytes     {} per viewer\n",
        mbs(Some(m.honest_bytes_per_s_mean))
    );
    s += &format!("  metrics          {} failed scrapes\n", m.metrics_failures);
    for l in extra {
        s += &format!("  {l}\n");
    }
    s
}

fn plot(samples: &[Sample], storms: &Schedule, flood: &Schedule, path: &Path) -> Result<()> {
    let line = |name: &str, f: &dyn Fn(&Sample) -> Option<f64>| {
        (
            name.to_string(),
            samples
                .iter()
                .filter_map(|s| f(s).map(|v| (s.t_s, v)))
                .collect::<Vec<_>>(),
        )
    };
    // Log panels start at 10 kB/s: below that is only control traffic.
    let panel =
        |title: &str, y: &str, log_y: bool, series: Vec<(String, Vec<(f64, f64)>)>| TimePanel {
            title: title.into(),
            y_label: y.into(),
            series,
            y_min: log_y.then_some(0.01),
            log_y,
        };
    // Delivery is judged one interval late: draw each value at the middle of the stretch of
    // the stream it judges, with the storms and floods (as 0/1 steps) alongside.
    let delivery = |name: &str, f: &dyn Fn(&Sample) -> Option<f64>| {
        (
            name.to_string(),
            samples
                .iter()
                .filter_map(|s| {
                    let (a, b) = (s.delivery_from_s?, s.delivery_to_s?);
                    Some(((a + b) / 2.0, f(s)?))
                })
                .collect::<Vec<_>>(),
        )
    };
    let t_end = samples.last().map_or(0.0, |s| s.t_s);
    let steps = |name: &str, w: &Schedule| {
        let mut v = vec![(0.0, 0.0)];
        let mut start = w.first;
        while w.enabled && start < t_end {
            let end = (start + w.secs).min(t_end);
            v.extend([(start, 0.0), (start, 1.0), (end, 1.0), (end, 0.0)]);
            if w.every <= 0.0 {
                break;
            }
            start += w.every;
        }
        v.push((t_end, 0.0));
        (name.to_string(), v)
    };
    let panels = vec![
        panel(
            "Relay RSS",
            "MiB",
            false,
            vec![line("", &|s| s.rss_kb.map(|v| v as f64 / 1024.0))],
        ),
        panel(
            "Relay CPU (utime+stime) and machine softirq",
            "% of one core",
            false,
            vec![
                line("relay", &|s| s.cpu_pct),
                line("softirq+irq (machine)", &|s| Some(s.softirq_pct)),
            ],
        ),
        panel(
            "Relay open file descriptors and threads",
            "count",
            false,
            vec![
                line("fds", &|s| s.fds.map(|v| v as f64)),
                line("threads", &|s| s.threads.map(|v| v as f64)),
            ],
        ),
        panel(
            "Relay connections (srt_connections_current)",
            "connections",
            false,
            vec![
                line("request", &|s| s.conns_request.map(|v| v as f64)),
                line("handshake", &|s| s.conns_handshake.map(|v| v as f64)),
                line("publish", &|s| s.conns_publish.map(|v| v as f64)),
            ],
        ),
        panel(
            "Honest viewers' delivery (worst viewer) by publish time",
            "received / published",
            false,
            vec![
                delivery("delivered", &|s| s.honest_delivery_min),
                delivery("on time", &|s| s.honest_on_time_min),
                steps("NAK storm", storms),
                steps("handshake flood", flood),
            ],
        ),
        panel(
            "Data to the NAK attacker vs an honest viewer (log)",
            "MB/s",
            true,
            vec![
                line("to attacker (relay's count)", &|s| {
                    s.attacker_relay_bytes_per_s.map(|v| v / 1e6)
                }),
                line("attacker socket got", &|s| {
                    Some(s.attacker_rx_bytes_per_s / 1e6)
                }),
                line("honest viewer got", &|s| {
                    Some(s.honest_rx_bytes_per_s / 1e6)
                }),
            ],
        ),
    ];
    draw_time_series(&panels, path)
}

/// Redraws `DIR/soak.svg` from `DIR/samples.json` (e.g. after a change to the plot).
pub fn replot(dir: &Path) -> Result<()> {
    let path = dir.join("samples.json");
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    let samples: Vec<Sample> = serde_json::from_value(v["samples"].clone())?;
    let o = &v["run"]["opts"];
    let f = |k: &str| o[k].as_f64().unwrap_or(0.0);
    let b = |k: &str| o[k].as_bool().unwrap_or(false);
    let hostile = !b("no_hostile");
    let storms = Schedule {
        enabled: hostile && !b("no_nak_storm"),
        first: f("storm_at"),
        every: f("hostile_every"),
        secs: f("storm_secs"),
    };
    let flood = Schedule {
        enabled: hostile && !b("no_hs_flood"),
        first: f("flood_at"),
        every: f("hostile_every"),
        secs: f("flood_secs"),
    };
    plot(&samples, &storms, &flood, &dir.join("soak.svg"))
}

pub fn run(o: &SoakOpts) -> Result<Ending> {
    if o.minutes <= 0.0 || o.sample_secs <= 0.0 {
        bail!("--minutes and --sample-secs must be positive");
    }
    o.media.check()?;
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    install_signal_handlers();
    let seed = o.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });

    // The relay.
    let bin = o
        .relay_bin
        .clone()
        .unwrap_or_else(|| exe_sibling("stsync-proxy"));
    let bin_bytes = std::fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?;
    let relay_desc = fingerprint(&bin, &bin_bytes);
    drop(bin_bytes);
    let srt = SocketAddrV4::new(Ipv4Addr::LOCALHOST, free_port(true)?);
    let http = SocketAddr::from(([127, 0, 0, 1], free_port(false)?));
    let cfg_path = o.out.join("relay.json");
    std::fs::write(
        &cfg_path,
        serde_json::to_string_pretty(&serde_json::json!({
            "srt_listen": srt.to_string(),
            "http_listen": http.to_string(),
            "latency_ms": o.media.latency_ms,
            "streams": [{ "id": "1", "name": "soak", "token": TOKEN }]
        }))?,
    )?;
    let log_path = o.out.join("relay.log");
    eprintln!(
        "soak: starting {} --datapath {} (SRT {srt}, HTTP {http}), log in {}",
        bin.display(),
        o.datapath.arg(),
        log_path.display()
    );
    let mut relay = start_relay(o, &bin, &cfg_path, &log_path, http)?;
    let pid = relay.pid();
    let (m0, _) = scrape(http);
    let mut info = RunInfo {
        opts: o.clone(),
        seed,
        machine: machine(),
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        relay_bin: relay_desc,
        relay_pid: pid,
        srt: srt.to_string(),
        http: http.to_string(),
        datapath: m0.and_then(|m| m.datapath),
        loadavg_start: loadavg(),
        loadavg_end: String::new(),
        rss_kb_idle: proc::rss_kb(pid),
        fds_idle: proc::fd_count(pid),
    };
    eprintln!(
        "soak: relay pid {pid}, datapath {}, idle RSS {} KiB, {} fds",
        info.datapath.as_deref().unwrap_or("?"),
        info.rss_kb_idle.unwrap_or(0),
        info.fds_idle.unwrap_or(0)
    );

    // The load.
    let duration = Duration::from_secs_f64(o.minutes * 60.0);
    let t0 = Instant::now();
    let end = t0 + duration;
    let hard_deadline = end + Duration::from_secs(120);
    let sh = Arc::new(Shared::new(t0));
    let keys = Arc::new(KeyPool::new());
    let common = Common {
        relay: srt,
        stream: "1".into(),
        sid_template: "#!::r={stream},s={key},m={mode}".into(),
        latency_ms: o.media.latency_ms,
        seed,
        hard_deadline,
    };
    let hostile = !o.no_hostile;
    let storms = Schedule {
        enabled: hostile && !o.no_nak_storm,
        first: o.storm_at,
        every: o.hostile_every,
        secs: o.storm_secs,
    };
    let flood = Schedule {
        enabled: hostile && !o.no_hs_flood,
        first: o.flood_at,
        every: o.hostile_every,
        secs: o.flood_secs,
    };
    let mut threads: Vec<(&str, JoinHandle<Result<()>>)> = Vec::new();
    let minter = {
        let (keys, sh) = (keys.clone(), sh.clone());
        let target = (o.churn_rate * 4.0) as usize + o.viewers as usize + 8;
        std::thread::Builder::new()
            .name("keys".into())
            .spawn(move || {
                keys.run(http, "1", TOKEN, target, &sh);
                Ok(())
            })?
    };
    threads.push(("keys", minter));
    let wait_keys = Instant::now() + Duration::from_secs(10);
    while keys.len() < o.viewers as usize + 2 {
        if Instant::now() > wait_keys {
            sh.stop.store(true, Relaxed);
            bail!("could not mint session keys from {http}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let pcfg = PubCfg {
        relay: srt,
        sid_template: common.sid_template.clone(),
        media: o.media.clone(),
        deadline: hard_deadline,
        t0,
        base_ns: clock::monotonic_ns(),
    };
    let (shared, h) = pcfg.spawn(&keys.take().context("no key")?, 0)?;
    let mut publ = Pub {
        shared,
        thread: Some(h),
        restarts: 0,
    };
    let wait_pub = Instant::now() + Duration::from_secs(10);
    while !publ.shared.publishing.load(Relaxed) {
        if publ.thread.as_ref().is_some_and(|t| t.is_finished()) || Instant::now() > wait_pub {
            sh.stop.store(true, Relaxed);
            publ.shared.stop.store(true, Relaxed);
            let why = match publ.thread.take().map(|t| t.join()) {
                Some(Ok(Err(e))) => format!("{e:#}"),
                _ => "no answer within 10 s".into(),
            };
            bail!("the publisher could not connect: {why}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    let pkts_per_sec = o.media.pkts_per_sec();
    let (eval_tx, eval_rx) = mpsc::channel();
    {
        let cfg = clients::ViewersCfg {
            common: common.clone(),
            honest: o.viewers,
            honest_ip: HONEST_IP,
            churn_ip: CHURN_IP,
            churn_ips: CHURN_IPS,
            churn_rate: o.churn_rate,
            churn_life: (o.churn_life_min, o.churn_life_max.max(o.churn_life_min)),
            churn_silent: o.churn_silent,
            ring: (pkts_per_sec * (3.0 * o.sample_secs + 30.0)) as usize,
        };
        let (keys, sh) = (keys.clone(), sh.clone());
        threads.push((
            "viewers",
            std::thread::Builder::new()
                .name("viewers".into())
                .spawn(move || clients::viewers_thread(cfg, keys, sh, eval_rx))?,
        ));
    }
    if storms.enabled {
        let cfg = clients::AttackerCfg {
            common: common.clone(),
            src: ATTACKER_IP,
            storms,
            nak_rate: o.nak_rate,
            nak_ranges: o.nak_ranges,
            nak_span: o.nak_span,
        };
        let (keys, sh) = (keys.clone(), sh.clone());
        threads.push((
            "attacker",
            std::thread::Builder::new()
                .name("attacker".into())
                .spawn(move || clients::attacker_thread(cfg, keys, sh))?,
        ));
    }
    if hostile && (o.garbage_rate > 0.0 || o.spoof_rate > 0.0 || flood.enabled) {
        let cfg = clients::HostileCfg {
            common: common.clone(),
            garbage_src: GARBAGE_IP,
            garbage_rate: o.garbage_rate,
            spoof_rate: o.spoof_rate,
            flood_src: FLOOD_IP,
            flood,
            flood_rate: o.flood_rate,
        };
        let sh = sh.clone();
        threads.push((
            "hostile",
            std::thread::Builder::new()
                .name("hostile".into())
                .spawn(move || clients::hostile_thread(cfg, sh))?,
        ));
    }

    // Wait (bounded) for the honest viewers, then start judging delivery.
    let wait_viewers = Instant::now() + Duration::from_secs(10);
    while sh.honest_connected.load(Relaxed) < o.viewers && Instant::now() < wait_viewers {
        std::thread::sleep(Duration::from_millis(20));
    }
    if sh.honest_connected.load(Relaxed) < o.viewers {
        sh.event(format!(
            "only {}/{} honest viewers connected after 10 s",
            sh.honest_connected.load(Relaxed),
            o.viewers
        ));
    }
    std::thread::sleep(Duration::from_millis(500));

    let mut sampler = Sampler {
        pid,
        http,
        last_t: Instant::now(),
        last_cpu: Stat::read(pid).map(|s| s.user_sys()),
        last_sys: CpuTimes::read(),
        last_self: self_cpu_ticks(),
        last_counters: sh.snapshot(),
        last_dropped: None,
        last_heap: None,
        deltas: ConnDeltas::default(),
        honest_deltas: ConnDeltas::default(),
        marks: vec![(publ.next_index(), t0.elapsed().as_secs_f64())],
        last_lost: 0,
        last_given_up: 0,
    };
    // First baseline of the relay's counters at t0 (no row).
    if let (Some(m), _) = scrape(http) {
        sampler.last_dropped = Some(m.dropped_total);
        sampler.last_heap = m.heap_allocations;
        let honest_ids = sh.honest_ids.lock().expect("ids").clone();
        sampler.honest_deltas.step(&m, &honest_ids);
        let attacker_ids = sh.attacker_ids.lock().expect("ids").clone();
        sampler.deltas.step(&m, &attacker_ids);
    }

    let csv_path = o.out.join("samples.csv");
    let mut csv = std::fs::File::create(&csv_path)?;
    writeln!(csv, "{}", Sample::CSV_HEADER)?;
    let mut samples: Vec<Sample> = Vec::new();
    let interval = Duration::from_secs_f64(o.sample_secs);
    let mut next_sample = t0 + interval;
    let mut failure: Option<String> = None;
    eprintln!(
        "soak: load running for {:.1} min: publisher {:.1} Mbit/s, {} honest viewers, churn {}/s, hostile {}",
        o.minutes,
        o.media.bitrate as f64 / 1e6,
        o.viewers,
        o.churn_rate,
        if hostile { "on" } else { "off" }
    );

    let ending = loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = Instant::now();
        if let Some(status) = relay.child.try_wait()? {
            let why = format!(
                "the relay died at t={:.1} s ({}); last lines of its log:\n{}",
                t0.elapsed().as_secs_f64(),
                exit_reason(status),
                log_tail(&log_path, 15)
            );
            sh.event(format!("relay died: {}", exit_reason(status)));
            failure = Some(why);
            break Ending::Completed;
        }
        if INTERRUPTED.load(Relaxed) {
            sh.event("interrupted");
            break Ending::Interrupted;
        }
        if let Some((name, _)) = threads.iter().find(|(_, t)| t.is_finished()) {
            let name = *name;
            let i = threads.iter().position(|(n, _)| *n == name).expect("found");
            let (_, t) = threads.swap_remove(i);
            let why = match t.join() {
                Ok(Ok(())) => "stopped".to_string(),
                Ok(Err(e)) => format!("{e:#}"),
                Err(_) => "panicked".to_string(),
            };
            sh.event(format!("the {name} thread ended early: {why}"));
            if name == "viewers" {
                failure = Some(format!("the viewers thread ended early: {why}"));
                break Ending::Completed;
            }
        }
        // Publisher dropped by the relay: a new one with a fresh key, same numbering.
        if publ.thread.as_ref().is_some_and(|t| t.is_finished()) && now < end {
            let why = match publ.thread.take().map(|t| t.join()) {
                Some(Ok(Err(e))) => format!("{e:#}"),
                Some(Ok(Ok(_))) => "stopped".into(),
                _ => "panicked".into(),
            };
            sh.event(format!("publisher lost ({why}); restarting"));
            let next = publ.next_index();
            match keys.take().map(|k| pcfg.spawn(&k, next)) {
                Some(Ok((shared, h))) => {
                    publ.shared = shared;
                    publ.thread = Some(h);
                    publ.restarts += 1;
                }
                Some(Err(e)) => sh.event(format!("publisher restart failed: {e:#}")),
                None => sh.event("publisher restart: no session key yet"),
            }
        }
        if now >= next_sample || now >= end {
            let k = sampler.marks.len();
            let judge = (k >= 2).then(|| (sampler.marks[k - 2], sampler.marks[k - 1]));
            let s = sampler.take(t0, &sh, &eval_tx, judge, publ.next_index(), &storms, &flood);
            print_progress(&s);
            writeln!(csv, "{}", s.csv_row())?;
            samples.push(s);
            next_sample += interval;
            if now >= end {
                break Ending::Completed;
            }
        }
    };

    // Wind down: hostile traffic and churn stop, honest viewers get a moment for the last
    // packets, then the tail of the stream is judged in one last row.
    sh.quiesce.store(true, Relaxed);
    if failure.is_none() && ending == Ending::Completed {
        // The last row judged [marks[k-2], marks[k-1]); what is left starts at marks[k-1].
        let prev = sampler.marks[sampler.marks.len().saturating_sub(2)];
        let to = (publ.next_index(), t0.elapsed().as_secs_f64());
        std::thread::sleep(Duration::from_millis(1000));
        if relay.child.try_wait()?.is_none() {
            let s = sampler.take(
                t0,
                &sh,
                &eval_tx,
                Some((prev, to)),
                publ.next_index(),
                &storms,
                &flood,
            );
            print_progress(&s);
            writeln!(csv, "{}", s.csv_row())?;
            samples.push(s);
        }
    }
    sh.stop.store(true, Relaxed);
    publ.shared.stop.store(true, Relaxed);
    if let Some(t) = publ.thread.take() {
        let _ = t.join();
    }
    for (name, t) in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => sh.event(format!("the {name} thread failed: {e:#}")),
            Err(_) => sh.event(format!("the {name} thread panicked")),
        }
    }
    info.loadavg_end = loadavg();
    if failure.is_none() {
        if let Some(status) = relay.child.try_wait()? {
            failure = Some(format!(
                "the relay died while the soak wound down ({}):\n{}",
                exit_reason(status),
                log_tail(&log_path, 15)
            ));
        }
    }
    drop(relay);

    // Results.
    let summary = stats::summarize(&samples);
    let totals: BTreeMap<&'static str, u64> = NAMES.iter().copied().zip(sh.snapshot()).collect();
    let flood_rejections = sh.flood_codes.lock().expect("codes").clone();
    let events = sh.events.lock().expect("events").clone();
    let outcome = match (&failure, ending) {
        (Some(f), _) => format!("FAILED: {}", f.lines().next().unwrap_or_default()),
        (None, Ending::Interrupted) => "interrupted".to_string(),
        (None, Ending::Completed) => "completed; the relay was alive at the end".to_string(),
    };
    let results = Results {
        run: &info,
        outcome: outcome.clone(),
        summary: summary.clone(),
        totals: totals.clone(),
        flood_rejections: flood_rejections.clone(),
        events: events.clone(),
        samples: &samples,
    };
    std::fs::write(
        o.out.join("samples.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    if let Err(e) = plot(&samples, &storms, &flood, &o.out.join("soak.svg")) {
        eprintln!("soak: plot failed: {e:#}");
    }
    let t = |k: &str| totals.get(k).copied().unwrap_or(0);
    let extra = vec![
        format!(
            "idle relay       RSS {} KiB, {} fds before the load",
            info.rss_kb_idle.unwrap_or(0),
            info.fds_idle.unwrap_or(0)
        ),
        format!(
            "churn            {} joined, {} left with SHUTDOWN, {} died silently, {} failed to connect, {} closed by the relay, {} joins skipped (no key); {:.1} MB sent to dead viewers after they died",
            t("churn_joined"), t("churn_left"), t("churn_died"), t("churn_failed"), t("churn_closed_by_relay"), t("churn_no_key"), t("to_dead_bytes") as f64 / 1e6
        ),
        format!(
            "dead viewers     the relay kept sending to a silently dead viewer for at most {:.1} s; {} were still being sent data 30 s after they died",
            sh.dead_linger_max_ms.load(Relaxed) as f64 / 1e3, t("dead_not_closed")
        ),
        format!(
            "viewers' socket  {} datagrams for no known connection, {} from a wrong source",
            t("stray"), t("wrong_source")
        ),
        format!(
            "NAKs             {} storm NAKs sent; attacker got {} data packets ({} retransmissions), reconnected {} times",
            t("naks_sent"), t("attacker_rx_packets"), t("attacker_rexmit_packets"), t("attacker_reconnects")
        ),
        format!(
            "handshake flood  {} attempts, {} cookies, {} rejected {:?}, {} accepted, {} unanswered",
            t("flood_attempts"), t("flood_cookies"), t("flood_rejected"), flood_rejections, t("flood_accepted"), t("flood_unanswered")
        ),
        format!(
            "other hostile    {} garbage datagrams, {} spoofed control/data packets",
            t("garbage_sent"), t("spoof_sent")
        ),
        format!(
            "honest viewers   {} reconnects; publisher restarts {}",
            t("honest_reconnects"), publ.restarts
        ),
        format!(
            "files            {} (samples.csv, samples.json, soak.svg, summary.txt, relay.log, relay.json)",
            o.out.display()
        ),
    ];
    let run_line = format!(
        "soak: {:.1} min requested, {:.0} s sampled, datapath {}, {} samples, relay {}",
        o.minutes,
        summary.duration_s,
        info.datapath.as_deref().unwrap_or("?"),
        summary.samples,
        info.relay_bin
    );
    let text = summary_text(&summary, &run_line, &outcome, &extra);
    std::fs::write(o.out.join("summary.txt"), &text)?;
    print!("{text}");
    if let Some(f) = failure {
        bail!("{f}");
    }
    Ok(ending)
}
