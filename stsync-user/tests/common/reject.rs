//! Handshake rejections as a real caller sees them (srt-live-transmit), checked against
//! the relay's own count of the code.

use super::*;
use std::time::{Duration, Instant};

/// libsrt's text for every 2xxx (application-defined) rejection code.
pub const APP_TEXT: &str = "Application-defined rejection reason";
pub const ROGUE_TEXT: &str = "Rogue peer or incorrect parameters";

/// Runs one srt-live-transmit caller that must be refused: it must print `expect_text`
/// (libsrt's reason: a silent listener would only give a connect timeout after ~3 s and no
/// reason) in well under 3 s, and the relay must log `expect_code`.
pub fn expect_reject(
    relay: &Relay,
    dir: &TempDir,
    what: &str,
    url: &str,
    expect_text: &str,
    expect_code: u32,
) {
    let before = relay
        .reject_codes()
        .iter()
        .filter(|c| **c == expect_code)
        .count();
    let t = Instant::now();
    let (exited, stderr) =
        slt_attempt_until(dir, &unique("caller"), url, Duration::from_secs(5), |e| {
            e.contains(expect_text)
        });
    let took = t.elapsed();
    assert!(
        stderr.contains(expect_text),
        "{what}: expected the caller to print {expect_text:?} within 5 s (exited: {exited}); it printed:\n{stderr}\n(url {url})"
    );
    assert!(
        took < Duration::from_secs(3),
        "{what}: the rejection took {took:?}"
    );
    if !exited {
        eprintln!("[note] {what}: srt-live-transmit printed the rejection but had not exited after 0.5 s more (client quirk under load); killed it");
    }
    let ok = wait_until(Duration::from_secs(2), || {
        relay
            .reject_codes()
            .iter()
            .filter(|c| **c == expect_code)
            .count()
            > before
    });
    assert!(
        ok,
        "{what}: relay did not count rejection code {expect_code}; codes so far: {:?}\nlog tail:\n{}",
        relay.reject_codes(),
        tail_lines(&relay.log(), 15)
    );
    eprintln!(
        "[check] {what}: rejected with {expect_code} in {took:?}: {}",
        stderr.trim()
    );
}
