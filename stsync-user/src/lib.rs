//! stsync-proxy: a live SRT relay. See the README for what it does and how to run it.

pub mod access;
pub mod alloc_count;
pub mod api;
pub mod clients;
pub mod config;
pub mod datapath;
pub mod delay;
pub mod driver;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod metrics;
pub mod os;
pub mod pull_keys;
pub mod relay;
pub mod reload;
pub mod srt;
pub mod tls;
