//! The kernel datapath: the stsync-ebpf TC program clones each publisher data packet once
//! per viewer (rewritten for that viewer) and sends it out of the viewer's interface; the
//! daemon keeps the program's maps in step with the relay and still sends everything else
//! (handshakes, ACKs, retransmissions, keepalives, and data for viewers the kernel does
//! not serve yet) through the userspace path it holds.
//!
//! A viewer moves to the kernel once (1) the relay has mapped it onto the current
//! publisher (`RouteEvent::ViewerMapped`: offsets for that publisher epoch) and (2) the
//! program has learned its route from one of its own packets. Then its slot is marked
//! active and the relay is told to stop sending it new data of that epoch
//! (`Relay::set_kernel_fanout`). A new publisher epoch deactivates it until the relay maps
//! it again.
//!
//! TC links are not pinned: the kernel detaches them when the process exits, however it
//! exits, so a crash leaves nothing attached.

use super::mmap_array::MmapArray;
use super::userspace::Userspace;
use super::Datapath;
use crate::metrics::Metrics;
use crate::relay::{KernelAcks, Relay, RouteEvent};
use crate::srt::seq::Seq;
use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, Queue};
use aya::programs::{tc::TcAttachOptions, LinkOrder, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stsync_common::maps::{
    self as m, counter, Config, PublisherEntry, Route, StreamEntry, ViewerAcks, ViewerConn,
    ViewerCounts, ViewerEntry, CONFIG_LO_ACCEPT_LOCAL, LOOPBACK_IFINDEX, MAX_VIEWERS,
};
use tracing::{debug, info, warn};

/// Why the kernel datapath could not start; `Display` is the one line the daemon logs.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("no eBPF object at {0} (build it with `cargo xtask build-ebpf`)")]
    NoObject(PathBuf),
    #[error("permission denied loading the eBPF program: needs root or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON ({0})")]
    PermissionDenied(String),
    #[error("the kernel verifier rejected the eBPF program: {0}")]
    Verifier(String),
    #[error("cannot attach the eBPF program to {iface}: {reason}")]
    Attach { iface: String, reason: String },
    #[error("eBPF setup failed: {0}")]
    Other(String),
}

fn is_permission(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) {
                return true;
            }
        }
        cur = e.source();
    }
    false
}

fn classify(e: impl std::error::Error + 'static) -> KernelError {
    if is_permission(&e) {
        return KernelError::PermissionDenied(e.to_string());
    }
    KernelError::Other(format!("{e}"))
}

/// Totals of the program's per-CPU counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub packets_seen: u64,
    pub clones: u64,
    pub clone_failures: u64,
    pub skipped: u64,
    pub routes_learned: u64,
    pub restore_failures: u64,
    pub loopback_skipped: u64,
    pub acks_answered: u64,
    pub light_acks: u64,
    pub ack_failures: u64,
}

/// The loaded program and its maps (attached or not). Dropping it detaches the program.
pub struct Kernel {
    bpf: Ebpf,
    config_map: Array<MapData, Config>,
    publishers: BpfHashMap<MapData, u32, PublisherEntry>,
    streams: Array<MapData, StreamEntry>,
    viewers: Array<MapData, ViewerEntry>,
    viewer_conns: BpfHashMap<MapData, u32, ViewerConn>,
    routes: BpfHashMap<MapData, u32, Route>,
    counters: PerCpuArray<MapData, u64>,
    viewer_counts: PerCpuArray<MapData, ViewerCounts>,
    viewer_acks: MmapArray<ViewerAcks>,
    learned: Queue<MapData, u32>,
    max_streams: u32,
    attached: Vec<String>,
    config: Config,
}

impl Kernel {
    /// Where the daemon looks for the object when `--ebpf-object` is not given: next to
    /// the build output the executable came from (`target/{debug,release}/..`), then the
    /// working directory's `target/`, then the install location.
    pub fn default_object_path() -> PathBuf {
        const REL: &str = "bpfel-unknown-none/release/stsync-ebpf";
        let mut candidates = Vec::new();
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
        {
            candidates.push(dir.join("..").join(REL));
            candidates.push(dir.join("../..").join(REL));
        }
        candidates.push(Path::new("target").join(REL));
        candidates.push(PathBuf::from("/usr/lib/stsync/stsync-ebpf"));
        candidates
            .iter()
            .find(|p| p.is_file())
            .cloned()
            .unwrap_or_else(|| candidates[0].clone())
    }

