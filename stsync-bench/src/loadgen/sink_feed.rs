//! --rx xdp: the viewers' data packets never reach their socket; the kernel sink records
//! each in its viewer's slot ring. Every pass of the loop feeds what arrived since the last
//! one to the viewer's receiver, in sequence order, as if it had come through the socket.

use super::viewers::{on_data, Viewer, ViewerIo, Window};
use crate::sink::Rings;
use std::time::Instant;
use stsync_user::srt::seq::Seq;

/// --rx xdp: feeds viewer `i`'s receiver what the sink recorded since the last pass, in
/// sequence order: first the gaps it has been waiting for, then everything new.
pub(super) fn drain_sink<R: Rings>(
    sink: &R,
    i: u32,
    v: &mut Viewer,
    now: Instant,
    win: &Window,
    io: &mut ViewerIo,
) {
    if v.rx.is_none() {
        return;
    }
    if !v.sink_missing.is_empty() {
        let mut missing = std::mem::take(&mut v.sink_missing);
        missing.retain(|&s| {
            let rx = v.rx.as_ref().expect("checked above");
            if s.lt(rx.next_seq()) && !rx.is_missing(s) {
                return false; // received meanwhile, or given up
            }
            match sink.slot(i, s.get()) {
                Some(a) => {
                    on_data(v, now, s, &a, win, io);
                    false
                }
                None => true,
            }
        });
        v.sink_missing = missing;
    }
    let Some(next) = sink.next(i) else { return };
    let next = Seq::new(next);
    let ahead = next.diff(v.sink_next);
    if ahead <= 0 {
        return;
    }
    // More than a ring behind: the older slots are overwritten; the receiver sees a gap.
    let span = (ahead as u32).min(sink.ring());
    let from = next.sub(span);
    for k in 0..span {
        let s = from.add(k);
        match sink.slot(i, s.get()) {
            Some(a) => on_data(v, now, s, &a, win, io),
            None if v.sink_missing.len() < sink.ring() as usize => v.sink_missing.push(s),
            None => {}
        }
    }
    v.sink_next = next;
}

#[cfg(test)]
mod tests {
    use super::super::conn::{Conn, Hs};
    use super::*;
    use crate::sink::Arrived;
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::time::Duration;
    use stsync_user::srt::receiver::Receiver;

    /// The sink's rings without a kernel: one viewer.
    #[derive(Default)]
    struct FakeRings {
        next: Option<u32>,
        slots: RefCell<HashMap<u32, Arrived>>,
    }

    impl FakeRings {
        fn arrive(&mut self, seq: u32, rexmit: bool, index: u64) {
            self.slots.borrow_mut().insert(
                seq,
                Arrived {
                    len: 1316,
                    rexmit,
                    kk: 0,
                    peek: {
                        let mut p = Vec::new();
                        crate::caller::write_payload(&mut p, 1316, index, 1_000);
                        Arrived::peek_of(&p)
                    },
                    rx_ns: 1_000 + 50_000,
                    rx_realtime: false,
                },
            );
            let n = Seq::new(seq).next();
            if self.next.is_none_or(|x| Seq::new(x).le(Seq::new(seq))) {
                self.next = Some(n.get());
            }
        }
    }

    impl Rings for FakeRings {
        fn ring(&self) -> u32 {
            16
        }
        fn next(&self, _: u32) -> Option<u32> {
            self.next
        }
        fn slot(&self, _: u32, seq: u32) -> Option<Arrived> {
            let n = self.next?;
            // What a 16-slot ring still holds.
            if Seq::new(n).diff(Seq::new(seq)) > 16 {
                return None;
            }
            self.slots.borrow().get(&seq).copied()
        }
    }

    fn viewer(isn: u32, now: Instant) -> Viewer {
        let mut conn = Conn::new(
            7,
            "10.0.0.1:9".parse::<std::net::SocketAddr>().unwrap(),
            None,
            String::new(),
            now,
        );
        conn.isn = Seq::new(isn);
        conn.state = Hs::Connected;
        let mut v = Viewer::new(conn);
        v.rx = Some(Receiver::new(
            Seq::new(isn),
            Duration::from_millis(120),
            8192,
            now,
        ));
        v.seen = vec![0; 4];
        v.sink_next = Seq::new(isn);
        v
    }

    #[test]
    fn sink_arrivals_drive_the_receiver_like_socket_arrivals() {
        let now = Instant::now();
        let win = Window {
            start: 0,
            end: 1000,
            cap: 256,
            late_ns: 120_000_000,
        };
        let mut io = ViewerIo::new(-1, now);
        let isn = SEQ_MAX - 2; // crosses the 31-bit wrap
        let seq = |k: u32| Seq::new(isn).add(k).get();
        let mut rings = FakeRings::default();
        let mut v = viewer(isn, now);
        // Nothing yet.
        drain_sink(&rings, 0, &mut v, now, &win, &mut io);
        assert_eq!(v.st.unique, 0);
        // 0, 1, 3, 4 arrive: 2 is NAKed at once.
        for k in [0, 1, 3, 4] {
            rings.arrive(seq(k), false, u64::from(k));
        }
        drain_sink(&rings, 0, &mut v, now, &win, &mut io);
        assert_eq!(v.st.unique, 4);
        assert_eq!(v.st.naks_sent, 1);
        let rx = v.rx.as_ref().unwrap();
        assert!(rx.is_missing(Seq::new(seq(2))));
        assert_eq!(rx.ack_seq(), Seq::new(seq(2)));
        assert_eq!(v.sink_missing, vec![Seq::new(seq(2))]);
        // The retransmission fills the gap; the ACK moves past it.
        rings.arrive(seq(2), true, 2);
        drain_sink(&rings, 0, &mut v, now, &win, &mut io);
        assert_eq!((v.st.unique, v.st.rexmit_received), (5, 1));
        assert_eq!(v.rx.as_ref().unwrap().ack_seq(), Seq::new(seq(5)));
        assert!(v.sink_missing.is_empty());
        assert_eq!(v.hist.count, 5);
        assert_eq!(v.hist.max, 50_000);
        // A jump of more than a ring: the receiver sees the skipped packets as lost.
        for k in 5..40 {
            if k != 30 {
                rings.arrive(seq(k), false, u64::from(k));
            }
        }
        drain_sink(&rings, 0, &mut v, now, &win, &mut io);
        let rx = v.rx.as_ref().unwrap();
        assert_eq!(rx.next_seq(), Seq::new(seq(40)));
        assert!(rx.is_missing(Seq::new(seq(5))), "older than the ring");
        assert!(rx.is_missing(Seq::new(seq(30))));
        assert_eq!(v.sink_missing, vec![Seq::new(seq(30))]);
        assert_eq!(v.st.unique, 5 + 40 - 24 - 1);
        // Light ACK after 64 packets, counted like a socket arrival would be.
        for k in 40..140 {
            rings.arrive(seq(k), false, u64::from(k));
            drain_sink(&rings, 0, &mut v, now, &win, &mut io);
        }
        assert!(v.st.acks_light >= 1);
    }

    const SEQ_MAX: u32 = 0x7FFF_FFFF;
}
