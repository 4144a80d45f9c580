//! The sweep: three network namespaces joined by two veth pairs (publisher — relay —
//! viewers), the relay started per point with each datapath, stsync-loadgen driving it, and
//! a raw UDP sendmmsg baseline over the same relay→viewers veth.
//!
//! ```text
//!  stsb-pub                stsb-relay                       stsb-view
//!  10.88.1.2 [stsb-p0]──[stsb-p1] 10.88.1.1   10.88.2.1 [stsb-v1]──[stsb-v0] 10.88.2.2
//!                                                                   + local 10.88.128.0/20
//! ```
//! Viewers use source addresses from 10.88.128.0/20 (an AnyIP `local` route in stsb-view,
//! routed via 10.88.2.2 from the relay), one per viewer.

use crate::report::Report;
use anyhow::{bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stsync_user::os::mmsg::{RecvBatch, SendBatch};
use stsync_user::os::proc::{self, loadavg, CpuTimes};
use stsync_user::os::{in_netns, udp};

pub const NS_PUB: &str = "stsb-pub";
pub const NS_RELAY: &str = "stsb-relay";
pub const NS_VIEW: &str = "stsb-view";
const TOKEN: &str = "stsync-bench-token-7f3a9c";
const RELAY_PUB: &str = "10.88.1.1";
const RELAY_VIEW: &str = "10.88.2.1";
const VIEWER_BASE: Ipv4Addr = Ipv4Addr::new(10, 88, 128, 1);
/// The veth end in stsb-view where the relay's packets to the viewers arrive.
const VIEW_IFACE: &str = "stsb-v0";

fn attach_name(a: crate::sink::Attach) -> &'static str {
    match a {
        crate::sink::Attach::Xdp => "xdp",
        crate::sink::Attach::XdpGeneric => "xdp-generic",
        crate::sink::Attach::Tc => "tc",
    }
}

