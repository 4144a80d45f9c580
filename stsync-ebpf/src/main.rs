//! The kernel fast path of stsync-proxy: a TC ingress classifier that fans publisher data
//! packets out to viewers.
//!
//! For an IPv4/UDP datagram to the relay's port whose SRT header says "data" and whose
//! destination socket ID is a known publisher connection (source address checked), the
//! program walks the stream's viewer slots (`bpf_loop`, up to `MAX_VIEWERS`), and for each
//! active viewer whose offsets belong to this publisher's epoch rewrites the packet in place
//! (MACs, IP addresses, UDP ports, SRT destination socket ID, sequence number, timestamp
//! with the stream's delay added;
//! checksums through the kernel's incremental helpers) and sends a copy with
//! `bpf_clone_redirect` out of the interface the viewer's own packets arrive on. At the end
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
//! This file is the entry point and the maps; `fanout` is the data path, `route` and `ack`
//! a viewer's control packets, `patch` the packet writes. The frame layout is
//! `stsync_common::frame`, shared with the benchmark's sink.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod ack;
mod fanout;
mod patch;
mod route;

use aya_ebpf::{
    bindings::{__sk_buff, BPF_F_MMAPABLE, TC_ACT_OK, TC_ACT_SHOT},
    helpers::generated::bpf_skb_load_bytes,
    macros::{classifier, map},
    maps::{Array, HashMap, PerCpuArray, Queue},
    programs::TcContext,
};
use core::ffi::c_void;
use stsync_common::frame::{
    be32, raw16, raw32, Header, ETH_P_IP, ETH_TYPE, HDR_LEN, IP, IPPROTO_UDP, IP_DST, IP_FRAG,
    IP_PROTO, SRT_DEST, SRT_WORD0, UDP_DPORT,
};
use stsync_common::maps::{
    counter, Config, PublisherEntry, Route, StreamEntry, ViewerAcks, ViewerConn, ViewerCounts,
    ViewerEntry, DEFAULT_MAX_STREAMS, LEARNED_QUEUE, MAX_PUBLISHERS, MAX_VIEWERS, MAX_VIEWER_CONNS,
};
use stsync_common::srt;

#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
#[map]
static PUBLISHERS: HashMap<u32, PublisherEntry> = HashMap::with_max_entries(MAX_PUBLISHERS, 0);
#[map]
static STREAMS: Array<StreamEntry> = Array::with_max_entries(DEFAULT_MAX_STREAMS, 0);
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
    let mut h = [0u8; HDR_LEN];
    // SAFETY: `skb` is the program's context; `h` is HDR_LEN bytes of stack.
    if unsafe {
        bpf_skb_load_bytes(
            skb as *const c_void,
            0,
            h.as_mut_ptr().cast(),
            HDR_LEN as u32,
        )
    } != 0
    {
        return Ok(PASS); // shorter than any SRT datagram
    }
    if h[ETH_TYPE..ETH_TYPE + 2] != ETH_P_IP || h[IP_PROTO] != IPPROTO_UDP {
        return Ok(PASS);
    }
    let cfg = CONFIG.get(0).ok_or(PASS)?;
    if raw16(&h, UDP_DPORT) != cfg.relay_port
        || (cfg.relay_ip != 0 && raw32(&h, IP_DST) != cfg.relay_ip)
    {
        return Ok(PASS);
    }
    // IPv4 without options, not a fragment: the offsets above hold.
    if h[IP] != 0x45 || h[IP_FRAG] & 0x3F != 0 || h[IP_FRAG + 1] != 0 {
        return Ok(PASS);
    }
    let word0 = be32(&h, SRT_WORD0);
    if word0 & srt::CONTROL_BIT != 0 {
        return Ok(viewer_control(skb, &h, word0, cfg.flags));
    }
    fanout::fan_out(skb, &h, word0, cfg.flags)
}

/// A control packet: a viewer's teaches the program its route, and its ACK may be
/// answered here. A subprogram (like `fan_out`), so the two paths' stacks do not add up.
#[inline(never)]
fn viewer_control(skb: *mut __sk_buff, h: &Header, word0: u32, cfg_flags: u16) -> i32 {
    let dest = be32(h, SRT_DEST);
    let Some(conn) = route::learn_route(skb, h, dest) else {
        return PASS;
    };
    if (word0 >> 16) & 0x7FFF == u32::from(srt::ctrl::ACK) {
        return ack::answer_ack(skb, h, dest, &conn, cfg_flags);
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
