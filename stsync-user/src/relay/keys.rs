//! Single-use session keys with a limited life, minted over HTTP (a `Command` to the
//! relay) and redeemed at handshake: random keys, which only the relay that minted them
//! knows, and, with a `key_secret`, signed keys that any relay with the secret verifies
//! (`signed_keys.rs`). A relay with a secret mints signed keys and takes both.

use super::signed_keys::{self, KeySecret, SignedKey, Spend, UsedNonces, CLOCK_SKEW_SECS};
use crate::srt::streamid::Mode;
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("session key unknown or issued for another resource")]
    Unknown,
    #[error("session key already used")]
    Used,
    #[error("session key expired")]
    Expired,
    /// Signed keys only: see `UsedNonces`.
    #[error("{MAX_KEYS_PER_STREAM} live session keys of this stream were used recently")]
    Full,
}

struct Entry {
    resource: String,
    expires: Instant,
    used: bool,
    /// The only mode it admits (none: either).
    mode: Option<Mode>,
    /// The connection that redeems it must encrypt with this (instead of the stream's).
    passphrase: Option<String>,
}

/// Keys are kept for a grace period after they expire (the longer of the TTL and
/// `MIN_GRACE`) so that a late caller learns "expired" or "used" instead of "unknown"; after
/// that they are purged. Minting needs a stream's token, so the grace cannot be flooded.
const MIN_GRACE: Duration = Duration::from_secs(600);
/// At most this many keys (live or in their grace period) per stream: a token holder
/// minting in a loop gets 429 instead of growing the relay (about 64 bytes a key, so 4 MB).
/// Also the bound on the used signed keys remembered per stream (`UsedNonces`).
pub const MAX_KEYS_PER_STREAM: usize = 65_536;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "{MAX_KEYS_PER_STREAM} session keys of this stream are live or recently used; try again later"
)]
pub struct TooMany;

/// A key as the API hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minted {
    /// Hex, for the stream ID's `s=`.
    pub key: String,
    /// The passphrase its connection must encrypt with, if it was minted with one.
    pub passphrase: Option<String>,
}

#[derive(Default)]
struct Keys {
    map: HashMap<u64, Entry>,
    per_resource: HashMap<String, usize>,
}

struct Signed {
    secret: KeySecret,
    used: UsedNonces,
}

pub struct SessionKeys {
    ttl: Duration,
    keys: Keys,
    signed: Option<Signed>,
}

