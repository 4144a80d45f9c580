//! Single-use session keys with a limited life, minted over HTTP (a `Command` to the
//! relay) and redeemed at handshake.

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
}

struct Entry {
    resource: String,
    expires: Instant,
    used: bool,
    /// The connection that redeems it must encrypt with this (instead of the stream's).
    passphrase: Option<String>,
}

/// Keys are kept for a grace period after they expire (the longer of the TTL and
/// `MIN_GRACE`) so that a late caller learns "expired" or "used" instead of "unknown"; after
/// that they are purged. Minting needs a stream's token, so the grace cannot be flooded.
const MIN_GRACE: Duration = Duration::from_secs(600);
/// At most this many keys (live or in their grace period) per stream: a token holder
/// minting in a loop gets 429 instead of growing the relay (about 64 bytes a key, so 4 MB).
pub const MAX_KEYS_PER_STREAM: usize = 65_536;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "{MAX_KEYS_PER_STREAM} session keys of this stream are live or recently used; try again later"
)]
pub struct TooMany;

#[derive(Default)]
struct Keys {
    map: HashMap<u64, Entry>,
    per_resource: HashMap<String, usize>,
}

pub struct SessionKeys {
    ttl: Duration,
    keys: Keys,
}

impl SessionKeys {
    pub fn new(ttl: Duration) -> Self {
        SessionKeys {
            ttl,
            keys: Keys::default(),
        }
    }

    /// Registers `key` (64 random bits from the caller) for `resource`; returns its hex form.
    pub fn insert(&mut self, resource: &str, key: u64, now: Instant) -> String {
        self.mint(resource, key, None, now, usize::MAX)
            .expect("no limit")
    }

    /// `insert`, unless `resource` already has `limit` keys (see `MAX_KEYS_PER_STREAM`).
    pub fn mint(
        &mut self,
        resource: &str,
        key: u64,
        passphrase: Option<String>,
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
                passphrase,
            },
        );
        if let Some(old) = old {
            // 64 random bits collided: the old key is gone.
            *keys.per_resource.get_mut(&old.resource).expect("counted") -= 1;
        }
        Ok(format!("{key:016x}"))
    }

    /// The passphrase key `session` (normalised hex) of `resource` was minted with, if any.
    pub fn passphrase(&self, resource: &str, session: &str) -> Option<&str> {
        let key = u64::from_str_radix(session, 16).ok()?;
        let e = self.keys.map.get(&key).filter(|e| e.resource == resource)?;
        e.passphrase.as_deref()
    }

    /// Whether the key is valid for `resource` now (unspent). `session` is normalised hex.
    pub fn check(&self, resource: &str, session: &str, now: Instant) -> Result<(), Denied> {
        let key = u64::from_str_radix(session, 16).map_err(|_| Denied::Unknown)?;
        let e = self
            .keys
            .map
            .get(&key)
            .filter(|e| e.resource == resource)
            .ok_or(Denied::Unknown)?;
        if e.used {
            return Err(Denied::Used);
        }
        if now >= e.expires {
            return Err(Denied::Expired);
        }
        Ok(())
    }

    /// Marks the key used if it is valid for `resource`. `session` is normalised hex.
    pub fn redeem(&mut self, resource: &str, session: &str, now: Instant) -> Result<(), Denied> {
        self.check(resource, session, now)?;
        let key = u64::from_str_radix(session, 16).map_err(|_| Denied::Unknown)?;
        if let Some(e) = self.keys.map.get_mut(&key) {
            e.used = true;
        }
        Ok(())
    }

    /// Forgets keys whose grace period is over.
    pub fn purge(&mut self, now: Instant) {
        let grace = self.ttl.max(MIN_GRACE);
        let Keys { map, per_resource } = &mut self.keys;
        map.retain(|_, e| {
            let keep = now < e.expires + grace;
            if !keep {
                *per_resource.get_mut(&e.resource).expect("counted") -= 1;
            }
            keep
        });
    }

    pub fn len(&self) -> usize {
        self.keys.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_use_expiring_keys() {
        let t = Instant::now();
        let mut s = SessionKeys::new(Duration::from_secs(300));
        let k = s.insert("1", 0xABC, t);
        assert_eq!(k, "0000000000000abc");
        assert_eq!(s.redeem("2", "abc", t), Err(Denied::Unknown));
        assert_eq!(s.redeem("1", "abd", t), Err(Denied::Unknown));
        assert_eq!(s.redeem("1", "zz", t), Err(Denied::Unknown));
        assert_eq!(s.redeem("1", "abc", t), Ok(()));
        assert_eq!(s.redeem("1", "abc", t), Err(Denied::Used));
        let k2 = s.insert("1", 7, t);
        assert_eq!(
            s.redeem(
                "1",
                k2.trim_start_matches('0'),
                t + Duration::from_secs(300)
            ),
            Err(Denied::Expired)
        );
        s.purge(t + Duration::from_secs(899));
        assert_eq!(s.len(), 2);
        s.purge(t + Duration::from_secs(900));
        assert!(s.is_empty());
        // A short TTL still keeps the tombstone long enough to say "expired".
        let mut short = SessionKeys::new(Duration::from_secs(1));
        let k = short.insert("1", 5, t);
        short.purge(t + Duration::from_secs(3));
        assert_eq!(
            short.redeem("1", &k, t + Duration::from_secs(3)),
            Err(Denied::Expired)
        );
    }

    #[test]
    fn keys_per_stream_are_capped_until_purged() {
        let t = Instant::now();
        let mut s = SessionKeys::new(Duration::from_secs(1));
        for k in 0..3 {
            s.mint("1", k, None, t, 3).unwrap();
        }
        assert_eq!(s.mint("1", 9, None, t, 3), Err(TooMany));
        assert!(s.mint("2", 9, None, t, 3).is_ok(), "per stream");
        s.purge(t + MIN_GRACE + Duration::from_secs(2));
        assert!(
            s.mint("1", 10, None, t, 3).is_ok(),
            "purged keys free their places"
        );
    }
}
