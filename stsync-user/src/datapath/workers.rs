//! The datapath of each worker. Each sends through its own socket; the kernel program's
//! maps have one owner ([`SharedKernel`]), behind a mutex that route events and the poll
//! take (never a data packet), and what it reports goes to the worker that owns each
//! connection (its socket ID says which), which is woken for it. With several workers a
//! viewer moves onto the kernel path when its publisher's worker has just read its socket
//! dry (see `Relay::handle_kernel`).

use super::ebpf::EbpfDatapath;
use super::userspace::Userspace;
use super::{Datapath, DatapathStats};
use crate::os::reuseport::worker_of;
use crate::relay::{KernelReport, RouteEvent, Transmits};
use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The kernel path, shared by every worker.
pub struct SharedKernel {
    dp: Mutex<EbpfDatapath>,
    inbox: Box<[Mutex<VecDeque<KernelReport>>]>,
    wake: Box<[Arc<Notify>]>,
    /// Per worker: a viewer of one of its publishers waits to move onto the kernel path.
    ready: Box<[AtomicBool]>,
}

impl SharedKernel {
    /// `wake[i]` wakes worker `i`'s driver.
    pub fn new(mut dp: EbpfDatapath, wake: Vec<Arc<Notify>>) -> Arc<SharedKernel> {
        if wake.len() > 1 {
            dp.gate();
        }
        Arc::new(SharedKernel {
            dp: Mutex::new(dp),
            inbox: wake.iter().map(|_| Mutex::default()).collect(),
            ready: wake.iter().map(|_| AtomicBool::new(false)).collect(),
            wake: wake.into(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, EbpfDatapath> {
        self.dp.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves the kernel path's reports to their workers' inboxes (waking the others), and
    /// marks the workers whose publishers have viewers waiting for them.
    fn sort_reports(&self, dp: &mut EbpfDatapath, me: usize) {
        let n = self.inbox.len() as u32;
        for r in self.ready.iter() {
            r.store(false, Ordering::Relaxed);
        }
        for w in dp.ready_workers(n) {
            self.ready[w as usize].store(true, Ordering::Relaxed);
        }
        let mut woken = 0u64;
        while let Some(r) = dp.poll_report() {
            let w = worker_of(r.conn(), n).unwrap_or(0) as usize;
            self.inbox[w]
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back(r);
            if w != me && woken & 1 << (w % 64) == 0 {
                woken |= 1 << (w % 64);
                self.wake[w].notify_one();
            }
        }
    }
}

/// One worker's datapath: its own socket's sends, and its part of the kernel path if any.
pub struct WorkerDatapath {
    worker: usize,
    user: Userspace,
    kernel: Option<Arc<SharedKernel>>,
    reports: VecDeque<KernelReport>,
}

impl WorkerDatapath {
    /// `socket` must outlive the datapath and be non-blocking.
    pub fn new(
        worker: usize,
        socket: &impl AsRawFd,
        kernel: Option<Arc<SharedKernel>>,
    ) -> WorkerDatapath {
        WorkerDatapath {
            worker,
            user: Userspace::new(socket),
            kernel,
            reports: VecDeque::new(),
        }
    }

    /// The worker that polls the kernel path.
    fn polls(&self) -> bool {
        self.worker == 0
    }

    /// Runs `f(kernel path, this worker, workers)` when a viewer waits for this worker
    /// (one atomic read otherwise: this runs for every batch the worker reads).
    fn with_waiting(&self, f: impl FnOnce(&mut EbpfDatapath, u32, u32)) {
        let Some(k) = &self.kernel else {
            return;
        };
        if !k.ready[self.worker].load(Ordering::Relaxed) {
            return;
        }
        let mut dp = k.lock();
        f(&mut dp, self.worker as u32, k.inbox.len() as u32);
        k.sort_reports(&mut dp, self.worker);
    }
}

impl Datapath for WorkerDatapath {
    fn kind(&self) -> &'static str {
        if self.kernel.is_some() {
            "ebpf"
        } else {
            "userspace"
        }
    }

    fn send(&mut self, batch: &Transmits<'_>) {
        self.user.send(batch);
    }

    fn on_route(&mut self, now: Instant, event: &RouteEvent) {
        if let Some(k) = &self.kernel {
            let mut dp = k.lock();
            dp.on_route(now, event);
            k.sort_reports(&mut dp, self.worker);
        }
    }

    fn poll(&mut self, now: Instant) {
        if let Some(k) = self.kernel.as_ref().filter(|_| self.polls()) {
            let mut dp = k.lock();
            dp.poll(now);
            k.sort_reports(&mut dp, self.worker);
        }
    }

    fn drained(&mut self, since: Instant) {
        self.with_waiting(|dp, worker, workers| dp.activate_ready(since, worker, workers));
    }

    fn busy(&mut self, asked: Instant) {
        self.with_waiting(|dp, worker, workers| dp.activate_overdue(asked, worker, workers));
    }

    fn poll_report(&mut self) -> Option<KernelReport> {
        if self.reports.is_empty() {
            let k = self.kernel.as_ref()?;
            let mut inbox = k.inbox[self.worker]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            std::mem::swap(&mut self.reports, &mut inbox);
        }
        self.reports.pop_front()
    }

    fn poll_interval(&self, now: Instant) -> Option<Duration> {
        let k = self.kernel.as_ref().filter(|_| self.polls())?;
        k.lock().poll_interval(now)
    }

    fn stats(&self) -> DatapathStats {
        let mut s = DatapathStats {
            kind: self.kind(),
            ..self.user.stats()
        };
        if let Some(k) = self.kernel.as_ref().filter(|_| self.polls()) {
            s.merge(k.lock().stats());
        }
        s
    }
}
