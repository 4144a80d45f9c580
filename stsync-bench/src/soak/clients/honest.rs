//! The honest viewers: connected for the whole run (reconnecting a second after the relay
//! drops one), each remembering which payload indices it got and whether on time, so the
//! sampler can ask what each got of a stretch of the stream.

use super::common::Common;
use super::keys::KeyPool;
use super::shared::{Shared, C};
use super::viewer::{Pool, Role, V};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use stsync_user::srt::receiver::Receiver;

/// Which payload indices a viewer received, in a ring indexed by payload index (the
/// publisher numbers its payloads, so this does not depend on the relay's sequence mapping
/// or on reconnects). A slot holds `index << 1 | on_time`, or EMPTY.
#[derive(Debug, Clone)]
pub struct Delivered {
    slots: Vec<u64>,
    mask: u64,
}

const EMPTY: u64 = u64::MAX;

/// What one viewer got of a range of payload indices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeStats {
    pub expected: u64,
    pub received: u64,
    /// Received with a transit time within the latency.
    pub on_time: u64,
    /// Runs of consecutive missing indices.
    pub gaps: u64,
    /// The longest run.
    pub max_gap: u64,
}

impl Delivered {
    /// A ring of at least `capacity` indices.
    pub fn new(capacity: usize) -> Delivered {
        let n = capacity.max(16).next_power_of_two();
        Delivered {
            slots: vec![EMPTY; n],
            mask: n as u64 - 1,
        }
    }

    #[cfg(test)]
    pub fn capacity(&self) -> u64 {
        self.mask + 1
    }

    /// First arrival of payload `index` (later copies are not recorded again by the caller).
    pub fn record(&mut self, index: u64, on_time: bool) {
        self.slots[(index & self.mask) as usize] = (index << 1) | u64::from(on_time);
    }

    /// What arrived of `[from, to)`; indices older than a ring count as missing.
    pub fn range(&self, from: u64, to: u64) -> RangeStats {
        let mut r = RangeStats::default();
        let mut run = 0u64;
        for i in from..to {
            r.expected += 1;
            let v = self.slots[(i & self.mask) as usize];
            if v != EMPTY && v >> 1 == i {
                r.received += 1;
                r.on_time += v & 1;
                run = 0;
            } else {
                if run == 0 {
                    r.gaps += 1;
                }
                run += 1;
                r.max_gap = r.max_gap.max(run);
            }
        }
        r
    }
}

/// A request from the sampler: what each honest viewer got of payload indices `[from, to)`.
pub struct EvalRequest {
    pub from: u64,
    pub to: u64,
    pub reply: mpsc::Sender<EvalReply>,
}

#[derive(Debug, Clone, Default)]
pub struct EvalReply {
    pub per_viewer: Vec<RangeStats>,
    /// Packets the honest viewers' receivers found missing, and gave up on, since the start.
    pub lost: u64,
    pub given_up: u64,
}

struct HonestSlot {
    delivered: Delivered,
    /// Our socket ID of its current connection.
    id: Option<u32>,
    reconnect_at: Option<Instant>,
    /// Receiver figures of its earlier connections.
    lost: u64,
    given_up: u64,
    ever_connected: bool,
}

/// The honest viewers' slots, viewer i in slot i, whatever connection each has now.
pub struct Honest {
    slots: Vec<HonestSlot>,
    /// Source address of honest viewer 0 (viewer i: + i).
    ip: Ipv4Addr,
}

impl Honest {
    /// `n` viewers, each remembering `ring` payload indices, connecting from `t0` on.
    pub fn new(n: u32, ring: usize, ip: Ipv4Addr, t0: Instant) -> Honest {
        let slots = (0..n)
            .map(|_| HonestSlot {
                delivered: Delivered::new(ring),
                id: None,
                reconnect_at: Some(t0),
                lost: 0,
                given_up: 0,
                ever_connected: false,
            })
            .collect();
        Honest { slots, ip }
    }

    /// The sampler's question: what each honest viewer got of `[req.from, req.to)`, and
    /// what their receivers found missing and gave up on, over all their connections.
    pub fn answer(&self, req: &EvalRequest, map: &HashMap<u32, V>) -> EvalReply {
        let mut r = EvalReply::default();
        for h in &self.slots {
            r.per_viewer.push(h.delivered.range(req.from, req.to));
            r.lost += h.lost;
            r.given_up += h.given_up;
            if let Some(v) = h.id.and_then(|id| map.get(&id)) {
                if let Some(rx) = &v.rx {
                    r.lost += rx.stats.lost;
                    r.given_up += rx.stats.dropped;
                }
            }
        }
        r
    }

    /// Honest viewers (re)connect when their time has come and a key is there.
    pub fn reconnect(
        &mut self,
        now: Instant,
        pool: &mut Pool,
        keys: &KeyPool,
        sh: &Shared,
        c: &Common,
    ) {
        for (i, h) in self.slots.iter_mut().enumerate() {
            if h.reconnect_at.is_some_and(|t| now >= t) {
                let Some(key) = keys.take() else {
                    h.reconnect_at = Some(now + Duration::from_millis(100));
                    continue;
                };
                if let Some(old) = h.id.take() {
                    pool.map.remove(&old);
                }
                if h.ever_connected {
                    sh.add(C::HonestReconnects, 1);
                    sh.event(format!("honest viewer {i} reconnects"));
                }
                let src = Ipv4Addr::from(u32::from(self.ip) + i as u32);
                let id = pool.connect(c, src, &key, Role::Honest(i), false, now);
                h.id = Some(id);
                h.reconnect_at = None;
            }
        }
    }

    /// Viewer `h` got payload `index` for the first time.
    pub fn record(&mut self, h: usize, index: u64, on_time: bool) {
        self.slots[h].delivered.record(index, on_time);
    }

    /// Viewer `h` is connected.
    pub fn connected(&mut self, h: usize) {
        self.slots[h].ever_connected = true;
    }

    /// Viewer `h`'s connection is over (`what`): its receiver's figures are kept, and it
    /// reconnects in a second.
    pub fn lost(&mut self, h: usize, rx: Option<&Receiver>, what: &str, now: Instant, sh: &Shared) {
        sh.event(format!("honest viewer {h}: {what}"));
        let slot = &mut self.slots[h];
        if let Some(rx) = rx {
            slot.lost += rx.stats.lost;
            slot.given_up += rx.stats.dropped;
        }
        slot.id = None;
        slot.reconnect_at = Some(now + Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_ranges_count_gaps_and_lateness() {
        let mut d = Delivered::new(100);
        assert_eq!(d.capacity(), 128);
        for i in 1000..1100u64 {
            if !(1010..1013).contains(&i) && i != 1050 && i != 1099 {
                d.record(i, i % 10 != 0);
            }
        }
        let r = d.range(1000, 1100);
        assert_eq!(r.expected, 100);
        assert_eq!(r.received, 95);
        // 1000, 1020, 1030, 1040, 1060, 1070, 1080, 1090 came late (1010 and 1050 not at all).
        assert_eq!(r.on_time, 95 - 8);
        assert_eq!((r.gaps, r.max_gap), (3, 3));
        // A slot reused by a later index does not count for the earlier one.
        d.record(1000 + 128, true);
        assert_eq!(d.range(1000, 1001).received, 0);
        assert_eq!(d.range(1128, 1129).received, 1);
    }
}
