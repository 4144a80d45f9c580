//! Shared harness for the real-client integration tests.
//!
//! Everything here drives the real `stsync-proxy` binary and real libsrt clients
//! (`srt-live-transmit`, `ffmpeg`), so every spawned process is wrapped in a guard that
//! kills it on drop (also when a test panics), every wait is bounded, and every network
//! namespace is deleted on drop.
//!
//! Processes are started with `PR_SET_PDEATHSIG = SIGKILL`: if the test thread that
//! spawned them disappears (the test binary is killed), they go with it. Spawn clients
//! from the test's own thread, never from a short-lived helper thread.
//!
//! One file per concern: `util`, `tempdir`, `proc` (the process guard), `netns`, `http`,
//! `prom` (Prometheus text), `relay` (the relay under test), `clips`, `ts_checks`,
//! `timing` (when bytes reach viewers), `frames` (decoded-frame checks), `clients` (libsrt and ffmpeg clients), `results`.
// Each test binary uses part of the harness.
#![allow(dead_code, unused_imports)]

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::hash::Hash;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use stsync_user::api::{ApiError, Client};
use stsync_user::os;

pub const TS: usize = 188;
/// srt-live-transmit reads stdin in chunks of exactly this many bytes (its `-chunk`
/// default) and never sends a final partial chunk: clips are cut to a multiple of
/// lcm(188, 1456) so that every byte of a clip is published.
pub const SLT_CHUNK: usize = 1456;
pub const CLIP_QUANTUM: usize = 68_432; // lcm(188, 1456)

pub const RELAY_BIN: &str = env!("CARGO_BIN_EXE_stsync-proxy");

mod clients;
mod clips;
mod frames;
mod http;
mod netns;
mod proc;
mod prom;
mod reject;
mod relay;
mod results;
mod tempdir;
mod timing;
mod ts_checks;
mod util;

pub use clients::*;
pub use clips::*;
pub use frames::*;
pub use http::*;
pub use netns::*;
pub use proc::*;
pub use prom::*;
pub use reject::*;
pub use relay::*;
pub use results::*;
pub use tempdir::*;
pub use timing::*;
pub use ts_checks::*;
pub use util::*;
