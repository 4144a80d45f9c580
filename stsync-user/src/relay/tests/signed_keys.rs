//! Signed session keys across relays: a key minted on one `Relay` is taken by another built
//! with the same `key_secret` (as behind a UDP load balancer), once per relay, until it
//! expires on the wall clock, and by no relay with another secret or none.

use super::*;
use crate::srt::streamid::Mode;

const SECRET: &[u8] = b"relay-tests-shared-key-secret-0123456789";
const OTHER: &[u8] = b"relay-tests-another-key-secret-987654321";

fn unix(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

fn mint(w: &mut World, mode: Option<Mode>, passphrase: Option<&str>) -> Minted {
    let cmd = Command::MintSession {
        resource: "1".into(),
        key: rand::random(),
        passphrase: passphrase.map(str::to_owned),
        mode,
    };
    match w.relay.handle_command(w.now, cmd) {
        Ok(Reply::Session(m)) => m,
        other => panic!("{other:?}"),
    }
}

fn viewer_sid(key: &str) -> String {
    format!("#!::r=1,s={key},m=request")
}

fn rejections(w: &World, code: u32) -> u64 {
    w.stats().drops.rejections.get(&code).copied().unwrap_or(0)
}

#[test]
fn a_key_minted_on_one_relay_is_taken_once_by_another_with_the_secret() {
    // Two relays started at different moments (each its own `Instant` anchor), their wall
    // clocks 2 s apart.
    let mut a = World::with_key_secret(Some(SECRET), unix(UNIX_START));
    let mut b = World::with_key_secret(Some(SECRET), unix(UNIX_START + 2));
    let minted = mint(&mut a, Some(Mode::Request), None);
    assert_eq!(minted.key.len(), 62, "{}", minted.key);
    assert!(minted.passphrase.is_none());

    // B has a publisher (with a key B minted itself) and takes A's key for a viewer.
    let mut p = Caller::new(2000, 0);
    p.join(&mut b, "publish");
    let mut v = Caller::new(1001, 0);
    assert_eq!(v.connect(&mut b, &viewer_sid(&minted.key)), Ok(()));
    p.data(&mut b, Seq::new(0), 0, b"minted on A, played on B");
    let got = data(&b.take(v.addr));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, b"minted on A, played on B");

    // Once on B: another caller with the same key is refused as "used" (2403)...
    let used = Caller::new(1002, 0).connect(&mut b, &viewer_sid(&minted.key));
    assert_eq!(used, Err(2403));
    assert_eq!(rejections(&b, 2403), 1, "the existing counter");
    // ...as written by the caller too (upper case, leading zero dropped).
    let upper = minted.key.trim_start_matches('0').to_uppercase();
    assert_eq!(
        Caller::new(1003, 0).connect(&mut b, &viewer_sid(&upper)),
        Err(2403)
    );
    // A relay enforces single use for what it sees: A has not seen it used.
    assert_eq!(
        Caller::new(1004, 0).connect(&mut a, &viewer_sid(&minted.key)),
        Ok(())
    );
    assert_eq!(
        Caller::new(1005, 0).connect(&mut a, &viewer_sid(&minted.key)),
        Err(2403)
    );
}

#[test]
fn signed_keys_are_refused_for_another_mode_secret_or_a_forgery() {
    let mut a = World::with_key_secret(Some(SECRET), unix(UNIX_START));
    let mut b = World::with_key_secret(Some(SECRET), unix(UNIX_START));
    let mut c = World::with_key_secret(Some(OTHER), unix(UNIX_START));
    let mut plain = World::with_key_secret(None, unix(UNIX_START));
    let viewing = mint(&mut a, Some(Mode::Request), None).key;
    // Minted for viewing: refused for publishing, as an unknown key.
    let publish = format!("#!::r=1,s={viewing},m=publish");
    assert_eq!(Caller::new(2000, 0).connect(&mut b, &publish), Err(2401));
    // Another secret, or none: unknown.
    assert_eq!(
        Caller::new(1001, 0).connect(&mut c, &viewer_sid(&viewing)),
        Err(2401)
    );
    assert_eq!(
        Caller::new(1001, 0).connect(&mut plain, &viewer_sid(&viewing)),
        Err(2401)
    );
    // A forged key (the last MAC byte changed): unknown, exactly as a made-up one.
    let mut forged = viewing.clone().into_bytes();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'0' { b'1' } else { b'0' };
    let forged = String::from_utf8(forged).unwrap();
    assert_eq!(
        Caller::new(1002, 0).connect(&mut b, &viewer_sid(&forged)),
        Err(2401)
    );
    // None of these spent it: it still works on B, for its mode.
    assert_eq!(
        Caller::new(1003, 0).connect(&mut b, &viewer_sid(&viewing)),
        Ok(())
    );
    assert_eq!(rejections(&b, 2401), 2);
    // A relay without a secret mints random keys, as before.
    assert_eq!(plain.key("1").len(), 16);
}

#[test]
fn a_signed_key_expires_on_the_wall_clock_whichever_relay_sees_it() {
    let mut a = World::with_key_secret(Some(SECRET), unix(UNIX_START));
    // B started 200 s later by the wall clock (its `Instant`s know nothing of A's).
    let mut b = World::with_key_secret(Some(SECRET), unix(UNIX_START + 200));
    let k = mint(&mut a, None, None).key;
    let k2 = mint(&mut a, None, None).key;
    assert_eq!(
        Caller::new(1001, 0).connect(&mut b, &viewer_sid(&k)),
        Ok(())
    );
    // 300 s after minting by the wall clock, 100 s after B's start.
    b.advance(Duration::from_secs(100));
    assert_eq!(
        Caller::new(1002, 0).connect(&mut b, &viewer_sid(&k2)),
        Err(2424)
    );
    // A key used before it expired still says "used" afterwards (within the grace).
    assert_eq!(
        Caller::new(1003, 0).connect(&mut b, &viewer_sid(&k)),
        Err(2403)
    );
}

#[test]
fn an_encrypted_signed_key_asks_for_the_same_passphrase_on_every_relay() {
    let mut a = World::with_key_secret(Some(SECRET), unix(UNIX_START));
    let mut b = World::with_key_secret(Some(SECRET), unix(UNIX_START));
    let minted = mint(&mut a, None, Some("a-random-one-the-relay-replaces"));
    let pass = minted.passphrase.expect("encrypted");
    assert_eq!(pass.len(), 48);
    let sid = viewer_sid(&minted.key);
    // Clear, or the wrong passphrase: refused, and the key is not spent.
    assert_eq!(Caller::new(1001, 0).connect(&mut b, &sid), Err(1011));
    let mut wrong = Caller::encrypting(1002, 0, "a-random-one-the-relay-replaces", 16);
    assert_eq!(wrong.connect(&mut b, &sid), Err(1010));
    let mut v = Caller::encrypting(1003, 0, &pass, 16);
    assert_eq!(v.connect(&mut b, &sid), Ok(()));
    let mut p = Caller::new(2000, 0);
    p.join(&mut b, "publish");
    p.data(&mut b, Seq::new(0), 0, b"sealed for one viewer");
    let got = data(&b.take(v.addr));
    assert_eq!(got.len(), 1);
    assert_ne!(got[0].1, b"sealed for one viewer", "encrypted on the wire");
}
