//! The kernel program's own log lines (aya-log: records in its `AYA_LOGS` ring buffer),
//! forwarded to the daemon's log. aya-log hands them to the `log` crate, which the
//! daemon's tracing subscriber takes in; their targets are the program's modules
//! (`stsync_ebpf::fanout`, `stsync_ebpf::route`, ...), so `RUST_LOG=stsync_ebpf=debug`
//! selects them.
//!
//! The program logs rare events on its own (a route learned at debug level; failed clones,
//! restores and ACKACKs as warnings and errors, thinned to powers of two per CPU) and, when
//! `Config::flags` has `CONFIG_LOG`, every publisher packet and viewer ACK it handles.
//!
//! Nothing depends on a reader: without one (logger not started, or stopped) the ring
//! buffer fills, the program's reservations fail and it drops its lines, nothing else.

use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tracing::warn;

/// Forwards the program's lines while it lives; dropping it stops the forwarding task.
#[must_use = "dropping it stops the forwarding"]
pub struct KernelLog(tokio::task::AbortHandle);

impl Drop for KernelLog {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts forwarding the program's log lines: a tokio task (on the current runtime) that
/// wakes when records arrive. Call it after the program is loaded, from inside a runtime.
/// The logger takes the ring-buffer map out of `bpf`: taken before the program's load and
/// then dropped (a failed start), it would leave the program's map reference dangling and
/// the load would fail. When it cannot start it says why once and returns `None`; the
/// program runs the same.
pub fn start(bpf: &mut Ebpf) -> Option<KernelLog> {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        warn!("kernel program log not forwarded: no tokio runtime to read it from");
        return None;
    };
    let logger = match EbpfLogger::init(bpf) {
        Ok(l) => l,
        Err(e) => {
            warn!("kernel program log not forwarded: {e}");
            return None;
        }
    };
    // SAFETY: the logger owns the ring buffer's descriptor, which stays open and the same
    // for as long as the logger (owned by the AsyncFd from here on) lives.
    let mut fd = match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            warn!("kernel program log not forwarded: {e}");
            return None;
        }
    };
    let task = runtime.spawn(async move {
        loop {
            let Ok(mut ready) = fd.readable_mut().await else {
                return;
            };
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    });
    Some(KernelLog(task.abort_handle()))
}
