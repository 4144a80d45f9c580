//! Handshake rejections as real callers see them. srt-live-transmit prints libsrt's text
//! for the code (every 2xxx code shows as "Application-defined rejection reason"), so the
//! number is checked in the relay's `srt_handshake_rejections_total{code}` counter.

mod common;

use common::*;
use std::time::{Duration, Instant};

#[test]
fn malformed_stream_ids_are_rogue() {
    let relay = Relay::start_default();
    let dir = TempDir::new("rej-rogue");
    let key = relay.session("1");
    let cases = [
        ("no stream id", format!("srt://{}", relay.srt)),
        ("plain text stream id", relay.url_sid("hello")),
        ("no s key", relay.url_sid("#!::r=1,m=request")),
        ("no r key", relay.url_sid(&format!("#!::s={key},m=request"))),
        ("no m key", relay.url_sid(&format!("#!::r=1,s={key}"))),
        (
            "non-hex resource",
            relay.url_sid(&format!("#!::r=xyz,s={key},m=request")),
        ),
        (
            "non-hex session",
            relay.url_sid("#!::r=1,s=nothex!,m=request"),
        ),
        (
            "nested syntax",
            relay.url_sid(&format!("#!:{{::r=1,s={key},m=request}}")),
        ),
        // VLC-style percent-encoded IDs are decoded strictly.
        (
            "bad percent escape",
            relay.url_sid(&format!("%23!::r=1,s={key},m=request%2")),
        ),
        (
            "percent-encoded, not #!:: once decoded",
            relay.url_sid(&format!("%23%23r=1,s={key},m=request")),
        ),
    ];
    for (what, url) in &cases {
        expect_reject(&relay, &dir, what, url, ROGUE_TEXT, 1004);
    }
    // None of them was a connection.
    assert_eq!(relay.metric("srt_connections_total", &[]), Some(0.0));
    // The key was not consumed by the malformed attempts that carried it.
    let mut v = SltViewer::start(&dir, "viewer", &relay.url("1", &key, "request"));
    sleep_secs(1.5);
    v.assert_running("with a key that only malformed callers had carried");
    v.stop();
}

#[test]
fn application_rejections() {
    let relay = Relay::start_default();
    let dir = TempDir::new("rej-app");
    let k1 = relay.session("1");
    expect_reject(
        &relay,
        &dir,
        "unknown resource",
        &relay.url("abc", &k1, "request"),
        APP_TEXT,
        2404,
    );
    expect_reject(
        &relay,
        &dir,
        "unknown session key",
        &relay.url("1", "0123456789abcdef", "request"),
        APP_TEXT,
        2401,
    );
    let k2 = relay.session("2");
    expect_reject(
        &relay,
        &dir,
        "key of another resource",
        &relay.url("1", &k2, "request"),
        APP_TEXT,
        2401,
    );
    let k3 = relay.session("1");
    expect_reject(
        &relay,
        &dir,
        "bad mode",
        &relay.url("1", &k3, "foo"),
        APP_TEXT,
        2405,
    );
    expect_reject(
        &relay,
        &dir,
        "unknown key, publish",
        &relay.url("1", "fedcba9876543210", "publish"),
        APP_TEXT,
        2401,
    );
    assert_eq!(relay.metric("srt_connections_total", &[]), Some(0.0));
}

#[test]
fn used_key_is_forbidden() {
    let c = clip();
    let relay = Relay::start_default();
    let dir = TempDir::new("rej-used");
    let key = relay.session("1");
    let url = relay.url("1", &key, "request");
    let mut v = SltViewer::start(&dir, "first", &url);
    let mut p = BytePublisher::start(&dir, "pub", &relay.publisher_url("1"), c);
    assert!(
        v.wait_bytes(50_000, Duration::from_secs(5)),
        "first use of the key got no data: {}",
        v.stderr()
    );
    expect_reject(&relay, &dir, "key in use", &url, APP_TEXT, 2403);
    expect_reject(
        &relay,
        &dir,
        "key in use, as publisher",
        &relay.url("1", &key, "publish"),
        APP_TEXT,
        2403,
    );
    v.assert_running("after others tried its key");
    v.stop();
    sleep_secs(0.5);
    expect_reject(&relay, &dir, "key used before", &url, APP_TEXT, 2403);
    p.stop();
    assert_eq!(
        relay.metric("srt_connections_total", &[]),
        Some(2.0),
        "only the first viewer and the publisher are connections"
    );
}