    /// Loads the object at `path` and verifies the program, with room for `max_streams`
    /// streams of `MAX_VIEWERS` viewers.
    pub fn load_file(path: &Path, max_streams: u32) -> Result<Kernel, KernelError> {
        Self::load_file_sized(path, max_streams, m::MAX_VIEWER_CONNS)
    }

    /// As `load_file`, with room for `max_conns` viewer connections in the route maps
    /// (they are preallocated: size them to the relay's connection limit).
    pub fn load_file_sized(
        path: &Path,
        max_streams: u32,
        max_conns: u32,
    ) -> Result<Kernel, KernelError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(KernelError::NoObject(path.to_path_buf()))
            }
            Err(e) => {
                return Err(KernelError::Other(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
        };
        Self::load(&bytes, max_streams, max_conns)
    }

    pub fn load(object: &[u8], max_streams: u32, max_conns: u32) -> Result<Kernel, KernelError> {
        let max_streams = max_streams.max(1);
        let slots = max_streams * MAX_VIEWERS;
        let conns = max_conns.clamp(16, m::MAX_VIEWER_CONNS);
        let mut bpf = EbpfLoader::new()
            .map_max_entries(m::MAP_VIEWER_CONNS, conns)
            .map_max_entries(m::MAP_ROUTES, conns)
            .map_max_entries(m::MAP_STREAMS, max_streams)
            .map_max_entries(m::MAP_VIEWERS, slots)
            .map_max_entries(m::MAP_VIEWER_COUNTS, slots)
            .map_max_entries(m::MAP_VIEWER_ACKS, slots)
            .load(object)
            .map_err(classify)?;
        let prog: &mut SchedClassifier = bpf
            .program_mut(m::PROGRAM_NAME)
            .ok_or_else(|| KernelError::Other(format!("no program {} in object", m::PROGRAM_NAME)))?
            .try_into()
            .map_err(classify)?;
        if let Err(e) = prog.load() {
            // The verifier refuses with EACCES too: a log means it ran, so it is not a
            // matter of privileges.
            let verified = matches!(&e, aya::programs::ProgramError::LoadError { verifier_log, .. }
                if !verifier_log.to_string().trim().is_empty());
            if is_permission(&e) && !verified {
                return Err(KernelError::PermissionDenied(e.to_string()));
            }
            return Err(match e {
                aya::programs::ProgramError::LoadError { verifier_log, .. } => {
                    let log = verifier_log.to_string();
                    let tail: Vec<&str> = log.lines().rev().take(6).collect();
                    KernelError::Verifier(tail.into_iter().rev().collect::<Vec<_>>().join(" | "))
                }
                other => KernelError::Other(other.to_string()),
            });
        }
        fn take<T>(bpf: &mut Ebpf, name: &str) -> Result<T, KernelError>
        where
            T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
        {
            let map = bpf
                .take_map(name)
                .ok_or_else(|| KernelError::Other(format!("no map {name} in object")))?;
            T::try_from(map).map_err(classify)
        }
        Ok(Kernel {
            config_map: take(&mut bpf, m::MAP_CONFIG)?,
            publishers: take(&mut bpf, m::MAP_PUBLISHERS)?,
            streams: take(&mut bpf, m::MAP_STREAMS)?,
            viewers: take(&mut bpf, m::MAP_VIEWERS)?,
            viewer_conns: take(&mut bpf, m::MAP_VIEWER_CONNS)?,
            routes: take(&mut bpf, m::MAP_ROUTES)?,
            counters: take(&mut bpf, m::MAP_COUNTERS)?,
            viewer_counts: take(&mut bpf, m::MAP_VIEWER_COUNTS)?,
            viewer_acks: {
                let map = bpf
                    .take_map(m::MAP_VIEWER_ACKS)
                    .ok_or_else(|| KernelError::Other(format!("no map {}", m::MAP_VIEWER_ACKS)))?;
                MmapArray::new(map, slots).map_err(|e| {
                    KernelError::Other(format!("cannot map {}: {e}", m::MAP_VIEWER_ACKS))
                })?
            },
            learned: take(&mut bpf, m::MAP_LEARNED)?,
            bpf,
            max_streams,
            attached: Vec::new(),
            config: Config::default(),
        })
    }

    /// The classifier, e.g. for `test_run`.
    pub fn program_mut(&mut self) -> &mut SchedClassifier {
        self.bpf
            .program_mut(m::PROGRAM_NAME)
            .expect("checked at load")
            .try_into()
            .expect("checked at load")
    }

    pub fn max_streams(&self) -> u32 {
        self.max_streams
    }

    /// Attaches at TC ingress (tcx) on `iface`.
    pub fn attach(&mut self, iface: &str) -> Result<(), KernelError> {
        let prog = self.program_mut();
        prog.attach_with_options(
            iface,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(|e| {
            if is_permission(&e) {
                KernelError::PermissionDenied(format!("attach to {iface}: {e}"))
            } else {
                KernelError::Attach {
                    iface: iface.to_string(),
                    reason: format!("{e}"),
                }
            }
        })?;
        self.attached.push(iface.to_string());
        Ok(())
    }

    pub fn attached(&self) -> &[String] {
        &self.attached
    }

    /// The relay's listening address: `None` (or 0.0.0.0) matches any local address.
    pub fn set_relay(&mut self, ip: Option<Ipv4Addr>, port: u16) -> Result<(), KernelError> {
        self.config.relay_ip = ip.filter(|ip| !ip.is_unspecified()).map_or(0, raw_ip);
        self.config.relay_port = raw_port(port);
        self.config_map.set(0, self.config, 0).map_err(classify)
    }

    /// Whether clones of packets that came in on another interface may go to viewers on
    /// `lo` (only when `lo` accepts local sources: `net.ipv4.conf.lo.accept_local = 1`).
    pub fn set_lo_accept_local(&mut self, on: bool) -> Result<(), KernelError> {
        if on {
            self.config.flags |= CONFIG_LO_ACCEPT_LOCAL;
        } else {
            self.config.flags &= !CONFIG_LO_ACCEPT_LOCAL;
        }
        self.config_map.set(0, self.config, 0).map_err(classify)
    }

    pub fn set_publisher(&mut self, conn: u32, e: PublisherEntry) -> Result<(), KernelError> {
        self.publishers.insert(conn, e, 0).map_err(classify)
    }

    pub fn remove_publisher(&mut self, conn: u32) {
        let _ = self.publishers.remove(&conn);
    }

    pub fn set_stream(&mut self, stream: u32, e: StreamEntry) -> Result<(), KernelError> {
        self.streams.set(stream, e, 0).map_err(classify)
    }

    /// Sets the slots the program scans, without the delay (tests).
    pub fn set_stream_slots(&mut self, stream: u32, slots: u32) -> Result<(), KernelError> {
        self.set_stream(stream, StreamEntry { slots, delay_us: 0 })
    }

    pub fn set_viewer(&mut self, slot: u32, e: &ViewerEntry) -> Result<(), KernelError> {
        self.viewers.set(slot, e, 0).map_err(classify)
    }

    pub fn viewer(&self, slot: u32) -> Option<ViewerEntry> {
        self.viewers.get(&slot, 0).ok()
    }

    pub fn set_viewer_conn(&mut self, conn: u32, c: ViewerConn) -> Result<(), KernelError> {
        self.viewer_conns.insert(conn, c, 0).map_err(classify)
    }

    pub fn remove_viewer_conn(&mut self, conn: u32) {
        let _ = self.viewer_conns.remove(&conn);
        let _ = self.routes.remove(&conn);
    }

    /// Viewer connections whose route the program learned since the last call.
    pub fn take_learned(&mut self) -> Vec<u32> {
        let mut out = Vec::new();
        while let Ok(conn) = self.learned.pop(0) {
            out.push(conn);
            if out.len() >= m::LEARNED_QUEUE as usize {
                break;
            }
        }
        out
    }

    /// The route the program learned for viewer connection `conn`.
    pub fn route(&self, conn: u32) -> Option<Route> {
        self.routes.get(&conn, 0).ok()
    }

    pub fn counters(&self) -> KernelCounters {
        let sum = |i: u32| {
            self.counters
                .get(&i, 0)
                .map_or(0, |v| v.iter().copied().sum::<u64>())
        };
        KernelCounters {
            packets_seen: sum(counter::PACKETS_SEEN),
            clones: sum(counter::CLONES),
            clone_failures: sum(counter::CLONE_FAILURES),
            skipped: sum(counter::SKIPPED),
            routes_learned: sum(counter::ROUTES_LEARNED),
            restore_failures: sum(counter::RESTORE_FAILURES),
            loopback_skipped: sum(counter::LOOPBACK_SKIPPED),
            acks_answered: sum(counter::ACKS_ANSWERED),
            light_acks: sum(counter::LIGHT_ACKS),
            ack_failures: sum(counter::ACK_FAILURES),
        }
    }

    /// What the program did for viewer slot `slot` since it was last reset (one syscall).
    pub fn viewer_counts(&self, slot: u32) -> ViewerCounts {
        let mut t = ViewerCounts::default();
        if let Ok(per_cpu) = self.viewer_counts.get(&slot, 0) {
            for c in per_cpu.iter() {
                t.clones += c.clones;
                t.acks += c.acks;
                t.light_acks += c.light_acks;
                t.ack_bytes += c.ack_bytes;
            }
        }
        t
    }

    /// The latest ACK the program handled for viewer slot `slot` (a memory read).
    pub fn viewer_acks(&self, slot: u32) -> ViewerAcks {
        self.viewer_acks.get(slot).unwrap_or_default()
    }

    /// Clears what the program recorded for viewer slot `slot`, for a new viewer.
    pub fn reset_viewer(&mut self, slot: u32) {
        self.viewer_acks.set(slot, ViewerAcks::default());
        let n = aya::util::nr_cpus().map_or(1, |n| n);
        if let Ok(zeros) = aya::maps::PerCpuValues::try_from(vec![ViewerCounts::default(); n]) {
            let _ = self.viewer_counts.set(slot, zeros, 0);
        }
    }
}

/// An IPv4 address as the program stores it (network byte order in a native integer).
pub fn raw_ip(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// A port as the program stores it.
pub fn raw_port(port: u16) -> u16 {
    u16::from_ne_bytes(port.to_be_bytes())
}

/// CLOCK_MONOTONIC now, ns: the clock of `Instant` on Linux and of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `t` as CLOCK_MONOTONIC ns.
fn instant_to_ns(t: Instant) -> u64 {
    let (now, ns) = (Instant::now(), monotonic_ns());
    match t.checked_duration_since(now) {
        Some(ahead) => ns + ahead.as_nanos() as u64,
        None => ns.saturating_sub(now.duration_since(t).as_nanos() as u64),
    }
}

/// CLOCK_MONOTONIC ns as an `Instant` (never later than now).
fn ns_to_instant(t: u64, now: Instant, now_ns: u64) -> Instant {
    now.checked_sub(Duration::from_nanos(now_ns.saturating_sub(t)))
        .unwrap_or(now)
}

fn v4(addr: SocketAddr) -> Option<SocketAddrV4> {
    match addr {
        SocketAddr::V4(a) => Some(a),
        SocketAddr::V6(a) => a
            .ip()
            .to_ipv4_mapped()
            .map(|ip| SocketAddrV4::new(ip, a.port())),
    }
}

/// Every network interface that is up (the default attach set).
pub fn interfaces_up() -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/sys/class/net") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let flags = std::fs::read_to_string(e.path().join("flags")).unwrap_or_default();
            let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap_or(0);
            if flags & libc::IFF_UP as u32 != 0 {
                out.push(name);
            }
        }
    }
    out.sort();
    out
}

