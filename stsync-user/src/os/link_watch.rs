//! Network interfaces coming up and going away, as the kernel announces them (rtnetlink,
//! `RTMGRP_LINK`): containers and VPNs add interfaces at any time, and the kernel path
//! attaches to each one that comes up.
//!
//! A non-blocking socket the datapath reads on its own schedule; nothing here blocks.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A change of one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// The interface is up (announced on every change while it is).
    Up(String),
    /// The interface was removed.
    Gone(String),
}

/// The rtnetlink socket subscribed to link changes of this network namespace.
pub struct LinkWatch {
    fd: OwnedFd,
}

const NLMSG_HDR: usize = 16;
const IFINFO: usize = 16;
const RTA_HDR: usize = 4;
const IFLA_IFNAME: u16 = 3;

impl LinkWatch {
    pub fn open() -> io::Result<LinkWatch> {
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an all-zero sockaddr_nl is valid; the fields are set below.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        sa.nl_groups = libc::RTMGRP_LINK as u32;
        // SAFETY: bind with a sockaddr_nl of the size given.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(LinkWatch { fd })
    }

    /// The changes announced since the last call (none: one syscall).
    pub fn events(&mut self) -> Vec<LinkEvent> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            // SAFETY: recv into our buffer.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                // EAGAIN: nothing more. ENOBUFS (the kernel dropped announcements): the
                // next ones still come; the interfaces up at start were attached anyway.
                return out;
            }
            parse(&buf[..n as usize], &mut out);
        }
    }
}

/// The link announcements in one netlink datagram.
fn parse(mut b: &[u8], out: &mut Vec<LinkEvent>) {
    while b.len() >= NLMSG_HDR {
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let kind = u16::from_ne_bytes([b[4], b[5]]);
        if len < NLMSG_HDR || len > b.len() {
            return;
        }
        let msg = &b[NLMSG_HDR..len];
        if (kind == libc::RTM_NEWLINK || kind == libc::RTM_DELLINK) && msg.len() >= IFINFO {
            let flags = u32::from_ne_bytes([msg[8], msg[9], msg[10], msg[11]]);
            if let Some(name) = ifname(&msg[IFINFO..]) {
                if kind == libc::RTM_DELLINK {
                    out.push(LinkEvent::Gone(name));
                } else if flags & libc::IFF_UP as u32 != 0 {
                    out.push(LinkEvent::Up(name));
                }
            }
        }
        b = &b[align4(len).min(b.len())..];
    }
}

/// The interface name among a link message's attributes.
fn ifname(mut a: &[u8]) -> Option<String> {
    while a.len() >= RTA_HDR {
        let len = u16::from_ne_bytes([a[0], a[1]]) as usize;
        let kind = u16::from_ne_bytes([a[2], a[3]]);
        if len < RTA_HDR || len > a.len() {
            return None;
        }
        if kind == IFLA_IFNAME {
            let v = &a[RTA_HDR..len];
            let v = v.split(|&c| c == 0).next().unwrap_or(v);
            return std::str::from_utf8(v).ok().map(str::to_string);
        }
        a = &a[align4(len).min(a.len())..];
    }
    None
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One link message as the kernel writes it: header, ifinfomsg, IFLA_IFNAME.
    fn msg(kind: u16, flags: u32, name: &str) -> Vec<u8> {
        let mut attr = Vec::new();
        let alen = RTA_HDR + name.len() + 1;
        attr.extend_from_slice(&(alen as u16).to_ne_bytes());
        attr.extend_from_slice(&IFLA_IFNAME.to_ne_bytes());
        attr.extend_from_slice(name.as_bytes());
        attr.push(0);
        attr.resize(align4(attr.len()), 0);
        let mut info = vec![0u8; IFINFO];
        info[8..12].copy_from_slice(&flags.to_ne_bytes());
        let len = NLMSG_HDR + IFINFO + attr.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&info);
        m.extend_from_slice(&attr);
        m
    }

    #[test]
    fn link_messages_are_read_and_malformed_ones_ignored() {
        let up = libc::IFF_UP as u32;
        let mut d = msg(libc::RTM_NEWLINK, up, "veth7");
        d.extend(msg(libc::RTM_NEWLINK, 0, "down0"));
        d.extend(msg(libc::RTM_DELLINK, 0, "gone1"));
        d.extend(msg(libc::RTM_NEWADDR, up, "addr2"));
        let mut out = Vec::new();
        parse(&d, &mut out);
        assert_eq!(
            out,
            [
                LinkEvent::Up("veth7".into()),
                LinkEvent::Gone("gone1".into())
            ]
        );
        // Cut anywhere, or with lengths that lie: no panic, nothing past the cut.
        for cut in 0..d.len() {
            let mut out = Vec::new();
            parse(&d[..cut], &mut out);
            assert!(out.len() <= 2);
        }
        let mut lying = msg(libc::RTM_NEWLINK, up, "x");
        lying[0..4].copy_from_slice(&9999u32.to_ne_bytes());
        let mut out = Vec::new();
        parse(&lying, &mut out);
        assert!(out.is_empty());
        let mut bad_attr = msg(libc::RTM_NEWLINK, up, "y");
        bad_attr[NLMSG_HDR + IFINFO..NLMSG_HDR + IFINFO + 2].copy_from_slice(&2u16.to_ne_bytes());
        parse(&bad_attr, &mut out);
        assert!(out.is_empty());
    }
}