#[test]
/// A key used 1 s after it expired. (The daemon forgets keys `session_ttl_secs` after
/// they expire, answering 2401 "unknown" from then on: with a 1 s TTL a key 2.5 s old is
/// already unknown. Hence 2 s and 3 s here.)
fn expired_key_is_failed_dependency() {
    let relay = Relay::start(RelayOpts {
        session_ttl_secs: Some(2),
        ..Default::default()
    });
    let dir = TempDir::new("rej-expired");
    let old = relay.session("1");
    sleep_secs(3.0);
    expect_reject(
        &relay,
        &dir,
        "expired key",
        &relay.url("1", &old, "request"),
        APP_TEXT,
        2424,
    );
    // A fresh key on the same relay works at once.
    let mut v = SltViewer::start(&dir, "fresh", &relay.viewer_url("1"));
    sleep_secs(1.5);
    v.assert_running("with a fresh key (session_ttl_secs = 2)");
    v.stop();
}

#[test]
fn encryption_and_stream_mode_are_refused() {
    let relay = Relay::start_default();
    let dir = TempDir::new("rej-mode");
    let k = relay.session("1");
    expect_reject(
        &relay,
        &dir,
        "caller with a passphrase",
        &format!("{}&passphrase=0123456789abc", relay.url("1", &k, "request")),
        "Password required or unexpected",
        1011,
    );
    let k = relay.session("1");
    expect_reject(
        &relay,
        &dir,
        "caller in file (stream) mode",
        &format!("{}&transtype=file", relay.url("1", &k, "request")),
        "MessageAPI/StreamAPI collision",
        1012,
    );
}

#[test]
fn viewer_limit_is_overload() {
    let relay = Relay::start(RelayOpts {
        max_viewers_per_stream: Some(1),
        ..Default::default()
    });
    let dir = TempDir::new("rej-overload");
    let mut v1 = SltViewer::start(&dir, "v1", &relay.viewer_url("1"));
    assert!(
        relay.wait_connections("request", 1, Duration::from_secs(3)),
        "first viewer not connected"
    );
    expect_reject(
        &relay,
        &dir,
        "second viewer over max_viewers_per_stream=1",
        &relay.viewer_url("1"),
        APP_TEXT,
        2402,
    );
    // The limit is per stream.
    let mut v2 = SltViewer::start(&dir, "v2-stream2", &relay.viewer_url("2"));
    sleep_secs(1.5);
    v1.assert_running("while another viewer was refused");
    v2.assert_running("on stream 2 (the limit is per stream)");
    v1.stop();
    v2.stop();
    // A slot freed by a leaving viewer can be taken again.
    assert!(
        relay.wait_connections("request", 0, Duration::from_secs(3)),
        "viewers did not leave: {}",
        relay.metrics()
    );
    let mut v3 = SltViewer::start(&dir, "v3", &relay.viewer_url("1"));
    sleep_secs(1.5);
    v3.assert_running("after the first viewer left");
    v3.stop();
}

