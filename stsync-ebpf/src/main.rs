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
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{
    bindings::{
        __sk_buff, BPF_F_MARK_MANGLED_0, BPF_F_MMAPABLE, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT,
    },
    helpers::generated::{
        bpf_clone_redirect, bpf_csum_diff, bpf_ktime_get_ns, bpf_l3_csum_replace,
        bpf_l4_csum_replace, bpf_loop, bpf_redirect, bpf_skb_change_tail, bpf_skb_load_bytes,
        bpf_skb_store_bytes,
    },
    macros::{classifier, map},
    maps::{Array, HashMap, PerCpuArray, Queue},
    programs::TcContext,
};
use core::ffi::c_void;
use stsync_common::maps::{
    counter, Config, PublisherEntry, Route, StreamEntry, ViewerAcks, ViewerConn, ViewerCounts,
    ViewerEntry, CONFIG_LO_ACCEPT_LOCAL, DEFAULT_MAX_STREAMS, LEARNED_QUEUE, LOOPBACK_IFINDEX,
    MAX_PUBLISHERS, MAX_VIEWERS, MAX_VIEWER_CONNS,
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

// Byte offsets in an Ethernet + IPv4 (no options) + UDP + SRT frame.
const ETH_TYPE: usize = 12;
const IP: usize = 14;
const IP_LEN: usize = IP + 2;
const IP_FRAG: usize = IP + 6;
const IP_PROTO: usize = IP + 9;
const IP_CSUM: usize = IP + 10;
const IP_SRC: usize = IP + 12;
const IP_DST: usize = IP + 16;
const UDP: usize = IP + 20;
const UDP_SPORT: usize = UDP;
const UDP_DPORT: usize = UDP + 2;
const UDP_LEN: usize = UDP + 4;
const UDP_CSUM: usize = UDP + 6;
const SRT: usize = UDP + 8;
const SRT_WORD0: usize = SRT + srt::OFF_SEQ_OR_TYPE;
const SRT_WORD1: usize = SRT + srt::OFF_MSG_OR_INFO;
const SRT_TS: usize = SRT + srt::OFF_TIMESTAMP;
const SRT_DEST: usize = SRT + srt::OFF_DEST_SOCKET;
/// Everything the program reads or rewrites lies in the first `HDR_LEN` bytes.
const HDR_LEN: usize = SRT + srt::HEADER_LEN;
const _: () = assert!(SRT_DEST + 4 == HDR_LEN && SRT_TS + 4 == SRT_DEST);

// The bindings type TC_ACT_* as u32 for bpfel and i32 on the host (where clippy runs).
#[allow(clippy::unnecessary_cast)]
const PASS: i32 = TC_ACT_OK as i32;
#[allow(clippy::unnecessary_cast)]
const DROP: i32 = TC_ACT_SHOT as i32;

/// The ACKACK the program sends: 16-byte SRT header + one 32-bit word (libsrt's size).
const ACKACK_SRT_LEN: u16 = srt::HEADER_LEN as u16 + 4;
const ACKACK_UDP_LEN: u16 = 8 + ACKACK_SRT_LEN;
const ACKACK_IP_LEN: u16 = 20 + ACKACK_UDP_LEN;
const ACKACK_FRAME_LEN: u32 = IP as u32 + ACKACK_IP_LEN as u32;
/// Largest ACK body libsrt sends (7 words); its other sizes are 1, 4 and 6 words.
const ACK_MAX_WORDS: usize = 7;

const ETH_P_IP: [u8; 2] = [0x08, 0x00];
const IPPROTO_UDP: u8 = 17;

/// The header bytes that differ between clones, as they sit on the wire (native integers
/// holding network-order bytes). `l4` is the UDP ports word and the SRT sequence,
/// timestamp and destination words: everything the UDP checksum covers that changes.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
struct Fields {
    /// Destination MAC, source MAC (bytes 0..12).
    macs: [u8; 12],
    /// Source, destination IPv4 address.
    ips: [u32; 2],
    /// UDP ports, SRT sequence, SRT timestamp, SRT destination socket ID.
    l4: [u32; 4],
}

impl Fields {
    fn read(h: &[u8; HDR_LEN]) -> Fields {
        let mut macs = [0u8; 12];
        macs.copy_from_slice(&h[..12]);
        Fields {
            macs,
            ips: [raw32(h, IP_SRC), raw32(h, IP_DST)],
            l4: [
                raw32(h, UDP_SPORT),
                raw32(h, SRT_WORD0),
                raw32(h, SRT_TS),
                raw32(h, SRT_DEST),
            ],
        }
    }
}

/// State shared with the per-viewer `bpf_loop` callback (it lives on the program's stack).
#[repr(C)]
struct FanOut {
    skb: *mut __sk_buff,
    epoch: u64,
    /// First slot of the stream's row in `VIEWERS`.
    base: u32,
    pub_seq: u32,
    pub_ts: u32,
    clones: u32,
    failures: u32,
    /// Clones left out for viewers on `lo` (see CONFIG_LO_ACCEPT_LOCAL).
    lo_skipped: u32,
    /// Non-zero: clones to `lo` are delivered (the packet came in on `lo`, or `lo`
    /// accepts local sources).
    lo_ok: u32,
    /// A rewrite failed: the packet is in an unknown state, stop cloning.
    broken: u32,
    /// What the packet holds now.
    cur: Fields,
}

fn raw32(h: &[u8; HDR_LEN], off: usize) -> u32 {
    u32::from_ne_bytes([h[off], h[off + 1], h[off + 2], h[off + 3]])
}

fn raw16(h: &[u8; HDR_LEN], off: usize) -> u16 {
    u16::from_ne_bytes([h[off], h[off + 1]])
}

fn be32(h: &[u8; HDR_LEN], off: usize) -> u32 {
    u32::from_be_bytes([h[off], h[off + 1], h[off + 2], h[off + 3]])
}

fn be16(h: &[u8; HDR_LEN], off: usize) -> u16 {
    u16::from_be_bytes([h[off], h[off + 1]])
}

#[inline(always)]
fn count(idx: u32, n: u64) {
    if let Some(c) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: a per-CPU slot, written only by this CPU.
        unsafe { *c += n };
    }
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
        return Ok(viewer_control(skb, &h, word0));
    }
    fan_out(skb, &h, word0, cfg.flags)
}

