//! An edge pulling stream 1 from an origin: two relays, each in a world of its own, their
//! datagrams carried between them by the test; the edge's session keys minted on the
//! origin as the driver would.

use super::*;

const ORIGIN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9999);
const EDGE: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7777);

/// Takes the datagrams `w` queued for `to`.
fn drain(w: &mut World, to: SocketAddr) -> Vec<Vec<u8>> {
    w.collect();
    let (mine, others) = std::mem::take(&mut w.sent)
        .into_iter()
        .partition(|(dst, _)| *dst == to);
    w.sent = others;
    mine.into_iter().map(|(_, b)| b).collect()
}

/// Carries datagrams between origin and edge until neither has any for the other.
fn shuttle(o: &mut World, e: &mut World) {
    for _ in 0..50 {
        let up = drain(e, ORIGIN);
        for b in &up {
            o.send(EDGE, b);
        }
        let down = drain(o, EDGE);
        for b in &down {
            e.send(ORIGIN, b);
        }
        if up.is_empty() && down.is_empty() {
            return;
        }
    }
    panic!("origin and edge never went quiet");
}

/// Answers every key the edge asks for with one minted on the origin; returns the
/// upstream indexes asked for.
fn mint(o: &mut World, e: &mut World) -> Vec<usize> {
    let mut asked = Vec::new();
    while let Some(req) = e.relay.poll_pull() {
        asked.push(req.upstream);
        let key = o.key("1");
        answer(e, req, key);
    }
    asked
}

/// The driver's answer to `req`: the origin, with `key`.
fn answer(e: &mut World, req: PullRequest, key: String) {
    let pulled = Pulled {
        peer: ORIGIN,
        key,
        km: None,
    };
    e.relay.handle_pull(e.now, req, Ok(pulled));
}

/// Time passes for both; keys are minted and datagrams carried (`link` up) or lost.
fn tick(o: &mut World, e: &mut World, d: Duration, link: bool) {
    o.advance(d);
    e.advance(d);
    if link {
        mint(o, e);
        shuttle(o, e);
    } else {
        drain(o, EDGE);
        drain(e, ORIGIN);
    }
}

fn pull(e: &World) -> PullSnapshot {
    e.stream().pull.expect("an edge")
}

#[test]
fn an_edge_pulls_for_its_viewers_and_keeps_them_across_a_reconnection() {
    let mut o = World::new();
    let mut e = World::edge(&["origin:9999"], false);
    // No viewer, no pull.
    tick(&mut o, &mut e, Duration::from_millis(300), true);
    assert_eq!(pull(&e).state, "idle");
    let mut v = Caller::new(1001, 5000);
    v.join(&mut e, "request");
    tick(&mut o, &mut e, Duration::from_millis(10), true);
    assert_eq!(pull(&e).state, "connected");
    let origin_side = o.stats().conns;
    assert_eq!(origin_side.len(), 1, "the edge is the origin's only viewer");
    assert_eq!(origin_side[0].mode, ConnMode::Request);
    let mut p = Caller::new(2000, 100);
    p.join(&mut o, "publish");
    for i in 0..20u32 {
        p.data(&mut o, p.isn.add(i), 1_000 + i * 10_000, &[i as u8; 188]);
        tick(&mut o, &mut e, Duration::from_millis(10), true);
    }
    let got = data(&e.take(v.addr));
    let seqs: Vec<u32> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (0..20).map(|i| v.isn.add(i).get()).collect::<Vec<_>>()
    );
    assert!(got.iter().enumerate().all(|(i, (_, b))| b[0] == i as u8));
    v.ack(&mut e, v.isn.add(20).get());
    // The origin goes quiet (killed): the edge gives up on it after `SILENCE`, calls it
    // again with a new key, and its viewer's sequence goes on where it was.
    // (The publisher and the viewer keep their own connections alive meanwhile.)
    for i in 0..50 {
        p.control(&mut o, ctrl::KEEPALIVE, 0, &[0]);
        v.control(&mut e, ctrl::KEEPALIVE, 0, &[0]);
        tick(&mut o, &mut e, Duration::from_millis(100), i >= 30);
        if i == 29 {
            assert_ne!(pull(&e).state, "connected");
        }
    }
    let s = pull(&e);
    assert_eq!((s.state, s.reconnects), ("connected", 1), "{s:?}");
    e.take(v.addr);
    for i in 20..30u32 {
        p.data(&mut o, p.isn.add(i), 1_000 + i * 10_000, &[i as u8; 188]);
        tick(&mut o, &mut e, Duration::from_millis(10), true);
    }
    let seqs: Vec<u32> = data(&e.take(v.addr)).iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (20..30).map(|i| v.isn.add(i).get()).collect::<Vec<_>>(),
        "one continuous sequence for the viewer"
    );
    // The viewer leaves: the pull lingers, then ends with a SHUTDOWN to the origin.
    v.control(&mut e, ctrl::SHUTDOWN, 0, &[0]);
    tick(&mut o, &mut e, Duration::from_secs(2), true);
    assert_eq!(pull(&e).state, "connected");
    for _ in 0..40 {
        tick(&mut o, &mut e, Duration::from_millis(100), true);
    }
    assert_eq!(pull(&e).state, "idle");
    let viewers_left = o
        .stats()
        .conns
        .iter()
        .filter(|c| c.mode == ConnMode::Request)
        .count();
    assert_eq!(viewers_left, 0, "the origin was told");
}

