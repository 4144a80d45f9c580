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
#![allow(dead_code)]

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

pub const TS: usize = 188;
/// srt-live-transmit reads stdin in chunks of exactly this many bytes (its `-chunk`
/// default) and never sends a final partial chunk: clips are cut to a multiple of
/// lcm(188, 1456) so that every byte of a clip is published.
pub const SLT_CHUNK: usize = 1456;
pub const CLIP_QUANTUM: usize = 68_432; // lcm(188, 1456)

pub const RELAY_BIN: &str = env!("CARGO_BIN_EXE_stsync-proxy");

// ---------------------------------------------------------------------------------------
// small utilities
// ---------------------------------------------------------------------------------------

static COUNTER: AtomicU32 = AtomicU32::new(0);

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

// ---------------------------------------------------------------------------------------
// temp dirs (under cargo's per-target tmp dir)
// ---------------------------------------------------------------------------------------

pub fn tmp_root() -> PathBuf {
    // No "stsync" or client names in these paths: see `tool`.
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("stt")
}

/// The path to run `prog` by. Clients and the relay run through symlinks with names of
/// their own (`sttslt`, `sttffm`, `sttpv`, `sttrelay`): a developer's
/// `pkill srt-live-transmit` / `pkill -f stsync` on the same machine then does not kill
/// a running test's processes (seen while the daemon was being written next to these
/// tests). The programs are the same binaries.
pub fn tool(prog: &str) -> PathBuf {
    let (alias, target) = match prog {
        "srt-live-transmit" => ("sttslt", which(prog)),
        "ffmpeg" => ("sttffm", which(prog)),
        "pv" => ("sttpv", which(prog)),
        "relay" => ("sttrelay", PathBuf::from(RELAY_BIN)),
        _ => return PathBuf::from(prog),
    };
    let dir = tmp_root().join("bin");
    let link = dir.join(alias);
    if fs::read_link(&link).ok().as_deref() != Some(target.as_path()) {
        fs::create_dir_all(&dir).unwrap();
        let tmp = dir.join(format!(".{alias}.{}", unique("l")));
        std::os::unix::fs::symlink(&target, &tmp).unwrap();
        fs::rename(&tmp, &link).unwrap();
    }
    link
}

fn which(prog: &str) -> PathBuf {
    for d in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(d).join(prog);
        if p.is_file() {
            return p;
        }
    }
    panic!("{prog} not found in PATH (apt-get install ffmpeg srt-tools pv)");
}

/// A directory removed on drop; kept (and its path printed) when the test panicked.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let path = tmp_root().join(unique(tag));
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("[harness] test failed; kept {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

// ---------------------------------------------------------------------------------------
// process guard
// ---------------------------------------------------------------------------------------

/// A child process in its own process group, killed (whole group, SIGKILL) on drop.
pub struct Proc {
    pub name: String,
    child: Child,
    status: Option<ExitStatus>,
    stop_signal: i32,
    pub stderr_path: Option<PathBuf>,
}

impl Proc {
    /// Spawns `cmd` in a new process group with PDEATHSIG=SIGKILL. `stop_signal` is what
    /// `stop()` sends first (SIGINT lets srt-live-transmit and ffmpeg close cleanly).
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        stop_signal: i32,
        stderr_path: Option<PathBuf>,
    ) -> Proc {
        cmd.process_group(0);
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc {
            name: name.to_string(),
            child,
            status: None,
            stop_signal,
            stderr_path,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    pub fn running(&mut self) -> bool {
        self.status().is_none()
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_until(timeout, || self.status().is_some());
        self.status()
    }

    /// Sends `sig` to the process itself (not its group), if it has not been reaped.
    pub fn signal(&mut self, sig: i32) {
        if self.running() {
            unsafe { libc::kill(self.pid(), sig) };
        }
    }

    /// Sends `sig` to every process of the group (a shell pipeline's members too).
    pub fn signal_group(&mut self, sig: i32) {
        unsafe { libc::kill(-self.pid(), sig) };
    }

    fn kill_group(&mut self) {
        if self.running() {
            unsafe {
                libc::kill(-self.pid(), libc::SIGKILL);
                libc::kill(self.pid(), libc::SIGKILL);
            }
            self.status = self.child.wait().ok();
        }
    }

    /// Stop signal, up to `grace` to exit, then SIGKILL to the group.
    pub fn stop_within(&mut self, grace: Duration) -> Option<ExitStatus> {
        if self.running() {
            let sig = self.stop_signal;
            self.signal(sig);
            if self.wait_exit(grace).is_none() {
                eprintln!(
                    "[harness] {} ignored signal {sig} for {grace:?}; killing",
                    self.name
                );
                self.kill_group();
            }
        }
        self.status()
    }

    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.stop_within(Duration::from_secs(4))
    }

    pub fn stderr_text(&self) -> String {
        self.stderr_path
            .as_deref()
            .map(read_lossy)
            .unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// `prog`, or `ip netns exec NS prog` (which execs, so the pid is the program's).
pub fn command(ns: Option<&str>, prog: &str) -> Command {
    let prog = tool(prog);
    match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(prog);
            c
        }
        None => Command::new(prog),
    }
}

fn out_file(p: &Path) -> File {
    File::create(p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()))
}

// ---------------------------------------------------------------------------------------
// network namespaces
// ---------------------------------------------------------------------------------------

/// Runs `f` on a fresh thread that has entered network namespace `ns`: sockets it creates
/// (e.g. HTTP requests to a relay inside the namespace) live there.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("netns thread panicked")
}

/// A set of network namespaces (`stt-<pid>-<n>-<tag>`) joined by veth pairs, deleted on
/// drop together with everything in them (veths, nft tables, leftover processes).
/// Addresses (10.77.x.y) exist only inside these namespaces.
pub struct Netns {
    names: Vec<(String, String)>, // (tag, name)
    veths: u32,
}

impl Netns {
    pub fn create(tags: &[&str]) -> Netns {
        let base = unique("stt");
        let mut ns = Netns {
            names: Vec::new(),
            veths: 0,
        };
        for tag in tags {
            let name = format!("{base}-{tag}");
            run("ip", &["netns", "add", &name]).expect("ip netns add");
            ns.names.push((tag.to_string(), name.clone()));
            run("ip", &["-n", &name, "link", "set", "lo", "up"]).expect("lo up");
        }
        ns
    }

    pub fn name(&self, tag: &str) -> &str {
        &self
            .names
            .iter()
            .find(|(t, _)| t == tag)
            .unwrap_or_else(|| panic!("no netns {tag}"))
            .1
    }

    pub fn names(&self) -> Vec<String> {
        self.names.iter().map(|(_, n)| n.clone()).collect()
    }

    /// A veth pair between namespaces `a` and `b` with addresses like "10.77.1.1/24".
    pub fn link(&mut self, a: &str, a_cidr: &str, b: &str, b_cidr: &str) {
        let (na, nb) = (self.name(a).to_string(), self.name(b).to_string());
        let i = self.veths;
        self.veths += 1;
        let (ia, ib) = (format!("veth{i}a"), format!("veth{i}b"));
        run(
            "ip",
            &[
                "link", "add", &ia, "netns", &na, "type", "veth", "peer", "name", &ib, "netns", &nb,
            ],
        )
        .expect("ip link add veth");
        run("ip", &["-n", &na, "addr", "add", a_cidr, "dev", &ia]).expect("addr a");
        run("ip", &["-n", &nb, "addr", "add", b_cidr, "dev", &ib]).expect("addr b");
        run("ip", &["-n", &na, "link", "set", &ia, "up"]).expect("up a");
        run("ip", &["-n", &nb, "link", "set", &ib, "up"]).expect("up b");
    }

