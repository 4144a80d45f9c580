//! Token buckets: how much a peer may make the relay do per second (bytes of
//! retransmission to a viewer, handshakes from an address), with a bounded burst.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// May go negative by one item: the item that crossed zero was still allowed.
    tokens: i64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst`.
    pub fn new(burst: u64, now: Instant) -> Self {
        TokenBucket {
            tokens: burst as i64,
            last: now,
        }
    }

    /// Adds what `rate` per second earned since the last call, up to `burst`.
    pub fn refill(&mut self, now: Instant, rate: u64, burst: u64) {
        let dt = now.saturating_duration_since(self.last);
        self.last = self.last.max(now);
        let earned = (u128::from(rate) * dt.as_micros() / 1_000_000).min(i64::MAX as u128) as i64;
        self.tokens = self.tokens.saturating_add(earned).min(burst as i64);
    }

    /// Whether anything may be spent now.
    pub fn available(&self) -> bool {
        self.tokens > 0
    }

    pub fn spend(&mut self, n: u64) {
        self.tokens = self.tokens.saturating_sub(n as i64);
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

    /// When, refilling at `rate` per second, something will be available again.
    pub fn ready_at(&self, rate: u64) -> Instant {
        if self.available() {
            return self.last;
        }
        let needed = (1 - self.tokens) as u64;
        let us = needed.saturating_mul(1_000_000) / rate.max(1) + 1;
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
        let ready = b.ready_at(1000);
        assert_eq!(ready, t + Duration::from_micros(501_001));
        b.refill(ready, 1000, 1000);
        assert!(b.available());
        b.refill(t + Duration::from_secs(60), 1000, 1000);
        b.spend(1000);
        assert!(!b.available(), "never more than the burst");
        assert!(!b.try_spend(t + Duration::from_secs(60), 1000, 1000, 1));
    }
}
