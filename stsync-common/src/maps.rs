//! Keys and values of the maps the kernel fast path (stsync-ebpf) and the daemon share.
//!
//! Every type is `#[repr(C)]`, fixed width, with explicit padding (no implicit holes, so a
//! value written by one side is read byte for byte by the other) and a size assertion.
//! Address fields hold the bytes as they appear on the wire: an address is four words and a
//! port one half-word, each in network byte order inside a native integer
//! (`u32::from_ne_bytes(octets)`), so the kernel copies them into the packet without
//! swapping. An IPv4 address is IPv4-mapped (`::ffff:a.b.c.d`, its own word last), so one
//! type holds both families (`frame::mapped`). SRT fields (socket IDs, offsets)
//! are plain host-order numbers.
//!
//! Map names (the `#[map]` statics in stsync-ebpf, looked up by the daemon) are the `MAP_*`
//! constants below.

/// Viewer slots per stream: the most viewers one stream can have on the fast path.
pub const MAX_VIEWERS: u32 = 1024;
/// Default number of streams the viewer table has room for; the daemon sizes the tables
/// to its configuration when it loads the program.
pub const DEFAULT_MAX_STREAMS: u32 = 64;
/// Publisher entries (one per live publisher connection).
pub const MAX_PUBLISHERS: u32 = 1024;
/// Viewer connections the kernel learns routes for.
pub const MAX_VIEWER_CONNS: u32 = 65536;
/// Room in the queue of newly learned routes (the daemon drains it every few ms; when it
/// is full the daemon's once-a-second scan still finds the routes).
pub const LEARNED_QUEUE: u32 = 4096;

pub const MAP_CONFIG: &str = "CONFIG";
pub const MAP_PUBLISHERS: &str = "PUBLISHERS";
pub const MAP_STREAMS: &str = "STREAMS";
/// Per stream: non-zero once the program met a packet too large for the other family
/// (`CROSS_MTU`); the daemon then serves that family's viewers itself.
pub const MAP_CROSS_BLOCKED: &str = "CROSS_BLOCKED";
pub const MAP_VIEWERS: &str = "VIEWERS";
pub const MAP_VIEWER_CONNS: &str = "VIEWER_CONNS";
pub const MAP_ROUTES: &str = "ROUTES";
pub const MAP_COUNTERS: &str = "COUNTERS";
pub const MAP_VIEWER_COUNTS: &str = "VIEWER_COUNTS";
/// Per viewer slot: what the program learned from the viewer's ACKs (mmap-able array).
pub const MAP_VIEWER_ACKS: &str = "VIEWER_ACKS";
/// Queue of viewer connection IDs whose route the program just learned or changed.
pub const MAP_LEARNED: &str = "LEARNED";
/// Name of the TC classifier in the object.
pub const PROGRAM_NAME: &str = "stsync_tc";

/// Indices into the per-CPU `COUNTERS` array.
pub mod counter {
    /// Data packets from a known publisher (verified source) that reached the program.
    pub const PACKETS_SEEN: u32 = 0;
    /// Clones sent to viewers.
    pub const CLONES: u32 = 1;
    /// `bpf_clone_redirect` (or a rewrite before it) failed.
    pub const CLONE_FAILURES: u32 = 2;
    /// Publisher packets the program could not fan out (IP options, fragments, GSO).
    pub const SKIPPED: u32 = 3;
    /// Viewer control packets that taught (or refreshed) a viewer route.
    pub const ROUTES_LEARNED: u32 = 4;
    /// Publisher packets whose original could not be restored (dropped instead).
    pub const RESTORE_FAILURES: u32 = 5;
    /// Clones not made for a viewer on `lo` because the packet came in elsewhere (see
    /// `CONFIG_LO_ACCEPT_LOCAL`).
    pub const LOOPBACK_SKIPPED: u32 = 6;
    /// Viewers' full or small ACKs the program answered with an ACKACK itself.
    pub const ACKS_ANSWERED: u32 = 7;
    /// Viewers' light ACKs the program recorded (and consumed).
    pub const LIGHT_ACKS: u32 = 8;
    /// Viewers' ACKs the program could not answer (the ACKACK rewrite failed): dropped,
    /// being half rewritten; the viewer's next full ACK follows within 10 ms.
    pub const ACK_FAILURES: u32 = 9;
    /// IPv6 datagrams to the relay's port left to the daemon because an extension header
    /// (hop-by-hop, routing, destination options) comes before UDP.
    pub const V6_EXT_HEADERS: u32 = 10;
    /// Fragments to the relay's port left to the daemon (first fragments: later ones carry
    /// no port), either family.
    pub const FRAGMENTS: u32 = 11;
    /// Clones of the other family (an IPv4 publisher's packet to an IPv6 viewer or the
    /// reverse) not made because the packet could not be converted: too large for
    /// `CROSS_MTU` once converted (the stream is then marked in `CROSS_BLOCKED`), a zero
    /// IPv4 UDP checksum (which IPv6 forbids), the resize failed, or it came in on `lo`
    /// (where the daemon serves the other family's viewers itself).
    pub const CROSS_FAMILY_SKIPPED: u32 = 12;
    pub const COUNT: u32 = 13;
}

