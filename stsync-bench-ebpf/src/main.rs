//! The benchmark's kernel sink: stands in for the socket receive path of stsync-loadgen's
//! viewers, so that a thousand viewers' worth of clones can be received on a small machine.
//!
//! Attached where the viewers' namespace receives the relay's packets (XDP, or TC ingress:
//! the same logic under both hooks), it recognises an SRT data packet for viewer `i`
//! (IPv4 without options or IPv6 without extension headers, UDP from the relay's address
//! and port to the viewers' port, destination address `viewer_ip_base + i`, SRT
//! destination socket ID `id_base + i`; the configuration's addresses say the family;
//! viewers from `split` on
//! get theirs from a second relay's address, the tree topology's second edge), records its sequence
//! number, retransmission flag, key bits (KK), payload length, the payload's first 20 bytes
//! as they came (clear: its packet index and send time; encrypted: the generator decrypts
//! them) and its arrival time (at TC the skb's receive timestamp, else `bpf_ktime_get_ns`) in the
//! viewer's slot ring, and drops it. The generator reads
//! the rings through `mmap` and drives its libsrt-like receivers from them (ACK, NAK...).
//! Everything else passes untouched to the generator's socket: control packets (ACKACK,
//! keepalive, handshake, DROPREQ, SHUTDOWN) and anything it does not recognise.
//!
//! The same object holds the benchmark's syscall counter for the relay (`stsb_sys_enter`).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{
    bindings::{xdp_action, BPF_F_MMAPABLE, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_skb_load_bytes},
    macros::{classifier, map, raw_tracepoint, xdp},
    maps::{Array, PerCpuArray},
    programs::{RawTracePointContext, TcContext, XdpContext},
};
use core::{ffi::c_void, mem::MaybeUninit};
use stsync_bench_common::{
    counter, seq_lt, Head, SinkConfig, Slot, FLAG_BAD_PAYLOAD, FLAG_KK_SHIFT, FLAG_LEN_MASK,
    FLAG_REXMIT, FLAG_RX_REALTIME, PAYLOAD_OFF_INDEX, PAYLOAD_OFF_SENT, PAYLOAD_PEEK, SLOT_VALID,
    SYSCOUNT_SLOTS,
};
use stsync_common::frame::{
    self, addr, be16, be32, raw16, v6, Layout, ETH_P_IP, ETH_TYPE, HDR_LEN, IP, IPPROTO_UDP,
    IP_FRAG, IP_PROTO, V4, V6,
};
use stsync_common::srt::{CONTROL_BIT, MSG_KK_MASK, MSG_REXMIT_FLAG, SEQ_MASK};

#[map(name = "SINK_CONFIG")]
static CONFIG: Array<SinkConfig> = Array::with_max_entries(1, 0);
// Sized by the generator at load time (viewers; viewers × ring).
#[map(name = "SINK_HEADS")]
static HEADS: Array<Head> = Array::with_max_entries(1, BPF_F_MMAPABLE);
#[map(name = "SINK_SLOTS")]
static SLOTS: Array<Slot> = Array::with_max_entries(1, BPF_F_MMAPABLE);
#[map(name = "SINK_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// UDP + SRT header bytes: an SRT payload's length is the UDP length less these (the same
/// in both families).
const UDP_SRT_LEN: u32 = (HDR_LEN - frame::UDP) as u32;
const _: () = assert!(V6::HDR_LEN - V6::UDP == HDR_LEN - frame::UDP);
/// `__sk_buff::tstamp_type` of a receive timestamp (BPF_SKB_CLOCK_REALTIME, formerly
/// BPF_SKB_TSTAMP_UNSPEC).
const TSTAMP_REALTIME: u8 = 0;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    Drop,
}

/// Bounds-checked reads of the packet under either hook.
trait Packet {
    /// The EtherType (host order), read without copying the header where the hook knows
    /// it.
    fn ethertype(&self) -> Option<u16>;
    fn read<const N: usize>(&self, off: usize) -> Option<[u8; N]>;
    /// The kernel's receive timestamp (CLOCK_REALTIME ns), if the hook has one.
    fn rx_realtime(&self) -> Option<u64>;
}