/// A control packet: a viewer's teaches the program its route, and its ACK may be
/// answered here. A subprogram (like `fan_out`), so the two paths' stacks do not add up.
#[inline(never)]
fn viewer_control(skb: *mut __sk_buff, h: &[u8; HDR_LEN], word0: u32) -> i32 {
    let dest = be32(h, SRT_DEST);
    let Some(conn) = learn_route(skb, h, dest) else {
        return PASS;
    };
    if (word0 >> 16) & 0x7FFF == u32::from(srt::ctrl::ACK) {
        return answer_ack(skb, h, dest, &conn);
    }
    PASS
}

/// A data packet: from a known publisher, cloned to each of the stream's active viewers.
#[inline(never)]
fn fan_out(skb: *mut __sk_buff, h: &[u8; HDR_LEN], word0: u32, cfg_flags: u16) -> Result<i32, i32> {
    let dest = be32(h, SRT_DEST);
    // SAFETY: the map holds plain values the daemon replaces whole.
    let p: PublisherEntry = *unsafe { PUBLISHERS.get(dest) }.ok_or(PASS)?;
    if p.src_ip != raw32(h, IP_SRC) || p.src_port != raw16(h, UDP_SPORT) {
        return Ok(PASS);
    }
    count(counter::PACKETS_SEEN, 1);
    // SAFETY: reading a field of the program's context.
    if unsafe { (*skb).gso_segs } > 1 {
        count(counter::SKIPPED, 1);
        return Ok(PASS);
    }
    let (slots, delay) = STREAMS
        .get(p.stream)
        .map_or((0, 0), |s| (s.slots.min(MAX_VIEWERS), s.delay_us));
    if slots == 0 {
        return Ok(PASS);
    }

    // A publisher's retransmission goes to viewers as a first transmission (the daemon
    // does the same): clear the R flag for the clones, restore it below.
    let word1 = raw32(h, SRT_WORD1);
    let rexmit = u32::from_be(word1) & srt::MSG_REXMIT_FLAG != 0;
    let clean1 = (u32::from_be(word1) & !srt::MSG_REXMIT_FLAG).to_be();
    if rexmit && replace_word(skb, SRT_WORD1, word1, clean1).is_err() {
        count(counter::SKIPPED, 1);
        return Ok(PASS);
    }

    let orig = Fields::read(h);
    let mut f = FanOut {
        skb,
        epoch: p.epoch,
        base: p.stream.wrapping_mul(MAX_VIEWERS),
        pub_seq: word0 & srt::SEQ_MASK,
        // The stream's delay moves every viewer's play-out later by as much.
        pub_ts: be32(h, SRT_TS).wrapping_add(delay),
        clones: 0,
        failures: 0,
        lo_skipped: 0,
        // SAFETY: reading a field of the program's context.
        lo_ok: u32::from(
            unsafe { (*skb).ifindex } == LOOPBACK_IFINDEX
                || cfg_flags & CONFIG_LO_ACCEPT_LOCAL != 0,
        ),
        broken: 0,
        cur: orig,
    };
    // SAFETY: the callback only touches `f` through the pointer given here.
    unsafe {
        bpf_loop(
            slots,
            fan_out_one as *mut c_void,
            (&mut f as *mut FanOut).cast(),
            0,
        )
    };
    count(counter::CLONES, f.clones.into());
    count(counter::CLONE_FAILURES, f.failures.into());
    count(counter::LOOPBACK_SKIPPED, f.lo_skipped.into());

    let mut restored = rewrite(skb, &mut f.cur, &orig).is_ok();
    if rexmit {
        restored &= replace_word(skb, SRT_WORD1, clean1, word1).is_ok();
    }
    if !restored {
        // The daemon must not see a viewer's packet as the publisher's: drop it, the
        // publisher retransmits it on the daemon's NAK.
        count(counter::RESTORE_FAILURES, 1);
        return Err(DROP);
    }
    Ok(PASS)
}

