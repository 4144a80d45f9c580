//! The program's copy of a frame's first bytes.
//!
//! The copy starts 2 bytes into an 8-aligned buffer, so that behind the 14-byte Ethernet
//! header every 32-bit field the program reads (addresses, UDP ports, SRT words) is
//! 4-aligned in both families and compiles to one load. Assembled from single bytes, the
//! words would take more registers and stack than the program's 512 bytes allow.

use stsync_common::frame::{mapped, v6};

/// Where the frame starts in the buffer.
const SHIFT: usize = 2;

#[repr(C, align(8))]
pub(crate) struct Header {
    b: [u8; SHIFT + v6::HDR_LEN],
}

impl Header {
    pub(crate) fn new() -> Header {
        Header {
            b: [0; SHIFT + v6::HDR_LEN],
        }
    }

    /// The frame's bytes `from..to` (for the packet to be copied into).
    pub(crate) fn frame_mut(&mut self, from: usize, to: usize) -> &mut [u8] {
        &mut self.b[SHIFT + from..SHIFT + to]
    }

    /// The frame's byte at `off`.
    #[inline(always)]
    pub(crate) fn byte(&self, off: usize) -> u8 {
        self.b[SHIFT + off]
    }

    /// The frame's `N` bytes from `off`.
    #[inline(always)]
    pub(crate) fn bytes<const N: usize>(&self, off: usize) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.b[SHIFT + off..SHIFT + off + N]);
        out
    }

    /// The 32 bits at `off` as they sit on the wire (network-order bytes in a native
    /// integer).
    #[inline(always)]
    pub(crate) fn raw32(&self, off: usize) -> u32 {
        let o = SHIFT + off;
        u32::from_ne_bytes([self.b[o], self.b[o + 1], self.b[o + 2], self.b[o + 3]])
    }

    /// The 16 bits at `off` as they sit on the wire.
    #[inline(always)]
    pub(crate) fn raw16(&self, off: usize) -> u16 {
        let o = SHIFT + off;
        u16::from_ne_bytes([self.b[o], self.b[o + 1]])
    }

    /// The 32 bits at `off` as a number.
    #[inline(always)]
    pub(crate) fn be32(&self, off: usize) -> u32 {
        u32::from_be(self.raw32(off))
    }

    /// The 16 bits at `off` as a number.
    #[inline(always)]
    pub(crate) fn be16(&self, off: usize) -> u16 {
        u16::from_be(self.raw16(off))
    }

    /// The address at `off` (`len` bytes: 4 or 16) as the maps hold it.
    #[inline(always)]
    pub(crate) fn addr(&self, off: usize, len: usize) -> [u32; 4] {
        if len == 4 {
            mapped(self.raw32(off))
        } else {
            [
                self.raw32(off),
                self.raw32(off + 4),
                self.raw32(off + 8),
                self.raw32(off + 12),
            ]
        }
    }
}