#[test]
fn failed_attempts_back_off_and_move_to_the_next_upstream() {
    let mut e = World::edge(&["a:9999", "b:9999"], true);
    let mut asked: Vec<(usize, Instant)> = Vec::new();
    for _ in 0..300 {
        e.advance(Duration::from_millis(50));
        while let Some(req) = e.relay.poll_pull() {
            asked.push((req.upstream, e.now));
            e.relay
                .handle_pull(e.now, req, Err("connection refused".into()));
        }
    }
    let order: Vec<usize> = asked.iter().map(|a| a.0).take(7).collect();
    assert_eq!(
        order,
        [0, 0, 0, 1, 1, 1, 0],
        "three tries each, in the list's order"
    );
    let gaps: Vec<Duration> = asked.windows(2).map(|w| w[1].1 - w[0].1).collect();
    assert!(gaps[1] > gaps[0], "backing off: {gaps:?}");
    assert!(
        gaps.iter().all(|g| *g <= Duration::from_millis(5050)),
        "{gaps:?}"
    );
    assert_eq!(pull(&e).failures, asked.len() as u64);
}

#[test]
fn a_pulled_stream_takes_no_publisher_and_refused_calls_are_tried_again() {
    let mut o = World::new();
    let mut e = World::edge(&["origin:9999"], true);
    let mut p = Caller::new(2000, 100);
    let s = sid(&mut e, "publish");
    assert_eq!(
        p.connect(&mut e, &s),
        Err(2403),
        "its publisher is the upstream"
    );
    // The origin refuses the edge's key (spent elsewhere): refused, then tried again.
    // Started at the first timer (the sweep's).
    e.advance(Duration::from_millis(150));
    let req = e.relay.poll_pull().expect("always pulled");
    let key = o.key("1");
    let mut spender = Caller::new(3000, 1);
    spender
        .connect(&mut o, &format!("#!::r=1,s={key},m=request"))
        .unwrap();
    answer(&mut e, req, key);
    shuttle(&mut o, &mut e);
    assert_eq!(pull(&e).failures, 1);
    assert_eq!(pull(&e).state, "waiting");
    for _ in 0..10 {
        tick(&mut o, &mut e, Duration::from_millis(100), true);
    }
    assert_eq!(pull(&e).state, "connected");
    // Answers from anyone but the upstream are not taken.
    assert_eq!(e.dropped("wrong_peer"), 0);
}

/// Whatever comes back to a call — truncated, garbage, answers out of order, from
/// elsewhere — is counted and dropped, never a panic, and the call goes on.
#[test]
fn malformed_answers_to_a_call_are_dropped() {
    let mut o = World::new();
    let mut e = World::edge(&["origin:9999"], true);
    e.advance(Duration::from_millis(150));
    let req = e.relay.poll_pull().expect("always pulled");
    let key = o.key("1");
    answer(&mut e, req, key);
    let induction = drain(&mut e, ORIGIN).pop().expect("an induction");
    let Packet::Control(c) = Packet::parse(&induction).unwrap() else {
        panic!("a handshake")
    };
    let call = Handshake::parse(c.body).unwrap().socket_id;
    let mut rng = 0x1234_5678_u64;
    for i in 0..2000usize {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let len = (rng as usize) % 120;
        let mut body: Vec<u32> = (0..len / 4).map(|k| (rng >> (k % 32)) as u32).collect();
        if i % 3 == 0 && body.len() > 6 {
            // A conclusion-looking answer before any cookie.
            body[5] = hs_type::CONCLUSION;
        }
        let mut b = Vec::new();
        write_control(&mut b, ctrl::HANDSHAKE, 0, 0, call, &body);
        let from = if i % 5 == 0 { EDGE } else { ORIGIN };
        e.send(from, &b);
    }
    assert!(e.dropped("wrong_peer") > 0);
    assert!(e.dropped("unexpected_handshake") > 0);
    // The real upstream still gets through.
    for _ in 0..10 {
        tick(&mut o, &mut e, Duration::from_millis(100), true);
    }
    assert_eq!(pull(&e).state, "connected");
}
