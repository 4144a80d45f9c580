//! Viewer routes, learned from the viewers' own control packets: how a clone reaches them.

use crate::{count, LEARNED, ROUTES, VIEWER_CONNS};
use aya_ebpf::bindings::__sk_buff;
use aya_log_ebpf::debug;
use stsync_common::frame::{raw16, raw32, Header, IP_DST, IP_SRC, UDP_DPORT, UDP_SPORT};
use stsync_common::maps::{counter, Route, ViewerConn};

/// Remembers how to reach a viewer: the interface its packet came in on, its MAC and
/// address, and the relay's as it addressed them. Returns the viewer connection when the
/// packet is from that viewer.
pub(crate) fn learn_route(skb: *mut __sk_buff, h: &Header, dest: u32) -> Option<ViewerConn> {
    // SAFETY: plain value, replaced whole by the daemon.
    let c: ViewerConn = *unsafe { VIEWER_CONNS.get(dest) }?;
    if c.peer_ip != raw32(h, IP_SRC) || c.peer_port != raw16(h, UDP_SPORT) {
        return None;
    }
    let mut route = Route {
        // SAFETY: reading a field of the program's context.
        ifindex: unsafe { (*skb).ifindex },
        relay_ip: raw32(h, IP_DST),
        viewer_ip: raw32(h, IP_SRC),
        relay_port: raw16(h, UDP_DPORT),
        viewer_port: raw16(h, UDP_SPORT),
        relay_mac: [0; 6],
        viewer_mac: [0; 6],
        _pad: [0; 4],
    };
    route.relay_mac.copy_from_slice(&h[..6]);
    route.viewer_mac.copy_from_slice(&h[6..12]);
    // SAFETY: as above; only this program writes ROUTES values.
    if unsafe { ROUTES.get(dest) } != Some(&route) && ROUTES.insert(dest, route, 0).is_ok() {
        count(counter::ROUTES_LEARNED, 1);
        debug!(
            skb,
            "viewer conn {:x}: route learned, {:i}:{} ({:mac}) via ifindex {}",
            dest,
            route.viewer_ip.to_ne_bytes(),
            u16::from_be(route.viewer_port),
            route.viewer_mac,
            route.ifindex
        );
        // Tell the daemon (a full queue only delays it to its periodic scan).
        let _ = LEARNED.push(dest, 0);
    }
    Some(c)
}
