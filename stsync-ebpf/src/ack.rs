//! ACKs of kernel-served viewers, answered here: recorded in `VIEWER_ACKS` for the daemon,
//! and turned in place into the ACKACK that answers them.

use crate::family::Family;
use crate::header::Header;
use crate::patch::{csum_diff_sized, store};
use crate::{count, log_due, DROP, PASS, VIEWERS, VIEWER_ACKS, VIEWER_COUNTS};
use aya_ebpf::{
    bindings::{__sk_buff, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::generated::{
        bpf_ktime_get_ns, bpf_l4_csum_replace, bpf_redirect, bpf_skb_change_tail,
        bpf_skb_load_bytes,
    },
};
use aya_log_ebpf::{debug, warn};
use core::ffi::c_void;
use stsync_common::maps::{counter, ViewerConn, CONFIG_LOG};
use stsync_common::srt;

/// The ACKACK the program sends: 16-byte SRT header + one 32-bit word (libsrt's size).
const ACKACK_SRT_LEN: u16 = srt::HEADER_LEN as u16 + 4;
const ACKACK_UDP_LEN: u16 = 8 + ACKACK_SRT_LEN;
/// Largest ACK body libsrt sends (7 words); its other sizes are 1, 4 and 6 words.
const ACK_MAX_WORDS: usize = 7;

/// An ACK from viewer connection `dest` (source already checked against `c`). For a viewer
/// the kernel serves, records it in `VIEWER_ACKS`, then drops a light ACK and answers a
/// full or small one by turning the packet into its ACKACK (returns `TC_ACT_REDIRECT`). Anything
/// else, including an ACK of a size libsrt does not send, goes on to the daemon.
#[inline(always)]
pub(crate) fn answer_ack<F: Family>(
    skb: *mut __sk_buff,
    h: &Header,
    dest: u32,
    c: &ViewerConn,
    cfg_flags: u16,
) -> i32 {
    let Some(v) = VIEWERS.get(c.slot) else {
        return PASS;
    };
    if v.active == 0 || v.conn != dest {
        return PASS;
    }
    let peer_id = v.peer_id;
    let udp_len = h.be16(F::UDP_LEN);
    // SAFETY: reading a field of the program's context.
    if !F::lengths_ok(h, unsafe { (*skb).len }, udp_len) {
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
            F::HDR_LEN as u32,
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
                (*a).ack_no = h.be32(F::SRT_WORD1);
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
    if cfg_flags & CONFIG_LOG != 0 {
        debug!(
            skb,
            "viewer conn {:x}: ACK of {} words, seq {}",
            dest,
            words as u32,
            u32::from_be(body[0]) & srt::SEQ_MASK
        );
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
    if ackack::<F>(skb, h, &body, words, ts, peer_id).is_err() {
        // The packet is half rewritten: drop it (the viewer's next ACK comes in 10 ms).
        if count(counter::ACK_FAILURES, 1).is_some_and(|total| log_due(total, 1)) {
            warn!(
                skb,
                "viewer conn {:x}: ACKACK rewrite failed, ACK dropped", dest
            );
        }
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
fn ackack<F: Family>(
    skb: *mut __sk_buff,
    h: &Header,
    body: &[u32; ACK_MAX_WORDS],
    words: usize,
    ts: u32,
    peer_id: u32,
) -> Result<(), ()> {
    // SAFETY: `skb` is the program's context.
    let frame_len = (F::UDP + usize::from(ACKACK_UDP_LEN)) as u32;
    if unsafe { bpf_skb_change_tail(skb, frame_len, 0) } != 0 {
        return Err(());
    }
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&h.bytes::<6>(6));
    macs[6..].copy_from_slice(&h.bytes::<6>(0));
    store(skb, 0, macs.as_ptr().cast(), 12)?;

    F::answer_header(skb, h, ACKACK_UDP_LEN)?;

    // UDP: ports swapped (checksum unchanged), new length (in the header and in the pseudo
    // header), and the SRT packet: what changes and what goes.
    let ports = h.raw32(F::UDP_SPORT).rotate_left(16);
    store(skb, F::UDP_SPORT, (&ports as *const u32).cast(), 4)?;
    let old_len = h.raw16(F::UDP_LEN);
    let new_len = u16::from_ne_bytes(ACKACK_UDP_LEN.to_be_bytes());
    store(skb, F::UDP_LEN, (&new_len as *const u16).cast(), 2)?;
    let csum = h.raw16(F::UDP_CSUM);
    let lc = |len: u16| {
        let (l, c) = (len.to_ne_bytes(), csum.to_ne_bytes());
        u32::from_ne_bytes([l[0], l[1], c[0], c[1]])
    };
    let mut from = [0u32; 5 + ACK_MAX_WORDS];
    from[0] = lc(old_len);
    from[1] = h.raw32(F::SRT_WORD0);
    from[2] = h.raw32(F::SRT_WORD1);
    from[3] = h.raw32(F::SRT_TS);
    from[4] = h.raw32(F::SRT_DEST);
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
    store(skb, F::SRT, to[1..].as_ptr().cast(), ACKACK_SRT_LEN.into())?;
    // SAFETY: as above.
    let ok = unsafe {
        bpf_l4_csum_replace(
            skb,
            F::UDP_CSUM as u32,
            0,
            diff,
            BPF_F_MARK_MANGLED_0 as u64,
        ) == 0
            && bpf_l4_csum_replace(
                skb,
                F::UDP_CSUM as u32,
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
