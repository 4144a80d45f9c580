//! Batched datagram I/O: many datagrams per `sendmmsg` / `recvmmsg` call.
//!
//! - [`Gather`] sends datagrams whose bytes the caller holds, each gathered from two slices
//!   (e.g. a header and a payload) without a copy: the daemon's way.
//! - [`SendBatch`] queues datagrams written one by one into an arena of its own, then
//!   sends them with a [`Gather`]: the benchmark's way.
//! - [`RecvBatch`] receives into slots of its own (IPv4 or IPv6), with each datagram's
//!   destination address (IP_PKTINFO / IPV6_PKTINFO) and kernel receive time
//!   (SO_TIMESTAMPNS): the daemon's and the benchmark's way.
//!
//! All keep their buffers between calls: in steady state they allocate nothing.

use socket2::SockAddr;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::ops::AddAssign;
use std::os::fd::RawFd;
use std::time::Instant;

/// The kernel's limit of messages per sendmmsg/recvmmsg call (UIO_MAXIOV).
pub const MAX_BATCH: usize = 1024;

/// Room for the control messages of one datagram (IP_PKTINFO or IPV6_PKTINFO, a receive
/// timestamp).
type Cmsgs = [u64; 16];

/// One datagram to send: `parts` one after the other, to `dst`.
#[derive(Debug, Clone, Copy)]
pub struct Datagram<'a> {
    pub dst: SocketAddr,
    /// Source address (IP_PKTINFO on IPv4 sockets, IPV6_PKTINFO on IPv6 ones: of the
    /// socket's family); `None`: the kernel picks as usual.
    pub src: Option<IpAddr>,
    pub parts: [&'a [u8]; 2],
}

impl<'a> From<(SocketAddr, [&'a [u8]; 2])> for Datagram<'a> {
    fn from((dst, parts): (SocketAddr, [&'a [u8]; 2])) -> Self {
        Datagram {
            dst,
            src: None,
            parts,
        }
    }
}

/// What sending did: datagrams the kernel took, datagrams skipped, system calls made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendResult {
    pub sent: u64,
    pub failed: u64,
    pub syscalls: u64,
}

impl AddAssign for SendResult {
    fn add_assign(&mut self, o: SendResult) {
        self.sent += o.sent;
        self.failed += o.failed;
        self.syscalls += o.syscalls;
    }
}

/// Sends borrowed datagrams with `sendmmsg`, up to its batch size per call.
pub struct Gather {
    batch: usize,
    addrs: Vec<SockAddr>,
    iovs: Vec<[libc::iovec; 2]>,
    cmsgs: Vec<Cmsgs>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers in `iovs` and `hdrs` are set and used within one `send` call,
// which empties both before it returns (see there); no pointer outlives the call.
unsafe impl Send for Gather {}

impl Gather {
    /// Room for `batch` datagrams per system call (1..=MAX_BATCH).
    pub fn new(batch: usize) -> Gather {
        let batch = batch.clamp(1, MAX_BATCH);
        Gather {
            batch,
            addrs: Vec::with_capacity(batch),
            iovs: Vec::with_capacity(batch),
            cmsgs: vec![[0; 16]; batch],
            hdrs: Vec::with_capacity(batch),
        }
    }

    /// Sends every datagram of `items` from `fd`, in order. A datagram the kernel refuses
    /// (socket buffer full, or an error for that one destination) is skipped and counted
    /// as failed: a live packet that cannot go now is worthless later, and the sender
    /// must not wait on its own load.
    ///
    /// `items` yields [`Datagram`]s or `(SocketAddr, [&[u8]; 2])` pairs.
    pub fn send<'a, D: Into<Datagram<'a>>>(
        &mut self,
        fd: RawFd,
        items: impl IntoIterator<Item = D>,
    ) -> SendResult {
        let mut items = items.into_iter().map(Into::into);
        let mut r = SendResult::default();
        loop {
            // Emptied first, so that nothing staged by an earlier call (one that panicked
            // half-way) is ever sent, and no pointer to the caller's buffers outlives this
            // call: the last pass stages nothing.
            self.iovs.clear();
            self.hdrs.clear();
            self.addrs.clear();
            for d in items.by_ref().take(self.batch) {
                self.stage(d);
            }
            if self.hdrs.is_empty() {
                return r;
            }
            self.point_headers();
            r += self.send_staged(fd);
        }
    }

