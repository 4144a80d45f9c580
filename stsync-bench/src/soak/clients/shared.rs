//! What the client threads share with each other and with the sampler: event counters
//! (the totals of samples.json), gauges, the relay's socket IDs of some connections, the
//! flood's rejections, the run's events, and the stop and quiesce flags.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

/// Event counters shared by the client threads and read by the sampler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum C {
    HonestRxBytes,
    HonestRxPackets,
    HonestReconnects,
    ChurnJoined,
    ChurnLeft,
    ChurnDied,
    ChurnFailed,
    ChurnClosedByRelay,
    ChurnNoKey,
    ToDeadBytes,
    WrongSource,
    Stray,
    AttackerRxBytes,
    AttackerRxPackets,
    AttackerRexmitPackets,
    NaksSent,
    AttackerReconnects,
    GarbageSent,
    SpoofSent,
    FloodAttempts,
    FloodCookies,
    FloodRejected,
    FloodAccepted,
    FloodUnanswered,
    KeysMinted,
    KeyFailures,
    /// Churn viewers that died silently and were still being sent data 30 s later.
    DeadNotClosed,
}

pub const NAMES: [&str; 27] = [
    "honest_rx_bytes",
    "honest_rx_packets",
    "honest_reconnects",
    "churn_joined",
    "churn_left",
    "churn_died",
    "churn_failed",
    "churn_closed_by_relay",
    "churn_no_key",
    "to_dead_bytes",
    "wrong_source",
    "stray",
    "attacker_rx_bytes",
    "attacker_rx_packets",
    "attacker_rexmit_packets",
    "naks_sent",
    "attacker_reconnects",
    "garbage_sent",
    "spoof_sent",
    "flood_attempts",
    "flood_cookies",
    "flood_rejected",
    "flood_accepted",
    "flood_unanswered",
    "keys_minted",
    "key_failures",
    "dead_not_closed",
];

pub type Snapshot = [u64; NAMES.len()];

pub struct Shared {
    counters: [AtomicU64; NAMES.len()],
    pub honest_connected: AtomicU32,
    pub churn_alive: AtomicU32,
    /// The longest the relay kept sending to a churn viewer after it died silently (ms).
    pub dead_linger_max_ms: AtomicU64,
    /// The relay's socket IDs of the attacker's connections, oldest first.
    pub attacker_ids: Mutex<Vec<u32>>,
    /// The relay's socket IDs of every live client connection (targets for spoofing).
    pub live_ids: Mutex<Vec<u32>>,
    /// The relay's socket IDs of the honest viewers' connections.
    pub honest_ids: Mutex<Vec<u32>>,
    /// Handshake flood rejections by code.
    pub flood_codes: Mutex<BTreeMap<u32, u64>>,
    /// Notable happenings, with seconds since `t0`.
    pub events: Mutex<Vec<(f64, String)>>,
    pub t0: Instant,
    pub stop: AtomicBool,
    /// Set at the end of the run: no more joins, leaves or hostile traffic.
    pub quiesce: AtomicBool,
}

impl Shared {
    pub fn new(t0: Instant) -> Shared {
        Shared {
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
            honest_connected: AtomicU32::new(0),
            churn_alive: AtomicU32::new(0),
            dead_linger_max_ms: AtomicU64::new(0),
            attacker_ids: Mutex::new(Vec::new()),
            live_ids: Mutex::new(Vec::new()),
            honest_ids: Mutex::new(Vec::new()),
            flood_codes: Mutex::new(BTreeMap::new()),
            events: Mutex::new(Vec::new()),
            t0,
            stop: AtomicBool::new(false),
            quiesce: AtomicBool::new(false),
        }
    }

    pub fn add(&self, c: C, n: u64) {
        self.counters[c as usize].fetch_add(n, Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        std::array::from_fn(|i| self.counters[i].load(Relaxed))
    }

    pub fn event(&self, what: impl Into<String>) {
        let t = self.t0.elapsed().as_secs_f64();
        let what = what.into();
        eprintln!("soak: [{t:7.1} s] {what}");
        self.events.lock().expect("events").push((t, what));
    }

    /// Follows a hostile window (`what`: "NAK storm", "handshake flood") that is `on` now
    /// and was `*was` until now: its start and its end go to the events. Says whether it
    /// changed.
    pub fn window(&self, what: &str, on: bool, was: &mut bool) -> bool {
        if on == *was {
            return false;
        }
        *was = on;
        self.event(format!("{what} {}", if on { "starts" } else { "ends" }));
        true
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Relaxed)
    }

    pub fn t(&self, now: Instant) -> f64 {
        now.saturating_duration_since(self.t0).as_secs_f64()
    }
}
