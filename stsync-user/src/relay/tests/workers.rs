//! Several workers: each datagram goes to the worker its destination socket ID names (the
//! reuseport program's rule), handshakes to the one the test picks (the flow hash's).

use super::*;

/// Joins `c` on worker `worker`.
fn join_on(w: &mut World, worker: usize, c: &mut Caller, mode: &str) {
    w.hs_worker = worker;
    c.join(w, mode);
    let n = 1 + w.others.len() as u32;
    assert_eq!(
        crate::os::reuseport::worker_of(c.relay_id, n),
        Some(worker as u32),
        "the socket ID names the worker that answered"
    );
}

/// Two workers: a viewer on worker 1, its publisher on worker 0.
fn viewer_apart_from_publisher() -> (World, Caller, Caller) {
    let mut w = World::with_workers(2);
    let mut v = Caller::new(1001, 0);
    join_on(&mut w, 1, &mut v, "request");
    let mut p = Caller::new(2000, 0);
    join_on(&mut w, 0, &mut p, "publish");
    w.take(v.addr);
    (w, v, p)
}

#[test]
fn viewers_on_other_workers_get_the_publishers_packets_and_retransmissions() {
    let mut w = World::with_workers(3);
    let mut viewers: Vec<Caller> = (0..3)
        .map(|i| Caller::new(1001 + i, 100 * i as u32))
        .collect();
    for (i, v) in viewers.iter_mut().enumerate() {
        join_on(&mut w, i, v, "request");
    }
    let mut p = Caller::new(2000, 7);
    join_on(&mut w, 1, &mut p, "publish");
    for v in &viewers {
        w.take(v.addr);
    }
    for i in 0..20u32 {
        p.data(&mut w, p.isn.add(i), i * 2_500, &[i as u8; 188]);
        w.advance(Duration::from_millis(2));
    }
    for v in &viewers {
        let got = data(&w.take(v.addr));
        let expect: Vec<(u32, Vec<u8>)> = (0..20)
            .map(|i| (v.isn.add(i).get(), vec![i as u8; 188]))
            .collect();
        assert_eq!(got, expect, "viewer on worker {}", v.port_worker(&w));
        // A loss report goes to the viewer's own worker, which resends from its own ring.
        v.nak(&mut w, v.isn.add(4).get(), v.isn.add(5).get());
        let again = w.take(v.addr);
        assert_eq!(rexmits(&again), [v.isn.add(4).get(), v.isn.add(5).get()]);
        assert_eq!(data(&again)[0].1, vec![4u8; 188]);
    }
    let s = w.stream();
    assert_eq!(s.viewers, 3, "viewers counted over every worker");
    assert!(s.publisher);
}

/// A packet the publisher has not sent yet (NAKed ahead of it) waits on every worker; one
/// it gave up on is refused with DROPREQ, there as here.
#[test]
fn a_remote_viewer_waits_for_what_the_publisher_still_expects() {
    let (mut w, v, p) = viewer_apart_from_publisher();
    // Packet 3 is lost on the publisher's leg: the relay expects it.
    for i in (0..3).chain(4..8) {
        p.data(&mut w, Seq::new(i), i * 2_500, &[i as u8; 100]);
        w.advance(Duration::from_millis(2));
    }
    assert_eq!(data(&w.take(v.addr)).len(), 7);
    // The viewer's 3 is the publisher's 3: still expected, so no DROPREQ.
    v.nak(&mut w, 3, 3);
    let got = w.take(v.addr);
    assert!(ctrl(&got, ctrl::DROPREQ).is_empty(), "{got:?}");
    // The recovery reaches the remote viewer.
    p.data(&mut w, Seq::new(3), 3 * 2_500, &[3; 100]);
    w.advance(Duration::from_millis(2));
    let got = data(&w.take(v.addr));
    assert!(got.iter().any(|(_, b)| b == &vec![3u8; 100]), "{got:?}");
}

