//! Single-use session keys with a limited life, minted over HTTP and redeemed at handshake.

use std::collections::HashMap;
use std::sync::Mutex;
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
}

/// Keys are kept for a grace period after they expire (the longer of the TTL and
/// `MIN_GRACE`) so that a late caller learns "expired" or "used" instead of "unknown"; after
/// that they are purged. Minting needs a stream's token, so the grace cannot be flooded.
const MIN_GRACE: Duration = Duration::from_secs(600);

pub struct Sessions {
    ttl: Duration,
    keys: Mutex<HashMap<u64, Entry>>,
}

impl Sessions {
    pub fn new(ttl: Duration) -> Self {
        Sessions {
            ttl,
            keys: Mutex::new(HashMap::new()),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Registers `key` (64 random bits from the caller) for `resource`; returns its hex form.
    pub fn insert(&self, resource: &str, key: u64, now: Instant) -> String {
        let mut keys = self.keys.lock().unwrap();
        keys.insert(
            key,
            Entry {
                resource: resource.to_owned(),
                expires: now + self.ttl,
                used: false,
            },
        );
        format!("{key:016x}")
    }

    /// Marks the key used if it is valid for `resource`. `session` is normalised hex.
    pub fn redeem(&self, resource: &str, session: &str, now: Instant) -> Result<(), Denied> {
        let key = u64::from_str_radix(session, 16).map_err(|_| Denied::Unknown)?;
        let mut keys = self.keys.lock().unwrap();
        let e = keys
            .get_mut(&key)
            .filter(|e| e.resource == resource)
            .ok_or(Denied::Unknown)?;
        if e.used {
            return Err(Denied::Used);
        }
        if now >= e.expires {
            return Err(Denied::Expired);
        }
        e.used = true;
        Ok(())
    }

    /// Forgets keys whose grace period is over.
    pub fn purge(&self, now: Instant) {
        let grace = self.ttl.max(MIN_GRACE);
        self.keys
            .lock()
            .unwrap()
            .retain(|_, e| now < e.expires + grace);
    }

    pub fn len(&self) -> usize {
        self.keys.lock().unwrap().len()
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
        let s = Sessions::new(Duration::from_secs(300));
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
        let short = Sessions::new(Duration::from_secs(1));
        let k = short.insert("1", 5, t);
        short.purge(t + Duration::from_secs(3));
        assert_eq!(
            short.redeem("1", &k, t + Duration::from_secs(3)),
            Err(Denied::Expired)
        );
    }
}
