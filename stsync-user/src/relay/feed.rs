//! A worker's publishers' data for the other workers' viewers: a broadcast ring with one
//! writer (the worker that holds the publisher) and any number of readers (the workers
//! with viewers of its streams), without a lock.
//!
//! Each slot is a seqlock made of atomics only: the writer marks it odd, writes, and marks
//! it with the even number that names the entry (`2 × index + 2`); a reader copies the slot
//! and keeps the copy only if the mark was that number before and after. So a reader never
//! waits for the writer and the writer never waits for a reader: a reader that falls a
//! whole ring behind (or is overtaken mid-copy) is told how many entries it lost, and its
//! viewers ask for them as for any loss. Relaxed atomic word copies compile to plain moves:
//! no `unsafe` on the packet path, and no data race for the compiler to exploit.
//!
//! Each reader copies what it keeps into its own ring (`ring.rs`): the userspace datapath
//! lends ring slots to `sendmmsg` without copying, and a slot shared with a writer that
//! wraps could change before the datagram left.

use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Arc;
use stsync_common::srt::MAX_PAYLOAD;

/// Entries per feed: at 4 Mbit/s (400 packets/s) per stream, 100 streams on one worker
/// fill it in 100 ms, far longer than a reader's turn takes.
pub const FEED_SLOTS: usize = 4096;
const HEAD_WORDS: usize = 8;
const PAYLOAD_WORDS: usize = MAX_PAYLOAD.div_ceil(8);

/// What a feed entry says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A publisher data packet (decrypted), as stored in the writer's ring.
    Data,
    /// The stream's publisher of `epoch` is gone.
    Gone,
}

/// Everything but the payload. Besides the packet, it carries what the reader's viewers
/// need of the publisher's receiver: its byte rate (the retransmission budget) and the oldest
/// packet it still expects (a loss not in the ring yet, but coming).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub stream: u32,
    pub epoch: u64,
    pub seq: u32,
    pub msg: u32,
    pub ts: u32,
    /// The stream's delay the packet went out with, µs.
    pub delay: u32,
    /// Where a viewer this packet maps starts (see `Relay::on_data`).
    pub start: Option<u32>,
    pub first_missing: Option<u32>,
    pub byte_rate: u32,
    /// How far ahead of its upstream's clock a pulled stream's packet arrived, µs (its
    /// upstream's delay: see `Relay::on_data`); 0 for a publisher's.
    pub lead: u32,
    /// When the writer last found its socket empty before it read this packet (ns on the
    /// workers' shared clock): the packet reached the socket after then.
    pub drained: u64,
}

impl Header {
    pub fn gone(stream: u32, epoch: u64) -> Header {
        Header {
            kind: Kind::Gone,
            stream,
            epoch,
            seq: 0,
            msg: 0,
            ts: 0,
            delay: 0,
            start: None,
            first_missing: None,
            byte_rate: 0,
            lead: 0,
            drained: 0,
        }
    }

    fn words(&self, len: usize) -> [u64; HEAD_WORDS] {
        let opt = |v: Option<u32>| v.map_or(0, |v| u64::from(v) | 1 << 32);
        [
            u64::from(self.stream) | (self.kind as u64) << 32 | (len as u64) << 40,
            self.epoch,
            u64::from(self.seq) | u64::from(self.msg) << 32,
            u64::from(self.ts) | u64::from(self.delay) << 32,
            opt(self.start),
            u64::from(self.byte_rate) | u64::from(self.lead) << 32,
            opt(self.first_missing),
            self.drained,
        ]
    }

    fn from_words(w: &[u64; HEAD_WORDS]) -> (Header, usize) {
        let lo = |v: u64| v as u32;
        let hi = |v: u64| (v >> 32) as u32;
        let opt = |v: u64| (v >> 32 & 1 == 1).then_some(v as u32);
        let h = Header {
            kind: if w[0] >> 32 & 0xFF == Kind::Gone as u64 {
                Kind::Gone
            } else {
                Kind::Data
            },
            stream: lo(w[0]),
            epoch: w[1],
            seq: lo(w[2]),
            msg: hi(w[2]),
            ts: lo(w[3]),
            delay: hi(w[3]),
            start: opt(w[4]),
            first_missing: opt(w[6]),
            drained: w[7],
            byte_rate: lo(w[5]),
            lead: hi(w[5]),
        };
        // Never longer than a slot holds, whatever a torn read produced (the read is then
        // thrown away anyway).
        (h, ((w[0] >> 40) as usize).min(MAX_PAYLOAD))
    }
}

