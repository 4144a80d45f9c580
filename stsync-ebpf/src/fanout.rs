//! Publisher data fanned out: the packet rewritten in place for each of the stream's
//! active viewers and cloned to that viewer's interface, then put back for the daemon.

use crate::patch::{csum_diff, replace_word, store};
use crate::{count, log_due, DROP, PASS, PUBLISHERS, STREAMS, VIEWERS, VIEWER_COUNTS};
use aya_ebpf::{
    bindings::{__sk_buff, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::generated::{bpf_clone_redirect, bpf_l3_csum_replace, bpf_l4_csum_replace, bpf_loop},
};
use aya_log_ebpf::{debug, error, warn};
use core::ffi::c_void;
use stsync_common::frame::{
    be32, raw16, raw32, Header, IP_CSUM, IP_DST, IP_SRC, SRT_DEST, SRT_TS, SRT_WORD0, SRT_WORD1,
    UDP_CSUM, UDP_SPORT,
};
use stsync_common::maps::{
    counter, PublisherEntry, CONFIG_LOG, CONFIG_LO_ACCEPT_LOCAL, LOOPBACK_IFINDEX, MAX_VIEWERS,
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
    /// Source, destination IPv4 address.
    ips: [u32; 2],
    /// UDP ports, SRT sequence, SRT timestamp, SRT destination socket ID.
    l4: [u32; 4],
}

impl Fields {
    fn read(h: &Header) -> Fields {
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
pub(crate) fn fan_out(
    skb: *mut __sk_buff,
    h: &Header,
    word0: u32,
    cfg_flags: u16,
) -> Result<i32, i32> {
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
        fail_slot: 0,
        fail_ifindex: 0,
        fail_err: 0,
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
    let failed = count(counter::CLONE_FAILURES, f.failures.into());
    count(counter::LOOPBACK_SKIPPED, f.lo_skipped.into());
    if failed.is_some_and(|total| log_due(total, f.failures.into())) {
        warn!(
            skb,
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
            skb,
            "publisher {:x} seq {}: {} clones, {} failed, {} left out on lo",
            dest,
            f.pub_seq,
            f.clones,
            f.failures,
            f.lo_skipped
        );
    }

    let mut restored = rewrite(skb, &mut f.cur, &orig).is_ok();
    if rexmit {
        restored &= replace_word(skb, SRT_WORD1, clean1, word1).is_ok();
    }
    if !restored {
        // The daemon must not see a viewer's packet as the publisher's: drop it, the
        // publisher retransmits it on the daemon's NAK.
        if count(counter::RESTORE_FAILURES, 1).is_some_and(|total| log_due(total, 1)) {
            error!(
                skb,
                "publisher {:x} seq {}: original not restored, dropped", dest, f.pub_seq
            );
        }
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
