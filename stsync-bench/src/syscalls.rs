//! Counting another process's system calls over the measurement window, two ways:
//!
//! - `bpf` (default): the raw tracepoint `stsb_sys_enter` of the benchmark's eBPF object
//!   counts the target's syscalls by number in a per-CPU array, read at the window's edges.
//! - `perf`: `perf stat` (linux-perf) with `raw_syscalls:sys_enter` for the total plus the
//!   `syscalls:sys_enter_*` tracepoints of the calls a relay typically makes, started early
//!   with its events disabled (`-D -1`) and switched on and off through its control FIFOs.
//!
//! Either way, while counting, every syscall on the machine takes the kernel's tracepoint
//! path. Measured here with a loop of `sched_yield`: perf's tracepoint events add about
//! 0.5–1 µs per syscall, the raw tracepoint program much less; hence the default.
//! Threads the process starts later are counted too (perf: inherited events; bpf: by TGID).

use anyhow::{bail, Context, Result};
use aya::maps::{Array, MapData, PerCpuArray};
use aya::programs::RawTracePoint;
use aya::Ebpf;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use stsync_bench_common as common;

/// Syscalls counted one by one (when the kernel has their tracepoint); the rest is `other`.
const BREAKDOWN: &[&str] = &[
    "recvmmsg",
    "recvmsg",
    "recvfrom",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "epoll_wait",
    "epoll_pwait",
    "futex",
    "bpf",
    "read",
    "write",
    "sched_yield",
];

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Bpf,
    Perf,
}

/// A running count, whichever the method.
pub enum Counter {
    Bpf(BpfSyscallCounter),
    Perf(SyscallCounter),
}

impl Counter {
    pub fn start(method: Method, pid: u32, object: &Path) -> Result<Counter> {
        Ok(match method {
            Method::Bpf => Counter::Bpf(BpfSyscallCounter::start(object, pid)?),
            Method::Perf => Counter::Perf(SyscallCounter::start(pid)?),
        })
    }

    pub fn enable(&mut self) -> Result<()> {
        match self {
            Counter::Bpf(c) => c.enable(),
            Counter::Perf(c) => c.enable(),
        }
    }

    pub fn disable(&mut self) -> Result<()> {
        match self {
            Counter::Bpf(c) => c.disable(),
            Counter::Perf(c) => c.disable(),
        }
    }

    pub fn finish(self) -> Result<SyscallReport> {
        match self {
            Counter::Bpf(c) => c.finish(),
            Counter::Perf(c) => c.finish(),
        }
    }
}

/// Names of the syscalls a relay is likely to make (x86_64 numbers from libc); the rest
/// are reported as `nr_<number>`.
fn syscall_name(nr: u32) -> String {
    const NAMES: &[(libc::c_long, &str)] = &[
        (libc::SYS_read, "read"),
        (libc::SYS_write, "write"),
        (libc::SYS_close, "close"),
        (libc::SYS_openat, "openat"),
        (libc::SYS_ioctl, "ioctl"),
        (libc::SYS_mmap, "mmap"),
        (libc::SYS_munmap, "munmap"),
        (libc::SYS_madvise, "madvise"),
        (libc::SYS_mprotect, "mprotect"),
        (libc::SYS_brk, "brk"),
        (libc::SYS_recvfrom, "recvfrom"),
        (libc::SYS_sendto, "sendto"),
        (libc::SYS_recvmsg, "recvmsg"),
        (libc::SYS_sendmsg, "sendmsg"),
        (libc::SYS_recvmmsg, "recvmmsg"),
        (libc::SYS_sendmmsg, "sendmmsg"),
        (libc::SYS_accept4, "accept4"),
        (libc::SYS_epoll_wait, "epoll_wait"),
        (libc::SYS_epoll_pwait, "epoll_pwait"),
        (libc::SYS_epoll_pwait2, "epoll_pwait2"),
        (libc::SYS_epoll_ctl, "epoll_ctl"),
        (libc::SYS_futex, "futex"),
        (libc::SYS_bpf, "bpf"),
        (libc::SYS_sched_yield, "sched_yield"),
        (libc::SYS_clock_nanosleep, "clock_nanosleep"),
        (libc::SYS_nanosleep, "nanosleep"),
        (libc::SYS_getrandom, "getrandom"),
        (libc::SYS_statx, "statx"),
        (libc::SYS_rt_sigprocmask, "rt_sigprocmask"),
    ];
    NAMES
        .iter()
        .find(|(n, _)| *n == libc::c_long::from(nr))
        .map_or_else(|| format!("nr_{nr}"), |(_, name)| name.to_string())
}

/// The `bpf` method: the object's raw tracepoint, attached from `start` to drop.
pub struct BpfSyscallCounter {
    bpf: Ebpf,
    enabled_at: Option<(Instant, Vec<u64>)>,
    seconds: f64,
    counts: Vec<u64>,
}

