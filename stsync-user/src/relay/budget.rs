//! Token buckets: how much a peer may make the relay do per second (bytes of
//! retransmission to a viewer, handshakes from an address), with a bounded burst.

use std::time::{Duration, Instant};

/// Kept in millionths of a unit, so frequent refills lose no fraction of what they earn.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// May go negative by one item: the item that crossed zero was still allowed.
    micros: i64,
    last: Instant,
}

const MICRO: i64 = 1_000_000;

impl TokenBucket {
    /// A full bucket of `burst`.
    pub fn new(burst: u64, now: Instant) -> Self {
        TokenBucket {
            micros: (burst as i64).saturating_mul(MICRO),
            last: now,
        }
    }

    /// Adds what `rate` per second earned since the last call, up to `burst`.
    pub fn refill(&mut self, now: Instant, rate: u64, burst: u64) {
        let dt = now.saturating_duration_since(self.last);
        self.last = self.last.max(now);
        let earned = (u128::from(rate) * dt.as_micros()).min(i64::MAX as u128) as i64;
        let cap = (burst as i64).saturating_mul(MICRO);
        self.micros = self.micros.saturating_add(earned).min(cap);
    }

    /// Whether anything may be spent now.
    pub fn available(&self) -> bool {
        self.micros > 0
    }

    pub fn spend(&mut self, n: u64) {
        self.micros = self.micros.saturating_sub((n as i64).saturating_mul(MICRO));
    }

    /// Refills, then spends `n` if anything is available.
    pub fn try_spend(&mut self, now: Instant, rate: u64, burst: u64, n: u64) -> bool {
        self.refill(now, rate, burst);
        let ok = self.available();
        if ok {
            self.spend(n);
        }
        ok
    }

    /// When, refilling at `rate` per second, `want` will be available: waking then does a
    /// worthwhile amount of work, not one unit at a time.
    pub fn ready_at(&self, rate: u64, want: u64) -> Instant {
        let need = (want as i64).saturating_mul(MICRO) - self.micros;
        if need <= 0 {
            return self.last;
        }
        let us = (need as u64).div_ceil(rate.max(1));
        self.last + Duration::from_micros(us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refills_at_rate_up_to_burst() {
        let t = Instant::now();
        let mut b = TokenBucket::new(1000, t);
        b.spend(1500);
        assert!(!b.available(), "overdrawn by the last item");
        let ready = b.ready_at(1000, 1);
        assert_eq!(ready, t + Duration::from_micros(501_000));
        b.refill(ready, 1000, 1000);
        assert!(b.available());
        // Many small refills add up to what one large one would.
        let mut c = TokenBucket::new(0, t);
        for us in 1..=1000 {
            c.refill(t + Duration::from_micros(us * 7), 1000, 1000);
        }
        c.spend(6);
        assert!(c.available(), "7 ms at 1000/s is 7");
        c.spend(1);
        assert!(!c.available());
        b.refill(t + Duration::from_secs(60), 1000, 1000);
        b.spend(1000);
        assert!(!b.available(), "never more than the burst");
        assert!(!b.try_spend(t + Duration::from_secs(60), 1000, 1000, 1));
    }
}
