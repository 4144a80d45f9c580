//! The userspace datapath: every datagram through the UDP socket, gathered with `sendmmsg`
//! (header from the outbox arena + payload from the stream's ring, no copy). Its buffers are
//! kept between sends, so steady state allocates nothing.

use super::{Datapath, DatapathStats};
use crate::relay::Transmits;
use socket2::SockAddr;
use std::os::fd::{AsRawFd, RawFd};

const BATCH: usize = 64;

pub struct Userspace {
    fd: RawFd,
    send_failures: u64,
    addrs: Vec<SockAddr>,
    iovs: Vec<[libc::iovec; 2]>,
    msgs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers in `iovs`/`msgs` are scratch space, only valid during `send`.
unsafe impl Send for Userspace {}

impl Userspace {
    /// `socket` must outlive the datapath and be non-blocking.
    pub fn new(socket: &impl AsRawFd) -> Self {
        Userspace {
            fd: socket.as_raw_fd(),
            send_failures: 0,
            addrs: Vec::with_capacity(BATCH),
            iovs: Vec::with_capacity(BATCH),
            msgs: Vec::with_capacity(BATCH),
        }
    }

    fn send_batch(&mut self, batch: &Transmits<'_>, first: usize) -> usize {
        self.addrs.clear();
        self.iovs.clear();
        self.msgs.clear();
        for i in first..(first + BATCH).min(batch.len()) {
            let d = batch.get(i);
            self.addrs.push(SockAddr::from(d.dst));
            self.iovs.push([
                libc::iovec {
                    iov_base: d.head.as_ptr() as *mut _,
                    iov_len: d.head.len(),
                },
                libc::iovec {
                    iov_base: d.payload.as_ptr() as *mut _,
                    iov_len: d.payload.len(),
                },
            ]);
        }
        for (iov, addr) in self.iovs.iter_mut().zip(&self.addrs) {
            // SAFETY: a zeroed msghdr is valid; the pointers set here (iovs, addrs and the
            // relay's buffers) stay alive and unmoved until sendmmsg returns.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = addr.as_ptr() as *mut _;
            h.msg_hdr.msg_namelen = addr.len();
            h.msg_hdr.msg_iov = iov.as_mut_ptr();
            h.msg_hdr.msg_iovlen = 2;
            self.msgs.push(h);
        }
        // SAFETY: msgs holds msgs.len() initialised headers (see above).
        let n =
            unsafe { libc::sendmmsg(self.fd, self.msgs.as_mut_ptr(), self.msgs.len() as u32, 0) };
        if n <= 0 {
            // Socket buffer full, or an error for this one destination: a live packet that
            // cannot go now is worthless later, so skip it and count rather than wait.
            self.send_failures += 1;
            1
        } else {
            n as usize
        }
    }
}

impl Datapath for Userspace {
    fn kind(&self) -> &'static str {
        "userspace"
    }

    fn send(&mut self, batch: &Transmits<'_>) {
        let mut sent = 0;
        while sent < batch.len() {
            sent += self.send_batch(batch, sent);
        }
    }

    fn stats(&self) -> DatapathStats {
        DatapathStats {
            kind: self.kind(),
            send_failures: self.send_failures,
            kernel: None,
        }
    }
}
