//! Connections and their limits: timeouts, stuck viewers, rejections, garbage, budgets per address.

use super::*;

#[test]
fn silent_viewer_times_out_without_disturbing_others() {
    let mut w = World::new();
    let mut quiet = Caller::new(1001, 0);
    let mut live = Caller::new(1002, 0);
    let mut p = Caller::new(2000, 0);
    quiet.join(&mut w, "request");
    live.join(&mut w, "request");
    p.join(&mut w, "publish");
    let mut live_got = 0;
    for i in 0..700u32 {
        p.data(&mut w, Seq::new(i), i * 10_000, b"x");
        if i % 10 == 0 {
            live.control(&mut w, ctrl::ACK, i, &[i, 1000, 100, 8192, 0, 0, 0]);
            p.control(&mut w, ctrl::KEEPALIVE, 0, &[0]);
        }
        w.advance(Duration::from_millis(10));
        live_got += data(&w.take(live.addr)).len();
        let q = w.take(quiet.addr);
        if !ctrl(&q, ctrl::SHUTDOWN).is_empty() {
            assert!(
                i >= 490,
                "timed out after 5 s of silence, not before (i = {i})"
            );
        }
    }
    assert_eq!(live_got, 700, "the live viewer got every packet");
    assert_eq!(w.relay.streams[0].viewers, vec![live.relay_id]);
    assert!(!w.render().contains(&format!("id=\"{}\"", quiet.relay_id)));
    assert!(w.take(p.addr).iter().all(|g| !matches!(
        g,
        Got::Ctrl {
            typ: ctrl::SHUTDOWN,
            ..
        }
    )));
}

/// A viewer whose ACKs the kernel handles sends the relay nothing, yet stays alive and
/// keeps its metrics from what the datapath reports; a viewer that keeps ACKing the same
/// position while data waits is closed as stuck after the idle timeout, not before.
#[test]
fn kernel_handled_acks_keep_a_viewer_alive_and_a_stuck_viewer_is_closed() {
    let mut w = World::new();
    let mut kern = Caller::new(1001, 0);
    let mut stuck = Caller::new(1002, 0);
    let mut p = Caller::new(2000, 0);
    kern.join(&mut w, "request");
    stuck.join(&mut w, "request");
    p.join(&mut w, "publish");
    let mut closed_at = None;
    for i in 0..800u32 {
        p.data(&mut w, Seq::new(i), i * 10_000, b"x");
        if i % 10 == 0 {
            let report = KernelAcks {
                last: w.now,
                ack_seq: Seq::new(i),
                rtt: Some((500, 100)),
                avail_buf: Some(8000),
                answered: 1,
                light: 2,
                bytes: 44 + 2 * 20,
            };
            w.relay.handle_kernel(KernelReport::Acks {
                conn: kern.relay_id,
                acks: report,
            });
            stuck.control(&mut w, ctrl::ACK, i, &[5, 1000, 100, 8192, 0, 0, 0]);
            p.control(&mut w, ctrl::KEEPALIVE, 0, &[0]);
        }
        w.advance(Duration::from_millis(10));
        assert!(
            ctrl(&w.take(kern.addr), ctrl::SHUTDOWN).is_empty(),
            "the kernel-acked viewer was closed at i = {i}"
        );
        if !ctrl(&w.take(stuck.addr), ctrl::SHUTDOWN).is_empty() {
            closed_at.get_or_insert(i);
        }
    }
    // Its ACK to 5 arrived at i = 0; packets beyond it waited from then on.
    let at = closed_at.expect("the stuck viewer was closed");
    assert!((495..=520).contains(&at), "closed as stuck at i = {at}");
    assert_eq!(w.relay.streams[0].viewers, vec![kern.relay_id]);
    let m = w.render();
    // Counted by why: one stuck viewer, nothing else closed.
    assert!(
        m.contains("srt_connections_closed_total{reason=\"stuck\"} 1"),
        "{m}"
    );
    assert_eq!(m.matches("srt_connections_closed_total{").count(), 1, "{m}");
    let id = kern.relay_id.to_string();
    let metric = |name: &str| {
        m.lines()
            .find(|l| l.starts_with(&format!("{name}{{id=\"{id}\"")))
            .and_then(|l| l.rsplit(' ').next())
            .map(|v| v.parse::<f64>().unwrap())
    };
    // 80 reports: 80 ACKs answered (ACKACKs sent) and 160 light ACKs.
    assert_eq!(metric("srt_connection_ctrl_packets_recv"), Some(240.0));
    assert_eq!(
        metric("srt_connection_ctrl_bytes_recv").map(|b| b >= 80.0 * 84.0),
        Some(true)
    );
    assert_eq!(metric("srt_connection_rtt"), Some(0.0005));
    assert_eq!(metric("srt_connection_peer_buffer_available"), Some(8000.0));
    assert!(metric("srt_connection_ctrl_packets_sent").unwrap() >= 80.0);
}

