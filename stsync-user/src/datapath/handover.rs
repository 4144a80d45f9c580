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

use crate::relay::{KernelReport, Offsets};
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
    /// Streams whose publisher the kernel knows (so it can clone its packets), and whether
    /// it is on this host (its packets come in on `lo`).
    publishers: HashMap<u32, bool>,
    /// The `FAMILY_*` bit of each stream's publisher's address.
    publisher_families: HashMap<u32, u32>,
    /// Streams whose publisher sent a packet too large to convert to the other family:
    /// that family's viewers are served from userspace until the next publisher.
    cross_blocked: std::collections::HashSet<u32>,
    /// `lo` accepts clones of packets from other interfaces
    /// (`net.ipv4.conf.lo.accept_local = 1`).
    lo_accept_local: bool,
    reports: VecDeque<KernelReport>,
    /// With several workers: a viewer ready for the kernel waits here until its
    /// publisher's worker has read its socket dry (`activate_ready`), so that what it read
    /// before went to the feed and what comes after is cloned.
    gated: bool,
    /// Viewers waiting for their publisher's worker, and since when.
    ready: Vec<(u32, Instant)>,
}

/// How long a viewer waits for its publisher's worker to read its socket dry before it
/// moves onto the kernel path anyway (`activate_overdue`). An overloaded worker (hundreds
/// of viewers still on userspace, their ACKs in its socket) may never read it dry, and
/// the viewers that would relieve it would never move: seen at 1000 viewers on 2 workers.
/// Moved while packets are queued, a viewer misses those (neither path sends them) and
/// gets them again on its NAK.
pub const GATE_WAIT: Duration = Duration::from_millis(100);

impl Handover {
    pub fn new(lo_accept_local: bool) -> Self {
        Handover {
            lo_accept_local,
            ..Default::default()
        }
    }

    /// Activations wait for `activate_ready` (several workers).
    pub fn gate(&mut self) {
        self.gated = true;
    }

