//! Several UDP sockets on one port (SO_REUSEPORT), one per worker, each datagram steered to
//! the worker that owns its connection by the SRT header itself. The relay picks its own
//! socket IDs, so it encodes the owner in them (`id % workers`); a classic BPF program
//! (SO_ATTACH_REUSEPORT_CBPF: no CAP_BPF, so it works without privileges too) reads the
//! destination socket ID, the UDP payload's word at offset 12, and returns that index.
//! Destination 0 (a handshake: the caller does not know our ID yet) returns an index out of
//! range, and the kernel falls back to its flow hash: a caller's induction and conclusion
//! land on the same worker, and different callers spread over all of them.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

/// Socket IDs are 30 bits (the top two bits of the header word are flags elsewhere).
const ID_MASK: u32 = 0x3FFF_FFFF;

/// The worker that owns connection `id` among `workers`; `None` for a handshake (0).
pub fn worker_of(id: u32, workers: u32) -> Option<u32> {
    (id != 0).then(|| id % workers.max(1))
}

/// A socket ID owned by `worker` (of `workers`) made from `random`: non-zero, 30 bits.
pub fn id_for_worker(random: u32, worker: u32, workers: u32) -> u32 {
    let n = workers.max(1);
    let base = (random & ID_MASK) / n * n;
    match base + worker % n {
        0 => n, // worker 0's first ID above 0 (n ≤ ID_MASK)
        id if id > ID_MASK => base - n + worker % n,
        id => id,
    }
}

/// The steering program for `workers` sockets, as `sock_filter` instructions.
pub fn steering_program(workers: u32) -> [libc::sock_filter; 5] {
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    [
        // A = destination socket ID (network order, as cBPF loads words).
        op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, 12),
        // A handshake: out of range, the flow hash picks.
        op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 2, 0, 0),
        op(
            libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K,
            0,
            0,
            workers.max(1),
        ),
        op(libc::BPF_RET | libc::BPF_A, 0, 0, 0),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, u32::MAX),
    ]
}

/// `workers` UDP sockets bound to `addr` in one reuseport group, steered by
/// [`steering_program`]; socket `i` gets the datagrams of the IDs [`worker_of`] gives `i`.
/// `setup` runs on each before it is bound (buffer sizes and the like). An error to attach
/// the program is returned, not worked around: unsteered, datagrams would reach workers
/// that do not own their connection.
pub fn bind_group(
    addr: SocketAddr,
    workers: u32,
    setup: impl Fn(&Socket) -> io::Result<()>,
) -> Result<Vec<Socket>, GroupError> {
    // A port another process holds is refused, as without workers: the probe binds
    // without SO_REUSEPORT, so it fails where the group would quietly join someone's.
    if addr.port() != 0 {
        let probe = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        probe
            .bind(&addr.into())
            .map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
    }
    let mut group = Vec::new();
    let mut addr = addr;
    for i in 0..workers.max(1) {
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_port(true)?;
        setup(&s)?;
        s.bind(&addr.into())
            .map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
        if i == 0 {
            // Port 0 asked for any: the others join the one the first got.
            addr = s.local_addr()?.as_socket().expect("an IP socket");
            attach(&s, &steering_program(workers)).map_err(GroupError::Steering)?;
        }
        group.push(s);
    }
    Ok(group)
}

/// Why a group could not be made.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("{0}")]
    Socket(#[from] io::Error),
    /// The sockets are there but cannot be steered (one socket still works).
    #[error("{0}")]
    Steering(io::Error),
}

