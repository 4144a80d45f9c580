//! One viewer on the viewers' shared socket, honest or churn: its connection, its receiver
//! once connected, and where it is in its life; and the pool of them, by our socket ID.

use super::common::{new_socket_id, Common};
use crate::loadgen::{Conn, ViewerCountersView, ViewerIo};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Instant;
use stsync_user::srt::receiver::Receiver;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Role {
    Honest(usize),
    Churn,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Life {
    Active,
    /// Left with SHUTDOWN; forgotten at the instant.
    Left(Instant),
    /// Died silently at the first instant: what still arrives for it is counted (the
    /// last arrival kept) until the second.
    Dead(Instant, Instant),
}

pub struct V {
    pub(super) conn: Conn,
    pub(super) rx: Option<Receiver>,
    pub(super) st: ViewerCountersView,
    pub(super) role: Role,
    pub(super) life: Life,
    pub(super) leave_at: Option<Instant>,
    pub(super) silent: bool,
    /// The last datagram that came for it.
    pub(super) last_rx: Instant,
}

impl V {
    /// A viewer that has just started its handshake.
    fn new(conn: Conn, role: Role, silent: bool, now: Instant) -> V {
        V {
            conn,
            rx: None,
            st: ViewerCountersView::default(),
            role,
            life: Life::Active,
            leave_at: None,
            silent,
            last_rx: now,
        }
    }
}

/// Every viewer by our socket ID, and the one socket they all send through.
pub struct Pool {
    pub(super) map: HashMap<u32, V>,
    pub(super) io: ViewerIo,
}

impl Pool {
    /// A new viewer from `src` with session key `key`: its handshake starts now. Returns
    /// our socket ID of it.
    pub fn connect(
        &mut self,
        c: &Common,
        src: Ipv4Addr,
        key: &str,
        role: Role,
        silent: bool,
        now: Instant,
    ) -> u32 {
        let id = new_socket_id(|x| self.map.contains_key(&x));
        let mut conn = Conn::new(id, c.relay, Some(src.into()), c.sid(key, "request"), now);
        conn.start(now, c.latency_ms, self.io.fd, &mut self.io.tx);
        self.map.insert(id, V::new(conn, role, silent, now));
        id
    }
}