/// A takeover by a publisher on another worker: the old one is closed by its own worker
/// (at its next packet, sweep or feed entry of the new one), the viewers follow the new.
#[test]
fn a_publisher_on_another_worker_takes_over() {
    let mut w = World::with_workers(2);
    let mut v = Caller::new(1001, 0);
    join_on(&mut w, 1, &mut v, "request");
    let mut a = Caller::new(2000, 0);
    join_on(&mut w, 0, &mut a, "publish");
    for i in 0..5u32 {
        a.data(&mut w, Seq::new(i), i * 2_500, b"A");
    }
    w.advance(Duration::from_millis(10));
    w.take(a.addr);
    let mut b = Caller::new(2001, 1000);
    join_on(&mut w, 1, &mut b, "publish");
    for i in 0..5u32 {
        b.data(&mut w, Seq::new(1000 + i), 50_000 + i * 2_500, b"B");
    }
    w.advance(Duration::from_millis(10));
    // A's worker has no viewer, so B's worker feeds it nothing: A is closed at its own
    // worker's next sweep (or its next packet, whichever comes first).
    w.advance(Duration::from_millis(100));
    assert_eq!(ctrl(&w.take(a.addr), ctrl::SHUTDOWN).len(), 1);
    // Its packets after that reach nobody.
    a.data(&mut w, Seq::new(5), 5 * 2_500, b"A");
    w.advance(Duration::from_millis(10));
    let got = data(&w.take(v.addr));
    let payloads: Vec<&[u8]> = got.iter().map(|(_, b)| &b[..]).collect();
    assert_eq!(
        payloads,
        [b"A"; 5]
            .into_iter()
            .chain([b"B"; 5])
            .map(|b| &b[..])
            .collect::<Vec<_>>()
    );
    // One continuous sequence for the viewer across the takeover.
    let seqs: Vec<u32> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (0..10).collect::<Vec<u32>>());
    assert_eq!(
        w.stats()
            .conns
            .iter()
            .filter(|c| c.mode == ConnMode::Publish)
            .count(),
        1
    );
}

/// A viewer the kernel takes over still gets, from userspace, what its publisher's worker
/// read before it took the viewer onto the kernel path (right after reading its socket dry)
/// but fed to the viewer's worker only after the report; nothing read after that.
#[test]
fn a_viewer_handed_to_the_kernel_gets_exactly_what_was_not_cloned_for_it() {
    let (mut w, v, p) = viewer_apart_from_publisher();
    p.data(&mut w, Seq::new(0), 0, b"a");
    w.advance(Duration::from_millis(1));
    assert_eq!(data(&w.take(v.addr)).len(), 1, "mapped and sent");
    // Read by the publisher's worker, which then reads its socket dry and hands the viewer
    // to the kernel: "b" was not cloned, and reaches the viewer's worker after the report.
    p.data(&mut w, Seq::new(1), 2_500, b"b");
    let since = w.now;
    let serving = KernelReport::Serving {
        conn: v.relay_id,
        epoch: Some(1),
        since: Some(since),
    };
    w.worker(1).handle_kernel(serving);
    w.advance(Duration::from_millis(1));
    assert_eq!(data(&w.take(v.addr)), [(1, b"b".to_vec())]);
    // Read after: the kernel cloned it.
    p.data(&mut w, Seq::new(2), 5_000, b"c");
    w.advance(Duration::from_millis(1));
    assert_eq!(data(&w.take(v.addr)), []);
}

/// The limits and the single use of a key hold across workers.
#[test]
fn limits_and_keys_are_shared_by_the_workers() {
    let mut w = World::with_workers(2);
    // max_viewers_per_stream is 8: four on each worker, the ninth refused on either.
    for i in 0..8u16 {
        let mut v = Caller::new(1001 + i, 0);
        join_on(&mut w, usize::from(i % 2), &mut v, "request");
    }
    for worker in 0..2 {
        let mut late = Caller::new(1100 + worker as u16, 0);
        w.hs_worker = worker;
        let key = sid(&mut w, "request");
        assert_eq!(late.connect(&mut w, &key), Err(2402), "worker {worker}");
    }
    // A key spent on one worker is spent on the other.
    let mut p = Caller::new(2000, 0);
    let key = sid(&mut w, "publish");
    w.hs_worker = 0;
    p.connect(&mut w, &key).unwrap();
    let mut again = Caller::new(2001, 0);
    w.hs_worker = 1;
    assert_eq!(again.connect(&mut w, &key), Err(2403));
}

impl Caller {
    /// The worker that owns this caller's connection.
    fn port_worker(&self, w: &World) -> u32 {
        crate::os::reuseport::worker_of(self.relay_id, 1 + w.others.len() as u32).unwrap()
    }
}
