//! Publisher data fanned out: the packet rewritten in place for each of the stream's
//! active viewers and cloned to that viewer's interface, then put back for the daemon.
//! Viewers of the publisher's family come first; then, if the stream has viewers of the
//! other family, the packet is converted once, cloned to those, and converted back.

use crate::family::{self, Family, Ips};
use crate::header::Header;
use crate::patch::{csum_diff, load_raw, replace_word, store};
use crate::{
    count, log_due, same, CROSS_BLOCKED, DROP, PASS, PUBLISHERS, STREAMS, VIEWERS, VIEWER_COUNTS,
};
use aya_ebpf::{
    bindings::{__sk_buff, BPF_F_MARK_MANGLED_0},
    helpers::generated::{bpf_clone_redirect, bpf_l4_csum_replace, bpf_loop},
};
use aya_log_ebpf::{debug, error, warn};
use core::ffi::c_void;
use stsync_common::maps::{
    counter, PublisherEntry, CONFIG_LOG, CONFIG_LO_ACCEPT_LOCAL, CROSS_MTU, LOOPBACK_IFINDEX,
    MAX_VIEWERS,
};
use stsync_common::srt;

/// The header bytes that differ between clones, as they sit on the wire (native integers
/// holding network-order bytes). `l4` is the UDP ports word and the SRT sequence,
/// timestamp and destination words: everything the UDP checksum covers that changes.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
struct Fields {
    /// Destination MAC, source MAC (bytes 0..12).
    macs: [u8; 12],
    /// Source, destination address (`family::Ips`).
    ips: Ips,
    /// UDP ports, SRT sequence, SRT timestamp, SRT destination socket ID.
    l4: [u32; 4],
}

