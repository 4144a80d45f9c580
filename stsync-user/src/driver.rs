//! The IO driver: feeds the sans-IO relay from a tokio UDP socket and timers, and hands its
//! output to the datapath. One task owns the relay; nothing on this path awaits a peer.

use crate::datapath::Datapath;
use crate::relay::Relay;
use std::future::Future;
use std::time::Instant;
use tokio::net::UdpSocket;
use tracing::{info, warn};

/// Datagrams handled per wake-up before output is flushed, so a busy socket cannot starve
/// timers or delay sends.
const RECV_BATCH: usize = 64;

pub async fn run(
    mut relay: Relay,
    socket: &UdpSocket,
    mut datapath: Box<dyn Datapath>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    // Larger than any datagram: an oversized one is seen whole and refused, never cut.
    let mut buf = vec![0u8; 65_536];
    loop {
        let deadline = tokio::time::Instant::from_std(relay.poll_timeout());
        tokio::select! {
            biased;
            _ = &mut shutdown => {
                info!(connections = relay.connection_count(), "shutting down: sending SHUTDOWN to every peer");
                relay.shutdown(Instant::now());
                route(&mut relay, datapath.as_mut());
                datapath.flush(&mut relay);
                return Ok(());
            }
            r = socket.readable() => {
                r?;
                for _ in 0..RECV_BATCH {
                    match socket.try_recv_from(&mut buf) {
                        Ok((n, from)) => relay.handle_datagram(Instant::now(), from, &buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        // ICMP errors from a vanished peer surface here; they concern one peer only.
                        Err(e) => warn!("recv: {e}"),
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => relay.handle_timeout(Instant::now()),
        }
        route(&mut relay, datapath.as_mut());
        if !relay.outbox_ref().is_empty() {
            datapath.flush(&mut relay);
        }
    }
}

fn route(relay: &mut Relay, datapath: &mut dyn Datapath) {
    for ev in relay.take_events() {
        datapath.on_route(relay, &ev);
    }
}