struct Xdp<'a>(&'a XdpContext);

impl Packet for Xdp<'_> {
    #[inline(always)]
    fn ethertype(&self) -> Option<u16> {
        self.read::<2>(ETH_TYPE).map(u16::from_be_bytes)
    }

    #[inline(always)]
    fn read<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        let start = self.0.data() + off;
        if start + N > self.0.data_end() {
            return None;
        }
        // SAFETY: start..start + N lies inside the packet (checked against data_end).
        Some(unsafe { core::ptr::read_unaligned(start as *const [u8; N]) })
    }

    fn rx_realtime(&self) -> Option<u64> {
        None
    }
}

struct Tc<'a>(&'a TcContext);

impl Packet for Tc<'_> {
    #[inline(always)]
    fn ethertype(&self) -> Option<u16> {
        // __sk_buff::protocol: the EtherType as on the wire, in the low 16 bits.
        // SAFETY: reading a context field the verifier allows at TC.
        Some(u16::from_be(unsafe { (*self.0.skb.skb).protocol } as u16))
    }

    #[inline(always)]
    fn read<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        // bpf_skb_load_bytes also reaches non-linear data. It fills the buffer or fails,
        // so the buffer need not be zeroed first (that would be a memset call).
        let mut buf = MaybeUninit::<[u8; N]>::uninit();
        // SAFETY: the context's skb; `buf` is N bytes of stack.
        let r = unsafe {
            bpf_skb_load_bytes(
                self.0.skb.skb as *const c_void,
                off as u32,
                buf.as_mut_ptr().cast(),
                N as u32,
            )
        };
        // SAFETY: the helper wrote all N bytes when it returned 0.
        (r == 0).then(|| unsafe { buf.assume_init() })
    }

    #[inline(always)]
    fn rx_realtime(&self) -> Option<u64> {
        // Stamped when the clone entered this interface's input queue (netif_rx), before
        // it waited in the backlog: the instant the relay sent it, as a socket would see it.
        // SAFETY: reading context fields the verifier allows at TC.
        let (ts, kind) = unsafe { ((*self.0.skb.skb).tstamp, (*self.0.skb.skb).tstamp_type) };
        (ts != 0 && kind == TSTAMP_REALTIME).then_some(ts)
    }
}

#[xdp]
pub fn stsb_sink_xdp(ctx: XdpContext) -> u32 {
    match sink(&Xdp(&ctx)) {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
    }
}

#[classifier]
pub fn stsb_sink_tc(ctx: TcContext) -> i32 {
    // The bindings type TC_ACT_* as u32 for bpfel and i32 on the host (where clippy runs).
    #[allow(clippy::unnecessary_cast)]
    match sink(&Tc(&ctx)) {
        Verdict::Pass => TC_ACT_OK as i32,
        Verdict::Drop => TC_ACT_SHOT as i32,
    }
}

fn be64(h: &[u8], off: usize) -> u64 {
    u64::from_be_bytes([
        h[off],
        h[off + 1],
        h[off + 2],
        h[off + 3],
        h[off + 4],
        h[off + 5],
        h[off + 6],
        h[off + 7],
    ])
}

#[inline(always)]
fn count(idx: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: a per-CPU slot, written only by this CPU.
        unsafe { *c += 1 };
    }
}

const ETHERTYPE_IP: u16 = u16::from_be_bytes(ETH_P_IP);
const ETHERTYPE_IPV6: u16 = u16::from_be_bytes(v6::ETH_P_IPV6);

#[inline(always)]
fn sink<P: Packet>(p: &P) -> Verdict {
    // One copy of the header, of the family's length: an IPv4 frame costs what it did
    // before IPv6 was read at all.
    match p.ethertype() {
        Some(ETHERTYPE_IP) => sink_v4(p),
        Some(ETHERTYPE_IPV6) => sink_v6(p),
        _ => Verdict::Pass,
    }
}

