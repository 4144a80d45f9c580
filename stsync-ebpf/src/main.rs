//! The kernel fast path of stsync-proxy: a TC ingress classifier that fans publisher data
//! packets out to viewers.
//!
//! For a UDP datagram (IPv4 or IPv6) to the relay's port whose SRT header says "data" and whose
//! destination socket ID is a known publisher connection (source address checked), the
//! program walks the stream's viewer slots (`bpf_loop`, up to `MAX_VIEWERS`), and for each
//! active viewer whose offsets belong to this publisher's epoch rewrites the packet in place
//! (MACs, IP addresses, UDP ports, SRT destination socket ID, sequence number, timestamp
//! with the stream's delay added;
//! checksums through the kernel's incremental helpers) and sends a copy with
//! `bpf_clone_redirect` out of the interface the viewer's own packets arrive on. Viewers
//! of the other family get the packet converted (`bpf_skb_change_proto`, a new IP header,
//! the UDP checksum moved to the other pseudo header) in a second pass. At the end
//! the original bytes are put back and the packet goes on (`TC_ACT_OK`) to the daemon, which
//! acknowledges the publisher and keeps the retransmission buffer.
//!
//! A viewer's control packets (destination socket ID = the viewer connection's relay socket
//! ID, source = the viewer's address) teach the program the viewer's route. While the viewer
//! is served by the kernel, its ACKs do not reach the daemon either: the program records
//! them in `VIEWER_ACKS` (which the daemon reads on its own schedule), drops light ACKs and
//! turns each full or small ACK into the ACKACK that answers it, sent straight back out of
//! the interface it came in on. Everything else a viewer sends (NAK, keepalive, handshake,
//! SHUTDOWN, anything malformed) goes on to the daemon.
//!
//! Packet bytes are only read and written through helpers (`bpf_skb_load_bytes`,
//! `bpf_skb_store_bytes`): direct packet pointers would be invalid after each clone.
//!
//! IPv4 with options, IPv6 with extension headers and fragments of either go to the daemon
//! untouched (counted by reason when they are for the relay's port).
//!
//! This file is the entry point and the maps; `family` is what differs between IPv4 and
//! IPv6, `fanout` the data path, `route` and `ack` a viewer's control packets, `patch` the
//! packet writes. The frame layout is `stsync_common::frame`, shared with the benchmark's
//! sink.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod ack;
mod family;
mod fanout;
mod header;
mod patch;
mod route;

use aya_ebpf::{
    bindings::{__sk_buff, BPF_F_MMAPABLE, TC_ACT_OK, TC_ACT_SHOT},
    macros::{classifier, map},
    maps::{Array, HashMap, PerCpuArray, Queue},
    programs::TcContext,
};
use family::Family;
use header::Header;
use stsync_common::frame::{
    mapped, raw16, v6, Layout, ETH_P_IP, ETH_TYPE, HDR_LEN, IP, IPPROTO_UDP, IP_DST, IP_FRAG,
    IP_PROTO, UDP_DPORT, V4, V6,
};
use stsync_common::maps::{
    counter, Config, PublisherEntry, Route, StreamEntry, ViewerAcks, ViewerConn, ViewerCounts,
    ViewerEntry, CONFIG_NO_V4, CONFIG_NO_V6, DEFAULT_MAX_STREAMS, LEARNED_QUEUE, MAX_PUBLISHERS,
    MAX_VIEWERS, MAX_VIEWER_CONNS,
};
use stsync_common::srt;