impl Fields {
    /// The fields as the packet (a frame of family `F`) holds them. Read with the kernel's
    /// helper rather than from the header copy: built from the copy's bytes, the words
    /// would take registers and stack the program cannot spare.
    /// (In place: a `Fields` returned by value would be one more copy on the stack.)
    fn load<F: Family>(&mut self, skb: *mut __sk_buff) -> Result<(), ()> {
        load_raw(skb, 0, self.macs.as_mut_ptr().cast(), 12)?;
        load_raw(
            skb,
            F::IP_SRC,
            self.ips.as_mut_ptr().cast(),
            2 * F::ADDR_LEN as u32,
        )?;
        load_raw(skb, F::UDP_SPORT, self.l4.as_mut_ptr().cast(), 4)?;
        load_raw(skb, F::SRT_WORD0, self.l4[1..].as_mut_ptr().cast(), 4)?;
        load_raw(skb, F::SRT_TS, self.l4[2..].as_mut_ptr().cast(), 8)
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
    /// Non-zero: the packet came in on `lo`.
    lo_in: u32,
    /// Non-zero: the packet is a retransmission whose R flag is cleared for the clones.
    rexmit: u32,
    /// The latest failure, for the log: its slot, the viewer's interface and the clone's
    /// error (0: the rewrite failed).
    fail_slot: u32,
    fail_ifindex: u32,
    fail_err: i64,
    /// What the packet holds now.
    cur: Fields,
}

/// A data packet: from a known publisher, cloned to each of the stream's active viewers.
#[inline(never)]
pub(crate) fn fan_out<F: Family>(
    skb: *mut __sk_buff,
    h: &Header,
    word0: u32,
    cfg_flags: u16,
) -> Result<i32, i32> {
    let dest = h.be32(F::SRT_DEST);
    // SAFETY: the map holds plain values the daemon replaces whole.
    let p: PublisherEntry = *unsafe { PUBLISHERS.get(dest) }.ok_or(PASS)?;
    if !same(&p.src_ip, &h.addr(F::IP_SRC, F::ADDR_LEN)) || p.src_port != h.raw16(F::UDP_SPORT) {
        return Ok(PASS);
    }
    count(counter::PACKETS_SEEN, 1);
    // SAFETY: reading a field of the program's context.
    if unsafe { (*skb).gso_segs } > 1 {
        count(counter::SKIPPED, 1);
        return Ok(PASS);
    }
    let (slots, delay, families) = STREAMS.get(p.stream).map_or((0, 0, 0), |s| {
        (s.slots.min(MAX_VIEWERS), s.delay_us, s.families)
    });
    if slots == 0 {
        return Ok(PASS);
    }

    // SAFETY: reading a field of the program's context.
    let lo_in = u32::from(unsafe { (*skb).ifindex } == LOOPBACK_IFINDEX);
    let mut f = FanOut {
        skb,
        epoch: p.epoch,
        base: p.stream.wrapping_mul(MAX_VIEWERS),
        pub_seq: word0 & srt::SEQ_MASK,
        // The stream's delay moves every viewer's play-out later by as much.
        pub_ts: h.be32(F::SRT_TS).wrapping_add(delay),
        clones: 0,
        failures: 0,
        lo_skipped: 0,
        lo_in,
        lo_ok: u32::from(lo_in != 0 || cfg_flags & CONFIG_LO_ACCEPT_LOCAL != 0),
        broken: 0,
        rexmit: 0,
        fail_slot: 0,
        fail_ifindex: 0,
        fail_err: 0,
        cur: Fields {
            macs: [0; 12],
            ips: [0; 8],
            l4: [0; 4],
        },
    };
    if f.cur.load::<F>(skb).is_err() {
        return Ok(PASS);
    }
    // A publisher's retransmission goes to viewers as a first transmission (the daemon
    // does the same): clear the R flag for the clones, restore it below.
    let word1 = h.raw32(F::SRT_WORD1);
    let rexmit = u32::from_be(word1) & srt::MSG_REXMIT_FLAG != 0;
    let clean1 = (u32::from_be(word1) & !srt::MSG_REXMIT_FLAG).to_be();
    if rexmit && replace_word(skb, F::UDP_CSUM, F::SRT_WORD1, word1, clean1).is_err() {
        count(counter::SKIPPED, 1);
        return Ok(PASS);
    }
    f.rexmit = u32::from(rexmit);

    if families & F::FAMILY != 0 {
        clone_all::<F>(slots, &mut f);
    }
    if families & <F::Other as Family>::FAMILY != 0 && f.broken == 0 {
        // `bpf_skb_change_proto` drops the packet's route, and a packet on `lo` needs the
        // one its sender attached (looked up afresh, a loopback source is a martian: the
        // original was dropped, IP_LOCALNET): the daemon serves a local publisher's
        // viewers of the other family itself.
        if f.lo_in == 0 {
            other_family::<F>(h, p.stream, slots, &mut f);
        } else {
            count(counter::CROSS_FAMILY_SKIPPED, 1);
        }
    }
    Ok(finish::<F>(h, &mut f, dest, cfg_flags))
}

/// After the clones: counts and logs them, and puts the packet back as it came (in `h`)
/// for the daemon. A subprogram, so its stack does not add to `fan_out`'s.
#[inline(never)]
fn finish<F: Family>(h: &Header, f: &mut FanOut, dest: u32, cfg_flags: u16) -> i32 {
    count(counter::CLONES, f.clones.into());
    let failed = count(counter::CLONE_FAILURES, f.failures.into());
    count(counter::LOOPBACK_SKIPPED, f.lo_skipped.into());
    if failed.is_some_and(|total| log_due(total, f.failures.into())) {
        warn!(
            f.skb,
            "publisher {:x}: clones failed: {}; latest slot {}, ifindex {}, error {} (0 = rewrite)",
            dest,
            f.failures,
            f.fail_slot,
            f.fail_ifindex,
            f.fail_err
        );
    }
    if cfg_flags & CONFIG_LOG != 0 {
        debug!(
            f.skb,
            "publisher {:x} seq {}: {} clones, {} failed, {} left out on lo",
            dest,
            f.pub_seq,
            f.clones,
            f.failures,
            f.lo_skipped
        );
    }
    let mut macs = [0u8; 12];
    macs.copy_from_slice(&h.bytes::<12>(0));
    let l4 = [
        h.raw32(F::UDP_SPORT),
        h.raw32(F::SRT_WORD0),
        h.raw32(F::SRT_TS),
        h.raw32(F::SRT_DEST),
    ];
    let (src, dst) = (
        h.addr(F::IP_SRC, F::ADDR_LEN),
        h.addr(F::IP_DST, F::ADDR_LEN),
    );
    let mut restored =
        f.broken == 0 && rewrite::<F>(f.skb, &mut f.cur, &macs, (&src, &dst), &l4).is_ok();
    if f.rexmit != 0 {
        let word1 = h.raw32(F::SRT_WORD1);
        let clean1 = (u32::from_be(word1) & !srt::MSG_REXMIT_FLAG).to_be();
        restored &= replace_word(f.skb, F::UDP_CSUM, F::SRT_WORD1, clean1, word1).is_ok();
    }
    if restored {
        return PASS;
    }
    // The daemon must not see a viewer's packet as the publisher's: drop it, the
    // publisher retransmits it on the daemon's NAK.
    if count(counter::RESTORE_FAILURES, 1).is_some_and(|total| log_due(total, 1)) {
        error!(
            f.skb,
            "publisher {:x} seq {}: original not restored, dropped", dest, f.pub_seq
        );
    }
    DROP
}

/// Clones the packet (a frame of family `F`) to the stream's viewers of the other family:
/// converted, cloned, converted back. A subprogram, so the conversions' stack does not
/// add to `fan_out`'s.
///
/// A packet that would not fit `CROSS_MTU` once converted marks the stream in
/// `CROSS_BLOCKED`: the daemon takes that family's viewers back (the one packet they miss
/// is resent on their NAK). Packets of one publisher are mostly of one size, so it
/// happens at most once a publisher.
#[inline(never)]
fn other_family<F: Family>(h: &Header, stream: u32, slots: u32, f: &mut FanOut) {
    let udp_len = h.be16(F::UDP_LEN);
    let grown = u32::from(udp_len) + <F::Other as Family>::IP_HLEN as u32;
    if grown > CROSS_MTU {
        if let Some(b) = CROSS_BLOCKED.get_ptr_mut(stream) {
            // SAFETY: a plain flag; the daemon only reads it, and clears it for a new
            // publisher.
            unsafe { *b = 1 };
        }
        count(counter::CROSS_FAMILY_SKIPPED, 1);
        return;
    }
    if family::convert::<F, F::Other>(f.skb, &mut f.cur.ips, udp_len).is_err() {
        count(counter::CROSS_FAMILY_SKIPPED, 1);
        return;
    }
    clone_all::<F::Other>(slots, f);
    if family::restore::<F::Other, F>(f.skb, &mut f.cur.ips, h).is_err() {
        f.broken = 1;
    }
}

/// Clones the packet (now a frame of family `F`) to the stream's viewers of that family.
#[inline(always)]
fn clone_all<F: Family>(slots: u32, f: &mut FanOut) {
    // SAFETY: the callback only touches `f` through the pointer given here.
    unsafe {
        bpf_loop(
            slots,
            fan_out_one::<F> as *mut c_void,
            (f as *mut FanOut).cast(),
            0,
        )
    };
}

/// One viewer slot: rewrite for that viewer and clone. Returns 0 to go on, 1 to stop.
#[inline(never)]
extern "C" fn fan_out_one<F: Family>(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `FanOut` on the program's stack (see bpf_loop above).
    let f = unsafe { &mut *ctx.cast::<FanOut>() };
    let slot = f.base.wrapping_add(i as u32);
    let Some(v) = VIEWERS.get(slot) else {
        return 0;
    };
    if v.active == 0 || v.epoch != f.epoch || v.route.family != F::FAMILY {
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
    let l4 = [
        u32::from_ne_bytes([rp[0], rp[1], vp[0], vp[1]]),
        (f.pub_seq.wrapping_add(v.seq_off) & srt::SEQ_MASK).to_be(),
        f.pub_ts.wrapping_add(v.ts_off).to_be(),
        v.peer_id.to_be(),
    ];
    let ifindex = r.ifindex;
    if rewrite::<F>(f.skb, &mut f.cur, &macs, (&r.relay_ip, &r.viewer_ip), &l4).is_err() {
        f.failures += 1;
        f.broken = 1;
        (f.fail_slot, f.fail_ifindex, f.fail_err) = (slot, ifindex, 0);
        return 1;
    }
    // SAFETY: `f.skb` is the program's context.
    let err = unsafe { bpf_clone_redirect(f.skb, ifindex, 0) };
    if err == 0 {
        f.clones += 1;
        if let Some(c) = VIEWER_COUNTS.get_ptr_mut(slot) {
            // SAFETY: a per-CPU slot, written only by this CPU.
            unsafe { (*c).clones += 1 };
        }
    } else {
        f.failures += 1;
        (f.fail_slot, f.fail_ifindex, f.fail_err) = (slot, ifindex, err);
    }
    0
}

/// Brings the packet (a frame of family `F`) from `cur` to the MACs, addresses (source,
/// destination) and `l4` words given, keeping the checksums right.
#[inline(always)]
fn rewrite<F: Family>(
    skb: *mut __sk_buff,
    cur: &mut Fields,
    macs: &[u8; 12],
    (src, dst): (&[u32; 4], &[u32; 4]),
    l4: &[u32; 4],
) -> Result<(), ()> {
    if cur.macs != *macs {
        store(skb, 0, macs.as_ptr().cast(), 12)?;
        cur.macs = *macs;
    }
    if F::ips_differ(&cur.ips, src, dst) {
        F::write_ips(skb, &mut cur.ips, src, dst)?;
    }
    if (cur.l4[0] ^ l4[0]) | (cur.l4[1] ^ l4[1]) | (cur.l4[2] ^ l4[2]) | (cur.l4[3] ^ l4[3]) != 0 {
        let mut from = cur.l4;
        let mut to = *l4;
        let diff = csum_diff(from.as_mut_ptr(), to.as_mut_ptr(), 16)?;
        // Viewers on one host share addresses and often ports: write what differs.
        if from[0] != to[0] {
            store(skb, F::UDP_SPORT, to.as_ptr().cast(), 4)?;
        }
        if from[1] != to[1] {
            store(skb, F::SRT_WORD0, to[1..].as_ptr().cast(), 4)?;
        }
        if from[2] != to[2] || from[3] != to[3] {
            store(skb, F::SRT_TS, to[2..].as_ptr().cast(), 8)?;
        }
        // SAFETY: `skb` is the program's context; the offset lies inside the checked header.
        if unsafe {
            bpf_l4_csum_replace(
                skb,
                F::UDP_CSUM as u32,
                0,
                diff,
                BPF_F_MARK_MANGLED_0 as u64,
            )
        } != 0
        {
            return Err(());
        }
        cur.l4 = *l4;
    }
    Ok(())
}
