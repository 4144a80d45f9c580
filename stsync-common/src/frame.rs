//! The frame the kernel programs parse (the relay's fast path and the benchmark's sink):
//! Ethernet + IPv4 without options + UDP + SRT. Byte offsets from the start of the
//! Ethernet header, and reads of the header copy a program loads.
//!
//! The reads take the header as a fixed-size array, so with constant offsets every bounds
//! check is settled at compile time and the verifier sees plain stack reads.

use crate::srt;

pub const ETH_TYPE: usize = 12;
/// The EtherType of IPv4, as on the wire.
pub const ETH_P_IP: [u8; 2] = [0x08, 0x00];

pub const IP: usize = 14;
pub const IP_LEN: usize = IP + 2;
pub const IP_FRAG: usize = IP + 6;
pub const IP_PROTO: usize = IP + 9;
pub const IP_CSUM: usize = IP + 10;
pub const IP_SRC: usize = IP + 12;
pub const IP_DST: usize = IP + 16;
pub const IPPROTO_UDP: u8 = 17;

pub const UDP: usize = IP + 20;
pub const UDP_SPORT: usize = UDP;
pub const UDP_DPORT: usize = UDP + 2;
pub const UDP_LEN: usize = UDP + 4;
pub const UDP_CSUM: usize = UDP + 6;

pub const SRT: usize = UDP + 8;
pub const SRT_WORD0: usize = SRT + srt::OFF_SEQ_OR_TYPE;
pub const SRT_WORD1: usize = SRT + srt::OFF_MSG_OR_INFO;
pub const SRT_TS: usize = SRT + srt::OFF_TIMESTAMP;
pub const SRT_DEST: usize = SRT + srt::OFF_DEST_SOCKET;
/// Everything the programs read or rewrite lies in the first `HDR_LEN` bytes.
pub const HDR_LEN: usize = SRT + srt::HEADER_LEN;
const _: () = assert!(SRT_DEST + 4 == HDR_LEN && SRT_TS + 4 == SRT_DEST);

/// The first `HDR_LEN` bytes of a frame, as a program copies them out of the packet.
pub type Header = [u8; HDR_LEN];

/// The 32 bits at `off` as they sit on the wire (network-order bytes in a native integer).
#[inline]
pub fn raw32(h: &Header, off: usize) -> u32 {
    u32::from_ne_bytes([h[off], h[off + 1], h[off + 2], h[off + 3]])
}

/// The 16 bits at `off` as they sit on the wire.
#[inline]
pub fn raw16(h: &Header, off: usize) -> u16 {
    u16::from_ne_bytes([h[off], h[off + 1]])
}

/// The 32 bits at `off` as a number (host order).
#[inline]
pub fn be32(h: &Header, off: usize) -> u32 {
    u32::from_be(raw32(h, off))
}

/// The 16 bits at `off` as a number (host order).
#[inline]
pub fn be16(h: &Header, off: usize) -> u16 {
    u16::from_be(raw16(h, off))
}
