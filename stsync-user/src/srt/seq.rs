//! 31-bit sequence numbers and 32-bit timestamps with serial (wrapping) arithmetic.

use stsync_common::srt::SEQ_MASK;

/// An SRT packet sequence number: 31 bits, wraps to 0 after 2^31 - 1.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Seq(u32);

impl Seq {
    pub const fn new(v: u32) -> Self {
        Seq(v & SEQ_MASK)
    }

    pub const fn get(self) -> u32 {
        self.0
    }

    // Named like the operators on purpose: `Seq + u32` would hide the wrapping.
    #[allow(clippy::should_implement_trait)]
    pub fn add(self, n: u32) -> Self {
        Seq::new(self.0.wrapping_add(n))
    }

    #[allow(clippy::should_implement_trait)]
    pub fn sub(self, n: u32) -> Self {
        Seq::new(self.0.wrapping_sub(n))
    }

    pub fn next(self) -> Self {
        self.add(1)
    }

    /// Signed distance `self - other`, valid while the two are within 2^30 of each other.
    pub fn diff(self, other: Seq) -> i32 {
        // Sign-extend the 31-bit difference.
        (((self.0.wrapping_sub(other.0)) << 1) as i32) >> 1
    }

    pub fn lt(self, other: Seq) -> bool {
        self.diff(other) < 0
    }

    pub fn le(self, other: Seq) -> bool {
        self.diff(other) <= 0
    }

    pub fn gt(self, other: Seq) -> bool {
        self.diff(other) > 0
    }

    /// The offset that maps `from` onto `to`: `from.add(offset) == to`.
    pub fn offset_to(from: Seq, to: Seq) -> u32 {
        to.0.wrapping_sub(from.0) & SEQ_MASK
    }
}

/// Microseconds on a connection's clock, wrapping at 2^32 (about 71.6 minutes).
pub fn ts_add(ts: u32, offset: u32) -> u32 {
    ts.wrapping_add(offset)
}

/// Signed distance between two wrapping timestamps.
pub fn ts_diff(a: u32, b: u32) -> i32 {
    a.wrapping_sub(b) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_at_31_bits() {
        let max = Seq::new(SEQ_MASK);
        assert_eq!(max.next(), Seq::new(0));
        assert_eq!(Seq::new(0).sub(1), max);
        assert_eq!(Seq::new(3).diff(max), 4);
        assert_eq!(max.diff(Seq::new(3)), -4);
        assert!(max.lt(Seq::new(0)));
        assert!(Seq::new(5).gt(max));
        assert_eq!(Seq::new(0).diff(Seq::new(1 << 30)), -(1 << 30));
        assert_eq!(Seq::new((1 << 30) - 1).diff(Seq::new(0)), (1 << 30) - 1);
        assert_eq!(Seq::new(100).diff(Seq::new(200)), -100);
    }

    #[test]
    fn offsets_map_across_the_wrap() {
        let from = Seq::new(SEQ_MASK - 2);
        let to = Seq::new(10);
        let off = Seq::offset_to(from, to);
        assert_eq!(from.add(off), to);
        assert_eq!(from.add(5).add(off), to.add(5));
        assert_eq!(to.add(7).sub(off), from.add(7));
    }

    #[test]
    fn timestamps_wrap_at_32_bits() {
        assert_eq!(ts_add(u32::MAX - 1, 3), 1);
        assert_eq!(ts_diff(1, u32::MAX), 2);
        assert_eq!(ts_diff(u32::MAX, 1), -2);
    }
}