#[test]
fn rejections_and_repeated_conclusions() {
    let mut w = World::new();
    let mut c = Caller::new(1001, 0);
    assert_eq!(c.connect(&mut w, "#!::r=2,s=1,m=request"), Err(2404));
    assert_eq!(c.connect(&mut w, "#!::r=1,s=abc,m=request"), Err(2401));
    assert_eq!(c.connect(&mut w, "#!::r=1,m=request"), Err(1004));
    assert_eq!(c.connect(&mut w, "#!::r=1,s=1,m=play"), Err(2405));
    let key = w.key("1");
    let ok = format!("#!::r=1,s={key},m=request");
    c.connect(&mut w, &ok).unwrap();
    let first_id = c.relay_id;
    // The answer was lost: the same conclusion again gets the same answer, no new connection.
    let concl = c.conclusion(0, &ok);
    w.send(c.addr, &concl);
    let again = ctrl(&w.take(c.addr), ctrl::HANDSHAKE);
    assert_eq!(Handshake::parse(&again[0].1).unwrap().socket_id, first_id);
    assert_eq!(w.relay.connection_count(), 1);
    // A handshake shorter than the answer is not answered: no amplification.
    c.control(&mut w, ctrl::HANDSHAKE, 0, &[0; 4]);
    assert!(w.take(c.addr).is_empty());
    assert_eq!(w.dropped("short_handshake"), 1);
    // The same key from another caller is used up.
    let mut d = Caller::new(1002, 0);
    assert_eq!(d.connect(&mut w, &ok), Err(2403));
    // An expired key.
    let key = w.key("1");
    w.advance(Duration::from_secs(301));
    assert_eq!(
        d.connect(&mut w, &format!("#!::r=1,s={key},m=request")),
        Err(2424)
    );
    // A conclusion with a forged cookie is dropped, not answered.
    let forged = d.conclusion(12345, &ok);
    w.send(d.addr, &forged);
    assert!(w.take(d.addr).is_empty());
    assert_eq!(w.dropped("bad_cookie"), 1);
}

