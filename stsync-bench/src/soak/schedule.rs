//! The hostile schedule: when the NAK storms and the handshake floods are on. The attacker
//! and the hostile sender follow it, the sampler records what share of each interval it
//! covered, and the plot draws it.

use serde::{Deserialize, Serialize};

/// A periodic window: on during `[first + k·every, first + k·every + secs)` for k ≥ 0, in
/// seconds since the load started.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub enabled: bool,
    pub first: f64,
    pub every: f64,
    pub secs: f64,
}

impl Schedule {
    pub fn active(&self, t: f64) -> bool {
        self.overlap(t, t + 1e-9) > 0.0
    }

    /// Seconds of `[a, b)` inside the windows.
    pub fn overlap(&self, a: f64, b: f64) -> f64 {
        if !self.enabled || b <= a || self.secs <= 0.0 {
            return 0.0;
        }
        let every = if self.every > 0.0 {
            self.every
        } else {
            f64::INFINITY
        };
        let mut total = 0.0;
        let mut k = if every.is_finite() {
            ((a - self.first - self.secs) / every).floor().max(0.0)
        } else {
            0.0
        };
        loop {
            let start = self.first + k * every;
            if start >= b || !start.is_finite() {
                break;
            }
            let end = start + self.secs;
            total += (end.min(b) - start.max(a)).max(0.0);
            if !every.is_finite() {
                break;
            }
            k += 1.0;
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_windows() {
        let s = Schedule {
            enabled: true,
            first: 20.0,
            every: 60.0,
            secs: 5.0,
        };
        assert!(!s.active(19.9));
        assert!(s.active(20.0));
        assert!(s.active(24.9));
        assert!(!s.active(25.0));
        assert!(s.active(82.0));
        assert_eq!(s.overlap(0.0, 20.0), 0.0);
        assert_eq!(s.overlap(18.0, 23.0), 3.0);
        assert_eq!(s.overlap(0.0, 180.0), 15.0);
        assert_eq!(s.overlap(84.0, 141.0), 2.0);
        let off = Schedule {
            enabled: false,
            ..s
        };
        assert!(!off.active(21.0));
        assert_eq!(off.overlap(0.0, 180.0), 0.0);
    }
}
