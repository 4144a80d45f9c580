//! What the workers' relays share. Only the handshake path and the sweep touch it, never a
//! data packet (but for one atomic read per publisher packet: is it still the stream's?):
//! session keys (single use whichever worker sees them), per-address budgets (a caller's
//! connections land on any worker), the connection limits, and each stream's publisher
//! epoch (a takeover on one worker ends the publisher on another).

use super::keys::SessionKeys;
use super::per_address::{AddressLimits, PerAddress};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

/// Streams a relay can hold at once, those a reload adds included (config.json is
/// validated against it). 32 bytes a slot.
pub const MAX_STREAMS: usize = 4096;

pub struct Shared {
    pub workers: u32,
    keys: Mutex<SessionKeys>,
    addresses: Mutex<PerAddress>,
    /// Viewers in all, and per stream (with the handshakes in progress).
    viewers: AtomicUsize,
    streams: Box<[StreamShared]>,
    /// Per worker: it serves some viewer of another worker's publisher from userspace, so
    /// it wants to be woken for each batch fed to it; else it takes its feeds every
    /// `FEED_POLL` (viewers the kernel serves need the packets only for retransmission,
    /// and a wake-up per packet costs the kernel path more than its ACKs).
    prompt: Box<[AtomicBool]>,
    /// Per worker: when its socket was last found empty (ns since `base`), everything read
    /// before fanned out and fed (see `Relay::note_drained`).
    drained: Box<[AtomicU64]>,
    base: Instant,
}

struct StreamShared {
    /// The current publisher's epoch: bumped by each new publisher.
    epoch: AtomicU64,
    viewers: AtomicUsize,
    /// The publisher's packet rate, as its worker last measured it (0: none): every
    /// worker checks a new delay against the same number.
    packet_rate: AtomicU64,
    /// The worker of the current publisher.
    publisher_worker: AtomicU32,
}

impl Shared {
    /// Room for `MAX_STREAMS` streams whatever the configuration holds: a reload adds
    /// streams in free slots, and the per-packet epoch read stays lock-free.
    pub fn new(workers: u32, keys: SessionKeys, limits: AddressLimits, now: Instant) -> Shared {
        Shared {
            workers: workers.max(1),
            keys: Mutex::new(keys),
            addresses: Mutex::new(PerAddress::new(limits)),
            viewers: AtomicUsize::new(0),
            streams: (0..MAX_STREAMS)
                .map(|_| StreamShared {
                    epoch: AtomicU64::new(0),
                    viewers: AtomicUsize::new(0),
                    packet_rate: AtomicU64::new(0),
                    publisher_worker: AtomicU32::new(0),
                })
                .collect(),
            prompt: (0..workers.max(1)).map(|_| AtomicBool::new(true)).collect(),
            drained: (0..workers.max(1)).map(|_| AtomicU64::new(0)).collect(),
            base: now,
        }
    }

    pub fn keys(&self) -> MutexGuard<'_, SessionKeys> {
        // A worker that panicked holding it left nothing half-done that matters more than
        // keeping the others running.
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn addresses(&self) -> MutexGuard<'_, PerAddress> {
        self.addresses.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether both limits leave room for one more viewer of `stream` now.
    pub fn room_for_viewer(&self, stream: usize, max_total: usize, max_per_stream: usize) -> bool {
        self.viewers.load(Ordering::Relaxed) < max_total
            && self.streams[stream].viewers.load(Ordering::Relaxed) < max_per_stream
    }

    /// Counts a new viewer of `stream` if both limits allow it.
    pub fn add_viewer(&self, stream: usize, max_total: usize, max_per_stream: usize) -> bool {
        let s = &self.streams[stream];
        let total = self.viewers.fetch_add(1, Ordering::Relaxed);
        let here = s.viewers.fetch_add(1, Ordering::Relaxed);
        if total >= max_total || here >= max_per_stream {
            self.remove_viewer(stream);
            return false;
        }
        true
    }

    pub fn remove_viewer(&self, stream: usize) {
        self.viewers.fetch_sub(1, Ordering::Relaxed);
        self.streams[stream].viewers.fetch_sub(1, Ordering::Relaxed);
    }

    /// Viewers of `stream` on every worker.
    pub fn viewers(&self, stream: usize) -> usize {
        self.streams[stream].viewers.load(Ordering::Relaxed)
    }

    /// The epoch of `stream`'s publisher now.
    pub fn epoch(&self, stream: usize) -> u64 {
        self.streams[stream].epoch.load(Ordering::Acquire)
    }

    pub fn wants_prompt_feed(&self, worker: u32) -> bool {
        self.prompt[worker as usize].load(Ordering::Relaxed)
    }

    pub fn set_prompt_feed(&self, worker: u32, on: bool) {
        self.prompt[worker as usize].store(on, Ordering::Relaxed);
    }

    pub fn packet_rate(&self, stream: usize) -> u64 {
        self.streams[stream].packet_rate.load(Ordering::Relaxed)
    }

    pub fn set_packet_rate(&self, stream: usize, rate: u64) {
        self.streams[stream]
            .packet_rate
            .store(rate, Ordering::Relaxed);
    }

    /// A new publisher of `stream`, on `worker`: its epoch.
    pub fn new_epoch(&self, stream: usize, worker: u32) -> u64 {
        let s = &self.streams[stream];
        s.publisher_worker.store(worker, Ordering::Relaxed);
        s.epoch.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Stream slot `stream` is retired (its stream removed by a reload): its epoch moves on,
    /// so a packet of its last publisher still in a feed is not taken for the data of a
    /// stream that reuses the slot. Every worker calls it; once would do.
    pub fn retire(&self, stream: usize) {
        self.streams[stream].epoch.fetch_add(1, Ordering::AcqRel);
        self.set_packet_rate(stream, 0);
    }

    pub fn publisher_worker(&self, stream: usize) -> u32 {
        self.streams[stream]
            .publisher_worker
            .load(Ordering::Relaxed)
    }

    /// Worker `w` found its socket empty at `t`, all it read before fanned out and fed.
    pub fn set_drained(&self, w: u32, t: Instant) {
        self.drained[w as usize].fetch_max(self.clock_ns(t), Ordering::Release);
    }

    /// When worker `w` last found its socket empty, as ns on the workers' shared clock.
    pub fn drained(&self, w: u32) -> u64 {
        self.drained[w as usize].load(Ordering::Acquire)
    }

    /// `t` on the workers' shared clock (ns).
    pub fn clock_ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }
}
