//! The userspace datapath: every datagram through the UDP socket, gathered with `sendmmsg`
//! (header from the outbox arena + payload from the stream's ring, no copy).

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
}

impl Userspace {
    /// `socket` must outlive the datapath and be non-blocking.
    pub fn new(socket: &impl AsRawFd, metrics: Arc<Metrics>) -> Self {
        Userspace {
            fd: socket.as_raw_fd(),
            metrics,
        }
    }
}

impl Datapath for Userspace {
    fn kind(&self) -> &'static str {
        "userspace"
    }

    fn flush(&mut self, relay: &mut Relay) {
        let items = relay.outbox().items().to_vec();
        let mut sent = 0;
        while sent < items.len() {
            let chunk = &items[sent..(sent + BATCH).min(items.len())];
            let addrs: Vec<SockAddr> = chunk.iter().map(|t| SockAddr::from(t.dst)).collect();
            let mut iovs: Vec<[libc::iovec; 2]> = Vec::with_capacity(chunk.len());
            {
                let out = &*relay;
                for t in chunk {
                    let head = out.outbox_ref().head(t);
                    let body = out.payload(t.payload);
                    iovs.push([
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
            }
            let mut msgs: Vec<libc::mmsghdr> = iovs
                .iter_mut()
                .zip(&addrs)
                .map(|(iov, addr)| {
                    // SAFETY: a zeroed msghdr is valid; the pointers set below stay alive
                    // (iovs, addrs, the relay's buffers) until sendmmsg returns.
                    let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    h.msg_hdr.msg_name = addr.as_ptr() as *mut _;
                    h.msg_hdr.msg_namelen = addr.len();
                    h.msg_hdr.msg_iov = iov.as_mut_ptr();
                    h.msg_hdr.msg_iovlen = 2;
                    h
                })
                .collect();
            // SAFETY: msgs points to msgs.len() initialised headers (see above).
            let n = unsafe { libc::sendmmsg(self.fd, msgs.as_mut_ptr(), msgs.len() as u32, 0) };
            if n <= 0 {
                // Socket buffer full (or a per-destination error): live data that cannot go now
                // is worthless later, so skip one datagram and count it rather than wait.
                self.metrics.drop_packet("send_failed");
                sent += 1;
            } else {
                sent += n as usize;
            }
        }
        relay.outbox().clear();
    }

    fn on_route(&mut self, _relay: &mut Relay, _event: &RouteEvent) {}
}