pub struct EbpfOptions {
    pub object: PathBuf,
    /// `None`: every interface that is up.
    pub interfaces: Option<Vec<String>>,
    /// The relay's SRT listening address.
    pub listen: SocketAddr,
    /// Streams in the configuration (rows of the viewer table).
    pub streams: u32,
    /// The relay's connection limit (sizes the route maps).
    pub max_connections: u32,
}

struct ViewerState {
    stream: u32,
    /// Index in `VIEWERS` (`stream * MAX_VIEWERS + i`).
    slot: u32,
    peer_id: u32,
    /// (epoch, seq_off, ts_off) from the relay's latest `ViewerMapped`.
    mapping: Option<(u64, u32, u32)>,
    /// When `mapping` arrived while the viewer was not served by the kernel for it.
    pending_since: Option<Instant>,
    /// The epoch the kernel serves this viewer for, and the route it was given.
    active: Option<(u64, Route)>,
    /// The slot's counts as last passed on to metrics and the relay.
    counted: ViewerCounts,
    /// `last_ns` of the latest ACK passed on to the relay.
    ack_ns: u64,
}

#[derive(Default)]
struct Row {
    /// Viewer connection per slot of this stream.
    slots: Vec<Option<u32>>,
    publisher: Option<u32>,
    /// The publisher is on this host (its packets come in on `lo`).
    publisher_local: bool,
    delay_us: u32,
}