#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
#[map]
static PUBLISHERS: HashMap<u32, PublisherEntry> = HashMap::with_max_entries(MAX_PUBLISHERS, 0);
#[map]
static STREAMS: Array<StreamEntry> = Array::with_max_entries(DEFAULT_MAX_STREAMS, 0);
#[map]
static CROSS_BLOCKED: Array<u32> = Array::with_max_entries(DEFAULT_MAX_STREAMS, 0);
#[map]
static VIEWERS: Array<ViewerEntry> = Array::with_max_entries(DEFAULT_MAX_STREAMS * MAX_VIEWERS, 0);
#[map]
static VIEWER_CONNS: HashMap<u32, ViewerConn> = HashMap::with_max_entries(MAX_VIEWER_CONNS, 0);
#[map]
static ROUTES: HashMap<u32, Route> = HashMap::with_max_entries(MAX_VIEWER_CONNS, 0);
#[map]
static LEARNED: Queue<u32> = Queue::with_max_entries(LEARNED_QUEUE, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);
#[map]
static VIEWER_COUNTS: PerCpuArray<ViewerCounts> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_STREAMS * MAX_VIEWERS, 0);
#[map]
static VIEWER_ACKS: Array<ViewerAcks> =
    Array::with_max_entries(DEFAULT_MAX_STREAMS * MAX_VIEWERS, BPF_F_MMAPABLE);

// The bindings type TC_ACT_* as u32 for bpfel and i32 on the host (where clippy runs).
#[allow(clippy::unnecessary_cast)]
const PASS: i32 = TC_ACT_OK as i32;
#[allow(clippy::unnecessary_cast)]
const DROP: i32 = TC_ACT_SHOT as i32;

/// Adds `n` to this CPU's counter `idx`; returns its new value.
#[inline(always)]
fn count(idx: u32, n: u64) -> Option<u64> {
    let c = COUNTERS.get_ptr_mut(idx)?;
    // SAFETY: a per-CPU slot, written only by this CPU.
    unsafe {
        *c += n;
        Some(*c)
    }
}

/// Whether `n` failures that brought this CPU's count of them to `total` deserve a log
/// line: the first one, then each time the count passes a power of two. A lasting fault
/// (an interface gone, say) then logs a few dozen lines, not one per packet; the counters
/// have the full story.
///
/// Only ever decide this on a `total` read from the map: a branch the verifier can settle
/// from known values marks them precise, and precise per-iteration counts of the fan-out
/// loop would keep its states from ever matching (the program would be too large to
/// verify). For the same reason no `leading_zeros` (LLVM turns it into a table lookup).
#[inline(always)]
fn log_due(total: u64, n: u64) -> bool {
    // The top bit moved up exactly when it is set in `prev ^ total` but not in `prev`.
    let prev = total.wrapping_sub(n);
    prev ^ total > prev
}

#[classifier]
pub fn stsync_tc(ctx: TcContext) -> i32 {
    match try_stsync_tc(&ctx) {
        Ok(action) | Err(action) => action,
    }
}

fn try_stsync_tc(ctx: &TcContext) -> Result<i32, i32> {
    let skb = ctx.skb.skb;
    let mut h = Header::new();
    if load(skb, 0, h.frame_mut(0, HDR_LEN)).is_err() {
        return Ok(PASS); // shorter than any SRT datagram
    }
    let cfg = CONFIG.get(0).ok_or(PASS)?;
    let eth = [h.byte(ETH_TYPE), h.byte(ETH_TYPE + 1)];
    if eth == ETH_P_IP && cfg.flags & CONFIG_NO_V4 == 0 {
        if h.byte(IP_PROTO) != IPPROTO_UDP || !for_relay(cfg, mapped(h.raw32(IP_DST))) {
            return Ok(PASS);
        }
        // IP options move the port; a later fragment has none: the daemon sees them.
        if h.byte(IP) != 0x45 || h.byte(IP_FRAG) & 0x1F != 0 || h.byte(IP_FRAG + 1) != 0 {
            return Ok(PASS);
        }
        if h.raw16(UDP_DPORT) != cfg.relay_port {
            return Ok(PASS);
        }
        if h.byte(IP_FRAG) & IP_MORE_FRAGMENTS != 0 {
            count(counter::FRAGMENTS, 1); // a first fragment
            return Ok(PASS);
        }
        return Ok(srt_packet::<V4>(skb, &h, cfg.flags));
    }
    if eth == v6::ETH_P_IPV6 && cfg.flags & CONFIG_NO_V6 == 0 {
        if !for_relay(cfg, h.addr(V6::IP_DST, 16)) {
            return Ok(PASS);
        }
        if h.byte(v6::IP_NEXT) != IPPROTO_UDP {
            count_v6_ext(skb, h.byte(v6::IP_NEXT), cfg.relay_port);
            return Ok(PASS);
        }
        if load(skb, HDR_LEN, h.frame_mut(HDR_LEN, v6::HDR_LEN)).is_err()
            || h.raw16(V6::UDP_DPORT) != cfg.relay_port
        {
            return Ok(PASS);
        }
        return Ok(srt_packet::<V6>(skb, &h, cfg.flags));
    }
    Ok(PASS)
}

