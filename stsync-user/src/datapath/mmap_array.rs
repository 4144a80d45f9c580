//! A BPF array map created with `BPF_F_MMAPABLE`, mapped into the daemon's memory: the
//! program writes entries, the daemon reads (and resets) them with plain loads and stores,
//! no syscall per access.

use aya::maps::{Map, MapData};
use aya::Pod;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd};
use std::ptr::NonNull;

pub struct MmapArray<T: Pod> {
    base: NonNull<T>,
    len: u32,
    bytes: usize,
    /// Keeps the map's file descriptor open as long as the mapping.
    _map: MapData,
    _t: PhantomData<T>,
}

// SAFETY: the mapping is plain shared memory owned by this value; access goes through
// `&self`/`&mut self` like any owned buffer.
unsafe impl<T: Pod> Send for MmapArray<T> {}

impl<T: Pod> MmapArray<T> {
    /// Maps array `map` of `len` entries of `T` (the map must have been created with
    /// `BPF_F_MMAPABLE` and its value size must be `size_of::<T>()`).
    pub fn new(map: Map, len: u32) -> std::io::Result<Self> {
        let Map::Array(data) = map else {
            return Err(std::io::Error::other("not an array map"));
        };
        let page = page_size();
        let bytes = (std::mem::size_of::<T>() * len as usize).div_ceil(page) * page;
        let fd = data.fd().as_fd().as_raw_fd();
        // SAFETY: a fresh shared mapping of the map's value area; the kernel checks that
        // the map is mmap-able and at least `bytes` long.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(MmapArray {
            base: NonNull::new(p.cast()).expect("mmap returned a non-null pointer"),
            len,
            bytes,
            _map: data,
            _t: PhantomData,
        })
    }

    /// A snapshot of entry `i` (the program may be writing it: fields can be a mix of two
    /// updates, each field whole).
    pub fn get(&self, i: u32) -> Option<T> {
        // SAFETY: in bounds of the mapping; every bit pattern is a valid `T` (Pod).
        (i < self.len).then(|| unsafe { self.base.as_ptr().add(i as usize).read_volatile() })
    }

    pub fn set(&mut self, i: u32, v: T) {
        if i < self.len {
            // SAFETY: in bounds of the mapping.
            unsafe { self.base.as_ptr().add(i as usize).write_volatile(v) }
        }
    }
}

impl<T: Pod> Drop for MmapArray<T> {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped; nothing refers to it after this.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}

fn page_size() -> usize {
    // SAFETY: no arguments besides the constant.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}
