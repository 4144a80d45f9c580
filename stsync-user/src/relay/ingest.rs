//! How late a publisher's packets arrive after it sent them, from their SRT timestamps.
//!
//! A data packet's timestamp is µs on the publisher's clock, whose origin we do not know
//! exactly (libsrt starts it about when it starts connecting). `arrival − timestamp` is
//! then the one-way delay plus a constant; its minimum over a recent window is the
//! constant plus the best one-way delay. So the estimate is RTT/2 (the best one-way delay,
//! assuming a symmetric path) plus how far the current packets sit above that minimum
//! (the publisher's queueing and network jitter), smoothed. The minimum is kept over two
//! 5-second buckets so that clock drift between the hosts cannot pin it for ever. What a
//! publisher's encoder adds before SRT sees a packet is invisible here.

use std::time::{Duration, Instant};

const BUCKET: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct IngestLatency {
    /// Minimum of `arrival − ts` in the current and the previous bucket (µs, wrapping
    /// arithmetic made signed).
    min_cur: Option<i64>,
    min_prev: Option<i64>,
    bucket_start: Instant,
    /// Smoothed excess over the minimum, µs (EWMA, 1/16 per packet).
    excess_us: f64,
}

impl IngestLatency {
    pub fn new(now: Instant) -> Self {
        IngestLatency {
            min_cur: None,
            min_prev: None,
            bucket_start: now,
            excess_us: 0.0,
        }
    }

    /// A data packet with timestamp `ts` arrived at `arrival_us` (µs since the connection's
    /// start on our clock).
    pub fn on_packet(&mut self, now: Instant, arrival_us: u64, ts: u32) {
        if now.saturating_duration_since(self.bucket_start) >= BUCKET {
            self.min_prev = self.min_cur.take();
            self.bucket_start = now;
        }
        // Both clocks are µs; the difference stays far below 2^31 µs (35 min), so the
        // wrapping difference of the low 32 bits is the real one.
        let sample = i64::from((arrival_us as u32).wrapping_sub(ts) as i32);
        self.min_cur = Some(self.min_cur.map_or(sample, |m| m.min(sample)));
        let base = match (self.min_cur, self.min_prev) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(sample),
        };
        let excess = (sample - base) as f64;
        self.excess_us += (excess - self.excess_us) / 16.0;
    }

    /// The estimate, µs, given the connection's smoothed RTT.
    pub fn estimate_us(&self, rtt_us: u32) -> u64 {
        u64::from(rtt_us / 2) + self.excess_us.max(0.0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_rtt_plus_queueing_above_the_best() {
        let t0 = Instant::now();
        let mut l = IngestLatency::new(t0);
        // The publisher's clock started 40 ms before ours: arrival − ts = −40 ms + delay.
        for i in 0..200u64 {
            let sent = 40_000 + i * 2_500;
            let delay = if i % 50 == 0 { 0 } else { 3_000 };
            let arrival = sent - 40_000 + delay;
            let now = t0 + Duration::from_micros(arrival);
            l.on_packet(now, arrival, sent as u32);
        }
        let e = l.estimate_us(10_000);
        assert!((7_500..=8_200).contains(&e), "{e}");
    }

    #[test]
    fn survives_timestamp_wrap_and_drift() {
        let t0 = Instant::now();
        let mut l = IngestLatency::new(t0);
        let mut ts = u32::MAX - 100_000;
        let mut arrival = 5_000_000u64;
        for i in 0..4_000u64 {
            // The publisher's clock runs 100 ppm slow: the minimum creeps up, the buckets
            // follow it.
            ts = ts.wrapping_add(2_500);
            arrival += 2_500 + if i % 40 == 0 { 10 } else { 0 };
            l.on_packet(t0 + Duration::from_micros(arrival), arrival, ts);
        }
        assert!(l.estimate_us(0) < 1_500, "{}", l.estimate_us(0));
    }
}
