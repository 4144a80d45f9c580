//! A list of missing sequence numbers, kept as ranges in sequence order: the receiver's
//! (gaps it found) and the sender's (what a viewer reported lost and awaits).

use super::seq::Seq;
use std::collections::VecDeque;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LossRange {
    pub first: Seq,
    pub last: Seq,
    /// When the gap was seen: a range not filled within the latency is given up.
    pub since: Instant,
}

impl LossRange {
    pub fn count(&self) -> u32 {
        self.last.diff(self.first) as u32 + 1
    }
}

#[derive(Debug, Default)]
pub struct LossList {
    ranges: VecDeque<LossRange>,
}

impl LossList {
    /// Gaps are found in increasing order, so a new one always goes at the end.
    pub fn push(&mut self, first: Seq, last: Seq, since: Instant) {
        self.ranges.push_back(LossRange { first, last, since });
    }

    /// Adds `first..=last` (`first` not after `last`), merging it with every range it
    /// overlaps or touches, so a number is listed once however often it is reported.
    /// Returns how many numbers were not listed before. A merged range keeps the earliest
    /// `since`.
    pub fn insert(&mut self, first: Seq, last: Seq, since: Instant) -> u32 {
        // Ranges [lo, hi) overlap or touch the new one.
        let lo = self.ranges.partition_point(|r| r.last.next().lt(first));
        let hi = self.ranges.partition_point(|r| r.first.le(last.next()));
        let mut merged = LossRange { first, last, since };
        let mut before = 0;
        for r in self.ranges.drain(lo..hi.max(lo)) {
            before += r.count();
            if r.first.lt(merged.first) {
                merged.first = r.first;
            }
            if r.last.gt(merged.last) {
                merged.last = r.last;
            }
            merged.since = merged.since.min(r.since);
        }
        self.ranges.insert(lo, merged);
        // Ranges far apart (over half the number space) do not order: never underflow.
        merged.count().saturating_sub(before)
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// How many ranges are listed.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Takes the first listed number out.
    pub fn pop_first(&mut self) -> Option<Seq> {
        let r = self.ranges.front_mut()?;
        let s = r.first;
        if r.first == r.last {
            self.ranges.pop_front();
        } else {
            r.first = s.next();
        }
        Some(s)
    }

    /// Forgets every number before `s` (acknowledged, or no longer worth sending).
    pub fn remove_before(&mut self, s: Seq) {
        if self.ranges.is_empty() && self.ranges.capacity() > 64 {
            // A burst grew it: give the memory back once it has passed.
            self.ranges.shrink_to(16);
        }
        while let Some(r) = self.ranges.front_mut() {
            if r.last.lt(s) {
                self.ranges.pop_front();
            } else {
                if r.first.lt(s) {
                    r.first = s;
                }
                break;
            }
        }
    }

    pub fn first(&self) -> Option<Seq> {
        self.ranges.front().map(|r| r.first)
    }

    pub fn ranges(&self) -> impl Iterator<Item = &LossRange> {
        self.ranges.iter()
    }

    pub fn contains(&self, s: Seq) -> bool {
        // Ranges are in order: the first that does not end before `s` is the only candidate.
        let i = self.ranges.partition_point(|r| r.last.lt(s));
        self.ranges.get(i).is_some_and(|r| r.first.le(s))
    }

    /// Removes `s`; true when it was missing (a recovered packet).
    pub fn remove(&mut self, s: Seq) -> bool {
        let Some(i) = self
            .ranges
            .iter()
            .position(|r| r.first.le(s) && s.le(r.last))
        else {
            return false;
        };
        let r = self.ranges[i];
        match (r.first == s, r.last == s) {
            (true, true) => {
                self.ranges.remove(i);
            }
            (true, false) => self.ranges[i].first = s.next(),
            (false, true) => self.ranges[i].last = s.sub(1),
            (false, false) => {
                self.ranges[i].last = s.sub(1);
                self.ranges.insert(
                    i + 1,
                    LossRange {
                        first: s.next(),
                        last: r.last,
                        since: r.since,
                    },
                );
            }
        }
        true
    }

    /// Removes every sequence number in `first..=last` (a sender's DROPREQ); returns how many.
    /// A reversed range (`last` before `first`) names nothing.
    pub fn remove_range(&mut self, first: Seq, last: Seq) -> u32 {
        if last.lt(first) {
            return 0;
        }
        let mut removed = 0;
        let mut kept = VecDeque::with_capacity(self.ranges.len());
        for r in self.ranges.drain(..) {
            if r.last.lt(first) || last.lt(r.first) {
                kept.push_back(r);
                continue;
            }
            if r.first.lt(first) {
                kept.push_back(LossRange {
                    first: r.first,
                    last: first.sub(1),
                    since: r.since,
                });
            }
            let lo = if r.first.lt(first) { first } else { r.first };
            let hi = if last.lt(r.last) { last } else { r.last };
            removed += hi.diff(lo) as u32 + 1;
            if last.lt(r.last) {
                kept.push_back(LossRange {
                    first: last.next(),
                    last: r.last,
                    since: r.since,
                });
            }
        }
        self.ranges = kept;
        removed
    }

    /// Drops the ranges seen before `deadline`; returns how many packets were given up.
    pub fn expire(&mut self, deadline: Instant) -> u32 {
        let mut n = 0;
        while let Some(r) = self.ranges.front() {
            if r.since > deadline {
                break;
            }
            n += r.count();
            self.ranges.pop_front();
        }
        n
    }

    /// Forgets every range; returns how many packets were given up.
    pub fn clear(&mut self) -> u32 {
        self.ranges.drain(..).map(|r| r.count()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn remove_splits_ranges() {
        let t = Instant::now();
        let mut l = LossList::default();
        l.push(Seq::new(10), Seq::new(14), t);
        assert!(l.remove(Seq::new(12)));
        assert!(!l.remove(Seq::new(12)));
        assert!(l.remove(Seq::new(10)));
        assert!(l.remove(Seq::new(14)));
        let r: Vec<_> = l.ranges().map(|r| (r.first.get(), r.last.get())).collect();
        assert_eq!(r, vec![(11, 11), (13, 13)]);
        assert_eq!(l.first(), Some(Seq::new(11)));
    }

    #[test]
    fn insert_merges_and_counts_each_number_once() {
        let t = Instant::now();
        let mut l = LossList::default();
        let s = Seq::new;
        assert_eq!(l.insert(s(10), s(12), t), 3);
        assert_eq!(l.insert(s(20), s(20), t), 1);
        assert_eq!(
            l.insert(s(10), s(12), t),
            0,
            "the same report again adds nothing"
        );
        assert_eq!(
            l.insert(s(13), s(19), t),
            7,
            "fills the hole; touching ranges merge"
        );
        assert_eq!(l.len(), 1);
        assert_eq!(l.insert(s(0x7FFF_FFFE), s(1), t), 4, "across the wrap");
        assert_eq!(l.insert(s(5), s(25), t), 10);
        let r: Vec<_> = l.ranges().map(|r| (r.first.get(), r.last.get())).collect();
        assert_eq!(r, vec![(0x7FFF_FFFE, 1), (5, 25)]);
        l.remove_before(s(7));
        assert_eq!(l.pop_first(), Some(s(7)));
        assert_eq!(l.pop_first(), Some(s(8)));
        l.remove_before(s(26));
        assert!(l.is_empty());
    }

    #[test]
    fn ranges_across_the_wrap_and_expiry() {
        let t = Instant::now();
        let mut l = LossList::default();
        l.push(Seq::new(0x7FFF_FFFE), Seq::new(1), t);
        l.push(Seq::new(5), Seq::new(6), t + Duration::from_millis(50));
        assert!(l.contains(Seq::new(0)));
        assert_eq!(l.remove_range(Seq::new(0x7FFF_FFFF), Seq::new(0)), 2);
        assert_eq!(l.expire(t + Duration::from_millis(10)), 2);
        assert_eq!(l.first(), Some(Seq::new(5)));
        assert_eq!(l.expire(t + Duration::from_millis(60)), 2);
        assert!(l.is_empty());
    }

    /// Found by the receiver fuzz target (a DROPREQ's range as sent): a reversed range split
    /// a range into two overlapping ones and counted about 2^32 packets removed.
    #[test]
    fn reversed_range_removes_nothing() {
        let t = Instant::now();
        let mut l = LossList::default();
        l.push(Seq::new(10), Seq::new(20), t);
        assert_eq!(l.remove_range(Seq::new(15), Seq::new(12)), 0);
        let r: Vec<_> = l.ranges().map(|r| (r.first.get(), r.last.get())).collect();
        assert_eq!(r, vec![(10, 20)]);
    }
}
