//! What one host may make the listener do: conclusions per second and open connections
//! per source address, and how often its rejections are logged. Only addresses that proved
//! themselves with a valid cookie get an entry, and idle entries are forgotten, so the table
//! stays as small as the set of hosts really talking to the relay.
//!
//! A "host" is an IPv4 address (an IPv4 caller of a dual-stack socket included), or an IPv6
//! /64: one machine commonly holds a whole /64 and picks a new address at will, so a
//! budget per IPv6 address would be no budget at all (nginx's and libsrt's advice alike).

use super::budget::TokenBucket;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// At most this many addresses are tracked; a new one beyond is refused until some expire.
pub const MAX_TRACKED: usize = 65_536;
/// A host's rejections are logged at info at most this often (the rest at debug).
const LOG_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressLimits {
    pub max_connections: usize,
    /// Conclusions per second (the burst is twice this); for the HTTP API, connections
    /// accepted per second.
    pub handshakes_per_sec: u32,
}

struct Peer {
    conns: usize,
    handshakes: TokenBucket,
    last_seen: Instant,
    logged: Option<Instant>,
}

pub struct PerAddress {
    limits: AddressLimits,
    peers: HashMap<IpAddr, Peer>,
}

impl PerAddress {
    pub fn new(limits: AddressLimits) -> Self {
        PerAddress {
            limits,
            peers: HashMap::new(),
        }
    }

    /// New limits (a reload): connections already open stay, new ones are counted
    /// against these.
    pub fn set_limits(&mut self, limits: AddressLimits) {
        self.limits = limits;
    }

    /// The host `ip` belongs to, as the table keys it.
    fn host(ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
            v4 => v4,
        }
    }

    fn rate(&self) -> (u64, u64) {
        let r = u64::from(self.limits.handshakes_per_sec);
        (r, 2 * r)
    }

    /// A conclusion (cookie proven) from `ip`: spends one of its handshakes; false when
    /// it has none left (or too many addresses are tracked).
    pub fn handshake(&mut self, ip: IpAddr, now: Instant) -> bool {
        let ip = Self::host(ip);
        let (rate, burst) = self.rate();
        if !self.peers.contains_key(&ip) && self.peers.len() >= MAX_TRACKED {
            return false;
        }
        let peer = self.peers.entry(ip).or_insert_with(|| Peer {
            conns: 0,
            handshakes: TokenBucket::new(burst, now),
            last_seen: now,
            logged: None,
        });
        peer.last_seen = now;
        peer.handshakes.try_spend(now, rate, burst, 1)
    }

    /// Whether `ip` may open one more connection.
    pub fn may_connect(&self, ip: IpAddr) -> bool {
        self.peers
            .get(&Self::host(ip))
            .is_none_or(|p| p.conns < self.limits.max_connections)
    }

    pub fn opened(&mut self, ip: IpAddr) {
        if let Some(p) = self.peers.get_mut(&Self::host(ip)) {
            p.conns += 1;
        }
    }

    pub fn closed(&mut self, ip: IpAddr) {
        if let Some(p) = self.peers.get_mut(&Self::host(ip)) {
            p.conns = p.conns.saturating_sub(1);
        }
    }

    /// Whether a rejection of `ip` is logged at info now (once per `LOG_INTERVAL`).
    pub fn should_log(&mut self, ip: IpAddr, now: Instant) -> bool {
        let Some(p) = self.peers.get_mut(&Self::host(ip)) else {
            return true;
        };
        if p.logged
            .is_some_and(|t| now.saturating_duration_since(t) < LOG_INTERVAL)
        {
            return false;
        }
        p.logged = Some(now);
        true
    }

    /// Forgets addresses with no connection, silent for `LOG_INTERVAL` (by then their
    /// handshake budget, a 2 s burst, has refilled too).
    pub fn sweep(&mut self, now: Instant) {
        self.peers.retain(|_, p| {
            p.conns > 0 || now.saturating_duration_since(p.last_seen) < LOG_INTERVAL
        });
    }

    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.peers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_rate_and_connections_per_address() {
        let t = Instant::now();
        let mut a = PerAddress::new(AddressLimits {
            max_connections: 2,
            handshakes_per_sec: 5,
        });
        let ip: IpAddr = [10, 0, 0, 1].into();
        let other: IpAddr = [10, 0, 0, 2].into();
        for _ in 0..10 {
            assert!(a.handshake(ip, t), "a burst of twice the rate");
        }
        assert!(!a.handshake(ip, t));
        assert!(a.handshake(other, t), "another host is not affected");
        assert!(a.handshake(ip, t + Duration::from_millis(200)));
        a.opened(ip);
        a.opened(ip);
        assert!(!a.may_connect(ip));
        assert!(a.may_connect(other));
        a.closed(ip);
        assert!(a.may_connect(ip));
        assert!(a.should_log(ip, t));
        assert!(!a.should_log(ip, t + Duration::from_secs(1)));
        assert!(a.should_log(ip, t + LOG_INTERVAL));
        // Idle addresses without connections are forgotten; busy ones stay.
        a.sweep(t + Duration::from_secs(60));
        assert_eq!(a.tracked(), 1);
        a.closed(ip);
        a.sweep(t + Duration::from_secs(60));
        assert_eq!(a.tracked(), 0);
    }

    /// An IPv6 /64 is one host (its addresses share one budget), an IPv4 caller is itself
    /// whichever socket family it came through.
    #[test]
    fn an_ipv6_slash_64_is_one_host() {
        let t = Instant::now();
        let mut a = PerAddress::new(AddressLimits {
            max_connections: 1,
            handshakes_per_sec: 1,
        });
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let next_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(a.handshake(one, t) && a.handshake(same_64, t));
        assert!(!a.handshake(same_64, t), "a burst of 2 for the whole /64");
        assert!(a.handshake(next_64, t), "another /64 is another host");
        a.opened(one);
        assert!(!a.may_connect(same_64));
        a.closed(same_64);
        assert!(a.may_connect(one));
        let v4: IpAddr = [192, 0, 2, 7].into();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert!(a.handshake(v4, t) && a.handshake(mapped, t));
        assert!(!a.handshake(v4, t), "one budget for both forms");
        assert_eq!(a.tracked(), 3);
    }
}