/// Publishers have their own budget: viewers filling `max_connections` never keep a stream's
/// publisher (or a takeover) out.
#[test]
fn publisher_admitted_when_viewers_fill_the_relay() {
    let c = clip();
    let relay = Relay::start(RelayOpts {
        max_connections: Some(2),
        ..Default::default()
    });
    let dir = TempDir::new("rej-full");
    let mut v1 = SltViewer::start(&dir, "v1", &relay.viewer_url("1"));
    let mut v2 = SltViewer::start(&dir, "v2", &relay.viewer_url("2"));
    assert!(
        relay.wait_connections("request", 2, Duration::from_secs(3)),
        "viewers not connected"
    );
    expect_reject(
        &relay,
        &dir,
        "third viewer over max_connections=2",
        &relay.viewer_url("1"),
        APP_TEXT,
        2402,
    );
    let mut p1 = BytePublisher::start(&dir, "pub1", &relay.publisher_url("1"), c);
    assert!(
        v1.wait_bytes(100_000, Duration::from_secs(5)),
        "the publisher of a full relay was not admitted: {}",
        p1.stderr()
    );
    // A takeover, and the other stream's publisher, too.
    let mut p2 = BytePublisher::start(&dir, "pub2", &relay.publisher_url("2"), c);
    let mut p1b = BytePublisher::start(&dir, "pub1b", &relay.publisher_url("1"), c);
    assert!(
        v2.wait_bytes(100_000, Duration::from_secs(5)),
        "stream 2's publisher was not admitted: {}",
        p2.stderr()
    );
    assert!(
        relay.wait_connections("publish", 2, Duration::from_secs(3)),
        "takeover: {}",
        relay.metrics()
    );
    assert!(!relay.reject_codes().is_empty() && relay.reject_codes().iter().all(|c| *c == 2402));
    for p in [&mut p1, &mut p2, &mut p1b] {
        p.stop();
    }
    v1.stop();
    v2.stop();
}

/// Per-address budgets with real callers: open connections, then handshakes per second.
#[test]
fn per_address_limits() {
    let relay = Relay::start(RelayOpts {
        max_connections_per_ip: Some(1),
        handshakes_per_ip_per_sec: Some(1),
        ..Default::default()
    });
    let dir = TempDir::new("rej-per-ip");
    let mut v1 = SltViewer::start(&dir, "v1", &relay.viewer_url("1"));
    assert!(
        relay.wait_connections("request", 1, Duration::from_secs(3)),
        "first viewer not connected"
    );
    expect_reject(
        &relay,
        &dir,
        "second connection from one address over max_connections_per_ip=1",
        &relay.viewer_url("2"),
        APP_TEXT,
        2402,
    );
    // A burst of 2, then 1/s: callers in quick succession soon get REJ_BACKLOG, which
    // libsrt names.
    let mut backlog = None;
    for _ in 0..10 {
        let (_, stderr) = slt_attempt(
            &dir,
            &unique("spend"),
            &relay.viewer_url("2"),
            Duration::from_secs(2),
        );
        if stderr.contains("Listener's backlog exceeded") {
            backlog = Some(stderr);
            break;
        }
    }
    assert!(backlog.is_some(), "no caller was refused with REJ_BACKLOG");
    assert!(
        relay.reject_codes().contains(&1005),
        "{:?}",
        relay.reject_codes()
    );
    v1.assert_running("while its address was refused more");
    v1.stop();
    let log = relay.log();
    let logged = log.lines().filter(|l| l.contains("reject code=")).count();
    assert!(
        logged <= 2,
        "rejections logged once per address per 10 s (one per distinct test phase at most): {logged}\n{}",
        tail_lines(&log, 20)
    );
}

#[test]
fn ffmpeg_rejected_exits_nonzero() {
    let c = clip();
    let relay = Relay::start_default();
    let dir = TempDir::new("rej-ffmpeg");
    let t = Instant::now();
    let mut f = FfmpegPublisher::start(
        &dir,
        "ff-bad-key",
        &relay.url("1", "0123456789abcdef", "publish"),
        c,
        None,
    );
    let st = f.proc.wait_exit(Duration::from_secs(8));
    let stderr = f.proc.stderr_text();
    let st = st.unwrap_or_else(|| {
        panic!("ffmpeg publisher with a bad key still running after 8 s:\n{stderr}")
    });
    assert!(
        !st.success(),
        "ffmpeg exited successfully although rejected:\n{stderr}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "rejection took {:?} (a timeout, not a rejection?)",
        t.elapsed()
    );
    assert!(
        relay.reject_codes().contains(&2401),
        "relay log: {:?}",
        relay.reject_codes()
    );
    eprintln!(
        "[check] ffmpeg: {st} after {:?}: {}",
        t.elapsed(),
        stderr.trim()
    );
}
