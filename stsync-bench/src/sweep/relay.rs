//! The relay under test: private copies of its binary and eBPF object, and the process
//! started in stsb-relay for each point.

use super::family::host_port;
use super::{
    Encryption, Family, SweepOpts, NS_PUB, NS_RELAY, PUBLISH_PASSPHRASE, TOKEN, VIEW_PASSPHRASE,
};
use anyhow::{bail, Context, Result};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Private copies of the relay binary and eBPF object under test, so that a rebuild of
/// the checkout they come from cannot change them in the middle of a sweep; removed on drop.
pub(super) struct Snapshot {
    dir: PathBuf,
    pub(super) relay_bin: PathBuf,
    pub(super) ebpf_object: Option<PathBuf>,
    /// "path (size, modification time, content hash)" of the originals.
    pub(super) relay_desc: String,
    pub(super) ebpf_desc: String,
}

/// Size, modification time and a 64-bit FNV-1a hash of a file, to tell builds apart.
pub(crate) fn fingerprint(path: &Path, bytes: &[u8]) -> String {
    let mtime = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!(
        "{} ({} bytes, mtime {mtime}, fnv64 {h:016x})",
        path.display(),
        bytes.len()
    )
}

impl Snapshot {
    pub(super) fn take(o: &SweepOpts) -> Result<Snapshot> {
        let dir = std::env::temp_dir().join(format!("stsync-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut snap = Snapshot {
            dir: dir.clone(),
            relay_bin: dir.join("stsync-proxy"),
            ebpf_object: None,
            relay_desc: String::new(),
            ebpf_desc: "(the relay's default)".into(),
        };
        let src = o
            .relay_bin
            .clone()
            .unwrap_or_else(|| exe_sibling("stsync-proxy"));
        let bytes = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
        std::fs::write(&snap.relay_bin, &bytes)?;
        std::fs::set_permissions(
            &snap.relay_bin,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        snap.relay_desc = fingerprint(&src, &bytes);
        // Without --ebpf-object the relay would look next to its own build output; the
        // copy lives elsewhere, so pin that object explicitly (as the relay would find it).
        let obj = o.ebpf_object.clone().or_else(|| {
            const REL: &str = "bpfel-unknown-none/release/stsync-ebpf";
            let dir = src.parent()?;
            [dir.join("..").join(REL), dir.join("../..").join(REL)]
                .into_iter()
                .find(|p| p.is_file())
        });
        if let Some(obj) = &obj {
            let bytes = std::fs::read(obj).with_context(|| format!("reading {}", obj.display()))?;
            let copy = dir.join("stsync-ebpf");
            std::fs::write(&copy, &bytes)?;
            snap.ebpf_desc = fingerprint(obj, &bytes);
            snap.ebpf_object = Some(copy);
        }
        Ok(snap)
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A relay process we started; killed (SIGTERM, then SIGKILL) on drop.
pub(crate) struct RelayProc {
    pub(crate) child: Child,
}

impl RelayProc {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn exe_sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// The relay's options under test, as its errors name them.
fn relay_args(kind: &str, workers: Option<u32>) -> String {
    match workers {
        Some(w) => format!("--datapath {kind} --workers {w}"),
        None => format!("--datapath {kind}"),
    }
}

/// Whether the relay's log has `field` (`name=value`) as a whole word: `workers=1` is not
/// `workers=12`.
fn logs_field(log: &str, field: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    log.match_indices(field)
        .any(|(i, _)| !log[..i].ends_with(word) && !log[i + field.len()..].starts_with(word))
}

/// Where a relay runs and what else its config.json says: the single relay, the tree's
/// origin, or one of its edges.
pub(super) struct RelaySpec<'a> {
    /// Its network namespace.
    pub(super) ns: &'a str,
    /// Its name in the output directory: `<name>.json` (config) and `<name>-<tag>.log`.
    pub(super) name: &'a str,
    /// It listens on this family's wildcard address (SRT 9999, API 9998).
    pub(super) family: Family,
    /// An edge: the origin's address as this edge reaches it (SRT on 9999, API on 9998),
    /// pulled always.
    pub(super) upstream: Option<IpAddr>,
    /// config.json `key_secret` (the tree: keys minted at the origin work at the edges).
    pub(super) key_secret: Option<&'a str>,
    /// Where its /v1/health answers: (namespace, address).
    pub(super) health: (&'a str, SocketAddr),
}

/// The single relay of a point.
pub(super) fn start_relay(
    o: &SweepOpts,
    kind: &str,
    workers: Option<u32>,
    dir: &Path,
    tag: &str,
    enc: Encryption,
    family: Family,
) -> Result<RelayProc> {
    let spec = RelaySpec {
        ns: NS_RELAY,
        name: "relay",
        family,
        upstream: None,
        key_secret: None,
        health: (NS_PUB, SocketAddr::new(family.relay_pub(), 9998)),
    };
    start_relay_as(o, kind, workers, dir, tag, enc, &spec)
}

/// A relay as `spec` says, with datapath `kind` and `workers`; once its API answers.
pub(super) fn start_relay_as(
    o: &SweepOpts,
    kind: &str,
    workers: Option<u32>,
    dir: &Path,
    tag: &str,
    enc: Encryption,
    spec: &RelaySpec,
) -> Result<RelayProc> {
    let cfg = dir.join(format!("{}.json", spec.name));
    let mut stream = serde_json::json!({ "id": "1", "name": "bench", "token": TOKEN });
    if enc.publish.is_some() {
        stream["publish_passphrase"] = PUBLISH_PASSPHRASE.into();
    }
    if enc.view.is_some() {
        stream["view_passphrase"] = VIEW_PASSPHRASE.into();
    }
    if let Some(l) = enc.key_len() {
        stream["pbkeylen"] = l.into();
    }
    if let Some(up) = spec.upstream {
        stream["upstream"] = serde_json::json!([{
            "srt": host_port(up, 9999),
            "api": format!("http://{}", host_port(up, 9998)),
            "token": TOKEN,
        }]);
        stream["pull"] = "always".into();
    }
    let mut config = serde_json::json!({
        "srt_listen": spec.family.any(9999).to_string(),
        "http_listen": spec.family.any(9998).to_string(),
        "max_connections": 4096,
        "max_viewers_per_stream": 1024,
        // Every generated viewer comes from one address, as fast as it can connect.
        "max_connections_per_ip": 4096,
        "handshakes_per_ip_per_sec": 100_000,
        "streams": [stream]
    });
    if let Some(k) = spec.key_secret {
        config["key_secret"] = k.into();
    }
    std::fs::write(&cfg, config.to_string())?;
    let bin = o
        .relay_bin
        .clone()
        .unwrap_or_else(|| exe_sibling("stsync-proxy"));
    let log_path = dir.join(format!("{}-{tag}.log", spec.name));
    let log = std::fs::File::create(&log_path)?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", spec.ns])
        .arg(&bin)
        .arg("--config")
        .arg(&cfg)
        .args(["--datapath", kind]);
    if let Some(w) = workers {
        cmd.args(["--workers", &w.to_string()]);
    }
    if let Some(obj) = &o.ebpf_object {
        cmd.arg("--ebpf-object").arg(obj);
    }
    // `ip netns exec` execs the relay, so the child's PID is the relay's.
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .env("RUST_LOG", "info")
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut relay = RelayProc { child };
    let args = relay_args(kind, workers);
    let (health_ns, http) = spec.health;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = relay.child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            // anyhow's "Error: ..." line says why, or clap's "error: ..." (an option this
            // relay does not have, e.g. --workers before issue 15); otherwise the last lines.
            let why = match log
                .lines()
                .find(|l| l.starts_with("Error:") || l.starts_with("error:"))
            {
                Some(l) => l.to_string(),
                None => {
                    let tail: Vec<&str> = log.lines().rev().take(3).collect();
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                }
            };
            bail!("relay {args} exited ({status}): {why}");
        }
        if crate::http::healthy(Some(health_ns), http) {
            break;
        }
        if Instant::now() > deadline {
            bail!("relay {args} did not answer /v1/health within 15 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    // What it says it runs, not only what it was asked for (a relay that ignored the
    // option would measure something else).
    let mut fields = vec![format!("datapath={kind}")];
    fields.extend(workers.map(|w| format!("workers={w}")));
    for f in fields {
        if !logs_field(&log, &f) {
            bail!("relay {args} did not report {f}: {}", log.trim());
        }
    }
    Ok(relay)
}

/// Waits (at most `timeout`) until the edge whose API is `http` in namespace `ns` reports
/// its upstream connected (`srt_upstream_connected ... 1`).
pub(super) fn wait_pulling(ns: &str, http: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let connected = crate::http::metrics(Some(ns), http).is_ok_and(|m| {
            m.lines().any(|l| {
                l.starts_with("srt_upstream_connected")
                    && l.split_whitespace().last().is_some_and(|v| v == "1")
            })
        });
        if connected {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the edge in {ns} did not connect to its upstream within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_fields_match_whole_words() {
        let log = "INFO stsync-proxy listening, datapath=ebpf workers=12 srt=0.0.0.0:9999";
        assert!(logs_field(log, "datapath=ebpf"));
        assert!(logs_field(log, "workers=12"));
        assert!(!logs_field(log, "workers=1"));
        assert!(!logs_field(log, "workers=2"));
        assert!(!logs_field("max_workers=2", "workers=2"));
        assert!(logs_field("workers=2", "workers=2"));
        assert_eq!(relay_args("ebpf", Some(2)), "--datapath ebpf --workers 2");
        assert_eq!(relay_args("ebpf", None), "--datapath ebpf");
    }
}