    /// Runs an nft script (`nft -f -`) inside namespace `tag`.
    pub fn nft(&self, tag: &str, script: &str) -> Result<String, String> {
        run_with_stdin(
            "ip",
            &["netns", "exec", self.name(tag), "nft", "-f", "-"],
            Some(script),
        )
    }

    /// Random loss with nftables inside namespace `tag`: on `hook` ("input" or "output")
    /// drop `pct` % of packets matching `expr` (e.g. "udp sport 9999"). Counted, see
    /// `loss_counter`.
    pub fn add_loss(&self, tag: &str, hook: &str, expr: &str, pct: u32) {
        let script = format!(
            "add table inet lossy\n\
             add chain inet lossy {hook}_loss {{ type filter hook {hook} priority 0; }}\n\
             add rule inet lossy {hook}_loss {expr} numgen random mod 100 lt {pct} counter drop\n"
        );
        self.nft(tag, &script).expect("nft loss rule");
    }

    /// Counts packets matching `expr` on `hook` in namespace `tag` (before any loss rule),
    /// under `label`; read with `count`. E.g. SRT DROPREQs from the relay:
    /// `udp sport 9999 @th,64,16 0x8007`.
    pub fn add_count(&self, tag: &str, hook: &str, expr: &str, label: &str) {
        let script = format!(
            "add table inet stt_count\n\
             add chain inet stt_count {hook}_count {{ type filter hook {hook} priority -10; }}\n\
             add rule inet stt_count {hook}_count {expr} counter comment \"{label}\"\n"
        );
        self.nft(tag, &script).expect("nft count rule");
    }

    pub fn count(&self, tag: &str, label: &str) -> u64 {
        let out = run(
            "ip",
            &[
                "netns",
                "exec",
                self.name(tag),
                "nft",
                "list",
                "table",
                "inet",
                "stt_count",
            ],
        )
        .unwrap_or_default();
        out.lines()
            .filter(|l| l.contains(&format!("comment \"{label}\"")))
            .filter_map(|l| {
                let i = l.find("counter packets ")?;
                l[i + 16..].split_whitespace().next()?.parse::<u64>().ok()
            })
            .sum()
    }

    /// Packets dropped so far by the loss rules in namespace `tag`.
    pub fn loss_counter(&self, tag: &str) -> u64 {
        let out = run(
            "ip",
            &[
                "netns",
                "exec",
                self.name(tag),
                "nft",
                "list",
                "table",
                "inet",
                "lossy",
            ],
        )
        .unwrap_or_default();
        out.lines()
            .filter_map(|l| {
                let i = l.find("counter packets ")?;
                l[i + 16..].split_whitespace().next()?.parse::<u64>().ok()
            })
            .sum()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for (_, name) in self.names.iter().rev() {
            // Anything still running in our namespace was started by this test.
            if let Ok(pids) = run("ip", &["netns", "pids", name]) {
                for pid in pids
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            if let Err(e) = run("ip", &["netns", "del", name]) {
                eprintln!("[harness] ip netns del {name}: {e}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct HttpResp {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl HttpResp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

pub fn http(method: &str, url: &str, headers: &[(&str, &str)]) -> Result<HttpResp, String> {
    http_body(method, url, headers, None)
}

/// An HTTP request with a body (sent as given, without a content type of its own).
pub fn http_body(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<HttpResp, String> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .build();
    let mut req = agent.request(method, url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let sent = match body {
        Some(b) => req.send_string(b),
        None => req.call(),
    };
    let resp = match sent {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(format!("{method} {url}: {e}")),
    };
    let status = resp.status();
    let content_type = resp.header("content-type").unwrap_or("").to_string();
    let body = resp.into_string().map_err(|e| e.to_string())?;
    Ok(HttpResp {
        status,
        content_type,
        body,
    })
}

// ---------------------------------------------------------------------------------------
// Prometheus text parsing
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(a, _)| a == k)
            .map(|(_, v)| v.as_str())
    }
}

pub fn parse_prom(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => (&line[..i], &line[i..]),
            None => continue,
        };
        let mut labels = Vec::new();
        let mut rest = rest;
        if rest.starts_with('{') {
            let b = rest.as_bytes();
            let mut i = 1;
            loop {
                while i < b.len() && (b[i] == b' ' || b[i] == b',') {
                    i += 1;
                }
                if i >= b.len() || b[i] == b'}' {
                    i += 1;
                    break;
                }
                let ks = i;
                while i < b.len() && b[i] != b'=' {
                    i += 1;
                }
                let key = rest[ks..i].trim().to_string();
                i += 1; // '='
                if i < b.len() && b[i] == b'"' {
                    i += 1;
                }
                let mut val = String::new();
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        i += 1;
                        val.push(match b[i] {
                            b'n' => '\n',
                            c => c as char,
                        });
                    } else {
                        val.push(b[i] as char);
                    }
                    i += 1;
                }
                i += 1; // closing quote
                labels.push((key, val));
            }
            rest = &rest[i.min(rest.len())..];
        }
        let value = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok());
        if let Some(value) = value {
            out.push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
        }
    }
    out
}

/// All samples of `name` whose labels include every `(key, value)` in `labels`.
pub fn prom_samples(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<Sample> {
    parse_prom(text)
        .into_iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .collect()
}

pub fn prom_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    prom_samples(text, name, labels).first().map(|s| s.value)
}

/// Sum over every sample of `name` (0 when absent).
pub fn prom_sum(text: &str, name: &str) -> f64 {
    prom_samples(text, name, &[]).iter().map(|s| s.value).sum()
}

/// (has `# HELP name`, has `# TYPE name`).
pub fn prom_help_type(text: &str, name: &str) -> (bool, bool) {
    let help = text
        .lines()
        .any(|l| l.starts_with(&format!("# HELP {name} ")));
    let ty = text
        .lines()
        .any(|l| l.starts_with(&format!("# TYPE {name} ")));
    (help, ty)
}

/// Every metric name of the README's table.
pub fn readme_metric_names() -> Vec<String> {
    let mut v = vec![
        "srt_connections_total".to_string(),
        "srt_connections_current".to_string(),
    ];
    for kind in ["ctrl", "data"] {
        for unit in ["packets", "bytes"] {
            for dir in ["sent", "recv", "lost"] {
                v.push(format!("srt_connection_{kind}_{unit}_{dir}"));
            }
        }
    }
    v.push("srt_connection_rtt".into());
    v.push("srt_connection_rtt_variance".into());
    v.push("srt_connection_playout_lead".into());
    v.push("srt_packets_dropped_total".into());
    v
}

