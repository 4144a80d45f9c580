//! Thin OS helpers: network namespaces, batched UDP (sendmmsg/recvmmsg with IP_PKTINFO),
//! clocks and /proc accounting.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// CLOCK_REALTIME − CLOCK_MONOTONIC in ns: converts kernel receive timestamps (realtime)
/// to the monotonic clock of the payloads.
pub fn realtime_offset_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let a = mono_ns();
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    let b = mono_ns();
    let real = ts.tv_sec * 1_000_000_000 + ts.tv_nsec;
    real - ((a + b) / 2) as i64
}

/// CLOCK_MONOTONIC in nanoseconds (the clock embedded in every payload).
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Runs `f` with this thread inside network namespace `name` (`/var/run/netns/<name>`), then
/// returns to the namespace it came from. Sockets created inside stay in that namespace.
pub fn in_netns<T>(name: Option<&str>, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let Some(name) = name else { return f() };
    let home = File::open("/proc/thread-self/ns/net")?;
    let target = File::open(format!("/var/run/netns/{name}"))
        .map_err(|e| io::Error::new(e.kind(), format!("network namespace {name}: {e}")))?;
    // SAFETY: setns on valid namespace fds; only this thread changes namespace.
    if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let out = f();
    // SAFETY: as above, back to where we were.
    if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        panic!(
            "cannot return to the original network namespace: {}",
            io::Error::last_os_error()
        );
    }
    out
}

fn setopt(fd: RawFd, level: i32, opt: i32, val: i32) -> io::Result<()> {
    // SAFETY: val is a valid i32 option value of the given size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            &val as *const i32 as *const _,
            std::mem::size_of::<i32>() as u32,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn from_sockaddr(s: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(s.sin_addr.s_addr)),
        u16::from_be(s.sin_port),
    )
}

/// A non-blocking IPv4 UDP socket bound to `bind`, with large buffers (forced when root) and
/// IP_PKTINFO on (so receives report the destination address and sends can pick a source).
pub fn udp_socket(bind: SocketAddrV4, buf_bytes: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket we own.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if setopt(fd, libc::SOL_SOCKET, force, buf_bytes).is_err() {
            let _ = setopt(fd, libc::SOL_SOCKET, plain, buf_bytes);
        }
    }
    setopt(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?;
    // Kernel receive timestamps: transit time does not depend on when we get to read.
    setopt(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)?;
    let sa = sockaddr(bind);
    // SAFETY: sa is a valid sockaddr_in.
    let r = unsafe {
        libc::bind(
            fd,
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("bind {bind}: {e}")));
    }
    Ok(owned)
}

