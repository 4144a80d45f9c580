//! The userspace datapath: every datagram through the UDP socket, gathered with `sendmmsg`
//! (header from the outbox arena + payload from the stream's ring, no copy). Its buffers are
//! kept between flushes, so steady state allocates nothing.

use super::Datapath;
use crate::metrics::Metrics;
use crate::relay::{Relay, RouteEvent};
use socket2::SockAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

const BATCH: usize = 64;

pub struct Userspace {
    fd: RawFd,
    metrics: Arc<Metrics>,
    addrs: Vec<SockAddr>,
    iovs: Vec<[libc::iovec; 2]>,
    msgs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers in `iovs`/`msgs` are scratch space, only valid during `flush`.
unsafe impl Send for Userspace {}

impl Userspace {
    /// `socket` must outlive the datapath and be non-blocking.
    pub fn new(socket: &impl AsRawFd, metrics: Arc<Metrics>) -> Self {
        Userspace {
            fd: socket.as_raw_fd(),
            metrics,
            addrs: Vec::with_capacity(BATCH),
            iovs: Vec::with_capacity(BATCH),
            msgs: Vec::with_capacity(BATCH),
        }
    }

    fn send_batch(&mut self, relay: &Relay, first: usize) -> usize {
        let items = relay.outbox_ref().items();
        let chunk = &items[first..(first + BATCH).min(items.len())];
        self.addrs.clear();
        self.iovs.clear();
        self.msgs.clear();
        for t in chunk {
            let head = relay.outbox_ref().head(t);
            let body = relay.payload(t.payload);
            self.addrs.push(SockAddr::from(t.dst));
            self.iovs.push([
                libc::iovec {
                    iov_base: head.as_ptr() as *mut _,
                    iov_len: head.len(),
                },
                libc::iovec {
                    iov_base: body.as_ptr() as *mut _,
                    iov_len: body.len(),
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
            self.metrics.drop_packet("send_failed");
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

    fn flush(&mut self, relay: &mut Relay) {
        let total = relay.outbox_ref().items().len();
        let mut sent = 0;
        while sent < total {
            sent += self.send_batch(relay, sent);
        }
        relay.outbox().clear();
    }

    fn on_route(&mut self, _relay: &mut Relay, _event: &RouteEvent) {}
}
