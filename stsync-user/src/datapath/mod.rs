//! How queued datagrams leave the relay. The relay core does not know which datapath runs:
//! the userspace one sends everything through the socket; a kernel one (eBPF, next) also
//! clones data packets to viewers itself and tells the relay which viewers it serves.

pub mod userspace;

use crate::relay::{Relay, RouteEvent};

pub trait Datapath: Send {
    /// `userspace` or `ebpf`, for logs and the `stsync_datapath` metric.
    fn kind(&self) -> &'static str;

    /// Sends and clears the relay's outbox.
    fn flush(&mut self, relay: &mut Relay);

    /// Keeps the datapath's view of viewers and publishers in step with the relay.
    fn on_route(&mut self, relay: &mut Relay, event: &RouteEvent);
}
