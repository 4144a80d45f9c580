//! Thin Linux helpers, one of each, shared by the daemon, the benchmark (stsync-bench) and
//! the integration tests: network namespaces, /proc accounting, clocks, UDP sockets and
//! batched datagram I/O.

pub mod clock;
pub mod link_watch;
pub mod mmsg;
pub mod netns;
pub mod proc;
pub mod reuseport;
pub mod udp;

pub use netns::in_netns;