impl Row {
    fn high_water(&self) -> u32 {
        self.slots
            .iter()
            .rposition(Option::is_some)
            .map_or(0, |i| i as u32 + 1)
    }

    fn entry(&self) -> StreamEntry {
        StreamEntry {
            slots: self.high_water(),
            delay_us: self.delay_us,
        }
    }
}

/// The eBPF datapath.
pub struct EbpfDatapath {
    user: Userspace,
    kernel: Kernel,
    metrics: Arc<Metrics>,
    streams: HashMap<String, u32>,
    rows: Vec<Row>,
    viewers: HashMap<u32, ViewerState>,
    counted: KernelCounters,
    last_slow: Instant,
    last_ack_read: Instant,
    backlog_warned: bool,
    /// `net.ipv4.conf.lo.accept_local` was on at start.
    lo_accept_local: bool,
}

/// Poll cadence while nothing waits: `ACK_READ`'s.
const POLL: Duration = ACK_READ;
/// Poll cadence while a mapped viewer waits for its route (it arrives with the viewer's
/// first ACK, ~10 ms after data starts flowing): every poll missed is packets the relay
/// sends from userspace instead.
const POLL_FAST: Duration = Duration::from_millis(5);
/// How long a waiting viewer keeps the fast cadence.
const FAST_FOR: Duration = Duration::from_secs(2);
/// Counters and route refresh.
const SLOW: Duration = Duration::from_secs(1);
/// How often the daemon reads what the program recorded of viewers' ACKs (memory reads):
/// their liveness, acknowledged position and RTT reach the relay this fresh. The relay
/// resends a packet whose viewer's ACK still stops at it (`KERNEL_ACK_LAG` in `relay`), so
/// this bounds how late that comes; 20 ms leaves a 120 ms latency room for two more tries.
const ACK_READ: Duration = Duration::from_millis(20);

