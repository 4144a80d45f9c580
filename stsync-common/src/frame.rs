//! The frames the kernel programs parse (the relay's fast path and the benchmark's sink):
//! Ethernet + IPv4 without options + UDP + SRT, or Ethernet + IPv6 without extension
//! headers + UDP + SRT. Byte offsets from the start of the Ethernet header (the top-level
//! constants are IPv4's, `v6` IPv6's, and [`Layout`] names both for code written once for
//! the two families), and reads of the header copy a program loads.
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
/// Everything the programs read or rewrite of an IPv4 frame lies in its first `HDR_LEN`
/// bytes.
pub const HDR_LEN: usize = SRT + srt::HEADER_LEN;
const _: () = assert!(SRT_DEST + 4 == HDR_LEN && SRT_TS + 4 == SRT_DEST);

/// IPv6 frames: a fixed 40-byte header, no checksum of its own.
pub mod v6 {
    use crate::srt;

    /// The EtherType of IPv6, as on the wire.
    pub const ETH_P_IPV6: [u8; 2] = [0x86, 0xDD];
    pub const IP: usize = super::IP;
    pub const IP_PAYLOAD_LEN: usize = IP + 4;
    pub const IP_NEXT: usize = IP + 6;
    pub const IP_HOP_LIMIT: usize = IP + 7;
    pub const IP_SRC: usize = IP + 8;
    pub const IP_DST: usize = IP + 24;
    pub const UDP: usize = IP + 40;
    pub const SRT: usize = UDP + 8;
    pub const HDR_LEN: usize = SRT + srt::HEADER_LEN;

    /// Extension headers a program may meet before UDP (RFC 8200 4.1): hop-by-hop options,
    /// routing, fragment, destination options.
    pub const EXT_HOP_BY_HOP: u8 = 0;
    pub const EXT_ROUTING: u8 = 43;
    pub const EXT_FRAGMENT: u8 = 44;
    pub const EXT_DEST_OPTS: u8 = 60;
}

/// Where one family's frame keeps what the programs read and rewrite. The UDP and SRT
/// offsets follow from `UDP`.
pub trait Layout {
    const ETH_P: [u8; 2];
    /// Source address; the destination follows it directly in both families.
    const IP_SRC: usize;
    const IP_DST: usize;
    /// Bytes of one address.
    const ADDR_LEN: usize;
    const UDP: usize;
    const UDP_SPORT: usize = Self::UDP;
    const UDP_DPORT: usize = Self::UDP + 2;
    const UDP_LEN: usize = Self::UDP + 4;
    const UDP_CSUM: usize = Self::UDP + 6;
    const SRT: usize = Self::UDP + 8;
    const SRT_WORD0: usize = Self::SRT + srt::OFF_SEQ_OR_TYPE;
    const SRT_WORD1: usize = Self::SRT + srt::OFF_MSG_OR_INFO;
    const SRT_TS: usize = Self::SRT + srt::OFF_TIMESTAMP;
    const SRT_DEST: usize = Self::SRT + srt::OFF_DEST_SOCKET;
    const HDR_LEN: usize = Self::SRT + srt::HEADER_LEN;
}

/// IPv4 without options.
pub struct V4;
/// IPv6 without extension headers.
pub struct V6;

impl Layout for V4 {
    const ETH_P: [u8; 2] = ETH_P_IP;
    const IP_SRC: usize = IP_SRC;
    const IP_DST: usize = IP_DST;
    const ADDR_LEN: usize = 4;
    const UDP: usize = UDP;
}

impl Layout for V6 {
    const ETH_P: [u8; 2] = v6::ETH_P_IPV6;
    const IP_SRC: usize = v6::IP_SRC;
    const IP_DST: usize = v6::IP_DST;
    const ADDR_LEN: usize = 16;
    const UDP: usize = v6::UDP;
}

const _: () = assert!(V4::HDR_LEN == HDR_LEN && V6::HDR_LEN == v6::HDR_LEN);
const _: () = assert!(V4::IP_DST == V4::IP_SRC + 4 && V6::IP_DST == V6::IP_SRC + 16);

/// The first bytes of a frame of either family, as a program copies them out of the
/// packet (an IPv4 frame fills the first `HDR_LEN`).
pub type Header = [u8; v6::HDR_LEN];

/// The 32 bits at `off` as they sit on the wire (network-order bytes in a native integer).
#[inline]
pub fn raw32<const N: usize>(h: &[u8; N], off: usize) -> u32 {
    u32::from_ne_bytes([h[off], h[off + 1], h[off + 2], h[off + 3]])
}

/// The 16 bits at `off` as they sit on the wire.
#[inline]
pub fn raw16<const N: usize>(h: &[u8; N], off: usize) -> u16 {
    u16::from_ne_bytes([h[off], h[off + 1]])
}

/// The 32 bits at `off` as a number (host order).
#[inline]
pub fn be32<const N: usize>(h: &[u8; N], off: usize) -> u32 {
    u32::from_be(raw32(h, off))
}

/// The 16 bits at `off` as a number (host order).
#[inline]
pub fn be16<const N: usize>(h: &[u8; N], off: usize) -> u16 {
    u16::from_be(raw16(h, off))
}

/// The address at `off` (`len` bytes: 4 or 16) as the maps hold it: four network-order
/// words, an IPv4 address IPv4-mapped (`::ffff:a.b.c.d`).
#[inline]
pub fn addr<const N: usize>(h: &[u8; N], off: usize, len: usize) -> [u32; 4] {
    if len == 4 {
        mapped(raw32(h, off))
    } else {
        [
            raw32(h, off),
            raw32(h, off + 4),
            raw32(h, off + 8),
            raw32(h, off + 12),
        ]
    }
}

/// An IPv4 address (network order in a native integer) IPv4-mapped, as the maps hold it.
#[inline]
pub const fn mapped(ip: u32) -> [u32; 4] {
    [0, 0, u32::from_ne_bytes([0, 0, 0xFF, 0xFF]), ip]
}
