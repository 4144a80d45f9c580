//! The run's phases (the publisher connects, the viewers connect, warm-up, the
//! measurement window, a drain) and what is measured at the window's edges: CPU and memory
//! from /proc, and the relay's system calls.

use super::opts::Opts;
use super::publisher::PubShared;
use super::viewers::Viewers;
use crate::report::{CpuReport, RelayCost};
use crate::syscalls::{Counter, SyscallReport};
use anyhow::{bail, Context, Result};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use stsync_user::os::proc::{self, CpuTimes, Stat};

/// Where the run is; advanced once per pass of the viewers' loop.
pub(super) struct Phases {
    t0: Instant,
    viewers: usize,
    publishing: bool,
    next_to_start: usize,
    last_connect_ms: u64,
    all_settled_at: Option<Instant>,
    window_started: Option<Instant>,
    window_ended: Option<Instant>,
    /// Full ACKs the viewers sent during the window (realism check: libsrt sends ~100/s).
    pub(super) acks_in_window: u64,
    sample_a: Option<JoinHandle<Sample>>,
    sample_b: Option<JoinHandle<Sample>>,
    syscalls: Option<SyscallCount>,
    /// --watch-more with --count-syscalls: one count per further relay, in its order.
    more_syscalls: Vec<SyscallCount>,
}

impl Phases {
    pub(super) fn new(t0: Instant, viewers: usize) -> Phases {
        Phases {
            t0,
            viewers,
            publishing: false,
            next_to_start: 0,
            last_connect_ms: 0,
            all_settled_at: None,
            window_started: None,
            window_ended: None,
            acks_in_window: 0,
            sample_a: None,
            sample_b: None,
            syscalls: None,
            more_syscalls: Vec::new(),
        }
    }

    /// Viewers are still to start their handshakes.
    pub(super) fn starting(&self) -> bool {
        self.viewers > 0 && self.next_to_start < self.viewers
    }

    /// Moves to the next phase when its time has come; true once the drain after the
    /// window is over.
    pub(super) fn advance(
        &mut self,
        o: &Opts,
        now: Instant,
        shared: &PubShared,
        vs: &mut Viewers,
        log: &impl Fn(String),
    ) -> bool {
        if !self.publishing && shared.publishing.load(Ordering::Acquire) {
            self.publishing = true;
            log(format!("publisher connected after {:?}", now - self.t0));
        }
        if self.publishing && self.next_to_start < self.viewers {
            self.start_viewers(o, now, vs);
        }
        if self.all_settled_at.is_none() && self.next_to_start == self.viewers && !vs.handshaking()
        {
            self.all_settled_at = Some(now);
            if let (true, Some(pid)) = (o.count_syscalls, o.watch_pid) {
                self.syscalls = Some(SyscallCount::start(o, pid));
            }
            if o.count_syscalls {
                self.more_syscalls = o
                    .watch_more
                    .iter()
                    .map(|&pid| SyscallCount::start(o, pid))
                    .collect();
            }
            let ok = vs.connected();
            log(format!(
                "{ok}/{} viewers connected after {:?}",
                self.viewers,
                now - self.t0
            ));
        }
        let Some(settled) = self.all_settled_at else {
            return false;
        };
        if self.window_started.is_none() && now >= settled + Duration::from_secs_f64(o.warmup) {
            self.open_window(o, now, shared, vs);
        }
        if let Some(ws) = self.window_started {
            if self.window_ended.is_none() && now >= ws + Duration::from_secs_f64(o.duration) {
                self.close_window(o, now, shared, vs);
            }
        }
        self.window_ended
            .is_some_and(|we| now >= we + Duration::from_millis(o.drain_ms))
    }

    /// --connect-rate viewers start per millisecond.
    fn start_viewers(&mut self, o: &Opts, now: Instant, vs: &mut Viewers) {
        let ms = now.duration_since(self.t0).as_millis() as u64;
        if ms != self.last_connect_ms {
            self.last_connect_ms = ms;
            let end = (self.next_to_start + o.connect_rate.max(1) as usize).min(self.viewers);
            vs.start(self.next_to_start..end, now);
            self.next_to_start = end;
        }
    }

    fn open_window(&mut self, o: &Opts, now: Instant, shared: &PubShared, vs: &mut Viewers) {
        self.window_started = Some(now);
        self.acks_in_window = vs.acks_full();
        let start = shared.next_index.load(Ordering::Acquire);
        vs.open_window(
            start,
            (o.media.pkts_per_sec() * (o.duration + 5.0)) as u64 + 1024,
        );
        let (watch, tid) = (o.watch_pid, shared.tid.load(Ordering::Acquire));
        let more = o.watch_more.clone();
        self.sample_a = Some(std::thread::spawn(move || Sample::take(watch, &more, tid)));
        for c in self.syscalls.iter().chain(&self.more_syscalls) {
            c.mark();
        }
    }

