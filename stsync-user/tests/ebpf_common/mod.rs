//! Helpers for the eBPF tests: finding the object (or skipping), crafting Ethernet/IPv4/UDP/
//! SRT frames, reading interface facts inside a namespace, and raw frame capture.
#![allow(dead_code)]

use crate::common::*;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;
use stsync_common::frame;
use stsync_user::datapath::kernel::Kernel;

/// True when a privileged run is required: a skip is then a failure.
pub fn privileged_required() -> bool {
    std::env::var("STSYNC_REQUIRE_PRIVILEGED").as_deref() == Ok("1")
        || std::env::var("CI").as_deref() == Ok("true")
}

/// Prints why the test is skipped, or panics when a privileged run is required.
pub fn skip(test: &str, why: &str) {
    if privileged_required() {
        panic!("{test}: {why}, and a privileged run is required (STSYNC_REQUIRE_PRIVILEGED=1 or CI=true)");
    }
    eprintln!("SKIPPED {test}: {why}");
}

/// The eBPF object, when this test can run (root, object built); otherwise skips.
pub fn object_or_skip(test: &str) -> Option<PathBuf> {
    if !require_root(test) {
        return None;
    }
    let path = std::env::var_os("STSYNC_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(Kernel::default_object_path);
    if !path.is_file() {
        skip(
            test,
            &format!(
                "no eBPF object at {} (run `cargo xtask build-ebpf`)",
                path.display()
            ),
        );
        return None;
    }
    Some(path)
}

/// Loads the object; a load failure on a root run is a test failure.
pub fn load(path: &std::path::Path, streams: u32) -> Kernel {
    Kernel::load_file(path, streams).unwrap_or_else(|e| panic!("loading the eBPF object: {e}"))
}

// --- frames -----------------------------------------------------------------------------

// Header lengths of the frames the tests build, from the offsets the programs parse.
pub const ETH_LEN: usize = frame::IP;
pub const IP_LEN: usize = frame::UDP - frame::IP;
pub const UDP_LEN: usize = frame::SRT - frame::UDP;
pub const SRT_OFF: usize = frame::SRT;

fn fold(mut sum: u32) -> u16 {
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    sum as u16
}

fn sum16(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

/// The IPv4 header checksum of `hdr` (its checksum field included): 0 when valid.
pub fn ip_checksum_residue(hdr: &[u8]) -> u16 {
    !fold(sum16(hdr))
}

/// The UDP checksum over pseudo header + `udp` (checksum field included): 0 when valid.
pub fn udp_checksum_residue(src: Ipv4Addr, dst: Ipv4Addr, udp: &[u8]) -> u16 {
    let mut s = sum16(&src.octets()) + sum16(&dst.octets()) + 17 + udp.len() as u32;
    s += sum16(udp);
    !fold(s)
}

/// The UDP checksum over the IPv6 pseudo header + `udp`: 0 when valid.
pub fn udp6_checksum_residue(src: &[u8; 16], dst: &[u8; 16], udp: &[u8]) -> u16 {
    let mut s = sum16(src) + sum16(dst) + 17 + udp.len() as u32;
    s += sum16(udp);
    !fold(s)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Csum {
    /// A correct UDP checksum.
    Valid,
    /// UDP checksum 0 (none).
    Zero,
    /// A wrong UDP checksum (receivers must drop the datagram).
    Broken,
}

pub struct FrameSpec {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub csum: Csum,
}

/// An Ethernet/IPv4/UDP frame carrying `payload`.
pub fn frame(spec: &FrameSpec, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(SRT_OFF + payload.len());
    f.extend_from_slice(&spec.dst_mac);
    f.extend_from_slice(&spec.src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (IP_LEN + UDP_LEN + payload.len()) as u16;
    let mut ip = [0u8; IP_LEN];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&0x4d2u16.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&spec.src.ip().octets());
    ip[16..20].copy_from_slice(&spec.dst.ip().octets());
    let c = !fold(sum16(&ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut udp = Vec::with_capacity(UDP_LEN + payload.len());
    udp.extend_from_slice(&spec.src.port().to_be_bytes());
    udp.extend_from_slice(&spec.dst.port().to_be_bytes());
    udp.extend_from_slice(&((UDP_LEN + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let c = match spec.csum {
        Csum::Zero => 0,
        Csum::Valid | Csum::Broken => {
            let c = udp_checksum_residue(*spec.src.ip(), *spec.dst.ip(), &udp);
            let c = if c == 0 { 0xFFFF } else { c };
            if spec.csum == Csum::Broken {
                c ^ 0x5A5A
            } else {
                c
            }
        }
    };
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&udp);
    f
}

/// An Ethernet/IPv6/UDP frame carrying `payload` from `src` to `dst`, with extension
/// headers before UDP: each `(next header type, 8-byte-multiple length)` is a header of
/// that type (hop-by-hop 0, routing 43, fragment 44, destination options 60). The UDP
/// checksum is valid (mandatory in IPv6).
pub fn frame6(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: std::net::SocketAddrV6,
    dst: std::net::SocketAddrV6,
    exts: &[(u8, usize)],
    payload: &[u8],
) -> Vec<u8> {
    let mut udp = Vec::with_capacity(UDP_LEN + payload.len());
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&((UDP_LEN + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut sum = sum16(&src.ip().octets()) + sum16(&dst.ip().octets()) + 17 + udp.len() as u32;
    sum += sum16(&udp);
    let c = match !fold(sum) {
        0 => 0xFFFF,
        c => c,
    };
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    // Extension headers: each names the next; the last names UDP (17).
    let mut ext = Vec::new();
    for (i, &(_, len)) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(17, |e| e.0);
        let mut h = vec![0u8; len.max(8)];
        h[0] = next;
        h[1] = (h.len() / 8 - 1) as u8;
        ext.extend_from_slice(&h);
    }
    let mut f = Vec::with_capacity(14 + 40 + ext.len() + udp.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x86, 0xDD]);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&((ext.len() + udp.len()) as u16).to_be_bytes());
    f.push(exts.first().map_or(17, |e| e.0));
    f.push(64);
    f.extend_from_slice(&src.ip().octets());
    f.extend_from_slice(&dst.ip().octets());
    f.extend_from_slice(&ext);
    f.extend_from_slice(&udp);
    f
}

/// An SRT data packet: solo message `msgno` (R flag if `rexmit`), then `payload`.
pub fn srt_data(seq: u32, msgno: u32, rexmit: bool, ts: u32, dest: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(16 + payload.len());
    p.extend_from_slice(&(seq & 0x7FFF_FFFF).to_be_bytes());
    let w1 = 0xC000_0000 | (msgno & 0x03FF_FFFF) | if rexmit { 1 << 26 } else { 0 };
    p.extend_from_slice(&w1.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&dest.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// An SRT control packet of type `typ` (e.g. 2 = ACK) to socket `dest`.
pub fn srt_control(typ: u16, ts: u32, dest: u32, body: &[u8]) -> Vec<u8> {
    srt_control_info(typ, 1, ts, dest, body)
}

/// An SRT control packet with type-specific word `info` (an ACK's number, for one).
pub fn srt_control_info(typ: u16, info: u32, ts: u32, dest: u32, body: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(16 + body.len());
    p.extend_from_slice(&(0x8000_0000u32 | (u32::from(typ) << 16)).to_be_bytes());
    p.extend_from_slice(&info.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&dest.to_be_bytes());
    p.extend_from_slice(body);
    p
}

/// Decoded SRT data header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataHdr {
    pub seq: u32,
    pub word1: u32,
    pub ts: u32,
    pub dest: u32,
}

pub fn parse_data(p: &[u8]) -> DataHdr {
    let w = |i: usize| u32::from_be_bytes(p[i..i + 4].try_into().unwrap());
    DataHdr {
        seq: w(0),
        word1: w(4),
        ts: w(8),
        dest: w(12),
    }
}

// --- interfaces and sockets in a namespace --------------------------------------------

/// (ifindex, MAC) of interface `ifname` inside namespace `ns`.
pub fn link_info(ns: &str, ifname: &str) -> (u32, [u8; 6]) {
    let out = run("ip", &["-n", ns, "-j", "link", "show", "dev", ifname]).expect("ip link show");
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j output");
    let idx = v[0]["ifindex"].as_u64().expect("ifindex") as u32;
    let mac = v[0]["address"].as_str().unwrap_or("00:00:00:00:00:00");
    let mut m = [0u8; 6];
    for (i, part) in mac.split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(part, 16).unwrap_or(0);
    }
    (idx, m)
}

/// A UDP socket bound to `addr` inside namespace `ns`, with a read timeout.
pub fn udp_in(ns: &str, addr: SocketAddrV4, rcvbuf: Option<usize>) -> UdpSocket {
    let sock = in_netns(ns, move || {
        UdpSocket::bind(addr).expect("bind UDP in netns")
    });
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    if let Some(n) = rcvbuf {
        let n = n as libc::c_int;
        // SAFETY: plain setsockopt on our socket; FORCE works as root beyond rmem_max.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&n as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
    }
    sock
}

/// Every datagram that arrives on `s` until it has been quiet for `quiet`.
pub fn drain(s: &UdpSocket, quiet: Duration) -> Vec<(Vec<u8>, std::net::SocketAddr)> {
    s.set_read_timeout(Some(quiet)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok((n, from)) = s.recv_from(&mut buf) {
        out.push((buf[..n].to_vec(), from));
    }
    out
}

/// An AF_PACKET socket on `ifname` inside `ns`: sees every frame that arrives there.
pub struct RawCapture {
    fd: OwnedFd,
}

impl RawCapture {
    pub fn open(ns: &str, ifname: &str) -> RawCapture {
        let (ifindex, _) = link_info(ns, ifname);
        let fd = in_netns(ns, move || {
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket(2)/bind(2); the fd is owned from here on.
            unsafe {
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto));
                assert!(
                    fd >= 0,
                    "AF_PACKET socket: {}",
                    std::io::Error::last_os_error()
                );
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_protocol = proto;
                sll.sll_ifindex = ifindex as i32;
                let rc = libc::bind(
                    fd,
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                assert_eq!(rc, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
                OwnedFd::from_raw_fd(fd)
            }
        });
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 300_000,
        };
        // SAFETY: setsockopt with a timeval on our socket.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        RawCapture { fd }
    }

    /// Incoming IPv4/UDP frames to any of `ports`, until the socket has been quiet for
    /// 300 ms.
    pub fn udp_frames_to(&self, ports: &[u16]) -> Vec<Vec<u8>> {
        self.frames_where(|f| {
            f.len() >= SRT_OFF
                && f[12..14] == [0x08, 0x00]
                && f[23] == 17
                && ports.contains(&u16::from_be_bytes([f[36], f[37]]))
        })
    }

    /// Incoming UDP frames of either family (IPv6 without extension headers) to any of
    /// `ports`: (IPv4 frames, IPv6 frames).
    pub fn udp46_frames_to(&self, ports: &[u16]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let v4 = |f: &[u8]| {
            f.len() >= SRT_OFF
                && f[12..14] == [0x08, 0x00]
                && f[23] == 17
                && ports.contains(&u16::from_be_bytes([f[36], f[37]]))
        };
        let v6 = |f: &[u8]| {
            f.len() >= 14 + 40 + 8
                && f[12..14] == [0x86, 0xDD]
                && f[20] == 17
                && ports.contains(&u16::from_be_bytes([f[56], f[57]]))
        };
        self.frames_where(|f| v4(f) || v6(f))
            .into_iter()
            .partition(|f| v4(f))
    }

    /// Incoming frames `keep` accepts, until the socket has been quiet for 300 ms.
    fn frames_where(&self, keep: impl Fn(&[u8]) -> bool) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        loop {
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: recvfrom into our buffer and address struct.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut sll as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n <= 0 {
                break;
            }
            let f = &buf[..n as usize];
            if sll.sll_pkttype == libc::PACKET_OUTGOING || !keep(f) {
                continue;
            }
            out.push(f.to_vec());
        }
        out
    }
}

/// Raises the global `net.core.netdev_max_backlog` to at least `min` while alive and puts
/// the old value back on drop (also on panic). A packet cloned to N viewers over veth or
/// `lo` queues N skbs on one CPU's backlog at once; beyond this limit the kernel drops them.
pub struct BacklogAtLeast {
    old: Option<String>,
}

const BACKLOG: &str = "/proc/sys/net/core/netdev_max_backlog";

impl BacklogAtLeast {
    pub fn new(min: u32) -> BacklogAtLeast {
        let cur = std::fs::read_to_string(BACKLOG).unwrap_or_default();
        let old = match cur.trim().parse::<u32>() {
            Ok(v) if v < min => {
                std::fs::write(BACKLOG, min.to_string()).expect("raise netdev_max_backlog");
                Some(cur)
            }
            _ => None,
        };
        BacklogAtLeast { old }
    }
}

impl Drop for BacklogAtLeast {
    fn drop(&mut self) {
        if let Some(old) = &self.old {
            let _ = std::fs::write(BACKLOG, old.trim());
        }
    }
}