// ---------------------------------------------------------------------------------------
// relay
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct RelayOpts {
    pub session_ttl_secs: Option<u64>,
    pub latency_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub max_connections: Option<u64>,
    pub max_viewers_per_stream: Option<u64>,
    pub max_connections_per_ip: Option<u64>,
    pub handshakes_per_ip_per_sec: Option<u64>,
    pub buffer_packets: Option<u64>,
    /// Run the relay inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
    /// Address the relay's SRT socket binds (and clients dial). HTTP always binds
    /// 127.0.0.1 (inside the namespace, if any).
    pub srt_ip: Ipv4Addr,
    /// Bind the SRT socket here instead of `srt_ip` (e.g. 0.0.0.0 for a relay reached on
    /// several interfaces; clients then pick an address with `Relay::url_at`).
    pub srt_bind: Option<Ipv4Addr>,
    /// `--datapath` (auto, ebpf, userspace). Default: `STSYNC_DATAPATH` if set, else the
    /// daemon's own default.
    pub datapath: Option<String>,
    /// `delay_ms` of streams in config.json.
    pub stream_delays: Vec<(String, u64)>,
    pub http_header_timeout_ms: Option<u64>,
    pub http_idle_timeout_ms: Option<u64>,
    pub http_shutdown_timeout_ms: Option<u64>,
    /// RLIMIT_NOFILE (soft and hard) the relay runs under.
    pub nofile: Option<u64>,
}

impl Default for RelayOpts {
    fn default() -> Self {
        RelayOpts {
            session_ttl_secs: None,
            latency_ms: None,
            idle_timeout_ms: None,
            max_connections: None,
            max_viewers_per_stream: None,
            max_connections_per_ip: None,
            handshakes_per_ip_per_sec: None,
            buffer_packets: None,
            netns: None,
            srt_ip: Ipv4Addr::LOCALHOST,
            srt_bind: None,
            datapath: std::env::var("STSYNC_DATAPATH")
                .ok()
                .filter(|d| !d.is_empty()),
            stream_delays: Vec::new(),
            http_header_timeout_ms: None,
            http_idle_timeout_ms: None,
            http_shutdown_timeout_ms: None,
            nofile: None,
        }
    }
}