impl EbpfDatapath {
    /// Loads, configures and attaches the program; any failure is the reason to fall back.
    pub fn start(
        opts: &EbpfOptions,
        socket: &impl AsRawFd,
        metrics: Arc<Metrics>,
    ) -> Result<EbpfDatapath, KernelError> {
        let mut kernel = Kernel::load_file_sized(&opts.object, opts.streams, opts.max_connections)?;
        let listen = v4(opts.listen).ok_or_else(|| {
            KernelError::Other(format!(
                "the kernel path handles IPv4 only; listening on {}",
                opts.listen
            ))
        })?;
        kernel.set_relay(Some(*listen.ip()), listen.port())?;
        let lo_accept_local = std::fs::read_to_string("/proc/sys/net/ipv4/conf/lo/accept_local")
            .is_ok_and(|v| v.trim() == "1");
        kernel.set_lo_accept_local(lo_accept_local)?;
        let strict = opts.interfaces.is_some();
        let ifaces = opts.interfaces.clone().unwrap_or_else(interfaces_up);
        for iface in &ifaces {
            match kernel.attach(iface) {
                Ok(()) => {}
                Err(e) if strict || matches!(e, KernelError::PermissionDenied(_)) => return Err(e),
                Err(e) => warn!("{e}; skipping that interface"),
            }
        }
        if kernel.attached().is_empty() {
            return Err(KernelError::Attach {
                iface: ifaces.join(","),
                reason: "no interface to attach to".into(),
            });
        }
        info!(
            interfaces = kernel.attached().join(","),
            max_streams = kernel.max_streams(),
            "eBPF fan-out attached at TC ingress"
        );
        Ok(EbpfDatapath {
            user: Userspace::new(socket, metrics.clone()),
            kernel,
            metrics,
            streams: HashMap::new(),
            rows: Vec::new(),
            viewers: HashMap::new(),
            counted: KernelCounters::default(),
            last_slow: Instant::now(),
            last_ack_read: Instant::now(),
            backlog_warned: false,
            lo_accept_local,
        })
    }

    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    fn stream_index(&mut self, resource: &str) -> Option<u32> {
        if let Some(&i) = self.streams.get(resource) {
            return Some(i);
        }
        let i = self.rows.len() as u32;
        if i >= self.kernel.max_streams() {
            return None;
        }
        self.streams.insert(resource.to_string(), i);
        self.rows.push(Row::default());
        Some(i)
    }