fn attach(s: &Socket, prog: &[libc::sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: fprog points at `prog`, alive for the call; the kernel copies it.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            &fprog as *const libc::sock_fprog as *const _,
            std::mem::size_of::<libc::sock_fprog>() as u32,
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("attaching the reuseport steering program: {e}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::net::{Ipv4Addr, UdpSocket};
    use std::time::Duration;

    #[test]
    fn ids_encode_their_worker_and_stay_valid() {
        for workers in 1..=8u32 {
            for worker in 0..workers {
                for random in [0, 1, 7, 0x1234_5678, ID_MASK, ID_MASK - 1, u32::MAX] {
                    let id = id_for_worker(random, worker, workers);
                    assert!(id != 0 && id <= ID_MASK, "{random:#x} → {id:#x}");
                    assert_eq!(worker_of(id, workers), Some(worker), "{id:#x}");
                }
            }
        }
        assert_eq!(worker_of(0, 4), None);
        // Spread: the IDs keep the random bits above the worker's share.
        let ids: HashSet<u32> = (0..1000).map(|i| id_for_worker(i * 7919, 1, 3)).collect();
        assert!(ids.len() > 990);
    }

    /// A port already in use, by a plain socket or by another relay's group, is refused:
    /// a second relay never quietly shares the first one's datagrams.
    #[test]
    fn a_port_in_use_is_refused() {
        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let first = bind_group(any, 2, |_| Ok(())).unwrap();
        let taken = first[0].local_addr().unwrap().as_socket().unwrap();
        match bind_group(taken, 2, |_| Ok(())) {
            Err(GroupError::Socket(e)) => assert_eq!(e.kind(), io::ErrorKind::AddrInUse),
            other => panic!("{:?}", other.map(|g| g.len())),
        }
        let plain = UdpSocket::bind(any).unwrap();
        let taken = plain.local_addr().unwrap();
        assert!(matches!(
            bind_group(taken, 2, |_| Ok(())),
            Err(GroupError::Socket(_))
        ));
        drop(first);
    }

    /// Real sockets on loopback: every datagram to an ID reaches the socket of the worker
    /// the ID encodes; handshakes (ID 0) from many callers reach more than one worker, and
    /// one caller's always the same one.
    #[test]
    fn datagrams_reach_the_worker_their_destination_id_names() {
        for workers in [2u32, 3, 4] {
            let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
            let group = bind_group(any, workers, |_| Ok(())).unwrap();
            let port = group[0].local_addr().unwrap().as_socket().unwrap().port();
            let group: Vec<UdpSocket> = group.into_iter().map(UdpSocket::from).collect();
            for s in &group {
                assert_eq!(s.local_addr().unwrap().port(), port);
                s.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
            }
            let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let srt = |dest: u32| {
                let mut b = [0u8; 16];
                b[0] = 0x80; // a control packet
                b[12..].copy_from_slice(&dest.to_be_bytes());
                b
            };
            let recv = |s: &UdpSocket| {
                let mut b = [0u8; 64];
                s.recv(&mut b)
                    .ok()
                    .map(|_| u32::from_be_bytes(b[12..16].try_into().unwrap()))
            };
            let caller = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            for i in 0..40u32 {
                let worker = i % workers;
                let id = id_for_worker(i.wrapping_mul(0x9E37_79B9), worker, workers);
                caller.send_to(&srt(id), to).unwrap();
                assert_eq!(recv(&group[worker as usize]), Some(id), "{workers} workers");
            }
            let mut reached = HashSet::new();
            for _ in 0..32 {
                let c = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
                let mut first = None;
                for _ in 0..3 {
                    c.send_to(&srt(0), to).unwrap();
                    let w = (0..group.len())
                        .find(|&w| {
                            group[w].set_nonblocking(true).unwrap();
                            std::thread::sleep(Duration::from_millis(1));
                            let got = recv(&group[w]);
                            group[w].set_nonblocking(false).unwrap();
                            got == Some(0)
                        })
                        .expect("a handshake reaches some worker");
                    assert_eq!(*first.get_or_insert(w), w, "one caller, one worker");
                    reached.insert(w);
                }
            }
            assert!(reached.len() > 1, "handshakes all went to {reached:?}");
        }
    }
}
