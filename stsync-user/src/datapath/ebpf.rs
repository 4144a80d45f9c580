//! The kernel datapath: the stsync-ebpf TC program clones each publisher data packet once
//! per viewer (rewritten for that viewer) and sends it out of the viewer's interface; the
//! daemon keeps the program's maps in step with the relay's route events, reports back what
//! the program did (`KernelReport`), and sends everything else (handshakes, ACKs,
//! retransmissions, keepalives, and data for viewers the kernel does not serve yet)
//! through the userspace path it holds. Which viewers the kernel serves is decided in
//! `handover.rs`; the program and its maps are `kernel.rs`.

use super::handover::{Handover, ViewerTable};
use super::kernel::{
    instant_to_ns, interfaces_up, ns_to_instant, raw_ip, raw_port, Kernel, KernelError,
};
use super::userspace::Userspace;
use super::{Datapath, DatapathStats};
use crate::os::clock::monotonic_ns;
use crate::os::link_watch::{LinkEvent, LinkWatch};
use crate::relay::{KernelAcks, KernelReport, RouteEvent, Transmits};
use crate::srt::seq::Seq;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use stsync_common::maps::{
    PublisherEntry, Route, StreamEntry, ViewerConn, ViewerCounts, ViewerEntry, FAMILY_V4,
    FAMILY_V6, MAX_VIEWERS,
};
use tracing::{debug, info, warn};

pub struct EbpfOptions {
    pub object: PathBuf,
    /// `None`: every interface that is up.
    pub interfaces: Option<Vec<String>>,
    /// The relay's SRT listening address.
    pub listen: SocketAddr,
    /// Rows of the viewer table: the streams the kernel path can serve at once (config.json
    /// `kernel_streams`, with room for streams a reload adds).
    pub streams: u32,
    /// The relay's connection limit (sizes the route maps).
    pub max_connections: u32,
}

/// One stream's part of the program's viewer table: `MAX_VIEWERS` slots from
/// `stream * MAX_VIEWERS`, of which the program scans up to the highest one in use.
#[derive(Default)]
struct StreamSlots {
    /// Viewer connection and its `FAMILY_*` bit, per slot of this stream.
    slots: Vec<Option<(u32, u32)>>,
    publisher: Option<u32>,
    /// The latest publisher epoch heard of: with workers, the end of an older publisher
    /// (on the worker that lost a takeover) may come after its successor's start.
    epoch: u64,
    delay_us: u32,
}

impl StreamSlots {
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
            families: self.slots.iter().flatten().fold(0, |f, &(_, bit)| f | bit),
            _pad: 0,
        }
    }
}

/// What was last read of a viewer's slot and passed on to the relay.
struct ViewerReads {
    slot: u32,
    /// The slot's counts.
    counted: ViewerCounts,
    /// `last_ns` of the latest ACK.
    ack_ns: u64,
}

/// The eBPF datapath.
pub struct EbpfDatapath {
    user: Userspace,
    kernel: Kernel,
    handover: Handover,
    streams: HashMap<String, u32>,
    slots: Vec<StreamSlots>,
    /// Rows freed by streams a reload removed, for streams it adds.
    free_rows: Vec<u32>,
    /// Streams that found no free row: their viewers are served from userspace (warned
    /// once each, and counted in the metrics).
    no_row: HashSet<String>,
    /// The publisher of each stream without a row, installed when it gets one.
    rowless_publishers: HashMap<String, ((SocketAddr, u32), u64)>,
    viewers: HashMap<u32, ViewerReads>,
    reports: VecDeque<KernelReport>,
    last_slow: Instant,
    last_ack_read: Instant,
    backlog_warned: bool,
    /// Interfaces coming up after the start (attach to every interface: no
    /// `--ebpf-interfaces`).
    links: Option<LinkWatch>,
}

