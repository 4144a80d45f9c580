//! A reload's commands: streams added and removed while others run, limits changed.

use super::*;

/// Joins `c` to `resource` on worker `worker` with a fresh key.
fn join_on_stream(w: &mut World, worker: usize, c: &mut Caller, resource: &str, mode: &str) {
    w.hs_worker = worker;
    let sid = format!("#!::r={resource},s={},m={mode}", w.key(resource));
    c.connect(w, &sid).unwrap();
}

/// Every worker does what the reload asks, in the same order.
fn on_all(w: &mut World, cmd: Command) {
    let now = w.now;
    for r in w.relays_mut() {
        r.handle_command(now, cmd.clone()).unwrap();
    }
    w.collect();
}

fn stream(id: &str) -> StreamConfig {
    StreamConfig {
        resource: id.to_string(),
        ..World::stream_config(None, None)
    }
}

fn resources(w: &World) -> Vec<String> {
    w.stats().streams.into_iter().map(|s| s.resource).collect()
}

#[test]
fn a_stream_added_serves_at_once_and_a_removed_one_ends_its_connections() {
    let mut w = World::with_workers(2);
    // Stream 1 runs throughout: viewer on worker 1, publisher on worker 0.
    let mut v1 = Caller::new(1001, 0);
    join_on_stream(&mut w, 1, &mut v1, "1", "request");
    let mut p1 = Caller::new(2001, 0);
    join_on_stream(&mut w, 0, &mut p1, "1", "publish");

    on_all(&mut w, Command::AddStream(stream("2")));
    assert_eq!(resources(&w), ["1", "2"]);
    let mut v2 = Caller::new(1002, 50);
    join_on_stream(&mut w, 0, &mut v2, "2", "request");
    let mut p2 = Caller::new(2002, 70);
    join_on_stream(&mut w, 1, &mut p2, "2", "publish");
    w.take(v1.addr);
    w.take(v2.addr);
    for i in 0..5u32 {
        p1.data(&mut w, p1.isn.add(i), i * 2_500, &[1; 188]);
        p2.data(&mut w, p2.isn.add(i), i * 2_500, &[2; 188]);
        w.advance(Duration::from_millis(2));
    }
    assert_eq!(data(&w.take(v1.addr)).len(), 5);
    let got = data(&w.take(v2.addr));
    assert_eq!(
        got.len(),
        5,
        "the added stream's viewer, fed from the other worker"
    );
    assert!(got.iter().all(|(_, p)| p == &vec![2u8; 188]));

    // A key minted before the removal is forgotten with the stream.
    let old_key = w.key("2");
    on_all(
        &mut w,
        Command::RemoveStream {
            resource: "2".into(),
        },
    );
    for c in [&v2, &p2] {
        let got = w.take(c.addr);
        assert_eq!(ctrl(&got, ctrl::SHUTDOWN).len(), 1, "{got:?}");
    }
    assert_eq!(resources(&w), ["1"]);
    assert_eq!(w.try_key("2"), Err(CommandError::UnknownStream));
    let mut late = Caller::new(1003, 0);
    let sid = format!("#!::r=2,s={old_key},m=request");
    assert_eq!(late.connect(&mut w, &sid), Err(2404));
    // Stream 1 never noticed.
    for i in 5..10u32 {
        p1.data(&mut w, p1.isn.add(i), i * 2_500, &[1; 188]);
        w.advance(Duration::from_millis(2));
    }
    let got = w.take(v1.addr);
    assert!(ctrl(&got, ctrl::SHUTDOWN).is_empty());
    assert_eq!(data(&got).len(), 5);

    // The slot is reused; the new stream starts clean, whatever the old one left in a feed.
    on_all(&mut w, Command::AddStream(stream("3")));
    assert_eq!(resources(&w), ["1", "3"]);
    let s = w.stats().streams.remove(1);
    assert!(!s.publisher && s.viewers == 0);
    let mut v3 = Caller::new(1004, 0);
    join_on_stream(&mut w, 0, &mut v3, "3", "request");
    let mut p3 = Caller::new(2003, 0);
    join_on_stream(&mut w, 1, &mut p3, "3", "publish");
    w.take(v3.addr);
    p3.data(&mut w, p3.isn, 0, &[3; 188]);
    w.advance(Duration::from_millis(2));
    assert_eq!(data(&w.take(v3.addr)), [(v3.isn.get(), vec![3u8; 188])]);
}

#[test]
fn removal_tells_the_datapath_after_the_connections_go() {
    let mut w = World::new();
    let mut v = Caller::new(1001, 0);
    v.join(&mut w, "request");
    w.collect();
    let _ = std::iter::from_fn(|| w.relay.poll_event()).count();
    let now = w.now;
    w.relay
        .handle_command(
            now,
            Command::RemoveStream {
                resource: "1".into(),
            },
        )
        .unwrap();
    let events: Vec<RouteEvent> = std::iter::from_fn(|| w.relay.poll_event()).collect();
    assert_eq!(
        events,
        [
            RouteEvent::ViewerRemoved { conn: v.relay_id },
            RouteEvent::StreamRemoved {
                resource: "1".into()
            }
        ]
    );
    assert_eq!(
        w.relay.handle_command(
            now,
            Command::RemoveStream {
                resource: "1".into()
            }
        ),
        Err(CommandError::UnknownStream)
    );
}

#[test]
fn lowered_limits_keep_new_viewers_out_and_open_ones_in() {
    let mut w = World::new();
    let mut a = Caller::new(1001, 0);
    a.join(&mut w, "request");
    let mut b = Caller::new(1002, 0);
    b.join(&mut w, "request");
    let limits = RelayLimits {
        max_connections: 16,
        max_viewers_per_stream: 1,
        per_address: AddressLimits {
            max_connections: 12,
            handshakes_per_sec: 50,
        },
        idle_timeout: Duration::from_secs(5),
        session_ttl: Duration::from_secs(300),
    };
    on_all(&mut w, Command::SetLimits(limits));
    let mut c = Caller::new(1003, 0);
    let s = sid(&mut w, "request");
    assert!(c.connect(&mut w, &s).is_err());
    assert_eq!(w.relay.connection_count(), 2, "open viewers stay");
}

#[test]
fn a_new_passphrase_is_for_new_connections_only() {
    let mut w = World::with_passphrases(None, Some("first-passphrase"));
    let mut old = Caller::encrypting(1001, 0, "first-passphrase", 16);
    old.join(&mut w, "request");
    let cfg = World::stream_config(None, Some("second-passphrase"));
    on_all(&mut w, Command::UpdateStream(cfg));
    let mut stale = Caller::encrypting(1002, 0, "first-passphrase", 16);
    let s = sid(&mut w, "request");
    assert_eq!(stale.connect(&mut w, &s), Err(1010), "REJ_BADSECRET");
    let mut new = Caller::encrypting(1003, 0, "second-passphrase", 16);
    new.join(&mut w, "request");
    assert_eq!(
        w.relay.connection_count(),
        2,
        "the open viewer keeps its keys"
    );
}