pub fn local_addr(fd: RawFd) -> io::Result<SocketAddrV4> {
    // SAFETY: zeroed sockaddr_in is valid; getsockname writes at most len bytes.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as u32;
    if unsafe { libc::getsockname(fd, &mut sa as *mut _ as *mut libc::sockaddr, &mut len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(from_sockaddr(&sa))
}

const CMSG_BUF: usize = 128;

#[derive(Clone, Copy)]
struct Item {
    dst: SocketAddrV4,
    src: Option<Ipv4Addr>,
    off: u32,
    len: u32,
}

/// Datagrams queued for one `sendmmsg` flush: bytes in one arena, reused between flushes.
pub struct SendBatch {
    arena: Vec<u8>,
    items: Vec<Item>,
    names: Vec<libc::sockaddr_in>,
    iovs: Vec<libc::iovec>,
    ctrl: Vec<[u64; CMSG_BUF / 8]>,
    hdrs: Vec<libc::mmsghdr>,
    pub sent: u64,
    pub failed: u64,
    pub syscalls: u64,
}

// SAFETY: the raw pointers in the header vectors point into the batch's own heap buffers
// and are rebuilt by every flush/recv before use; between calls they are never read, so
// moving the batch to another thread is sound.
unsafe impl Send for SendBatch {}
// SAFETY: as for SendBatch.
unsafe impl Send for RecvBatch {}

/// The kernel's limit of messages per sendmmsg/recvmmsg call.
pub const MAX_BATCH: usize = 1024;

impl Default for SendBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl SendBatch {
    pub fn new() -> Self {
        SendBatch {
            arena: Vec::with_capacity(1 << 20),
            items: Vec::with_capacity(MAX_BATCH),
            names: Vec::with_capacity(MAX_BATCH),
            iovs: Vec::with_capacity(MAX_BATCH),
            ctrl: vec![[0; CMSG_BUF / 8]; MAX_BATCH],
            hdrs: Vec::with_capacity(MAX_BATCH),
            sent: 0,
            failed: 0,
            syscalls: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Queues one datagram written by `write` (which appends to the given buffer); flushes
    /// first when the batch is full.
    pub fn push(
        &mut self,
        fd: RawFd,
        dst: SocketAddrV4,
        src: Option<Ipv4Addr>,
        write: impl FnOnce(&mut Vec<u8>),
    ) {
        if self.items.len() == MAX_BATCH {
            self.flush(fd);
        }
        let off = self.arena.len();
        write(&mut self.arena);
        self.items.push(Item {
            dst,
            src,
            off: off as u32,
            len: (self.arena.len() - off) as u32,
        });
    }

    /// Sends everything queued. A datagram the kernel refuses (buffer full) is dropped and
    /// counted: the load must not block on itself.
    pub fn flush(&mut self, fd: RawFd) {
        if self.items.is_empty() {
            return;
        }
        self.names.clear();
        self.iovs.clear();
        self.hdrs.clear();
        for it in &self.items {
            self.names.push(sockaddr(it.dst));
            self.iovs.push(libc::iovec {
                iov_base: self.arena[it.off as usize..].as_ptr() as *mut _,
                iov_len: it.len as usize,
            });
        }
        for (i, it) in self.items.iter().enumerate() {
            // SAFETY: zeroed mmsghdr is valid; every pointer set here points into vectors
            // that are not touched again until sendmmsg has returned.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = &mut self.names[i] as *mut _ as *mut _;
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            if let Some(src) = it.src {
                let buf = &mut self.ctrl[i];
                h.msg_hdr.msg_control = buf.as_mut_ptr() as *mut _;
                // SAFETY: CMSG_SPACE of a small struct; the buffer is CMSG_BUF bytes.
                let space =
                    unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::in_pktinfo>() as u32) };
                h.msg_hdr.msg_controllen = space as usize;
                // SAFETY: the control buffer is large and aligned enough for one cmsg.
                unsafe {
                    let c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                    (*c).cmsg_level = libc::IPPROTO_IP;
                    (*c).cmsg_type = libc::IP_PKTINFO;
                    (*c).cmsg_len =
                        libc::CMSG_LEN(std::mem::size_of::<libc::in_pktinfo>() as u32) as usize;
                    let info = libc::in_pktinfo {
                        ipi_ifindex: 0,
                        ipi_spec_dst: libc::in_addr {
                            s_addr: u32::from(src).to_be(),
                        },
                        ipi_addr: libc::in_addr { s_addr: 0 },
                    };
                    std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut libc::in_pktinfo, info);
                }
            }
            self.hdrs.push(h);
        }
        let mut done = 0;
        while done < self.hdrs.len() {
            let rest = &mut self.hdrs[done..];
            // SAFETY: rest holds initialised headers whose buffers are alive (see above).
            let n = unsafe { libc::sendmmsg(fd, rest.as_mut_ptr(), rest.len() as u32, 0) };
            self.syscalls += 1;
            if n <= 0 {
                // Full buffer or a per-destination error: skip this datagram.
                self.failed += 1;
                done += 1;
            } else {
                self.sent += n as u64;
                done += n as usize;
            }
        }
        self.items.clear();
        self.arena.clear();
    }
}

pub const RECV_SLOT: usize = 2048;

/// Buffers for `recvmmsg`, reused between calls.
pub struct RecvBatch {
    bufs: Vec<u8>,
    names: Vec<libc::sockaddr_in>,
    iovs: Vec<libc::iovec>,
    ctrl: Vec<[u64; CMSG_BUF / 8]>,
    hdrs: Vec<libc::mmsghdr>,
    pub syscalls: u64,
}

pub struct Received<'a> {
    pub src: SocketAddrV4,
    /// The address the datagram was sent to (from IP_PKTINFO).
    pub dst: Option<Ipv4Addr>,
    pub data: &'a [u8],
    pub truncated: bool,
    /// Kernel receive time (CLOCK_REALTIME ns, SO_TIMESTAMPNS), when the kernel gave one.
    pub rx_realtime_ns: Option<u64>,
}

