//! How the relay's output leaves the host. The relay core does not know which datapath
//! runs: the userspace one sends every datagram through the socket; the kernel one (eBPF)
//! also clones data packets to viewers itself and reports what it did. A datapath never
//! sees the relay: it sends what the relay lends it, follows its route events, and hands
//! back `KernelReport`s.

pub mod ebpf;
pub mod handover;
pub mod kernel;
pub mod kernel_log;
mod mmap_array;
pub mod userspace;
pub mod workers;

use crate::relay::{KernelReport, RouteEvent, Transmits};
use kernel::KernelCounters;
use std::time::{Duration, Instant};

pub trait Datapath: Send {
    /// `userspace` or `ebpf`, for logs and the `stsync_datapath` metric.
    fn kind(&self) -> &'static str;

    /// Sends a batch of the relay's datagrams.
    fn send(&mut self, batch: &Transmits<'_>);

    /// Keeps the datapath's view of viewers and publishers in step with the relay.
    fn on_route(&mut self, _now: Instant, _event: &RouteEvent) {}

    /// Called every `poll_interval`: asynchronous work (the kernel path learns viewer
    /// routes on its own and reads what it did for them).
    fn poll(&mut self, _now: Instant) {}

    /// What the datapath did that the relay must know (see `KernelReport`).
    fn poll_report(&mut self) -> Option<KernelReport> {
        None
    }

    /// The driver read the socket dry at `since` (and handed the relay all it read).
    fn drained(&mut self, _since: Instant) {}

    /// The driver read a full batch at `asked`: the socket may hold more.
    fn busy(&mut self, _asked: Instant) {}

    /// When the driver calls `poll` next (asked again after every poll); `None`: never.
    fn poll_interval(&self, _now: Instant) -> Option<Duration> {
        None
    }

    fn stats(&self) -> DatapathStats;
}

/// What a datapath counts, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DatapathStats {
    pub kind: &'static str,
    /// Datagrams the socket refused (buffer full, or an error for one destination).
    pub send_failures: u64,
    /// The kernel program's counters (the eBPF datapath only).
    pub kernel: Option<KernelCounters>,
    /// Streams the kernel path had no row for (see `EbpfOptions::streams`): their viewers
    /// are served from userspace.
    pub streams_without_kernel_row: u64,
}

impl DatapathStats {
    /// Adds another worker's counters (the kernel's are read by one of them).
    pub fn merge(&mut self, other: DatapathStats) {
        self.send_failures += other.send_failures;
        self.kernel = self.kernel.or(other.kernel);
        // One kernel datapath, seen by each worker.
        self.streams_without_kernel_row = self
            .streams_without_kernel_row
            .max(other.streams_without_kernel_row);
    }
}
