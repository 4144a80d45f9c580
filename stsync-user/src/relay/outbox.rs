//! Datagrams the relay wants sent. Control packets and data headers are encoded into one
//! arena; data payloads stay in the stream's ring and are referenced, so fanning a packet
//! out to N viewers writes N 16-byte headers, not N copies (the datapath gathers both parts).

use crate::srt::packet::{write_control, write_data};
use crate::srt::seq::Seq;
use std::net::SocketAddr;
use std::ops::Range;
use stsync_common::srt::ctrl;

/// Buffers larger than this (bytes) shrink back after a burst.
const SHRINK_ABOVE: usize = 256 << 10;
/// Batches between two looks at whether to shrink: a buffer is sized by the largest batch
/// of a whole window, so batches that merely vary (5 packets fanned out, then 1) never make
/// it shrink and grow again, an allocation per packet (seen at 100 encrypted viewers).
const SHRINK_WINDOW: u32 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    None,
    /// Slot `slot` of stream `stream`'s ring.
    Ring {
        stream: u32,
        slot: u32,
    },
}

#[derive(Debug, Clone)]
pub struct Transmit {
    pub dst: SocketAddr,
    /// Bytes of the arena that start the datagram.
    pub head: Range<usize>,
    pub payload: Payload,
}

#[derive(Default)]
pub struct Outbox {
    arena: Vec<u8>,
    items: Vec<Transmit>,
    /// The largest batch of the window so far (arena bytes, items), and its length.
    peak: (usize, usize),
    batches: u32,
}

impl Outbox {
    pub fn push_bytes(&mut self, dst: SocketAddr, bytes: &[u8]) {
        let start = self.arena.len();
        self.arena.extend_from_slice(bytes);
        self.items.push(Transmit {
            dst,
            head: start..self.arena.len(),
            payload: Payload::None,
        });
    }

    /// Queues a control packet; returns its length on the wire.
    pub fn push_control(
        &mut self,
        dst: SocketAddr,
        typ: u16,
        info: u32,
        ts: u32,
        dest: u32,
        body: &[u32],
    ) -> usize {
        let start = self.arena.len();
        write_control(&mut self.arena, typ, info, ts, dest, body);
        self.items.push(Transmit {
            dst,
            head: start..self.arena.len(),
            payload: Payload::None,
        });
        self.arena.len() - start
    }

    /// Queues an extended control message (type 0x7FFF) of `subtype`; returns its length.
    pub fn push_control_ext(
        &mut self,
        dst: SocketAddr,
        subtype: u16,
        ts: u32,
        dest: u32,
        body: &[u32],
    ) -> usize {
        let start = self.arena.len();
        write_control(&mut self.arena, ctrl::USER_DEFINED, 0, ts, dest, body);
        // The subtype is the first word's low half.
        self.arena[start + 2..start + 4].copy_from_slice(&subtype.to_be_bytes());
        self.items.push(Transmit {
            dst,
            head: start..self.arena.len(),
            payload: Payload::None,
        });
        self.arena.len() - start
    }

    pub fn push_data(
        &mut self,
        dst: SocketAddr,
        seq: Seq,
        msg: u32,
        ts: u32,
        dest: u32,
        payload: Payload,
    ) {
        let start = self.arena.len();
        write_data(&mut self.arena, seq, msg, ts, dest, &[]);
        self.items.push(Transmit {
            dst,
            head: start..self.arena.len(),
            payload,
        });
    }

    /// Gives the last queued datagram its own copy of `payload`, then `seal`s (encrypts)
    /// that copy in place: an encrypted viewer's ciphertext is its own, not the ring's.
    pub fn own_payload(&mut self, payload: &[u8], seal: impl FnOnce(&mut [u8])) {
        let Some(t) = self.items.last_mut() else {
            return;
        };
        debug_assert_eq!(
            t.head.end,
            self.arena.len(),
            "the last datagram ends the arena"
        );
        let start = self.arena.len();
        self.arena.extend_from_slice(payload);
        seal(&mut self.arena[start..]);
        t.head.end = self.arena.len();
        t.payload = Payload::None;
    }

    pub fn items(&self) -> &[Transmit] {
        &self.items
    }

    pub fn head(&self, t: &Transmit) -> &[u8] {
        &self.arena[t.head.clone()]
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Empties the outbox, handing back memory a burst left behind: once per window,
    /// buffers far larger than the window's largest batch shrink to twice that.
    pub fn clear(&mut self) {
        self.peak.0 = self.peak.0.max(self.arena.len());
        self.peak.1 = self.peak.1.max(self.items.len());
        self.batches += 1;
        if self.batches >= SHRINK_WINDOW {
            let (bytes, items) = std::mem::take(&mut self.peak);
            self.batches = 0;
            if self.arena.capacity() > SHRINK_ABOVE && bytes < self.arena.capacity() / 4 {
                self.arena.shrink_to(2 * bytes);
            }
            let items_bytes = self.items.capacity() * std::mem::size_of::<Transmit>();
            if items_bytes > SHRINK_ABOVE && items < self.items.capacity() / 4 {
                self.items.shrink_to(2 * items);
            }
        }
        self.arena.clear();
        self.items.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_returns_after_a_burst() {
        let mut o = Outbox::default();
        let dst = SocketAddr::from(([127, 0, 0, 1], 1));
        for _ in 0..100_000 {
            o.push_control(dst, 1, 0, 0, 1, &[0]);
        }
        o.clear();
        assert!(o.items.capacity() >= 100_000, "kept for a batch like it");
        // Small batches for a whole window: the burst's memory goes back at its end, and
        // not before (a batch size that varies must not shrink and regrow the buffers).
        for i in 1..2 * SHRINK_WINDOW {
            o.push_control(dst, 1, 0, 0, 1, &[0]);
            o.clear();
            if i < SHRINK_WINDOW - 1 {
                assert!(o.items.capacity() >= 100_000, "batch {i}");
            }
        }
        assert!(o.items.capacity() < 100, "{}", o.items.capacity());
        assert!(o.arena.capacity() < 100, "{}", o.arena.capacity());
    }
}