    fn close_window(&mut self, o: &Opts, now: Instant, shared: &PubShared, vs: &mut Viewers) {
        self.window_ended = Some(now);
        self.acks_in_window = vs.acks_full() - self.acks_in_window;
        vs.win.end = shared.next_index.load(Ordering::Acquire);
        let (watch, tid) = (o.watch_pid, shared.tid.load(Ordering::Acquire));
        let more = o.watch_more.clone();
        self.sample_b = Some(std::thread::spawn(move || Sample::take(watch, &more, tid)));
        for c in self.syscalls.iter().chain(&self.more_syscalls) {
            c.mark();
        }
    }

    /// The window's CPU figures, the relay's system calls (or why they were not
    /// counted) and the further relays' cost.
    #[allow(clippy::type_complexity)]
    pub(super) fn finish(
        self,
        watch: Option<u32>,
        log: &impl Fn(String),
    ) -> Result<(
        CpuReport,
        Option<SyscallReport>,
        Option<String>,
        Vec<RelayCost>,
    )> {
        let (Some(a), Some(b)) = (self.sample_a, self.sample_b) else {
            bail!("the measurement window never ran");
        };
        let (a, b) = (a.join().expect("sampler"), b.join().expect("sampler"));
        let cpu = cpu_report(&a, &b, watch);
        let mut more = more_relays(&a, &b);
        for (m, s) in more.iter_mut().zip(self.more_syscalls) {
            (m.syscalls, m.syscalls_error) = s.finish();
        }
        let (relay_syscalls, relay_syscalls_error) = match self.syscalls {
            None => (None, None),
            Some(s) => s.finish(),
        };
        if let Some(e) = &relay_syscalls_error {
            log(format!("relay syscalls not counted: {e}"));
        }
        Ok((cpu, relay_syscalls, relay_syscalls_error, more))
    }
}

/// --count-syscalls: a counter on a thread of its own, started once the viewers are
/// connected (it takes a while to set up), counting only between the window's edges.
struct SyscallCount {
    edges: mpsc::Sender<()>,
    thread: JoinHandle<Result<SyscallReport>>,
}

impl SyscallCount {
    fn start(o: &Opts, pid: u32) -> SyscallCount {
        let (edges, rx) = mpsc::channel::<()>();
        let method = o.syscall_counter;
        let object = o
            .sink_object
            .clone()
            .unwrap_or_else(crate::sink::default_object_path);
        let thread = std::thread::spawn(move || -> Result<SyscallReport> {
            let mut c = Counter::start(method, pid, &object)?;
            rx.recv().context("the window never started")?;
            c.enable()?;
            rx.recv().context("the window never ended")?;
            c.disable()?;
            c.finish()
        });
        SyscallCount { edges, thread }
    }

    /// The window starts or ends.
    fn mark(&self) {
        let _ = self.edges.send(());
    }

    fn finish(self) -> (Option<SyscallReport>, Option<String>) {
        drop(self.edges);
        match self.thread.join() {
            Ok(Ok(r)) => (Some(r), None),
            Ok(Err(e)) => (None, Some(format!("{e:#}"))),
            Err(_) => (None, Some("the perf thread panicked".to_string())),
        }
    }
}

/// A --watch-more relay in a `Sample`: its (utime, stime) and RSS, if it was there.
struct MoreSample {
    pid: u32,
    user_sys: Option<(u64, u64)>,
    rss_kb: Option<u64>,
}

/// One relay-side sample for the window's CPU and memory figures.
struct Sample {
    t: Instant,
    self_ticks: u64,
    /// (utime, stime) of this process and of the relay.
    self_us: (u64, u64),
    /// (utime, stime) of the publisher thread.
    pub_us: Option<(u64, u64)>,
    relay_us: Option<(u64, u64)>,
    relay_ticks: Option<u64>,
    relay_rss_kb: Option<u64>,
    /// --watch-more: each further relay.
    more: Vec<MoreSample>,
    cpu: CpuTimes,
    procs: std::collections::HashMap<(u32, u64), u64>,
    softnet_dropped: u64,
}

