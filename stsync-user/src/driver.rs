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
/// At most this many datagrams are read to empty the socket before the datapath's poll.
const DRAIN_MAX: usize = 4096;

pub async fn run(
    mut relay: Relay,
    socket: &UdpSocket,
    mut datapath: Box<dyn Datapath>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    // Larger than any datagram: an oversized one is seen whole and refused, never cut.
    let mut buf = vec![0u8; 65_536];
    let mut next_poll = datapath
        .poll_interval()
        .map(|d| tokio::time::Instant::now() + d);
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
                receive(&mut relay, socket, &mut buf, RECV_BATCH);
            }
            _ = tokio::time::sleep_until(deadline) => relay.handle_timeout(Instant::now()),
            _ = sleep_until_some(next_poll), if next_poll.is_some() => {}
        }
        // Due timers run here too, not only from their select! branch: with the socket
        // always readable (a busy relay) the biased select would never get to them.
        if Instant::now() >= relay.poll_timeout() {
            relay.handle_timeout(Instant::now());
        }
        if next_poll.is_some_and(|t| tokio::time::Instant::now() >= t) {
            // Poll with the socket emptied first: a viewer the kernel takes over from here
            // on then misses no packet that passed the kernel before it was switched on but
            // was still queued for the relay.
            for _ in 0..DRAIN_MAX / RECV_BATCH {
                let n = receive(&mut relay, socket, &mut buf, RECV_BATCH);
                route(&mut relay, datapath.as_mut());
                if !relay.outbox_ref().is_empty() {
                    datapath.flush(&mut relay);
                }
                if n < RECV_BATCH {
                    break;
                }
            }
            datapath.poll(&mut relay);
            next_poll = datapath
                .poll_interval()
                .map(|d| tokio::time::Instant::now() + d);
        }
        route(&mut relay, datapath.as_mut());
        if !relay.outbox_ref().is_empty() {
            datapath.flush(&mut relay);
        }
    }
}

async fn sleep_until_some(t: Option<tokio::time::Instant>) {
    if let Some(t) = t {
        tokio::time::sleep_until(t).await;
    }
}

/// Feeds up to `max` queued datagrams to the relay; returns how many were read (fewer
/// than `max`: the socket ran dry).
fn receive(relay: &mut Relay, socket: &UdpSocket, buf: &mut [u8], max: usize) -> usize {
    for i in 0..max {
        match socket.try_recv_from(buf) {
            Ok((n, from)) => relay.handle_datagram(Instant::now(), from, &buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return i,
            // ICMP errors from a vanished peer surface here; they concern one peer only.
            Err(e) => warn!("recv: {e}"),
        }
    }
    max
}

fn route(relay: &mut Relay, datapath: &mut dyn Datapath) {
    for ev in relay.take_events() {
        datapath.on_route(relay, &ev);
    }
}
