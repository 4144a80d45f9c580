//! Signed session keys between relay processes (config.json `key_secret`), with real
//! srt-live-transmit callers on loopback: a key minted over HTTP on relay A is taken by
//! relay B, which shares A's secret, once; it expires on the wall clock; a relay with
//! another secret refuses it; a relay without a secret still mints random keys.
//!
//! libsrt 1.5 prints every application code as "Application-defined rejection reason", so
//! the code is read from the relay's `srt_handshake_rejections_total{code}`.

mod common;

use common::*;
use std::time::{Duration, Instant};

const APP_TEXT: &str = "Application-defined rejection reason";
const SECRET: &str = "5d0c9a3e71b84f26a9e0d3c7b15f482e6a9c0d1e3f5b7a92";
const OTHER_SECRET: &str = "e8b1c4f70a3d6925b7e0c1d4a8f3692b0e5c7d9a1f3b5e62";

fn with_secret(secret: Option<&str>, ttl: Option<u64>) -> Relay {
    Relay::start(RelayOpts {
        key_secret: secret.map(str::to_owned),
        session_ttl_secs: ttl,
        ..Default::default()
    })
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `POST /v1/streams/1/sessions` on `relay` with `body`: the new key.
fn mint(relay: &Relay, body: &str) -> String {
    mint_json(relay, body)["session_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `POST /v1/streams/1/sessions` on `relay` with `body`: the answer.
fn mint_json(relay: &Relay, body: &str) -> serde_json::Value {
    let auth = format!("Bearer {}", relay.token("1"));
    let r = relay
        .request_body(
            "POST",
            "/v1/streams/1/sessions",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            Some(body),
        )
        .expect("POST sessions");
    assert_eq!(r.status, 201, "{r:?}");
    r.json()
}

fn count(relay: &Relay, code: u32) -> usize {
    relay.reject_codes().iter().filter(|c| **c == code).count()
}

/// One srt-live-transmit caller that must be refused with `code` by `relay`: it prints
/// libsrt's reason in well under 3 s, and the relay counts the code.
fn expect_reject(relay: &Relay, dir: &TempDir, what: &str, url: &str, code: u32) {
    let before = count(relay, code);
    let t = Instant::now();
    let (_, stderr) = slt_attempt_until(dir, &unique("caller"), url, Duration::from_secs(5), |e| {
        e.contains(APP_TEXT)
    });
    let took = t.elapsed();
    assert!(
        stderr.contains(APP_TEXT) && took < Duration::from_secs(3),
        "{what}: expected {APP_TEXT:?} within 3 s, got after {took:?}:\n{stderr}\n(url {url})"
    );
    let counted = wait_until(Duration::from_secs(2), || count(relay, code) > before);
    assert!(
        counted,
        "{what}: the relay did not count rejection {code}; codes: {:?}\nlog:\n{}",
        relay.reject_codes(),
        tail_lines(&relay.log(), 15)
    );
    eprintln!("[check] {what}: rejected with {code} in {took:?}");
}

#[test]
fn a_key_minted_on_one_relay_is_taken_once_by_another_with_the_secret() {
    let c = clip();
    let a = with_secret(Some(SECRET), None);
    let b = with_secret(Some(SECRET), None);
    let other = with_secret(Some(OTHER_SECRET), None);
    let dir = TempDir::new("signed-keys");

    // Both keys minted on A, both callers on B.
    let view_key = mint(&a, r#"{"mode": "request"}"#);
    let publish_key = mint(&a, "{}");
    assert!(is_hex(&view_key, 62), "a signed key: {view_key:?}");
    assert_ne!(view_key, publish_key);
    let view_url = b.url("1", &view_key, "request");
    let mut v = SltViewer::start(&dir, "viewer", &view_url);
    let mut p = BytePublisher::start(&dir, "pub", &b.url("1", &publish_key, "publish"), c);
    assert!(
        v.wait_bytes(100_000, Duration::from_secs(8)),
        "B's viewer with A's key got {} bytes: {}\nB's log:\n{}",
        v.received_len(),
        v.stderr(),
        tail_lines(&b.log(), 20)
    );
    assert_eq!(
        b.metric("srt_connections_total", &[]),
        Some(2.0),
        "publisher and viewer on B"
    );
    assert_eq!(a.metric("srt_connections_total", &[]), Some(0.0));

    // The same key a second time on B: already used (2403), while the first still plays.
    expect_reject(&b, &dir, "the key again on B", &view_url, 2403);
    v.assert_running("after its key was tried again");
    // Minted for viewing: refused for publishing (2401, as an unknown key).
    let view_only = mint(&a, r#"{"mode": "request"}"#);
    expect_reject(
        &b,
        &dir,
        "a viewing key used to publish",
        &b.url("1", &view_only, "publish"),
        2401,
    );
    // A relay with another secret: unknown (2401).
    let fresh = mint(&a, "{}");
    expect_reject(
        &other,
        &dir,
        "A's key on a relay with another secret",
        &other.url("1", &fresh, "request"),
        2401,
    );
    // ...and that attempt did not spend it: it still works on B.
    let mut v2 = SltViewer::start(&dir, "viewer2", &b.url("1", &fresh, "request"));
    let have = v2.received_len();
    assert!(
        v2.wait_bytes(have + 50_000, Duration::from_secs(8)),
        "a second viewer on B with another of A's keys: {}",
        v2.stderr()
    );
    // An encrypted session minted on A: B asks for the same (derived) passphrase.
    let enc = mint_json(&a, r#"{"encrypt": true}"#);
    let (key, pass) = (
        enc["session_id"].as_str().unwrap(),
        enc["passphrase"].as_str().unwrap(),
    );
    assert!(is_hex(key, 62) && is_hex(pass, 48), "{enc}");
    let mut v3 = SltViewer::start(
        &dir,
        "encrypted",
        &format!("{}&passphrase={pass}", b.url("1", key, "request")),
    );
    assert!(
        v3.wait_bytes(50_000, Duration::from_secs(8)),
        "an encrypted viewer on B with A's key and passphrase: {}",
        v3.stderr()
    );
    v3.stop();
    // Keys are not logged at info.
    for key in [&view_key, &publish_key, &view_only, &fresh] {
        let short = key.trim_start_matches('0');
        for r in [&a, &b, &other] {
            assert!(!r.log().contains(short), "a session key in the log");
        }
    }
    v.stop();
    v2.stop();
    p.stop();
}

/// A signed key expires on the wall clock wherever it is used. `session_ttl_secs` is at
/// least 1; a signed key's expiry is in whole seconds rounded up (it lives TTL to TTL + 1
/// s), so a 2 s key is expired 3.2 s later.
#[test]
fn a_signed_key_expires_on_every_relay() {
    let a = with_secret(Some(SECRET), Some(2));
    let b = with_secret(Some(SECRET), Some(2));
    let dir = TempDir::new("signed-keys-expiry");
    let old = mint(&a, "{}");
    let used = mint(&a, "{}");
    // Used within its life: refused as used afterwards, expired otherwise.
    let mut v = SltViewer::start(&dir, "in-time", &b.url("1", &used, "request"));
    assert!(
        b.wait_connections("request", 1, Duration::from_secs(3)),
        "a viewer with a fresh key of A's on B"
    );
    v.stop();
    sleep_secs(3.2);
    expect_reject(&b, &dir, "expired key", &b.url("1", &old, "request"), 2424);
    expect_reject(
        &b,
        &dir,
        "used, then expired",
        &b.url("1", &used, "request"),
        2403,
    );
}

#[test]
fn a_relay_without_a_secret_mints_random_keys_that_work() {
    let c = clip();
    let plain = with_secret(None, None);
    let signed = with_secret(Some(SECRET), None);
    let dir = TempDir::new("random-keys");
    let key = plain.session("1");
    assert!(is_hex(&key, 16), "a random key: {key:?}");
    let mut v = SltViewer::start(&dir, "viewer", &plain.url("1", &key, "request"));
    let mut p = BytePublisher::start(&dir, "pub", &plain.publisher_url("1"), c);
    assert!(
        v.wait_bytes(100_000, Duration::from_secs(8)),
        "a viewer with a random key: {}",
        v.stderr()
    );
    // A random key minted for one mode admits only that one; a mode that is neither is
    // refused by the API.
    let publish_only = mint(&plain, r#"{"mode": "publish"}"#);
    assert!(is_hex(&publish_only, 16));
    expect_reject(
        &plain,
        &dir,
        "a publishing key used to view",
        &plain.url("1", &publish_only, "request"),
        2401,
    );
    let auth = format!("Bearer {}", plain.token("1"));
    let r = plain
        .request_body(
            "POST",
            "/v1/streams/1/sessions",
            &[("Authorization", &auth)],
            Some(r#"{"mode": "either"}"#),
        )
        .unwrap();
    assert_eq!(r.status, 400, "{r:?}");
    // A random key is the relay's own: a relay with a secret does not know it.
    let other = plain.session("1");
    expect_reject(
        &signed,
        &dir,
        "another relay's random key",
        &signed.url("1", &other, "request"),
        2401,
    );
    v.stop();
    p.stop();
}