impl Sample {
    fn take(watch: Option<u32>, more: &[u32], pub_tid: u32) -> Sample {
        let me = Stat::read("self").unwrap_or_default();
        let relay = watch.and_then(Stat::read);
        Sample {
            t: Instant::now(),
            self_ticks: me.cpu_ticks(),
            self_us: me.user_sys(),
            pub_us: (pub_tid != 0)
                .then(|| Stat::read(format!("self/task/{pub_tid}")))
                .flatten()
                .map(|s| s.user_sys()),
            relay_us: relay.map(|s| s.user_sys()),
            relay_ticks: relay.map(|s| s.cpu_ticks()),
            relay_rss_kb: watch.and_then(proc::rss_kb),
            more: more
                .iter()
                .map(|&pid| MoreSample {
                    pid,
                    user_sys: Stat::read(pid).map(|s| s.user_sys()),
                    rss_kb: proc::rss_kb(pid),
                })
                .collect(),
            cpu: CpuTimes::read(),
            procs: proc::user_process_ticks(),
            softnet_dropped: proc::softnet_dropped(),
        }
    }
}

pub(super) fn self_cpu_ticks() -> u64 {
    Stat::read("self").map_or(0, |s| s.cpu_ticks())
}

fn cpu_report(a: &Sample, b: &Sample, watch: Option<u32>) -> CpuReport {
    let secs = b.t.duration_since(a.t).as_secs_f64().max(1e-6);
    let tck = proc::clk_tck() as f64;
    let pct = |ticks: u64| ticks as f64 / tck / secs * 100.0;
    let me = std::process::id();
    let gen = b.self_ticks.saturating_sub(a.self_ticks);
    let relay = match (a.relay_ticks, b.relay_ticks) {
        (Some(x), Some(y)) => Some(y.saturating_sub(x)),
        _ => None,
    };
    let other: u64 = b
        .procs
        .iter()
        .filter(|((pid, _), _)| {
            *pid != me && Some(*pid) != watch && !b.more.iter().any(|m| m.pid == *pid)
        })
        .filter_map(|(k, v)| a.procs.get(k).map(|old| v.saturating_sub(*old)))
        .sum();
    let busy = b.cpu.busy().saturating_sub(a.cpu.busy());
    let relay_us = match (a.relay_us, b.relay_us) {
        (Some(x), Some(y)) => Some((y.0.saturating_sub(x.0), y.1.saturating_sub(x.1))),
        _ => None,
    };
    CpuReport {
        seconds: secs,
        generator_pct: pct(gen),
        generator_user_pct: Some(pct(b.self_us.0.saturating_sub(a.self_us.0))),
        generator_sys_pct: Some(pct(b.self_us.1.saturating_sub(a.self_us.1))),
        generator_publisher_pct: match (a.pub_us, b.pub_us) {
            (Some(x), Some(y)) => Some(pct((y.0 + y.1).saturating_sub(x.0 + x.1))),
            _ => None,
        },
        relay_user_pct: relay_us.map(|r| pct(r.0)),
        relay_sys_pct: relay_us.map(|r| pct(r.1)),
        relay_pct: relay.map(pct),
        system_busy_pct: pct(busy),
        softirq_pct: pct(b.cpu.softirq.saturating_sub(a.cpu.softirq)),
        irq_pct: pct(b.cpu.irq.saturating_sub(a.cpu.irq)),
        other_processes_pct: pct(other),
        attributed_pct: pct(busy.saturating_sub(gen).saturating_sub(other)),
        relay_total_pct: relay.map(|r| {
            pct(r + (b.cpu.softirq + b.cpu.irq).saturating_sub(a.cpu.softirq + a.cpu.irq))
        }),
        softnet_dropped: Some(b.softnet_dropped.saturating_sub(a.softnet_dropped)),
        relay_rss_kb_start: a.relay_rss_kb,
        relay_rss_kb_end: b.relay_rss_kb,
    }
}

/// --watch-more: each further relay's CPU over the window.
fn more_relays(a: &Sample, b: &Sample) -> Vec<RelayCost> {
    let secs = b.t.duration_since(a.t).as_secs_f64().max(1e-6);
    let pct = |ticks: u64| ticks as f64 / proc::clk_tck() as f64 / secs * 100.0;
    a.more
        .iter()
        .zip(&b.more)
        .map(|(x, y)| {
            let d = match (x.user_sys, y.user_sys) {
                (Some(x), Some(y)) => Some((y.0.saturating_sub(x.0), y.1.saturating_sub(x.1))),
                _ => None,
            };
            RelayCost {
                pid: x.pid,
                cpu_pct: d.map(|d| pct(d.0 + d.1)),
                user_pct: d.map(|d| pct(d.0)),
                sys_pct: d.map(|d| pct(d.1)),
                rss_kb_end: y.rss_kb,
                syscalls: None,
                syscalls_error: None,
            }
        })
        .collect()
}