/// One viewer slot: rewrite for that viewer and clone. Returns 0 to go on, 1 to stop.
#[inline(never)]
extern "C" fn fan_out_one(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `FanOut` on the program's stack (see bpf_loop above).
    let f = unsafe { &mut *ctx.cast::<FanOut>() };
    let slot = f.base.wrapping_add(i as u32);
    let Some(v) = VIEWERS.get(slot) else {
        return 0;
    };
    if v.active == 0 || v.epoch != f.epoch {
        return 0;
    }
    let r = &v.route;
    if r.ifindex == LOOPBACK_IFINDEX && f.lo_ok == 0 {
        f.lo_skipped += 1;
        return 0;
    }
    let (rp, vp) = (r.relay_port.to_ne_bytes(), r.viewer_port.to_ne_bytes());
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&r.viewer_mac);
    macs[6..].copy_from_slice(&r.relay_mac);
    let want = Fields {
        macs,
        ips: [r.relay_ip, r.viewer_ip],
        l4: [
            u32::from_ne_bytes([rp[0], rp[1], vp[0], vp[1]]),
            (f.pub_seq.wrapping_add(v.seq_off) & srt::SEQ_MASK).to_be(),
            f.pub_ts.wrapping_add(v.ts_off).to_be(),
            v.peer_id.to_be(),
        ],
    };
    let ifindex = r.ifindex;
    if rewrite(f.skb, &mut f.cur, &want).is_err() {
        f.failures += 1;
        f.broken = 1;
        return 1;
    }
    // SAFETY: `f.skb` is the program's context.
    if unsafe { bpf_clone_redirect(f.skb, ifindex, 0) } == 0 {
        f.clones += 1;
        if let Some(c) = VIEWER_COUNTS.get_ptr_mut(slot) {
            // SAFETY: a per-CPU slot, written only by this CPU.
            unsafe { (*c).clones += 1 };
        }
    } else {
        f.failures += 1;
    }
    0
}