struct Slot {
    /// `2 × index + 2` once entry `index` is whole in it; odd while it is being written.
    mark: AtomicU64,
    head: [AtomicU64; HEAD_WORDS],
    payload: [AtomicU64; PAYLOAD_WORDS],
}

struct Ring {
    slots: Box<[Slot]>,
    /// Entries written so far.
    written: AtomicU64,
}

/// The one writer of a feed (not `Clone`: one writer by construction).
pub struct Writer {
    ring: Arc<Ring>,
    next: u64,
}

/// One reader's place in a feed.
pub struct Reader {
    ring: Arc<Ring>,
    next: u64,
}

/// What a reader gets next.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// An entry; its payload is in the buffer given (empty if the entry was not wanted).
    Entry(Header),
    /// This many entries were overwritten before they could be read.
    Lost(u64),
}

/// A feed of `slots` entries (rounded up to a power of two), its writer and a way to make
/// readers.
pub fn feed(slots: usize) -> (Writer, ReaderSource) {
    let ring = Arc::new(Ring {
        slots: zeroed_slots(slots.next_power_of_two()),
        written: AtomicU64::new(0),
    });
    (
        Writer {
            ring: ring.clone(),
            next: 0,
        },
        ReaderSource(ring),
    )
}

/// `n` empty slots, from zeroed memory: the pages stay unmapped until the writer first
/// reaches them, so the feed of a worker whose publishers feed nobody costs no memory.
fn zeroed_slots(n: usize) -> Box<[Slot]> {
    // SAFETY: a slot is atomics only, and all-zero bytes are an `AtomicU64` of 0: an
    // empty slot (mark 0 names no entry).
    unsafe { Box::<[Slot]>::new_zeroed_slice(n).assume_init() }
}

/// Makes readers of one feed; each starts at the entries written after it was made.
#[derive(Clone)]
pub struct ReaderSource(Arc<Ring>);

impl ReaderSource {
    pub fn reader(&self) -> Reader {
        Reader {
            ring: self.0.clone(),
            next: self.0.written.load(Ordering::Acquire),
        }
    }
}

impl Writer {
    pub fn push(&mut self, h: &Header, payload: &[u8]) {
        let len = payload.len().min(MAX_PAYLOAD);
        let i = self.next;
        let slot = &self.ring.slots[i as usize & (self.ring.slots.len() - 1)];
        slot.mark.store(2 * i + 1, Ordering::Relaxed);
        // Orders the odd mark before the words: a reader that sees a new word sees it too.
        fence(Ordering::Release);
        for (a, w) in slot.head.iter().zip(h.words(len)) {
            a.store(w, Ordering::Relaxed);
        }
        for (a, chunk) in slot.payload.iter().zip(payload[..len].chunks(8)) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            a.store(u64::from_le_bytes(w), Ordering::Relaxed);
        }
        slot.mark.store(2 * i + 2, Ordering::Release);
        self.next = i + 1;
        self.ring.written.store(self.next, Ordering::Release);
    }
}

