//! deploy/systemd/stsync-proxy.service, checked offline with systemd-analyze (package
//! systemd), on a copy whose ExecStart points at this build's binary; and `--log-format`.

mod common;

use common::{Relay, RelayOpts};
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