/// Brings the packet from `cur` to `want`, keeping the IPv4 and UDP checksums right.
#[inline(always)]
fn rewrite(skb: *mut __sk_buff, cur: &mut Fields, want: &Fields) -> Result<(), ()> {
    if cur.macs != want.macs {
        store(skb, 0, want.macs.as_ptr().cast(), 12)?;
        cur.macs = want.macs;
    }
    if cur.ips != want.ips {
        let mut from = cur.ips;
        let mut to = want.ips;
        let diff = csum_diff(from.as_mut_ptr(), to.as_mut_ptr(), 8)?;
        store(skb, IP_SRC, to.as_ptr().cast(), 8)?;
        // SAFETY: `skb` is the program's context; offsets lie inside the checked header.
        let ok = unsafe {
            bpf_l3_csum_replace(skb, IP_CSUM as u32, 0, diff, 0) == 0
                && bpf_l4_csum_replace(
                    skb,
                    UDP_CSUM as u32,
                    0,
                    diff,
                    (BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0) as u64,
                ) == 0
        };
        if !ok {
            return Err(());
        }
        cur.ips = want.ips;
    }
    if cur.l4 != want.l4 {
        let mut from = cur.l4;
        let mut to = want.l4;
        let diff = csum_diff(from.as_mut_ptr(), to.as_mut_ptr(), 16)?;
        // Viewers on one host share addresses and often ports: write what differs.
        if from[0] != to[0] {
            store(skb, UDP_SPORT, to.as_ptr().cast(), 4)?;
        }
        if from[1] != to[1] {
            store(skb, SRT_WORD0, to[1..].as_ptr().cast(), 4)?;
        }
        if from[2] != to[2] || from[3] != to[3] {
            store(skb, SRT_TS, to[2..].as_ptr().cast(), 8)?;
        }
        // SAFETY: as above.
        if unsafe {
            bpf_l4_csum_replace(skb, UDP_CSUM as u32, 0, diff, BPF_F_MARK_MANGLED_0 as u64)
        } != 0
        {
            return Err(());
        }
        cur.l4 = want.l4;
    }
    Ok(())
}