impl RecvBatch {
    pub fn new(slots: usize) -> Self {
        // SAFETY: zeroed plain-C structs are valid placeholders, set up in `recv`.
        let zero_name: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let zero_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        RecvBatch {
            bufs: vec![0; slots * RECV_SLOT],
            names: vec![zero_name; slots],
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                slots
            ],
            ctrl: vec![[0; CMSG_BUF / 8]; slots],
            hdrs: vec![zero_hdr; slots],
            syscalls: 0,
        }
    }

    /// Receives up to the batch size without blocking; 0 when nothing is queued.
    pub fn recv(&mut self, fd: RawFd) -> usize {
        let slots = self.hdrs.len();
        for i in 0..slots {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i * RECV_SLOT..].as_mut_ptr() as *mut _,
                iov_len: RECV_SLOT,
            };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = &mut self.names[i] as *mut _ as *mut _;
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.ctrl[i].as_mut_ptr() as *mut _;
            h.msg_controllen = CMSG_BUF;
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
        n.max(0) as usize
    }

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
                    dst = Some(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)));
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
        Received {
            src: from_sockaddr(&self.names[i]),
            dst,
            data: &self.bufs[i * RECV_SLOT..i * RECV_SLOT + len],
            truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            rx_realtime_ns,
        }
    }
}

/// Waits until one of `fds` is readable or `timeout_ns` passes.
pub fn wait_readable(fds: &[RawFd], timeout_ns: u64) {
    let mut p: [libc::pollfd; 4] = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; 4];
    for (slot, fd) in p.iter_mut().zip(fds) {
        slot.fd = *fd;
        slot.events = libc::POLLIN;
    }
    let ts = libc::timespec {
        tv_sec: (timeout_ns / 1_000_000_000) as i64,
        tv_nsec: (timeout_ns % 1_000_000_000) as i64,
    };
    // SAFETY: p holds fds.len() valid entries (the rest are ignored, fd -1).
    unsafe {
        libc::ppoll(
            p.as_mut_ptr(),
            fds.len().min(4) as u64,
            &ts,
            std::ptr::null(),
        )
    };
}

// ---------------------------------------------------------------------------------------
// /proc accounting

pub fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as u64
}

/// (utime + stime in clock ticks, flags, starttime) from /proc/<pid>/stat.
pub fn proc_stat(pid: &str) -> Option<(u64, u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime 15, flags 9, starttime 22.
    let get = |field: usize| f.get(field - 3).and_then(|v| v.parse::<u64>().ok());
    Some((get(14)? + get(15)?, get(9)?, get(22)?))
}

/// (utime, stime) in clock ticks from /proc/<pid>/stat. With tick-based accounting, softirq
/// work that runs while the process is current (e.g. packets its own sends set off) is in
/// its stime as well as in /proc/stat's softirq.
pub fn proc_user_sys(pid: &str) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |field: usize| f.get(field - 3).and_then(|v| v.parse::<u64>().ok());
    Some((get(14)?, get(15)?))
}

pub fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    proc_stat(&pid.to_string()).map(|(t, _, _)| t)
}

pub fn self_cpu_ticks() -> u64 {
    proc_stat("self").map_or(0, |(t, _, _)| t)
}

/// VmRSS of a process in KiB.
pub fn proc_rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The aggregate `cpu` line of /proc/stat, in ticks.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTimes {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl CpuTimes {
    pub fn read() -> CpuTimes {
        let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let line = s.lines().find(|l| l.starts_with("cpu ")).unwrap_or("");
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        let g = |i: usize| v.get(i).copied().unwrap_or(0);
        CpuTimes {
            user: g(0),
            nice: g(1),
            system: g(2),
            idle: g(3),
            iowait: g(4),
            irq: g(5),
            softirq: g(6),
            steal: g(7),
        }
    }

    /// Everything but idle and iowait.
    pub fn busy(&self) -> u64 {
        self.user + self.nice + self.system + self.irq + self.softirq + self.steal
    }
}

/// Packets the kernel dropped because a CPU's input backlog was full (netdev_max_backlog),
/// all CPUs: column 2 of /proc/net/softnet_stat. Machine-wide (veth delivery goes through
/// these backlogs in every namespace).
pub fn softnet_dropped() -> u64 {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|h| u64::from_str_radix(h, 16).ok())
        .sum()
}

const PF_KTHREAD: u64 = 0x0020_0000;

/// utime+stime of every user-space process, keyed by (pid, starttime), for subtracting the
/// machine's other activity from system-wide deltas.
pub fn all_user_procs() -> std::collections::HashMap<(u32, u64), u64> {
    let mut out = std::collections::HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Ok(pid) = name.parse::<u32>() else {
            continue;
        };
        if let Some((ticks, flags, start)) = proc_stat(name) {
            if flags & PF_KTHREAD == 0 {
                out.insert((pid, start), ticks);
            }
        }
    }
    out
}
