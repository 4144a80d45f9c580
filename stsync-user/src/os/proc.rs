//! Process and machine accounting from /proc. A process may exit between two reads, so
//! the per-process readers answer `None` then rather than an error.
//!
//! `pid` is anything /proc names a process or thread by: a number, `self`, or
//! `self/task/<tid>` for one thread of this process.

use std::collections::HashMap;
use std::fmt::Display;
use std::fs;

/// Clock ticks per second, the unit of /proc's CPU times.
pub fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as u64
}

/// The fields of /proc/<pid>/stat that the accounting uses; times in clock ticks.
///
/// With tick-based accounting, softirq work that runs while the process is current (e.g.
/// packets its own sends set off) is in its `stime` as well as in /proc/stat's softirq.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stat {
    pub utime: u64,
    pub stime: u64,
    /// PF_* flags (PF_KTHREAD: a kernel thread).
    pub flags: u64,
    /// When the process started, ticks after boot: with the PID, it names one process.
    pub starttime: u64,
}

const PF_KTHREAD: u64 = 0x0020_0000;

impl Stat {
    pub fn read(pid: impl Display) -> Option<Stat> {
        Stat::parse(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    pub fn parse(text: &str) -> Option<Stat> {
        // The command name may hold spaces and ')': the fields start after the last ')'.
        let rest = text.get(text.rfind(')')? + 2..)?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // f[0] is field 3 (state); flags is field 9, utime 14, stime 15, starttime 22.
        let field = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
        Some(Stat {
            utime: field(14)?,
            stime: field(15)?,
            flags: field(9)?,
            starttime: field(22)?,
        })
    }

    /// utime + stime.
    pub fn cpu_ticks(&self) -> u64 {
        self.utime + self.stime
    }

    pub fn cpu_seconds(&self) -> f64 {
        self.cpu_ticks() as f64 / clk_tck() as f64
    }

    pub fn user_sys(&self) -> (u64, u64) {
        (self.utime, self.stime)
    }

    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }
}

/// /proc/<pid>/status: `Name:   value ...` lines, e.g. VmRSS (KiB) and Threads.
#[derive(Debug, Clone, Default)]
pub struct Status(String);

impl Status {
    pub fn read(pid: impl Display) -> Option<Status> {
        fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .map(Status)
    }

    pub fn parse(text: &str) -> Status {
        Status(text.to_string())
    }

    /// The first number of field `name`.
    pub fn field(&self, name: &str) -> Option<u64> {
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }
}

/// Resident memory (VmRSS) of a process, KiB.
pub fn rss_kb(pid: impl Display) -> Option<u64> {
    Status::read(pid)?.field("VmRSS")
}

/// Open file descriptors of a process (entries of /proc/<pid>/fd).
pub fn fd_count(pid: impl Display) -> Option<u64> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// utime + stime of every user-space process, keyed by (pid, starttime), for subtracting
/// the machine's other activity from machine-wide deltas.
pub fn user_process_ticks() -> HashMap<(u32, u64), u64> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let st = Stat::read(pid)?;
            (!st.is_kernel_thread()).then_some(((pid, st.starttime), st.cpu_ticks()))
        })
        .collect()
}

/// The aggregate `cpu` line of /proc/stat, in ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl CpuTimes {
    /// All zero if /proc/stat cannot be read.
    pub fn read() -> CpuTimes {
        CpuTimes::parse(&fs::read_to_string("/proc/stat").unwrap_or_default())
    }

    pub fn parse(text: &str) -> CpuTimes {
        let line = text.lines().find(|l| l.starts_with("cpu ")).unwrap_or("");
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        let g = |i: usize| v.get(i).copied().unwrap_or(0);
        CpuTimes {
            user: g(0),
            nice: g(1),
            system: g(2),
            idle: g(3),
            iowait: g(4),
            irq: g(5),
            softirq: g(6),
            steal: g(7),
        }
    }

    /// Everything but idle and iowait.
    pub fn busy(&self) -> u64 {
        self.user + self.nice + self.system + self.irq + self.softirq + self.steal
    }
}

/// Packets the kernel dropped because a CPU's input backlog was full (netdev_max_backlog),
/// all CPUs: column 2 of /proc/net/softnet_stat. Machine-wide (veth delivery goes through
/// these backlogs in every namespace).
pub fn softnet_dropped() -> u64 {
    fs::read_to_string("/proc/net/softnet_stat")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|h| u64::from_str_radix(h, 16).ok())
        .sum()
}

/// /proc/loadavg as it reads (empty if it cannot be read).
pub fn loadavg() -> String {
    read_trimmed("/proc/loadavg")
}

/// The kernel's release (/proc/sys/kernel/osrelease).
pub fn kernel_release() -> String {
    read_trimmed("/proc/sys/kernel/osrelease")
}

/// The first CPU's model name from /proc/cpuinfo (empty if none is given).
pub fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default()
}

fn read_trimmed(path: &str) -> String {
    fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_follow_the_last_parenthesis() {
        let line = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    17 5 0 0 20 0 3 0 123456 1000000 300 18446744073709551615";
        let st = Stat::parse(line).unwrap();
        assert_eq!(
            st,
            Stat {
                utime: 17,
                stime: 5,
                flags: 4194560,
                starttime: 123456
            }
        );
        assert_eq!(st.cpu_ticks(), 22);
        assert!(!st.is_kernel_thread());
        assert_eq!(Stat::parse("12 (x) S 1 2"), None);
        assert_eq!(Stat::parse("no parenthesis"), None);
        assert_eq!(Stat::parse("1 (x)"), None);
    }

    #[test]
    fn reads_this_process() {
        let me = Stat::read("self").unwrap();
        assert_eq!(
            Stat::read(std::process::id()).unwrap().starttime,
            me.starttime
        );
        assert!(rss_kb("self").unwrap() > 0);
        assert!(fd_count("self").unwrap() >= 3);
        assert_eq!(Stat::read(u32::MAX), None);
        assert!(user_process_ticks().contains_key(&(std::process::id(), me.starttime)));
    }

    #[test]
    fn status_fields() {
        let st = Status::parse("Name:\tx\nVmRSS:\t   14336 kB\nThreads:\t3\n");
        assert_eq!(st.field("VmRSS"), Some(14336));
        assert_eq!(st.field("Threads"), Some(3));
        assert_eq!(st.field("VmSwap"), None);
        assert_eq!(st.field("Name"), None);
    }

    #[test]
    fn cpu_line_of_proc_stat() {
        let t = CpuTimes::parse("cpu  10 1 20 500 7 3 4 2 0 0\ncpu0 5 0 10 250 3 1 2 1 0 0\n");
        assert_eq!((t.user, t.idle, t.softirq, t.steal), (10, 500, 4, 2));
        assert_eq!(t.busy(), 10 + 1 + 20 + 3 + 4 + 2);
        assert_eq!(CpuTimes::parse(""), CpuTimes::default());
    }
}