impl BpfSyscallCounter {
    pub fn start(object: &Path, pid: u32) -> Result<BpfSyscallCounter> {
        let bytes = std::fs::read(object)
            .with_context(|| format!("reading the bench eBPF object {}", object.display()))?;
        let mut bpf = aya::EbpfLoader::new()
            .load(&bytes)
            .context("loading the bench eBPF object")?;
        let mut target: Array<&mut MapData, u32> = Array::try_from(
            bpf.map_mut(common::MAP_SYSCOUNT_TARGET)
                .context("no syscall target map")?,
        )?;
        target.set(0, pid, 0)?;
        let prog: &mut RawTracePoint = bpf
            .program_mut(common::PROGRAM_SYSCOUNT)
            .context("no syscall counter program")?
            .try_into()?;
        prog.load().context("verifying the syscall counter")?;
        prog.attach("sys_enter")
            .context("attaching the syscall counter to raw tracepoint sys_enter")?;
        Ok(BpfSyscallCounter {
            bpf,
            enabled_at: None,
            seconds: 0.0,
            counts: vec![0; common::SYSCOUNT_SLOTS as usize],
        })
    }

    fn snapshot(&self) -> Result<Vec<u64>> {
        let map = self
            .bpf
            .map(common::MAP_SYSCOUNT)
            .context("no syscall count map")?;
        let counts = PerCpuArray::<&MapData, u64>::try_from(map)?;
        (0..common::SYSCOUNT_SLOTS)
            .map(|i| Ok(counts.get(&i, 0)?.iter().sum()))
            .collect()
    }

    pub fn enable(&mut self) -> Result<()> {
        let snap = self.snapshot()?;
        self.enabled_at = Some((Instant::now(), snap));
        Ok(())
    }

    pub fn disable(&mut self) -> Result<()> {
        let end = self.snapshot()?;
        let t = Instant::now();
        if let Some((a, start)) = self.enabled_at.take() {
            self.seconds += t.duration_since(a).as_secs_f64();
            for (c, (e, s)) in self.counts.iter_mut().zip(end.iter().zip(&start)) {
                *c += e.saturating_sub(*s);
            }
        }
        Ok(())
    }