/// Replaces one 32-bit word covered by the UDP checksum.
fn replace_word(skb: *mut __sk_buff, off: usize, from: u32, to: u32) -> Result<(), ()> {
    store(skb, off, (&to as *const u32).cast(), 4)?;
    // SAFETY: `skb` is the program's context.
    let r = unsafe {
        bpf_l4_csum_replace(
            skb,
            UDP_CSUM as u32,
            from.into(),
            to.into(),
            4 | BPF_F_MARK_MANGLED_0 as u64,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(())
    }
}

#[inline(always)]
fn store(skb: *mut __sk_buff, off: usize, from: *const c_void, len: u32) -> Result<(), ()> {
    // SAFETY: `skb` is the program's context, `from` points to `len` bytes of stack.
    // No BPF_F_RECOMPUTE_CSUM: the checksum helpers keep skb->csum in step.
    if unsafe { bpf_skb_store_bytes(skb, off as u32, from, len, 0) } == 0 {
        Ok(())
    } else {
        Err(())
    }
}

#[inline(always)]
fn csum_diff(from: *mut u32, to: *mut u32, len: u32) -> Result<u64, ()> {
    csum_diff_sized(from, len, to, len)
}

/// The checksum difference between `from_len` bytes at `from` and `to_len` bytes at `to`.
#[inline(always)]
fn csum_diff_sized(from: *mut u32, from_len: u32, to: *mut u32, to_len: u32) -> Result<u64, ()> {
    // SAFETY: both point to that many bytes of stack.
    let d = unsafe { bpf_csum_diff(from, from_len, to, to_len, 0) };
    if d < 0 {
        Err(())
    } else {
        Ok(d as u64)
    }
}

/// Remembers how to reach a viewer: the interface its packet came in on, its MAC and
/// address, and the relay's as it addressed them. Returns the viewer connection when the
/// packet is from that viewer.
fn learn_route(skb: *mut __sk_buff, h: &[u8; HDR_LEN], dest: u32) -> Option<ViewerConn> {
    // SAFETY: plain value, replaced whole by the daemon.
    let c: ViewerConn = *unsafe { VIEWER_CONNS.get(dest) }?;
    if c.peer_ip != raw32(h, IP_SRC) || c.peer_port != raw16(h, UDP_SPORT) {
        return None;
    }
    let mut route = Route {
        // SAFETY: reading a field of the program's context.
        ifindex: unsafe { (*skb).ifindex },
        relay_ip: raw32(h, IP_DST),
        viewer_ip: raw32(h, IP_SRC),
        relay_port: raw16(h, UDP_DPORT),
        viewer_port: raw16(h, UDP_SPORT),
        relay_mac: [0; 6],
        viewer_mac: [0; 6],
        _pad: [0; 4],
    };
    route.relay_mac.copy_from_slice(&h[..6]);
    route.viewer_mac.copy_from_slice(&h[6..12]);
    // SAFETY: as above; only this program writes ROUTES values.
    if unsafe { ROUTES.get(dest) } != Some(&route) && ROUTES.insert(dest, route, 0).is_ok() {
        count(counter::ROUTES_LEARNED, 1);
        // Tell the daemon (a full queue only delays it to its periodic scan).
        let _ = LEARNED.push(dest, 0);
    }
    Some(c)
}

/// An ACK from viewer connection `dest` (source already checked against `c`). For a viewer
/// the kernel serves, records it in `VIEWER_ACKS`, then drops a light ACK and answers a
/// full or small one by turning the packet into its ACKACK (returns `TC_ACT_REDIRECT`). Anything
/// else, including an ACK of a size libsrt does not send, goes on to the daemon.
#[inline(always)]
fn answer_ack(skb: *mut __sk_buff, h: &[u8; HDR_LEN], dest: u32, c: &ViewerConn) -> i32 {
    let Some(v) = VIEWERS.get(c.slot) else {
        return PASS;
    };
    if v.active == 0 || v.conn != dest {
        return PASS;
    }
    let peer_id = v.peer_id;
    let (ip_len, udp_len) = (be16(h, IP_LEN), be16(h, UDP_LEN));
    // SAFETY: reading a field of the program's context.
    let skb_len = unsafe { (*skb).len };
    if u32::from(ip_len) + IP as u32 > skb_len || udp_len.checked_add(20) != Some(ip_len) {
        return PASS;
    }
    let words: usize = match udp_len.wrapping_sub(8 + srt::HEADER_LEN as u16) {
        4 => 1,
        16 => 4,
        24 => 6,
        28 => 7,
        _ => return PASS,
    };
    let mut body = [0u32; ACK_MAX_WORDS];
    // SAFETY: `body` has room for ACK_MAX_WORDS words; `words` is at most that.
    if unsafe {
        bpf_skb_load_bytes(
            skb as *const c_void,
            HDR_LEN as u32,
            body.as_mut_ptr().cast(),
            (words * 4) as u32,
        )
    } != 0
    {
        return PASS;
    }
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(a) = VIEWER_ACKS.get_ptr_mut(c.slot) {
        // SAFETY: the entry lives as long as the map; the daemon reads it as a snapshot.
        unsafe {
            (*a).last_ns = now;
            (*a).ack_seq = u32::from_be(body[0]) & srt::SEQ_MASK;
            if words > 1 {
                (*a).ack_no = be32(h, SRT_WORD1);
                (*a).rtt_us = u32::from_be(body[1]);
                (*a).rtt_var_us = u32::from_be(body[2]);
                (*a).avail_buf = u32::from_be(body[3]);
            }
            if words >= 6 {
                (*a).recv_rate_pps = u32::from_be(body[4]);
                (*a).link_cap_pps = u32::from_be(body[5]);
            }
            if words == 7 {
                (*a).recv_rate_bps = u32::from_be(body[6]);
            }
        }
    }
    let counts = VIEWER_COUNTS.get_ptr_mut(c.slot);
    if let Some(n) = counts {
        // SAFETY: a per-CPU slot, written only by this CPU.
        unsafe { (*n).ack_bytes += u64::from(udp_len) - 8 };
    }
    if words == 1 {
        if let Some(n) = counts {
            // SAFETY: as above.
            unsafe { (*n).light_acks += 1 };
        }
        count(counter::LIGHT_ACKS, 1);
        return DROP; // nothing to answer; recorded above
    }
    let ts = (now.saturating_sub(c.start_ns) / 1000) as u32;
    if ackack(skb, h, &body, words, ts, peer_id).is_err() {
        // The packet is half rewritten: drop it (the viewer's next ACK comes in 10 ms).
        count(counter::ACK_FAILURES, 1);
        return DROP;
    }
    if let Some(n) = counts {
        // SAFETY: as above.
        unsafe { (*n).acks += 1 };
    }
    count(counter::ACKS_ANSWERED, 1);
    // SAFETY: reading a field of the program's context.
    let ifindex = unsafe { (*skb).ifindex };
    // SAFETY: no pointers involved.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

/// Rewrites the ACK in place into the ACKACK that answers it: addresses and ports swapped,
/// control type 6 with the ACK number kept, timestamp `ts`, destination `peer_id`, one zero
/// body word; the frame trimmed to its new length. Checksums follow incrementally, so the
/// result is right whatever checksum state the skb arrived in.
#[inline(always)]
fn ackack(
    skb: *mut __sk_buff,
    h: &[u8; HDR_LEN],
    body: &[u32; ACK_MAX_WORDS],
    words: usize,
    ts: u32,
    peer_id: u32,
) -> Result<(), ()> {
    // SAFETY: `skb` is the program's context.
    if unsafe { bpf_skb_change_tail(skb, ACKACK_FRAME_LEN, 0) } != 0 {
        return Err(());
    }
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&h[6..12]);
    macs[6..].copy_from_slice(&h[..6]);
    store(skb, 0, macs.as_ptr().cast(), 12)?;

    // IPv4 header: addresses swapped (the checksum does not change for that), new total
    // length, a fresh TTL.
    let mut old_ip = [0u32; 5];
    for (i, w) in old_ip.iter_mut().enumerate() {
        *w = raw32(h, IP + 4 * i);
    }
    let mut new_ip = old_ip;
    let mut w0 = new_ip[0].to_ne_bytes();
    w0[2..4].copy_from_slice(&ACKACK_IP_LEN.to_be_bytes());
    new_ip[0] = u32::from_ne_bytes(w0);
    let mut w2 = new_ip[2].to_ne_bytes();
    w2[0] = 64;
    new_ip[2] = u32::from_ne_bytes(w2);
    new_ip.swap(3, 4);
    let diff = csum_diff(old_ip.as_mut_ptr(), new_ip.as_mut_ptr(), 20)?;
    store(skb, IP, new_ip.as_ptr().cast(), 20)?;
    // SAFETY: `skb` is the program's context; the offset lies inside the checked header.
    if unsafe { bpf_l3_csum_replace(skb, IP_CSUM as u32, 0, diff, 0) } != 0 {
        return Err(());
    }

    // UDP: ports swapped (checksum unchanged), new length (in the header and in the pseudo
    // header), and the SRT packet: what changes and what goes.
    let ports = raw32(h, UDP_SPORT).rotate_left(16);
    store(skb, UDP_SPORT, (&ports as *const u32).cast(), 4)?;
    let old_len = raw16(h, UDP_LEN);
    let new_len = u16::from_ne_bytes(ACKACK_UDP_LEN.to_be_bytes());
    store(skb, UDP_LEN, (&new_len as *const u16).cast(), 2)?;
    let csum = raw16(h, UDP_CSUM);
    let lc = |len: u16| {
        let (l, c) = (len.to_ne_bytes(), csum.to_ne_bytes());
        u32::from_ne_bytes([l[0], l[1], c[0], c[1]])
    };
    let mut from = [0u32; 5 + ACK_MAX_WORDS];
    from[0] = lc(old_len);
    from[1] = raw32(h, SRT_WORD0);
    from[2] = raw32(h, SRT_WORD1);
    from[3] = raw32(h, SRT_TS);
    from[4] = raw32(h, SRT_DEST);
    from[5..].copy_from_slice(body);
    let mut to = [
        lc(new_len),
        (srt::CONTROL_BIT | u32::from(srt::ctrl::ACKACK) << 16).to_be(),
        from[2],
        ts.to_be(),
        peer_id.to_be(),
        0,
    ];
    let diff = csum_diff_sized(
        from.as_mut_ptr(),
        ((5 + words) * 4) as u32,
        to.as_mut_ptr(),
        24,
    )?;
    store(skb, SRT, to[1..].as_ptr().cast(), ACKACK_SRT_LEN.into())?;
    // SAFETY: as above.
    let ok = unsafe {
        bpf_l4_csum_replace(skb, UDP_CSUM as u32, 0, diff, BPF_F_MARK_MANGLED_0 as u64) == 0
            && bpf_l4_csum_replace(
                skb,
                UDP_CSUM as u32,
                old_len.into(),
                new_len.into(),
                2 | (BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0) as u64,
            ) == 0
    };
    if ok {
        Ok(())
    } else {
        Err(())
    }
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
