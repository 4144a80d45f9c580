//! Which viewers the kernel serves: the handover of a viewer's new data between the relay
//! (userspace) and the kernel fast path, as a state machine with no IO of its own. It
//! reads and writes the program's viewer table through [`ViewerTable`] and tells the relay
//! what changed through [`KernelReport::Serving`].
//!
//! A viewer moves to the kernel once (1) the relay has mapped it onto the current publisher
//! (`RouteEvent::ViewerMapped`: offsets for that publisher epoch) and (2) the program has
//! learned its route from one of its own packets. Then its entry is written with the flag
//! last, and the relay stops sending it new data of that epoch. A new publisher epoch, or a
//! changed route, takes it back until both hold again.
//!
//! ```text
//!            mapped(epoch)                 route known
//!  Added ───────────────────▶ Waiting ─────────────────────▶ Serving(epoch)
//!    ▲                          ▲  (lo viewer, remote            │
//!    │                          │   publisher: stays)            │ mapped(other epoch)
//!    │                          └────────────────────────────────┤ or route changed
//!    └──── removed (any state) ◀─────────────────────────────────┘
//! ```

use crate::relay::KernelReport;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use stsync_common::maps::{Route, ViewerEntry, LOOPBACK_IFINDEX};
use tracing::info;

/// How long a viewer waiting for its route keeps the datapath polling fast.
pub const FAST_FOR: Duration = Duration::from_secs(2);

/// The program's viewer table and learned routes, as the handover sees them.
pub trait ViewerTable {
    /// The route the program learned for viewer connection `conn`.
    fn route(&self, conn: u32) -> Option<Route>;
    /// Writes slot `slot`; false if the write failed.
    fn set_viewer(&mut self, slot: u32, e: &ViewerEntry) -> bool;
}

/// A viewer's offsets for one publisher epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offsets {
    pub epoch: u64,
    pub seq_off: u32,
    pub ts_off: u32,
}

struct Viewer {
    stream: u32,
    /// Its slot in the program's viewer table.
    slot: u32,
    peer_id: u32,
    mapping: Option<Offsets>,
    /// When `mapping` arrived while the kernel did not serve the viewer for it.
    pending_since: Option<Instant>,
    /// The entry the kernel serves this viewer by (its epoch, offsets and route).
    active: Option<ViewerEntry>,
}

impl Viewer {
    /// Mapped, and not served for that mapping's epoch.
    fn waiting(&self) -> bool {
        self.mapping
            .is_some_and(|m| self.active.is_none_or(|a| a.epoch != m.epoch))
    }
}

#[derive(Default)]
pub struct Handover {
    viewers: HashMap<u32, Viewer>,
    /// Streams whose publisher is on this host (its packets come in on `lo`).
    local_publishers: HashMap<u32, bool>,
    /// `lo` accepts clones of packets from other interfaces
    /// (`net.ipv4.conf.lo.accept_local = 1`).
    lo_accept_local: bool,
    reports: VecDeque<KernelReport>,
}

impl Handover {
    pub fn new(lo_accept_local: bool) -> Self {
        Handover {
            lo_accept_local,
            ..Default::default()
        }
    }

    /// A viewer of `stream` got slot `slot` in the table.
    pub fn add(&mut self, conn: u32, stream: u32, slot: u32, peer_id: u32) {
        let v = Viewer {
            stream,
            slot,
            peer_id,
            mapping: None,
            pending_since: None,
            active: None,
        };
        self.viewers.insert(conn, v);
    }

    /// Forgets a viewer; returns its slot (the caller clears it). The relay forgot it too,
    /// so nothing is reported.
    pub fn remove(&mut self, conn: u32) -> Option<(u32, u32)> {
        self.viewers.remove(&conn).map(|v| (v.stream, v.slot))
    }

    /// The slots of every viewer.
    pub fn slots(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.viewers.iter().map(|(&c, v)| (c, v.slot))
    }

    pub fn set_publisher_local(&mut self, stream: u32, local: bool) {
        self.local_publishers.insert(stream, local);
    }