    pub fn finish(self) -> Result<SyscallReport> {
        let total = self.counts.iter().sum();
        let by_name = self
            .counts
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(nr, &n)| (syscall_name(nr as u32), n))
            .collect();
        Ok(SyscallReport::new(self.seconds, total, by_name))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SyscallReport {
    /// Length of the counted interval.
    pub seconds: f64,
    pub total: u64,
    pub per_second: f64,
    /// Per syscall: perf counts the names of its list (those the kernel has) and `other`;
    /// bpf counts every syscall number (`nr_<n>` for those without a name here).
    pub by_name: BTreeMap<String, u64>,
}

impl SyscallReport {
    fn new(seconds: f64, total: u64, by_name: BTreeMap<String, u64>) -> SyscallReport {
        SyscallReport {
            seconds,
            total,
            per_second: if seconds > 0.0 {
                total as f64 / seconds
            } else {
                0.0
            },
            by_name,
        }
    }
}

const TRACEFS: &str = "/sys/kernel/tracing";

/// perf names syscall tracepoints through tracefs, which a fresh boot has not mounted: without
/// it every syscall is `other` (seen on a new machine). Mounts it when it is missing and we
/// may; otherwise the breakdown is simply absent from the report.
pub fn mount_tracefs() {
    if Path::new(TRACEFS).join("events").is_dir() {
        return;
    }
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (src, dir, fs) = (c("nodev"), c(TRACEFS), c("tracefs"));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let r = unsafe { libc::mount(src.as_ptr(), dir.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) };
    if r != 0 {
        eprintln!(
            "cannot mount tracefs on {TRACEFS} ({}): perf counts syscalls without names",
            std::io::Error::last_os_error()
        );
    }
}

/// The `perf` method.
pub struct SyscallCounter {
    child: Child,
    ctl: File,
    ack: File,
    dir: PathBuf,
    out: PathBuf,
    events: Vec<String>,
    enabled_at: Option<Instant>,
    seconds: f64,
}

fn mkfifo(path: &std::path::Path) -> Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        bail!(
            "mkfifo {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

impl SyscallCounter {
    /// Starts `perf stat` on `pid`, counting nothing yet.
    pub fn start(pid: u32) -> Result<SyscallCounter> {
        let dir = std::env::temp_dir().join(format!("stsync-perf-{}-{pid}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let (ctl_path, ack_path, out) = (dir.join("ctl"), dir.join("ack"), dir.join("out.csv"));
        mkfifo(&ctl_path)?;
        mkfifo(&ack_path)?;
        // Read-write opens of a FIFO never block, whoever opens the other end first.
        let open = |p: &PathBuf| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(p)
        };
        let (ctl, ack) = (open(&ctl_path)?, open(&ack_path)?);
        let tracefs = std::path::Path::new(TRACEFS).join("events/syscalls");
        mount_tracefs();
        let mut events = vec!["raw_syscalls:sys_enter".to_string()];
        for name in BREAKDOWN {
            if tracefs.join(format!("sys_enter_{name}")).is_dir() {
                events.push(format!("syscalls:sys_enter_{name}"));
            }
        }
        let child = Command::new("perf")
            .args(["stat", "-x", ",", "-D", "-1", "--control"])
            .arg(format!(
                "fifo:{},{}",
                ctl_path.display(),
                ack_path.display()
            ))
            .args(["-e", &events.join(",")])
            .args(["-p", &pid.to_string(), "-o"])
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(dir.join("stderr"))?)
            .spawn()
            .context("starting perf (linux-perf) to count the relay's syscalls")?;
        Ok(SyscallCounter {
            child,
            ctl,
            ack,
            dir,
            out,
            events,
            enabled_at: None,
            seconds: 0.0,
        })
    }

    /// Sends one control command and waits (bounded) for perf's acknowledgement.
    fn command(&mut self, cmd: &str) -> Result<Instant> {
        self.ctl.write_all(format!("{cmd}\n").as_bytes())?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        // perf writes "ack\n" with its C string's NUL.
        while !got.windows(4).any(|w| w == b"ack\n") {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let err = std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default();
                bail!("perf did not acknowledge `{cmd}`: {}", err.trim());
            }
            if let Some(status) = self.child.try_wait()? {
                let err = std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default();
                bail!("perf exited ({status}) before `{cmd}`: {}", err.trim());
            }
            let mut p = libc::pollfd {
                fd: self.ack.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, 100) as i32;
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut p, 1, ms) } == 1 {
                // Readable: this read returns at once.
                let mut buf = [0u8; 64];
                let n = self.ack.read(&mut buf)?;
                got.extend_from_slice(&buf[..n]);
            }
        }
        Ok(Instant::now())
    }

    /// Starts counting (the window begins).
    pub fn enable(&mut self) -> Result<()> {
        self.enabled_at = Some(self.command("enable")?);
        Ok(())
    }

    /// Stops counting (the window ends).
    pub fn disable(&mut self) -> Result<()> {
        let t = self.command("disable")?;
        if let Some(a) = self.enabled_at {
            self.seconds += t.duration_since(a).as_secs_f64();
        }
        self.enabled_at = None;
        Ok(())
    }

    /// Stops perf and reads its counts.
    pub fn finish(mut self) -> Result<SyscallReport> {
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if self.child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                bail!("perf did not exit after SIGINT");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let text = std::fs::read_to_string(&self.out).context("reading perf's output")?;
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split(',').collect();
            if f.len() < 3 || !self.events.iter().any(|e| e == f[2]) {
                continue;
            }
            // "<not counted>" (the threads never ran while enabled) is zero.
            let n = f[0].parse::<u64>().unwrap_or(0);
            *counts.entry(f[2].to_string()).or_default() += n;
        }
        let Some(&total) = counts.get("raw_syscalls:sys_enter") else {
            bail!(
                "perf reported no raw_syscalls:sys_enter count: {}",
                text.trim()
            );
        };
        let mut by_name = BTreeMap::new();
        let mut named = 0;
        for (event, n) in &counts {
            if let Some(name) = event.strip_prefix("syscalls:sys_enter_") {
                by_name.insert(name.to_string(), *n);
                named += n;
            }
        }
        by_name.insert("other".to_string(), total.saturating_sub(named));
        Ok(SyscallReport::new(self.seconds, total, by_name))
    }
}

impl Drop for SyscallCounter {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count_own_syscalls(method: Method) -> Option<SyscallReport> {
        let object = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/bpfel-unknown-none/release/stsync-bench-ebpf");
        let mut c = match Counter::start(method, std::process::id(), &object) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("skipped ({method:?}): {e:#}");
                return None;
            }
        };
        std::thread::sleep(Duration::from_millis(300));
        if let Err(e) = c.enable() {
            eprintln!("skipped ({method:?}): {e:#}");
            return None;
        }
        for _ in 0..10_000 {
            // SAFETY: sched_yield has no preconditions.
            unsafe { libc::sched_yield() };
        }
        c.disable().unwrap();
        Some(c.finish().unwrap())
    }

    /// Need root (and perf, or the built object); skipped otherwise.
    #[test]
    fn counts_this_process() {
        for method in [Method::Bpf, Method::Perf] {
            if let Some(r) = count_own_syscalls(method) {
                assert!(r.total >= 10_000, "{method:?}: {r:?}");
                // perf names a syscall when its tracepoint is there (tracefs mounted, which
                // `start` does as root); it always is on the bpf path.
                let named = method == Method::Bpf
                    || Path::new(TRACEFS)
                        .join("events/syscalls/sys_enter_sched_yield")
                        .is_dir();
                let yields = r.by_name.get("sched_yield").copied().unwrap_or(0);
                if named {
                    assert!((10_000..11_000).contains(&yields), "{method:?}: {r:?}");
                } else {
                    eprintln!("{method:?}: no sched_yield tracepoint, total only: {r:?}");
                }
            }
        }
    }
}