    fn stage(&mut self, d: Datagram<'_>) {
        let iov = |b: &[u8]| libc::iovec {
            iov_base: b.as_ptr() as *mut _,
            iov_len: b.len(),
        };
        self.iovs.push([iov(d.parts[0]), iov(d.parts[1])]);
        self.addrs.push(SockAddr::from(d.dst));
        // A zeroed header has no control messages; one with a source gets IP(V6)_PKTINFO.
        // SAFETY: an all-zero mmsghdr is valid (null pointers, zero lengths).
        let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
        if let Some(src) = d.src {
            let buf = &mut self.cmsgs[self.hdrs.len()];
            h.msg_hdr.msg_control = buf.as_mut_ptr() as *mut _;
            h.msg_hdr.msg_controllen = size_of::<Cmsgs>();
            write_pktinfo(&mut h.msg_hdr, src);
        }
        self.hdrs.push(h);
    }

    /// Points each staged header at its address and iovecs, now that those vectors are
    /// filled (within capacity, so they no longer move).
    fn point_headers(&mut self) {
        for ((h, addr), iov) in self.hdrs.iter_mut().zip(&self.addrs).zip(&mut self.iovs) {
            h.msg_hdr.msg_name = addr.as_ptr() as *mut _;
            h.msg_hdr.msg_namelen = addr.len();
            h.msg_hdr.msg_iov = iov.as_mut_ptr();
            h.msg_hdr.msg_iovlen = 2;
        }
    }

    fn send_staged(&mut self, fd: RawFd) -> SendResult {
        let mut r = SendResult::default();
        let mut done = 0;
        while done < self.hdrs.len() {
            let rest = &mut self.hdrs[done..];
            // SAFETY: every header points at live buffers: our own vectors (unchanged
            // until we return) and the caller's slices (borrowed for the whole `send`).
            let n = unsafe { libc::sendmmsg(fd, rest.as_mut_ptr(), rest.len() as u32, 0) };
            r.syscalls += 1;
            if n <= 0 {
                r.failed += 1;
                done += 1;
            } else {
                r.sent += n as u64;
                done += n as usize;
            }
        }
        r
    }
}

/// Writes one IP_PKTINFO (IPv4) or IPV6_PKTINFO (IPv6) control message choosing `src` as
/// the source address into `h`'s control buffer, and trims `msg_controllen` to it.
fn write_pktinfo(h: &mut libc::msghdr, src: IpAddr) {
    // SAFETY: the control buffer is `Cmsgs`, 8-aligned and larger than
    // CMSG_SPACE(in6_pktinfo) (> in_pktinfo), so CMSG_FIRSTHDR is non-null and the data
    // fits.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(h);
        let len = match src {
            IpAddr::V4(src) => {
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(src).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                (*c).cmsg_level = libc::IPPROTO_IP;
                (*c).cmsg_type = libc::IP_PKTINFO;
                std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut libc::in_pktinfo, info);
                size_of::<libc::in_pktinfo>() as u32
            }
            IpAddr::V6(src) => {
                let info = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: src.octets(),
                    },
                    ipi6_ifindex: 0,
                };
                (*c).cmsg_level = libc::IPPROTO_IPV6;
                (*c).cmsg_type = libc::IPV6_PKTINFO;
                std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut libc::in6_pktinfo, info);
                size_of::<libc::in6_pktinfo>() as u32
            }
        };
        (*c).cmsg_len = libc::CMSG_LEN(len) as usize;
        h.msg_controllen = libc::CMSG_SPACE(len) as usize;
    }
}

#[derive(Clone, Copy)]
struct Queued {
    dst: SocketAddr,
    src: Option<IpAddr>,
    start: usize,
    end: usize,
}

