//! deploy/systemd/stsync-proxy.service, checked offline with systemd-analyze (package
//! systemd), on a copy whose ExecStart points at this build's binary; and `--log-format`.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_stsync-proxy");
/// The exposure score `systemd-analyze security` gave the unit when it was written (2.1);
/// a change that loosens the sandbox past this fails.
const MAX_EXPOSURE: f64 = 2.5;

fn unit_copy() -> std::path::PathBuf {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/stsync-proxy.service");
    let text = std::fs::read_to_string(&unit).expect("the unit");
    assert!(text.contains("ExecStart=/usr/bin/stsync-proxy "));
    let dir = std::env::temp_dir().join(format!("stsync-systemd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("stsync-proxy.service");
    std::fs::write(&copy, text.replace("/usr/bin/stsync-proxy", BIN)).unwrap();
    copy
}

#[test]
fn unit_verifies_without_warnings() {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit_copy())
        .output()
        .expect("systemd-analyze (package systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warned: {stderr}"
    );
}

#[test]
fn unit_security_exposure_is_low() {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit_copy())
        .output()
        .expect("systemd-analyze (package systemd)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level in: {text}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unparsable: {line}"));
    common::record_result(&format!(
        "systemd unit exposure (systemd-analyze security): {score}"
    ));
    assert!(score <= MAX_EXPOSURE, "{line}");
}

#[test]
fn unknown_log_format_is_refused() {
    let out = Command::new(BIN)
        .args(["--log-format", "xml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid value 'xml' for '--log-format") && stderr.contains("text, json"),
        "{stderr}"
    );
}

#[test]
fn json_log_lines_parse() {
    let relay = Relay::start(RelayOpts {
        log_format: Some("json".into()),
        ..RelayOpts::default()
    });
    let log = relay.log();
    let mut startup = false;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
        assert!(v["target"].is_string(), "{line}");
        assert!(v["fields"].is_object(), "{line}");
        assert!(!line.contains('\u{1b}'), "ANSI escape in {line}");
        let msg = v["fields"]["message"].as_str().unwrap_or("");
        if msg.contains("listening") && msg.contains("datapath=") {
            startup = true;
        }
    }
    assert!(startup, "no startup line with datapath= in:\n{log}");
}

/// The unit's `AmbientCapabilities=` names, lowercase without `cap_` (setpriv's spelling).
fn unit_capabilities() -> Vec<String> {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/stsync-proxy.service");
    let text = std::fs::read_to_string(unit).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("AmbientCapabilities= in the unit");
    line.split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect()
}

/// setpriv as the unit runs the relay: no new privileges, root not special (so exec grants
/// nothing beyond the ambient set), and exactly `caps` in every set.
fn with_caps(caps: &[String]) -> Vec<String> {
    let list: String = caps.iter().map(|c| format!(",+{c}")).collect();
    [
        "setpriv",
        "--no-new-privs",
        "--securebits=+noroot,+noroot_locked,+no_setuid_fixup,+no_setuid_fixup_locked",
        &format!("--bounding-set=-all{list}"),
        &format!("--inh-caps=-all{list}"),
        &format!("--ambient-caps=-all{list}"),
        "--",
    ]
    .map(String::from)
    .to_vec()
}

/// The relay's effective capabilities (/proc/PID/status CapEff).
fn effective_caps(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    u64::from_str_radix(hex, 16).unwrap()
}

const CAP_NET_ADMIN: u64 = 1 << 12;
const CAP_PERFMON: u64 = 1 << 38;
const CAP_BPF: u64 = 1 << 39;

/// The unit's ambient capabilities are enough for the kernel path: a relay holding only
/// them (not root in any other way) loads and attaches the eBPF program and its program
/// sees the publisher's packets; with none, it says why and serves from userspace.
#[test]
fn the_units_capabilities_are_enough_for_the_kernel_path() {
    if !require_root("the_units_capabilities_are_enough_for_the_kernel_path") {
        return;
    }
    let caps = unit_capabilities();
    assert_eq!(caps, ["bpf", "net_admin", "perfmon"]);
    let relay = Relay::start(RelayOpts {
        wrapper: Some(with_caps(&caps)),
        datapath: Some("auto".into()),
        ..RelayOpts::default()
    });
    assert_eq!(
        effective_caps(relay.pid()),
        CAP_BPF | CAP_NET_ADMIN | CAP_PERFMON,
        "the relay runs with exactly the unit's capabilities"
    );
    let log = relay.log();
    assert!(log.contains("datapath=ebpf"), "{log}");
    let dir = TempDir::new("caps");
    let mut v = SltViewer::start(&dir, "view", &relay.viewer_url("1"));
    let mut p = BytePublisher::start(&dir, "pub", &relay.publisher_url("1"), clip());
    assert!(
        v.wait_bytes(200_000, std::time::Duration::from_secs(10)),
        "viewer: {}",
        v.stderr()
    );
    let seen = relay
        .metric("stsync_kernel_packets_seen_total", &[])
        .unwrap_or(0.0);
    record_result(&format!(
        "systemd capabilities: relay with CapEff {:#x} runs datapath=ebpf, its program saw {seen} publisher packets",
        effective_caps(relay.pid())
    ));
    assert!(seen > 0.0, "the program saw no publisher packet");
    p.stop();
    v.stop();

    // Without them: the same start falls back and says so.
    let bare = Relay::start(RelayOpts {
        wrapper: Some(with_caps(&[])),
        datapath: Some("auto".into()),
        ..RelayOpts::default()
    });
    assert_eq!(effective_caps(bare.pid()), 0);
    let log = bare.log();
    assert!(
        log.contains("datapath=userspace")
            && log.contains("eBPF datapath unavailable, serving viewers from userspace"),
        "{log}"
    );
}
