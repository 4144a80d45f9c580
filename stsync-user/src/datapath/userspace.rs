//! The userspace datapath: every datagram through the UDP socket, gathered with `sendmmsg`
//! (header from the outbox arena + payload from the stream's ring, no copy). Its buffers are
//! kept between sends, so steady state allocates nothing.

use super::{Datapath, DatapathStats};
use crate::os::mmsg::Gather;
use crate::relay::Transmits;
use std::os::fd::{AsRawFd, RawFd};

const BATCH: usize = 64;

pub struct Userspace {
    fd: RawFd,
    gather: Gather,
    send_failures: u64,
}

impl Userspace {
    /// `socket` must outlive the datapath and be non-blocking.
    pub fn new(socket: &impl AsRawFd) -> Self {
        Userspace {
            fd: socket.as_raw_fd(),
            gather: Gather::new(BATCH),
            send_failures: 0,
        }
    }
}

impl Datapath for Userspace {
    fn kind(&self) -> &'static str {
        "userspace"
    }

    fn send(&mut self, batch: &Transmits<'_>) {
        let datagrams = batch.iter().map(|d| (d.dst, [d.head, d.payload]));
        // A datagram the socket refuses is skipped and counted: a live packet that cannot
        // go now is worthless later.
        self.send_failures += self.gather.send(self.fd, datagrams).failed;
    }

    fn stats(&self) -> DatapathStats {
        DatapathStats {
            kind: self.kind(),
            send_failures: self.send_failures,
            kernel: None,
            streams_without_kernel_row: 0,
        }
    }
}
