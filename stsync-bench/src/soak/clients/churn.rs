//! The churn viewers: they join at --churn-rate from addresses taken in turn, stay a random
//! while, then leave with SHUTDOWN or die without a word; what the relay still sends a dead
//! one, and for how long, is counted.

use super::common::Common;
use super::keys::KeyPool;
use super::rng::Rng;
use super::shared::{Shared, C};
use super::viewer::{Life, Pool, Role, V};
use crate::loadgen::ViewerIo;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use stsync_common::srt::ctrl;

/// When the next churn viewer joins, from where, and what becomes of it.
pub struct Churn {
    /// Time between two joins (None: no churn).
    every: Option<Duration>,
    next_join: Instant,
    /// Churn viewers take source addresses from `ip` on, `ips` of them, in turn.
    ip: Ipv4Addr,
    ips: u32,
    ip_next: u32,
    /// Each churn viewer stays connected this long (uniform, seconds)...
    life: (f64, f64),
    /// ...then dies without a word with this probability, else leaves with SHUTDOWN.
    silent: f64,
    rng: Rng,
}

impl Churn {
    /// `rate` joins per second (0: none) from `t0` on.
    pub fn new(
        rate: f64,
        ip: Ipv4Addr,
        ips: u32,
        life: (f64, f64),
        silent: f64,
        seed: u64,
        t0: Instant,
    ) -> Churn {
        let every = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
        Churn {
            every,
            next_join: t0 + every.unwrap_or_default(),
            ip,
            ips,
            ip_next: 0,
            life,
            silent,
            rng: Rng::new(seed ^ 0x7669_6577),
        }
    }

    /// The joins due by `now`, each with a key (a join without one is skipped).
    pub fn join(
        &mut self,
        now: Instant,
        quiesce: bool,
        pool: &mut Pool,
        keys: &KeyPool,
        sh: &Shared,
        c: &Common,
    ) {
        let Some(every) = self.every else { return };
        if now >= self.next_join + Duration::from_secs(2) {
            self.next_join = now; // we fell behind (a stall): do not burst
        }
        while now >= self.next_join && !quiesce {
            self.next_join += every;
            let Some(key) = keys.take() else {
                sh.add(C::ChurnNoKey, 1);
                continue;
            };
            let src = Ipv4Addr::from(u32::from(self.ip) + self.ip_next);
            self.ip_next = (self.ip_next + 1) % self.ips.max(1);
            sh.add(C::ChurnJoined, 1);
            let silent = self.rng.unit() < self.silent;
            pool.connect(c, src, &key, Role::Churn, silent, now);
        }
    }

    /// A churn viewer is connected: how long it will stay.
    pub fn connected(&mut self, v: &mut V, now: Instant) {
        let (lo, hi) = self.life;
        let life = lo + self.rng.unit() * (hi - lo).max(0.0);
        v.leave_at = Some(now + Duration::from_secs_f64(life));
    }
}

/// A connected churn viewer whose time has come leaves with SHUTDOWN or dies silently;
/// says whether it did.
pub fn leave_if_due(v: &mut V, now: Instant, sh: &Shared, io: &mut ViewerIo) -> bool {
    let Some(at) = v.leave_at else { return false };
    if now < at {
        return false;
    }
    if v.silent {
        sh.add(C::ChurnDied, 1);
        // The relay's idle timeout (5 s by default) should close it;
        // count what still comes for a while longer.
        v.life = Life::Dead(now, now + Duration::from_secs(30));
    } else {
        sh.add(C::ChurnLeft, 1);
        v.conn
            .control(now, io.fd, &mut io.tx, ctrl::SHUTDOWN, 0, &[0]);
        v.life = Life::Left(now + Duration::from_secs(2));
    }
    true
}

/// A viewer that left or died: whether it can be forgotten now (for a dead one, how long
/// the relay kept sending to it is counted then). None while it is active.
pub fn ended(v: &V, now: Instant, sh: &Shared) -> Option<bool> {
    match v.life {
        Life::Left(until) => Some(now >= until),
        Life::Dead(died, until) => {
            if now >= until {
                let linger = v.last_rx.saturating_duration_since(died);
                sh.dead_linger_max_ms
                    .fetch_max(linger.as_millis() as u64, Relaxed);
                if now.saturating_duration_since(v.last_rx) < Duration::from_secs(2) {
                    sh.add(C::DeadNotClosed, 1);
                }
            }
            Some(now >= until)
        }
        Life::Active => None,
    }
}