pub struct Relay {
    pub srt: SocketAddrV4,
    pub http: SocketAddrV4,
    pub tokens: HashMap<String, String>,
    pub netns: Option<String>,
    pub log_path: PathBuf,
    pub config_path: PathBuf,
    pub dir: TempDir,
    proc: Proc,
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Relay {
    pub fn start_default() -> Relay {
        Relay::start(RelayOpts::default())
    }

    pub fn start(opts: RelayOpts) -> Relay {
        let dir = TempDir::new("relay");
        let srt = SocketAddrV4::new(opts.srt_ip, free_udp_port());
        let http = SocketAddrV4::new(Ipv4Addr::LOCALHOST, free_tcp_port());
        let mut tokens = HashMap::new();
        tokens.insert(
            "1".to_string(),
            format!("tok-one-{:016x}", rand::random::<u64>()),
        );
        tokens.insert(
            "2".to_string(),
            format!("tok-two-{:016x}", rand::random::<u64>()),
        );
        let mut cfg = serde_json::json!({
            "srt_listen": SocketAddrV4::new(opts.srt_bind.unwrap_or(opts.srt_ip), srt.port()).to_string(),
            "http_listen": http.to_string(),
            "streams": [
                { "id": "1", "name": "Stream one", "token": tokens["1"] },
                { "id": "2", "name": "Stream two", "token": tokens["2"] },
            ],
        });
        for (stream, delay) in &opts.stream_delays {
            for s in cfg["streams"].as_array_mut().unwrap() {
                if s["id"] == stream.as_str() {
                    s["delay_ms"] = serde_json::json!(delay);
                }
            }
        }
        let m = cfg.as_object_mut().unwrap();
        for (k, v) in [
            ("session_ttl_secs", opts.session_ttl_secs),
            ("latency_ms", opts.latency_ms),
            ("idle_timeout_ms", opts.idle_timeout_ms),
            ("max_connections", opts.max_connections),
            ("max_viewers_per_stream", opts.max_viewers_per_stream),
            ("max_connections_per_ip", opts.max_connections_per_ip),
            ("handshakes_per_ip_per_sec", opts.handshakes_per_ip_per_sec),
            ("buffer_packets", opts.buffer_packets),
            ("http_header_timeout_ms", opts.http_header_timeout_ms),
            ("http_idle_timeout_ms", opts.http_idle_timeout_ms),
            ("http_shutdown_timeout_ms", opts.http_shutdown_timeout_ms),
        ] {
            if let Some(v) = v {
                m.insert(k.to_string(), serde_json::json!(v));
            }
        }
        let config_path = dir.file("config.json");
        fs::write(&config_path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
        let log_path = dir.file("relay.log");
        let log = out_file(&log_path);
        let mut cmd = command(opts.netns.as_deref(), "relay");
        if let Some(d) = &opts.datapath {
            cmd.args(["--datapath", d]);
        }
        cmd.arg("--config")
            .arg(&config_path)
            .env(
                "RUST_LOG",
                std::env::var("STSYNC_RELAY_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(n) = opts.nofile {
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: setrlimit is async-signal-safe; `lim` is a plain value.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let proc = Proc::spawn("stsync-proxy", cmd, libc::SIGTERM, Some(log_path.clone()));
        let mut relay = Relay {
            srt,
            http,
            tokens,
            netns: opts.netns.clone(),
            log_path,
            config_path,
            dir,
            proc,
        };
        let ok = wait_until(Duration::from_secs(10), || {
            if !relay.proc.running() {
                return true;
            }
            matches!(relay.get("/v1/health"), Ok(r) if r.status == 200)
        });
        if let Some(st) = relay.proc.status() {
            panic!(
                "stsync-proxy exited at start ({st}); log:\n{}",
                tail_lines(&relay.log(), 60)
            );
        }
        assert!(
            ok,
            "stsync-proxy did not answer GET /v1/health with 200 within 10 s; log:\n{}",
            tail_lines(&relay.log(), 60)
        );
        relay
    }

    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    pub fn running(&mut self) -> bool {
        self.proc.running()
    }

    pub fn status(&mut self) -> Option<ExitStatus> {
        self.proc.status()
    }

    /// SIGTERM and wait up to `timeout` for the exit (no SIGKILL).
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.proc.signal(libc::SIGTERM);
        self.proc.wait_exit(timeout)
    }

    pub fn log(&self) -> String {
        strip_ansi(&read_lossy(&self.log_path))
    }

    /// Rejection codes the relay sent, each as often as it was sent (from
    /// `srt_handshake_rejections_total{code}`; its log has only the first per address per
    /// 10 s at info).
    pub fn reject_codes(&self) -> Vec<u32> {
        let Ok(m) = self.get("/v1/metrics") else {
            return Vec::new();
        };
        let mut codes = Vec::new();
        for s in prom_samples(&m.body, "srt_handshake_rejections_total", &[]) {
            if let Some(code) = s.label("code").and_then(|c| c.parse::<u32>().ok()) {
                codes.extend(std::iter::repeat_n(code, s.value as usize));
            }
        }
        codes
    }

    /// Waits (up to `within`) for `srt_connections_current{mode}` to read `n`.
    pub fn wait_connections(&self, mode: &str, n: usize, within: Duration) -> bool {
        wait_until(within, || {
            self.metric("srt_connections_current", &[("mode", mode)]) == Some(n as f64)
        })
    }

    // --- HTTP ---

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<HttpResp, String> {
        self.request_body(method, path, headers, None)
    }

    pub fn request_body(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<HttpResp, String> {
        let url = format!("http://{}{}", self.http, path);
        match &self.netns {
            None => http_body(method, &url, headers, body),
            Some(ns) => {
                let method = method.to_string();
                let body = body.map(str::to_string);
                let headers: Vec<(String, String)> = headers
                    .iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect();
                in_netns(ns, move || {
                    let h: Vec<(&str, &str)> = headers
                        .iter()
                        .map(|(a, b)| (a.as_str(), b.as_str()))
                        .collect();
                    http_body(&method, &url, &h, body.as_deref())
                })
            }
        }
    }

    pub fn get(&self, path: &str) -> Result<HttpResp, String> {
        self.request("GET", path, &[])
    }

    pub fn token(&self, stream: &str) -> &str {
        &self.tokens[stream]
    }

    /// POST /v1/streams/:id/sessions with the given bearer token (None: no header).
    pub fn try_session(&self, stream: &str, token: Option<&str>) -> HttpResp {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        self.request("POST", &format!("/v1/streams/{stream}/sessions"), &headers)
            .expect("POST sessions")
    }

    /// A fresh session key for `stream`, minted with that stream's token.
    pub fn session(&self, stream: &str) -> String {
        let r = self.try_session(stream, Some(self.token(stream)));
        assert_eq!(r.status, 201, "POST /v1/streams/{stream}/sessions: {r:?}");
        r.json()["session_id"]
            .as_str()
            .expect("session_id")
            .to_string()
    }

    pub fn url(&self, resource: &str, key: &str, mode: &str) -> String {
        format!(
            "srt://{}?streamid=#!::r={resource},s={key},m={mode}",
            self.srt
        )
    }

    /// A URL for a client that reaches the relay at `ip` (see `RelayOpts::srt_bind`).
    pub fn url_at(&self, ip: Ipv4Addr, resource: &str, key: &str, mode: &str) -> String {
        let a = SocketAddrV4::new(ip, self.srt.port());
        format!("srt://{a}?streamid=#!::r={resource},s={key},m={mode}")
    }

    pub fn url_sid(&self, streamid: &str) -> String {
        format!("srt://{}?streamid={streamid}", self.srt)
    }

    /// Mints a key and returns a viewer (`m=request`) URL.
    pub fn viewer_url(&self, stream: &str) -> String {
        self.url(stream, &self.session(stream), "request")
    }

    pub fn publisher_url(&self, stream: &str) -> String {
        self.url(stream, &self.session(stream), "publish")
    }

    pub fn metrics(&self) -> String {
        let r = self.get("/metrics").expect("GET /metrics");
        assert_eq!(r.status, 200, "GET /metrics: {r:?}");
        r.body
    }

    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        prom_value(&self.metrics(), name, labels)
    }

    pub fn streams(&self) -> serde_json::Value {
        let r = self.get("/v1/streams").expect("GET /v1/streams");
        assert_eq!(r.status, 200, "GET /v1/streams: {r:?}");
        r.json()
    }

    /// The relay's CPU time so far (utime + stime), seconds.
    pub fn cpu_seconds(&self) -> f64 {
        proc_cpu_seconds(self.pid())
    }

    pub fn rss_kb(&self) -> u64 {
        let s = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Panics with the log tail unless the relay is still running.
    pub fn assert_alive(&mut self, what: &str) {
        if let Some(st) = self.proc.status() {
            panic!(
                "relay died ({st}) {what}; log:\n{}",
                tail_lines(&self.log(), 80)
            );
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if self.proc.running() {
            self.proc.stop_within(Duration::from_secs(3));
        }
        if std::thread::panicking() {
            eprintln!(
                "----- stsync-proxy log tail ({}) -----\n{}\n-----",
                self.log_path.display(),
                tail_lines(&self.log(), 80)
            );
        }
    }
}

pub fn proc_cpu_seconds(pid: i32) -> f64 {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // fields after the command name "(...)": state is field 3; utime 14, stime 15.
    let after = match s.rfind(')') {
        Some(i) => &s[i + 2..],
        None => return 0.0,
    };
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (ut + st) / ticks
}

// ---------------------------------------------------------------------------------------
// clips
// ---------------------------------------------------------------------------------------

pub struct Clip {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    /// Publishing time at the clip's own rate (file size / rate), seconds.
    pub secs: f64,
    /// Bytes per second to pace a byte-exact publisher with.
    pub rate: u64,
    frames: OnceLock<Vec<u32>>,
}

impl Clip {
    pub fn n_packets(&self) -> usize {
        self.bytes.len() / TS
    }
    pub fn packets(&self) -> Vec<&[u8]> {
        self.bytes.chunks_exact(TS).collect()
    }
    pub fn packets_per_sec(&self) -> f64 {
        self.n_packets() as f64 / self.secs
    }
    /// Packets a viewer that joined `joined_after` seconds into publishing should get.
    pub fn packets_after(&self, joined_after: f64) -> usize {
        let frac = (1.0 - joined_after / self.secs).clamp(0.0, 1.0);
        (self.n_packets() as f64 * frac) as usize
    }
    /// Index of the first packet at `secs` into the clip.
    pub fn packet_at(&self, secs: f64) -> usize {
        ((secs / self.secs).clamp(0.0, 1.0) * self.n_packets() as f64) as usize
    }
    /// The clip from `from_secs` on (packet aligned), written into `dir`; same rate.
    /// Compare what viewers get against the full clip, not against the suffix.
    pub fn suffix(&self, dir: &TempDir, from_secs: f64) -> Clip {
        let pkt = self.packet_at(from_secs);
        let bytes = self.bytes[pkt * TS..].to_vec();
        let path = dir.file(&format!("clip-from-{pkt}.ts"));
        fs::write(&path, &bytes).unwrap();
        Clip {
            path,
            secs: bytes.len() as f64 / self.rate as f64,
            bytes,
            rate: self.rate,
            frames: OnceLock::new(),
        }
    }
    /// The clip followed by about `secs` of MPEG-TS null packets (PID 0x1FFF, which
    /// `assert_contiguous` ignores), written into `dir`. Under loss a receiver only learns
    /// that a packet is missing when a later one arrives, so without a tail the clip's last
    /// packets could be lost for good with any SRT sender.
    pub fn padded(&self, dir: &TempDir, secs: f64) -> Clip {
        let quanta = ((secs * self.rate as f64) / CLIP_QUANTUM as f64)
            .ceil()
            .max(1.0) as usize;
        let mut null = [0xffu8; TS];
        null[..4].copy_from_slice(&[0x47, 0x1f, 0xff, 0x10]);
        let mut bytes = self.bytes.clone();
        for i in 0..quanta * CLIP_QUANTUM / TS {
            null[3] = 0x10 | (i as u8 & 0x0f);
            bytes.extend_from_slice(&null);
        }
        let path = dir.file("clip-padded.ts");
        fs::write(&path, &bytes).unwrap();
        Clip {
            path,
            secs: bytes.len() as f64 / self.rate as f64,
            bytes,
            rate: self.rate,
            frames: OnceLock::new(),
        }
    }
    /// CRC of every decoded video frame of the clip (ffmpeg framecrc).
    pub fn reference_frames(&self) -> &[u32] {
        self.frames.get_or_init(|| {
            let f = decode_frames_of_file(&self.path);
            assert!(
                !f.is_empty(),
                "decoding {} gave no frames",
                self.path.display()
            );
            f
        })
    }
}

pub fn make_clip(name: &str, video_kbps: u32, secs: u32) -> Clip {
    let dir = tmp_root().join("clips");
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.ts"));
    if !path.exists() {
        let tmp = dir.join(format!("{name}.{}.tmp.ts", std::process::id()));
        let b = format!("{video_kbps}k");
        let buf = format!("{}k", video_kbps / 4);
        let t = secs.to_string();
        run(
            "ffmpeg",
            &[
                "-hide_banner",
                "-nostdin",
                "-loglevel",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "testsrc=size=320x240:rate=25",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440",
                "-c:v",
                "mpeg2video",
                "-b:v",
                &b,
                "-minrate",
                &b,
                "-maxrate",
                &b,
                "-bufsize",
                &buf,
                "-g",
                "25",
                "-c:a",
                "mp2",
                "-t",
                &t,
                "-f",
                "mpegts",
                tmp.to_str().unwrap(),
            ],
        )
        .expect("ffmpeg clip generation");
        let full = fs::read(&tmp).unwrap();
        assert!(full.len() > CLIP_QUANTUM * 4 && full[0] == 0x47);
        // Cut to a multiple of lcm(188, 1456): srt-live-transmit then publishes every byte.
        let cut = full.len() / CLIP_QUANTUM * CLIP_QUANTUM;
        fs::write(&tmp, &full[..cut]).unwrap();
        fs::rename(&tmp, &path).unwrap();
    }
    let bytes = fs::read(&path).unwrap();
    assert_eq!(bytes.len() % CLIP_QUANTUM, 0);
    // The encoder's rate: the uncut file (about half a quantum longer) over `secs`.
    let rate = ((bytes.len() + CLIP_QUANTUM / 2) as f64 / secs as f64) as u64;
    let secs = bytes.len() as f64 / rate as f64;
    Clip {
        path,
        bytes,
        secs,
        rate,
        frames: OnceLock::new(),
    }
}

/// The 2 Mbps, ~12 s clip (generated once, cached under target/tmp).
pub fn clip() -> &'static Clip {
    static C: OnceLock<Clip> = OnceLock::new();
    C.get_or_init(|| make_clip("testsrc-2m-12s", 2000, 12))
}

/// The 4 Mbps, ~30 s clip for the CPU measurement.
pub fn clip_4m() -> &'static Clip {
    static C: OnceLock<Clip> = OnceLock::new();
    C.get_or_init(|| make_clip("testsrc-4m-30s", 4000, 30))
}

// ---------------------------------------------------------------------------------------
// MPEG-TS checks
// ---------------------------------------------------------------------------------------

pub struct Aligned<'a> {
    pub packets: Vec<&'a [u8]>,
    /// Times the sync was lost after the first packet.
    pub resyncs: usize,
    pub skipped_bytes: usize,
}

fn find_sync(b: &[u8], from: usize) -> Option<usize> {
    let mut o = from;
    while o + TS <= b.len() {
        if b[o] == 0x47 && (1..=4).all(|k| o + k * TS >= b.len() || b[o + k * TS] == 0x47) {
            return Some(o);
        }
        o += 1;
    }
    None
}

/// Splits a byte stream into TS packets: aligns on the sync byte (0x47 every 188 bytes),
/// accepts a packet only when the next one starts with a sync byte too (or the data ends
/// exactly there), and re-aligns after a break.
pub fn ts_align(b: &[u8]) -> Aligned<'_> {
    let mut packets = Vec::with_capacity(b.len() / TS);
    let mut resyncs = 0;
    let mut skipped = 0;
    let mut pos = 0;
    loop {
        let o = match find_sync(b, pos) {
            Some(o) => o,
            None => {
                skipped += b.len() - pos;
                break;
            }
        };
        skipped += o - pos;
        let mut p = o;
        while p + TS <= b.len() && b[p] == 0x47 && (p + TS == b.len() || b[p + TS] == 0x47) {
            packets.push(&b[p..p + TS]);
            p += TS;
        }
        if p + TS > b.len() {
            skipped += b.len() - p;
            break;
        }
        // The packet at p is not followed by a sync byte: data is missing inside it.
        resyncs += 1;
        pos = p + 1;
        skipped += 1;
    }
    Aligned {
        packets,
        resyncs,
        skipped_bytes: skipped,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub view_start: usize,
    pub src_start: usize,
    pub len: usize,
}

#[derive(Debug, Clone)]
pub struct Runs {
    pub runs: Vec<Run>,
    /// View items that belong to no run (not found in the source in sequence).
    pub unmatched: usize,
    pub view_len: usize,
}

impl Runs {
    pub fn matched(&self) -> usize {
        self.runs.iter().map(|r| r.len).sum()
    }
    pub fn longest(&self) -> Option<Run> {
        self.runs.iter().copied().max_by_key(|r| r.len)
    }
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} items, {} runs, {} unmatched",
            self.view_len,
            self.runs.len(),
            self.unmatched
        );
        for r in self.runs.iter().take(12) {
            s += &format!(
                "\n    view[{}..{}] = src[{}..{}]",
                r.view_start,
                r.view_start + r.len,
                r.src_start,
                r.src_start + r.len
            );
        }
        if self.runs.len() > 12 {
            s += "\n    ...";
        }
        s
    }
}

