//! Counting another process's system calls over the measurement window with `perf stat`
//! (linux-perf): `raw_syscalls:sys_enter` for the total, plus the `syscalls:sys_enter_*`
//! tracepoints of the calls a relay typically makes, per thread of the process (inherited
//! by threads it starts later).
//!
//! perf is started early with its events disabled (`-D -1`) and switched on and off through
//! its control FIFOs at the window's edges, so its start-up cost stays out of the window;
//! the window's length is measured here between perf's acknowledgements. While perf runs,
//! every syscall on the machine takes the kernel's tracepoint path, which costs a little
//! (see docs/BENCHMARKS.md).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SyscallReport {
    /// Length of the counted interval.
    pub seconds: f64,
    pub total: u64,
    pub per_second: f64,
    /// Per syscall name (those of the breakdown list the kernel has), and `other`.
    pub by_name: BTreeMap<String, u64>,
}

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
        let tracefs = std::path::Path::new("/sys/kernel/tracing/events/syscalls");
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
        Ok(SyscallReport {
            seconds: self.seconds,
            total,
            per_second: if self.seconds > 0.0 {
                total as f64 / self.seconds
            } else {
                0.0
            },
            by_name,
        })
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

    /// Needs perf and root (or perf_event_paranoid <= 1); skipped otherwise.
    #[test]
    fn counts_this_process() {
        let Ok(mut c) = SyscallCounter::start(std::process::id()) else {
            return;
        };
        std::thread::sleep(Duration::from_millis(500));
        if let Err(e) = c.enable() {
            eprintln!("skipped: {e:#}");
            return;
        }
        for _ in 0..10_000 {
            // SAFETY: getppid has no preconditions.
            unsafe { libc::getppid() };
        }
        c.disable().unwrap();
        let r = c.finish().unwrap();
        assert!(r.total >= 10_000, "{r:?}");
    }
}