/// Poll cadence while nothing waits: `ACK_READ`'s.
const POLL: Duration = ACK_READ;
/// Poll cadence while a mapped viewer waits for its route (for `handover::FAST_FOR`) (it arrives with the viewer's
/// first ACK, ~10 ms after data starts flowing): every poll missed is packets the relay
/// sends from userspace instead.
const POLL_FAST: Duration = Duration::from_millis(5);
/// Counters and route refresh.
const SLOW: Duration = Duration::from_secs(1);
/// How often the daemon reads what the program recorded of viewers' ACKs (memory reads):
/// their liveness, acknowledged position and RTT reach the relay this fresh. The relay
/// resends a packet whose viewer's ACK still stops at it (`KERNEL_ACK_LAG` in `relay`), so
/// this bounds how late that comes; 20 ms leaves a 120 ms latency room for two more tries.
const ACK_READ: Duration = Duration::from_millis(20);

impl ViewerTable for Kernel {
    fn route(&self, conn: u32) -> Option<Route> {
        Kernel::route(self, conn)
    }

    fn set_viewer(&mut self, slot: u32, e: &ViewerEntry) -> bool {
        Kernel::set_viewer(self, slot, e).is_ok()
    }
}

impl EbpfDatapath {
    /// Loads, configures and attaches the program; any failure is the reason to fall back.
    pub fn start(opts: &EbpfOptions, socket: &impl AsRawFd) -> Result<EbpfDatapath, KernelError> {
        let mut kernel = Kernel::load_file_sized(&opts.object, opts.streams, opts.max_connections)?;
        kernel.start_log();
        kernel.set_relay(opts.listen)?;
        let lo_accept_local = std::fs::read_to_string("/proc/sys/net/ipv4/conf/lo/accept_local")
            .is_ok_and(|v| v.trim() == "1");
        kernel.set_lo_accept_local(lo_accept_local)?;
        let strict = opts.interfaces.is_some();
        // Subscribed before the interfaces are listed, so none comes up unseen between.
        let links = match strict {
            true => None,
            false => LinkWatch::open()
                .map_err(|e| warn!("cannot watch interfaces coming up ({e}): only those up now get the kernel path"))
                .ok(),
        };
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
            user: Userspace::new(socket),
            kernel,
            handover: Handover::new(lo_accept_local),
            streams: HashMap::new(),
            slots: Vec::new(),
            free_rows: Vec::new(),
            no_row: HashSet::new(),
            rowless_publishers: HashMap::new(),
            viewers: HashMap::new(),
            reports: VecDeque::new(),
            last_slow: Instant::now(),
            last_ack_read: Instant::now(),
            backlog_warned: false,
            links,
        })
    }

    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// Several workers: viewers move onto the kernel path only when their publisher's
    /// worker has read its socket dry (`activate_ready`).
    pub fn gate(&mut self) {
        self.handover.gate();
    }

    /// The worker (of `workers`) of each stream's publisher that has a viewer waiting.
    pub fn ready_workers(&self, workers: u32) -> impl Iterator<Item = u32> + '_ {
        self.handover
            .ready_streams()
            .filter_map(move |s| self.publisher_worker(s, workers))
    }

    fn publisher_worker(&self, stream: u32, workers: u32) -> Option<u32> {
        let id = self.slots.get(stream as usize)?.publisher?;
        crate::os::reuseport::worker_of(id, workers)
    }

    /// Worker `worker` (of `workers`) read its socket dry at `since`: the viewers waiting
    /// for it move onto the kernel path.
    pub fn activate_ready(&mut self, since: Instant, worker: u32, workers: u32) {
        let mine = self.mine(worker, workers);
        self.handover.activate_ready(since, mine, &mut self.kernel);
    }

    /// Worker `worker` read a full batch at `asked`: viewers that waited too long for it
    /// to run dry move now (`Handover::activate_overdue`).
    pub fn activate_overdue(&mut self, asked: Instant, worker: u32, workers: u32) {
        let mine = self.mine(worker, workers);
        let moved = self
            .handover
            .activate_overdue(asked, mine, &mut self.kernel);
        if moved > 0 {
            info!(
                worker,
                viewers = moved,
                "the publisher's worker has not read its socket dry for 100 ms: its waiting viewers move onto the kernel path anyway (packets queued meanwhile are resent on their NAKs)"
            );
        }
    }

    /// Whether a stream's publisher is worker `worker`'s (of `workers`).
    fn mine(&self, worker: u32, workers: u32) -> impl Fn(u32) -> bool {
        let owners: Vec<Option<u32>> = (0..self.slots.len() as u32)
            .map(|s| self.publisher_worker(s, workers))
            .collect();
        move |s: u32| owners.get(s as usize).copied().flatten() == Some(worker)
    }

    /// The stream's row, given one if it has none: a freed one, or the next; none left, its
    /// viewers are served from userspace, which is said once and counted.
    fn stream_index(&mut self, resource: &str) -> Option<u32> {
        if let Some(&i) = self.streams.get(resource) {
            return Some(i);
        }
        let i = match self.free_rows.pop() {
            Some(i) => i,
            None if (self.slots.len() as u32) < self.kernel.max_streams() => {
                self.slots.push(StreamSlots::default());
                self.slots.len() as u32 - 1
            }
            None => {
                if self.no_row.insert(resource.to_string()) {
                    warn!(
                        resource,
                        kernel_streams = self.kernel.max_streams(),
                        "no free kernel stream row (config.json `kernel_streams`, sized at start): the stream's viewers are served from userspace"
                    );
                }
                return None;
            }
        };
        self.streams.insert(resource.to_string(), i);
        self.no_row.remove(resource);
        // A publisher that came while there was no row: the kernel clones its packets now.
        if let Some((publisher, epoch)) = self.rowless_publishers.remove(resource) {
            self.publisher_changed(resource, Some(publisher), epoch);
        }
        Some(i)
    }

    /// A reload removed the stream. Its row is freed once empty: with workers, another
    /// one's viewers of it may still be there, and that worker's own `StreamRemoved`
    /// (after it closed them) frees it.
    fn stream_removed(&mut self, resource: &str) {
        self.no_row.remove(resource);
        self.rowless_publishers.remove(resource);
        let Some(&i) = self.streams.get(resource) else {
            return;
        };
        let row = &self.slots[i as usize];
        if row.publisher.is_some() || row.slots.iter().any(Option::is_some) {
            return;
        }
        self.streams.remove(resource);
        self.slots[i as usize] = StreamSlots::default();
        self.handover.set_publisher(i, None);
        self.kernel.clear_cross_blocked(i);
        if let Err(e) = self.kernel.set_stream(i, StreamEntry::default()) {
            warn!(resource, "cannot clear the stream's kernel row: {e}");
        }
        self.free_rows.push(i);
        debug!(resource, row = i, "kernel stream row freed");
    }

    fn viewer_added(
        &mut self,
        conn: u32,
        resource: &str,
        peer: SocketAddr,
        peer_id: u32,
        start: Instant,
    ) {
        let family = if peer.ip().to_canonical().is_ipv4() {
            FAMILY_V4
        } else {
            FAMILY_V6
        };
        let Some(stream) = self.stream_index(resource) else {
            return;
        };
        let row = &mut self.slots[stream as usize];
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
        row.slots[i] = Some((conn, family));
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
                        peer_ip: raw_ip(peer.ip()),
                        peer_port: raw_port(peer.port()),
                        _pad: 0,
                    },
                )
                .is_ok()
            && self.kernel.set_stream(stream, stream_entry).is_ok();
        if !ok {
            warn!(
                conn,
                "cannot install viewer in the kernel maps: served from userspace"
            );
            self.slots[stream as usize].slots[i] = None;
            self.kernel.remove_viewer_conn(conn);
            return;
        }
        self.handover.add(conn, stream, slot, peer_id);
        let reads = ViewerReads {
            slot,
            counted: ViewerCounts::default(),
            ack_ns: 0,
        };
        self.viewers.insert(conn, reads);
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
        self.viewers.remove(&conn);
        let Some((stream, slot)) = self.handover.remove(conn) else {
            return;
        };
        // Deactivate first (one flag changes), then clear the slot.
        if let Some(mut e) = self.kernel.viewer(slot) {
            e.active = 0;
            let _ = self.kernel.set_viewer(slot, &e);
        }
        let _ = self.kernel.set_viewer(slot, &ViewerEntry::default());
        self.kernel.remove_viewer_conn(conn);
        let row = &mut self.slots[stream as usize];
        row.slots[(slot % MAX_VIEWERS) as usize] = None;
        while row.slots.last() == Some(&None) {
            row.slots.pop();
        }
        let e = row.entry();
        let _ = self.kernel.set_stream(stream, e);
    }

    fn publisher_changed(
        &mut self,
        resource: &str,
        publisher: Option<(SocketAddr, u32)>,
        epoch: u64,
    ) {
        // A publisher's end for a stream without a row (removed, or never given one).
        if publisher.is_none() && !self.streams.contains_key(resource) {
            // Not an older publisher's end arriving after its successor's start.
            if self
                .rowless_publishers
                .get(resource)
                .is_some_and(|&(_, e)| e <= epoch)
            {
                self.rowless_publishers.remove(resource);
            }
            return;
        }
        let Some(stream) = self.stream_index(resource) else {
            if let Some(p) = publisher {
                self.rowless_publishers
                    .insert(resource.to_string(), (p, epoch));
            }
            return;
        };
        let row = &mut self.slots[stream as usize];
        if epoch < row.epoch {
            return;
        }
        row.epoch = epoch;
        self.handover.set_publisher(stream, None);
        if let Some(old) = self.slots[stream as usize].publisher.take() {
            self.kernel.remove_publisher(old);
        }
        let Some((addr, id)) = publisher else {
            return;
        };
        let e = PublisherEntry {
            epoch,
            stream,
            src_ip: raw_ip(addr.ip()),
            src_port: raw_port(addr.port()),
            _pad: 0,
        };
        if self.kernel.set_publisher(id, e).is_ok() {
            self.slots[stream as usize].publisher = Some(id);
            // Its packets come in on `lo` iff its address is one of ours.
            let ip = addr.ip().to_canonical();
            let local = std::net::UdpSocket::bind((ip, 0)).is_ok();
            let family = if ip.is_ipv4() { FAMILY_V4 } else { FAMILY_V6 };
            self.handover.set_publisher_family(stream, family);
            self.kernel.clear_cross_blocked(stream);
            self.handover.set_publisher(stream, Some(local));
        }
    }

    fn stream_delay(&mut self, resource: &str, delay_us: u32) {
        let Some(stream) = self.stream_index(resource) else {
            return;
        };
        let row = &mut self.slots[stream as usize];
        row.delay_us = delay_us;
        let e = row.entry();
        if let Err(e) = self.kernel.set_stream(stream, e) {
            warn!(resource, "cannot set the stream's delay in the kernel: {e}");
        }
    }

    /// Attaches the program to interfaces that came up since the last poll.
    fn watch_links(&mut self) {
        let Some(w) = &mut self.links else {
            return;
        };
        for ev in w.events() {
            match ev {
                LinkEvent::Up(name) if !self.kernel.attached().contains(&name) => {
                    match self.kernel.attach(&name) {
                        Ok(()) => info!(interface = name, "interface up: eBPF fan-out attached"),
                        Err(e) => warn!("{e}; skipping that interface"),
                    }
                }
                LinkEvent::Gone(name) => self.kernel.forget(&name),
                LinkEvent::Up(_) => {}
            }
        }
    }

    /// Reports what the program recorded of each viewer's ACKs: the latest ACK (a memory
    /// read per viewer) every time, the counts (one syscall per viewer) when `counts` is
    /// set.
    fn read_viewer_acks(&mut self, counts: bool) {
        let (now, now_ns) = (Instant::now(), monotonic_ns());
        for (&conn, v) in self.viewers.iter_mut() {
            let a = self.kernel.viewer_acks(v.slot);
            let mut acks = KernelAcks {
                last: ns_to_instant(a.last_ns, now, now_ns),
                ack_seq: Seq::new(a.ack_seq),
                rtt: (a.ack_no != 0 || a.rtt_us != 0).then_some((a.rtt_us, a.rtt_var_us)),
                avail_buf: (a.ack_no != 0 || a.rtt_us != 0).then_some(a.avail_buf),
                answered: 0,
                light: 0,
                bytes: 0,
            };
            let fresh = a.last_ns != v.ack_ns;
            if counts {
                let c = self.kernel.viewer_counts(v.slot);
                if c.clones != v.counted.clones {
                    self.reports.push_back(KernelReport::Clones {
                        conn,
                        total: c.clones,
                    });
                }
                acks.answered = c.acks.saturating_sub(v.counted.acks);
                acks.light = c.light_acks.saturating_sub(v.counted.light_acks);
                acks.bytes = c.ack_bytes.saturating_sub(v.counted.ack_bytes);
                v.counted = c;
            }
            if fresh || acks.answered + acks.light > 0 {
                if a.last_ns == 0 {
                    continue; // counts without an ACK recorded yet: wait for it
                }
                v.ack_ns = a.last_ns;
                self.reports.push_back(KernelReport::Acks { conn, acks });
            }
        }
    }
}

