//! Smoothed round-trip time from ACK → ACKACK samples (the SRT draft's estimator).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rtt {
    pub rtt_us: u32,
    pub var_us: u32,
}

impl Default for Rtt {
    fn default() -> Self {
        Rtt {
            rtt_us: 100_000,
            var_us: 50_000,
        }
    }
}

impl Rtt {
    /// RTT = 7/8·RTT + 1/8·sample; RTTVar = 3/4·RTTVar + 1/4·|RTT − sample|.
    pub fn sample(&mut self, sample_us: u32) {
        let diff = self.rtt_us.abs_diff(sample_us);
        self.var_us = ((u64::from(self.var_us) * 3 + u64::from(diff)) / 4) as u32;
        self.rtt_us = ((u64::from(self.rtt_us) * 7 + u64::from(sample_us)) / 8) as u32;
    }

    /// Period of the periodic NAK: max((RTT + 4·RTTVar) / 2, 20 ms).
    pub fn nak_period_us(&self) -> u64 {
        ((u64::from(self.rtt_us) + 4 * u64::from(self.var_us)) / 2).max(20_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converges_on_a_steady_sample() {
        let mut r = Rtt::default();
        for _ in 0..100 {
            r.sample(1_000);
        }
        assert!(r.rtt_us < 1_100, "{r:?}");
        assert!(r.var_us < 100, "{r:?}");
        assert_eq!(r.nak_period_us(), 20_000);
    }
}
