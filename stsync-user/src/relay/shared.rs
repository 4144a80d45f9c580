//! What the workers' relays share. Only the handshake path and the sweep touch it, never a
//! data packet (but for one atomic read per publisher packet: is it still the stream's?):
//! session keys (single use whichever worker sees them), per-address budgets (a caller's
//! connections land on any worker), the connection limits, and each stream's publisher
//! epoch (a takeover on one worker ends the publisher on another).

use super::keys::SessionKeys;
use super::per_address::{AddressLimits, PerAddress};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

pub struct Shared {
    pub workers: u32,
    keys: Mutex<SessionKeys>,
    addresses: Mutex<PerAddress>,
    /// Viewers in all, and per stream (with the handshakes in progress).
    viewers: AtomicUsize,
    streams: Box<[StreamShared]>,
}

struct StreamShared {
    /// The current publisher's epoch: bumped by each new publisher.
    epoch: AtomicU64,
    viewers: AtomicUsize,
}

impl Shared {
    pub fn new(workers: u32, streams: usize, ttl: Duration, limits: AddressLimits) -> Shared {
        Shared {
            workers: workers.max(1),
            keys: Mutex::new(SessionKeys::new(ttl)),
            addresses: Mutex::new(PerAddress::new(limits)),
            viewers: AtomicUsize::new(0),
            streams: (0..streams)
                .map(|_| StreamShared {
                    epoch: AtomicU64::new(0),
                    viewers: AtomicUsize::new(0),
                })
                .collect(),
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

    /// A new publisher of `stream`: its epoch.
    pub fn new_epoch(&self, stream: usize) -> u64 {
        self.streams[stream].epoch.fetch_add(1, Ordering::AcqRel) + 1
    }
}