impl Datapath for EbpfDatapath {
    fn kind(&self) -> &'static str {
        "ebpf"
    }

    fn send(&mut self, batch: &Transmits<'_>) {
        self.user.send(batch);
    }

    fn on_route(&mut self, now: Instant, event: &RouteEvent) {
        match event {
            RouteEvent::ViewerAdded {
                conn,
                userspace_only: true,
                ..
            } => debug!(
                conn,
                "viewer served from userspace (encrypted with its own key, or an MSS below 1500)"
            ),
            RouteEvent::ViewerAdded {
                conn,
                resource,
                peer,
                peer_id,
                start,
                userspace_only: false,
            } => self.viewer_added(*conn, resource, *peer, *peer_id, *start),
            RouteEvent::ViewerMapped { conn, offsets } => {
                self.handover.mapped(now, *conn, *offsets, &mut self.kernel)
            }
            RouteEvent::ViewerRemoved { conn } => self.viewer_removed(*conn),
            RouteEvent::StreamDelay { resource, delay_us } => {
                self.stream_delay(resource, *delay_us)
            }
            RouteEvent::StreamRemoved { resource } => self.stream_removed(resource),
            RouteEvent::PublisherChanged {
                resource,
                publisher,
                epoch,
                encrypted,
            } => {
                // The kernel cannot decrypt: an encrypted publisher's viewers are all served
                // from userspace.
                let publisher = publisher.filter(|_| !encrypted);
                self.publisher_changed(resource, publisher, *epoch)
            }
        }
    }

    fn poll(&mut self, now: Instant) {
        self.watch_links();
        let slow = now.duration_since(self.last_slow) >= SLOW;
        // Routes the program just learned (one syscall when there are none); once a
        // second, every viewer (in case the queue overflowed).
        let mut learned = self.kernel.take_learned();
        if slow {
            learned.extend(self.viewers.keys().copied());
        }
        self.handover.learned(learned, &mut self.kernel);
        if slow || now.duration_since(self.last_ack_read) >= ACK_READ {
            self.last_ack_read = now;
            for stream in self.handover.cross_family_streams() {
                if self.kernel.cross_blocked(stream) {
                    self.handover.block_cross_family(stream, &mut self.kernel);
                }
            }
            self.read_viewer_acks(slow);
        }
        if slow {
            self.last_slow = now;
            self.handover.refresh_routes(&mut self.kernel);
        }
    }

    fn poll_report(&mut self) -> Option<KernelReport> {
        self.handover
            .poll_report()
            .or_else(|| self.reports.pop_front())
    }

    fn poll_interval(&self, now: Instant) -> Option<Duration> {
        Some(if self.handover.hurried(now) {
            POLL_FAST
        } else {
            POLL
        })
    }

    fn stats(&self) -> DatapathStats {
        DatapathStats {
            kind: self.kind(),
            kernel: Some(self.kernel.counters()),
            streams_without_kernel_row: self.no_row.len() as u64,
            ..self.user.stats()
        }
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