#[test]
fn garbage_is_counted_and_never_panics() {
    let mut w = World::new();
    let mut v = Caller::new(1001, 0);
    let mut p = Caller::new(2000, 0);
    v.join(&mut w, "request");
    p.join(&mut w, "publish");
    let evil = SocketAddr::from(([127, 0, 0, 1], 6666));
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for i in 0..20_000u32 {
        let len = (next() % 200) as usize;
        let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Aim a third at live sockets, with every control type, from the right and wrong address.
        if b.len() >= 16 && i % 3 == 0 {
            b[12..16]
                .copy_from_slice(&[v.relay_id, p.relay_id][(i as usize / 2) % 2].to_be_bytes());
            b[0] = 0x80;
            b[1] = (i % 9) as u8;
        }
        // From the peers' own addresses, anything but a (valid) SHUTDOWN or a NAK (one that
        // breaks the protocol ends the connection: see `nak_that_breaks_the_protocol_...`).
        let from = if i % 2 == 0 || (b.len() >= 2 && b[0] == 0x80 && (b[1] == 5 || b[1] == 3)) {
            evil
        } else {
            [v.addr, p.addr][(i as usize / 2) % 2]
        };
        w.send(from, &b);
        if i % 1000 == 0 {
            v.control(&mut w, ctrl::KEEPALIVE, 0, &[0]);
            p.control(&mut w, ctrl::KEEPALIVE, 0, &[0]);
        }
        w.advance(Duration::from_micros(300));
    }
    w.send(evil, &vec![0u8; 70_000]);
    assert!(w.dropped("oversized") >= 1);
    assert!(w.dropped("truncated") > 1000);
    // The stream still works end to end.
    w.take(v.addr);
    let seq = match &w.relay.conns[&p.relay_id].role {
        Role::Publisher(rx) => rx.next_seq(),
        _ => unreachable!(),
    };
    assert!(w.relay.conns.contains_key(&v.relay_id));
    p.data(&mut w, seq, 0, b"still here");
    assert!(data(&w.take(v.addr)).iter().any(|d| d.1 == b"still here"));
}

#[test]
fn publishers_have_their_own_budget_and_viewers_count_once_connected() {
    let mut w = World::new();
    w.relay.cfg.max_connections = 2;
    let mut viewers: Vec<Caller> = (0..3).map(|i| Caller::new(1001 + i, 0)).collect();
    viewers[0].join(&mut w, "request");
    assert_eq!(
        w.stream().viewers,
        0,
        "a viewer counts once it answers, not at its conclusion"
    );
    viewers[0].control(&mut w, ctrl::KEEPALIVE, 0, &[0]);
    assert_eq!(w.stream().viewers, 1);
    viewers[1].join(&mut w, "request");
    let key = sid(&mut w, "request");
    assert_eq!(viewers[2].connect(&mut w, &key), Err(2402), "viewers full");
    // The stream's publisher, and a takeover, still get in.
    let mut a = Caller::new(2000, 0);
    let mut b = Caller::new(2001, 0);
    a.join(&mut w, "publish");
    b.join(&mut w, "publish");
    assert_eq!(ctrl(&w.take(a.addr), ctrl::SHUTDOWN).len(), 1);
    // A viewer that never completed leaves without having counted.
    w.advance(Duration::from_secs(6));
    assert_eq!(w.stream().viewers, 0);
}

#[test]
fn per_address_limits_on_connections_and_handshakes() {
    let mut w = World::new();
    *w.relay.shared.addresses() = PerAddress::new(AddressLimits {
        max_connections: 2,
        handshakes_per_sec: 2,
    });
    let mut c: Vec<Caller> = (0..3).map(|i| Caller::new(1001 + i, 0)).collect();
    c[0].join(&mut w, "request");
    c[1].join(&mut w, "request");
    let key = sid(&mut w, "request");
    assert_eq!(c[2].connect(&mut w, &key), Err(2402), "2 per address");
    // Another host is not affected.
    let mut other = Caller::new(1004, 0);
    other.addr = SocketAddr::from(([127, 0, 0, 2], 1004));
    other.join(&mut w, "request");
    // Handshakes: a burst of 4, then 2/s; over it, REJ_BACKLOG.
    assert_eq!(c[2].connect(&mut w, &key), Err(2402), "the 4th");
    assert_eq!(c[2].connect(&mut w, &key), Err(1005), "burst spent");
    w.advance(Duration::from_secs(1));
    c[0].control(&mut w, ctrl::SHUTDOWN, 0, &[0]);
    assert_eq!(w.relay.stats().drops.closed.get("peer_shutdown"), Some(&1));
    let key = sid(&mut w, "publish");
    c[2].connect(&mut w, &key)
        .expect("budget refilled, a connection free");
}