    fn viewer_added(
        &mut self,
        conn: u32,
        resource: &str,
        peer: SocketAddr,
        peer_id: u32,
        start: Instant,
    ) {
        let Some(peer) = v4(peer) else {
            debug!(conn, %peer, "IPv6 viewer: served from userspace");
            return;
        };
        let Some(stream) = self.stream_index(resource) else {
            return;
        };
        let row = &mut self.rows[stream as usize];
        let free = row.slots.iter().position(Option::is_none);
        let i = match free {
            Some(i) => i,
            None if row.slots.len() < MAX_VIEWERS as usize => {
                row.slots.push(None);
                row.slots.len() - 1
            }
            None => {
                debug!(conn, "no free kernel viewer slot: served from userspace");
                return;
            }
        };
        row.slots[i] = Some(conn);
        let (high, stream_entry) = (row.high_water(), row.entry());
        let slot = stream * MAX_VIEWERS + i as u32;
        let entry = ViewerEntry {
            conn,
            peer_id,
            ..Default::default()
        };
        // Cleared before the program can match the connection.
        self.kernel.reset_viewer(slot);
        let ok = self.kernel.set_viewer(slot, &entry).is_ok()
            && self
                .kernel
                .set_viewer_conn(
                    conn,
                    ViewerConn {
                        start_ns: instant_to_ns(start),
                        slot,
                        peer_ip: raw_ip(*peer.ip()),
                        peer_port: raw_port(peer.port()),
                        _pad: [0; 6],
                    },
                )
                .is_ok()
            && self.kernel.set_stream(stream, stream_entry).is_ok();
        if !ok {
            warn!(
                conn,
                "cannot install viewer in the kernel maps: served from userspace"
            );
            self.rows[stream as usize].slots[i] = None;
            self.kernel.remove_viewer_conn(conn);
            return;
        }
        self.viewers.insert(
            conn,
            ViewerState {
                stream,
                slot,
                peer_id,
                mapping: None,
                pending_since: None,
                active: None,
                counted: ViewerCounts::default(),
                ack_ns: 0,
            },
        );
        self.warn_backlog(high);
    }

    /// Clones to veth or `lo` queue on one CPU's backlog (net.core.netdev_max_backlog,
    /// 1000 by default) all at once: more viewers than that lose packets there.
    fn warn_backlog(&mut self, viewers: u32) {
        if self.backlog_warned {
            return;
        }
        let limit = std::fs::read_to_string("/proc/sys/net/core/netdev_max_backlog")
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(u32::MAX);
        if viewers >= limit {
            self.backlog_warned = true;
            warn!(
                viewers,
                netdev_max_backlog = limit,
                "a stream has as many kernel-path viewers as net.core.netdev_max_backlog: clones over veth or lo beyond it are dropped; raise the sysctl"
            );
        }
    }

    fn viewer_removed(&mut self, conn: u32) {
        let Some(v) = self.viewers.remove(&conn) else {
            return;
        };
        // The connection is gone from the relay: only its kernel clone count is still
        // exported (until the metrics drop the connection too).
        self.metrics
            .set_kernel_sent(conn, self.kernel.viewer_counts(v.slot).clones);
        // Deactivate first (one flag changes), then clear the slot.
        if let Some(mut e) = self.kernel.viewer(v.slot) {
            e.active = 0;
            let _ = self.kernel.set_viewer(v.slot, &e);
        }
        let _ = self.kernel.set_viewer(v.slot, &ViewerEntry::default());
        self.kernel.remove_viewer_conn(conn);
        let row = &mut self.rows[v.stream as usize];
        row.slots[(v.slot % MAX_VIEWERS) as usize] = None;
        while row.slots.last() == Some(&None) {
            row.slots.pop();
        }
        let e = row.entry();
        let _ = self.kernel.set_stream(v.stream, e);
    }

