//! One stream's retransmission buffer: the publisher's packets in a ring indexed by sequence
//! number, shared by all the stream's viewers.

use crate::srt::seq::Seq;
use std::time::Instant;

#[derive(Default)]
pub struct Slot {
    seq: Option<Seq>,
    pub msg: u32,
    pub ts: u32,
    /// The stream's delay (µs) when the packet was forwarded: a retransmission carries the
    /// timestamp the original did.
    pub delay: u32,
    /// When the relay got it, which is when it sent it to its userspace viewers.
    pub arrived: Option<Instant>,
    pub payload: Vec<u8>,
}

pub struct Ring {
    slots: Vec<Slot>,
    mask: u32,
}

impl Ring {
    /// `capacity` must be a power of two. Slots allocate their payload on first use, so an
    /// idle stream costs almost nothing.
    pub fn new(capacity: u32) -> Self {
        assert!(capacity.is_power_of_two());
        Ring {
            slots: (0..capacity).map(|_| Slot::default()).collect(),
            mask: capacity - 1,
        }
    }

    fn index(&self, seq: Seq) -> usize {
        (seq.get() & self.mask) as usize
    }

    /// Stores a packet (arrived `now`), evicting whatever held its slot. Returns the slot
    /// index.
    pub fn insert(
        &mut self,
        now: Instant,
        seq: Seq,
        msg: u32,
        ts: u32,
        delay: u32,
        payload: &[u8],
    ) -> usize {
        let i = self.index(seq);
        let slot = &mut self.slots[i];
        slot.seq = Some(seq);
        slot.msg = msg;
        slot.ts = ts;
        slot.delay = delay;
        slot.arrived = Some(now);
        slot.payload.clear();
        slot.payload.extend_from_slice(payload);
        i
    }

    pub fn get(&self, seq: Seq) -> Option<(usize, &Slot)> {
        let i = self.index(seq);
        let slot = &self.slots[i];
        (slot.seq == Some(seq)).then_some((i, slot))
    }

    pub fn payload(&self, index: usize) -> &[u8] {
        &self.slots[index].payload
    }

    /// Forgets every packet (a new publisher starts a new sequence space).
    pub fn clear(&mut self) {
        for s in &mut self.slots {
            s.seq = None;
        }
    }

    /// Bytes held by payload allocations.
    pub fn allocated(&self) -> usize {
        self.slots.iter().map(|s| s.payload.capacity()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_by_sequence_and_survives_wrap() {
        let mut r = Ring::new(16);
        let top = Seq::new(0x7FFF_FFFF);
        let t = Instant::now();
        r.insert(t, top, 1, 10, 0, b"a");
        r.insert(t, top.next(), 2, 11, 0, b"b");
        assert_eq!(r.get(top).unwrap().1.payload, b"a");
        assert_eq!(r.get(Seq::new(0)).unwrap().1.msg, 2);
        r.insert(t, Seq::new(15), 3, 12, 0, b"c"); // same slot as 0x7FFF_FFFF
        assert!(r.get(top).is_none());
        r.clear();
        assert!(r.get(Seq::new(0)).is_none());
    }
}