#[derive(Args, Debug, Clone)]
pub struct SweepOpts {
    /// Output directory (results.json, table.md, plot.svg, per-point reports and relay logs).
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// The relay binary (default: stsync-proxy next to this executable).
    #[arg(long)]
    pub relay_bin: Option<PathBuf>,
    /// The generator binary (default: stsync-loadgen next to this executable).
    #[arg(long)]
    pub loadgen_bin: Option<PathBuf>,
    /// Datapaths to measure, in order.
    #[arg(long, value_delimiter = ',', default_value = "ebpf,userspace")]
    pub datapaths: Vec<String>,
    /// Viewer counts of the viewer sweep (at --base-bitrate).
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,500,1000")]
    pub viewers: Vec<u32>,
    #[arg(long, default_value = "4M", value_parser = crate::loadgen::parse_rate)]
    pub base_bitrate: u64,
    /// Bitrates of the bitrate sweep (at --bitrate-viewers).
    #[arg(long, value_delimiter = ',', default_value = "1M,4M,8M,16M", value_parser = crate::loadgen::parse_rate)]
    pub bitrates: Vec<u64>,
    #[arg(long, default_value_t = 100)]
    pub bitrate_viewers: u32,
    /// Seconds of warm-up and of measurement per point.
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    #[arg(long, default_value_t = 12.0)]
    pub duration: f64,
    /// Seconds of the raw UDP baseline.
    #[arg(long, default_value_t = 5.0)]
    pub baseline_secs: f64,
    /// Passed to the relay as --ebpf-object.
    #[arg(long)]
    pub ebpf_object: Option<PathBuf>,
    /// How the generator's viewers receive data: `xdp` (the kernel sink stsync-bench-ebpf
    /// records and drops data packets in stsb-view; the generator reads its rings) or
    /// `socket` (recvmmsg, as a plain UDP receiver).
    #[arg(long, value_enum, default_value_t = crate::loadgen::RxMode::Xdp)]
    pub rx: crate::loadgen::RxMode,
    /// Hook of the kernel sink (--rx xdp).
    #[arg(long, value_enum, default_value_t = crate::sink::Attach::Tc)]
    pub sink_attach: crate::sink::Attach,
    /// The kernel sink's object (default: next to the generator's build directory).
    #[arg(long)]
    pub sink_object: Option<PathBuf>,
    /// Do not count the relay's system calls in each window.
    #[arg(long)]
    pub no_syscalls: bool,
    /// How to count them: a raw tracepoint program (bpf) or perf stat.
    #[arg(long, value_enum, default_value_t = crate::syscalls::Method::Bpf)]
    pub syscall_counter: crate::syscalls::Method,
    /// On a shared machine: before each point, wait until the whole machine has been below
    /// this busy % (of one core) for 3 s in a row, for at most --quiet-max-wait seconds.
    #[arg(long)]
    pub wait_quiet: Option<f64>,
    #[arg(long, default_value_t = 600.0)]
    pub quiet_max_wait: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub clk_tck: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Baseline {
    pub seconds: f64,
    pub payload: usize,
    pub sent_pps: f64,
    pub received_pps: f64,
    pub system_busy_pct: f64,
    pub softirq_pct: f64,
    /// Whole-machine busy CPU per received datagram (send syscall + veth + receive).
    pub busy_ns_per_packet: f64,
}

/// One point of the sweep, flattened for the table, the plot and the docs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Point {
    pub datapath: String,
    pub viewers: u32,
    pub bitrate_mbps: f64,
    /// How the generator received: "socket" or "xdp" (kernel sink).
    #[serde(default)]
    pub rx: String,
    pub error: Option<String>,
    pub connected: u32,
    pub delivery_min: f64,
    pub delivery_mean: f64,
    /// Delivery counting only packets whose transit was within the latency.
    /// (None in results from before it was measured.)
    #[serde(default)]
    pub on_time_min: Option<f64>,
    #[serde(default)]
    pub on_time_mean: Option<f64>,
    pub relay_pct: f64,
    pub softirq_pct: f64,
    pub relay_total_pct: f64,
    pub attributed_pct: f64,
    pub generator_pct: f64,
    /// The generator's utime alone (its stime holds softirq work run in its context).
    #[serde(default)]
    pub generator_user_pct: Option<f64>,
    pub other_pct: f64,
    pub busy_pct: f64,
    pub latency_p50_us: f64,
    pub latency_p99_us: f64,
    pub latency_max_us: f64,
    pub relay_rss_kb: u64,
    pub delivered_pps: f64,
    /// (relay + softirq + irq) CPU time per delivered packet.
    pub ns_per_delivered: f64,
    /// The relay process's system calls per second over the window (perf), if counted.
    #[serde(default)]
    pub relay_syscalls_per_s: Option<f64>,
    /// relay_syscalls_per_s / viewers.
    #[serde(default)]
    pub syscalls_per_viewer_s: Option<f64>,
    /// relay_pct / viewers: the daemon's own CPU per viewer (% of one core).
    #[serde(default)]
    pub relay_pct_per_viewer: f64,
    /// Packets the publisher sent in the window / what its bitrate asks for: below 1 the
    /// offered load fell short (the generator could not keep pace).
    #[serde(default)]
    pub offered: f64,
    /// Packets dropped at full kernel input backlogs during the window (machine-wide).
    #[serde(default)]
    pub backlog_drops: Option<u64>,
    /// Full ACKs per viewer per second in the window (libsrt: ~100).
    #[serde(default)]
    pub acks_per_viewer_s: Option<f64>,
    /// --wait-quiet: the machine's busy % in the second before the point started.
    #[serde(default)]
    pub busy_before_pct: Option<f64>,
    pub report: Option<String>,
}

impl Point {
    /// The point carried its nominal load (offered ≥ 0.99) and every viewer got at least
    /// 99.9 % of the window's packets within the latency.
    pub fn holds(&self) -> bool {
        self.error.is_none() && self.offered >= 0.99 && self.on_time_min.is_some_and(|d| d >= 0.999)
    }