    /// The streams with a viewer waiting for its publisher's worker.
    pub fn ready_streams(&self) -> impl Iterator<Item = u32> + '_ {
        self.ready
            .iter()
            .filter_map(|(c, _)| self.viewers.get(c).map(|v| v.stream))
    }

    /// The publisher's worker read its socket dry at `since`: its streams' (`mine`)
    /// waiting viewers move onto the kernel path now.
    pub fn activate_ready(
        &mut self,
        since: Instant,
        mine: impl Fn(u32) -> bool,
        table: &mut impl ViewerTable,
    ) {
        let ready = std::mem::take(&mut self.ready);
        for (conn, t) in ready {
            match self.viewers.get(&conn) {
                Some(v) if mine(v.stream) => self.activate(conn, Some(since), table),
                Some(_) => self.ready.push((conn, t)),
                None => {}
            }
        }
    }

    /// The publisher's worker read a full batch at `asked` (its socket not dry): if one of
    /// its streams' viewers has waited `GATE_WAIT`, they all move now, as if it had run
    /// dry. Returns how many moved.
    pub fn activate_overdue(
        &mut self,
        asked: Instant,
        mine: impl Fn(u32) -> bool,
        table: &mut impl ViewerTable,
    ) -> usize {
        let overdue = self.ready.iter().any(|&(c, t)| {
            asked.saturating_duration_since(t) >= GATE_WAIT
                && self.viewers.get(&c).is_some_and(|v| mine(v.stream))
        });
        if !overdue {
            return 0;
        }
        let before = self.ready.len();
        self.activate_ready(asked, mine, table);
        before - self.ready.len()
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

    /// The kernel knows `stream`'s publisher, on this host or not (`Some(local)`), or it
    /// has none the kernel can fan out (`None`: an encrypted or IPv6 one, or none at all).
    pub fn set_publisher(&mut self, stream: u32, local: Option<bool>) {
        match local {
            Some(local) => self.publishers.insert(stream, local),
            None => self.publishers.remove(&stream),
        };
    }

    /// The family (`FAMILY_*`) of `stream`'s (new) publisher's address.
    pub fn set_publisher_family(&mut self, stream: u32, family: u32) {
        self.publisher_families.insert(stream, family);
        self.cross_blocked.remove(&stream);
    }

    /// Streams with kernel-served viewers of the other family than their publisher's.
    pub fn cross_family_streams(&self) -> Vec<u32> {
        let mut out: Vec<u32> = self
            .viewers
            .values()
            .filter(|v| {
                v.active.is_some_and(|a| {
                    self.publisher_families.get(&v.stream) != Some(&a.route.family)
                })
            })
            .map(|v| v.stream)
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// `stream`'s publisher sent a packet the program could not convert for the other
    /// family's viewers: they go back to userspace (the relay resends what they miss).
    pub fn block_cross_family(&mut self, stream: u32, table: &mut impl ViewerTable) {
        if !self.cross_blocked.insert(stream) {
            return;
        }
        let family = self.publisher_families.get(&stream).copied();
        let back: Vec<u32> = self
            .viewers
            .iter()
            .filter(|(_, v)| {
                v.stream == stream && v.active.is_some_and(|a| Some(a.route.family) != family)
            })
            .map(|(&c, _)| c)
            .collect();
        info!(
            stream,
            viewers = back.len(),
            "a publisher packet too large for the other IP family (over 1500 bytes converted): its viewers of that family are served from userspace"
        );
        for conn in back {
            self.deactivate(conn, table);
        }
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

    /// Moves a mapped viewer whose route is known onto the kernel path (or, gated, lines
    /// it up for its publisher's worker).
    fn try_activate(&mut self, conn: u32, table: &mut impl ViewerTable) {
        if !self.gated {
            return self.activate(conn, None, table);
        }
        if self.ready.iter().any(|&(c, _)| c == conn) || !self.can_activate(conn, table) {
            return;
        }
        self.ready.push((conn, Instant::now()));
    }

    /// Whether `try_activate` would move the viewer now.
    fn can_activate(&mut self, conn: u32, table: &impl ViewerTable) -> bool {
        let Some(v) = self.viewers.get(&conn) else {
            return false;
        };
        let waiting = v.waiting();
        let stream = v.stream;
        waiting && table.route(conn).is_some() && self.publishers.contains_key(&stream)
    }

    fn activate(&mut self, conn: u32, since: Option<Instant>, table: &mut impl ViewerTable) {
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
        // Nothing to clone: the kernel does not know the stream's publisher.
        let Some(&publisher_local) = self.publishers.get(&v.stream) else {
            return;
        };
        // A viewer on this host (route on `lo`) can take clones of a remote publisher's
        // packets only if `lo` accepts local sources without a route; else userspace
        // serves it.
        if route.ifindex == LOOPBACK_IFINDEX && !self.lo_accept_local && !publisher_local {
            if v.pending_since.take().is_some() {
                info!(conn, "viewer on this host, publisher elsewhere: served from userspace (net.ipv4.conf.lo.accept_local=1 lets the kernel serve it)");
            }
            return;
        }
        // The program converts a packet for viewers of the other family, except when it
        // came in on `lo` (the conversion drops the route a packet on `lo` carries, and
        // without it the original is a martian) or the publisher's packets do not fit once
        // converted.
        let family = self.publisher_families.get(&v.stream).copied();
        let blocked = publisher_local || self.cross_blocked.contains(&v.stream);
        if blocked && family.is_some_and(|f| f != route.family) {
            if v.pending_since.take().is_some() {
                info!(
                    conn,
                    "viewer of the other IP family than its publisher (on this host, or sending packets too large to convert): served from userspace"
                );
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
            since,
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
        self.reports.push_back(KernelReport::Serving {
            conn,
            epoch: None,
            since: None,
        });
        e.active = 0;
        table.set_viewer(self.viewers[&conn].slot, &e);
    }
}

/// The program's viewer table as plain memory, for tests of the handover and of the relay
/// with it: what the kernel would read, every write in order, and writes that fail on ask.
#[cfg(test)]
#[derive(Default)]
pub struct TestTable {
    pub routes: HashMap<u32, Route>,
    pub entries: HashMap<u32, ViewerEntry>,
    /// (slot, active flag) of every write.
    pub writes: Vec<(u32, u32)>,
    pub fail_writes: bool,
}

#[cfg(test)]
impl ViewerTable for TestTable {
    fn route(&self, conn: u32) -> Option<Route> {
        self.routes.get(&conn).copied()
    }

    fn set_viewer(&mut self, slot: u32, e: &ViewerEntry) -> bool {
        if self.fail_writes {
            return false;
        }
        self.writes.push((slot, e.active));
        self.entries.insert(slot, *e);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONN: u32 = 7;
    const SLOT: u32 = 1030;

    fn route(ifindex: u32, mac_end: u8) -> Route {
        Route {
            ifindex,
            viewer_mac: [2, 0, 0, 0, 0, mac_end],
            ..Default::default()
        }
    }

    fn offsets(epoch: u64) -> Offsets {
        Offsets {
            epoch,
            seq_off: 100 * epoch as u32,
            ts_off: 1_000 * epoch as u32,
        }
    }

    fn reports(h: &mut Handover) -> Vec<KernelReport> {
        std::iter::from_fn(|| h.poll_report()).collect()
    }

    fn serving(epoch: Option<u64>) -> KernelReport {
        KernelReport::Serving {
            conn: CONN,
            epoch,
            since: None,
        }
    }

    /// Gated (several workers): a viewer of stream 1 mapped at `t0`, its route learned,
    /// ready for the kernel.
    fn gated_viewer_ready(t0: Instant) -> (Handover, TestTable) {
        let (mut h, mut table) = (Handover::new(false), TestTable::default());
        h.gate();
        h.add(CONN, 1, SLOT, 0x55);
        h.set_publisher(1, Some(false));
        table.routes.insert(CONN, route(3, 1));
        h.mapped(t0, CONN, offsets(1), &mut table);
        (h, table)
    }

    /// Gated (several workers): a viewer ready for the kernel waits for its publisher's
    /// worker, which moves it when it has read its socket dry, saying when.
    #[test]
    fn gated_a_viewer_moves_when_its_publishers_worker_says() {
        let t0 = Instant::now();
        let (mut h, mut table) = gated_viewer_ready(t0);
        assert!(reports(&mut h).is_empty() && table.writes.is_empty());
        assert_eq!(h.ready_streams().collect::<Vec<_>>(), [1]);
        // Another stream's worker read its socket dry: not this viewer's turn.
        h.activate_ready(t0, |s| s == 2, &mut table);
        assert!(reports(&mut h).is_empty() && table.writes.is_empty());
        let since = t0 + Duration::from_millis(3);
        h.activate_ready(since, |s| s == 1, &mut table);
        assert_eq!(
            reports(&mut h),
            vec![KernelReport::Serving {
                conn: CONN,
                epoch: Some(1),
                since: Some(since),
            }]
        );
        assert_eq!(table.writes, vec![(SLOT, 0), (SLOT, 1)]);
        assert_eq!(h.ready_streams().count(), 0);
    }

    /// Gated, with a publisher's worker that never reads its socket dry: the viewer moves
    /// at the first full batch after `GATE_WAIT`, not before, and only on its publisher's
    /// worker.
    #[test]
    fn gated_a_viewer_moves_anyway_after_the_gate_wait() {
        let t0 = Instant::now();
        let (mut h, mut table) = gated_viewer_ready(t0);
        let busy = |h: &mut Handover, table: &mut TestTable, at: Duration, stream: u32| {
            h.activate_overdue(Instant::now() + at, |s| s == stream, table)
        };
        assert_eq!(busy(&mut h, &mut table, Duration::ZERO, 1), 0, "too early");
        assert_eq!(
            busy(&mut h, &mut table, GATE_WAIT * 2, 2),
            0,
            "another worker"
        );
        assert!(reports(&mut h).is_empty() && table.writes.is_empty());
        assert_eq!(busy(&mut h, &mut table, GATE_WAIT * 2, 1), 1);
        assert!(matches!(
            reports(&mut h)[..],
            [KernelReport::Serving {
                epoch: Some(1),
                since: Some(_),
                ..
            }]
        ));
        assert_eq!(table.writes, vec![(SLOT, 0), (SLOT, 1)]);
        assert_eq!(h.ready_streams().count(), 0);
    }

    #[test]
    fn a_viewer_moves_to_the_kernel_once_mapped_and_routed_flag_last() {
        let t0 = Instant::now();
        let (mut h, mut table) = (Handover::new(false), TestTable::default());
        h.add(CONN, 1, SLOT, 0x55);
        h.set_publisher(1, Some(false));
        // A route alone moves nothing: the kernel has no offsets to rewrite with.
        table.routes.insert(CONN, route(3, 1));
        h.learned([CONN], &mut table);
        assert!(reports(&mut h).is_empty() && table.writes.is_empty());
        // Mapped without a route: it waits, and the datapath polls fast meanwhile.
        table.routes.clear();
        h.mapped(t0, CONN, offsets(1), &mut table);
        assert!(reports(&mut h).is_empty());
        assert!(h.hurried(t0 + Duration::from_millis(10)));
        assert!(!h.hurried(t0 + FAST_FOR), "not forever");
        // Its route learned: served, the entry written whole before its flag.
        table.routes.insert(CONN, route(3, 1));
        h.learned([CONN], &mut table);
        assert_eq!(reports(&mut h), vec![serving(Some(1))]);
        assert_eq!(table.writes, vec![(SLOT, 0), (SLOT, 1)]);
        let e = table.entries[&SLOT];
        assert_eq!(
            (e.epoch, e.conn, e.peer_id, e.seq_off, e.ts_off, e.route),
            (1, CONN, 0x55, 100, 1_000, route(3, 1))
        );
        assert!(!h.hurried(t0 + Duration::from_millis(10)));
        // Learned again (the once-a-second sweep): nothing changes.
        h.learned([CONN], &mut table);
        assert!(reports(&mut h).is_empty());
        assert_eq!(table.writes.len(), 2);
    }

    #[test]
    fn a_new_publisher_or_route_takes_it_back_until_both_hold_again() {
        let t0 = Instant::now();
        let (mut h, mut table) = (Handover::new(false), TestTable::default());
        h.add(CONN, 1, SLOT, 0x55);
        h.set_publisher(1, Some(false));
        table.routes.insert(CONN, route(3, 1));
        h.mapped(t0, CONN, offsets(1), &mut table);
        assert_eq!(reports(&mut h), vec![serving(Some(1))]);
        // A takeover: the old entry's flag cleared (nothing else changes), then the new
        // epoch's entry.
        table.writes.clear();
        h.mapped(t0, CONN, offsets(2), &mut table);
        assert_eq!(reports(&mut h), vec![serving(None), serving(Some(2))]);
        assert_eq!(table.writes, vec![(SLOT, 0), (SLOT, 0), (SLOT, 1)]);
        assert_eq!(table.entries[&SLOT].seq_off, 200);
        // The next hop's MAC changed: back to userspace, then served on the new route.
        table.routes.insert(CONN, route(3, 2));
        h.refresh_routes(&mut table);
        assert_eq!(reports(&mut h), vec![serving(None), serving(Some(2))]);
        assert_eq!(table.entries[&SLOT].route, route(3, 2));
        // A route that stays the same is left alone.
        h.refresh_routes(&mut table);
        assert!(reports(&mut h).is_empty());
        // Removed: its slot is handed back, nothing is reported (the relay removed it).
        assert_eq!(h.remove(CONN), Some((1, SLOT)));
        h.learned([CONN], &mut table);
        assert!(reports(&mut h).is_empty());
    }

    #[test]
    fn a_viewer_on_this_host_of_a_remote_publisher_stays_in_userspace() {
        let t0 = Instant::now();
        let lo = route(LOOPBACK_IFINDEX, 1);
        let mut table = TestTable::default();
        table.routes.insert(CONN, lo);
        let mut h = Handover::new(false);
        h.add(CONN, 1, SLOT, 0x55);
        h.set_publisher(1, Some(false));
        h.mapped(t0, CONN, offsets(1), &mut table);
        assert!(reports(&mut h).is_empty() && table.writes.is_empty());
        assert!(!h.hurried(t0), "given up on, not polled for");
        // Its publisher on this host too: `lo` carries both, the kernel serves it.
        h.set_publisher(1, Some(true));
        h.mapped(t0, CONN, offsets(2), &mut table);
        assert_eq!(reports(&mut h), vec![serving(Some(2))]);
        // Or any publisher, once `lo` accepts local sources.
        let mut h = Handover::new(true);
        h.add(CONN, 1, SLOT, 0x55);
        h.set_publisher(1, Some(false));
        h.mapped(t0, CONN, offsets(1), &mut table);
        assert_eq!(reports(&mut h), vec![serving(Some(1))]);
    }

    #[test]
    fn a_table_that_refuses_writes_leaves_the_viewer_to_userspace() {
        let t0 = Instant::now();
        let mut table = TestTable {
            fail_writes: true,
            ..Default::default()
        };
        table.routes.insert(CONN, route(3, 1));
        let mut h = Handover::new(false);
        h.add(CONN, 1, SLOT, 0x55);
        h.set_publisher(1, Some(false));
        h.mapped(t0, CONN, offsets(1), &mut table);
        assert!(reports(&mut h).is_empty());
        // Tried again with the next learned route once writes work.
        table.fail_writes = false;
        h.learned([CONN], &mut table);
        assert_eq!(reports(&mut h), vec![serving(Some(1))]);
    }

    /// A stream whose publisher the kernel does not know (encrypted, IPv6, or gone) has
    /// nothing to clone: its viewers stay in userspace whatever their routes.
    #[test]
    fn without_a_publisher_in_the_kernel_viewers_stay_in_userspace() {
        let t0 = Instant::now();
        let (mut h, mut table) = (Handover::new(true), TestTable::default());
        table.routes.insert(CONN, route(3, 1));
        h.add(CONN, 1, SLOT, 0x55);
        h.mapped(t0, CONN, offsets(1), &mut table);
        assert!(reports(&mut h).is_empty() && table.writes.is_empty());
        h.set_publisher(1, Some(false));
        h.learned([CONN], &mut table);
        assert_eq!(reports(&mut h), vec![serving(Some(1))]);
        // A new (say, encrypted) publisher the kernel is not given: back to userspace on its
        // mapping, and not served again.
        h.set_publisher(1, None);
        h.mapped(t0, CONN, offsets(2), &mut table);
        assert_eq!(reports(&mut h), vec![serving(None)]);
        h.learned([CONN], &mut table);
        assert!(reports(&mut h).is_empty());
    }
}
