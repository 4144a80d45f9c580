//! A connection's send and receive rates, as libsrt's `mbpsSendRate` / `mbpsRecvRate`: the
//! bytes that crossed over the last measurement interval, taken from its counters on the
//! relay's sweep (sans-IO: `now` is the caller's).

use super::ConnStats;
use std::time::{Duration, Instant};

/// How long one measurement lasts.
pub const RATE_INTERVAL: Duration = Duration::from_secs(1);

/// Where the current interval started, and the byte counts then.
#[derive(Debug, Clone, Copy)]
pub struct Rates {
    at: Instant,
    sent: u64,
    recv: u64,
}

impl Rates {
    pub fn new(now: Instant) -> Rates {
        Rates {
            at: now,
            sent: 0,
            recv: 0,
        }
    }

    /// Closes the interval once it has lasted `RATE_INTERVAL`: `sent` and `recv` are the
    /// connection's byte totals now, and `stats` gets their rates over it (bit/s).
    pub fn update(&mut self, now: Instant, sent: u64, recv: u64, stats: &mut ConnStats) {
        let elapsed = now.saturating_duration_since(self.at);
        if elapsed < RATE_INTERVAL {
            return;
        }
        let bps = |bytes: u64| (bytes as f64 * 8.0 / elapsed.as_secs_f64()) as u64;
        stats.send_rate_bps = bps(sent.saturating_sub(self.sent));
        stats.recv_rate_bps = bps(recv.saturating_sub(self.recv));
        *self = Rates {
            at: now,
            sent,
            recv,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_over_the_last_interval() {
        let t0 = Instant::now();
        let mut r = Rates::new(t0);
        let mut s = ConnStats::default();
        // Not a whole interval yet: nothing measured.
        r.update(t0 + Duration::from_millis(900), 1000, 0, &mut s);
        assert_eq!((s.send_rate_bps, s.recv_rate_bps), (0, 0));
        r.update(t0 + Duration::from_secs(1), 125_000, 12_500, &mut s);
        assert_eq!((s.send_rate_bps, s.recv_rate_bps), (1_000_000, 100_000));
        // The next interval counts only what came after (2 s of it here).
        r.update(t0 + Duration::from_secs(3), 375_000, 12_500, &mut s);
        assert_eq!((s.send_rate_bps, s.recv_rate_bps), (1_000_000, 0));
    }
}