/// `CONFIG[0]`: where the relay listens.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The relay's listening address (network order, IPv4-mapped for IPv4); all zero = any
    /// address of the families it serves.
    pub relay_ip: [u32; 4],
    /// The relay's UDP port (network order).
    pub relay_port: u16,
    /// `CONFIG_*` bits.
    pub flags: u16,
}

/// `Config::flags`: the relay's socket takes no IPv4 caller (it listens on a specific IPv6
/// address): the program leaves IPv4 frames alone.
pub const CONFIG_NO_V4: u16 = 4;
/// `Config::flags`: the relay's socket takes no IPv6 caller (an IPv4 listening address).
pub const CONFIG_NO_V6: u16 = 8;

/// The interface index of `lo` in every network namespace.
pub const LOOPBACK_IFINDEX: u32 = 1;
/// `Config::flags`: `lo` accepts packets with a local source that carry no route
/// (`net.ipv4.conf.lo.accept_local = 1`), so clones of packets that came in on another
/// interface can be delivered to viewers on this host. Without it the program clones to a
/// viewer on `lo` only packets that themselves came in on `lo` (they carry a local route;
/// the others would be dropped as martians, "IP_LOCAL_SOURCE").
pub const CONFIG_LO_ACCEPT_LOCAL: u16 = 1;
/// `Config::flags`: the program also logs (aya-log, debug level, target `stsync_ebpf::*`)
/// every publisher packet it fans out and every viewer ACK it handles. Off by default: only
/// rare events (a route learned, failures) are logged without it.
pub const CONFIG_LOG: u16 = 2;

/// `PUBLISHERS`: relay socket ID of a publisher connection (the SRT destination socket ID
/// on its data packets) → where its packets go.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublisherEntry {
    /// The stream's publisher epoch; viewers' offsets are valid for one epoch.
    pub epoch: u64,
    /// Index of the stream (row of `VIEWERS`, entry of `STREAMS`).
    pub stream: u32,
    /// The publisher's source port and address (network order), checked on every packet.
    pub src_port: u16,
    pub _pad: u16,
    pub src_ip: [u32; 4],
}

/// `STREAMS[stream]`: how many viewer slots of the stream's row the program scans, and the
/// stream's delay.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamEntry {
    /// One past the highest slot in use (slots below it may be inactive).
    pub slots: u32,
    /// Added to every clone's timestamp (µs): viewers play the stream that much later.
    pub delay_us: u32,
    /// `FAMILY_*` bits: the families of the stream's kernel viewers. A packet is converted
    /// to the other family (and back) only when the bit of that family is set.
    pub families: u32,
    pub _pad: u32,
}

/// The largest IP packet the program makes by converting a datagram to the other family
/// (IPv4 to IPv6 adds 20 bytes): Ethernet's MTU, which a clone must fit.
pub const CROSS_MTU: u32 = 1500;

/// `StreamEntry::families`: a viewer reached over IPv4.
pub const FAMILY_V4: u32 = 1;
/// `StreamEntry::families`: a viewer reached over IPv6.
pub const FAMILY_V6: u32 = 2;

/// How a clone reaches a viewer: learned from the viewer's own packets as they arrive.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Route {
    /// The interface the viewer's packets arrive on; clones leave through it.
    pub ifindex: u32,
    /// `FAMILY_V4` or `FAMILY_V6`: the family of the viewer's packets, and of its clones.
    pub family: u32,
    /// The relay's address as the viewer sees it (network order): clone source.
    pub relay_ip: [u32; 4],
    /// The viewer's address (network order): clone destination.
    pub viewer_ip: [u32; 4],
    pub relay_port: u16,
    pub viewer_port: u16,
    /// The relay interface's MAC: clone source MAC.
    pub relay_mac: [u8; 6],
    /// The viewer's (next hop's) MAC: clone destination MAC.
    pub viewer_mac: [u8; 6],
}