/// Copies `buf.len()` bytes of the packet from `off` into `buf`.
#[inline(always)]
fn load(skb: *mut __sk_buff, off: usize, buf: &mut [u8]) -> Result<(), ()> {
    patch::load_raw(skb, off, buf.as_mut_ptr().cast(), buf.len() as u32)
}

/// The "more fragments" bit of the IPv4 flags byte.
const IP_MORE_FRAGMENTS: u8 = 0x20;

/// Whether a datagram to `dst` is for the relay's socket (its address, or any).
#[inline(always)]
fn for_relay(cfg: &Config, dst: [u32; 4]) -> bool {
    same(&cfg.relay_ip, &[0; 4]) || same(&cfg.relay_ip, &dst)
}

/// `a == b`, word by word (an array comparison would become a `memcmp` loop).
#[inline(always)]
pub(crate) fn same(a: &[u32; 4], b: &[u32; 4]) -> bool {
    (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) == 0
}

/// An SRT datagram to the relay in a frame of family `F`.
#[inline(always)]
fn srt_packet<F: Family>(skb: *mut __sk_buff, h: &Header, cfg_flags: u16) -> i32 {
    let word0 = h.be32(F::SRT_WORD0);
    if word0 & srt::CONTROL_BIT != 0 {
        return viewer_control::<F>(skb, h, word0, cfg_flags);
    }
    match fanout::fan_out::<F>(skb, h, word0, cfg_flags) {
        Ok(action) | Err(action) => action,
    }
}

/// An IPv6 datagram whose next header is not UDP: when extension headers (at most
/// `EXT_WALK` of them) lead to UDP for the relay's port, it is counted by reason. The
/// daemon's socket gets it either way.
#[inline(never)]
fn count_v6_ext(skb: *mut __sk_buff, first: u8, relay_port: u16) {
    const EXT_WALK: usize = 4;
    let (mut next, mut off, mut fragment) = (first, V6::UDP, false);
    for _ in 0..EXT_WALK {
        let mut b = [0u8; 8];
        match next {
            IPPROTO_UDP => {
                if load(skb, off, &mut b[..4]).is_ok() && raw16(&b, 2) == relay_port {
                    let reason = if fragment {
                        counter::FRAGMENTS
                    } else {
                        counter::V6_EXT_HEADERS
                    };
                    count(reason, 1);
                }
                return;
            }
            v6::EXT_HOP_BY_HOP | v6::EXT_ROUTING | v6::EXT_DEST_OPTS => {
                if load(skb, off, &mut b[..2]).is_err() {
                    return;
                }
                next = b[0];
                off += (usize::from(b[1]) + 1) * 8;
            }
            v6::EXT_FRAGMENT => {
                // Later fragments carry no UDP header: only the first one is counted.
                if load(skb, off, &mut b).is_err() || raw16(&b, 2) & u16::from_be(0xFFF8) != 0 {
                    return;
                }
                next = b[0];
                off += 8;
                fragment = true;
            }
            _ => return,
        }
    }
}

/// A control packet: a viewer's teaches the program its route, and its ACK may be
/// answered here. A subprogram (like `fan_out`), so the two paths' stacks do not add up.
#[inline(never)]
fn viewer_control<F: Family>(skb: *mut __sk_buff, h: &Header, word0: u32, cfg_flags: u16) -> i32 {
    let dest = h.be32(F::SRT_DEST);
    let Some(conn) = route::learn_route::<F>(skb, h, dest) else {
        return PASS;
    };
    if (word0 >> 16) & 0x7FFF == u32::from(srt::ctrl::ACK) {
        return ack::answer_ack::<F>(skb, h, dest, &conn, cfg_flags);
    }
    PASS
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