/// Decomposes `view` into runs that are contiguous substrings of `src`. Items repeat in
/// real clips (stuffing packets), so each run is anchored on an item that occurs exactly
/// once in `src` and extended both ways.
pub fn find_runs<T: Eq + Hash>(view: &[T], src: &[T]) -> Runs {
    let mut count: HashMap<&T, (u32, usize)> = HashMap::with_capacity(src.len());
    for (i, x) in src.iter().enumerate() {
        let e = count.entry(x).or_insert((0, i));
        e.0 += 1;
    }
    let unique_pos = |x: &T| -> Option<usize> {
        match count.get(x) {
            Some((1, p)) => Some(*p),
            _ => None,
        }
    };
    const LOOK: usize = 2000;
    let mut runs: Vec<Run> = Vec::new();
    let mut unmatched = 0;
    let mut i = 0;
    while i < view.len() {
        let anchor =
            (i..view.len().min(i + LOOK)).find_map(|u| unique_pos(&view[u]).map(|p| (u, p)));
        let (u, p) = match anchor {
            Some(a) => a,
            None => {
                // Nothing identifiable ahead: try continuing the previous run, else skip.
                unmatched += 1;
                i += 1;
                continue;
            }
        };
        let mut s = u;
        while s > i && s - 1 + p >= u && src[s - 1 + p - u] == view[s - 1] {
            s -= 1;
        }
        let mut e = u + 1;
        while e < view.len() && e + p - u < src.len() && view[e] == src[e + p - u] {
            e += 1;
        }
        unmatched += s - i;
        runs.push(Run {
            view_start: s,
            src_start: s + p - u,
            len: e - s,
        });
        i = e;
    }
    Runs {
        runs,
        unmatched,
        view_len: view.len(),
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Expect {
    /// The run must start at the source's first packet.
    pub from_start: bool,
    /// The run must end at the source's last packet.
    pub to_end: bool,
    pub min_packets: usize,
}

/// Asserts that `received` is, once aligned, exactly one contiguous run of `clip`'s TS
/// packets (no hole, no duplicate, no foreign packet) of at least `min_packets`. MPEG-TS
/// null packets are ignored (see `Clip::padded`).
pub fn assert_contiguous(label: &str, received: &[u8], clip: &Clip, exp: Expect) -> Run {
    let mut al = ts_align(received);
    // Null packets only pad a publisher's tail (`Clip::padded`); the clips have none.
    al.packets
        .retain(|p| !(p[1] & 0x1f == 0x1f && p[2] == 0xff));
    let src = clip.packets();
    let runs = find_runs(&al.packets, &src);
    let ctx = format!(
        "{label}: received {} bytes, {} TS packets (skipped {} bytes, {} resyncs), source {} packets; {}",
        received.len(),
        al.packets.len(),
        al.skipped_bytes,
        al.resyncs,
        src.len(),
        runs.describe()
    );
    assert!(!al.packets.is_empty(), "{ctx}\n  no TS packets received");
    assert!(
        runs.runs.len() == 1 && runs.unmatched == 0 && al.resyncs == 0,
        "{ctx}\n  expected one contiguous run of the source's packets (a hole, duplicate or foreign packet breaks it)"
    );
    let r = runs.runs[0];
    assert!(
        r.len >= exp.min_packets,
        "{ctx}\n  run of {} packets < expected minimum {}",
        r.len,
        exp.min_packets
    );
    if exp.from_start {
        assert_eq!(
            r.src_start, 0,
            "{ctx}\n  the run does not start at the clip's first packet"
        );
    }
    if exp.to_end {
        assert_eq!(
            r.src_start + r.len,
            src.len(),
            "{ctx}\n  the run does not reach the clip's last packet"
        );
    }
    eprintln!(
        "[check] {label}: OK, src packets [{}..{}) of {} ({} bytes of partial packets skipped)",
        r.src_start,
        r.src_start + r.len,
        src.len(),
        al.skipped_bytes
    );
    r
}

/// Continuity-counter breaks, per PID (null packets ignored; one duplicate allowed;
/// discontinuity indicator honoured). Returns human-readable descriptions.
pub fn cc_breaks(packets: &[&[u8]]) -> Vec<String> {
    let mut last: HashMap<u16, u8> = HashMap::new();
    let mut breaks = Vec::new();
    for (i, p) in packets.iter().enumerate() {
        let pid = (((p[1] & 0x1f) as u16) << 8) | p[2] as u16;
        if pid == 0x1fff {
            continue;
        }
        let afc = (p[3] >> 4) & 3;
        let cc = p[3] & 0x0f;
        let has_payload = afc & 1 != 0;
        let disc = afc & 2 != 0 && p[4] > 0 && p[5] & 0x80 != 0;
        match last.get(&pid) {
            Some(&prev) if !disc => {
                let ok = if has_payload {
                    cc == (prev + 1) & 0x0f || cc == prev
                } else {
                    cc == prev
                };
                if !ok {
                    breaks.push(format!("packet {i}: pid {pid:#x} cc {prev} -> {cc}"));
                }
            }
            _ => {}
        }
        last.insert(pid, cc);
    }
    breaks
}

// ---------------------------------------------------------------------------------------
// ffmpeg frame checks
// ---------------------------------------------------------------------------------------

/// Video frame CRCs from ffmpeg's framecrc output.
pub fn parse_framecrc(text: &str) -> Vec<u32> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').map(|x| x.trim()).collect();
            if f.len() < 6 {
                return None;
            }
            u32::from_str_radix(f[5].trim_start_matches("0x"), 16).ok()
        })
        .collect()
}

