//! A small log-linear histogram of nanosecond values: exact below 32 ns, then 32 buckets per
//! power of two (about 3 % resolution), up to 2^40 ns (18 minutes). Fixed size, no allocation
//! after creation.

const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
const MAX_EXP: u32 = 40;
pub const BUCKETS: usize = (MAX_EXP as usize - SUB_BITS as usize + 1) * SUB + SUB;

#[derive(Clone)]
pub struct Hist {
    counts: Box<[u32]>,
    pub count: u64,
    pub max: u64,
    pub sum: u128,
}

impl Default for Hist {
    fn default() -> Self {
        Self::new()
    }
}

fn index(v: u64) -> usize {
    let v = v.min((1u64 << MAX_EXP) - 1);
    if v < SUB as u64 {
        return v as usize;
    }
    let e = 63 - v.leading_zeros();
    let sub = ((v >> (e - SUB_BITS)) as usize) & (SUB - 1);
    (e - SUB_BITS + 1) as usize * SUB + sub
}

/// The middle of bucket `i`.
fn value(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let e = (i / SUB) as u32 + SUB_BITS - 1;
    let sub = (i % SUB) as u64;
    let lo = (1u64 << e) + (sub << (e - SUB_BITS));
    lo + (1u64 << (e - SUB_BITS)) / 2
}

impl Hist {
    pub fn new() -> Self {
        Hist {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            count: 0,
            max: 0,
            sum: 0,
        }
    }

    pub fn record(&mut self, v: u64) {
        let c = &mut self.counts[index(v)];
        *c = c.saturating_add(1);
        self.count += 1;
        self.max = self.max.max(v);
        self.sum += u128::from(v);
    }

    pub fn merge(&mut self, o: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(o.counts.iter()) {
            *a = a.saturating_add(*b);
        }
        self.count += o.count;
        self.max = self.max.max(o.max);
        self.sum += o.sum;
    }

    /// The value at quantile `q` (0..=1), 0 when empty; never above the recorded maximum.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        if rank == self.count {
            return self.max;
        }
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return value(i).min(self.max);
            }
        }
        self.max
    }

    pub fn mean(&self) -> u64 {
        if self.count == 0 {
            0
        } else {
            (self.sum / u128::from(self.count)) as u64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_within_resolution() {
        let mut h = Hist::new();
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        let p99 = h.quantile(0.99) as f64;
        assert!((p50 / 50_000_000.0 - 1.0).abs() < 0.04, "{p50}");
        assert!((p99 / 99_000_000.0 - 1.0).abs() < 0.04, "{p99}");
        assert_eq!(h.quantile(1.0), 100_000_000);
        assert_eq!(h.max, 100_000_000);
    }

    #[test]
    fn buckets_are_monotonic_and_bounded() {
        let mut last = 0;
        for v in (0..1u64 << 41).step_by(1 << 27).chain(0..5000) {
            let i = index(v);
            assert!(i < BUCKETS);
            if v >= 5000 {
                assert!(i >= last);
                last = i;
            }
        }
        assert!(value(index(123_456)).abs_diff(123_456) < 123_456 / 30);
    }
}
