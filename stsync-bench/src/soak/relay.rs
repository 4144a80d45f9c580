//! The relay under test, a child process: its config on free ports of 127.0.0.1, started
//! in its own process group (Ctrl-C reaches only this tool) to die with this process
//! (PR_SET_PDEATHSIG), up once /v1/health answers; what the run records of it; and what to
//! say when it dies.

use super::metrics::scrape;
use super::opts::{Datapath, SoakOpts};
use crate::sweep::{exe_sibling, fingerprint, machine, Machine, RelayProc};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use stsync_user::os::proc::{self, loadavg};

/// The token of the soak's one stream (to mint session keys).
pub const TOKEN: &str = "stsync-soak-token-5b1e0d";

/// The relay of a run: its process, its SRT and HTTP addresses, its log.
pub struct Relay {
    pub process: RelayProc,
    pub srt: SocketAddrV4,
    pub http: SocketAddr,
    pub log_path: PathBuf,
}

/// The run and its relay, as samples.json records them.
#[derive(Debug, Serialize)]
pub struct RunInfo {
    pub(super) opts: SoakOpts,
    pub(super) seed: u64,
    pub(super) machine: Machine,
    pub(super) started_unix: u64,
    pub(super) relay_bin: String,
    pub(super) relay_pid: u32,
    pub(super) srt: String,
    pub(super) http: String,
    /// The datapath the relay reported (stsync_datapath).
    pub(super) datapath: Option<String>,
    pub(super) loadavg_start: String,
    pub(super) loadavg_end: String,
    pub(super) rss_kb_idle: Option<u64>,
    pub(super) fds_idle: Option<u64>,
}

impl Relay {
    /// Writes the relay's config (relay.json) and starts it (--relay-bin); with what the
    /// run records of it, idle.
    pub fn launch(o: &SoakOpts, seed: u64) -> Result<(Relay, RunInfo)> {
        let bin = o
            .relay_bin
            .clone()
            .unwrap_or_else(|| exe_sibling("stsync-proxy"));
        let bin_bytes =
            std::fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?;
        let relay_desc = fingerprint(&bin, &bin_bytes);
        drop(bin_bytes);
        let srt = SocketAddrV4::new(Ipv4Addr::LOCALHOST, free_port(true)?);
        let http = SocketAddr::from(([127, 0, 0, 1], free_port(false)?));
        let cfg_path = o.out.join("relay.json");
        std::fs::write(
            &cfg_path,
            serde_json::to_string_pretty(&serde_json::json!({
                "srt_listen": srt.to_string(),
                "http_listen": http.to_string(),
                "latency_ms": o.media.latency_ms,
                "streams": [{ "id": "1", "name": "soak", "token": TOKEN }]
            }))?,
        )?;
        let log_path = o.out.join("relay.log");
        eprintln!(
            "soak: starting {} --datapath {} (SRT {srt}, HTTP {http}), log in {}",
            bin.display(),
            o.datapath.arg(),
            log_path.display()
        );
        let process = start_relay(o, &bin, &cfg_path, &log_path, http)?;
        let pid = process.pid();
        let (m0, _) = scrape(http);
        let info = RunInfo {
            opts: o.clone(),
            seed,
            machine: machine(),
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            relay_bin: relay_desc,
            relay_pid: pid,
            srt: srt.to_string(),
            http: http.to_string(),
            datapath: m0.and_then(|m| m.datapath),
            loadavg_start: loadavg(),
            loadavg_end: String::new(),
            rss_kb_idle: proc::rss_kb(pid),
            fds_idle: proc::fd_count(pid),
        };
        eprintln!(
            "soak: relay pid {pid}, datapath {}, idle RSS {} KiB, {} fds",
            info.datapath.as_deref().unwrap_or("?"),
            info.rss_kb_idle.unwrap_or(0),
            info.fds_idle.unwrap_or(0)
        );
        let relay = Relay {
            process,
            srt,
            http,
            log_path,
        };
        Ok((relay, info))
    }
}

/// A free port on 127.0.0.1 for `kind` (UDP or TCP), found by binding port 0.
fn free_port(udp: bool) -> Result<u16> {
    let port = if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    };
    Ok(port)
}

pub fn log_tail(path: &Path, lines: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(lines).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

pub fn exit_reason(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

fn start_relay(
    o: &SoakOpts,
    bin: &Path,
    cfg: &Path,
    log_path: &Path,
    http: SocketAddr,
) -> Result<RelayProc> {
    let log = std::fs::File::create(log_path)?;
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
        .arg(cfg)
        .args(["--datapath", o.datapath.arg()]);
    if o.datapath != Datapath::Userspace {
        cmd.args(["--ebpf-interfaces", "lo"]);
    }
    if let Some(obj) = &o.ebpf_object {
        cmd.arg("--ebpf-object").arg(obj);
    }
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .env("RUST_LOG", &o.relay_log)
        .process_group(0);
    // SAFETY: prctl is async-signal-safe; it only sets this child's parent-death signal.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut relay = RelayProc { child };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = relay.child.try_wait()? {
            bail!(
                "the relay exited at start ({}):\n{}",
                exit_reason(status),
                log_tail(log_path, 10)
            );
        }
        if crate::http::healthy(None, http) {
            return Ok(relay);
        }
        if Instant::now() > deadline {
            bail!(
                "the relay did not answer /v1/health within 15 s:\n{}",
                log_tail(log_path, 10)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