pub fn framecrc_args() -> Vec<&'static str> {
    vec![
        "-map",
        "0:v:0",
        "-fps_mode",
        "passthrough",
        "-flush_packets",
        "1",
        "-f",
        "framecrc",
    ]
}

pub fn decode_frames_of_file(path: &Path) -> Vec<u32> {
    let mut args = vec![
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-i",
        path.to_str().unwrap(),
    ];
    args.extend(framecrc_args());
    args.push("-");
    let out = run("ffmpeg", &args).unwrap_or_else(|e| panic!("decode {}: {e}", path.display()));
    parse_framecrc(&out)
}

/// Asserts a viewer decoded frames identical to the clip's: one contiguous run of the
/// reference frames of at least `min_frames`, at most `max_lead` undecodable/odd frames
/// before it (a viewer that joins mid-GOP), none after it.
pub fn assert_frames(
    label: &str,
    frames: &[u32],
    clip: &Clip,
    min_frames: usize,
    max_lead: usize,
) -> Run {
    assert_frames_tail(label, frames, clip, min_frames, max_lead, 0)
}

/// `assert_frames`, allowing `max_tail` differing frames after the run: the clip is cut
/// at a packet boundary, so its last frame is incomplete, and a remuxing publisher
/// (ffmpeg) may pass that partial frame on differently.
pub fn assert_frames_tail(
    label: &str,
    frames: &[u32],
    clip: &Clip,
    min_frames: usize,
    max_lead: usize,
    max_tail: usize,
) -> Run {
    let reference = clip.reference_frames();
    let runs = find_runs(frames, reference);
    let ctx = format!(
        "{label}: {} frames decoded, reference {} frames; {}",
        frames.len(),
        reference.len(),
        runs.describe()
    );
    let best = runs
        .longest()
        .unwrap_or_else(|| panic!("{ctx}\n  no frame matches the source"));
    assert!(
        best.len >= min_frames,
        "{ctx}\n  longest identical run {} frames < {min_frames}",
        best.len
    );
    assert!(
        best.view_start <= max_lead,
        "{ctx}\n  {} frames before the matching run (allowed {max_lead})",
        best.view_start
    );
    assert!(
        frames.len() - (best.view_start + best.len) <= max_tail,
        "{ctx}\n  {} frames after the matching run differ from the source (corruption)",
        frames.len() - (best.view_start + best.len)
    );
    eprintln!(
        "[check] {label}: OK, {} frames identical to source frames [{}..{})",
        best.len,
        best.src_start,
        best.src_start + best.len
    );
    best
}

// ---------------------------------------------------------------------------------------
// clients
// ---------------------------------------------------------------------------------------

fn stats_args(stats: &Path) -> Vec<String> {
    // -s counts packets, not milliseconds: a record every 10 packets keeps the last record
    // close to the final totals.
    vec![
        "-s:10".into(),
        "-f".into(),
        "-pf:json".into(),
        format!("-statsout:{}", stats.display()),
    ]
}

/// libsrt statistics records written by srt-live-transmit (`-pf:json -statsout`).
pub fn read_stats(path: &Path) -> Vec<serde_json::Value> {
    read_lossy(path)
        .lines()
        .filter_map(|l| serde_json::from_str(l.trim()).ok())
        .collect()
}

fn stat_u64(v: &serde_json::Value, dir: &str, key: &str) -> u64 {
    v[dir][key].as_u64().unwrap_or(0)
}

/// Summary of a srt-live-transmit stats record (totals, since `-f` is passed).
#[derive(Debug, Default, Clone, Copy)]
pub struct SltStats {
    pub recv_packets: u64,
    pub recv_unique: u64,
    pub recv_lost: u64,
    pub recv_dropped: u64,
    pub recv_retrans: u64,
    pub recv_belated: u64,
    pub send_packets: u64,
    pub send_unique: u64,
    pub send_lost: u64,
    pub send_dropped: u64,
    pub send_retrans: u64,
    pub rtt_ms: f64,
}

pub fn stats_summary(v: &serde_json::Value) -> SltStats {
    SltStats {
        recv_packets: stat_u64(v, "recv", "packets"),
        recv_unique: stat_u64(v, "recv", "packetsUnique"),
        recv_lost: stat_u64(v, "recv", "packetsLost"),
        recv_dropped: stat_u64(v, "recv", "packetsDropped"),
        recv_retrans: stat_u64(v, "recv", "packetsRetransmitted"),
        recv_belated: stat_u64(v, "recv", "packetsBelated"),
        send_packets: stat_u64(v, "send", "packets"),
        send_unique: stat_u64(v, "send", "packetsUnique"),
        send_lost: stat_u64(v, "send", "packetsLost"),
        send_dropped: stat_u64(v, "send", "packetsDropped"),
        send_retrans: stat_u64(v, "send", "packetsRetransmitted"),
        rtt_ms: v["link"]["rtt"].as_f64().unwrap_or(0.0),
    }
}

