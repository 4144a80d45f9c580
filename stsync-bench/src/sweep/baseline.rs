//! The raw UDP baseline: what the relay→viewers veth carries with no relay at all.

use super::{Baseline, NS_VIEW};
use anyhow::Result;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stsync_user::os::mmsg::{RecvBatch, SendBatch};
use stsync_user::os::proc::{self, CpuTimes};
use stsync_user::os::{in_netns, udp};

/// Raw UDP over the relay→viewers veth: one thread sendmmsg()s 64 × `payload`-byte datagrams
/// as fast as it can from `from_ns` (stsb-relay; the tree's stsb-edge0), another
/// recvmmsg()s them in stsb-view.
pub fn baseline(secs: f64, payload: usize, from_ns: &str) -> Result<Baseline> {
    let dst = SocketAddrV4::new(Ipv4Addr::new(10, 88, 2, 2), 7000);
    let rx = in_netns(Some(NS_VIEW), || udp::udp_socket(dst, 32 << 20))?;
    let tx = in_netns(Some(from_ns), || {
        udp::udp_socket(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0), 4 << 20)
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let receiver = {
        let (stop, received) = (stop.clone(), received.clone());
        std::thread::spawn(move || {
            let mut b = RecvBatch::new(256);
            while !stop.load(Ordering::Relaxed) {
                let n = b.recv(rx.as_raw_fd());
                if n == 0 {
                    udp::wait_readable(&[rx.as_raw_fd()], 10_000_000);
                }
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
        })
    };
    let mut batch = SendBatch::new();
    let payload_bytes = vec![0x47u8; payload];
    let a = CpuTimes::read();
    let r0 = received.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(secs);
    let fd = tx.as_raw_fd();
    while Instant::now() < end {
        for _ in 0..64 {
            batch.push(fd, dst, None, |out| out.extend_from_slice(&payload_bytes));
        }
        batch.flush(fd);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(100));
    let b = CpuTimes::read();
    let got = received.load(Ordering::Relaxed) - r0;
    stop.store(true, Ordering::Relaxed);
    let _ = receiver.join();
    let tck = proc::clk_tck() as f64;
    let secs_all = elapsed + 0.1;
    let busy = (b.busy() - a.busy()) as f64 / tck;
    Ok(Baseline {
        seconds: elapsed,
        payload,
        sent_pps: batch.sent as f64 / elapsed,
        received_pps: got as f64 / elapsed,
        system_busy_pct: busy / secs_all * 100.0,
        softirq_pct: (b.softirq - a.softirq) as f64 / tck / secs_all * 100.0,
        busy_ns_per_packet: if got > 0 {
            busy * 1e9 / got as f64
        } else {
            0.0
        },
    })
}