#[inline(always)]
fn sink_v4<P: Packet>(p: &P) -> Verdict {
    let Some(h) = p.read::<HDR_LEN>(0) else {
        return Verdict::Pass; // shorter than any SRT datagram
    };
    if h[ETH_TYPE..ETH_TYPE + 2] != ETH_P_IP || h[IP_PROTO] != IPPROTO_UDP {
        return Verdict::Pass;
    }
    let Some(cfg) = CONFIG.get(0) else {
        return Verdict::Pass;
    };
    if raw16(&h, V4::UDP_DPORT) != cfg.viewer_port {
        return Verdict::Pass;
    }
    // IPv4 without options, not a fragment: else the socket judges it.
    if h[IP] != 0x45 || h[IP_FRAG] & 0x3F != 0 || h[IP_FRAG + 1] != 0 {
        count(counter::UNMATCHED);
        return Verdict::Pass;
    }
    data::<V4, P, HDR_LEN>(p, &h, cfg)
}

#[inline(always)]
fn sink_v6<P: Packet>(p: &P) -> Verdict {
    let Some(h) = p.read::<{ v6::HDR_LEN }>(0) else {
        return Verdict::Pass; // shorter than any SRT datagram
    };
    if h[ETH_TYPE..ETH_TYPE + 2] != v6::ETH_P_IPV6 || h[v6::IP] >> 4 != 6 {
        return Verdict::Pass;
    }
    match h[v6::IP_NEXT] {
        IPPROTO_UDP => {}
        v6::EXT_HOP_BY_HOP | v6::EXT_ROUTING | v6::EXT_FRAGMENT | v6::EXT_DEST_OPTS => {
            // Where UDP starts is not ours to find: the socket judges it.
            count(counter::V6_EXT_HEADERS);
            return Verdict::Pass;
        }
        _ => return Verdict::Pass,
    }
    let Some(cfg) = CONFIG.get(0) else {
        return Verdict::Pass;
    };
    if raw16(&h, V6::UDP_DPORT) != cfg.viewer_port {
        return Verdict::Pass;
    }
    data::<V6, P, { v6::HDR_LEN }>(p, &h, cfg)
}

/// Both words lists equal (not `==` on arrays: that may become a `bcmp` call, which a
/// BPF program cannot make).
#[inline(always)]
fn same(a: &[u32; 4], b: &[u32; 4]) -> bool {
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3]
}