impl Reader {
    /// The next entry, if one was written; its payload into `payload` when `want` says
    /// its stream is wanted (else the payload is not copied).
    pub fn next(&mut self, payload: &mut Vec<u8>, want: impl Fn(u32) -> bool) -> Option<Read> {
        let ring = &*self.ring;
        let written = ring.written.load(Ordering::Acquire);
        if self.next >= written {
            return None;
        }
        let size = ring.slots.len() as u64;
        if written - self.next > size {
            // Lapped: the oldest entry still there is the next one that may be read.
            let lost = written - size - self.next;
            self.next = written - size;
            return Some(Read::Lost(lost));
        }
        let i = self.next;
        let slot = &ring.slots[i as usize & (ring.slots.len() - 1)];
        let mark = 2 * i + 2;
        payload.clear();
        if slot.mark.load(Ordering::Acquire) != mark {
            // Overwritten since `written` was read: lapped after all.
            self.next += 1;
            return Some(Read::Lost(1));
        }
        let words: [u64; HEAD_WORDS] =
            std::array::from_fn(|k| slot.head[k].load(Ordering::Relaxed));
        let (h, len) = Header::from_words(&words);
        if want(h.stream) {
            for a in &slot.payload[..len.div_ceil(8)] {
                payload.extend_from_slice(&a.load(Ordering::Relaxed).to_le_bytes());
            }
            payload.truncate(len);
        }
        // Orders the copy before the second look at the mark (the seqlock's read side).
        fence(Ordering::Acquire);
        self.next += 1;
        if slot.mark.load(Ordering::Relaxed) != mark {
            payload.clear();
            return Some(Read::Lost(1));
        }
        Some(Read::Entry(h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn header(i: u64) -> Header {
        Header {
            kind: if i.is_multiple_of(7) {
                Kind::Gone
            } else {
                Kind::Data
            },
            stream: (i % 5) as u32,
            epoch: i,
            seq: i as u32 ^ 0x5555,
            msg: (i * 3) as u32,
            ts: (i * 7) as u32,
            delay: (i * 11) as u32,
            start: i.is_multiple_of(3).then_some(i as u32),
            first_missing: i.is_multiple_of(4).then_some(!(i as u32)),
            byte_rate: (i * 13) as u32,
            lead: (i * 7) as u32,
            drained: i * 19,
        }
    }

    /// Entry `i`'s payload: a length and bytes that both follow from `i`.
    fn payload(i: u64) -> Vec<u8> {
        let len = (i as usize * 97) % (MAX_PAYLOAD + 1);
        (0..len).map(|k| (i as usize + k * 31) as u8).collect()
    }

    #[test]
    fn entries_round_trip() {
        let (mut w, src) = feed(8);
        let mut r = src.reader();
        let mut buf = Vec::new();
        for i in 0..20 {
            w.push(&header(i), &payload(i));
            assert_eq!(r.next(&mut buf, |_| true), Some(Read::Entry(header(i))));
            assert_eq!(buf, payload(i));
        }
        assert_eq!(r.next(&mut buf, |_| true), None);
        // Not wanted: the header only.
        w.push(&header(3), &payload(3));
        assert_eq!(r.next(&mut buf, |s| s != 3), Some(Read::Entry(header(3))));
        assert!(buf.is_empty());
    }

    #[test]
    fn a_lapped_reader_is_told_what_it_lost() {
        let (mut w, src) = feed(8);
        let mut r = src.reader();
        let mut buf = Vec::new();
        for i in 0..20 {
            w.push(&header(i), &payload(i));
        }
        assert_eq!(r.next(&mut buf, |_| true), Some(Read::Lost(12)));
        for i in 12..20 {
            assert_eq!(r.next(&mut buf, |_| true), Some(Read::Entry(header(i))));
        }
        // A reader made now starts at what comes next.
        let mut late = src.reader();
        assert_eq!(late.next(&mut buf, |_| true), None);
    }

    /// The single-writer/many-reader contract under real concurrency: a writer and three
    /// readers on their own threads, a ring small enough to be lapped all the time and
    /// readers that pause at random. Every entry a reader keeps is exactly what was
    /// written for its index (header and payload, never torn), in order, and what it
    /// keeps plus what it is told it lost is everything written.
    #[test]
    fn one_writer_many_readers_never_see_a_torn_entry() {
        const N: u64 = 200_000;
        let (mut w, src) = feed(16);
        let readers: Vec<_> = (0..3)
            .map(|k| {
                let mut r = src.reader();
                std::thread::spawn(move || {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(k);
                    let mut buf = Vec::new();
                    let (mut kept, mut lost, mut last) = (0u64, 0u64, None::<u64>);
                    while kept + lost < N {
                        match r.next(&mut buf, |_| true) {
                            None => std::hint::spin_loop(),
                            Some(Read::Lost(n)) => lost += n,
                            Some(Read::Entry(h)) => {
                                let i = h.epoch;
                                assert_eq!(h, header(i), "torn header");
                                assert_eq!(buf, payload(i), "torn payload of {i}");
                                assert!(last.is_none_or(|l| l < i), "out of order");
                                last = Some(i);
                                kept += 1;
                            }
                        }
                        if rng.random_ratio(1, 1000) {
                            std::thread::sleep(std::time::Duration::from_micros(50));
                        }
                    }
                    assert_eq!(kept + lost, N);
                    kept
                })
            })
            .collect();
        for i in 0..N {
            w.push(&header(i), &payload(i));
        }
        for r in readers {
            let kept = r.join().expect("reader");
            assert!(kept > 0);
        }
    }
}
