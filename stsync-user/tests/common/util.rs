//! Small utilities.

use super::*;

pub(crate) static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `tag-<pid>-<n>`.
pub fn unique(tag: &str) -> String {
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn sleep_secs(s: f64) {
    std::thread::sleep(Duration::from_secs_f64(s));
}

pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Removes ANSI escape sequences (colored log output).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            if it.peek() == Some(&'[') {
                it.next();
                for d in it.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

pub fn tail_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

pub fn read_lossy(p: &Path) -> String {
    fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Serializes timing-sensitive tests within one test binary (the loss tests: two relays
/// repairing loss at once on a 2-core machine measure the machine, not the relay).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Skips (prints the reason, returns false) when not root, unless a privileged run is
/// required (`STSYNC_REQUIRE_PRIVILEGED=1`, or `CI=true` as the README says): then panics.
pub fn require_root(test_name: &str) -> bool {
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let required = std::env::var("STSYNC_REQUIRE_PRIVILEGED").as_deref() == Ok("1")
        || std::env::var("CI").as_deref() == Ok("true");
    if required {
        panic!("{test_name}: needs root, and a privileged run is required (STSYNC_REQUIRE_PRIVILEGED=1 or CI=true)");
    }
    eprintln!("SKIPPED {test_name}: needs root");
    false
}

/// Runs a command to completion (bounded), returning stdout or a descriptive error.
pub fn run(prog: &str, args: &[&str]) -> Result<String, String> {
    run_with_stdin(prog, args, None)
}

pub fn run_with_stdin(prog: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut cmd = Command::new(tool(prog));
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("{prog}: {e}"))?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .map_err(|e| e.to_string())?;
    }
    // Every command run this way is short (ip, nft, ffmpeg on small files).
    let start = Instant::now();
    loop {
        if let Some(_st) = child.try_wait().map_err(|e| e.to_string())? {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{prog} {args:?}: timed out"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{prog} {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