    fn failed(datapath: &str, rx: &str, viewers: u32, bitrate: u64, error: String) -> Point {
        Point {
            datapath: datapath.into(),
            viewers,
            bitrate_mbps: bitrate as f64 / 1e6,
            rx: rx.into(),
            error: Some(error),
            connected: 0,
            delivery_min: 0.0,
            delivery_mean: 0.0,
            on_time_min: None,
            on_time_mean: None,
            relay_pct: 0.0,
            softirq_pct: 0.0,
            relay_total_pct: 0.0,
            attributed_pct: 0.0,
            generator_pct: 0.0,
            generator_user_pct: None,
            other_pct: 0.0,
            busy_pct: 0.0,
            latency_p50_us: 0.0,
            latency_p99_us: 0.0,
            latency_max_us: 0.0,
            relay_rss_kb: 0,
            delivered_pps: 0.0,
            ns_per_delivered: 0.0,
            relay_syscalls_per_s: None,
            syscalls_per_viewer_s: None,
            relay_pct_per_viewer: 0.0,
            offered: 0.0,
            backlog_drops: None,
            acks_per_viewer_s: None,
            busy_before_pct: None,
            report: None,
        }
    }

    fn from_report(datapath: &str, r: &Report, path: &Path) -> Point {
        let c = &r.cpu;
        let total = c.relay_total_pct.unwrap_or(0.0);
        let viewers = r.config.viewers.max(1) as f64;
        let syscalls = r.relay_syscalls.as_ref().map(|s| s.per_second);
        Point {
            datapath: datapath.into(),
            viewers: r.config.viewers,
            bitrate_mbps: r.config.bitrate_bps as f64 / 1e6,
            rx: r.config.rx.clone(),
            error: None,
            connected: r.connected,
            delivery_min: r.delivery.min,
            delivery_mean: r.delivery.mean,
            on_time_min: Some(r.delivery.on_time_min),
            on_time_mean: Some(r.delivery.on_time_mean),
            relay_pct: c.relay_pct.unwrap_or(0.0),
            softirq_pct: c.softirq_pct + c.irq_pct,
            relay_total_pct: total,
            attributed_pct: c.attributed_pct,
            generator_pct: c.generator_pct,
            generator_user_pct: c.generator_user_pct,
            other_pct: c.other_processes_pct,
            busy_pct: c.system_busy_pct,
            latency_p50_us: r.latency_us.p50,
            latency_p99_us: r.latency_us.p99,
            latency_max_us: r.latency_us.max,
            relay_rss_kb: c.relay_rss_kb_end.unwrap_or(0),
            delivered_pps: r.delivered_pps,
            ns_per_delivered: if r.delivered_pps > 0.0 {
                total / 100.0 * 1e9 / r.delivered_pps
            } else {
                0.0
            },
            relay_syscalls_per_s: syscalls,
            syscalls_per_viewer_s: syscalls.map(|s| s / viewers),
            relay_pct_per_viewer: c.relay_pct.unwrap_or(0.0) / viewers,
            offered: {
                let pps = r.config.bitrate_bps as f64 / (r.config.payload as f64 * 8.0);
                r.delivery.expected_per_viewer as f64 / (pps * c.seconds).max(1e-9)
            },
            backlog_drops: c.softnet_dropped,
            acks_per_viewer_s: r.full_acks_per_viewer_s,
            busy_before_pct: None,
            report: Some(path.display().to_string()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepResults {
    pub machine: Machine,
    pub started_unix: u64,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Why a datapath could not run at all (e.g. the kernel path not built).
    pub datapath_errors: Vec<(String, String)>,
    /// What was measured: the relay binary and eBPF object (as given; default if empty),
    /// how the generator received, and /proc/loadavg at the start and end of the sweep.
    #[serde(default)]
    pub relay_bin: String,
    #[serde(default)]
    pub ebpf_object: String,
    #[serde(default)]
    pub rx: String,
    #[serde(default)]
    pub loadavg_start: String,
    #[serde(default)]
    pub loadavg_end: String,
    pub baseline: Option<Baseline>,
    pub points: Vec<Point>,
}

pub fn machine() -> Machine {
    Machine {
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model: proc::cpu_model(),
        kernel: proc::kernel_release(),
        clk_tck: proc::clk_tck(),
    }
}

/// Private copies of the relay binary and eBPF object under test, so that a rebuild of
/// the checkout they come from cannot change them in the middle of a sweep; removed on drop.
struct Snapshot {
    dir: PathBuf,
    relay_bin: PathBuf,
    ebpf_object: Option<PathBuf>,
    /// "path (size, modification time, content hash)" of the originals.
    relay_desc: String,
    ebpf_desc: String,
}

/// Size, modification time and a 64-bit FNV-1a hash of a file, to tell builds apart.
pub(crate) fn fingerprint(path: &Path, bytes: &[u8]) -> String {
    let mtime = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!(
        "{} ({} bytes, mtime {mtime}, fnv64 {h:016x})",
        path.display(),
        bytes.len()
    )
}

impl Snapshot {
    fn take(o: &SweepOpts) -> Result<Snapshot> {
        let dir = std::env::temp_dir().join(format!("stsync-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut snap = Snapshot {
            dir: dir.clone(),
            relay_bin: dir.join("stsync-proxy"),
            ebpf_object: None,
            relay_desc: String::new(),
            ebpf_desc: "(the relay's default)".into(),
        };
        let src = o
            .relay_bin
            .clone()
            .unwrap_or_else(|| exe_sibling("stsync-proxy"));
        let bytes = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
        std::fs::write(&snap.relay_bin, &bytes)?;
        std::fs::set_permissions(
            &snap.relay_bin,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        snap.relay_desc = fingerprint(&src, &bytes);
        // Without --ebpf-object the relay would look next to its own build output; the
        // copy lives elsewhere, so pin that object explicitly (as the relay would find it).
        let obj = o.ebpf_object.clone().or_else(|| {
            const REL: &str = "bpfel-unknown-none/release/stsync-ebpf";
            let dir = src.parent()?;
            [dir.join("..").join(REL), dir.join("../..").join(REL)]
                .into_iter()
                .find(|p| p.is_file())
        });
        if let Some(obj) = &obj {
            let bytes = std::fs::read(obj).with_context(|| format!("reading {}", obj.display()))?;
            let copy = dir.join("stsync-ebpf");
            std::fs::write(&copy, &bytes)?;
            snap.ebpf_desc = fingerprint(obj, &bytes);
            snap.ebpf_object = Some(copy);
        }
        Ok(snap)
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sh(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ns(name: &str, cmd: &str) -> Result<()> {
    let mut args = vec!["ip", "netns", "exec", name];
    args.extend(cmd.split_whitespace());
    sh(&args)
}

/// The three namespaces and their links; deleted on drop (also on error or panic).
pub struct Topology;

impl Topology {
    pub fn create() -> Result<Topology> {
        Topology::remove();
        let topo = Topology;
        for n in [NS_PUB, NS_RELAY, NS_VIEW] {
            sh(&["ip", "netns", "add", n])?;
            ns(n, "ip link set lo up")?;
        }
        sh(&[
            "ip", "link", "add", "stsb-p0", "type", "veth", "peer", "name", "stsb-p1",
        ])?;
        sh(&["ip", "link", "set", "stsb-p0", "netns", NS_PUB])?;
        sh(&["ip", "link", "set", "stsb-p1", "netns", NS_RELAY])?;
        sh(&[
            "ip", "link", "add", "stsb-v0", "type", "veth", "peer", "name", "stsb-v1",
        ])?;
        sh(&["ip", "link", "set", "stsb-v0", "netns", NS_VIEW])?;
        sh(&["ip", "link", "set", "stsb-v1", "netns", NS_RELAY])?;
        ns(NS_PUB, "ip addr add 10.88.1.2/24 dev stsb-p0")?;
        ns(NS_PUB, "ip link set stsb-p0 up")?;
        ns(NS_PUB, "ip route add default via 10.88.1.1")?;
        ns(NS_RELAY, "ip addr add 10.88.1.1/24 dev stsb-p1")?;
        ns(NS_RELAY, "ip addr add 10.88.2.1/24 dev stsb-v1")?;
        ns(NS_RELAY, "ip link set stsb-p1 up")?;
        ns(NS_RELAY, "ip link set stsb-v1 up")?;
        ns(NS_RELAY, "ip route add 10.88.128.0/20 via 10.88.2.2")?;
        ns(NS_VIEW, "ip addr add 10.88.2.2/24 dev stsb-v0")?;
        ns(NS_VIEW, "ip link set stsb-v0 up")?;
        ns(NS_VIEW, "ip route add default via 10.88.2.1")?;
        ns(NS_VIEW, "ip route add local 10.88.128.0/20 dev lo")?;
        Ok(topo)
    }

    fn remove() {
        for n in [NS_PUB, NS_RELAY, NS_VIEW] {
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        Topology::remove();
    }
}

/// A relay process we started; killed (SIGTERM, then SIGKILL) on drop.
pub(crate) struct RelayProc {
    pub(crate) child: Child,
}

impl RelayProc {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn exe_sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn start_relay(o: &SweepOpts, kind: &str, dir: &Path, tag: &str) -> Result<RelayProc> {
    let cfg = dir.join("relay.json");
    std::fs::write(
        &cfg,
        serde_json::json!({
            "srt_listen": "0.0.0.0:9999",
            "http_listen": "0.0.0.0:9998",
            "max_connections": 4096,
            "max_viewers_per_stream": 1024,
            // Every generated viewer comes from one address, as fast as it can connect.
            "max_connections_per_ip": 4096,
            "handshakes_per_ip_per_sec": 100_000,
            "streams": [{ "id": "1", "name": "bench", "token": TOKEN }]
        })
        .to_string(),
    )?;
    let bin = o
        .relay_bin
        .clone()
        .unwrap_or_else(|| exe_sibling("stsync-proxy"));
    let log_path = dir.join(format!("relay-{tag}.log"));
    let log = std::fs::File::create(&log_path)?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", NS_RELAY])
        .arg(&bin)
        .arg("--config")
        .arg(&cfg)
        .args(["--datapath", kind]);
    if let Some(obj) = &o.ebpf_object {
        cmd.arg("--ebpf-object").arg(obj);
    }
    // `ip netns exec` execs the relay, so the child's PID is the relay's.
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .env("RUST_LOG", "info")
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut relay = RelayProc { child };
    let http = format!("{RELAY_PUB}:9998").parse()?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = relay.child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            // anyhow's "Error: ..." line says why; otherwise the last lines.
            let why = match log.lines().find(|l| l.starts_with("Error:")) {
                Some(l) => l.to_string(),
                None => {
                    let tail: Vec<&str> = log.lines().rev().take(3).collect();
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                }
            };
            bail!("relay --datapath {kind} exited ({status}): {why}");
        }
        if crate::http::request(Some(NS_PUB), http, "GET", "/v1/health", None)
            .is_ok_and(|(s, _)| s == 200)
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("relay --datapath {kind} did not answer /v1/health within 15 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    if !log.contains(&format!("datapath={kind}")) {
        bail!("relay did not report datapath={kind}: {}", log.trim());
    }
    Ok(relay)
}

/// Waits (bounded) until the machine has been below `pct` busy for 3 consecutive seconds;
/// returns the busy % of the last second.
fn wait_quiet(pct: f64, max_wait: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs_f64(max_wait);
    let tck = proc::clk_tck() as f64;
    let mut quiet_secs = 0;
    loop {
        let a = CpuTimes::read();
        std::thread::sleep(Duration::from_secs(1));
        let busy = (CpuTimes::read().busy() - a.busy()) as f64 / tck * 100.0;
        quiet_secs = if busy < pct { quiet_secs + 1 } else { 0 };
        if quiet_secs >= 3 {
            return busy;
        }
        if Instant::now() > deadline {
            eprintln!(
                "bench:   machine still {busy:.0} % busy after {max_wait} s: measuring anyway"
            );
            return busy;
        }
    }
}

fn run_point(o: &SweepOpts, kind: &str, viewers: u32, bitrate: u64) -> Result<Point> {
    // Something else on the machine may have removed our namespaces: rebuild them.
    if [NS_PUB, NS_RELAY, NS_VIEW]
        .iter()
        .any(|n| !Path::new("/var/run/netns").join(n).exists())
    {
        eprintln!("bench: namespaces gone, recreating them");
        std::mem::forget(Topology::create()?);
    }
    let tag = format!("{kind}-{viewers}v-{}k", bitrate / 1000);
    let busy_before = o.wait_quiet.map(|pct| wait_quiet(pct, o.quiet_max_wait));
    let relay = start_relay(o, kind, &o.out, &tag)?;
    let json = o.out.join(format!("point-{tag}.json"));
    let _ = std::fs::remove_file(&json);
    let bin = o
        .loadgen_bin
        .clone()
        .unwrap_or_else(|| exe_sibling("stsync-loadgen"));
    let mut cmd = Command::new(&bin);
    cmd.args(["--relay", &format!("{RELAY_VIEW}:9999")])
        .args(["--pub-relay", &format!("{RELAY_PUB}:9999")])
        .args(["--http", &format!("{RELAY_PUB}:9998")])
        .args(["--token", TOKEN])
        .args(["--viewers", &viewers.to_string()])
        .args(["--bitrate", &bitrate.to_string()])
        .args(["--warmup", &o.warmup.to_string()])
        .args(["--duration", &o.duration.to_string()])
        .args(["--viewer-ip", &VIEWER_BASE.to_string()])
        .args(["--pub-netns", NS_PUB, "--view-netns", NS_VIEW])
        .args(["--watch-pid", &relay.pid().to_string()])
        .arg("--json")
        .arg(&json);
    if !o.no_syscalls {
        cmd.arg("--count-syscalls").args([
            "--syscall-counter",
            match o.syscall_counter {
                crate::syscalls::Method::Bpf => "bpf",
                crate::syscalls::Method::Perf => "perf",
            },
        ]);
    }
    if let Some(obj) = &o.sink_object {
        cmd.arg("--sink-object").arg(obj);
    }
    if o.rx == crate::loadgen::RxMode::Xdp {
        cmd.args(["--rx", "xdp", "--sink-iface", VIEW_IFACE])
            .args(["--sink-attach", attach_name(o.sink_attach)]);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs_f64(o.warmup + o.duration + 90.0);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("stsync-loadgen ran past its time bound");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // The relay's own view (drops, per-connection counters), for diagnosis.
    if let Ok((200, body)) = crate::http::request(
        Some(NS_PUB),
        format!("{RELAY_PUB}:9998").parse()?,
        "GET",
        "/metrics",
        None,
    ) {
        let keep: String = body
            .lines()
            .filter(|l| !l.starts_with("srt_connection_"))
            .map(|l| format!("{l}\n"))
            .collect();
        let _ = std::fs::write(o.out.join(format!("metrics-{tag}.txt")), keep);
    }
    drop(relay);
    if !status.success() {
        bail!("stsync-loadgen failed ({status})");
    }
    let r: Report = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    let mut p = Point::from_report(kind, &r, &json);
    p.busy_before_pct = busy_before;
    Ok(p)
}

/// Raw UDP over the relay→viewers veth: one thread sendmmsg()s 64 × `payload`-byte datagrams
/// as fast as it can from stsb-relay, another recvmmsg()s them in stsb-view.
pub fn baseline(secs: f64, payload: usize) -> Result<Baseline> {
    let dst = SocketAddrV4::new(Ipv4Addr::new(10, 88, 2, 2), 7000);
    let rx = in_netns(Some(NS_VIEW), || udp::udp_socket(dst, 32 << 20))?;
    let tx = in_netns(Some(NS_RELAY), || {
        udp::udp_socket(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0), 4 << 20)
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let receiver = {
        let (stop, received) = (stop.clone(), received.clone());
        std::thread::spawn(move || {
            let mut b = RecvBatch::new(256);
            while !stop.load(Ordering::Relaxed) {
                let n = b.recv(rx.as_raw_fd());
                if n == 0 {
                    udp::wait_readable(&[rx.as_raw_fd()], 10_000_000);
                }
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
        })
    };
    let mut batch = SendBatch::new();
    let payload_bytes = vec![0x47u8; payload];
    let a = CpuTimes::read();
    let r0 = received.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(secs);
    let fd = tx.as_raw_fd();
    while Instant::now() < end {
        for _ in 0..64 {
            batch.push(fd, dst, None, |out| out.extend_from_slice(&payload_bytes));
        }
        batch.flush(fd);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(100));
    let b = CpuTimes::read();
    let got = received.load(Ordering::Relaxed) - r0;
    stop.store(true, Ordering::Relaxed);
    let _ = receiver.join();
    let tck = proc::clk_tck() as f64;
    let secs_all = elapsed + 0.1;
    let busy = (b.busy() - a.busy()) as f64 / tck;
    Ok(Baseline {
        seconds: elapsed,
        payload,
        sent_pps: batch.sent as f64 / elapsed,
        received_pps: got as f64 / elapsed,
        system_busy_pct: busy / secs_all * 100.0,
        softirq_pct: (b.softirq - a.softirq) as f64 / tck / secs_all * 100.0,
        busy_ns_per_packet: if got > 0 {
            busy * 1e9 / got as f64
        } else {
            0.0
        },
    })
}

pub fn run(o: &SweepOpts) -> Result<SweepResults> {
    std::fs::create_dir_all(&o.out)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the sweep needs root (network namespaces, veth)");
    }
    let snap = Snapshot::take(o)?;
    let o = &SweepOpts {
        relay_bin: Some(snap.relay_bin.clone()),
        ebpf_object: snap.ebpf_object.clone(),
        ..o.clone()
    };
    let _topo = Topology::create().context("creating the namespaces")?;
    let mut res = SweepResults {
        machine: machine(),
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        warmup_s: o.warmup,
        duration_s: o.duration,
        datapath_errors: Vec::new(),
        relay_bin: snap.relay_desc.clone(),
        ebpf_object: snap.ebpf_desc.clone(),
        rx: o.rx.name().into(),
        loadavg_start: loadavg(),
        loadavg_end: String::new(),
        baseline: None,
        points: Vec::new(),
    };
    match baseline(o.baseline_secs, 1316) {
        Ok(b) => {
            eprintln!(
                "bench: raw UDP baseline: {:.0} datagrams/s sent, {:.0} received, {:.0} ns busy CPU each",
                b.sent_pps, b.received_pps, b.busy_ns_per_packet
            );
            res.baseline = Some(b);
        }
        Err(e) => eprintln!("bench: raw UDP baseline failed: {e:#}"),
    }
    let mut plan: Vec<(u32, u64)> = o.viewers.iter().map(|&v| (v, o.base_bitrate)).collect();
    for &b in &o.bitrates {
        if !plan.contains(&(o.bitrate_viewers, b)) {
            plan.push((o.bitrate_viewers, b));
        }
    }
    for kind in &o.datapaths {
        for (i, &(viewers, bitrate)) in plan.iter().enumerate() {
            eprintln!(
                "bench: {kind}: {viewers} viewers at {:.1} Mbit/s",
                bitrate as f64 / 1e6
            );
            match run_point(o, kind, viewers, bitrate) {
                Ok(p) => {
                    eprintln!(
                        "bench:   delivery min {:.4} mean {:.4}, relay {:.1} % + softirq {:.1} %, p99 {:.0} µs",
                        p.delivery_min, p.delivery_mean, p.relay_pct, p.softirq_pct, p.latency_p99_us
                    );
                    res.points.push(p);
                }
                Err(e) if i == 0 && e.to_string().contains("relay --datapath") => {
                    eprintln!("bench: datapath {kind} unavailable: {e:#}");
                    res.datapath_errors.push((kind.clone(), format!("{e:#}")));
                    break;
                }
                Err(e) => {
                    eprintln!("bench:   failed: {e:#}");
                    res.points.push(Point::failed(
                        kind,
                        o.rx.name(),
                        viewers,
                        bitrate,
                        format!("{e:#}"),
                    ));
                }
            }
            std::fs::write(
                o.out.join("results.json"),
                serde_json::to_string_pretty(&res)?,
            )?;
        }
    }
    res.loadavg_end = loadavg();
    std::fs::write(
        o.out.join("results.json"),
        serde_json::to_string_pretty(&res)?,
    )?;
    std::fs::write(o.out.join("table.md"), table(&res))?;
    crate::plot::draw(&res, &o.out.join("plot.svg"))?;
    Ok(res)
}

pub fn table(r: &SweepResults) -> String {
    let mut s = String::new();
    let m = &r.machine;
    s += &format!(
        "Machine: {} CPUs, {}, Linux {}. Window {} s after {} s warm-up per point.\n\n",
        m.nproc, m.cpu_model, m.kernel, r.duration_s, r.warmup_s
    );
    if !r.relay_bin.is_empty() {
        s += &format!(
            "Relay {} (eBPF object {}); generator receive: {}. Load average at start: {}; at end: {}.\n\n",
            r.relay_bin, r.ebpf_object, r.rx, r.loadavg_start, r.loadavg_end
        );
    }
    s += "holds = offered ≥ 0.99 and on time min ≥ 0.999 (every viewer got ≥ 99.9 % of the window's packets within the latency).\n\n";
    if let Some(b) = &r.baseline {
        s += &format!(
            "Raw UDP baseline (sendmmsg, {} B, relay→viewers veth): {:.0} datagrams/s sent, {:.0} received, {:.0} % busy, {:.0} ns of busy CPU per received datagram.\n\n",
            b.payload, b.sent_pps, b.received_pps, b.system_busy_pct, b.busy_ns_per_packet
        );
    }
    for (k, e) in &r.datapath_errors {
        s += &format!("Datapath {k} not measured: {e}\n\n");
    }
    s += "| datapath | rx | viewers | Mbit/s | holds | offered | delivered min | mean | on time min | ACKs/s / viewer | relay CPU % | relay % / viewer | syscalls/s | syscalls/s / viewer | softirq % | backlog drops | relay+softirq % | ns/delivered pkt | busy−gen−other % | generator % (user) | p50 µs | p99 µs | max µs | relay RSS MiB |\n";
    s += "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for p in &r.points {
        if let Some(e) = &p.error {
            s += &format!(
                "| {} | {} | {} | {:.0} | no | failed: {} |||||||||||||||||||\n",
                p.datapath,
                p.rx,
                p.viewers,
                p.bitrate_mbps,
                e.replace('|', "/")
            );
            continue;
        }
        let opt =
            |v: Option<f64>, prec: usize| v.map_or("-".to_string(), |v| format!("{v:.prec$}"));
        s += &format!(
            "| {} | {} | {} | {:.0} | {} | {:.3} | {:.4} | {:.4} | {} | {} | {:.1} | {:.3} | {} | {} | {:.1} | {} | {:.1} | {:.0} | {:.1} | {:.1} ({}) | {:.0} | {:.0} | {:.0} | {:.1} |\n",
            p.datapath,
            p.rx,
            p.viewers,
            p.bitrate_mbps,
            if p.holds() { "yes" } else { "no" },
            p.offered,
            p.delivery_min,
            p.delivery_mean,
            opt(p.on_time_min, 4),
            opt(p.acks_per_viewer_s, 1),
            p.relay_pct,
            p.relay_pct_per_viewer,
            opt(p.relay_syscalls_per_s, 0),
            opt(p.syscalls_per_viewer_s, 1),
            p.softirq_pct,
            p.backlog_drops.map_or("-".into(), |d| d.to_string()),
            p.relay_total_pct,
            p.ns_per_delivered,
            p.attributed_pct,
            p.generator_pct,
            opt(p.generator_user_pct, 1),
            p.latency_p50_us,
            p.latency_p99_us,
            p.latency_max_us,
            p.relay_rss_kb as f64 / 1024.0
        );
    }
    s
}
