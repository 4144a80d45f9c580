//! Stateless SYN cookies: a keyed hash of the caller's address and a one-minute time slot.
//! An induction costs the relay no memory; a conclusion proves the caller saw our answer.

use siphasher::sip::SipHasher13;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const SLOT: Duration = Duration::from_secs(60);

pub struct CookieJar {
    key: [u8; 16],
    origin: Instant,
}

impl CookieJar {
    /// `key` must be secret and random; `origin` is any instant before the first use.
    pub fn new(key: [u8; 16], origin: Instant) -> Self {
        CookieJar { key, origin }
    }

    fn slot(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.origin).as_secs()) / SLOT.as_secs()
    }

    fn bake(&self, peer: SocketAddr, slot: u64) -> u32 {
        let mut h = SipHasher13::new_with_key(&self.key);
        peer.hash(&mut h);
        slot.hash(&mut h);
        // Never 0: a zero cookie means "no cookie" in an induction request.
        (h.finish() as u32).max(1)
    }

    pub fn issue(&self, peer: SocketAddr, now: Instant) -> u32 {
        self.bake(peer, self.slot(now))
    }

    /// Accepts cookies from this slot and the previous one, so a caller that crosses a slot
    /// boundary between induction and conclusion still gets in.
    pub fn check(&self, peer: SocketAddr, cookie: u32, now: Instant) -> bool {
        let slot = self.slot(now);
        cookie == self.bake(peer, slot) || (slot > 0 && cookie == self.bake(peer, slot - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_bind_address_and_expire() {
        let t0 = Instant::now();
        let jar = CookieJar::new([7; 16], t0);
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        let c = jar.issue(a, t0);
        assert!(jar.check(a, c, t0 + Duration::from_secs(30)));
        assert!(jar.check(a, c, t0 + Duration::from_secs(100)));
        assert!(!jar.check(a, c, t0 + Duration::from_secs(130)));
        assert!(!jar.check(b, c, t0));
        let other = CookieJar::new([8; 16], t0);
        assert!(!other.check(a, c, t0));
    }
}
