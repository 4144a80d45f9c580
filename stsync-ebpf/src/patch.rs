//! Writes to the packet, through the kernel's helpers only (packet pointers would not
//! survive a clone), with the checksums kept right incrementally.

use aya_ebpf::{
    bindings::{__sk_buff, BPF_F_MARK_MANGLED_0, BPF_F_RECOMPUTE_CSUM},
    helpers::generated::{
        bpf_csum_diff, bpf_l4_csum_replace, bpf_skb_load_bytes, bpf_skb_store_bytes,
    },
};
use core::ffi::c_void;

/// Replaces one 32-bit word covered by the UDP checksum at `csum_off`.
pub(crate) fn replace_word(
    skb: *mut __sk_buff,
    csum_off: usize,
    off: usize,
    from: u32,
    to: u32,
) -> Result<(), ()> {
    store(skb, off, (&to as *const u32).cast(), 4)?;
    // SAFETY: `skb` is the program's context.
    let r = unsafe {
        bpf_l4_csum_replace(
            skb,
            csum_off as u32,
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

/// Copies `len` bytes of the packet from `off` to `to`.
#[inline(always)]
pub(crate) fn load_raw(
    skb: *mut __sk_buff,
    off: usize,
    to: *mut c_void,
    len: u32,
) -> Result<(), ()> {
    // SAFETY: `skb` is the program's context, `to` points to `len` bytes of stack.
    if unsafe { bpf_skb_load_bytes(skb as *const c_void, off as u32, to, len) } == 0 {
        Ok(())
    } else {
        Err(())
    }
}

#[inline(always)]
pub(crate) fn store(
    skb: *mut __sk_buff,
    off: usize,
    from: *const c_void,
    len: u32,
) -> Result<(), ()> {
    // SAFETY: `skb` is the program's context, `from` points to `len` bytes of stack.
    // No BPF_F_RECOMPUTE_CSUM: the checksum helpers keep skb->csum in step.
    if unsafe { bpf_skb_store_bytes(skb, off as u32, from, len, 0) } == 0 {
        Ok(())
    } else {
        Err(())
    }
}

/// Like `store`, for bytes no checksum field in the packet answers for (an IPv6 header):
/// a received checksum over the whole packet (`CHECKSUM_COMPLETE`) follows the change.
#[inline(always)]
pub(crate) fn store_rcsum(
    skb: *mut __sk_buff,
    off: usize,
    from: *const c_void,
    len: u32,
) -> Result<(), ()> {
    // SAFETY: as in `store`.
    let r = unsafe { bpf_skb_store_bytes(skb, off as u32, from, len, BPF_F_RECOMPUTE_CSUM as u64) };
    if r == 0 {
        Ok(())
    } else {
        Err(())
    }
}

#[inline(always)]
pub(crate) fn csum_diff(from: *mut u32, to: *mut u32, len: u32) -> Result<u64, ()> {
    csum_diff_sized(from, len, to, len)
}

/// The checksum difference between `from_len` bytes at `from` and `to_len` bytes at `to`.
#[inline(always)]
pub(crate) fn csum_diff_sized(
    from: *mut u32,
    from_len: u32,
    to: *mut u32,
    to_len: u32,
) -> Result<u64, ()> {
    // SAFETY: both point to that many bytes of stack.
    let d = unsafe { bpf_csum_diff(from, from_len, to, to_len, 0) };
    if d < 0 {
        Err(())
    } else {
        Ok(d as u64)
    }
}
