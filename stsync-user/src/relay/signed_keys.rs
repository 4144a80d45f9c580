//! Signed session keys: what any relay holding the same `key_secret` can verify without
//! having minted the key (a viewer behind a UDP load balancer or DNS round robin mints on
//! one relay and connects to another).
//!
//! A signed key is 31 bytes, written as 62 hex characters in the stream ID's `s=`:
//!
//! ```text
//! byte  0       version (1)
//!       1..5    expiry, unix seconds (u32, big-endian)
//!       5       mode: 0 either, 1 publish, 2 request
//!       6       flags: bit 0 the connection encrypts with the key's own passphrase
//!       7..15   nonce: 64 random bits (what single use is tracked by)
//!      15..31   HMAC-SHA256(key_secret, LABEL || len(resource) || resource || bytes 0..15),
//!               truncated to 16 bytes
//! ```
//!
//! The stream ID's parser lower-cases hex and strips leading zeros (`srt/streamid.rs`), so
//! the version byte's leading zero is gone by the time a key reaches `verify`: it is put
//! back by left-padding to 62 characters. A random key (at most 16 hex characters) can
//! never pass for a signed one: padded, its version byte is 0.
//!
//! The passphrase of an encrypting key is HMAC-SHA256(key_secret, PASSPHRASE_LABEL || the
//! key's 31 bytes), its first 24 bytes as 48 hex characters (the shape of a random one), so
//! every relay with the secret asks the connection for the same one.

use crate::srt::streamid::Mode;
use ring::hmac;
use std::collections::HashMap;
use subtle::ConstantTimeEq;

pub const VERSION: u8 = 1;
pub const KEY_BYTES: usize = 31;
const MAC_LEN: usize = 16;
const SIGNED: usize = KEY_BYTES - MAC_LEN;
/// Domain separation: these MACs are for session keys, and no other use of the secret
/// (the passphrase below, a future version) can produce one.
const LABEL: &[u8] = b"stsync-proxy session key v1\0";
const PASSPHRASE_LABEL: &[u8] = b"stsync-proxy session passphrase v1\0";
const FLAG_ENCRYPTED: u8 = 1;
/// How much further in the future than the TTL a key's expiry may be: the relays' clocks
/// may disagree by this much. A later expiry is refused (as unknown): no relay with this
/// TTL would have minted it.
pub const CLOCK_SKEW_SECS: u64 = 30;
/// A `key_secret` must be at least this long (config.json).
pub const MIN_SECRET_LEN: usize = 32;

/// The secret the relays share (`key_secret` in config.json), ready for HMAC-SHA256.
#[derive(Clone)]
pub struct KeySecret(hmac::Key);

impl KeySecret {
    pub fn new(secret: &[u8]) -> Self {
        KeySecret(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }
}

impl std::fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeySecret(..)")
    }
}

/// A signed key whose MAC checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedKey {
    /// Unix seconds from which it is refused as expired.
    pub expiry: u64,
    /// The only mode it admits (none: either).
    pub mode: Option<Mode>,
    pub encrypted: bool,
    pub nonce: u64,
    bytes: [u8; KEY_BYTES],
}

fn mode_byte(mode: Option<Mode>) -> u8 {
    match mode {
        None => 0,
        Some(Mode::Publish) => 1,
        Some(Mode::Request) => 2,
    }
}

fn mac(secret: &KeySecret, resource: &str, signed: &[u8]) -> [u8; MAC_LEN] {
    let mut ctx = hmac::Context::with_key(&secret.0);
    ctx.update(LABEL);
    // The resource is at most 64 hex characters (`normalize_hex`); its length keeps it
    // apart from the bytes after it.
    ctx.update(&[resource.len().min(255) as u8]);
    ctx.update(resource.as_bytes());
    ctx.update(signed);
    let tag = ctx.sign();
    tag.as_ref()[..MAC_LEN]
        .try_into()
        .expect("HMAC-SHA256 is 32 bytes")
}