/// `VIEWERS[stream * MAX_VIEWERS + i]`: one viewer slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ViewerEntry {
    /// The publisher epoch the offsets belong to: the program clones only packets of a
    /// publisher with this epoch.
    pub epoch: u64,
    /// The viewer connection's relay socket ID.
    pub conn: u32,
    /// The viewer's own SRT socket ID: the destination socket ID of its packets.
    pub peer_id: u32,
    /// viewer seq = (publisher seq + seq_off) & 0x7FFF_FFFF.
    pub seq_off: u32,
    /// viewer timestamp = publisher timestamp + ts_off (wrapping).
    pub ts_off: u32,
    /// Non-zero: the kernel serves this viewer's new data for `epoch`.
    pub active: u32,
    pub _pad: u32,
    pub route: Route,
}

/// `VIEWER_CONNS`: relay socket ID of a viewer connection → the peer the program may learn
/// a route from (packets from any other source teach nothing).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ViewerConn {
    /// Where the connection's clock starts (CLOCK_MONOTONIC ns, the clock of
    /// `bpf_ktime_get_ns`): the timestamp of an ACKACK the program sends is µs since then,
    /// the time base of everything else the relay sends this viewer.
    pub start_ns: u64,
    /// The viewer's slot (`stream * MAX_VIEWERS + i`): its `VIEWERS` and `VIEWER_ACKS` entry.
    pub slot: u32,
    pub peer_port: u16,
    pub _pad: u16,
    pub peer_ip: [u32; 4],
}

/// `VIEWER_ACKS[slot]`: the latest ACK of a kernel-served viewer as the program handled it
/// (while the viewer's `VIEWERS` entry is active; otherwise its ACKs go to the daemon).
/// Each ACK overwrites it; the daemon reads it on its own schedule through a shared
/// mapping (the map is `BPF_F_MMAPABLE`: no syscall per read) and zeroes it before a new
/// viewer takes the slot. The counts are in `VIEWER_COUNTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ViewerAcks {
    /// When the latest ACK (of any kind) arrived, CLOCK_MONOTONIC ns.
    pub last_ns: u64,
    /// The first sequence number the viewer has not received (any ACK).
    pub ack_seq: u32,
    /// The latest full or small ACK: its ACK number and the viewer's figures.
    pub ack_no: u32,
    pub rtt_us: u32,
    pub rtt_var_us: u32,
    /// Free space in the viewer's receive buffer, packets.
    pub avail_buf: u32,
    /// Receive rate, packets/s (full ACKs only).
    pub recv_rate_pps: u32,
    /// Estimated link capacity, packets/s (full ACKs only).
    pub link_cap_pps: u32,
    /// Receive rate, bytes/s (full ACKs of libsrt ≥ 1.0.3 only).
    pub recv_rate_bps: u32,
}

/// `VIEWER_COUNTS[slot]`, per CPU: what the program did for a viewer slot since the daemon
/// last reset it (per CPU, so no two CPUs ever write one counter).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ViewerCounts {
    /// Data clones sent to the viewer.
    pub clones: u64,
    /// Full and small ACKs answered with an ACKACK.
    pub acks: u64,
    /// Light ACKs recorded (no ACKACK).
    pub light_acks: u64,
    /// SRT bytes (header + body) of those ACKs.
    pub ack_bytes: u64,
}

const _: () = assert!(core::mem::size_of::<Config>() == 20);
const _: () = assert!(core::mem::size_of::<PublisherEntry>() == 32);
const _: () = assert!(core::mem::size_of::<StreamEntry>() == 16);
const _: () = assert!(core::mem::size_of::<Route>() == 56);
const _: () = assert!(core::mem::size_of::<ViewerEntry>() == 88);
const _: () = assert!(core::mem::size_of::<ViewerConn>() == 32);
const _: () = assert!(core::mem::size_of::<ViewerAcks>() == 40);
const _: () = assert!(core::mem::size_of::<ViewerCounts>() == 32);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: #[repr(C)], only integer fields and byte arrays, no implicit padding (the
    // size assertions above pin the layout), so every bit pattern is a valid value.
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for PublisherEntry {}
    unsafe impl aya::Pod for StreamEntry {}
    unsafe impl aya::Pod for Route {}
    unsafe impl aya::Pod for ViewerEntry {}
    unsafe impl aya::Pod for ViewerConn {}
    unsafe impl aya::Pod for ViewerAcks {}
    unsafe impl aya::Pod for ViewerCounts {}
}