    /// The relay mapped viewer `conn` onto a publisher epoch.
    pub fn mapped(&mut self, now: Instant, conn: u32, m: Offsets, table: &mut impl ViewerTable) {
        let Some(v) = self.viewers.get_mut(&conn) else {
            return;
        };
        v.mapping = Some(m);
        v.pending_since = Some(now);
        if v.active.is_some_and(|a| a.epoch != m.epoch) {
            self.deactivate(conn, table);
        }
        self.try_activate(conn, table);
    }

    /// The program learned routes for `conns` (all viewers when its queue may have
    /// overflowed): each one waiting moves on if it can.
    pub fn learned(&mut self, conns: impl IntoIterator<Item = u32>, table: &mut impl ViewerTable) {
        for conn in conns {
            if self.viewers.get(&conn).is_some_and(Viewer::waiting) {
                self.try_activate(conn, table);
            }
        }
    }

    /// A served viewer whose route changed (say, a new next-hop MAC) gets the new one.
    pub fn refresh_routes(&mut self, table: &mut impl ViewerTable) {
        let moved: Vec<u32> = self
            .viewers
            .iter()
            .filter(|(&c, v)| {
                v.active
                    .is_some_and(|a| table.route(c).is_some_and(|now| now != a.route))
            })
            .map(|(&c, _)| c)
            .collect();
        for conn in moved {
            info!(conn, "viewer route changed: updating the kernel path");
            self.deactivate(conn, table);
            self.try_activate(conn, table);
        }
    }

    /// Whether a viewer mapped less than `FAST_FOR` ago still waits for its route.
    pub fn hurried(&self, now: Instant) -> bool {
        self.viewers
            .values()
            .any(|v| v.pending_since.is_some_and(|t| now - t < FAST_FOR))
    }

    pub fn poll_report(&mut self) -> Option<KernelReport> {
        self.reports.pop_front()
    }

    /// Moves a mapped viewer whose route is known onto the kernel path.
    fn try_activate(&mut self, conn: u32, table: &mut impl ViewerTable) {
        let Some(v) = self.viewers.get_mut(&conn) else {
            return;
        };
        let Some(m) = v.mapping else {
            return;
        };
        if v.active.is_some_and(|a| a.epoch == m.epoch) {
            return;
        }
        let Some(route) = table.route(conn) else {
            return;
        };
        // A viewer on this host (route on `lo`) can take clones of a remote publisher's
        // packets only if `lo` accepts local sources without a route; else userspace
        // serves it.
        let publisher_local = self.local_publishers.get(&v.stream) == Some(&true);
        if route.ifindex == LOOPBACK_IFINDEX && !self.lo_accept_local && !publisher_local {
            if v.pending_since.take().is_some() {
                info!(conn, "viewer on this host, publisher elsewhere: served from userspace (net.ipv4.conf.lo.accept_local=1 lets the kernel serve it)");
            }
            return;
        }
        let mut e = ViewerEntry {
            epoch: m.epoch,
            conn,
            peer_id: v.peer_id,
            seq_off: m.seq_off,
            ts_off: m.ts_off,
            active: 0,
            _pad: 0,
            route,
        };
        // Everything but the flag first, then the flag alone: the program never sees a
        // half-written entry as active.
        if !table.set_viewer(v.slot, &e) {
            return;
        }
        e.active = 1;
        if !table.set_viewer(v.slot, &e) {
            return;
        }
        v.active = Some(e);
        v.pending_since = None;
        self.reports.push_back(KernelReport::Serving {
            conn,
            epoch: Some(m.epoch),
        });
        info!(
            conn,
            epoch = m.epoch,
            ifindex = route.ifindex,
            "viewer served by the kernel fast path"
        );
    }

    /// Takes the viewer off the kernel path (the relay sends it everything again): the
    /// entry it was served by, with the flag cleared (only the flag changes).
    fn deactivate(&mut self, conn: u32, table: &mut impl ViewerTable) {
        let Some(mut e) = self.viewers.get_mut(&conn).and_then(|v| v.active.take()) else {
            return;
        };
        self.reports
            .push_back(KernelReport::Serving { conn, epoch: None });
        e.active = 0;
        table.set_viewer(self.viewers[&conn].slot, &e);
    }
}
