//! Viewer routes, learned from the viewers' own control packets: how a clone reaches them.

use crate::family::Family;
use crate::header::Header;
use crate::{count, same, LEARNED, ROUTES, VIEWER_CONNS};
use aya_ebpf::bindings::__sk_buff;
use aya_log_ebpf::debug;
use stsync_common::maps::{counter, Route, ViewerConn};

/// Remembers how to reach a viewer: the interface its packet came in on, its MAC and
/// address, and the relay's as it addressed them. Returns the viewer connection when the
/// packet is from that viewer.
pub(crate) fn learn_route<F: Family>(
    skb: *mut __sk_buff,
    h: &Header,
    dest: u32,
) -> Option<ViewerConn> {
    // SAFETY: plain value, replaced whole by the daemon.
    let c: ViewerConn = *unsafe { VIEWER_CONNS.get(dest) }?;
    let viewer_ip = h.addr(F::IP_SRC, F::ADDR_LEN);
    if !same(&c.peer_ip, &viewer_ip) || c.peer_port != h.raw16(F::UDP_SPORT) {
        return None;
    }
    let mut route = Route {
        // SAFETY: reading a field of the program's context.
        ifindex: unsafe { (*skb).ifindex },
        family: F::FAMILY,
        relay_ip: h.addr(F::IP_DST, F::ADDR_LEN),
        viewer_ip,
        relay_port: h.raw16(F::UDP_DPORT),
        viewer_port: h.raw16(F::UDP_SPORT),
        relay_mac: [0; 6],
        viewer_mac: [0; 6],
    };
    route.relay_mac.copy_from_slice(&h.bytes::<6>(0));
    route.viewer_mac.copy_from_slice(&h.bytes::<6>(6));
    // SAFETY: as above; only this program writes ROUTES values.
    if unsafe { ROUTES.get(dest) } != Some(&route) && ROUTES.insert(dest, route, 0).is_ok() {
        count(counter::ROUTES_LEARNED, 1);
        debug!(
            skb,
            "viewer conn {:x}: route learned, IPv{} port {} ({:mac}) via ifindex {}",
            dest,
            if F::ADDR_LEN == 4 { 4u32 } else { 6 },
            u16::from_be(route.viewer_port),
            route.viewer_mac,
            route.ifindex
        );
        // Tell the daemon (a full queue only delays it to its periodic scan).
        let _ = LEARNED.push(dest, 0);
    }
    Some(c)
}