/// Whole seconds, rounded up: a signed key lives at least the TTL.
fn secs_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl SessionKeys {
    pub fn new(ttl: Duration) -> Self {
        Self::with_secret(ttl, None)
    }

    /// With a secret, minted keys are signed ones (random keys are still taken).
    pub fn with_secret(ttl: Duration, secret: Option<KeySecret>) -> Self {
        SessionKeys {
            ttl,
            keys: Keys::default(),
            signed: secret.map(|secret| Signed {
                secret,
                used: UsedNonces::new(MAX_KEYS_PER_STREAM),
            }),
        }
    }

    /// Registers `key` (64 random bits from the caller) for `resource`; returns its hex form.
    pub fn insert(&mut self, resource: &str, key: u64, now: Instant) -> String {
        self.insert_random(resource, key, None, None, now, usize::MAX)
            .expect("no limit")
    }

    /// A new key for `resource`: `key` is 64 random bits from the caller (the key itself,
    /// or a signed key's nonce). With `passphrase`, its connection must encrypt with one of
    /// its own: that one for a random key; a signed key's is derived from the secret and the
    /// key instead (any relay with the secret knows it), and only its presence counts. With
    /// `mode`, the key admits that mode only. `unix` is the wall clock now (signed keys'
    /// expiry). A random key is refused when `resource` already has `limit` keys (see
    /// `MAX_KEYS_PER_STREAM`); a signed one costs no memory until it is used.
    #[allow(clippy::too_many_arguments)]
    pub fn mint(
        &mut self,
        resource: &str,
        key: u64,
        passphrase: Option<String>,
        mode: Option<Mode>,
        now: Instant,
        unix: Duration,
        limit: usize,
    ) -> Result<Minted, TooMany> {
        let Some(s) = &self.signed else {
            let key = self.insert_random(resource, key, passphrase.clone(), mode, now, limit)?;
            return Ok(Minted { key, passphrase });
        };
        let expiry = secs_up(unix) + secs_up(self.ttl);
        let expiry = u32::try_from(expiry).unwrap_or(u32::MAX);
        let encrypted = passphrase.is_some();
        let hex = signed_keys::mint(&s.secret, resource, expiry, mode, encrypted, key);
        let k = signed_keys::verify(&s.secret, resource, &hex).expect("just signed");
        Ok(Minted {
            passphrase: k.passphrase(&s.secret),
            key: hex,
        })
    }

    fn insert_random(
        &mut self,
        resource: &str,
        key: u64,
        passphrase: Option<String>,
        mode: Option<Mode>,
        now: Instant,
        limit: usize,
    ) -> Result<String, TooMany> {
        let keys = &mut self.keys;
        let n = keys.per_resource.entry(resource.to_owned()).or_default();
        if *n >= limit {
            return Err(TooMany);
        }
        *n += 1;
        let old = keys.map.insert(
            key,
            Entry {
                resource: resource.to_owned(),
                expires: now + self.ttl,
                used: false,
                mode,
                passphrase,
            },
        );
        if let Some(old) = old {
            // 64 random bits collided: the old key is gone.
            *keys.per_resource.get_mut(&old.resource).expect("counted") -= 1;
        }
        Ok(format!("{key:016x}"))
    }

    /// Whether the key is valid for a `mode` connection to `resource` now (unspent), and
    /// the passphrase that connection must use if the key has its own. `session` is
    /// normalised hex; `unix` the wall clock now. A signed key's MAC is checked first.
    pub fn check(
        &self,
        resource: &str,
        session: &str,
        mode: Mode,
        now: Instant,
        unix: Duration,
    ) -> Result<Option<String>, Denied> {
        if let (Some(s), true) = (&self.signed, signed_keys::is_signed(session)) {
            let k = self.check_signed(s, resource, session, mode, unix)?;
            return Ok(k.passphrase(&s.secret));
        }
        let e = self.random(resource, session)?;
        if e.mode.is_some_and(|m| m != mode) {
            return Err(Denied::Unknown);
        }
        if e.used {
            return Err(Denied::Used);
        }
        if now >= e.expires {
            return Err(Denied::Expired);
        }
        Ok(e.passphrase.clone())
    }

    fn random(&self, resource: &str, session: &str) -> Result<&Entry, Denied> {
        let key = u64::from_str_radix(session, 16).map_err(|_| Denied::Unknown)?;
        self.keys
            .map
            .get(&key)
            .filter(|e| e.resource == resource)
            .ok_or(Denied::Unknown)
    }

    fn check_signed(
        &self,
        s: &Signed,
        resource: &str,
        session: &str,
        mode: Mode,
        unix: Duration,
    ) -> Result<SignedKey, Denied> {
        let k = signed_keys::verify(&s.secret, resource, session).ok_or(Denied::Unknown)?;
        if k.mode.is_some_and(|m| m != mode) {
            return Err(Denied::Unknown);
        }
        // No relay with this TTL mints a key that lives longer (clocks may differ a little).
        if k.expiry > secs_up(unix) + secs_up(self.ttl) + CLOCK_SKEW_SECS {
            return Err(Denied::Unknown);
        }
        if s.used.contains(resource, k.nonce) {
            return Err(Denied::Used);
        }
        if unix.as_secs() >= k.expiry {
            return Err(Denied::Expired);
        }
        Ok(k)
    }

    /// Marks the key used if it is valid for a `mode` connection to `resource`. `session`
    /// is normalised hex.
    pub fn redeem(
        &mut self,
        resource: &str,
        session: &str,
        mode: Mode,
        now: Instant,
        unix: Duration,
    ) -> Result<(), Denied> {
        if let (Some(s), true) = (&self.signed, signed_keys::is_signed(session)) {
            let k = self.check_signed(s, resource, session, mode, unix)?;
            let used = &mut self.signed.as_mut().expect("has a secret").used;
            return match used.insert(resource, k.nonce, k.expiry, unix.as_secs()) {
                Spend::Ok => Ok(()),
                Spend::Used => Err(Denied::Used),
                Spend::Full => Err(Denied::Full),
            };
        }
        self.check(resource, session, mode, now, unix)?;
        let key = u64::from_str_radix(session, 16).map_err(|_| Denied::Unknown)?;
        if let Some(e) = self.keys.map.get_mut(&key) {
            e.used = true;
        }
        Ok(())
    }

    /// Forgets keys (and used signed keys' nonces) whose grace period is over.
    pub fn purge(&mut self, now: Instant, unix: Duration) {
        let grace = self.ttl.max(MIN_GRACE);
        let Keys { map, per_resource } = &mut self.keys;
        map.retain(|_, e| {
            let keep = now < e.expires + grace;
            if !keep {
                *per_resource.get_mut(&e.resource).expect("counted") -= 1;
            }
            keep
        });
        if let Some(s) = &mut self.signed {
            s.used.purge(unix.as_secs(), secs_up(grace));
        }
    }

    /// Forgets `resource`'s keys (a reload removed the stream). Signed keys are not held:
    /// the relay refuses them for a stream it does not have.
    pub fn forget(&mut self, resource: &str) {
        let Keys { map, per_resource } = &mut self.keys;
        map.retain(|_, e| e.resource != resource);
        per_resource.remove(resource);
    }

    /// How long keys minted from now on stay valid (a reload); keys minted before keep
    /// their expiry.
    pub fn set_ttl(&mut self, ttl: Duration) {
        self.ttl = ttl;
    }

    /// Random keys held, and used signed keys remembered.
    pub fn len(&self) -> usize {
        self.keys.map.len() + self.signed.as_ref().map_or(0, |s| s.used.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wall clock for tests: unix time 1.8e9 s (2027) at `t`.
    fn unix_at(t: Instant, now: Instant) -> Duration {
        Duration::from_secs(1_800_000_000) + now.saturating_duration_since(t)
    }

    #[test]
    fn single_use_expiring_keys() {
        let t = Instant::now();
        let u = |now| unix_at(t, now);
        let r = Mode::Request;
        let mut s = SessionKeys::new(Duration::from_secs(300));
        let k = s.insert("1", 0xABC, t);
        assert_eq!(k, "0000000000000abc");
        assert_eq!(s.redeem("2", "abc", r, t, u(t)), Err(Denied::Unknown));
        assert_eq!(s.redeem("1", "abd", r, t, u(t)), Err(Denied::Unknown));
        assert_eq!(s.redeem("1", "zz", r, t, u(t)), Err(Denied::Unknown));
        assert_eq!(s.redeem("1", "abc", r, t, u(t)), Ok(()));
        assert_eq!(s.redeem("1", "abc", r, t, u(t)), Err(Denied::Used));
        let k2 = s.insert("1", 7, t);
        let late = t + Duration::from_secs(300);
        assert_eq!(
            s.redeem("1", k2.trim_start_matches('0'), r, late, u(late)),
            Err(Denied::Expired)
        );
        s.purge(t + Duration::from_secs(899), u(t));
        assert_eq!(s.len(), 2);
        s.purge(t + Duration::from_secs(900), u(t));
        assert!(s.is_empty());
        // A short TTL still keeps the tombstone long enough to say "expired".
        let mut short = SessionKeys::new(Duration::from_secs(1));
        let k = short.insert("1", 5, t);
        let later = t + Duration::from_secs(3);
        short.purge(later, u(later));
        assert_eq!(
            short.redeem("1", &k, r, later, u(later)),
            Err(Denied::Expired)
        );
    }

    fn mint(
        s: &mut SessionKeys,
        key: u64,
        mode: Option<Mode>,
        now: Instant,
        unix: Duration,
        limit: usize,
    ) -> Result<Minted, TooMany> {
        s.mint("1", key, None, mode, now, unix, limit)
    }

    #[test]
    fn keys_per_stream_are_capped_until_purged() {
        let t = Instant::now();
        let u = unix_at(t, t);
        let mut s = SessionKeys::new(Duration::from_secs(1));
        for k in 0..3 {
            mint(&mut s, k, None, t, u, 3).unwrap();
        }
        assert_eq!(mint(&mut s, 9, None, t, u, 3), Err(TooMany));
        assert!(s.mint("2", 9, None, None, t, u, 3).is_ok(), "per stream");
        s.purge(t + MIN_GRACE + Duration::from_secs(2), u);
        assert!(
            mint(&mut s, 10, None, t, u, 3).is_ok(),
            "purged keys free their places"
        );
    }

    #[test]
    fn a_random_key_minted_for_one_mode_admits_only_that_one() {
        let t = Instant::now();
        let u = unix_at(t, t);
        let mut s = SessionKeys::new(Duration::from_secs(300));
        let k = mint(&mut s, 5, Some(Mode::Publish), t, u, 9).unwrap().key;
        let k = k.trim_start_matches('0');
        assert_eq!(s.check("1", k, Mode::Request, t, u), Err(Denied::Unknown));
        assert_eq!(s.redeem("1", k, Mode::Publish, t, u), Ok(()));
    }

    const SECRET: &[u8] = b"an-example-secret-of-32-characters-or-more";

    fn signed(ttl: u64) -> SessionKeys {
        SessionKeys::with_secret(Duration::from_secs(ttl), Some(KeySecret::new(SECRET)))
    }

    /// How the stream ID parser hands a key to the relay.
    fn norm(k: &str) -> String {
        crate::srt::streamid::normalize_hex(k).unwrap()
    }

    #[test]
    fn signed_keys_are_verified_by_any_relay_with_the_secret() {
        let t = Instant::now();
        let u = unix_at(t, t);
        let mut a = signed(300);
        let minted = mint(&mut a, 0xfeed, None, t, u, 1).unwrap();
        assert_eq!((minted.key.len(), minted.passphrase), (62, None));
        assert_eq!(a.len(), 0, "minting a signed key stores nothing");
        // Another relay, started at another moment: its own Instant, the same wall clock.
        let t2 = t + Duration::from_secs(1000);
        let mut b = signed(300);
        let k = norm(&minted.key);
        assert_eq!(b.check("1", &k, Mode::Request, t2, u), Ok(None));
        assert_eq!(b.redeem("1", &k, Mode::Publish, t2, u), Ok(()), "either");
        assert_eq!(b.redeem("1", &k, Mode::Publish, t2, u), Err(Denied::Used));
        assert_eq!(b.check("1", &k, Mode::Request, t2, u), Err(Denied::Used));
        assert_eq!(b.len(), 1);
        // Single use is per relay: `a` has not seen it used.
        assert_eq!(a.redeem("1", &k, Mode::Request, t, u), Ok(()));
        // Another resource, another secret, no secret: unknown.
        assert_eq!(b.check("2", &k, Mode::Request, t2, u), Err(Denied::Unknown));
        let other = SessionKeys::with_secret(
            Duration::from_secs(300),
            Some(KeySecret::new(b"another-secret-of-32-characters-or-more")),
        );
        assert_eq!(
            other.check("1", &k, Mode::Request, t2, u),
            Err(Denied::Unknown)
        );
        let plain = SessionKeys::new(Duration::from_secs(300));
        assert_eq!(
            plain.check("1", &k, Mode::Request, t2, u),
            Err(Denied::Unknown)
        );
    }

    #[test]
    fn signed_keys_expire_and_carry_their_mode() {
        let t = Instant::now();
        let u = unix_at(t, t);
        let mut s = signed(300);
        let k = norm(&mint(&mut s, 1, Some(Mode::Request), t, u, 1).unwrap().key);
        assert_eq!(s.check("1", &k, Mode::Publish, t, u), Err(Denied::Unknown));
        let last = u + Duration::from_millis(299_999);
        assert!(s.check("1", &k, Mode::Request, t, last).is_ok());
        let end = u + Duration::from_secs(300);
        assert_eq!(
            s.check("1", &k, Mode::Request, t, end),
            Err(Denied::Expired)
        );
        assert_eq!(
            s.redeem("1", &k, Mode::Request, t, end),
            Err(Denied::Expired)
        );
        // Used, then expired: still "used" during the grace, as random keys say.
        let k = norm(&mint(&mut s, 2, None, t, u, 1).unwrap().key);
        s.redeem("1", &k, Mode::Request, t, u).unwrap();
        s.purge(t, end + Duration::from_secs(599));
        assert_eq!(s.check("1", &k, Mode::Request, t, end), Err(Denied::Used));
        s.purge(t, end + Duration::from_secs(600));
        assert!(s.is_empty());
        assert_eq!(
            s.check("1", &k, Mode::Request, t, end),
            Err(Denied::Expired)
        );
    }

    #[test]
    fn a_signed_key_from_the_far_future_is_refused() {
        let t = Instant::now();
        let u = unix_at(t, t);
        // Minted by a relay with a longer TTL, or a clock far ahead.
        let mut long = signed(3600);
        let k = norm(&mint(&mut long, 1, None, t, u, 1).unwrap().key);
        let s = signed(300);
        assert_eq!(s.check("1", &k, Mode::Request, t, u), Err(Denied::Unknown));
        // A clock a little ahead is fine.
        let ahead = u + Duration::from_secs(CLOCK_SKEW_SECS);
        let k = norm(&mint(&mut signed(300), 2, None, t, ahead, 1).unwrap().key);
        assert!(s.check("1", &k, Mode::Request, t, u).is_ok());
        let ahead = ahead + Duration::from_secs(2);
        let k = norm(&mint(&mut signed(300), 2, None, t, ahead, 1).unwrap().key);
        assert_eq!(s.check("1", &k, Mode::Request, t, u), Err(Denied::Unknown));
    }

    #[test]
    fn a_signed_encrypted_key_has_a_derived_passphrase() {
        let t = Instant::now();
        let u = unix_at(t, t);
        let mut a = signed(300);
        let m = a
            .mint("1", 3, Some("ignored-random-one".into()), None, t, u, 1)
            .unwrap();
        let p = m.passphrase.expect("encrypted");
        assert_eq!(p.len(), 48);
        assert_ne!(p, "ignored-random-one");
        let b = signed(300);
        assert_eq!(
            b.check("1", &norm(&m.key), Mode::Request, t, u),
            Ok(Some(p))
        );
    }

    #[test]
    fn a_relay_with_a_secret_still_takes_random_keys() {
        let t = Instant::now();
        let u = unix_at(t, t);
        let mut s = signed(300);
        let k = s.insert("1", 0xabc, t);
        assert_eq!(s.redeem("1", &norm(&k), Mode::Request, t, u), Ok(()));
        assert_eq!(
            s.redeem("1", &norm(&k), Mode::Request, t, u),
            Err(Denied::Used)
        );
    }

    #[test]
    fn used_signed_keys_are_bounded_per_stream() {
        let t = Instant::now();
        let u = unix_at(t, t);
        let mut s = signed(300);
        for n in 0..MAX_KEYS_PER_STREAM as u64 {
            let k = norm(&mint(&mut s, n, None, t, u, 1).unwrap().key);
            s.redeem("1", &k, Mode::Request, t, u).unwrap();
        }
        let k = norm(&mint(&mut s, u64::MAX, None, t, u, 1).unwrap().key);
        assert_eq!(s.redeem("1", &k, Mode::Request, t, u), Err(Denied::Full));
        // Another stream is not held up.
        let k2 = s.mint("2", 1, None, None, t, u, 1).unwrap().key;
        assert_eq!(s.redeem("2", &norm(&k2), Mode::Request, t, u), Ok(()));
        // When the remembered keys expire, a fresh one takes the place of an old one.
        let later = u + Duration::from_secs(301);
        let k = norm(&mint(&mut s, u64::MAX, None, t, later, 1).unwrap().key);
        assert_eq!(s.redeem("1", &k, Mode::Request, t, later), Ok(()));
    }
}