    /// Moves a mapped viewer whose route is known onto the kernel path.
    fn try_activate(&mut self, conn: u32, relay: &mut Relay) {
        let Some(v) = self.viewers.get(&conn) else {
            return;
        };
        let Some((epoch, seq_off, ts_off)) = v.mapping else {
            return;
        };
        if v.active.is_some_and(|(e, _)| e == epoch) {
            return;
        }
        let Some(route) = self.kernel.route(conn) else {
            return;
        };
        // A viewer on this host (route on `lo`) can take clones of a remote publisher's
        // packets only if `lo` accepts local sources without a route; else userspace
        // serves it.
        if route.ifindex == LOOPBACK_IFINDEX
            && !self.lo_accept_local
            && !self.rows[v.stream as usize].publisher_local
        {
            if v.pending_since.is_some() {
                info!(conn, "viewer on this host, publisher elsewhere: served from userspace (net.ipv4.conf.lo.accept_local=1 lets the kernel serve it)");
                if let Some(v) = self.viewers.get_mut(&conn) {
                    v.pending_since = None;
                }
            }
            return;
        }
        let mut e = ViewerEntry {
            epoch,
            conn,
            peer_id: v.peer_id,
            seq_off,
            ts_off,
            active: 0,
            _pad: 0,
            route,
        };
        let slot = v.slot;
        // Everything but the flag first, then the flag alone: the program never sees a
        // half-written entry as active.
        if self.kernel.set_viewer(slot, &e).is_err() {
            return;
        }
        e.active = 1;
        if self.kernel.set_viewer(slot, &e).is_err() {
            return;
        }
        relay.set_kernel_fanout(conn, Some(epoch));
        if let Some(v) = self.viewers.get_mut(&conn) {
            v.active = Some((epoch, route));
            v.pending_since = None;
        }
        info!(
            conn,
            epoch,
            ifindex = route.ifindex,
            "viewer served by the kernel fast path"
        );
    }

    /// Takes the viewer off the kernel path (the relay sends it everything again).
    fn deactivate(&mut self, conn: u32, relay: &mut Relay) {
        let Some(v) = self.viewers.get_mut(&conn) else {
            return;
        };
        if v.active.take().is_some() {
            relay.set_kernel_fanout(conn, None);
            if let Some(mut e) = self.kernel.viewer(v.slot) {
                e.active = 0;
                let _ = self.kernel.set_viewer(v.slot, &e);
            }
        }
    }

    /// A served viewer whose route changed (say, a new next-hop MAC) gets the new one.
    fn refresh_routes(&mut self, relay: &mut Relay) {
        let moved: Vec<u32> = self
            .viewers
            .iter()
            .filter(|(&c, v)| {
                v.active
                    .is_some_and(|(_, r)| self.kernel.route(c).is_some_and(|now| now != r))
            })
            .map(|(&c, _)| c)
            .collect();
        for conn in moved {
            info!(conn, "viewer route changed: updating the kernel path");
            self.deactivate(conn, relay);
            self.try_activate(conn, relay);
        }
    }

    fn export_counters(&mut self) {
        let now = self.kernel.counters();
        self.metrics.add_kernel_counters(
            now.packets_seen.saturating_sub(self.counted.packets_seen),
            now.clones.saturating_sub(self.counted.clones),
            now.clone_failures
                .saturating_sub(self.counted.clone_failures),
        );
        for (reason, n, before) in [
            ("gso_or_rewrite", now.skipped, self.counted.skipped),
            (
                "loopback",
                now.loopback_skipped,
                self.counted.loopback_skipped,
            ),
            (
                "restore_failed",
                now.restore_failures,
                self.counted.restore_failures,
            ),
        ] {
            self.metrics
                .add_kernel_skipped(reason, n.saturating_sub(before));
        }
        for (kind, n, before) in [
            ("answered", now.acks_answered, self.counted.acks_answered),
            ("light", now.light_acks, self.counted.light_acks),
            ("failed", now.ack_failures, self.counted.ack_failures),
        ] {
            self.metrics.add_kernel_acks(kind, n.saturating_sub(before));
        }
        self.counted = now;
    }

    /// Passes on to the relay what the program recorded of each viewer's ACKs: the
    /// latest ACK (a memory read per viewer) every time, the counts (one syscall per
    /// viewer) when `counts` is set.
    fn read_viewer_acks(&mut self, relay: &mut Relay, counts: bool) {
        let (now, now_ns) = (Instant::now(), monotonic_ns());
        for (&conn, v) in self.viewers.iter_mut() {
            let a = self.kernel.viewer_acks(v.slot);
            let mut report = KernelAcks {
                last: ns_to_instant(a.last_ns, now, now_ns),
                ack_seq: Seq::new(a.ack_seq),
                rtt: (a.ack_no != 0 || a.rtt_us != 0).then_some((a.rtt_us, a.rtt_var_us)),
                answered: 0,
                light: 0,
                bytes: 0,
            };
            let fresh = a.last_ns != v.ack_ns;
            if counts {
                let c = self.kernel.viewer_counts(v.slot);
                if c.clones != v.counted.clones {
                    self.metrics.set_kernel_sent(conn, c.clones);
                }
                report.answered = c.acks.saturating_sub(v.counted.acks);
                report.light = c.light_acks.saturating_sub(v.counted.light_acks);
                report.bytes = c.ack_bytes.saturating_sub(v.counted.ack_bytes);
                v.counted = c;
            }
            if fresh || report.answered + report.light > 0 {
                if a.last_ns == 0 {
                    continue; // counts without an ACK recorded yet: wait for it
                }
                v.ack_ns = a.last_ns;
                relay.on_kernel_acks(conn, &report);
            }
        }
    }
}

