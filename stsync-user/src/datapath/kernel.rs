//! The loaded stsync-ebpf program and its maps: loading (with the reasons it can fail),
//! attaching at TC ingress, and typed access to every map the daemon and the program
//! share. No policy: which viewer the kernel serves is `handover.rs`'s, when it is read and
//! written is `ebpf.rs`'s.
//!
//! TC links are not pinned: the kernel detaches them when the process exits, however it
//! exits, so a crash leaves nothing attached.

use super::mmap_array::MmapArray;
use crate::os::clock::monotonic_ns;
use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, Queue};
use aya::programs::{tc::TcAttachOptions, LinkOrder, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use stsync_common::maps::{
    self as m, counter, Config, PublisherEntry, Route, StreamEntry, ViewerAcks, ViewerConn,
    ViewerCounts, ViewerEntry, CONFIG_LO_ACCEPT_LOCAL, CONFIG_NO_V4, CONFIG_NO_V6, FAMILY_V4,
    FAMILY_V6, MAX_VIEWERS,
};

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
    /// IPv6 datagrams for the relay left to the daemon: extension headers before UDP.
    pub v6_ext_headers: u64,
    /// First fragments for the relay left to the daemon.
    pub fragments: u64,
    /// Publisher packets not converted for viewers of the other family.
    pub cross_family_skipped: u64,
}

/// The loaded program and its maps (attached or not). Dropping it detaches the program.
pub struct Kernel {
    bpf: Ebpf,
    config_map: Array<MapData, Config>,
    publishers: BpfHashMap<MapData, u32, PublisherEntry>,
    streams: Array<MapData, StreamEntry>,
    cross_blocked: Array<MapData, u32>,
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
    /// Forwards the program's log lines while it lives (`start_log`).
    log: Option<super::kernel_log::KernelLog>,
}

/// Where eBPF object `name` (built by `cargo xtask build-ebpf`) is: next to the build
/// output the running executable came from (`target/{debug,release}/..`), then the working
/// directory's `target/`, then `installed`; the first candidate when none exists (for the
/// error message).
pub fn find_object(name: &str, installed: Option<&Path>) -> PathBuf {
    let rel = Path::new("bpfel-unknown-none/release").join(name);
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join("..").join(&rel));
        candidates.push(dir.join("../..").join(&rel));
    }
    candidates.push(Path::new("target").join(&rel));
    candidates.extend(installed.map(Path::to_path_buf));
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| candidates[0].clone())
}

impl Kernel {
    /// Where the daemon looks for the object when `--ebpf-object` is not given: next to
    /// the build output the executable came from (`target/{debug,release}/..`), then the
    /// working directory's `target/`, then the install location.
    pub fn default_object_path() -> PathBuf {
        find_object(
            "stsync-ebpf",
            Some(Path::new("/usr/lib/stsync/stsync-ebpf")),
        )
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
            .map_max_entries(m::MAP_CROSS_BLOCKED, max_streams)
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
            cross_blocked: take(&mut bpf, m::MAP_CROSS_BLOCKED)?,
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
            log: None,
        })
    }

    /// Forwards the program's aya-log lines to the daemon's log (needs a tokio runtime;
    /// without one, says so once and goes on without).
    pub fn start_log(&mut self) {
        self.log = super::kernel_log::start(&mut self.bpf);
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

    /// Interface `iface` is gone, and the program's attachment with it: a new interface
    /// of that name gets the program again.
    pub fn forget(&mut self, iface: &str) {
        self.attached.retain(|a| a != iface);
    }

    /// The relay's listening address, and with it the families the program serves: an
    /// IPv4 address (0.0.0.0: any) takes IPv4 callers, `[::]` both families (the relay's
    /// socket is dual-stack), an IPv4-mapped address IPv4 ones, any other IPv6 address
    /// IPv6 ones.
    pub fn set_relay(&mut self, listen: SocketAddr) -> Result<(), KernelError> {
        let ip = listen.ip().to_canonical();
        self.config.relay_ip = if ip.is_unspecified() {
            [0; 4]
        } else {
            raw_ip(ip)
        };
        self.config.flags &= !(CONFIG_NO_V4 | CONFIG_NO_V6);
        self.config.flags |= match (listen, ip) {
            (SocketAddr::V6(_), IpAddr::V6(v6)) if v6.is_unspecified() => 0,
            (_, IpAddr::V4(_)) => CONFIG_NO_V6,
            (_, IpAddr::V6(_)) => CONFIG_NO_V4,
        };
        self.config.relay_port = raw_port(listen.port());
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

    /// Whether the program met a packet of `stream` too large to convert for viewers of
    /// the other family (`CROSS_MTU`).
    pub fn cross_blocked(&self, stream: u32) -> bool {
        self.cross_blocked.get(&stream, 0).is_ok_and(|v| v != 0)
    }

    /// Clears `stream`'s `cross_blocked` flag (a new publisher).
    pub fn clear_cross_blocked(&mut self, stream: u32) {
        let _ = self.cross_blocked.set(stream, 0, 0);
    }

    /// Sets the slots the program scans, without the delay (tests).
    pub fn set_stream_slots(&mut self, stream: u32, slots: u32) -> Result<(), KernelError> {
        self.set_stream(
            stream,
            StreamEntry {
                slots,
                families: FAMILY_V4 | FAMILY_V6,
                ..StreamEntry::default()
            },
        )
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
            v6_ext_headers: sum(counter::V6_EXT_HEADERS),
            fragments: sum(counter::FRAGMENTS),
            cross_family_skipped: sum(counter::CROSS_FAMILY_SKIPPED),
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

/// An address as the program stores it: four words of network-order bytes, an IPv4
/// address (or an IPv4-mapped one) as `::ffff:a.b.c.d`.
pub fn raw_ip(ip: impl Into<IpAddr>) -> [u32; 4] {
    let o = match ip.into() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

/// A port as the program stores it.
pub fn raw_port(port: u16) -> u16 {
    u16::from_ne_bytes(port.to_be_bytes())
}

/// `t` as CLOCK_MONOTONIC ns.
pub fn instant_to_ns(t: Instant) -> u64 {
    let (now, ns) = (Instant::now(), monotonic_ns());
    match t.checked_duration_since(now) {
        Some(ahead) => ns + ahead.as_nanos() as u64,
        None => ns.saturating_sub(now.duration_since(t).as_nanos() as u64),
    }
}

/// CLOCK_MONOTONIC ns as an `Instant` (never later than now).
pub fn ns_to_instant(t: u64, now: Instant, now_ns: u64) -> Instant {
    now.checked_sub(Duration::from_nanos(now_ns.saturating_sub(t)))
        .unwrap_or(now)
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
