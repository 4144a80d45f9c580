//! Types shared by the daemon and the kernel programs.
//!
//! Everything here is `no_std` and fixed-width so the eBPF side and the daemon read the same
//! bytes the same way: SRT header offsets and flags, and the frame offsets the kernel
//! programs parse, are defined once, here.
#![no_std]

pub mod frame;
pub mod maps;
pub mod srt;
