//! The generator as an encrypted publisher and encrypted viewers, against the real relay
//! (stsync-proxy, userspace datapath) on loopback: real sockets, real handshakes (KMREQ in
//! the conclusion, KMRSP checked), payloads encrypted by the publisher, decrypted by the
//! relay, encrypted again per viewer and checked by each viewer with its own key.
//!
//! Needs the relay binary of the same profile (`cargo build [--release] -p stsync-user`,
//! which a workspace `cargo test` builds anyway).

use clap::Parser;
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use stsync_bench::loadgen::{self, Opts};
use stsync_bench::report::Report;

const TOKEN: &str = "bench-encryption-test-token";
const PUBLISH: &str = "publisher-secret-1";
const VIEW: &str = "viewers-secret-12";

/// The relay binary next to this test's build directory.
fn relay_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let bin = dir.join("stsync-proxy");
    assert!(
        bin.is_file(),
        "{} missing: cargo build -p stsync-user (same profile as the tests)",
        bin.display()
    );
    bin
}

/// The relay process and its directory: killed and removed on drop, a failed test's too.
struct Relay(Child, PathBuf);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free port")
        .port()
}

/// The relay with three streams: 1 publisher and viewers encrypted (AES-256 only),
/// 2 publisher only, 3 viewers only.
fn start_relay(dir: &std::path::Path) -> (Relay, u16, u16) {
    let (srt, http) = (free_port(), free_port());
    let cfg = dir.join("relay.json");
    let stream = |id: &str| serde_json::json!({ "id": id, "name": id, "token": TOKEN });
    let mut s1 = stream("1");
    s1["publish_passphrase"] = PUBLISH.into();
    s1["view_passphrase"] = VIEW.into();
    s1["pbkeylen"] = 32.into();
    let mut s2 = stream("2");
    s2["publish_passphrase"] = PUBLISH.into();
    let mut s3 = stream("3");
    s3["view_passphrase"] = VIEW.into();
    std::fs::write(
        &cfg,
        serde_json::json!({
            "srt_listen": format!("127.0.0.1:{srt}"),
            "http_listen": format!("127.0.0.1:{http}"),
            "streams": [s1, s2, s3]
        })
        .to_string(),
    )
    .unwrap();
    let child = Command::new(relay_bin())
        .arg("--config")
        .arg(&cfg)
        .args(["--datapath", "userspace"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("relay.log")).unwrap())
        .spawn()
        .expect("start the relay");
    let relay = Relay(child, dir.to_path_buf());
    let addr = format!("127.0.0.1:{http}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stsync_bench::http::healthy(None, addr) {
        assert!(
            Instant::now() < deadline,
            "relay not healthy within 10 s (a stale build? cargo build -p stsync-user): {}",
            std::fs::read_to_string(dir.join("relay.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (relay, srt, http)
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    o: Opts,
}

fn run(srt: u16, http: u16, extra: &[&str]) -> anyhow::Result<Report> {
    let (srt, http) = (format!("127.0.0.1:{srt}"), format!("127.0.0.1:{http}"));
    let mut args = vec![
        "loadgen", "--relay", &srt, "--http", &http, "--token", TOKEN,
    ];
    args.extend([
        "--viewers",
        "4",
        "--warmup",
        "0.5",
        "--duration",
        "1.5",
        "--quiet",
    ]);
    args.extend(extra);
    loadgen::run(&Cli::parse_from(args).o)
}

fn delivered_and_checked(r: &Report, label: &str) {
    assert_eq!(r.connected, 4, "{label}: {:?}", r.not_connected);
    // Every window packet reached every viewer (on time or not: in a debug build each
    // connection's 2048-round PBKDF2 and the unoptimised AES hold the relay's loop up for
    // long enough to make the first packets late; timing is the sweep's business).
    assert_eq!(
        r.delivery.min, 1.0,
        "{label}: {:?} {:?}",
        r.delivery, r.viewer_totals
    );
    let t = &r.viewer_totals;
    assert_eq!(
        (t.bad_payload, t.outside_window > 0),
        (0, true),
        "{label}: {t:?}"
    );
}

#[test]
fn encrypted_publisher_and_viewers_through_the_relay() {
    let dir = std::env::temp_dir().join(format!("stsb-enc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_relay, srt, http) = start_relay(&dir);

    // Both sides encrypted, each connection with its own AES-256 key.
    let r = run(
        srt,
        http,
        &[
            "--stream",
            "1",
            "--publish-passphrase",
            PUBLISH,
            "--view-passphrase",
            VIEW,
            "--pbkeylen",
            "32",
        ],
    )
    .unwrap();
    delivered_and_checked(&r, "publisher and viewers encrypted");
    assert!(
        r.viewer_totals.payloads_checked >= 4,
        "{:?}",
        r.viewer_totals
    );
    assert_eq!(
        (r.config.publish_key_len, r.config.view_key_len),
        (Some(32), Some(32))
    );

    // Clear viewers of an encrypted publisher: the relay decrypts for them.
    let r = run(
        srt,
        http,
        &["--stream", "2", "--publish-passphrase", PUBLISH],
    )
    .unwrap();
    delivered_and_checked(&r, "clear viewers of an encrypted publisher");
    assert_eq!(r.viewer_totals.payloads_checked, 0);

    // Encrypted viewers of a clear publisher (--passphrase would set both; here only the
    // viewers').
    let r = run(srt, http, &["--stream", "3", "--view-passphrase", VIEW]).unwrap();
    delivered_and_checked(&r, "encrypted viewers of a clear publisher");

    // The wrong passphrase, and a key length the stream refuses: no viewer connects.
    let r = run(
        srt,
        http,
        &[
            "--stream",
            "1",
            "--publish-passphrase",
            PUBLISH,
            "--view-passphrase",
            "not-the-viewers-secret",
            "--pbkeylen",
            "32",
        ],
    )
    .unwrap();
    assert_eq!(r.connected, 0);
    assert_eq!(
        r.not_connected.get("rejected 1010"),
        Some(&4),
        "{:?}",
        r.not_connected
    );
    let e = run(srt, http, &["--stream", "1", "--passphrase", PUBLISH]).unwrap_err();
    assert!(e.to_string().contains("1011"), "{e:#}");
}
