//! How queued datagrams leave the relay. The relay core does not know which datapath runs:
//! the userspace one sends everything through the socket; the kernel one (eBPF) also
//! clones data packets to viewers itself and tells the relay which viewers it serves.

pub mod ebpf;
pub mod kernel_log;
mod mmap_array;
pub mod userspace;

use crate::relay::{Relay, RouteEvent};

pub trait Datapath: Send {
    /// `userspace` or `ebpf`, for logs and the `stsync_datapath` metric.
    fn kind(&self) -> &'static str;

    /// Sends and clears the relay's outbox.
    fn flush(&mut self, relay: &mut Relay);

    /// Keeps the datapath's view of viewers and publishers in step with the relay.
    fn on_route(&mut self, relay: &mut Relay, event: &RouteEvent);

    /// Called every `poll_interval`: asynchronous work (the kernel path learns viewer
    /// routes on its own and exports its counters from here).
    fn poll(&mut self, _relay: &mut Relay) {}

    /// When the driver calls `poll` next (asked again after every poll); `None`: never.
    fn poll_interval(&self) -> Option<std::time::Duration> {
        None
    }
}