/// A signed key for `resource`, as hex for the stream ID (62 characters).
pub fn mint(
    secret: &KeySecret,
    resource: &str,
    expiry: u32,
    mode: Option<Mode>,
    encrypted: bool,
    nonce: u64,
) -> String {
    let mut b = [0u8; KEY_BYTES];
    b[0] = VERSION;
    b[1..5].copy_from_slice(&expiry.to_be_bytes());
    b[5] = mode_byte(mode);
    b[6] = if encrypted { FLAG_ENCRYPTED } else { 0 };
    b[7..15].copy_from_slice(&nonce.to_be_bytes());
    let tag = mac(secret, resource, &b[..SIGNED]);
    b[SIGNED..].copy_from_slice(&tag);
    hex(&b)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `session` (normalised hex, as the stream ID parser leaves it) looks like a signed
/// key rather than a random one (at most 16 hex characters).
pub fn is_signed(session: &str) -> bool {
    session.len() > 16
}

/// The signed key `session` (normalised hex) of `resource`, if its MAC is right and its
/// format known (else the key is unknown); nothing else about it is looked at before the
/// MAC (a forger learns nothing but "unknown").
pub fn verify(secret: &KeySecret, resource: &str, session: &str) -> Option<SignedKey> {
    if session.len() > 2 * KEY_BYTES {
        return None;
    }
    let padded = format!("{session:0>width$}", width = 2 * KEY_BYTES);
    let mut b = [0u8; KEY_BYTES];
    for (i, out) in b.iter_mut().enumerate() {
        *out = u8::from_str_radix(&padded[2 * i..2 * i + 2], 16).ok()?;
    }
    let want = mac(secret, resource, &b[..SIGNED]);
    if !bool::from(want.ct_eq(&b[SIGNED..])) {
        return None;
    }
    let mode = match b[5] {
        0 => None,
        1 => Some(Mode::Publish),
        2 => Some(Mode::Request),
        _ => return None,
    };
    // Signed by a relay with our secret but not of a format we know: refused alike.
    if b[0] != VERSION || b[6] & !FLAG_ENCRYPTED != 0 {
        return None;
    }
    Some(SignedKey {
        expiry: u32::from_be_bytes(b[1..5].try_into().unwrap()).into(),
        mode,
        encrypted: b[6] & FLAG_ENCRYPTED != 0,
        nonce: u64::from_be_bytes(b[7..15].try_into().unwrap()),
        bytes: b,
    })
}

impl SignedKey {
    /// The passphrase its connection must use, when it was minted for an encrypted session:
    /// derived from the secret and the key, so every relay with the secret knows it.
    pub fn passphrase(&self, secret: &KeySecret) -> Option<String> {
        self.encrypted.then(|| passphrase(secret, &self.bytes))
    }
}

fn passphrase(secret: &KeySecret, key: &[u8; KEY_BYTES]) -> String {
    let mut ctx = hmac::Context::with_key(&secret.0);
    ctx.update(PASSPHRASE_LABEL);
    ctx.update(key);
    // 24 bytes as hex: 48 characters, like a random session passphrase (libsrt: 10 to 79).
    hex(&ctx.sign().as_ref()[..24])
}

/// The nonces of signed keys used on this relay, per stream, each kept until its key's
/// expiry plus `grace` (so a late caller learns "used", not "expired").
///
/// At most `limit` per stream. At the bound, the nonces of keys that have expired are
/// forgotten first (their keys are refused as expired anyway; only the reason changes);
/// when every remembered key is still live, a new signed key for that stream is refused
/// (`UsedNonces::insert` says `Full`, the relay answers 2402 overload) until the oldest
/// expires. A live nonce is never forgotten early: that would let its key be used twice.
pub struct UsedNonces {
    per_stream: HashMap<String, HashMap<u64, u64>>,
    limit: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spend {
    Ok,
    Used,
    Full,
}

impl UsedNonces {
    pub fn new(limit: usize) -> Self {
        UsedNonces {
            per_stream: HashMap::new(),
            limit,
        }
    }

    pub fn contains(&self, resource: &str, nonce: u64) -> bool {
        self.per_stream
            .get(resource)
            .is_some_and(|m| m.contains_key(&nonce))
    }

    /// Records the nonce of a key of `resource` that expires at `expiry` as used, at unix
    /// second `now`.
    pub fn insert(&mut self, resource: &str, nonce: u64, expiry: u64, now: u64) -> Spend {
        let m = self.per_stream.entry(resource.to_owned()).or_default();
        if m.contains_key(&nonce) {
            return Spend::Used;
        }
        if m.len() >= self.limit {
            m.retain(|_, &mut exp| now < exp);
            if m.len() >= self.limit {
                return Spend::Full;
            }
        }
        m.insert(nonce, expiry);
        Spend::Ok
    }

    /// Forgets the nonces whose keys expired more than `grace` seconds before `now`.
    pub fn purge(&mut self, now: u64, grace: u64) {
        self.per_stream.retain(|_, m| {
            m.retain(|_, &mut exp| now < exp.saturating_add(grace));
            !m.is_empty()
        });
    }

    pub fn len(&self) -> usize {
        self.per_stream.values().map(HashMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::srt::streamid::{normalize_hex, parse};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";

    fn secret() -> KeySecret {
        KeySecret::new(SECRET)
    }

    #[test]
    fn round_trip_through_the_stream_id() {
        let s = secret();
        for (mode, encrypted, nonce) in [
            (None, false, 0),
            (Some(Mode::Publish), true, u64::MAX),
            (Some(Mode::Request), false, 0x0123_4567_89ab_cdef),
        ] {
            let k = mint(&s, "1a", 1_800_000_000, mode, encrypted, nonce);
            assert_eq!(k.len(), 62);
            assert!(k.starts_with("01") && k.bytes().all(|b| b.is_ascii_hexdigit()));
            // As a caller sends it, and as the relay reads it (leading zero stripped).
            let sid = format!("#!::r=1A,s={},m=request", k.to_uppercase());
            let parsed = parse(sid.as_bytes()).unwrap();
            assert_eq!(parsed.session.len(), 61);
            assert!(is_signed(&parsed.session));
            let v = verify(&s, "1a", &parsed.session).unwrap();
            assert_eq!(
                (v.expiry, v.mode, v.encrypted, v.nonce),
                (1_800_000_000, mode, encrypted, nonce)
            );
            assert_eq!(verify(&s, "1a", &k), Some(v), "unnormalised");
        }
        // Random keys are at most 16 hex characters.
        assert!(!is_signed("91bf7a9ed500c8ce"));
    }

    #[test]
    fn any_flipped_bit_is_refused_as_unknown() {
        let s = secret();
        let k = mint(&s, "1", 1_800_000_000, None, true, 42);
        let bytes: Vec<u8> = (0..KEY_BYTES)
            .map(|i| u8::from_str_radix(&k[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        for i in 0..KEY_BYTES * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            let flipped = normalize_hex(&hex(&b)).unwrap();
            assert_eq!(verify(&s, "1", &flipped), None, "bit {i}");
        }
        // Truncated, extended, or for another resource.
        assert_eq!(verify(&s, "1", &k[2..]), None);
        assert_eq!(verify(&s, "1", &k[..60]), None);
        assert_eq!(verify(&s, "1", &format!("{k}0")), None);
        assert_eq!(verify(&s, "2", &k), None);
        assert_eq!(verify(&s, "10", &k), None);
        assert!(verify(&s, "1", &k).is_some());
    }

    #[test]
    fn another_secret_is_refused() {
        let k = mint(&secret(), "1", 1_800_000_000, None, false, 7);
        let other = KeySecret::new(b"0123456789abcdef0123456789abcdef-prod");
        assert_eq!(verify(&other, "1", &k), None);
    }

    #[test]
    fn passphrases_follow_the_secret_and_the_key() {
        let s = secret();
        let k = mint(&s, "1", 1_800_000_000, None, true, 7);
        let p = verify(&s, "1", &k).unwrap().passphrase(&s).unwrap();
        assert_eq!(p.len(), 48);
        assert!(p.bytes().all(|b| b.is_ascii_hexdigit()));
        // Another relay with the secret derives the same one.
        let again = verify(&secret(), "1", &k).unwrap().passphrase(&secret());
        assert_eq!(again.as_deref(), Some(p.as_str()));
        let k2 = mint(&s, "1", 1_800_000_000, None, true, 8);
        assert_ne!(verify(&s, "1", &k2).unwrap().passphrase(&s), Some(p));
        let clear = mint(&s, "1", 1_800_000_000, None, false, 7);
        assert_eq!(verify(&s, "1", &clear).unwrap().passphrase(&s), None);
    }

    #[test]
    fn used_nonces_are_single_use_and_bounded() {
        let mut u = UsedNonces::new(3);
        assert_eq!(u.insert("1", 1, 100, 10), Spend::Ok);
        assert_eq!(u.insert("1", 1, 100, 10), Spend::Used);
        assert!(u.contains("1", 1) && !u.contains("2", 1));
        assert_eq!(u.insert("2", 1, 100, 10), Spend::Ok, "per stream");
        assert_eq!(u.insert("1", 2, 20, 10), Spend::Ok);
        assert_eq!(u.insert("1", 3, 100, 10), Spend::Ok);
        // Full of live keys: refused, and no live nonce is forgotten.
        assert_eq!(u.insert("1", 4, 100, 10), Spend::Full);
        assert_eq!(u.insert("1", 2, 20, 10), Spend::Used);
        // Once one has expired, it makes room (its key is refused as expired anyway).
        assert_eq!(u.insert("1", 4, 100, 20), Spend::Ok);
        assert!(!u.contains("1", 2) && u.contains("1", 1) && u.contains("1", 3));
        assert_eq!(u.len(), 4);
        // Kept until expiry + grace.
        u.purge(699, 600);
        assert_eq!(u.len(), 4);
        u.purge(700, 600);
        assert_eq!(u.len(), 0);
    }
}
