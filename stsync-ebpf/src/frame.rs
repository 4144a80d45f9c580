//! The frame the program handles: Ethernet + IPv4 (no options) + UDP + SRT, its byte
//! offsets and reads of the header copy the entry point loads (a fixed-size array, so every
//! index is checked at compile time and the verifier sees only stack reads).

use stsync_common::srt;

// Byte offsets in an Ethernet + IPv4 (no options) + UDP + SRT frame.
pub(crate) const ETH_TYPE: usize = 12;
pub(crate) const IP: usize = 14;
pub(crate) const IP_LEN: usize = IP + 2;
pub(crate) const IP_FRAG: usize = IP + 6;
pub(crate) const IP_PROTO: usize = IP + 9;
pub(crate) const IP_CSUM: usize = IP + 10;
pub(crate) const IP_SRC: usize = IP + 12;
pub(crate) const IP_DST: usize = IP + 16;
pub(crate) const UDP: usize = IP + 20;
pub(crate) const UDP_SPORT: usize = UDP;
pub(crate) const UDP_DPORT: usize = UDP + 2;
pub(crate) const UDP_LEN: usize = UDP + 4;
pub(crate) const UDP_CSUM: usize = UDP + 6;
pub(crate) const SRT: usize = UDP + 8;
pub(crate) const SRT_WORD0: usize = SRT + srt::OFF_SEQ_OR_TYPE;
pub(crate) const SRT_WORD1: usize = SRT + srt::OFF_MSG_OR_INFO;
pub(crate) const SRT_TS: usize = SRT + srt::OFF_TIMESTAMP;
pub(crate) const SRT_DEST: usize = SRT + srt::OFF_DEST_SOCKET;
/// Everything the program reads or rewrites lies in the first `HDR_LEN` bytes.
pub(crate) const HDR_LEN: usize = SRT + srt::HEADER_LEN;
const _: () = assert!(SRT_DEST + 4 == HDR_LEN && SRT_TS + 4 == SRT_DEST);

pub(crate) const ETH_P_IP: [u8; 2] = [0x08, 0x00];
pub(crate) const IPPROTO_UDP: u8 = 17;

pub(crate) fn raw32(h: &[u8; HDR_LEN], off: usize) -> u32 {
    u32::from_ne_bytes([h[off], h[off + 1], h[off + 2], h[off + 3]])
}

pub(crate) fn raw16(h: &[u8; HDR_LEN], off: usize) -> u16 {
    u16::from_ne_bytes([h[off], h[off + 1]])
}

pub(crate) fn be32(h: &[u8; HDR_LEN], off: usize) -> u32 {
    u32::from_be_bytes([h[off], h[off + 1], h[off + 2], h[off + 3]])
}

pub(crate) fn be16(h: &[u8; HDR_LEN], off: usize) -> u16 {
    u16::from_be_bytes([h[off], h[off + 1]])
}