/// Datagrams queued for one `sendmmsg` flush, their bytes in one arena; both are reused
/// between flushes. Counts what it sent over its life.
pub struct SendBatch {
    arena: Vec<u8>,
    queued: Vec<Queued>,
    gather: Gather,
    pub sent: u64,
    pub failed: u64,
    pub syscalls: u64,
}

impl Default for SendBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl SendBatch {
    pub fn new() -> Self {
        SendBatch {
            arena: Vec::with_capacity(1 << 20),
            queued: Vec::with_capacity(MAX_BATCH),
            gather: Gather::new(MAX_BATCH),
            sent: 0,
            failed: 0,
            syscalls: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.queued.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Queues one datagram to `dst` (from `src`, see [`Datagram::src`]) whose bytes
    /// `write` appends to the buffer it is given; flushes first when the batch is full.
    pub fn push(
        &mut self,
        fd: RawFd,
        dst: impl Into<SocketAddr>,
        src: Option<IpAddr>,
        write: impl FnOnce(&mut Vec<u8>),
    ) {
        if self.queued.len() == MAX_BATCH {
            self.flush(fd);
        }
        let start = self.arena.len();
        write(&mut self.arena);
        self.queued.push(Queued {
            dst: dst.into(),
            src,
            start,
            end: self.arena.len(),
        });
    }

    /// Sends everything queued (see [`Gather::send`] for what a refused datagram does).
    pub fn flush(&mut self, fd: RawFd) {
        let arena = &self.arena;
        let r = self.gather.send(
            fd,
            self.queued.iter().map(|q| Datagram {
                dst: q.dst,
                src: q.src,
                parts: [&arena[q.start..q.end], &[]],
            }),
        );
        self.sent += r.sent;
        self.failed += r.failed;
        self.syscalls += r.syscalls;
        self.queued.clear();
        self.arena.clear();
    }
}

/// Bytes of one receive slot: larger than any datagram of an Ethernet path.
pub const RECV_SLOT: usize = 2048;

/// Buffers for `recvmmsg`, reused between calls.
pub struct RecvBatch {
    bufs: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    cmsgs: Vec<Cmsgs>,
    hdrs: Vec<libc::mmsghdr>,
    /// Datagrams the last `recv` got.
    count: usize,
    pub syscalls: u64,
}

// SAFETY: the raw pointers in `iovs` and `hdrs` point into the batch's own heap buffers,
// which do not move with it, and are set afresh by every `recv` before use.
unsafe impl Send for RecvBatch {}

/// One received datagram.
pub struct Received<'a> {
    pub src: SocketAddr,
    /// The address the datagram was sent to (IP_PKTINFO / IPV6_PKTINFO).
    pub dst: Option<IpAddr>,
    pub data: &'a [u8],
    /// Longer than a slot: `data` holds its first RECV_SLOT bytes.
    pub truncated: bool,
    /// Kernel receive time (CLOCK_REALTIME ns, SO_TIMESTAMPNS), when the kernel gave one.
    pub rx_realtime_ns: Option<u64>,
}

impl RecvBatch {
    /// Room for `slots` datagrams per call.
    pub fn new(slots: usize) -> Self {
        // SAFETY: zeroed plain-C structs are valid placeholders, set up in `recv`.
        let (name, hdr) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
        let iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        RecvBatch {
            bufs: vec![0; slots * RECV_SLOT],
            names: vec![name; slots],
            iovs: vec![iov; slots],
            cmsgs: vec![[0; 16]; slots],
            hdrs: vec![hdr; slots],
            count: 0,
            syscalls: 0,
        }
    }

    /// Receives up to the batch size without blocking; 0 when nothing is queued (or on an
    /// error: see `try_recv`).
    pub fn recv(&mut self, fd: RawFd) -> usize {
        self.try_recv(fd).unwrap_or(0)
    }

