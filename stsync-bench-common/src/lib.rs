//! The maps of the benchmark's kernel sink, shared by the eBPF program (stsync-bench-ebpf)
//! and the load generator (stsync-loadgen).
//!
//! The sink sits on the interface where the generator's viewers receive the relay's
//! clones. For each SRT data packet addressed to one of those viewers it writes what the
//! generator's receiver needs into that viewer's slot ring (`SINK_SLOTS`) and head
//! (`SINK_HEADS`), then drops the packet. Both maps are `BPF_F_MMAPABLE` arrays: the
//! generator reads them through `mmap`, no syscall per packet. Everything else (control
//! packets, strangers) goes on to the generator's socket.
//!
//! Viewer `i` is the one whose destination address is `viewer_ip_base + i` (IPv4 or IPv6:
//! `i` added to the address's last 32 bits) and whose SRT destination socket ID is
//! `id_base + i`; its slot for sequence number `s` is
//! `SINK_SLOTS[i * ring + (s & ring_mask)]`.
#![no_std]

pub const MAP_CONFIG: &str = "SINK_CONFIG";
pub const MAP_HEADS: &str = "SINK_HEADS";
pub const MAP_SLOTS: &str = "SINK_SLOTS";
pub const MAP_COUNTERS: &str = "SINK_COUNTERS";
/// The same sink as an XDP program and as a TC (tcx ingress) classifier.
pub const PROGRAM_XDP: &str = "stsb_sink_xdp";
pub const PROGRAM_TC: &str = "stsb_sink_tc";

/// `Slot::seq`: the slot holds this sequence number (slots start zeroed = empty); the
/// number itself is below it (`stsync_common::srt::SEQ_MASK`).
pub const SLOT_VALID: u32 = 1 << 31;
/// `Slot::flags`: the packet had the retransmitted flag.
pub const FLAG_REXMIT: u32 = 1 << 31;
/// `Slot::flags`: the payload is shorter than `PAYLOAD_PEEK` (nothing of it recorded).
pub const FLAG_BAD_PAYLOAD: u32 = 1 << 30;
/// `Slot::flags`: `rx_ns` is the skb's receive timestamp in CLOCK_REALTIME (TC hook), not
/// `bpf_ktime_get_ns()`.
pub const FLAG_RX_REALTIME: u32 = 1 << 29;
/// `Slot::flags`: SRT payload length in bytes.
pub const FLAG_LEN_MASK: u32 = 0xFFFF;
/// `Slot::flags`: the data packet's KK bits (which key it is encrypted under: 1 even,
/// 2 odd; 0 clear), shifted down to here.
pub const FLAG_KK_SHIFT: u32 = 16;
pub const FLAG_KK_MASK: u32 = 0b11 << FLAG_KK_SHIFT;

/// The generator's payload (stsync-bench `caller::write_payload`): a TS null-packet header,
/// then the packet index and the CLOCK_MONOTONIC send time, both u64 big-endian. The sink
/// records these first `PAYLOAD_PEEK` bytes as they are (`Slot::head`, `index`,
/// `sent_ns`): an encrypted payload is only bytes to it; the generator decrypts and checks.
pub const PAYLOAD_MAGIC: [u8; 4] = [0x47, 0x1F, 0xFF, 0x10];
pub const PAYLOAD_OFF_INDEX: usize = 4;
pub const PAYLOAD_OFF_SENT: usize = 12;
/// Payload bytes the sink reads.
pub const PAYLOAD_PEEK: usize = 20;

/// `SINK_CONFIG[0]`, written once by the generator before the program is attached.
///
/// Addresses are four network-order words (bytes as on the wire, in native integers), an
/// IPv4 address IPv4-mapped (`::ffff:a.b.c.d`), as `stsync_common::frame::addr` reads a
/// frame's: one configuration for either family, the family being the addresses'.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkConfig {
    /// The relay's address as the viewers see it: clones come from it.
    pub relay_ip: [u32; 4],
    /// Address of viewer 0. Viewer `i`'s has the same first 96 bits, and its last 32 bits
    /// (as a number) are these + `i`.
    pub viewer_ip_base: [u32; 4],
    /// The second relay's address as its viewers see it, for viewers `split..`.
    pub relay_ip_b: [u32; 4],
    /// Number of viewers (entries of `SINK_HEADS`).
    pub viewers: u32,
    /// SRT socket ID of viewer 0.
    pub id_base: u32,
    /// Slots per viewer − 1 (a power of two − 1).
    pub ring_mask: u32,
    /// Viewers from this index on get their clones from `relay_ip_b` instead (a second
    /// relay on the same port: the tree topology's second edge); `viewers` when there is
    /// only one relay.
    pub split: u32,
    /// UDP ports (network order): the relays', the viewers' shared socket's.
    pub relay_port: u16,
    pub viewer_port: u16,
    pub _pad: u32,
}