/// `pv -q -L <rate> clip.ts | srt-live-transmit -q -a:no file://con URL`: publishes the
/// clip byte for byte at its own rate.
/// How long a byte publisher's srt-live-transmit gets to connect before data flows.
pub const PUBLISHER_CONNECT_WAIT: Duration = Duration::from_millis(500);

/// `pv -q -L <rate> clip.ts > out`: the clip's bytes at its own rate.
pub fn pv_paced(name: &str, clip: &Clip, out: std::io::PipeWriter) -> Proc {
    let mut pv = command(None, "pv");
    pv.args(["-q", "-L", &clip.rate.to_string()])
        .arg(&clip.path)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::null());
    Proc::spawn(name, pv, libc::SIGTERM, None)
}

pub struct BytePublisher {
    pub name: String,
    pv: Proc,
    slt: Proc,
    pub started: Instant,
    pub stats: Option<PathBuf>,
    clip_secs: f64,
}

impl BytePublisher {
    pub fn start(dir: &TempDir, name: &str, url: &str, clip: &Clip) -> BytePublisher {
        Self::start_opts(dir, name, url, clip, None, false)
    }

    pub fn start_opts(
        dir: &TempDir,
        name: &str,
        url: &str,
        clip: &Clip,
        ns: Option<&str>,
        stats: bool,
    ) -> BytePublisher {
        Self::start_when(dir, name, url, clip, ns, stats, None)
    }

