//! Per-connection statistics as the connections API and the metrics show them, and closing
//! a connection on the API's request.

use super::*;

fn conn(w: &World, id: u32) -> ConnSnapshot {
    w.stats()
        .conns
        .into_iter()
        .find(|c| c.id == id)
        .expect("connection listed")
}

#[test]
fn connection_statistics_count_what_crossed() {
    let mut w = World::new();
    let (mut v1, mut v2, mut p) = (
        Caller::new(1001, 0),
        Caller::new(1002, 0),
        Caller::new(2000, 0),
    );
    v1.join(&mut w, "request");
    v2.join(&mut w, "request");
    p.join(&mut w, "publish");
    // 2 s at 100 packets/s of 100-byte payloads, packet 50 never sent.
    for i in 0..200u32 {
        if i != 50 {
            p.data(&mut w, Seq::new(i), i * 10_000, &[0; 100]);
        }
        if i % 10 == 0 {
            v1.ack(&mut w, i);
            v2.control(&mut w, ctrl::KEEPALIVE, 0, &[0]);
            p.control(&mut w, ctrl::KEEPALIVE, 0, &[0]);
        }
        if i == 105 {
            v1.nak(&mut w, 102, 102);
        }
        w.advance(Duration::from_millis(10));
    }
    // Older than the ring (64 packets): the relay tells the viewer to drop them.
    v2.nak(&mut w, 0, 5);
    let (pc, c1, c2) = (
        conn(&w, p.relay_id),
        conn(&w, v1.relay_id),
        conn(&w, v2.relay_id),
    );
    assert_eq!((pc.mode, c1.mode), (ConnMode::Publish, ConnMode::Request));
    assert_eq!(pc.resource, "1");
    assert_eq!(c1.peer, v1.addr);
    assert_eq!(c1.since_unix_us, UNIX_START * 1_000_000);
    assert_eq!(c1.latency_ms, LATENCY.as_millis() as u64);
    assert_eq!(c1.datapath, ConnDatapath::Userspace);
    // The gap was reported to the publisher, then given up on after the latency.
    assert!(pc.stats.naks_sent >= 1, "{:?}", pc.stats);
    assert_eq!(pc.stats.data_packets_dropped, 1, "{:?}", pc.stats);
    assert_eq!(pc.stats.naks_recv, 0);
    assert_eq!((c1.stats.naks_recv, c1.stats.naks_sent), (1, 0));
    assert_eq!(c1.stats.data_packets_retrans, 1);
    assert_eq!(c2.stats.data_packets_dropped, 6, "{:?}", c2.stats);
    // 116 SRT bytes every 10 ms: 92.8 kbit/s in (the publisher), about as much out to each
    // viewer (plus its control packets).
    let close = |bps: u64, to: f64| (bps as f64 / to - 1.0).abs() < 0.1;
    assert!(close(pc.stats.recv_rate_bps, 92_800.0), "{:?}", pc.stats);
    assert!(close(c2.stats.send_rate_bps, 92_800.0), "{:?}", c2.stats);
    assert_eq!(
        c2.stats.recv_rate_bps,
        10 * 20 * 8,
        "10 keepalives/s of 20 bytes"
    );
    // The viewer's free buffer from its full ACKs; both peers' buffers from the handshake.
    assert_eq!(c1.stats.peer_buffer_available, Some(8192));
    assert_eq!(c2.stats.peer_buffer_available, None);
    assert_eq!(c2.stats.peer_buffer_size, Some(8192));
    // Handed to the kernel path.
    let epoch = w.relay.streams[0].epoch;
    w.relay.handle_kernel(KernelReport::Serving {
        conn: v1.relay_id,
        epoch: Some(epoch),
        since: None,
    });
    assert_eq!(conn(&w, v1.relay_id).datapath, ConnDatapath::Kernel);
}

#[test]
fn a_closed_connection_gets_shutdown_and_its_key_stays_spent() {
    let mut w = World::new();
    let (mut kicked, mut other, mut p) = (
        Caller::new(1001, 0),
        Caller::new(1002, 0),
        Caller::new(2000, 0),
    );
    let kicked_sid = sid(&mut w, "request");
    kicked.connect(&mut w, &kicked_sid).unwrap();
    other.join(&mut w, "request");
    p.join(&mut w, "publish");
    p.data(&mut w, Seq::new(0), 0, b"a");
    let now = w.now;
    let id = kicked.relay_id;
    assert_eq!(
        w.relay.handle_command(now, Command::Close { conn: id }),
        Ok(Reply::Closed)
    );
    assert_eq!(ctrl(&w.take(kicked.addr), ctrl::SHUTDOWN).len(), 1);
    assert!(w.stats().conns.iter().all(|c| c.id != id));
    assert_eq!(w.stats().drops.closed.get("kicked"), Some(&1));
    let events: Vec<_> = std::iter::from_fn(|| w.relay.poll_event()).collect();
    assert!(events.contains(&RouteEvent::ViewerRemoved { conn: id }));
    assert_eq!(
        w.relay.handle_command(now, Command::Close { conn: id }),
        Err(CommandError::UnknownConnection)
    );
    // The others go on.
    w.take(other.addr);
    p.data(&mut w, Seq::new(1), 10_000, b"b");
    assert_eq!(data(&w.take(other.addr)).len(), 1);
    assert!(data(&w.take(kicked.addr)).is_empty());
    // Back with the same stream ID: its key was used (2403).
    assert_eq!(kicked.connect(&mut w, &kicked_sid), Err(2403));
}
