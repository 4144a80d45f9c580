//! UDP sockets set up for batched I/O ([`super::mmsg`]), and waiting on them.

use socket2::{Domain, SockRef, Socket, Type};
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

/// A non-blocking UDP socket bound to `bind` (IPv4, or IPv6 only), with `buf_bytes` of send
/// and receive buffer (forced past the sysctl limits when root), IP_PKTINFO / IPV6_PKTINFO
/// on (receives report the destination address, sends can pick a source; an IPv6 socket
/// also binds freely, so it may send from any address a `local` route makes its own) and
/// kernel receive timestamps on (transit time then does not depend on when the reader
/// gets to it).
pub fn udp_socket(bind: impl Into<SocketAddr>, buf_bytes: i32) -> io::Result<OwnedFd> {
    let bind: SocketAddr = bind.into();
    let s = Socket::new(
        Domain::for_address(bind),
        Type::DGRAM.nonblocking().cloexec(),
        None,
    )?;
    let fd = s.as_raw_fd();
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if set_int(fd, libc::SOL_SOCKET, force, buf_bytes).is_err() {
            // Not root: as much as net.core.[rw]mem_max allow.
            let _ = set_int(fd, libc::SOL_SOCKET, plain, buf_bytes);
        }
    }
    if bind.is_ipv4() {
        set_int(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?;
    } else {
        set_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
        set_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?;
        // IPV6_PKTINFO takes a source only if it is an address of an interface, unless
        // the socket may bind freely (IPv4's IP_PKTINFO takes any local one).
        set_int(fd, libc::IPPROTO_IPV6, libc::IPV6_FREEBIND, 1)?;
    }
    set_int(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)?;
    s.bind(&bind.into())
        .map_err(|e| io::Error::new(e.kind(), format!("bind {bind}: {e}")))?;
    Ok(s.into())
}

/// The port a socket (of either family) is bound to.
pub fn local_port(fd: &impl AsFd) -> io::Result<u16> {
    SockRef::from(fd)
        .local_addr()?
        .as_socket()
        .map(|a| a.port())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IP socket"))
}

/// The IPv4 address a socket is bound to.
pub fn local_addr(fd: &impl AsFd) -> io::Result<SocketAddrV4> {
    SockRef::from(fd)
        .local_addr()?
        .as_socket_ipv4()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IPv4 socket"))
}

/// Waits until one of `fds` (at most 4) is readable or `timeout_ns` passes; with no fds,
/// just sleeps.
pub fn wait_readable(fds: &[RawFd], timeout_ns: u64) {
    let mut p = [libc::pollfd {
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
    // SAFETY: p holds min(fds.len(), 4) valid entries, the count passed.
    unsafe {
        libc::ppoll(
            p.as_mut_ptr(),
            fds.len().min(4) as u64,
            &ts,
            std::ptr::null(),
        )
    };
}

fn set_int(fd: RawFd, level: i32, opt: i32, val: i32) -> io::Result<()> {
    // SAFETY: val is a valid i32 option value of the size given.
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::time::{Duration, Instant};

    #[test]
    fn bound_socket_reports_its_address_and_waits_bounded() {
        let fd = udp_socket(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), 1 << 20).unwrap();
        let a = local_addr(&fd).unwrap();
        assert_eq!(*a.ip(), Ipv4Addr::LOCALHOST);
        assert_ne!(a.port(), 0);
        let t = Instant::now();
        wait_readable(&[fd.as_raw_fd()], 20_000_000);
        assert!(t.elapsed() >= Duration::from_millis(15));
        let e = udp_socket(a, 1 << 20).unwrap_err();
        assert!(e.to_string().contains(&a.to_string()), "{e}");
    }
}