    /// `start_opts`, feeding data only once `connected()` says so (e.g. the relay counts a
    /// publish connection; bounded by 10 s) instead of after a fixed wait: with loss on
    /// the publisher's path the handshake itself may need retries.
    pub fn start_when(
        dir: &TempDir,
        name: &str,
        url: &str,
        clip: &Clip,
        ns: Option<&str>,
        stats: bool,
        connected: Option<&dyn Fn() -> bool>,
    ) -> BytePublisher {
        // srt-live-transmit reads its input from the start but discards what it reads
        // before its SRT connection is up (seen: the first ~20 chunks went missing), so
        // pv starts feeding only once the caller had time to connect.
        let (reader, writer) = std::io::pipe().expect("pipe");
        let err = dir.file(&format!("{name}.stderr"));
        let stats_path = stats.then(|| dir.file(&format!("{name}.stats.json")));
        let mut slt = command(ns, "srt-live-transmit");
        slt.args(["-q", "-a:no"]);
        if let Some(p) = &stats_path {
            slt.args(stats_args(p));
        }
        slt.args(["file://con", url])
            .stdin(Stdio::from(reader))
            .stdout(Stdio::null())
            .stderr(out_file(&err));
        let mut slt = Proc::spawn(
            &format!("{name}/srt-live-transmit"),
            slt,
            libc::SIGINT,
            Some(err),
        );
        match connected {
            None => {
                slt.wait_exit(PUBLISHER_CONNECT_WAIT);
            }
            Some(f) => {
                let ok = wait_until(Duration::from_secs(10), || f() || !slt.running());
                assert!(
                    ok,
                    "{name}: not connected within 10 s: {}",
                    slt.stderr_text()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let pv = pv_paced(&format!("{name}/pv"), clip, writer);
        eprintln!("[client] {name}: byte publisher -> {url}");
        BytePublisher {
            name: name.into(),
            pv,
            slt,
            started: Instant::now(),
            stats: stats_path,
            clip_secs: clip.secs,
        }
    }

    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// pv still feeding the clip.
    pub fn feeding(&mut self) -> bool {
        self.pv.running()
    }

    pub fn slt_running(&mut self) -> bool {
        self.slt.running()
    }

    pub fn slt_status(&mut self) -> Option<ExitStatus> {
        self.slt.status()
    }

    pub fn wait_slt_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.slt.wait_exit(timeout)
    }

    /// Waits until the whole clip went into srt-live-transmit (bounded by the clip
    /// length plus 10 s), keeps the connection `linger` longer (retransmissions, play-out), then
    /// closes it (SIGINT: srt-live-transmit does not exit on end of input).
    pub fn finish(&mut self, linger: Duration) {
        let limit = secs((self.clip_secs - self.elapsed()).max(0.0) + 10.0);
        assert!(
            self.pv.wait_exit(limit).is_some(),
            "{}: pv still feeding after the clip's duration + 10 s",
            self.name
        );
        std::thread::sleep(linger);
        assert!(
            self.slt.running(),
            "{}: srt-live-transmit exited before the clip was done: {}",
            self.name,
            self.stderr()
        );
        self.stop();
    }

    /// SIGKILL: the connection vanishes without a SHUTDOWN.
    pub fn kill_silently(&mut self) {
        self.slt.signal(libc::SIGKILL);
        self.slt.wait_exit(Duration::from_secs(2));
        self.pv.stop();
    }

    /// Closes the connection now (SIGINT to srt-live-transmit; pv then gets EPIPE).
    pub fn stop(&mut self) {
        self.slt.stop();
        self.pv.stop();
    }

    pub fn stderr(&self) -> String {
        self.slt.stderr_text()
    }

    pub fn last_stats(&self) -> Option<SltStats> {
        self.stats
            .as_deref()
            .and_then(|p| read_stats(p).last().map(stats_summary))
    }
}

/// `ffmpeg -re -i clip.ts -c copy -f mpegts URL` (remuxes: not byte-exact).
pub struct FfmpegPublisher {
    pub proc: Proc,
}

impl FfmpegPublisher {
    pub fn start(
        dir: &TempDir,
        name: &str,
        url: &str,
        clip: &Clip,
        ns: Option<&str>,
    ) -> FfmpegPublisher {
        let err = dir.file(&format!("{name}.stderr"));
        let mut c = command(ns, "ffmpeg");
        c.args([
            "-hide_banner",
            "-nostdin",
            "-loglevel",
            &ffmpeg_loglevel(),
            "-re",
            "-i",
        ])
        .arg(&clip.path)
        .args(["-c", "copy", "-f", "mpegts", url])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(out_file(&err));
        eprintln!("[client] {name}: ffmpeg publisher -> {url}");
        FfmpegPublisher {
            proc: Proc::spawn(name, c, libc::SIGINT, Some(err)),
        }
    }
}

/// `srt-live-transmit -q -a:no URL file://con > out.ts` (optionally with libsrt stats).
pub struct SltViewer {
    pub name: String,
    pub proc: Proc,
    pub out: PathBuf,
    pub stats: Option<PathBuf>,
    pub started: Instant,
}

impl SltViewer {
    pub fn start(dir: &TempDir, name: &str, url: &str) -> SltViewer {
        Self::start_opts(dir, name, url, None, false)
    }

    /// A viewer whose output goes to /dev/null (load generation).
    pub fn start_discard(dir: &TempDir, name: &str, url: &str) -> SltViewer {
        Self::start_full(dir, name, url, None, false, true)
    }

    pub fn start_opts(
        dir: &TempDir,
        name: &str,
        url: &str,
        ns: Option<&str>,
        stats: bool,
    ) -> SltViewer {
        Self::start_full(dir, name, url, ns, stats, false)
    }

    fn start_full(
        dir: &TempDir,
        name: &str,
        url: &str,
        ns: Option<&str>,
        stats: bool,
        discard: bool,
    ) -> SltViewer {
        let out = if discard {
            PathBuf::from("/dev/null")
        } else {
            dir.file(&format!("{name}.ts"))
        };
        let err = dir.file(&format!("{name}.stderr"));
        let stats_path = stats.then(|| dir.file(&format!("{name}.stats.json")));
        let mut c = command(ns, "srt-live-transmit");
        c.args(["-q", "-a:no"]);
        if let Some(p) = &stats_path {
            c.args(stats_args(p));
        }
        c.args([url, "file://con"])
            .stdin(Stdio::null())
            .stdout(out_file(&out))
            .stderr(out_file(&err));
        eprintln!("[client] {name}: srt-live-transmit viewer <- {url}");
        SltViewer {
            name: name.into(),
            proc: Proc::spawn(name, c, libc::SIGINT, Some(err)),
            out,
            stats: stats_path,
            started: Instant::now(),
        }
    }

    pub fn running(&mut self) -> bool {
        self.proc.running()
    }

    pub fn received_len(&self) -> u64 {
        fs::metadata(&self.out).map(|m| m.len()).unwrap_or(0)
    }

    /// Waits until at least `n` bytes arrived.
    pub fn wait_bytes(&mut self, n: u64, timeout: Duration) -> bool {
        wait_until(timeout, || self.received_len() >= n)
    }

    pub fn stop(&mut self) {
        self.proc.stop();
    }

    pub fn output(&self) -> Vec<u8> {
        fs::read(&self.out).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        self.proc.stderr_text()
    }

    pub fn stats_records(&self) -> Vec<serde_json::Value> {
        self.stats.as_deref().map(read_stats).unwrap_or_default()
    }

    pub fn last_stats(&self) -> Option<SltStats> {
        self.stats_records().last().map(stats_summary)
    }

    pub fn assert_running(&mut self, what: &str) {
        if let Some(st) = self.proc.status() {
            panic!(
                "{} exited ({st}) {what}; stderr:\n{}",
                self.name,
                self.stderr()
            );
        }
    }
}

/// ffmpeg's log level for clients (`STSYNC_FFMPEG_LOGLEVEL`, default "warning").
pub fn ffmpeg_loglevel() -> String {
    std::env::var("STSYNC_FFMPEG_LOGLEVEL").unwrap_or_else(|_| "warning".into())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FfKind {
    /// `-c copy -f mpegts out.ts`
    Copy,
    /// decodes: `-map 0:v:0 -f framecrc out.crc`
    Decode,
}

pub struct FfmpegViewer {
    pub name: String,
    pub kind: FfKind,
    pub proc: Proc,
    pub out: PathBuf,
    pub started: Instant,
}

impl FfmpegViewer {
    pub fn start(
        dir: &TempDir,
        name: &str,
        url: &str,
        kind: FfKind,
        ns: Option<&str>,
    ) -> FfmpegViewer {
        let out = dir.file(&format!(
            "{name}.{}",
            if kind == FfKind::Copy { "ts" } else { "crc" }
        ));
        let err = dir.file(&format!("{name}.stderr"));
        let mut c = command(ns, "ffmpeg");
        c.args([
            "-hide_banner",
            "-nostdin",
            "-loglevel",
            &ffmpeg_loglevel(),
            "-y",
            "-i",
            url,
        ]);
        match kind {
            FfKind::Copy => c.args([
                "-map",
                "0",
                "-c",
                "copy",
                "-flush_packets",
                "1",
                "-f",
                "mpegts",
            ]),
            FfKind::Decode => c.args(framecrc_args()),
        };
        c.arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out_file(&err));
        eprintln!("[client] {name}: ffmpeg {kind:?} viewer <- {url}");
        FfmpegViewer {
            name: name.into(),
            kind,
            proc: Proc::spawn(name, c, libc::SIGINT, Some(err)),
            out,
            started: Instant::now(),
        }
    }

    pub fn running(&mut self) -> bool {
        self.proc.running()
    }

    /// SIGINT: ffmpeg finishes the output file (and flushes the decoder). Once it is
    /// transcoding, ffmpeg's interrupt callback (which ends a blocking SRT read) fires only
    /// from the second signal on, so an idle viewer needs two.
    pub fn stop(&mut self) {
        if !self.proc.running() {
            return;
        }
        self.proc.signal(libc::SIGINT);
        if self.proc.wait_exit(Duration::from_secs(1)).is_none() {
            self.proc.signal(libc::SIGINT);
            self.proc.stop_within(Duration::from_secs(5));
        }
    }

    pub fn stderr(&self) -> String {
        self.proc.stderr_text()
    }

    pub fn output(&self) -> Vec<u8> {
        fs::read(&self.out).unwrap_or_default()
    }

    /// Decoded video frame CRCs (decoding the copied file for `Copy`).
    pub fn frames(&self) -> Vec<u32> {
        match self.kind {
            FfKind::Decode => parse_framecrc(&read_lossy(&self.out)),
            FfKind::Copy => {
                if fs::metadata(&self.out).map(|m| m.len()).unwrap_or(0) == 0 {
                    return Vec::new();
                }
                decode_frames_of_file(&self.out)
            }
        }
    }

    pub fn assert_running(&mut self, what: &str) {
        if let Some(st) = self.proc.status() {
            panic!(
                "{} exited ({st}) {what}; stderr:\n{}",
                self.name,
                self.stderr()
            );
        }
    }
}

/// One srt-live-transmit connection attempt expected to fail: returns (exited in time,
/// stderr). `-a:no` so it does not retry.
pub fn slt_attempt(dir: &TempDir, name: &str, url: &str, timeout: Duration) -> (bool, String) {
    slt_attempt_until(dir, name, url, timeout, |_| false)
}

/// `slt_attempt` that also stops waiting once `done(stderr)` holds (e.g. the expected
/// rejection text was printed): under load srt-live-transmit -a:no was seen printing
/// "REJECT reported ..." and then not exiting for seconds.
pub fn slt_attempt_until(
    dir: &TempDir,
    name: &str,
    url: &str,
    timeout: Duration,
    done: impl Fn(&str) -> bool,
) -> (bool, String) {
    let err = dir.file(&format!("{name}.stderr"));
    let mut c = command(None, "srt-live-transmit");
    c.args(["-q", "-a:no", url, "file://con"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(out_file(&err));
    let mut p = Proc::spawn(name, c, libc::SIGINT, Some(err));
    wait_until(timeout, || p.status().is_some() || done(&p.stderr_text()));
    // Give a caller that printed its reason a moment to exit by itself.
    let exited = p.wait_exit(Duration::from_millis(500)).is_some();
    p.stop();
    (exited, p.stderr_text())
}

// ---------------------------------------------------------------------------------------
// result files
// ---------------------------------------------------------------------------------------

/// Appends a line to target/tmp/stsync-tests/results.txt (numbers the lead may quote).
pub fn record_result(line: &str) {
    let _ = fs::create_dir_all(tmp_root());
    if let Ok(mut f) = OpenOptions::new()
        .create(true)
        .append(true)
        .open(tmp_root().join("results.txt"))
    {
        let _ = writeln!(f, "{line}");
    }
    eprintln!("[result] {line}");
}