impl Datapath for EbpfDatapath {
    fn kind(&self) -> &'static str {
        "ebpf"
    }

    fn flush(&mut self, relay: &mut Relay) {
        self.user.flush(relay);
    }

    fn on_route(&mut self, relay: &mut Relay, event: &RouteEvent) {
        match event {
            RouteEvent::ViewerAdded {
                conn,
                resource,
                peer,
                peer_id,
                start,
            } => self.viewer_added(*conn, resource, *peer, *peer_id, *start),
            RouteEvent::ViewerMapped {
                conn,
                epoch,
                seq_off,
                ts_off,
            } => {
                if let Some(v) = self.viewers.get_mut(conn) {
                    v.mapping = Some((*epoch, *seq_off, *ts_off));
                    v.pending_since = Some(Instant::now());
                    if v.active.is_some_and(|(a, _)| a != *epoch) {
                        self.deactivate(*conn, relay);
                    }
                    self.try_activate(*conn, relay);
                }
            }
            RouteEvent::ViewerRemoved { conn } => self.viewer_removed(*conn),
            RouteEvent::StreamDelay { resource, delay_us } => {
                let Some(stream) = self.stream_index(resource) else {
                    return;
                };
                let row = &mut self.rows[stream as usize];
                row.delay_us = *delay_us;
                let e = row.entry();
                if let Err(e) = self.kernel.set_stream(stream, e) {
                    warn!(resource, "cannot set the stream's delay in the kernel: {e}");
                }
            }
            RouteEvent::PublisherChanged {
                resource,
                publisher,
                epoch,
            } => {
                let Some(stream) = self.stream_index(resource) else {
                    return;
                };
                let row = &mut self.rows[stream as usize];
                row.publisher_local = false;
                if let Some(old) = row.publisher.take() {
                    self.kernel.remove_publisher(old);
                }
                let Some((addr, id)) = publisher else {
                    return;
                };
                let Some(addr) = v4(*addr) else {
                    return;
                };
                let e = PublisherEntry {
                    epoch: *epoch,
                    stream,
                    src_ip: raw_ip(*addr.ip()),
                    src_port: raw_port(addr.port()),
                    _pad: [0; 6],
                };
                if self.kernel.set_publisher(*id, e).is_ok() {
                    let row = &mut self.rows[stream as usize];
                    row.publisher = Some(*id);
                    // Its packets come in on `lo` iff its address is one of ours.
                    row.publisher_local =
                        std::net::UdpSocket::bind(SocketAddrV4::new(*addr.ip(), 0)).is_ok();
                }
            }
        }
    }

    fn poll(&mut self, relay: &mut Relay) {
        let now = Instant::now();
        let slow = now.duration_since(self.last_slow) >= SLOW;
        // Routes the program just learned (one syscall when there are none); once a
        // second, every viewer still waiting (in case the queue overflowed).
        let mut candidates = self.kernel.take_learned();
        if slow {
            candidates.extend(self.viewers.keys().copied());
        }
        for conn in candidates {
            let waiting = self.viewers.get(&conn).is_some_and(|v| {
                v.mapping
                    .is_some_and(|(e, _, _)| v.active.is_none_or(|(a, _)| a != e))
            });
            if waiting {
                self.try_activate(conn, relay);
            }
        }
        self.export_counters();
        if slow || now.duration_since(self.last_ack_read) >= ACK_READ {
            self.last_ack_read = now;
            self.read_viewer_acks(relay, slow);
        }
        if slow {
            self.last_slow = now;
            self.refresh_routes(relay);
        }
    }

    fn poll_interval(&self) -> Option<Duration> {
        let now = Instant::now();
        let waiting = self
            .viewers
            .values()
            .any(|v| v.pending_since.is_some_and(|t| now - t < FAST_FOR));
        Some(if waiting { POLL_FAST } else { POLL })
    }
}

impl Drop for EbpfDatapath {
    fn drop(&mut self) {
        info!(
            interfaces = self.kernel.attached().join(","),
            "detaching eBPF fan-out"
        );
    }
}