    /// Receives up to the batch size without blocking: how many, or the error (WouldBlock
    /// when nothing is queued).
    pub fn try_recv(&mut self, fd: RawFd) -> std::io::Result<usize> {
        let slots = self.hdrs.len();
        for i in 0..slots {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i * RECV_SLOT..].as_mut_ptr() as *mut _,
                iov_len: RECV_SLOT,
            };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = &mut self.names[i] as *mut _ as *mut _;
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.cmsgs[i].as_mut_ptr() as *mut _;
            h.msg_controllen = size_of::<Cmsgs>();
            h.msg_flags = 0;
        }
        // SAFETY: every header points at live buffers of the stated sizes.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                slots as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        self.syscalls += 1;
        self.count = n.max(0) as usize;
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(self.count)
    }

    /// Receives batch after batch until the socket is empty or `max_calls` calls were
    /// made; `f` gets each batch (see `received`) with the time it was read.
    pub fn drain(&mut self, fd: RawFd, max_calls: usize, mut f: impl FnMut(Instant, &Self)) {
        for _ in 0..max_calls {
            if self.recv(fd) == 0 {
                break;
            }
            f(Instant::now(), self);
        }
    }

    /// The datagrams of the last `recv`.
    pub fn received(&self) -> impl Iterator<Item = Received<'_>> {
        (0..self.count).map(|i| self.get(i))
    }

    /// Datagram `i` of the last `recv` (`i` below what it returned).
    pub fn get(&self, i: usize) -> Received<'_> {
        let h = &self.hdrs[i];
        let len = (h.msg_len as usize).min(RECV_SLOT);
        let mut dst = None;
        let mut rx_realtime_ns = None;
        // SAFETY: the kernel filled msg_control/msg_controllen; the CMSG macros walk it.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
            while !c.is_null() {
                if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_PKTINFO {
                    let info: libc::in_pktinfo =
                        std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::in_pktinfo);
                    dst = Some(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)).into());
                } else if (*c).cmsg_level == libc::IPPROTO_IPV6
                    && (*c).cmsg_type == libc::IPV6_PKTINFO
                {
                    let info: libc::in6_pktinfo =
                        std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::in6_pktinfo);
                    dst = Some(Ipv6Addr::from(info.ipi6_addr.s6_addr).into());
                } else if (*c).cmsg_level == libc::SOL_SOCKET
                    && (*c).cmsg_type == libc::SCM_TIMESTAMPNS
                {
                    let ts: libc::timespec =
                        std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::timespec);
                    rx_realtime_ns = Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
                }
                c = libc::CMSG_NXTHDR(&h.msg_hdr, c);
            }
        }
        // SAFETY: the kernel wrote a socket address of msg_namelen bytes into the storage.
        let src = unsafe { SockAddr::new(self.names[i], h.msg_hdr.msg_namelen) }
            .as_socket()
            .unwrap_or(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)));
        Received {
            src,
            dst,
            data: &self.bufs[i * RECV_SLOT..i * RECV_SLOT + len],
            truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            rx_realtime_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::udp::{udp_socket, wait_readable};
    use std::os::fd::{AsRawFd, OwnedFd};

    fn socket(ip: Ipv4Addr) -> (OwnedFd, SocketAddrV4) {
        let fd = udp_socket(SocketAddrV4::new(ip, 0), 1 << 20).unwrap();
        let a = crate::os::udp::local_addr(&fd).unwrap();
        (fd, a)
    }

    /// Everything `rx` receives within a second, until `want` datagrams: (source,
    /// destination, bytes).
    fn receive(rx: &OwnedFd, want: usize) -> Vec<(SocketAddr, Option<IpAddr>, Vec<u8>)> {
        let mut b = RecvBatch::new(64);
        let mut out = Vec::new();
        let deadline = Instant::now() + std::time::Duration::from_secs(1);
        while out.len() < want && Instant::now() < deadline {
            b.drain(rx.as_raw_fd(), 4, |_, batch| {
                for d in batch.received() {
                    assert!(!d.truncated);
                    assert!(d.rx_realtime_ns.is_some(), "SO_TIMESTAMPNS is on");
                    out.push((d.src, d.dst, d.data.to_vec()));
                }
            });
            wait_readable(&[rx.as_raw_fd()], 10_000_000);
        }
        out
    }

    #[test]
    fn gather_sends_header_and_payload_as_one_datagram_without_growing() {
        let (rx, to) = socket(Ipv4Addr::LOCALHOST);
        let (tx, from) = socket(Ipv4Addr::LOCALHOST);
        let heads: Vec<[u8; 4]> = (0..10u32).map(|i| i.to_be_bytes()).collect();
        let body = vec![0x47u8; 1316];
        // A batch of 4: 10 datagrams take three calls.
        let mut g = Gather::new(4);
        let caps = |g: &Gather| (g.addrs.capacity(), g.iovs.capacity(), g.hdrs.capacity());
        let before = caps(&g);
        let items = heads
            .iter()
            .map(|h| (SocketAddr::V4(to), [&h[..], &body[..]]));
        let r = g.send(tx.as_raw_fd(), items);
        assert_eq!(
            r,
            SendResult {
                sent: 10,
                failed: 0,
                syscalls: 3
            }
        );
        assert_eq!(caps(&g), before, "no buffer grew");
        assert!(g.hdrs.is_empty() && g.iovs.is_empty(), "no pointer kept");
        let got = receive(&rx, 10);
        assert_eq!(got.len(), 10);
        for (i, (src, dst, bytes)) in got.iter().enumerate() {
            assert_eq!(*src, SocketAddr::V4(from));
            assert_eq!(*dst, Some(Ipv4Addr::LOCALHOST.into()));
            assert_eq!(bytes[..4], (i as u32).to_be_bytes());
            assert_eq!(bytes[4..], body[..]);
        }
        // Nothing to send: no system call.
        let none: [Datagram; 0] = [];
        assert_eq!(g.send(tx.as_raw_fd(), none), SendResult::default());
    }

    #[test]
    fn a_refused_datagram_is_skipped_and_counted() {
        let (rx, to) = socket(Ipv4Addr::LOCALHOST);
        let (tx, _) = socket(Ipv4Addr::LOCALHOST);
        let (ok, big) = ([1u8; 8], vec![2u8; 70_000]); // over UDP's 65,507-byte limit
        let items = [&ok[..], &big[..], &ok[..]].map(|b| (SocketAddr::V4(to), [b, &[][..]]));
        let r = Gather::new(8).send(tx.as_raw_fd(), items);
        assert_eq!((r.sent, r.failed), (2, 1));
        assert_eq!(receive(&rx, 2).len(), 2);
    }

    #[test]
    fn send_batch_picks_the_source_address_per_datagram() {
        let (rx, to) = socket(Ipv4Addr::UNSPECIFIED);
        let (tx, _) = socket(Ipv4Addr::UNSPECIFIED);
        let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, to.port());
        let mut b = SendBatch::new();
        for i in 0..3u8 {
            let src = Ipv4Addr::new(127, 0, 1, 1 + i);
            b.push(tx.as_raw_fd(), to, Some(src.into()), |out| {
                out.extend([i; 5])
            });
        }
        b.push(tx.as_raw_fd(), to, None, |out| out.extend([9; 2]));
        assert_eq!(b.len(), 4);
        b.flush(tx.as_raw_fd());
        assert!(b.is_empty());
        assert_eq!((b.sent, b.failed, b.syscalls), (4, 0, 1));
        let got = receive(&rx, 4);
        let srcs: Vec<std::net::IpAddr> = got.iter().map(|(s, _, _)| s.ip()).collect();
        assert_eq!(
            srcs,
            [
                Ipv4Addr::new(127, 0, 1, 1),
                Ipv4Addr::new(127, 0, 1, 2),
                Ipv4Addr::new(127, 0, 1, 3),
                Ipv4Addr::LOCALHOST
            ]
        );
        assert_eq!(got[1].2, [1; 5]);
        assert_eq!(got[3].2, [9; 2]);
    }

    #[test]
    fn send_batch_flushes_itself_when_full() {
        // Whether the receiver keeps up does not matter: UDP sends do not wait for it.
        let (_rx, to) = socket(Ipv4Addr::LOCALHOST);
        let (tx, _) = socket(Ipv4Addr::LOCALHOST);
        let mut b = SendBatch::new();
        for i in 0..MAX_BATCH + 1 {
            b.push(tx.as_raw_fd(), to, None, |out| out.push(i as u8));
        }
        assert_eq!((b.len(), b.sent, b.syscalls), (1, MAX_BATCH as u64, 1));
        b.flush(tx.as_raw_fd());
        assert_eq!((b.sent, b.failed), (MAX_BATCH as u64 + 1, 0));
    }

    /// The daemon's SRT socket may be IPv6: sources come back as they are.
    #[test]
    fn an_ipv6_socket_receives_with_its_sources() {
        use std::net::{Ipv6Addr, UdpSocket};
        let Ok(rx) = UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)) else {
            return eprintln!("no IPv6 loopback here: skipped");
        };
        let tx = UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).unwrap();
        for i in 0..3u8 {
            tx.send_to(&[i; 20], rx.local_addr().unwrap()).unwrap();
        }
        let mut b = RecvBatch::new(8);
        wait_readable(&[rx.as_raw_fd()], 1_000_000_000);
        assert_eq!(b.try_recv(rx.as_raw_fd()).unwrap(), 3);
        for (i, d) in b.received().enumerate() {
            assert_eq!(d.src, tx.local_addr().unwrap());
            assert_eq!(d.data, [i as u8; 20]);
        }
        let e = b.try_recv(rx.as_raw_fd()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    }

    /// The benchmark's IPv6 viewers: one socket, a source picked per datagram
    /// (IPV6_PKTINFO), the destination reported on receive.
    #[test]
    fn ipv6_sources_are_picked_and_destinations_reported() {
        use std::net::Ipv6Addr;
        let any = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0);
        let (Ok(rx), Ok(tx)) = (udp_socket(any, 1 << 20), udp_socket(any, 1 << 20)) else {
            return eprintln!("no IPv6 here: skipped");
        };
        let port = crate::os::udp::local_port(&rx).unwrap();
        let to = SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port);
        let mut b = SendBatch::new();
        b.push(
            tx.as_raw_fd(),
            to,
            Some(Ipv6Addr::LOCALHOST.into()),
            |out| out.extend([1; 5]),
        );
        b.push(tx.as_raw_fd(), to, None, |out| out.extend([2; 5]));
        b.flush(tx.as_raw_fd());
        assert_eq!((b.sent, b.failed), (2, 0));
        let got = receive(&rx, 2);
        assert_eq!(got.len(), 2);
        for (src, dst, _) in &got {
            assert_eq!(src.ip(), Ipv6Addr::LOCALHOST);
            assert_eq!(*dst, Some(Ipv6Addr::LOCALHOST.into()));
        }
        // An address of no interface: refused without IPV6_FREEBIND, sent with it (the
        // benchmark's `local` route makes such addresses its own).
        let odd: IpAddr = "fd88:128::7".parse().unwrap();
        b.push(tx.as_raw_fd(), to, Some(odd), |out| out.extend([3; 5]));
        b.flush(tx.as_raw_fd());
        assert_eq!(b.failed, 0, "IPV6_FREEBIND lets the source through");
    }

    #[test]
    fn a_long_datagram_is_truncated_to_the_slot() {
        let (rx, to) = socket(Ipv4Addr::LOCALHOST);
        let (tx, _) = socket(Ipv4Addr::LOCALHOST);
        let long = vec![3u8; RECV_SLOT + 100];
        Gather::new(1).send(tx.as_raw_fd(), [(SocketAddr::V4(to), [&long[..], &[][..]])]);
        let mut b = RecvBatch::new(4);
        wait_readable(&[rx.as_raw_fd()], 1_000_000_000);
        assert_eq!(b.recv(rx.as_raw_fd()), 1);
        let d = b.get(0);
        assert!(d.truncated);
        assert_eq!(d.data.len(), RECV_SLOT);
    }
}