/// A UDP datagram to the viewers' port in a frame of layout `L` (whose first `N` bytes
/// are `h`): recorded and dropped if it is a viewer's data from its relay.
#[inline(always)]
fn data<L: Layout, P: Packet, const N: usize>(p: &P, h: &[u8; N], cfg: &SinkConfig) -> Verdict {
    if raw16(h, L::UDP_SPORT) != cfg.relay_port {
        count(counter::UNMATCHED);
        return Verdict::Pass;
    }
    // Viewer i's address: the base's first 96 bits, its last 32 + i (IPv4: mapped, so
    // the first 96 bits are ::ffff's in both).
    let dst = addr(h, L::IP_DST, L::ADDR_LEN);
    let base = &cfg.viewer_ip_base;
    let viewer = u32::from_be(dst[3]).wrapping_sub(u32::from_be(base[3]));
    if dst[0] != base[0]
        || dst[1] != base[1]
        || dst[2] != base[2]
        || viewer >= cfg.viewers
        || be32(h, L::SRT_DEST) != cfg.id_base.wrapping_add(viewer)
    {
        count(counter::UNMATCHED);
        return Verdict::Pass;
    }
    // From the viewer's relay (the second one's from `split` on).
    let relay_ip = if viewer < cfg.split {
        &cfg.relay_ip
    } else {
        &cfg.relay_ip_b
    };
    if !same(&addr(h, L::IP_SRC, L::ADDR_LEN), relay_ip) {
        count(counter::UNMATCHED);
        return Verdict::Pass;
    }
    let word0 = be32(h, L::SRT_WORD0);
    if word0 & CONTROL_BIT != 0 {
        count(counter::CONTROL);
        return Verdict::Pass;
    }
    let seq = word0 & SEQ_MASK;
    let Some(head) = HEADS.get_ptr_mut(viewer) else {
        count(counter::UNMATCHED);
        return Verdict::Pass;
    };
    let ring = cfg.ring_mask.wrapping_add(1);
    let Some(slot) = SLOTS.get_ptr_mut(viewer.wrapping_mul(ring).wrapping_add(seq & cfg.ring_mask))
    else {
        count(counter::UNMATCHED);
        return Verdict::Pass;
    };
    let (now, realtime) = match p.rx_realtime() {
        Some(t) => (t, FLAG_RX_REALTIME),
        // SAFETY: a helper without arguments.
        None => (unsafe { bpf_ktime_get_ns() }, 0),
    };
    // SAFETY: `head` and `slot` point into array map values (never freed while the
    // program runs); the generator only reads them.
    unsafe {
        (*head).data += 1;
        let cur = core::ptr::read_volatile(&(*slot).seq);
        if cur == seq | SLOT_VALID {
            (*head).duplicates += 1;
            count(counter::DUPLICATES);
            return Verdict::Drop;
        }
        if cur & SLOT_VALID != 0 && seq_lt(seq, cur & SEQ_MASK) {
            (*head).stale += 1;
            count(counter::DUPLICATES);
            return Verdict::Drop;
        }
        let len = (be16(h, L::UDP_LEN) as u32).saturating_sub(UDP_SRT_LEN);
        let mut flags = (len & FLAG_LEN_MASK) | realtime;
        if be32(h, L::SRT_WORD1) & MSG_REXMIT_FLAG != 0 {
            flags |= FLAG_REXMIT;
        }
        flags |= ((be32(h, L::SRT_WORD1) & MSG_KK_MASK) >> 27) << FLAG_KK_SHIFT;
        // The payload's first bytes as they are: clear, the magic, index and time; an
        // encrypted payload's are decrypted by the generator.
        let (mut first, mut index, mut sent) = ([0; 4], 0, 0);
        match p.read::<PAYLOAD_PEEK>(L::HDR_LEN) {
            Some(b) if len as usize >= PAYLOAD_PEEK => {
                first = [b[0], b[1], b[2], b[3]];
                index = be64(&b, PAYLOAD_OFF_INDEX);
                sent = be64(&b, PAYLOAD_OFF_SENT);
            }
            _ => flags |= FLAG_BAD_PAYLOAD,
        }
        core::ptr::write_volatile(&mut (*slot).flags, flags);
        core::ptr::write_volatile(&mut (*slot).head, first);
        core::ptr::write_volatile(&mut (*slot).index, index);
        core::ptr::write_volatile(&mut (*slot).sent_ns, sent);
        core::ptr::write_volatile(&mut (*slot).rx_ns, now);
        // Last: publishes the slot (see `Slot`).
        core::ptr::write_volatile(&mut (*slot).seq, seq | SLOT_VALID);
        if (*head).started == 0 || !seq_lt(seq, (*head).next) {
            core::ptr::write_volatile(&mut (*head).next, seq.wrapping_add(1) & SEQ_MASK);
            core::ptr::write_volatile(&mut (*head).started, 1);
        }
    }
    count(counter::RECORDED);
    Verdict::Drop
}

#[map(name = "SYSCOUNT_TARGET")]
static SYSCOUNT_TARGET: Array<u32> = Array::with_max_entries(1, 0);
#[map(name = "SYSCOUNT")]
static SYSCOUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(SYSCOUNT_SLOTS, 0);

/// Counts the system calls of one process (the relay under test) by number. A raw
/// tracepoint costs every syscall on the machine far less than perf's tracepoint events.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn stsb_sys_enter(ctx: RawTracePointContext) -> i32 {
    let Some(&target) = SYSCOUNT_TARGET.get(0) else {
        return 0;
    };
    if target == 0 || (bpf_get_current_pid_tgid() >> 32) as u32 != target {
        return 0;
    }
    // sys_enter(struct pt_regs *regs, long id)
    let nr: u64 = ctx.arg(1);
    let slot = (nr as u32).min(SYSCOUNT_SLOTS - 1);
    if let Some(c) = SYSCOUNT.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot, written only by this CPU.
        unsafe { *c += 1 };
    }
    0
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // A reachable panic is an unbounded loop: the verifier refuses the program.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