/// `SINK_HEADS[i]`: viewer `i`'s counters and how far its sequence numbers went.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Head {
    /// One past the highest sequence number recorded (valid once `started` is 1).
    pub next: u32,
    pub started: u32,
    /// Data packets for this viewer, duplicates included.
    pub data: u64,
    /// Data packets whose sequence number was already in its slot.
    pub duplicates: u64,
    /// Data packets older than what their slot holds (more than a ring behind).
    pub stale: u64,
}

/// One received data packet. The sink writes `seq` last, so a reader that sees the
/// sequence number it looks for (with `SLOT_VALID`) sees the other fields of that packet
/// (x86 keeps stores in order; the reader re-checks `seq` afterwards against overwrites).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    pub seq: u32,
    pub flags: u32,
    /// Payload bytes 4..12 (big-endian): the publisher's packet index, if not encrypted.
    pub index: u64,
    /// Payload bytes 12..20 (big-endian): the send time (CLOCK_MONOTONIC ns), if not
    /// encrypted.
    pub sent_ns: u64,
    /// Arrival time (ns): the kernel's receive timestamp of the packet (CLOCK_REALTIME,
    /// taken when it entered the interface's input queue, the one SO_TIMESTAMPNS reports)
    /// when `FLAG_RX_REALTIME` is set, else `bpf_ktime_get_ns()` when the sink saw it
    /// (CLOCK_MONOTONIC).
    pub rx_ns: u64,
    /// Payload bytes 0..4 as they came (the generator's `PAYLOAD_MAGIC` when clear).
    pub head: [u8; 4],
    pub _pad: u32,
}

/// Indices into the per-CPU `SINK_COUNTERS`.
pub mod counter {
    /// Data packets recorded in a slot and dropped.
    pub const RECORDED: u32 = 0;
    /// Duplicates and stale packets dropped.
    pub const DUPLICATES: u32 = 1;
    /// SRT control packets for a viewer, passed to the socket.
    pub const CONTROL: u32 = 2;
    /// UDP to the viewers' port that is not a viewer's data from the relay, passed on.
    pub const UNMATCHED: u32 = 3;
    /// IPv6 packets whose first header after IPv6 is an extension header (hop-by-hop,
    /// routing, fragment, destination options), passed on unread: the relay's clones
    /// carry none, so a datagram behind one is the socket's to judge.
    pub const V6_EXT_HEADERS: u32 = 4;
    pub const COUNT: u32 = 5;
}

/// The syscall counter (a raw tracepoint on `sys_enter`, same object): the process it
/// counts (`SYSCOUNT_TARGET[0]`, a TGID in the initial PID namespace; 0 = none) and its
/// per-CPU counts by syscall number (numbers ≥ `SYSCOUNT_SLOTS` share the last slot).
pub const MAP_SYSCOUNT_TARGET: &str = "SYSCOUNT_TARGET";
pub const MAP_SYSCOUNT: &str = "SYSCOUNT";
pub const PROGRAM_SYSCOUNT: &str = "stsb_sys_enter";
pub const SYSCOUNT_SLOTS: u32 = 512;

const _: () = assert!(core::mem::size_of::<SinkConfig>() == 72);
const _: () = assert!(core::mem::size_of::<Head>() == 32);
const _: () = assert!(core::mem::size_of::<Slot>() == 40);

/// `a` comes before `b` in 31-bit sequence space.
pub fn seq_lt(a: u32, b: u32) -> bool {
    // Shift the 31-bit difference into the top bits so its sign is the comparison.
    ((a.wrapping_sub(b) << 1) as i32) < 0
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: #[repr(C)], integer fields only, no implicit padding (sizes asserted above).
    unsafe impl aya::Pod for SinkConfig {}
    unsafe impl aya::Pod for Head {}
    unsafe impl aya::Pod for Slot {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use stsync_common::srt::SEQ_MASK;

    #[test]
    fn sequence_order_wraps_at_31_bits() {
        assert!(seq_lt(1, 2));
        assert!(!seq_lt(2, 1));
        assert!(!seq_lt(5, 5));
        assert!(seq_lt(SEQ_MASK, 0));
        assert!(seq_lt(SEQ_MASK - 10, 3));
        assert!(!seq_lt(3, SEQ_MASK - 10));
    }
}
