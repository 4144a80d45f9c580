//! What differs between IPv4 and IPv6 for the program: where the addresses sit and how
//! they are rewritten (IPv4 has a header checksum, IPv6 none), the IP header of an
//! ACKACK, and a frame turned into the other family for viewers of that family.
//!
//! Addresses travel as `Ips`: source then destination, IPv4 in the first two words (the
//! rest unused), IPv6 in all eight. They are compared and built word by word: an array
//! comparison or a zero fill becomes a `memcmp`/`memset` loop, which the verifier would
//! walk for every viewer of the fan-out loop. The UDP checksum covers them through the pseudo header in both
//! families, together with the UDP length and protocol, which are the same sum in both:
//! converting a datagram changes its UDP checksum by its addresses only.

use crate::header::Header;
use crate::patch::{csum_diff_sized, load_raw, store, store_rcsum};
use aya_ebpf::{
    bindings::{__sk_buff, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::generated::{bpf_l3_csum_replace, bpf_l4_csum_replace, bpf_skb_change_proto},
};
use stsync_common::frame::{v6, Layout, ETH_TYPE, IP, IPPROTO_UDP, IP_CSUM, V4, V6};
use stsync_common::maps::{FAMILY_V4, FAMILY_V6};

/// Source and destination address words as they sit on the wire.
pub(crate) type Ips = [u32; 8];

pub(crate) trait Family: Layout {
    /// The family's `FAMILY_*` bit in routes and streams.
    const FAMILY: u32;
    /// Length of the IP header.
    const IP_HLEN: usize;
    /// The EtherType as a number (`bpf_skb_change_proto` takes it in network order).
    const ETH_PROTO: u16;
    type Other: Family;

    /// Whether the packet's addresses `cur` differ from `src`, `dst` (as the maps hold
    /// them: IPv4-mapped for IPv4).
    fn ips_differ(cur: &Ips, src: &[u32; 4], dst: &[u32; 4]) -> bool;

    /// Rewrites the addresses from `cur` to `src`, `dst`, keeping the checksums right.
    fn write_ips(
        skb: *mut __sk_buff,
        cur: &mut Ips,
        src: &[u32; 4],
        dst: &[u32; 4],
    ) -> Result<(), ()>;

    /// A fresh IP header (first `IP_HLEN` bytes) for a UDP datagram of `udp_len` bytes
    /// with zero addresses.
    fn fresh_header(udp_len: u16) -> [u8; 40];

    /// Whether the IP header agrees with the UDP length and the skb holds it all.
    fn lengths_ok(h: &Header, skb_len: u32, udp_len: u16) -> bool;

    /// Turns the received datagram's IP header (in `h`) into that of the answer to it:
    /// addresses swapped, length for `udp_len` bytes of UDP, a fresh TTL / hop limit.
    fn answer_header(skb: *mut __sk_buff, h: &Header, udp_len: u16) -> Result<(), ()>;
}

/// TTL and hop limit of what the program sends.
const HOPS: u8 = 64;

impl Family for V4 {
    const FAMILY: u32 = FAMILY_V4;
    const IP_HLEN: usize = 20;
    const ETH_PROTO: u16 = 0x0800;
    type Other = V6;

    fn ips_differ(cur: &Ips, src: &[u32; 4], dst: &[u32; 4]) -> bool {
        (cur[0] ^ src[3]) | (cur[1] ^ dst[3]) != 0
    }

    fn write_ips(
        skb: *mut __sk_buff,
        cur: &mut Ips,
        src: &[u32; 4],
        dst: &[u32; 4],
    ) -> Result<(), ()> {
        let mut from = [cur[0], cur[1]];
        let mut to = [src[3], dst[3]];
        let diff = csum_diff_sized(from.as_mut_ptr(), 8, to.as_mut_ptr(), 8)?;
        store(skb, Self::IP_SRC, to.as_ptr().cast(), 8)?;
        // SAFETY: `skb` is the program's context; offsets lie inside the checked header.
        let ok = unsafe {
            bpf_l3_csum_replace(skb, IP_CSUM as u32, 0, diff, 0) == 0
                && l4_pseudo(skb, Self::UDP_CSUM, diff)
        };
        (cur[0], cur[1]) = (to[0], to[1]);
        ok.then_some(()).ok_or(())
    }

    fn fresh_header(udp_len: u16) -> [u8; 40] {
        let total = udp_len.wrapping_add(20);
        // Version/IHL + TOS, length, ID, flags (DF), TTL + protocol; the addresses are 0.
        let sum = 0x4500u32 + u32::from(total) + 0x4000 + (u32::from(HOPS) << 8 | 17);
        let sum = (sum & 0xFFFF) + (sum >> 16);
        let csum = !((sum & 0xFFFF) + (sum >> 16)) as u16;
        let mut b = [0u8; 40];
        b[0] = 0x45;
        b[2..4].copy_from_slice(&total.to_be_bytes());
        b[6] = 0x40;
        b[8] = HOPS;
        b[9] = IPPROTO_UDP;
        b[10..12].copy_from_slice(&csum.to_be_bytes());
        b
    }

    fn lengths_ok(h: &Header, skb_len: u32, udp_len: u16) -> bool {
        let ip_len = u16::from_be_bytes([h.byte(IP + 2), h.byte(IP + 3)]);
        u32::from(ip_len) + IP as u32 <= skb_len && udp_len.checked_add(20) == Some(ip_len)
    }

    fn answer_header(skb: *mut __sk_buff, h: &Header, udp_len: u16) -> Result<(), ()> {
        // Addresses swapped (the checksum does not change for that), new total length,
        // a fresh TTL.
        let mut old = [0u32; 5];
        for (i, w) in old.iter_mut().enumerate() {
            *w = h.raw32(IP + 4 * i);
        }
        let mut new = old;
        let mut w0 = new[0].to_ne_bytes();
        w0[2..4].copy_from_slice(&(udp_len + 20).to_be_bytes());
        new[0] = u32::from_ne_bytes(w0);
        let mut w2 = new[2].to_ne_bytes();
        w2[0] = HOPS;
        new[2] = u32::from_ne_bytes(w2);
        new.swap(3, 4);
        let diff = csum_diff_sized(old.as_mut_ptr(), 20, new.as_mut_ptr(), 20)?;
        store(skb, IP, new.as_ptr().cast(), 20)?;
        // SAFETY: `skb` is the program's context; the offset lies inside the checked header.
        if unsafe { bpf_l3_csum_replace(skb, IP_CSUM as u32, 0, diff, 0) } != 0 {
            return Err(());
        }
        Ok(())
    }
}

impl Family for V6 {
    const FAMILY: u32 = FAMILY_V6;
    const IP_HLEN: usize = 40;
    const ETH_PROTO: u16 = 0x86DD;
    type Other = V4;

    fn ips_differ(cur: &Ips, src: &[u32; 4], dst: &[u32; 4]) -> bool {
        let mut d = 0;
        for i in 0..4 {
            d |= (cur[i] ^ src[i]) | (cur[4 + i] ^ dst[i]);
        }
        d != 0
    }

    fn write_ips(
        skb: *mut __sk_buff,
        cur: &mut Ips,
        src: &[u32; 4],
        dst: &[u32; 4],
    ) -> Result<(), ()> {
        let mut to = [
            src[0], src[1], src[2], src[3], dst[0], dst[1], dst[2], dst[3],
        ];
        let diff = csum_diff_sized(cur.as_mut_ptr(), 32, to.as_mut_ptr(), 32)?;
        // No header checksum: the addresses count only in the UDP checksum's pseudo
        // header (and in skb->csum, which the store keeps in step).
        store_rcsum(skb, Self::IP_SRC, to.as_ptr().cast(), 32)?;
        *cur = to;
        // SAFETY: `skb` is the program's context.
        unsafe { l4_pseudo(skb, Self::UDP_CSUM, diff) }
            .then_some(())
            .ok_or(())
    }

    fn fresh_header(udp_len: u16) -> [u8; 40] {
        let mut b = [0u8; 40];
        b[0] = 0x60;
        b[4..6].copy_from_slice(&udp_len.to_be_bytes());
        b[6] = IPPROTO_UDP;
        b[7] = HOPS;
        b
    }

    fn lengths_ok(h: &Header, skb_len: u32, udp_len: u16) -> bool {
        let payload =
            u16::from_be_bytes([h.byte(v6::IP_PAYLOAD_LEN), h.byte(v6::IP_PAYLOAD_LEN + 1)]);
        u32::from(payload) + V6::UDP as u32 <= skb_len && udp_len == payload
    }

    fn answer_header(skb: *mut __sk_buff, h: &Header, udp_len: u16) -> Result<(), ()> {
        let mut w = [0u32; 10];
        for (i, x) in w.iter_mut().enumerate() {
            *x = h.raw32(IP + 4 * i);
        }
        let len = udp_len.to_be_bytes();
        w[1] = u32::from_ne_bytes([len[0], len[1], IPPROTO_UDP, HOPS]);
        for i in 2..6 {
            w.swap(i, i + 4);
        }
        store_rcsum(skb, IP, w.as_ptr().cast(), 40)
    }
}

/// Adds `diff` of the pseudo header to the UDP checksum at `csum_off`.
///
/// # Safety
/// `skb` is the program's context.
#[inline(always)]
unsafe fn l4_pseudo(skb: *mut __sk_buff, csum_off: usize, diff: u64) -> bool {
    bpf_l4_csum_replace(
        skb,
        csum_off as u32,
        0,
        diff,
        (BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0) as u64,
    ) == 0
}

/// Turns the datagram (a frame of family `F` whose addresses are `cur` now) into one of
/// family `T` with zero addresses: resized by the kernel, a fresh IP header, the UDP
/// checksum moved to the new pseudo header. Refused for an IPv4 datagram without a UDP
/// checksum, which IPv6 forbids (the program cannot sum the payload).
///
/// Subprograms (this and `restore`): the fan-out loop's callback runs beside them, not
/// under them, so their stack does not add to its.
#[inline(never)]
pub(crate) fn convert<F: Family, T: Family>(
    skb: *mut __sk_buff,
    cur: &mut Ips,
    udp_len: u16,
) -> Result<(), ()> {
    if F::FAMILY == FAMILY_V4 {
        let mut csum = [0u8; 2];
        load_raw(skb, F::UDP_CSUM, csum.as_mut_ptr().cast(), 2)?;
        if csum == [0, 0] {
            return Err(());
        }
    }
    let fresh = T::fresh_header(udp_len);
    change_family::<F, T>(skb, cur, &fresh)
}

/// Brings a datagram converted by `convert` (now of family `F`, addresses `cur`) back to
/// the original frame's family `T` and IP header, taken from `h`.
#[inline(never)]
pub(crate) fn restore<F: Family, T: Family>(
    skb: *mut __sk_buff,
    cur: &mut Ips,
    h: &Header,
) -> Result<(), ()> {
    let ip = h.bytes::<40>(IP);
    change_family::<F, T>(skb, cur, &ip)
}

/// Makes the frame one of family `T` with IP header `header`. `cur` then holds the
/// addresses as read back from the packet, so the verifier sees them as unknown, like
/// every address the fan-out loop compares (a known constant there would keep the loop's
/// states from matching).
#[inline(always)]
fn change_family<F: Family, T: Family>(
    skb: *mut __sk_buff,
    cur: &mut Ips,
    header: &[u8; 40],
) -> Result<(), ()> {
    // SAFETY: `skb` is the program's context.
    if unsafe { bpf_skb_change_proto(skb, T::ETH_PROTO.to_be(), 0) } != 0 {
        return Err(());
    }
    let eth = T::ETH_PROTO.to_be_bytes();
    store(skb, ETH_TYPE, eth.as_ptr().cast(), 2)?;
    store_rcsum(skb, IP, header.as_ptr().cast(), T::IP_HLEN as u32)?;
    let mut to = [0u32; 8];
    load_raw(
        skb,
        T::IP_SRC,
        to.as_mut_ptr().cast(),
        2 * T::ADDR_LEN as u32,
    )?;
    let diff = csum_diff_sized(
        cur.as_mut_ptr(),
        2 * F::ADDR_LEN as u32,
        to.as_mut_ptr(),
        2 * T::ADDR_LEN as u32,
    )?;
    // SAFETY: `skb` is the program's context.
    if !unsafe { l4_pseudo(skb, T::UDP_CSUM, diff) } {
        return Err(());
    }
    *cur = to;
    Ok(())
}
