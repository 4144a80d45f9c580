//! Fan-out benchmark for stsync-proxy: `stsync-loadgen` (one publisher and N SRT viewers in
//! one cheap process) and `stsync-bench sweep` (namespaces, datapaths, viewer and bitrate
//! sweeps, a raw UDP baseline, JSON and an SVG plot) and `stsync-bench soak` (a long
//! realistic and hostile load, sampled for leaks and degradation).

pub mod caller;
pub mod dump;
pub mod hist;
pub mod http;
pub mod loadgen;
pub mod plot;
pub mod report;
pub mod sink;
pub mod soak;
pub mod sweep;
pub mod syscalls;
